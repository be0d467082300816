/*
 * bmi_mta: plays an MTA that speaks the Brightmail client API (BMI), as Exim's bmi_spam.c does:
 * it dlopens the library, looks up the bmi* names only (never a spamfilter_* one, except
 * spamfilter_last_error for the text of a failure), and per message calls
 *   bmiInitSystem, bmiInitMessage, bmiProcessConnection, bmiProcessFROM,
 *   bmiAccumulateTO (with an opt-in when --optin is given) for each recipient, bmiEndTO,
 *   bmiAccumulateHeaders for each field (LF line ends, folding kept), bmiEndHeaders,
 *   bmiAccumulateBody in chunks (4096 bytes, as Exim reads its spool), bmiEndBody,
 *   bmiEndMessage, then walks the verdicts, turning each into a string and back
 *   (bmiCreateStrFromVerdict / bmiCreateVerdictFromStr) and writing a NUL over the '@' of each
 *   address of the parsed copy, as Exim does; bmiFreeMessage, bmiFreeSystem.
 *
 * usage: bmi_mta LIBRARY OPTION_FILE MESSAGE_FILE [--ip IP] [--from ADDR] [--to ADDR]...
 *                [--optin VALUES] [--chunk N] [--repeat N] [--body-mb N] [--rss]
 *   --body-mb N   the body is N MiB of generated 64-byte lines (LF) instead of the file's body
 *   --swap FILE   after the first message, FILE's text replaces the option file's (in place),
 *                 and the next message waits 1.2 s: a thread looks at its option file again
 *                 only after a second (src/bmi/system.rs, RECHECK)
 *   --rss         print the growth of the peak resident size (getrusage ru_maxrss) between
 *                 the end of the header and bmiEndMessage: "rss_growth_kb K"
 *
 * Output, per message (tests/bmi.rs parses it):
 *   message I
 *   fatal CALL LOCATION TYPE LAST_ERROR         (and nothing else for the message), or
 *   verdict J error=0xXXXXXXXX default=D old=OLD
 *   destination TEXT | destination NULL        (TEXT with \r \n \\ escaped)
 *   recipient ADDR                              (one per recipient)
 *   string S
 * Exit status 0 unless the library misbehaved (a check of this program failed: 1) or the
 * arguments were wrong (2).
 */
#define _GNU_SOURCE
#include "bmi_api.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <time.h>

#include "bmi_test.h"

static int failed_checks;

