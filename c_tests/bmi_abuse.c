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
#include "bmi_load.h"

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

#define LOC(e) ((int)p_bmiErrorGetLocation(e))
#define TYPE(e) ((int)p_bmiErrorGetType(e))
#define IS(e, loc, type)                                                                         \
    (p_bmiErrorIsFatal(e) == BMI_TRUE && LOC(e) == (loc) && TYPE(e) == (type))

static const char *last(void) { return p_last_error(); }

static void write_file(const char *path, const char *text) {
    FILE *f = fopen(path, "w");
    if (!f || fputs(text, f) < 0 || fclose(f) != 0) {
        perror(path);
        exit(2);
    }
}

static void errors(void) {
    CHECK(p_bmiErrorIsFatal(BMI_OK) == BMI_FALSE, "success is not fatal");
    CHECK(p_bmiErrorIsFatal(0x03000006u) == BMI_TRUE, "client/invalid argument is fatal");
    CHECK(p_bmiErrorIsFatal(0x01000008u | BMI_ERROR_WARNING) == BMI_FALSE, "a warning");
    CHECK(LOC(0x03000006u) == BMI_ERROR_LOCATION_CLIENT, "location");
    CHECK(TYPE(0x03000006u) == BMI_ERROR_TYPE_INVALID_ARG, "type");
    CHECK(LOC(0xff7fffffu) == 255 && TYPE(0xff7fffffu) == 0x7fffff, "any value decodes");
}

static void systems(const char *dir) {
    char path[4096];
    BmiSystem *s = (BmiSystem *)1;
    BmiError e = p_bmiInitSystem(BMI_VERSION, NULL, &s);
    CHECK(IS(e, BMI_ERROR_LOCATION_CLIENT, BMI_ERROR_TYPE_INVALID_ARG) && s == NULL,
          "NULL path: 0x%08x", (unsigned)e);
    CHECK(strstr(last(), "config_file is NULL") != NULL, "%s", last());
    snprintf(path, sizeof path, "%s/ok.opt", dir);
    write_file(path, "HOST=127.0.0.1\nPORT=1\n");
    e = p_bmiInitSystem(BMI_VERSION, path, NULL);
    CHECK(IS(e, BMI_ERROR_LOCATION_CLIENT, BMI_ERROR_TYPE_INVALID_ARG), "NULL out: 0x%08x",
          (unsigned)e);
    /* Any version. */
    e = p_bmiInitSystem(-12345, path, &s);
    CHECK(e == BMI_OK && s != NULL, "version -12345: 0x%08x %s", (unsigned)e, last());
    p_bmiFreeSystem(s);
    snprintf(path, sizeof path, "%s/bad.opt", dir);
    write_file(path, "HOST=127.0.0.1\nTIMEOUT=soon\n");
    s = (BmiSystem *)1;
    e = p_bmiInitSystem(BMI_VERSION, path, &s);
    CHECK(IS(e, BMI_ERROR_LOCATION_CONFIG, BMI_ERROR_TYPE_CONFIG) && s == NULL,
          "bad option file: 0x%08x", (unsigned)e);
    CHECK(strstr(last(), path) && strstr(last(), ":2") && strstr(last(), "TIMEOUT") &&
              strstr(last(), "soon"),
          "the last error names file, line, option and value: %s", last());
    snprintf(path, sizeof path, "%s/missing.opt", dir);
    e = p_bmiInitSystem(BMI_VERSION, path, &s);
    CHECK(IS(e, BMI_ERROR_LOCATION_CONFIG, BMI_ERROR_TYPE_CONFIG) && s == NULL,
          "missing option file: 0x%08x", (unsigned)e);
    CHECK(strstr(last(), "missing.opt") != NULL, "%s", last());
    p_bmiFreeSystem(NULL);
    BmiMessage *m = (BmiMessage *)1;
    e = p_bmiInitMessage(NULL, &m);
    CHECK(IS(e, BMI_ERROR_LOCATION_CLIENT, BMI_ERROR_TYPE_INVALID_ARG) && m == NULL,
          "NULL system: 0x%08x", (unsigned)e);
}

