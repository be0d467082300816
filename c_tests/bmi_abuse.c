/*
 * bmi_abuse: every BMI function called wrongly, as a careless MTA might: NULL pointers, bad
 * lengths, calls out of order, calls after a failure, damaged verdict strings, a bad option
 * file, an unreachable Milter. Each must return the documented error, set its out-parameters
 * (NULL), leave a last-error text that names the problem, and never crash.
 *
 * usage: bmi_abuse LIBRARY DIRECTORY CLOSED_PORT LIVE_PORT
 *   DIRECTORY: a scratch directory for option files; CLOSED_PORT: a loopback port where
 *   nothing listens (the unreachable Milter); LIVE_PORT: a Milter that continues (the load
 *   Milter, tests/milters/load_milter.py, for a message without a numbered Subject).
 * Prints "ok N checks" and exits 0, or lists each failed check and exits 1.
 */
#define _GNU_SOURCE
#include "bmi_test.h"

#include <string.h>

static int checks, failures;

#define CHECK(cond, ...)                                                                         \
    do {                                                                                         \
        checks++;                                                                                \
        if (!(cond)) {                                                                           \
            failures++;                                                                          \
            fprintf(stderr, "bmi_abuse:%d: check failed: %s: ", __LINE__, #cond);                \
            fprintf(stderr, __VA_ARGS__);                                                        \
            fputc('\n', stderr);                                                                 \
        }                                                                                        \
    } while (0)

#define LOC(e) ((int)bmi.error_get_location(e))
#define TYPE(e) ((int)bmi.error_get_type(e))
#define IS(e, loc, type)                                                                         \
    (bmi.error_is_fatal(e) == BMI_TRUE && LOC(e) == (loc) && TYPE(e) == (type))

static const char *last(void) { return p_last_error(); }

static void write_file(const char *path, const char *text) {
    FILE *f = fopen(path, "w");
    if (!f || fputs(text, f) < 0 || fclose(f) != 0) {
        perror(path);
        exit(2);
    }
}

static void errors(void) {
    CHECK(bmi.error_is_fatal(BMI_OK) == BMI_FALSE, "success is not fatal");
    CHECK(bmi.error_is_fatal(0x03000006u) == BMI_TRUE, "client/invalid argument is fatal");
    CHECK(bmi.error_is_fatal(0x01000008u | BMI_ERROR_WARNING) == BMI_FALSE, "a warning");
    CHECK(LOC(0x03000006u) == BMI_ERROR_LOCATION_CLIENT, "location");
    CHECK(TYPE(0x03000006u) == BMI_ERROR_TYPE_INVALID_ARG, "type");
    CHECK(LOC(0xff7fffffu) == 255 && TYPE(0xff7fffffu) == 0x7fffff, "any value decodes");
}

static void systems(const char *dir) {
    char path[4096];
    BmiSystem *s = (BmiSystem *)1;
    BmiError e = bmi.init_system(BMI_VERSION, NULL, &s);
    CHECK(IS(e, BMI_ERROR_LOCATION_CLIENT, BMI_ERROR_TYPE_INVALID_ARG) && s == NULL,
          "NULL path: 0x%08x", (unsigned)e);
    CHECK(strstr(last(), "config_file is NULL") != NULL, "%s", last());
    snprintf(path, sizeof path, "%s/ok.opt", dir);
    write_file(path, "HOST=127.0.0.1\nPORT=1\n");
    e = bmi.init_system(BMI_VERSION, path, NULL);
    CHECK(IS(e, BMI_ERROR_LOCATION_CLIENT, BMI_ERROR_TYPE_INVALID_ARG), "NULL out: 0x%08x",
          (unsigned)e);
    /* Any version. */
    e = bmi.init_system(-12345, path, &s);
    CHECK(e == BMI_OK && s != NULL, "version -12345: 0x%08x %s", (unsigned)e, last());
    bmi.free_system(s);
    snprintf(path, sizeof path, "%s/bad.opt", dir);
    write_file(path, "HOST=127.0.0.1\nTIMEOUT=soon\n");
    s = (BmiSystem *)1;
    e = bmi.init_system(BMI_VERSION, path, &s);
    CHECK(IS(e, BMI_ERROR_LOCATION_CONFIG, BMI_ERROR_TYPE_CONFIG) && s == NULL,
          "bad option file: 0x%08x", (unsigned)e);
    CHECK(strstr(last(), path) && strstr(last(), ":2") && strstr(last(), "TIMEOUT") &&
              strstr(last(), "soon"),
          "the last error names file, line, option and value: %s", last());
    snprintf(path, sizeof path, "%s/missing.opt", dir);
    e = bmi.init_system(BMI_VERSION, path, &s);
    CHECK(IS(e, BMI_ERROR_LOCATION_CONFIG, BMI_ERROR_TYPE_CONFIG) && s == NULL,
          "missing option file: 0x%08x", (unsigned)e);
    CHECK(strstr(last(), "missing.opt") != NULL, "%s", last());
    bmi.free_system(NULL);
    BmiMessage *m = (BmiMessage *)1;
    e = bmi.init_message(NULL, &m);
    CHECK(IS(e, BMI_ERROR_LOCATION_CLIENT, BMI_ERROR_TYPE_INVALID_ARG) && m == NULL,
          "NULL system: 0x%08x", (unsigned)e);
}

static BmiSystem *open_system(const char *dir, const char *name, int port) {
    char path[4096], text[256];
    snprintf(path, sizeof path, "%s/%s.opt", dir, name);
    snprintf(text, sizeof text, "HOST=127.0.0.1\nPORT=%d\nTIMEOUT=2000\nCONNECT_TIMEOUT=2000\n", port);
    write_file(path, text);
    BmiSystem *s = NULL;
    BmiError e = bmi.init_system(BMI_VERSION, path, &s);
    if (e != BMI_OK || !s) {
        fprintf(stderr, "bmi_abuse: %s: %s\n", path, last());
        exit(1);
    }
    return s;
}

static BmiMessage *new_message(BmiSystem *s) {
    BmiMessage *m = NULL;
    BmiError e = bmi.init_message(s, &m);
    if (e != BMI_OK || !m) {
        fprintf(stderr, "bmi_abuse: bmiInitMessage: %s\n", last());
        exit(1);
    }
    return m;
}

#define PUSHES 9

/* Every push of a message, in SMTP order, to `m`: their errors into `e`. */
static void push_all(BmiMessage *m, BmiError e[PUSHES]) {
    e[0] = bmi.process_connection("127.0.0.1", m);
    e[1] = bmi.process_from("a@b", m);
    e[2] = bmi.accumulate_to("a@b", NULL, m);
    e[3] = bmi.end_to(m);
    e[4] = bmi.accumulate_headers("A: b\n", 5, m);
    e[5] = bmi.end_headers(m);
    e[6] = bmi.accumulate_body("x", 1, m);
    e[7] = bmi.end_body(m);
    e[8] = bmi.end_message(m);
}

static void null_messages(void) {
    BmiError e[PUSHES];
    push_all(NULL, e);
    for (size_t i = 0; i < PUSHES; i++)
        CHECK(IS(e[i], BMI_ERROR_LOCATION_CLIENT, BMI_ERROR_TYPE_INVALID_ARG),
              "push %zu with a NULL message: 0x%08x", i, (unsigned)e[i]);
    bmi.free_message(NULL);
}

/* After a failure every push returns the first error. */
static void repeats(BmiMessage *m, BmiError first) {
    BmiError e[PUSHES];
    push_all(m, e);
    for (size_t i = 0; i < PUSHES; i++)
        CHECK(e[i] == first, "push %zu after a failure: 0x%08x, not 0x%08x", i, (unsigned)e[i],
              (unsigned)first);
    const BmiVerdict *v = (const BmiVerdict *)1;
    BmiError a = bmi.access_first_verdict(m, &v);
    CHECK(v == NULL && a == first, "verdicts of a failed message: 0x%08x", (unsigned)a);
}

static void order_and_arguments(BmiSystem *s) {
    /* Out of order. */
    BmiMessage *m = new_message(s);
    BmiError e = bmi.process_from("a@b", m);
    CHECK(IS(e, BMI_ERROR_LOCATION_CLIENT, BMI_ERROR_TYPE_STATE), "FROM first: 0x%08x",
          (unsigned)e);
    CHECK(strstr(last(), "bmiProcessFROM out of order") != NULL, "%s", last());
    repeats(m, e);
    bmi.free_message(m);
    /* bmiEndMessage before the body. */
    m = new_message(s);
    e = bmi.end_message(m);
    CHECK(IS(e, BMI_ERROR_LOCATION_CLIENT, BMI_ERROR_TYPE_STATE), "EndMessage first: 0x%08x",
          (unsigned)e);
    bmi.free_message(m);
    /* NULL text. */
    m = new_message(s);
    e = bmi.process_connection(NULL, m);
    CHECK(IS(e, BMI_ERROR_LOCATION_CLIENT, BMI_ERROR_TYPE_INVALID_ARG), "NULL ip: 0x%08x",
          (unsigned)e);
    CHECK(strstr(last(), "client_ip is NULL") != NULL, "%s", last());
    repeats(m, e);
    bmi.free_message(m);
    /* Not an address. */
    m = new_message(s);
    e = bmi.process_connection("mx.example.org", m);
    CHECK(IS(e, BMI_ERROR_LOCATION_CLIENT, BMI_ERROR_TYPE_INVALID_ARG), "bad ip: 0x%08x",
          (unsigned)e);
    CHECK(strstr(last(), "\"mx.example.org\"") != NULL, "%s", last());
    bmi.free_message(m);
    /* Bad lengths: negative, absurd, NULL text; for a header and for the body. */
    struct {
        const char *text;
        int len;
        const char *says;
    } bad[] = {{"A: b\n", -1, "negative"}, {"A: b\n", 0x7fffffff, "more than"},
               {NULL, 5, "NULL"}};
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        for (int body = 0; body < 2; body++) {
            /* INT_MAX is a possible body chunk size: not tried with a 5-byte buffer. */
            if (body && bad[i].len == 0x7fffffff)
                continue;
            m = new_message(s);
            bmi.process_connection("127.0.0.1", m);
            bmi.process_from("", m);
            bmi.accumulate_to("a@example.org", NULL, m);
            bmi.end_to(m);
            if (body)
                bmi.end_headers(m);
            e = body ? bmi.accumulate_body(bad[i].text, bad[i].len, m)
                     : bmi.accumulate_headers(bad[i].text, bad[i].len, m);
            CHECK(IS(e, BMI_ERROR_LOCATION_CLIENT, BMI_ERROR_TYPE_INVALID_ARG),
                  "%s length %d: 0x%08x", body ? "body" : "header", bad[i].len, (unsigned)e);
            CHECK(strstr(last(), bad[i].says) != NULL, "%s", last());
            repeats(m, e);
            bmi.free_message(m);
        }
    }
}

