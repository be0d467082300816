/*
 * guard: the caller's structs at exactly an older, shorter size, each placed at the very end of a
 * page whose next page is PROT_NONE. An MTA built against an older header passes such structs, and
 * the library must read and write only the first struct_size bytes; one byte more touches the
 * guard page and faults. The fault handler names the case and how far past the struct the access
 * was, and the program exits 3 (tests/abi_abuse.rs and `make memcheck` see the failure). Full-size
 * storage with a short struct_size, as c_tests/abuse.c uses, cannot show an over-read at all.
 *
 *   guard LIBRARY OPTION_FILE [--no-self-check]
 *
 * OPTION_FILE points at a running tests/milters/load_milter.py (verdict by the Subject number N:
 * N mod 4 = 0 continue + X-Load-Id, 1 reject, 2 tempfail, 3 discard). The self-check (skipped with
 * --no-self-check, for valgrind, which reports the deliberate fault) first shows in a child process
 * that a struct's last byte is writable and the byte after it faults.
 *
 * One line per case on stderr ("ok" or "FAIL" with the reason), nothing on stdout; exit status 0
 * only when every case passed.
 */
#define _GNU_SOURCE
#include "mta.h"
#include "report.h"

#include <signal.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/wait.h>
#include <unistd.h>

/* The first version of the result ended with elapsed_ms (the library's RESULT_MIN_SIZE). */
#define RESULT_V1_SIZE (offsetof(SpamfilterResult, elapsed_ms) + sizeof(uint64_t))
/* The smallest message the library accepts: up to recipient_count. */
#define MESSAGE_MIN_SIZE (offsetof(SpamfilterMessage, recipient_count) + sizeof(size_t))
/* What the library must overwrite in a result: any field still holding it was not written. */
#define GARBAGE 0x5A


/* ------------------------------------------------------------------------------------------ */
/* Guarded storage and the fault handler. */

struct guarded {
    unsigned char *map; /* two pages: the struct's, then the guard */
    size_t page;
};

/* What the fault handler reports: the case running and where its struct's guard page begins. */
static const char *volatile current_case = "(setup)";
static unsigned char *volatile current_guard;