static BmiSystem *open_system(const char *dir, const char *name, int port) {
    char path[4096], text[256];
    snprintf(path, sizeof path, "%s/%s.opt", dir, name);
    snprintf(text, sizeof text, "HOST=127.0.0.1\nPORT=%d\nTIMEOUT=2000\nCONNECT_TIMEOUT=2000\n", port);
    write_file(path, text);
    BmiSystem *s = NULL;
    BmiError e = p_bmiInitSystem(BMI_VERSION, path, &s);
    if (e != BMI_OK || !s) {
        fprintf(stderr, "bmi_abuse: %s: %s\n", path, last());
        exit(1);
    }
    return s;
}

static BmiMessage *new_message(BmiSystem *s) {
    BmiMessage *m = NULL;
    BmiError e = p_bmiInitMessage(s, &m);
    if (e != BMI_OK || !m) {
        fprintf(stderr, "bmi_abuse: bmiInitMessage: %s\n", last());
        exit(1);
    }
    return m;
}

static void null_messages(void) {
    BmiError e[] = {
        p_bmiProcessConnection("127.0.0.1", NULL), p_bmiProcessFROM("a@b", NULL),
        p_bmiAccumulateTO("a@b", NULL, NULL),      p_bmiEndTO(NULL),
        p_bmiAccumulateHeaders("A: b\n", 5, NULL), p_bmiEndHeaders(NULL),
        p_bmiAccumulateBody("x", 1, NULL),         p_bmiEndBody(NULL),
        p_bmiEndMessage(NULL),
    };
    for (size_t i = 0; i < sizeof e / sizeof e[0]; i++)
        CHECK(IS(e[i], BMI_ERROR_LOCATION_CLIENT, BMI_ERROR_TYPE_INVALID_ARG),
              "push %zu with a NULL message: 0x%08x", i, (unsigned)e[i]);
    p_bmiFreeMessage(NULL);
}

/* After a failure every push returns the first error. */
static void repeats(BmiMessage *m, BmiError first) {
    BmiError e[] = {
        p_bmiProcessConnection("127.0.0.1", m), p_bmiProcessFROM("a@b", m),
        p_bmiAccumulateTO("a@b", NULL, m),      p_bmiEndTO(m),
        p_bmiAccumulateHeaders("A: b\n", 5, m), p_bmiEndHeaders(m),
        p_bmiAccumulateBody("x", 1, m),         p_bmiEndBody(m),
        p_bmiEndMessage(m),
    };
    for (size_t i = 0; i < sizeof e / sizeof e[0]; i++)
        CHECK(e[i] == first, "push %zu after a failure: 0x%08x, not 0x%08x", i, (unsigned)e[i],
              (unsigned)first);
    const BmiVerdict *v = (const BmiVerdict *)1;
    BmiError a = p_bmiAccessFirstVerdict(m, &v);
    CHECK(v == NULL && a == first, "verdicts of a failed message: 0x%08x", (unsigned)a);
}

static void order_and_arguments(BmiSystem *s) {
    /* Out of order. */
    BmiMessage *m = new_message(s);
    BmiError e = p_bmiProcessFROM("a@b", m);
    CHECK(IS(e, BMI_ERROR_LOCATION_CLIENT, BMI_ERROR_TYPE_STATE), "FROM first: 0x%08x",
          (unsigned)e);
    CHECK(strstr(last(), "bmiProcessFROM out of order") != NULL, "%s", last());
    repeats(m, e);
    p_bmiFreeMessage(m);
    /* bmiEndMessage before the body. */
    m = new_message(s);
    e = p_bmiEndMessage(m);
    CHECK(IS(e, BMI_ERROR_LOCATION_CLIENT, BMI_ERROR_TYPE_STATE), "EndMessage first: 0x%08x",
          (unsigned)e);
    p_bmiFreeMessage(m);
    /* NULL text. */
    m = new_message(s);
    e = p_bmiProcessConnection(NULL, m);
    CHECK(IS(e, BMI_ERROR_LOCATION_CLIENT, BMI_ERROR_TYPE_INVALID_ARG), "NULL ip: 0x%08x",
          (unsigned)e);
    CHECK(strstr(last(), "client_ip is NULL") != NULL, "%s", last());
    repeats(m, e);
    p_bmiFreeMessage(m);
    /* Not an address. */
    m = new_message(s);
    e = p_bmiProcessConnection("mx.example.org", m);
    CHECK(IS(e, BMI_ERROR_LOCATION_CLIENT, BMI_ERROR_TYPE_INVALID_ARG), "bad ip: 0x%08x",
          (unsigned)e);
    CHECK(strstr(last(), "\"mx.example.org\"") != NULL, "%s", last());
    p_bmiFreeMessage(m);
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
            p_bmiProcessConnection("127.0.0.1", m);
            p_bmiProcessFROM("", m);
            p_bmiAccumulateTO("a@example.org", NULL, m);
            p_bmiEndTO(m);
            if (body)
                p_bmiEndHeaders(m);
            e = body ? p_bmiAccumulateBody(bad[i].text, bad[i].len, m)
                     : p_bmiAccumulateHeaders(bad[i].text, bad[i].len, m);
            CHECK(IS(e, BMI_ERROR_LOCATION_CLIENT, BMI_ERROR_TYPE_INVALID_ARG),
                  "%s length %d: 0x%08x", body ? "body" : "header", bad[i].len, (unsigned)e);
            CHECK(strstr(last(), bad[i].says) != NULL, "%s", last());
            repeats(m, e);
            p_bmiFreeMessage(m);
        }
    }
}