static void optins(void) {
    BmiError e = bmi.optin_init(NULL);
    CHECK(IS(e, BMI_ERROR_LOCATION_CLIENT, BMI_ERROR_TYPE_INVALID_ARG), "NULL: 0x%08x",
          (unsigned)e);
    BmiOptin *o = NULL;
    e = bmi.optin_init(&o);
    CHECK(e == BMI_OK && o != NULL, "init: 0x%08x", (unsigned)e);
    CHECK(bmi.optin_mset(o, "spam:virus", ':') == BMI_OK, "mset: %s", last());
    e = bmi.optin_mset(o, NULL, ':');
    CHECK(IS(e, BMI_ERROR_LOCATION_CLIENT, BMI_ERROR_TYPE_INVALID_ARG), "NULL values: 0x%08x",
          (unsigned)e);
    e = bmi.optin_mset(NULL, "a", ':');
    CHECK(IS(e, BMI_ERROR_LOCATION_CLIENT, BMI_ERROR_TYPE_INVALID_ARG), "NULL optin: 0x%08x",
          (unsigned)e);
    bmi.optin_free(o);
    bmi.optin_free(NULL);
}

static void verdict_functions(BmiSystem *s) {
    const BmiVerdict *v = (const BmiVerdict *)1;
    BmiError e = bmi.access_first_verdict(NULL, &v);
    CHECK(v == NULL && IS(e, BMI_ERROR_LOCATION_CLIENT, BMI_ERROR_TYPE_INVALID_ARG),
          "first of NULL: 0x%08x", (unsigned)e);
    BmiMessage *m = new_message(s);
    e = bmi.access_first_verdict(m, NULL);
    CHECK(IS(e, BMI_ERROR_LOCATION_CLIENT, BMI_ERROR_TYPE_INVALID_ARG), "NULL out: 0x%08x",
          (unsigned)e);
    v = (const BmiVerdict *)1;
    e = bmi.access_first_verdict(m, &v);
    CHECK(v == NULL && IS(e, BMI_ERROR_LOCATION_CLIENT, BMI_ERROR_TYPE_STATE),
          "before the end: 0x%08x", (unsigned)e);
    v = (const BmiVerdict *)1;
    e = bmi.access_next_verdict(m, (const BmiVerdict *)8, &v);
    CHECK(v == NULL && bmi.error_is_fatal(e) == BMI_TRUE, "next before the end: 0x%08x",
          (unsigned)e);
    bmi.free_message(m);
    v = (const BmiVerdict *)1;
    bmi.access_next_verdict(NULL, NULL, &v);
    CHECK(v == NULL, "next of NULL sets NULL");

    CHECK(bmi.error_is_fatal(bmi.verdict_error(NULL)) == BMI_TRUE, "error of NULL");
    CHECK(bmi.verdict_destination_is_default(NULL) == BMI_TRUE, "NULL fails open");
    CHECK(bmi.verdict_access_destination(NULL) == NULL, "destination of NULL");
    CHECK(bmi.verdict_rule_fired(NULL, 3) == BMI_FALSE, "rule of NULL");
    CHECK(bmi.verdict_first_recipient(NULL) == NULL, "first recipient of NULL");
    CHECK(bmi.verdict_next_recipient(NULL, NULL) == NULL, "next recipient of NULL");
    CHECK(bmi.recipient_address(NULL) == NULL, "address of NULL");
    char *str = (char *)1;
    e = bmi.create_str_from_verdict(NULL, &str);
    CHECK(str == NULL && IS(e, BMI_ERROR_LOCATION_CLIENT, BMI_ERROR_TYPE_INVALID_ARG),
          "string of NULL: 0x%08x", (unsigned)e);
    char *old = (char *)1;
    e = bmi.create_old_str_from_verdict(NULL, &old);
    CHECK(old == NULL && bmi.error_is_fatal(e) == BMI_TRUE, "old string of NULL");
    bmi.free_str(NULL);
    bmi.free_verdict(NULL);

    /* Damaged strings. */
    const char *damaged[] = {"", "MSF1", "MSF2AAAAAAAA", "not a verdict", "MSF1!!!!",
                             "MSF1AQAAAAACDWFAZXhhbXBsZS5vcmcNYkBleGFtcGxlLm9yZ/Wh18J",
                             "MSF1AQAAAAACDWFAZXhhbXBsZS5vcmcNYkBleGFtcGxlLm9yZ/Wh18",
                             "MSF1//////////////////////////8"};
    for (size_t i = 0; i < sizeof damaged / sizeof damaged[0]; i++) {
        BmiVerdict *pv = (BmiVerdict *)1;
        e = bmi.create_verdict_from_str(damaged[i], &pv);
        CHECK(pv == NULL && IS(e, BMI_ERROR_LOCATION_CLIENT, BMI_ERROR_TYPE_BAD_VERDICT),
              "\"%s\": 0x%08x", damaged[i], (unsigned)e);
        CHECK(strstr(last(), "not a verdict string") != NULL, "%s", last());
    }
    /* The good one of the damaged ones: a discard for two recipients. */
    BmiVerdict *pv = NULL;
    e = bmi.create_verdict_from_str("MSF1AQAAAAACDWFAZXhhbXBsZS5vcmcNYkBleGFtcGxlLm9yZ/Wh18I", &pv);
    CHECK(e == BMI_OK && pv != NULL, "a good string: %s", last());
    if (pv) {
        CHECK(bmi.verdict_destination_is_default(pv) == BMI_FALSE &&
                  bmi.verdict_access_destination(pv) == NULL,
              "a discard");
        const BmiRecipient *r = bmi.verdict_first_recipient(pv);
        CHECK(r && strcmp(bmi.recipient_address(r), "a@example.org") == 0, "recipient 1");
        CHECK(bmi.verdict_next_recipient(pv, (const BmiRecipient *)((const char *)r + 1)) ==
                  NULL,
              "a pointer into a recipient is no recipient");
        old = NULL;
        CHECK(bmi.create_old_str_from_verdict(pv, &old) == BMI_OK && old && !strcmp(old, "discard"),
              "old string");
        bmi.free_verdict(pv);
        /* Static: still readable after the verdict is gone (Exim uses it so). */
        CHECK(old && !strcmp(old, "discard"), "old string after free");
    }
    pv = (BmiVerdict *)1;
    e = bmi.create_verdict_from_str(NULL, &pv);
    CHECK(pv == NULL && IS(e, BMI_ERROR_LOCATION_CLIENT, BMI_ERROR_TYPE_INVALID_ARG),
          "NULL string: 0x%08x", (unsigned)e);
}