/* `size` bytes ending exactly where a PROT_NONE page begins; NULL (reported) on failure. */
static void *guarded_alloc(struct guarded *g, size_t size)
{
    g->page = (size_t)sysconf(_SC_PAGESIZE);
    g->map = mmap(NULL, 2 * g->page, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (g->map == MAP_FAILED) {
        report(0, current_case, "mmap of two pages failed");
        g->map = NULL;
        return NULL;
    }
    if (mprotect(g->map + g->page, g->page, PROT_NONE) != 0) {
        report(0, current_case, "mprotect of the guard page failed");
        munmap(g->map, 2 * g->page);
        g->map = NULL;
        return NULL;
    }
    current_guard = g->map + g->page;
    return g->map + g->page - size;
}

static void guarded_release(struct guarded *g)
{
    if (g->map != NULL)
        munmap(g->map, 2 * g->page);
    g->map = NULL;
    current_guard = NULL;
}

/* Async-signal-safe: write(2) only. */
static void say(const char *s)
{
    ssize_t w = write(2, s, strlen(s));
    (void)w;
}

static void say_number(long v)
{
    char buf[32];
    size_t i = sizeof buf;
    int neg = v < 0;
    unsigned long u = neg ? 0ul - (unsigned long)v : (unsigned long)v;
    buf[--i] = 0;
    do {
        buf[--i] = (char)('0' + u % 10);
        u /= 10;
    } while (u != 0 && i > 1);
    if (neg)
        buf[--i] = '-';
    say(buf + i);
}

static void on_fault(int sig, siginfo_t *info, void *uctx)
{
    (void)uctx;
    say("FAIL ");
    say(current_case);
    say(": signal ");
    say_number(sig);
    unsigned char *at = info->si_addr;
    if (current_guard != NULL && at >= current_guard && at < current_guard + 65536) {
        say(" at byte ");
        say_number((long)(at - current_guard));
        say(" past the end of the caller's struct: the library read or wrote beyond "
            "struct_size\n");
    } else {
        say(" (not at the guard page)\n");
    }
    _exit(3);
}

/* In a child: the last byte of a guarded struct must be writable and the next one must fault,
 * or the cases below prove nothing. */
static void self_check(void)
{
    current_case = "guard page self-check";
    struct guarded g;
    unsigned char *p = guarded_alloc(&g, 8);
    if (p == NULL)
        return;
    pid_t pid = fork();
    if (pid == 0) {
        p[7] = 1;
        say("self-check: the struct's last byte is writable\n");
        ((volatile unsigned char *)p)[8] = 1;
        _exit(0);
    }
    int status = 0;
    if (pid < 0 || waitpid(pid, &status, 0) != pid) {
        report(0, current_case, "fork/waitpid failed");
    } else {
        report(WIFSIGNALED(status) && WTERMSIG(status) == SIGSEGV, current_case,
               "writing one byte past the struct did not fault (wait status %d)", status);
    }
    guarded_release(&g);
}

/* ------------------------------------------------------------------------------------------ */
/* Messages and verdicts. */

static const SpamfilterRecipient rcpt = {"rcpt@example.net", NULL, 0};
static const SpamfilterMacro macro = {"{tls_version}", "TLSv1.3"};

/* A full message (data = a load Milter message numbered n), as our header sees it. */
static void message_init(SpamfilterMessage *m, const char *data)
{
    memset(m, 0, sizeof *m);
    m->struct_size = sizeof *m;
    m->client_name = "client.example";
    m->client_addr = "192.0.2.7";
    m->client_port = 40001;
    m->helo = "client.example";
    m->sender = "sender@example.org";
    m->recipients = &rcpt;
    m->recipient_count = 1;
    m->mta_hostname = "mta.example";
    m->queue_id = "GUARD1";
    m->auth_type = "PLAIN";
    m->auth_authen = "user";
    m->macros = &macro;
    m->macro_count = 1;
    m->data = (const uint8_t *)data;
    m->data_len = strlen(data);
}

/* The load Milter's verdict for Subject number n (-1: the message was not seen, no verdict). */
static void expect_verdict(struct sf_api *api, const char *name, SpamfilterStatus st,
                           const SpamfilterResult *r, long n)
{
    if (st != SPAMFILTER_STATUS_OK) {
        report(0, name, "status %d (%s), expected OK", (int)st, api->last_error());
        return;
    }
    char want[96];
    switch (n < 0 ? -1 : n % 4) {
    case -1:
        report(r->kind == SPAMFILTER_KIND_NONE && r->verdict == NULL && r->reply == NULL, name,
               "expected no verdict, got kind %d: %s", (int)r->kind,
               r->verdict ? r->verdict : "(null)");
        break;
    case 0:
        snprintf(want, sizeof want, "%ld", n);
        report(r->kind == SPAMFILTER_KIND_VERDICT && r->verdict != NULL &&
                   strstr(r->verdict, "X-Load-Id") != NULL && strstr(r->verdict, want) != NULL &&
                   r->reply == NULL &&
                   r->disposition == SPAMFILTER_DISPOSITION_CONTINUE,
               name, "expected an addheader of X-Load-Id %ld, got kind %d: %s", n, (int)r->kind,
               r->verdict ? r->verdict : "(null)");
        break;
    case 1:
        snprintf(want, sizeof want, "rejected load message %ld", n);
        report(r->kind == SPAMFILTER_KIND_VERDICT && r->verdict != NULL &&
                   r->disposition == SPAMFILTER_DISPOSITION_REJECT && r->reply != NULL &&
                   strstr(r->reply, want) != NULL,
               name, "expected a reject \"%s\", got disposition %d reply %s", want,
               (int)r->disposition, r->reply ? r->reply : "(null)");
        break;
    case 2:
        snprintf(want, sizeof want, "deferred load message %ld", n);
        report(r->kind == SPAMFILTER_KIND_DEFER && r->verdict == NULL &&
                   r->disposition == SPAMFILTER_DISPOSITION_TEMPFAIL && r->reply != NULL &&
                   strstr(r->reply, want) != NULL,
               name, "expected a deferral \"%s\", got kind %d reply %s", want, (int)r->kind,
               r->reply ? r->reply : "(null)");
        break;
    default:
        report(r->kind == SPAMFILTER_KIND_VERDICT && r->verdict != NULL &&
                   strstr(r->verdict, "discard") != NULL &&
                   r->disposition == SPAMFILTER_DISPOSITION_DISCARD,
               name, "expected a discard, got disposition %d verdict %s", (int)r->disposition,
               r->verdict ? r->verdict : "(null)");
    }
}

/* ------------------------------------------------------------------------------------------ */
/* The result at its first version's size. */

/* The fields of a first-version result that every call must write, garbage beforehand. */
static int result_fields_written(const SpamfilterResult *r)
{
    uint64_t garbage;
    memset(&garbage, GARBAGE, sizeof garbage);
    return r->verdict_len != (size_t)garbage && r->rejected_recipients == 0 &&
           r->quarantine_reason == NULL && r->elapsed_ms != garbage &&
           (r->verdict == NULL ? r->verdict_len == 0 : r->verdict_len == strlen(r->verdict));
}

/* A first-version result ending at a guard page, garbage in every field but struct_size; NULL
 * (reported) on failure. */
static SpamfilterResult *guarded_result_v1(struct guarded *g)
{
    SpamfilterResult *r = guarded_alloc(g, RESULT_V1_SIZE);
    if (r != NULL) {
        memset(r, GARBAGE, RESULT_V1_SIZE);
        r->struct_size = RESULT_V1_SIZE;
    }
    return r;
}

static void result_case(struct sf_api *api, SpamfilterHandle *h, long n)
{
    char name[128], data[128];
    snprintf(name, sizeof name, "first-version result (%zu bytes) at a page end, message %ld",
             (size_t)RESULT_V1_SIZE, n);
    current_case = name;
    struct guarded g;
    SpamfilterResult *r = guarded_result_v1(&g);
    if (r == NULL)
        return;
    snprintf(data, sizeof data, "Subject: load %ld\r\nFrom: a@example.org\r\n\r\nbody\r\n", n);
    SpamfilterMessage m;
    message_init(&m, data);
    /* A transcript asked for, which this result has no room for. */
    m.flags = SPAMFILTER_FLAG_TRANSCRIPT;
    SpamfilterStatus st = api->filter(h, &m, r);
    expect_verdict(api, name, st, r, n);
    char also[160];
    snprintf(also, sizeof also, "%s: every field written", name);
    report(result_fields_written(r), also, "a field within struct_size was left unwritten");
    api->result_free(r);
    api->result_free(r);
    snprintf(also, sizeof also, "%s: result_free twice", name);
    report(r->verdict == NULL && r->verdict_len == 0 && r->reply == NULL &&
               r->quarantine_reason == NULL,
           also, "result_free left a pointer");
    guarded_release(&g);
}

/* A call that fails (an unparsable client address) must still clear the short result. */
static void result_failure_case(struct sf_api *api, SpamfilterHandle *h)
{
    current_case = "first-version result at a page end, failed call";
    struct guarded g;
    SpamfilterResult *r = guarded_result_v1(&g);
    if (r == NULL)
        return;
    SpamfilterMessage m;
    message_init(&m, "Subject: load 4\r\n\r\nbody\r\n");
    m.client_addr = "not an address";
    m.flags = SPAMFILTER_FLAG_TRANSCRIPT;
    SpamfilterStatus st = api->filter(h, &m, r);
    report(st == SPAMFILTER_STATUS_ERR_MESSAGE && r->kind == SPAMFILTER_KIND_NONE &&
               r->verdict == NULL && r->reply == NULL && result_fields_written(r),
           current_case, "status %d, kind %d: expected ERR_MESSAGE and a cleared result",
           (int)st, (int)r->kind);
    api->result_free(r);
    guarded_release(&g);
}

/* A result of nothing but struct_size (8 bytes), too small: refused without reading further. */
static void result_too_small_case(struct sf_api *api, SpamfilterHandle *h)
{
    current_case = "result of 8 bytes (struct_size 8) at a page end";
    struct guarded g;
    SpamfilterResult *r = guarded_alloc(&g, sizeof(size_t));
    if (r == NULL)
        return;
    r->struct_size = sizeof(size_t);
    SpamfilterMessage m;
    message_init(&m, "Subject: load 4\r\n\r\nbody\r\n");
    SpamfilterStatus st = api->filter(h, &m, r);
    report(st == SPAMFILTER_STATUS_ERR_ARGUMENT && strstr(api->last_error(), "struct_size"),
           current_case, "status %d (%s), expected ERR_ARGUMENT naming struct_size", (int)st,
           api->last_error());
    api->result_free(r);
    report(r->struct_size == sizeof(size_t), "result of 8 bytes: result_free leaves it alone",
           "struct_size was changed");
    guarded_release(&g);
}

/* ------------------------------------------------------------------------------------------ */
/* The message at every older size, from the smallest accepted one up. */

/* Filters `m` into `r`, a result of today's size. */
static SpamfilterStatus filter_full(struct sf_api *api, SpamfilterHandle *h,
                                    const SpamfilterMessage *m, SpamfilterResult *r)
{
    memset(r, 0, sizeof *r);
    r->struct_size = sizeof *r;
    return api->filter(h, m, r);
}

/* Copies the first `size` bytes of `full` to a guarded page end and filters it. */
static void message_case(struct sf_api *api, SpamfilterHandle *h, const char *name,
                         const SpamfilterMessage *full, size_t size, long n)
{
    current_case = name;
    struct guarded g;
    SpamfilterMessage *m = guarded_alloc(&g, size);
    if (m == NULL)
        return;
    memcpy(m, full, size);
    m->struct_size = size;
    SpamfilterResult r;
    SpamfilterStatus st = filter_full(api, h, m, &r);
    expect_verdict(api, name, st, &r, n);
    api->result_free(&r);
    guarded_release(&g);
}

static void message_cases(struct sf_api *api, SpamfilterHandle *h)
{
    SpamfilterMessage full;
    message_init(&full, "Subject: load 8\r\nFrom: a@example.org\r\n\r\nbody\r\n");
    /* Up to a field: the message data is seen only once `data` and `data_len` are inside. */
    static const struct {
        const char *name;
        size_t size;
        long n;
    } sizes[] = {
        {"message of the smallest accepted size (up to recipient_count) at a page end",
         MESSAGE_MIN_SIZE, -1},
        {"message up to auth_authen at a page end", offsetof(SpamfilterMessage, macros), -1},
        {"message up to macro_count at a page end", offsetof(SpamfilterMessage, data), -1},
        {"message up to data_len at a page end", offsetof(SpamfilterMessage, read), 8},
        {"message up to read_ctx at a page end", offsetof(SpamfilterMessage, flags), 8},
        {"message of today's size at a page end", sizeof(SpamfilterMessage), 8},
    };
    for (size_t i = 0; i < sizeof sizes / sizeof sizes[0]; i++)
        message_case(api, h, sizes[i].name, &full, sizes[i].size, sizes[i].n);

    /* The read callback, the last field of that older struct. */
    static const char text[] = "Subject: load 9\r\n\r\nbody\r\n";
    struct sf_stream rd = {(const unsigned char *)text, sizeof text - 1, 0};
    full.read = sf_stream_read;
    full.read_ctx = &rd;
    message_case(api, h, "message up to read_ctx with a read callback at a page end", &full,
                 offsetof(SpamfilterMessage, flags), 9);

}

/* A message of nothing but struct_size (8 bytes), too small: refused after reading it alone. */
static void message_too_small_case(struct sf_api *api, SpamfilterHandle *h)
{
    current_case = "message of 8 bytes (struct_size 8) at a page end";
    struct guarded g;
    SpamfilterMessage *m = guarded_alloc(&g, sizeof(size_t));
    if (m == NULL)
        return;
    m->struct_size = sizeof(size_t);
    SpamfilterResult r;
    SpamfilterStatus st = filter_full(api, h, m, &r);
    report(st == SPAMFILTER_STATUS_ERR_MESSAGE && strstr(api->last_error(), "struct_size"),
           current_case, "status %d (%s), expected ERR_MESSAGE naming struct_size", (int)st,
           api->last_error());
    api->result_free(&r);
    guarded_release(&g);
}

/* ------------------------------------------------------------------------------------------ */

int main(int argc, char **argv)
{
    if (argc < 3 || (argc == 4 && strcmp(argv[3], "--no-self-check") != 0) || argc > 4) {
        fprintf(stderr, "usage: guard LIBRARY OPTION_FILE [--no-self-check]\n");
        return 2;
    }
    if (argc == 3)
        self_check();

    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_sigaction = on_fault;
    sa.sa_flags = SA_SIGINFO;
    sigaction(SIGSEGV, &sa, NULL);
    sigaction(SIGBUS, &sa, NULL);

    struct sf_api api;
    if (sf_load("guard", argv[1], &api) != 0)
        return 2;
    SpamfilterHandle *h = NULL;
    if (api.init(argv[2], &h) != SPAMFILTER_STATUS_OK) {
        fprintf(stderr, "guard: spamfilter_init(%s): %s\n", argv[2], api.last_error());
        return 2;
    }
    for (long n = 12; n < 16; n++)
        result_case(&api, h, n);
    result_failure_case(&api, h);
    result_too_small_case(&api, h);
    message_cases(&api, h);
    message_too_small_case(&api, h);
    api.close(h);

    fprintf(stderr, "guard: %d cases, %d failed\n", cases, failures);
    return failures ? 1 : 0;
}