static void optins(void) {
    BmiError e = p_bmiOptinInit(NULL);
    CHECK(IS(e, BMI_ERROR_LOCATION_CLIENT, BMI_ERROR_TYPE_INVALID_ARG), "NULL: 0x%08x",
          (unsigned)e);
    BmiOptin *o = NULL;
    e = p_bmiOptinInit(&o);
    CHECK(e == BMI_OK && o != NULL, "init: 0x%08x", (unsigned)e);
    CHECK(p_bmiOptinMset(o, "spam:virus", ':') == BMI_OK, "mset: %s", last());
    e = p_bmiOptinMset(o, NULL, ':');
    CHECK(IS(e, BMI_ERROR_LOCATION_CLIENT, BMI_ERROR_TYPE_INVALID_ARG), "NULL values: 0x%08x",
          (unsigned)e);
    e = p_bmiOptinMset(NULL, "a", ':');
    CHECK(IS(e, BMI_ERROR_LOCATION_CLIENT, BMI_ERROR_TYPE_INVALID_ARG), "NULL optin: 0x%08x",
          (unsigned)e);
    p_bmiOptinFree(o);
    p_bmiOptinFree(NULL);
}

static void verdict_functions(BmiSystem *s) {
    const BmiVerdict *v = (const BmiVerdict *)1;
    BmiError e = p_bmiAccessFirstVerdict(NULL, &v);
    CHECK(v == NULL && IS(e, BMI_ERROR_LOCATION_CLIENT, BMI_ERROR_TYPE_INVALID_ARG),
          "first of NULL: 0x%08x", (unsigned)e);
    BmiMessage *m = new_message(s);
    e = p_bmiAccessFirstVerdict(m, NULL);
    CHECK(IS(e, BMI_ERROR_LOCATION_CLIENT, BMI_ERROR_TYPE_INVALID_ARG), "NULL out: 0x%08x",
          (unsigned)e);
    v = (const BmiVerdict *)1;
    e = p_bmiAccessFirstVerdict(m, &v);
    CHECK(v == NULL && IS(e, BMI_ERROR_LOCATION_CLIENT, BMI_ERROR_TYPE_STATE),
          "before the end: 0x%08x", (unsigned)e);
    v = (const BmiVerdict *)1;
    e = p_bmiAccessNextVerdict(m, (const BmiVerdict *)8, &v);
    CHECK(v == NULL && p_bmiErrorIsFatal(e) == BMI_TRUE, "next before the end: 0x%08x",
          (unsigned)e);
    p_bmiFreeMessage(m);
    v = (const BmiVerdict *)1;
    p_bmiAccessNextVerdict(NULL, NULL, &v);
    CHECK(v == NULL, "next of NULL sets NULL");

    CHECK(p_bmiErrorIsFatal(p_bmiVerdictError(NULL)) == BMI_TRUE, "error of NULL");
    CHECK(p_bmiVerdictDestinationIsDefault(NULL) == BMI_TRUE, "NULL fails open");
    CHECK(p_bmiVerdictAccessDestination(NULL) == NULL, "destination of NULL");
    CHECK(p_bmiVerdictRuleFired(NULL, 3) == BMI_FALSE, "rule of NULL");
    CHECK(p_bmiVerdictAccessFirstRecipient(NULL) == NULL, "first recipient of NULL");
    CHECK(p_bmiVerdictAccessNextRecipient(NULL, NULL) == NULL, "next recipient of NULL");
    CHECK(p_bmiRecipientAccessAddress(NULL) == NULL, "address of NULL");
    char *str = (char *)1;
    e = p_bmiCreateStrFromVerdict(NULL, &str);
    CHECK(str == NULL && IS(e, BMI_ERROR_LOCATION_CLIENT, BMI_ERROR_TYPE_INVALID_ARG),
          "string of NULL: 0x%08x", (unsigned)e);
    char *old = (char *)1;
    e = p_bmiCreateOldStrFromVerdict(NULL, &old);
    CHECK(old == NULL && p_bmiErrorIsFatal(e) == BMI_TRUE, "old string of NULL");
    p_bmiFreeStr(NULL);
    p_bmiFreeVerdict(NULL);

    /* Damaged strings. */
    const char *damaged[] = {"", "MSF1", "MSF2AAAAAAAA", "not a verdict", "MSF1!!!!",
                             "MSF1AQAAAAACDWFAZXhhbXBsZS5vcmcNYkBleGFtcGxlLm9yZ/Wh18J",
                             "MSF1AQAAAAACDWFAZXhhbXBsZS5vcmcNYkBleGFtcGxlLm9yZ/Wh18",
                             "MSF1//////////////////////////8"};
    for (size_t i = 0; i < sizeof damaged / sizeof damaged[0]; i++) {
        BmiVerdict *pv = (BmiVerdict *)1;
        e = p_bmiCreateVerdictFromStr(damaged[i], &pv);
        CHECK(pv == NULL && IS(e, BMI_ERROR_LOCATION_CLIENT, BMI_ERROR_TYPE_BAD_VERDICT),
              "\"%s\": 0x%08x", damaged[i], (unsigned)e);
        CHECK(strstr(last(), "not a verdict string") != NULL, "%s", last());
    }
    /* The good one of the damaged ones: a discard for two recipients. */
    BmiVerdict *pv = NULL;
    e = p_bmiCreateVerdictFromStr("MSF1AQAAAAACDWFAZXhhbXBsZS5vcmcNYkBleGFtcGxlLm9yZ/Wh18I", &pv);
    CHECK(e == BMI_OK && pv != NULL, "a good string: %s", last());
    if (pv) {
        CHECK(p_bmiVerdictDestinationIsDefault(pv) == BMI_FALSE &&
                  p_bmiVerdictAccessDestination(pv) == NULL,
              "a discard");
        const BmiRecipient *r = p_bmiVerdictAccessFirstRecipient(pv);
        CHECK(r && strcmp(p_bmiRecipientAccessAddress(r), "a@example.org") == 0, "recipient 1");
        CHECK(p_bmiVerdictAccessNextRecipient(pv, (const BmiRecipient *)((const char *)r + 1)) ==
                  NULL,
              "a pointer into a recipient is no recipient");
        old = NULL;
        CHECK(p_bmiCreateOldStrFromVerdict(pv, &old) == BMI_OK && old && !strcmp(old, "discard"),
              "old string");
        p_bmiFreeVerdict(pv);
        /* Static: still readable after the verdict is gone (Exim uses it so). */
        CHECK(old && !strcmp(old, "discard"), "old string after free");
    }
    pv = (BmiVerdict *)1;
    e = p_bmiCreateVerdictFromStr(NULL, &pv);
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
    STEP(p_bmiProcessConnection("127.0.0.1", m))
    STEP(p_bmiProcessFROM("", m))
    STEP(p_bmiAccumulateTO("a@example.org", NULL, m))
    STEP(p_bmiAccumulateTO("b@example.org", NULL, m))
    STEP(p_bmiEndTO(m))
    STEP(p_bmiAccumulateHeaders("Subject: no number\n", 19, m))
    STEP(p_bmiEndHeaders(m))
    STEP(p_bmiAccumulateBody("", 0, m))
    STEP(p_bmiEndBody(m))
    STEP(p_bmiEndMessage(m))
    CHECK(e == BMI_OK, "a plain message: 0x%08x from %s: %s", (unsigned)e, where, last());
    if (e != BMI_OK) {
        p_bmiFreeMessage(m);
        return;
    }
    e = p_bmiAccumulateBody("x", 1, m);
    CHECK(IS(e, BMI_ERROR_LOCATION_CLIENT, BMI_ERROR_TYPE_STATE), "a push after the end: 0x%08x",
          (unsigned)e);
    e = p_bmiEndMessage(m);
    CHECK(IS(e, BMI_ERROR_LOCATION_CLIENT, BMI_ERROR_TYPE_STATE), "a second end: 0x%08x",
          (unsigned)e);
    const BmiVerdict *v = NULL, *next = (const BmiVerdict *)1;
    e = p_bmiAccessFirstVerdict(m, &v);
    CHECK(e == BMI_OK && v != NULL, "the verdicts stay: 0x%08x", (unsigned)e);
    if (v) {
        CHECK(p_bmiVerdictDestinationIsDefault(v) == BMI_TRUE, "a default verdict");
        e = p_bmiAccessNextVerdict(m, v, &next);
        CHECK(e == BMI_OK && next == NULL, "one verdict: 0x%08x", (unsigned)e);
        next = (const BmiVerdict *)1;
        e = p_bmiAccessNextVerdict(m, (const BmiVerdict *)((const char *)v + 1), &next);
        CHECK(next == NULL && IS(e, BMI_ERROR_LOCATION_CLIENT, BMI_ERROR_TYPE_INVALID_ARG),
              "a pointer that is not a verdict: 0x%08x", (unsigned)e);
        const BmiRecipient *r = p_bmiVerdictAccessFirstRecipient(v);
        CHECK(r && p_bmiVerdictAccessNextRecipient(v, r) &&
                  !p_bmiVerdictAccessNextRecipient(v, p_bmiVerdictAccessNextRecipient(v, r)),
              "two recipients");
        CHECK(p_bmiVerdictAccessNextRecipient(v, (const BmiRecipient *)v) == NULL,
              "a pointer that is not a recipient");
    }
    p_bmiFreeMessage(m);
}