/* A message that ended: stray calls after it are STATE errors that leave its verdicts; the
 * iterators refuse pointers that are not theirs, setting NULL. */
static void after_the_end(BmiSystem *s) {
    BmiMessage *m = new_message(s);
    BmiError e = BMI_OK;
    const char *where = "";
#define STEP(call)                                                                               \
    if (e == BMI_OK) {                                                                           \
        e = call;                                                                                \
        where = #call;                                                                           \
    }
    STEP(bmi.process_connection("127.0.0.1", m))
    STEP(bmi.process_from("", m))
    STEP(bmi.accumulate_to("a@example.org", NULL, m))
    STEP(bmi.accumulate_to("b@example.org", NULL, m))
    STEP(bmi.end_to(m))
    STEP(bmi.accumulate_headers("Subject: no number\n", 19, m))
    STEP(bmi.end_headers(m))
    STEP(bmi.accumulate_body("", 0, m))
    STEP(bmi.end_body(m))
    STEP(bmi.end_message(m))
    CHECK(e == BMI_OK, "a plain message: 0x%08x from %s: %s", (unsigned)e, where, last());
    if (e != BMI_OK) {
        bmi.free_message(m);
        return;
    }
    e = bmi.accumulate_body("x", 1, m);
    CHECK(IS(e, BMI_ERROR_LOCATION_CLIENT, BMI_ERROR_TYPE_STATE), "a push after the end: 0x%08x",
          (unsigned)e);
    e = bmi.end_message(m);
    CHECK(IS(e, BMI_ERROR_LOCATION_CLIENT, BMI_ERROR_TYPE_STATE), "a second end: 0x%08x",
          (unsigned)e);
    const BmiVerdict *v = NULL, *next = (const BmiVerdict *)1;
    e = bmi.access_first_verdict(m, &v);
    CHECK(e == BMI_OK && v != NULL, "the verdicts stay: 0x%08x", (unsigned)e);
    if (v) {
        CHECK(bmi.verdict_destination_is_default(v) == BMI_TRUE, "a default verdict");
        e = bmi.access_next_verdict(m, v, &next);
        CHECK(e == BMI_OK && next == NULL, "one verdict: 0x%08x", (unsigned)e);
        next = (const BmiVerdict *)1;
        e = bmi.access_next_verdict(m, (const BmiVerdict *)((const char *)v + 1), &next);
        CHECK(next == NULL && IS(e, BMI_ERROR_LOCATION_CLIENT, BMI_ERROR_TYPE_INVALID_ARG),
              "a pointer that is not a verdict: 0x%08x", (unsigned)e);
        const BmiRecipient *r = bmi.verdict_first_recipient(v);
        CHECK(r && bmi.verdict_next_recipient(v, r) &&
                  !bmi.verdict_next_recipient(v, bmi.verdict_next_recipient(v, r)),
              "two recipients");
        CHECK(bmi.verdict_next_recipient(v, (const BmiRecipient *)v) == NULL,
              "a pointer that is not a recipient");
    }
    bmi.free_message(m);
}