#define CHECK(cond, ...)                                                                         \
    do {                                                                                         \
        if (!(cond)) {                                                                           \
            fprintf(stderr, "bmi_mta: check failed: %s: ", #cond);                               \
            fprintf(stderr, __VA_ARGS__);                                                        \
            fputc('\n', stderr);                                                                 \
            failed_checks++;                                                                     \
        }                                                                                        \
    } while (0)

static void print_escaped(const char *s) {
    for (; *s; s++) {
        switch (*s) {
        case '\r': fputs("\\r", stdout); break;
        case '\n': fputs("\\n", stdout); break;
        case '\\': fputs("\\\\", stdout); break;
        default: putchar(*s);
        }
    }
}

/* Reports a fatal error of `call`; returns 1 when `err` is fatal. */
static int fatal(const char *call, BmiError err) {
    if (bmi.error_is_fatal(err) != BMI_TRUE)
        return 0;
    printf("fatal %s %d %d ", call, (int)bmi.error_get_location(err), (int)bmi.error_get_type(err));
    print_escaped(p_last_error());
    putchar('\n');
    return 1;
}

struct options {
    const char *ip, *from, *optin;
    const char *to[64];
    int to_count;
    size_t chunk;
    int repeat;
    long body_mb;
    int rss;
    const char *swap;
};

static long maxrss_kb(void) {
    struct rusage ru;
    getrusage(RUSAGE_SELF, &ru);
    return ru.ru_maxrss;
}

/* The message file as header fields (LF line ends) and body, as Exim holds them. */
struct message {
    char *text;
    char **fields;
    int *lengths;
    int count;
    char *body;
    size_t body_len;
};

static char *read_file(const char *path, size_t *len) {
    FILE *f = fopen(path, "rb");
    if (!f) {
        perror(path);
        exit(2);
    }
    size_t cap = 1 << 16, n = 0;
    char *buf = malloc(cap);
    size_t got;
    while (buf && (got = fread(buf + n, 1, cap - n, f)) > 0) {
        n += got;
        if (n == cap)
            buf = realloc(buf, cap *= 2);
    }
    fclose(f);
    if (!buf) {
        fprintf(stderr, "bmi_mta: out of memory\n");
        exit(2);
    }
    *len = n;
    return buf;
}

/* CRLF -> LF in place; returns the new length. */
static size_t to_lf(char *s, size_t n) {
    size_t o = 0;
    for (size_t i = 0; i < n; i++)
        if (!(s[i] == '\r' && i + 1 < n && s[i + 1] == '\n'))
            s[o++] = s[i];
    return o;
}

static struct message parse_message(const char *path) {
    struct message m = {0};
    size_t n;
    char *text = read_file(path, &n);
    n = to_lf(text, n);
    m.text = text;
    size_t at = 0;
    m.fields = calloc(1024, sizeof *m.fields);
    m.lengths = calloc(1024, sizeof *m.lengths);
    while (at < n && text[at] != '\n' && m.count < 1024) {
        size_t start = at;
        /* A field runs to the LF before a line that does not start with a blank. */
        do {
            char *lf = memchr(text + at, '\n', n - at);
            at = lf ? (size_t)(lf - text) + 1 : n;
        } while (at < n && (text[at] == ' ' || text[at] == '\t'));
        m.fields[m.count] = text + start;
        m.lengths[m.count] = (int)(at - start);
        m.count++;
    }
    if (at < n && text[at] == '\n')
        at++;
    m.body = text + at;
    m.body_len = n - at;
    return m;
}

/* One body chunk from `m` (or from generated lines) at `offset`; returns its length. */
static size_t body_chunk(const struct message *m, const struct options *o, size_t offset,
                         char *buf) {
    if (o->body_mb <= 0) {
        size_t left = m->body_len - offset;
        size_t len = left < o->chunk ? left : o->chunk;
        memcpy(buf, m->body + offset, len);
        return len;
    }
    size_t total = (size_t)o->body_mb << 20, left = total - offset;
    size_t len = left < o->chunk ? left : o->chunk;
    static const char line[] = "a line of generated body text, 64 bytes long, ending in LF.....\n";
    for (size_t i = 0; i < len; i++)
        buf[i] = line[(offset + i) % (sizeof line - 1)];
    return len;
}

static size_t body_total(const struct message *m, const struct options *o) {
    return o->body_mb > 0 ? (size_t)o->body_mb << 20 : m->body_len;
}

static void show_verdicts(BmiMessage *message) {
    const BmiVerdict *v = NULL;
    int j = 0;
    for (bmi.access_first_verdict(message, &v); v != NULL;
         bmi.access_next_verdict(message, v, &v)) {
        char *old = NULL;
        BmiError err = bmi.verdict_error(v);
        bmi.create_old_str_from_verdict(v, &old);
        printf("verdict %d error=0x%08x default=%d old=%s\n", j++, (unsigned)err,
               bmi.verdict_destination_is_default(v), old ? old : "(null)");
        const char *dest = bmi.verdict_access_destination(v);
        if (dest) {
            fputs("destination ", stdout);
            print_escaped(dest);
            putchar('\n');
        } else {
            puts("destination NULL");
        }
        CHECK(bmi.verdict_rule_fired(v, 1) == BMI_FALSE, "a Milter has no numbered rules");
        for (const BmiRecipient *r = bmi.verdict_first_recipient(v); r;
             r = bmi.verdict_next_recipient(v, r))
            printf("recipient %s\n", bmi.recipient_address(r));
        char *s = NULL;
        BmiError e = bmi.create_str_from_verdict(v, &s);
        CHECK(e == BMI_OK && s != NULL, "bmiCreateStrFromVerdict: 0x%08x", (unsigned)e);
        if (!s)
            continue;
        printf("string %s\n", s);
        CHECK(strpbrk(s, ": \t\r\n") == NULL, "a verdict string with ':' or white space: %s", s);
        /* Back again, as Exim does at delivery: the same verdict. */
        BmiVerdict *back = NULL;
        e = bmi.create_verdict_from_str(s, &back);
        CHECK(e == BMI_OK && back, "bmiCreateVerdictFromStr(%s): 0x%08x", s, (unsigned)e);
        if (back) {
            const char *d2 = bmi.verdict_access_destination(back);
            CHECK((dest == NULL) == (d2 == NULL) && (!dest || strcmp(dest, d2) == 0),
                  "the destination changed in the round trip");
            CHECK(bmi.verdict_destination_is_default(back) == bmi.verdict_destination_is_default(v),
                  "default changed in the round trip");
            CHECK(bmi.verdict_error(back) == err, "the error changed in the round trip");
            const BmiRecipient *a = bmi.verdict_first_recipient(v);
            const BmiRecipient *b = bmi.verdict_first_recipient(back);
            for (; a && b; a = bmi.verdict_next_recipient(v, a),
                           b = bmi.verdict_next_recipient(back, b)) {
                char *addr = bmi.recipient_address(b);
                CHECK(strcmp(bmi.recipient_address(a), addr) == 0, "a recipient changed");
                /* Exim's bmi_get_base64_verdict splits the address in place. */
                char *at = strchr(addr, '@');
                if (at)
                    *at = '\0';
            }
            CHECK(a == NULL && b == NULL, "the number of recipients changed in the round trip");
            bmi.free_verdict(back);
        }
        bmi.free_str(s);
    }
}

/* `to` gets the bytes of `from`, written in place (same inode): a changed option file. */
static void copy_file(const char *from, const char *to) {
    size_t n;
    char *text = read_file(from, &n);
    FILE *f = fopen(to, "wb");
    if (!f || fwrite(text, 1, n, f) != n || fclose(f) != 0) {
        perror(to);
        exit(2);
    }
    free(text);
}

/* One message, Exim's way. */
static void one_message(const char *option_file, const struct message *m, const struct options *o) {
    BmiSystem *system = NULL;
    BmiMessage *message = NULL;
    BmiError err = bmi.init_system(BMI_VERSION, option_file, &system);
    if (fatal("bmiInitSystem", err)) {
        CHECK(system == NULL, "a failed bmiInitSystem left a system");
        return;
    }
    err = bmi.init_message(system, &message);
    if (fatal("bmiInitMessage", err))
        goto out;
    if (fatal("bmiProcessConnection", bmi.process_connection(o->ip, message)))
        goto out;
    if (fatal("bmiProcessFROM", bmi.process_from(o->from, message)))
        goto out;
    for (int i = 0; i < o->to_count; i++) {
        BmiOptin *optin = NULL;
        if (o->optin) {
            bmi.optin_init(&optin);
            if (bmi.error_is_fatal(bmi.optin_mset(optin, o->optin, ':')) == BMI_TRUE) {
                bmi.optin_free(optin);
                optin = NULL;
            }
        }
        err = bmi.accumulate_to(o->to[i], optin, message);
        if (optin)
            bmi.optin_free(optin);
        if (fatal("bmiAccumulateTO", err))
            goto out;
    }
    if (fatal("bmiEndTO", bmi.end_to(message)))
        goto out;
    for (int i = 0; i < m->count; i++)
        if (fatal("bmiAccumulateHeaders", bmi.accumulate_headers(m->fields[i], m->lengths[i], message)))
            goto out;
    if (fatal("bmiEndHeaders", bmi.end_headers(message)))
        goto out;
    char *buf = malloc(o->chunk);
    long before = maxrss_kb();
    size_t total = body_total(m, o);
    for (size_t off = 0; off < total;) {
        size_t len = body_chunk(m, o, off, buf);
        off += len;
        if (fatal("bmiAccumulateBody", bmi.accumulate_body(buf, (int)len, message))) {
            free(buf);
            goto out;
        }
    }
    free(buf);
    if (fatal("bmiEndBody", bmi.end_body(message)))
        goto out;
    err = bmi.end_message(message);
    if (o->rss)
        printf("rss_growth_kb %ld\n", maxrss_kb() - before);
    if (fatal("bmiEndMessage", err)) {
        /* Exim ignores the iterators' errors: they must still say "no verdict". */
        const BmiVerdict *v = (const BmiVerdict *)1;
        bmi.access_first_verdict(message, &v);
        CHECK(v == NULL, "bmiAccessFirstVerdict after a failed message set no NULL");
        goto out;
    }
    show_verdicts(message);
out:
    bmi.free_message(message);
    bmi.free_system(system);
}

int main(int argc, char **argv) {
    if (argc < 4) {
        fprintf(stderr, "usage: %s LIBRARY OPTION_FILE MESSAGE_FILE [options]\n", argv[0]);
        return 2;
    }
    struct options o = {.ip = "127.0.0.1", .from = "sender@example.org", .chunk = 4096, .repeat = 1};
    for (int i = 4; i < argc; i++) {
        const char *a = argv[i], *v = i + 1 < argc ? argv[i + 1] : NULL;
        if (!v && strcmp(a, "--rss") != 0) {
            fprintf(stderr, "bmi_mta: %s needs a value\n", a);
            return 2;
        }
        if (!strcmp(a, "--ip")) o.ip = v, i++;
        else if (!strcmp(a, "--from")) o.from = v, i++;
        else if (!strcmp(a, "--to") && o.to_count < 64) o.to[o.to_count++] = v, i++;
        else if (!strcmp(a, "--optin")) o.optin = v, i++;
        else if (!strcmp(a, "--chunk")) o.chunk = strtoul(v, NULL, 10), i++;
        else if (!strcmp(a, "--repeat")) o.repeat = atoi(v), i++;
        else if (!strcmp(a, "--body-mb")) o.body_mb = atol(v), i++;
        else if (!strcmp(a, "--rss")) o.rss = 1;
        else if (!strcmp(a, "--swap")) o.swap = v, i++;
        else {
            fprintf(stderr, "bmi_mta: unknown option %s\n", a);
            return 2;
        }
    }
    if (o.chunk == 0 || o.to_count == 0) {
        fprintf(stderr, "bmi_mta: --chunk must be positive, and at least one --to given\n");
        return 2;
    }
    bmi_test_load(argv[1]);
    struct message m = parse_message(argv[3]);
    for (int n = 0; n < o.repeat; n++) {
        printf("message %d\n", n);
        one_message(argv[2], &m, &o);
        fflush(stdout);
        if (n == 0 && o.swap) {
            copy_file(o.swap, argv[2]);
            nanosleep(&(struct timespec){.tv_sec = 1, .tv_nsec = 200000000}, NULL);
        }
    }
    free(m.text);
    free(m.fields);
    free(m.lengths);
    return failed_checks ? 1 : 0;
}