/* The unreachable Milter: a NETWORK/CONNECT error from whichever call connects. */
static void unreachable(BmiSystem *s) {
    BmiMessage *m = new_message(s);
    BmiError e = BMI_OK;
    const char *where = "";
    STEP(p_bmiProcessConnection("127.0.0.1", m))
    STEP(p_bmiProcessFROM("a@example.org", m))
    STEP(p_bmiAccumulateTO("b@example.org", NULL, m))
    STEP(p_bmiEndTO(m))
    STEP(p_bmiAccumulateHeaders("Subject: x\n", 11, m))
    STEP(p_bmiEndHeaders(m))
    STEP(p_bmiAccumulateBody("body\n", 5, m))
    STEP(p_bmiEndBody(m))
    STEP(p_bmiEndMessage(m))
    CHECK(IS(e, BMI_ERROR_LOCATION_NETWORK, BMI_ERROR_TYPE_CONNECT),
          "unreachable Milter: 0x%08x from %s: %s", (unsigned)e, where, last());
    CHECK(strstr(last(), "127.0.0.1") && strstr(last(), "PORT"), "%s", last());
    repeats(m, e);
    p_bmiFreeMessage(m);
}

int main(int argc, char **argv) {
    if (argc != 5) {
        fprintf(stderr, "usage: %s LIBRARY DIRECTORY CLOSED_PORT LIVE_PORT\n", argv[0]);
        return 2;
    }
    bmi_load(argv[1]);
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
    p_bmiFreeSystem(closed);
    p_bmiFreeSystem(live);
    if (failures) {
        fprintf(stderr, "bmi_abuse: %d of %d checks failed\n", failures, checks);
        return 1;
    }
    printf("ok %d checks\n", checks);
    return 0;
}