/* The unreachable Milter: a NETWORK/CONNECT error from whichever call connects. */
static void unreachable(BmiSystem *s) {
    BmiMessage *m = new_message(s);
    BmiError e = BMI_OK;
    const char *where = "";
    STEP(bmi.process_connection("127.0.0.1", m))
    STEP(bmi.process_from("a@example.org", m))
    STEP(bmi.accumulate_to("b@example.org", NULL, m))
    STEP(bmi.end_to(m))
    STEP(bmi.accumulate_headers("Subject: x\n", 11, m))
    STEP(bmi.end_headers(m))
    STEP(bmi.accumulate_body("body\n", 5, m))
    STEP(bmi.end_body(m))
    STEP(bmi.end_message(m))
    CHECK(IS(e, BMI_ERROR_LOCATION_NETWORK, BMI_ERROR_TYPE_CONNECT),
          "unreachable Milter: 0x%08x from %s: %s", (unsigned)e, where, last());
    CHECK(strstr(last(), "127.0.0.1") && strstr(last(), "PORT"), "%s", last());
    repeats(m, e);
    bmi.free_message(m);
}

int main(int argc, char **argv) {
    if (argc != 5) {
        fprintf(stderr, "usage: %s LIBRARY DIRECTORY CLOSED_PORT LIVE_PORT\n", argv[0]);
        return 2;
    }
    bmi_test_load(argv[1]);
    errors();
    systems(argv[2]);
    null_messages();
    optins();
    BmiSystem *closed = open_system(argv[2], "closed", atoi(argv[3]));
    BmiSystem *live = open_system(argv[2], "live", atoi(argv[4]));
    order_and_arguments(live);
    verdict_functions(live);
    after_the_end(live);
    unreachable(closed);
    bmi.free_system(closed);
    bmi.free_system(live);
    if (failures) {
        fprintf(stderr, "bmi_abuse: %d of %d checks failed\n", failures, checks);
        return 1;
    }
    printf("ok %d checks\n", checks);
    return 0;
}
