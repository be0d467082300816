/*
 * abuse: bad input through the C ABI, as an MTA (or a broken one) could pass it. The library is
 * dlopen()ed like an MTA does; every case must end in a clear error status or a correct verdict,
 * and none may crash, hang, write to stdout, call exit() or change a signal disposition.
 *
 *   abuse LIBRARY WORKDIR MILTER_PORT [--big-mb N] [--cycles N] [--no-rss]
 *
 * MILTER_PORT is a running tests/milters/load_milter.py (its verdict follows the Subject number:
 * N mod 4 = 0 continue + X-Load-Id/X-Body-Bytes headers, 1 reject, 2 tempfail, 3 discard).
 * WORKDIR is an empty directory for option files. --big-mb sizes the streamed message (default
 * 100), --cycles the load/use/close rounds (default 50), --no-rss skips the memory check (under
 * valgrind RSS means nothing).
 *
 * One line per case on stderr ("ok" or "FAIL" with the reason), nothing on stdout; exit status 0
 * only when every case passed.
 */
#define _GNU_SOURCE
#include "mta.h"
#include "report.h"

#include <arpa/inet.h>
#include <dirent.h>
#include <dlfcn.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <pthread.h>
#include <signal.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/time.h>
#include <time.h>
#include <unistd.h>

static const char *library_path, *workdir;
static int milter_port;
static int main_finished;

/* ------------------------------------------------------------------------------------------ */

/* Loads the library as an MTA does (tools/mta.c, as spamfilter-load and spamfilter-check). */
static int load(struct sf_api *api)
{
    return sf_load("abuse", library_path, api);
}

static int write_file(const char *path, const void *data, size_t len)
{
    FILE *f = fopen(path, "wb");
    if (f == NULL)
        return -1;
    size_t n = fwrite(data, 1, len, f);
    return (fclose(f) == 0 && n == len) ? 0 : -1;
}

/* An option file for the load Milter in WORKDIR/NAME; returns its path (static buffer). */
static const char *option_file(const char *name, const char *extra)
{
    static char path[4096];
    char text[512];
    snprintf(path, sizeof path, "%s/%s", workdir, name);
    int n = snprintf(text, sizeof text, "HOST=127.0.0.1\nPORT=%d\nTIMEOUT=3000\n%s", milter_port,
                     extra);
    if (write_file(path, text, (size_t)n) != 0) {
        fprintf(stderr, "abuse: cannot write %s: %s\n", path, strerror(errno));
        _exit(2); /* not exit(): the exit guard would blame the library */
    }
    return path;
}

/* `len` pseudo-random bytes (NULs among them), the same for the same seed. */
static void fill_junk(void *buf, size_t len, unsigned seed)
{
    unsigned char *p = buf;
    unsigned x = seed;
    for (size_t i = 0; i < len; i++) {
        x = x * 1103515245u + 12345u;
        p[i] = (unsigned char)(x >> 16);
    }
}

static int count_fds(void)
{
    DIR *d = opendir("/proc/self/fd");
    if (d == NULL)
        return -1;
    int n = 0;
    struct dirent *e;
    while ((e = readdir(d)) != NULL)
        if (e->d_name[0] != '.')
            n++;
    closedir(d);
    return n - 1; /* the directory's own descriptor */
}

/* A field of /proc/self/status in kB ("VmHWM:", "VmRSS:"), or -1. */
static long status_kb(const char *field)
{
    FILE *f = fopen("/proc/self/status", "r");
    if (f == NULL)
        return -1;
    char line[256];
    long kb = -1;
    size_t flen = strlen(field);
    while (fgets(line, sizeof line, f) != NULL)
        if (strncmp(line, field, flen) == 0)
            kb = atol(line + flen);
    fclose(f);
    return kb;
}

static double now_seconds(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

/* ------------------------------------------------------------------------------------------ */
/* A well-formed message; cases spoil one thing each. */

struct msg {
    SpamfilterMessage m;
    SpamfilterRecipient rcpt[2];
    SpamfilterResult res;
};

static void msg_init(struct msg *x, const char *data)
{
    memset(x, 0, sizeof *x);
    x->rcpt[0].address = "rcpt@example.net";
    x->m.struct_size = sizeof x->m;
    x->m.client_name = "client.example";
    x->m.client_addr = "192.0.2.7";
    x->m.client_port = 40001;
    x->m.helo = "client.example";
    x->m.sender = "sender@example.org";
    x->m.recipients = x->rcpt;
    x->m.recipient_count = 1;
    x->m.mta_hostname = "mta.example";
    x->m.queue_id = "ABUSE1";
    x->m.data = (const uint8_t *)data;
    x->m.data_len = data ? strlen(data) : 0;
    x->res.struct_size = sizeof x->res;
}

/* Checks the load Milter's verdict for Subject number n (-1: no number, so no verdict). */
static void expect_verdict(struct sf_api *api, const char *name, SpamfilterStatus st,
                           const SpamfilterResult *r, long n)
{
    char num[32], want[96];
    snprintf(num, sizeof num, "%ld", n);
    if (st != SPAMFILTER_STATUS_OK) {
        report(0, name, "status %s (%s), expected OK", sf_status_name(st), api->last_error());
        return;
    }
    if (n < 0) {
        report(r->kind == SPAMFILTER_KIND_NONE && r->verdict == NULL, name,
               "expected no verdict, got kind %d: %s", (int)r->kind,
               r->verdict ? r->verdict : "(null)");
        return;
    }
    switch (n % 4) {
    case 0:
        report(r->kind == SPAMFILTER_KIND_VERDICT && r->verdict != NULL &&
                   strstr(r->verdict, "X-Load-Id") != NULL && strstr(r->verdict, num) != NULL,
               name, "expected an addheader of X-Load-Id %s, got kind %d: %s", num, (int)r->kind,
               r->verdict ? r->verdict : "(null)");
        break;
    case 1:
        snprintf(want, sizeof want, "rejected load message %ld", n);
        report(r->disposition == SPAMFILTER_DISPOSITION_REJECT && r->reply != NULL &&
                   strstr(r->reply, want) != NULL && r->kind == SPAMFILTER_KIND_VERDICT,
               name, "expected a reject \"%s\", got disposition %d reply %s", want,
               (int)r->disposition, r->reply ? r->reply : "(null)");
        break;
    case 2:
        snprintf(want, sizeof want, "deferred load message %ld", n);
        report(r->kind == SPAMFILTER_KIND_DEFER && r->reply != NULL &&
                   strstr(r->reply, want) != NULL,
               name, "expected a deferral \"%s\", got kind %d reply %s", want, (int)r->kind,
               r->reply ? r->reply : "(null)");
        break;
    default:
        report(r->disposition == SPAMFILTER_DISPOSITION_DISCARD &&
                   r->kind == SPAMFILTER_KIND_VERDICT && r->verdict != NULL &&
                   strstr(r->verdict, "discard") != NULL,
               name, "expected a discard, got disposition %d verdict %s", (int)r->disposition,
               r->verdict ? r->verdict : "(null)");
    }
}

static void expect_status(struct sf_api *api, const char *name, SpamfilterStatus got,
                          SpamfilterStatus want, const char *text)
{
    const char *err = api->last_error();
    if (got != want) {
        report(0, name, "status %s, expected %s (last error: %s)", sf_status_name(got),
               sf_status_name(want), err);
        return;
    }
    report(text == NULL || strstr(err, text) != NULL, name,
           "last error \"%s\" lacks \"%s\"", err, text ? text : "");
}

/* Filters `x` (a message with one thing spoiled) and checks the status and the last error. */
static void expect_filter(struct sf_api *api, SpamfilterHandle *h, struct msg *x,
                          const char *name, SpamfilterStatus want, const char *text)
{
    expect_status(api, name, api->filter(h, &x->m, &x->res), want, text);
}

/* ------------------------------------------------------------------------------------------ */
/* spamfilter_init with bad option files. */

static void init_cases(struct sf_api *api)
{
    SpamfilterHandle *h = (SpamfilterHandle *)&h; /* not NULL: must be reset to NULL */
    char path[4096];

    expect_status(api, "init: NULL path", api->init(NULL, &h), SPAMFILTER_STATUS_ERR_CONFIG,
                  "NULL");
    report(h == NULL, "init: NULL path leaves *handle NULL", "handle is %p", (void *)h);

    expect_status(api, "init: NULL handle_out", api->init(option_file("ok.opt", ""), NULL),
                  SPAMFILTER_STATUS_ERR_ARGUMENT, "handle_out");

    h = (SpamfilterHandle *)&h;
    expect_status(api, "init: a directory", api->init(workdir, &h), SPAMFILTER_STATUS_ERR_CONFIG,
                  workdir);
    report(h == NULL, "init: a directory leaves *handle NULL", "handle is %p", (void *)h);

    snprintf(path, sizeof path, "%s/does-not-exist.opt", workdir);
    expect_status(api, "init: a missing file", api->init(path, &h), SPAMFILTER_STATUS_ERR_CONFIG,
                  "does-not-exist.opt");

    /* Unreadable: mode 000. Root reads anything, so as root the call runs as nobody. */
    snprintf(path, sizeof path, "%s/unreadable.opt", workdir);
    option_file("unreadable.opt", "");
    chmod(path, 0);
    int dropped = 0;
    if (geteuid() == 0) {
        if (seteuid(65534) != 0) {
            report(0, "init: an unreadable file", "seteuid(65534): %s", strerror(errno));
        } else {
            dropped = 1;
        }
    }
    if (geteuid() != 0) {
        SpamfilterStatus st = api->init(path, &h);
        if (dropped && seteuid(0) != 0) {
            fprintf(stderr, "abuse: cannot return to root: %s\n", strerror(errno));
            _exit(2);
        }
        expect_status(api, "init: an unreadable file", st, SPAMFILTER_STATUS_ERR_CONFIG,
                      "unreadable.opt");
    }

    /* Binary: pseudo-random bytes with NULs. */
    unsigned char bin[4096];
    fill_junk(bin, sizeof bin, 12345);
    bin[7] = 0;
    snprintf(path, sizeof path, "%s/binary.opt", workdir);
    write_file(path, bin, sizeof bin);
    expect_status(api, "init: a binary file", api->init(path, &h), SPAMFILTER_STATUS_ERR_CONFIG,
                  "binary.opt");

    /* One 10 MB line. */
    size_t big = 10u << 20;
    char *line = malloc(big + 16);
    if (line == NULL) {
        report(0, "init: a 10 MB line", "out of memory");
    } else {
        memcpy(line, "HOST=", 5);
        memset(line + 5, 'a', big);
        line[5 + big] = '\n';
        snprintf(path, sizeof path, "%s/longline.opt", workdir);
        write_file(path, line, big + 6);
        free(line);
        expect_status(api, "init: a 10 MB line", api->init(path, &h),
                      SPAMFILTER_STATUS_ERR_CONFIG, "longline.opt");
    }

    /* A FIFO with no writer: opening it for reading would block for ever. SIGALRM (default
     * action: terminate) is the watchdog, so a hang fails the run instead of stalling it. */
    snprintf(path, sizeof path, "%s/fifo.opt", workdir);
    if (mkfifo(path, 0600) != 0) {
        report(0, "init: a FIFO", "mkfifo: %s", strerror(errno));
    } else {
        alarm(20);
        SpamfilterStatus st = api->init(path, &h);
        alarm(0);
        expect_status(api, "init: a FIFO", st, SPAMFILTER_STATUS_ERR_CONFIG, "fifo.opt");
    }

    snprintf(path, sizeof path, "%s/empty.opt", workdir);
    write_file(path, "", 0);
    expect_status(api, "init: an empty file", api->init(path, &h), SPAMFILTER_STATUS_ERR_CONFIG,
                  "HOST");
}

/* ------------------------------------------------------------------------------------------ */
/* spamfilter_filter with bad arguments and bad envelopes. */

static void argument_cases(struct sf_api *api, SpamfilterHandle *h)
{
    struct msg x;
    const char *numbered = "Subject: load 1\r\n\r\nbody\r\n";

    msg_init(&x, numbered);
    expect_status(api, "filter: NULL handle", api->filter(NULL, &x.m, &x.res),
                  SPAMFILTER_STATUS_ERR_ARGUMENT, "handle is NULL");
    expect_status(api, "filter: NULL message", api->filter(h, NULL, &x.res),
                  SPAMFILTER_STATUS_ERR_ARGUMENT, "message is NULL");
    expect_status(api, "filter: NULL result", api->filter(h, &x.m, NULL),
                  SPAMFILTER_STATUS_ERR_ARGUMENT, "result is NULL");
    expect_status(api, "filter: everything NULL", api->filter(NULL, NULL, NULL),
                  SPAMFILTER_STATUS_ERR_ARGUMENT, "NULL");

    /* The first version of the result ended with elapsed_ms: one byte less is too small. */
    msg_init(&x, numbered);
    x.res.struct_size = offsetof(SpamfilterResult, elapsed_ms) + sizeof x.res.elapsed_ms - 1;
    expect_filter(api, h, &x, "filter: result struct_size too small",
                  SPAMFILTER_STATUS_ERR_ARGUMENT, "struct_size");
    x.res.struct_size = 0;
    expect_filter(api, h, &x, "filter: result struct_size 0",
                  SPAMFILTER_STATUS_ERR_ARGUMENT, "struct_size");

    msg_init(&x, numbered);
    x.m.struct_size = 0;
    expect_filter(api, h, &x, "filter: message struct_size 0",
                  SPAMFILTER_STATUS_ERR_MESSAGE, "struct_size");
    msg_init(&x, numbered);
    x.m.struct_size = sizeof(size_t);
    expect_filter(api, h, &x, "filter: message struct_size 8",
                  SPAMFILTER_STATUS_ERR_MESSAGE, "struct_size");

    /* An older, shorter struct: the fields past its size (macros, data, read) must be treated as
     * absent, so the numbered message in `data` is NOT seen: an empty message, no verdict. */
    msg_init(&x, numbered);
    x.m.struct_size = offsetof(SpamfilterMessage, macros);
    SpamfilterStatus st = api->filter(h, &x.m, &x.res);
    expect_verdict(api, "filter: shorter (older) message struct", st, &x.res, -1);
    api->result_free(&x.res);

    msg_init(&x, numbered);
    x.m.recipients = NULL;
    x.m.recipient_count = 3;
    expect_filter(api, h, &x, "filter: recipients NULL, count 3",
                  SPAMFILTER_STATUS_ERR_MESSAGE, "recipients is NULL");

    msg_init(&x, numbered);
    x.m.recipient_count = (size_t)-1;
    expect_filter(api, h, &x, "filter: recipient_count SIZE_MAX",
                  SPAMFILTER_STATUS_ERR_MESSAGE, "recipient_count");

    msg_init(&x, numbered);
    x.rcpt[0].address = NULL;
    expect_filter(api, h, &x, "filter: recipient address NULL",
                  SPAMFILTER_STATUS_ERR_MESSAGE, "recipients[0].address");

    msg_init(&x, numbered);
    x.rcpt[0].esmtp_argc = 2;
    expect_filter(api, h, &x, "filter: recipient esmtp_args NULL, count 2",
                  SPAMFILTER_STATUS_ERR_MESSAGE, "esmtp_args");

    msg_init(&x, numbered);
    x.m.mail_argc = 2;
    expect_filter(api, h, &x, "filter: mail_args NULL, count 2",
                  SPAMFILTER_STATUS_ERR_MESSAGE, "mail_args");

    msg_init(&x, numbered);
    x.m.macro_count = 5;
    expect_filter(api, h, &x, "filter: macros NULL, count 5",
                  SPAMFILTER_STATUS_ERR_MESSAGE, "macros");

    SpamfilterMacro nameless = {NULL, "value"};
    msg_init(&x, numbered);
    x.m.macros = &nameless;
    x.m.macro_count = 1;
    expect_filter(api, h, &x, "filter: macro with NULL name",
                  SPAMFILTER_STATUS_ERR_MESSAGE, "macros[0].name");

    msg_init(&x, NULL);
    x.m.data_len = 10;
    expect_filter(api, h, &x, "filter: data NULL, data_len 10",
                  SPAMFILTER_STATUS_ERR_MESSAGE, "data is NULL");

    msg_init(&x, numbered);
    x.m.client_addr = "not an address";
    expect_filter(api, h, &x, "filter: client_addr garbage",
                  SPAMFILTER_STATUS_ERR_MESSAGE, "client_addr");

    /* After all these failures the handle still works. */
    msg_init(&x, "Subject: load 7\r\n\r\nbody\r\n");
    st = api->filter(h, &x.m, &x.res);
    expect_verdict(api, "filter: the handle still works afterwards", st, &x.res, 7);
    api->result_free(&x.res);
    api->result_free(&x.res);
    report(x.res.verdict == NULL && x.res.reply == NULL && x.res.quarantine_reason == NULL,
           "result_free twice leaves NULL pointers", "a pointer is left");

    /* The transcript, asked for, with a full result: there, naming the packets; freed. */
    msg_init(&x, "Subject: load 8\r\n\r\nbody\r\n");
    x.m.flags = SPAMFILTER_FLAG_TRANSCRIPT;
    st = api->filter(h, &x.m, &x.res);
    expect_verdict(api, "filter: with a transcript", st, &x.res, 8);
    report(x.res.transcript != NULL && strstr(x.res.transcript, "> OPTNEG") != NULL &&
               strstr(x.res.transcript, "< ADDHEADER") != NULL,
           "transcript names the packets", "transcript: %s",
           x.res.transcript ? x.res.transcript : "(null)");
    api->result_free(&x.res);
    report(x.res.transcript == NULL, "result_free releases the transcript", "left");

    /* The same with a first-version result, which has no transcript field: the library must
     * not write past struct_size (the canary after it stays). */
    {
        struct {
            SpamfilterResult r;
            unsigned char canary[64];
        } old;
        memset(&old, 0xA5, sizeof old);
        memset(&old.r, 0, sizeof old.r);
        old.r.struct_size = offsetof(SpamfilterResult, elapsed_ms) + sizeof old.r.elapsed_ms;
        memset((char *)&old.r + old.r.struct_size, 0xA5, sizeof old.r - old.r.struct_size);
        msg_init(&x, "Subject: load 12\r\n\r\nbody\r\n");
        x.m.flags = SPAMFILTER_FLAG_TRANSCRIPT;
        st = api->filter(h, &x.m, &old.r);
        expect_verdict(api, "filter: first-version result", st, &old.r, 12);
        int intact = 1;
        for (size_t i = old.r.struct_size; i < sizeof old.r; i++)
            intact &= ((unsigned char *)&old.r)[i] == 0xA5;
        for (size_t i = 0; i < sizeof old.canary; i++)
            intact &= old.canary[i] == 0xA5;
        report(intact, "first-version result: nothing written past struct_size", "overwritten");
        api->result_free(&old.r);
    }
    api->result_free(NULL);
    report(1, "result_free(NULL)", "");
}

/* ------------------------------------------------------------------------------------------ */
/* Odd message content. */

static void content_case(struct sf_api *api, SpamfilterHandle *h, const char *name,
                         const char *data, long n)
{
    struct msg x;
    msg_init(&x, data);
    SpamfilterStatus st = api->filter(h, &x.m, &x.res);
    expect_verdict(api, name, st, &x.res, n);
    api->result_free(&x.res);
}

static void content_cases(struct sf_api *api, SpamfilterHandle *h)
{
    content_case(api, h, "message: empty (data NULL)", NULL, -1);
    content_case(api, h, "message: empty (data \"\")", "", -1);
    content_case(api, h, "message: no blank line", "Subject: load 5\r\nFrom: a@b.example\r\n", 5);
    content_case(api, h, "message: no blank line, no final line end", "Subject: load 6", 6);
    content_case(api, h, "message: LF line ends",
                 "Subject: load 10\nFrom: a@b.example\n\nbody\n", 10);
    content_case(api, h, "message: a header line without a colon ends the header",
                 "Subject: load 8\r\nno colon here\r\nX-A: b\r\n\r\nbody\r\n", 8);
    content_case(api, h, "message: a first line without a colon is body",
                 "no colon here\r\nSubject: load 9\r\n\r\nbody\r\n", -1);
    content_case(api, h, "message: a lone continuation line is body",
                 " folded\r\nSubject: load 9\r\n\r\n", -1);

    /* Binary junk with NULs: any verdict or a message error, never a crash. */
    static char junk[65536];
    fill_junk(junk, sizeof junk, 777);
    struct msg m;
    msg_init(&m, NULL);
    m.m.data = (const uint8_t *)junk;
    m.m.data_len = sizeof junk;
    SpamfilterStatus st = api->filter(h, &m.m, &m.res);
    report(st == SPAMFILTER_STATUS_OK || st == SPAMFILTER_STATUS_ERR_MESSAGE,
           "message: 64 KiB of binary junk", "status %s: %s", sf_status_name(st),
           api->last_error());
    api->result_free(&m.res);
}

/* ------------------------------------------------------------------------------------------ */
/* The read callback. */

struct gen {
    const char *header;   /* sent first */
    size_t header_len, header_pos;
    size_t line_count, line_no; /* then this many 64-byte LF lines */
    char line[64];
    size_t line_pos;          /* bytes of `line` already given; 64 = need a new one */
    size_t fail_after;        /* return -1 once this many bytes were given (0: never) */
    size_t given;
    int overfill;             /* claim one byte more than asked */
};

static ptrdiff_t gen_read(void *ctx, uint8_t *buf, size_t len)
{
    struct gen *g = ctx;
    if (g->fail_after && g->given >= g->fail_after)
        return -1;
    if (g->overfill)
        return (ptrdiff_t)len + 1;
    size_t n = 0;
    while (n < len) {
        if (g->header_pos < g->header_len) {
            size_t k = g->header_len - g->header_pos;
            if (k > len - n)
                k = len - n;
            memcpy(buf + n, g->header + g->header_pos, k);
            g->header_pos += k;
            n += k;
            continue;
        }
        if (g->line_pos == sizeof g->line) {
            if (g->line_no == g->line_count)
                break;
            snprintf(g->line, sizeof g->line, "line %010zu of the generated body, all text.....",
                     g->line_no++);
            memset(g->line + strlen(g->line), '.', sizeof g->line - strlen(g->line));
            g->line[sizeof g->line - 1] = '\n';
            g->line_pos = 0;
        }
        size_t k = sizeof g->line - g->line_pos;
        if (k > len - n)
            k = len - n;
        memcpy(buf + n, g->line + g->line_pos, k);
        g->line_pos += k;
        n += k;
    }
    g->given += n;
    return (ptrdiff_t)n;
}

static void gen_init(struct gen *g, const char *header, size_t lines)
{
    memset(g, 0, sizeof *g);
    g->header = header;
    g->header_len = strlen(header);
    g->line_count = lines;
    g->line_pos = sizeof g->line;
}

/* A well-formed message without data, its content read through `g`. */
static void msg_init_read(struct msg *x, struct gen *g)
{
    msg_init(x, NULL);
    x->m.read = gen_read;
    x->m.read_ctx = g;
}

static void callback_cases(struct sf_api *api, SpamfilterHandle *h, long big_mb, int check_rss)
{
    struct msg x;
    struct gen g;

    /* Fails in the header section. */
    gen_init(&g, "Subject: load 4\r\nX-Long: ", 1000);
    g.fail_after = 10;
    msg_init_read(&x, &g);
    expect_status(api, "read callback: fails at once", api->filter(h, &x.m, &x.res),
                  SPAMFILTER_STATUS_ERR_MESSAGE, "returned -1");

    /* Fails midway through the body, after several BODY packets went out. */
    gen_init(&g, "Subject: load 4\r\n\r\n", 100000);
    g.fail_after = 1 << 20;
    msg_init_read(&x, &g);
    expect_status(api, "read callback: fails midway", api->filter(h, &x.m, &x.res),
                  SPAMFILTER_STATUS_ERR_MESSAGE, "returned -1");

    gen_init(&g, "Subject: load 4\r\n\r\n", 10);
    g.overfill = 1;
    msg_init_read(&x, &g);
    expect_status(api, "read callback: claims more than asked", api->filter(h, &x.m, &x.res),
                  SPAMFILTER_STATUS_ERR_MESSAGE, "more than");

    /* A header section beyond the library's cap (4 MiB) is refused, not buffered without end:
     * one 6 MiB header line. */
    size_t endless_len = 6u << 20;
    char *hdr = malloc(endless_len + 64);
    if (hdr != NULL) {
        strcpy(hdr, "Subject: load 4\r\nX-Endless: ");
        size_t off = strlen(hdr);
        memset(hdr + off, 'x', endless_len - off);
        memcpy(hdr + endless_len, "\r\n\r\nbody\r\n", 11);
        gen_init(&g, hdr, 0);
        msg_init_read(&x, &g);
        expect_status(api, "read callback: a 6 MiB header line", api->filter(h, &x.m, &x.res),
                      SPAMFILTER_STATUS_ERR_MESSAGE, "header section");
        free(hdr);
    }

    /* The big one: generated as it is read, never stored. */
    size_t lines = (size_t)big_mb * (1u << 20) / 64;
    char name[128];
    snprintf(name, sizeof name, "read callback: a %ld MB message", big_mb);
    gen_init(&g, "Subject: load 12\r\nFrom: big@example.org\r\n\r\n", lines);
    msg_init_read(&x, &g);
    long hwm_before = status_kb("VmHWM:");
    double t0 = now_seconds();
    SpamfilterStatus st = api->filter(h, &x.m, &x.res);
    double took = now_seconds() - t0;
    long hwm_after = status_kb("VmHWM:");
    expect_verdict(api, name, st, &x.res, 12);
    /* The Milter counted the body it got: every line, each with CRLF. */
    char bytes[64];
    snprintf(bytes, sizeof bytes, "%zu", lines * 65);
    report(st == SPAMFILTER_STATUS_OK && x.res.verdict != NULL &&
               strstr(x.res.verdict, "X-Body-Bytes") != NULL &&
               strstr(x.res.verdict, bytes) != NULL,
           "read callback: the Milter received every body byte", "expected X-Body-Bytes %s in %s",
           bytes, x.res.verdict ? x.res.verdict : "(null)");
    report(g.line_no == lines && g.header_pos == g.header_len,
           "read callback: the whole message was read", "read %zu of %zu lines", g.line_no, lines);
    fprintf(stderr, "     (%ld MB in %.1f s; peak RSS %ld -> %ld kB)\n", big_mb, took, hwm_before,
            hwm_after);
    if (check_rss)
        report(hwm_after - hwm_before < 32 * 1024,
               "read callback: the message is never held whole",
               "peak RSS grew by %ld kB for a %ld MB message", hwm_after - hwm_before, big_mb);
    api->result_free(&x.res);
}

/* ------------------------------------------------------------------------------------------ */
/* SIGPIPE: a Milter that negotiates "no replies" and hangs up; the library keeps writing. */

struct hangup {
    int listener;
};

static void *hangup_server(void *arg)
{
    struct hangup *hs = arg;
    int c = accept(hs->listener, NULL, NULL);
    if (c < 0)
        return NULL;
    unsigned char in[17];
    size_t got = 0;
    while (got < sizeof in) {
        ssize_t n = read(c, in + got, sizeof in - got);
        if (n <= 0)
            break;
        got += (size_t)n;
    }
    /* OPTNEG: version 6, ADDHDRS, every NR_* bit (0x1000..0x80000) and NR_HDR (0x80). */
    uint32_t v[3] = {htonl(6), htonl(1), htonl(0x000FF080)};
    unsigned char out[17] = {0, 0, 0, 13, 'O'};
    memcpy(out + 5, v, 12);
    ssize_t w = write(c, out, sizeof out);
    (void)w;
    close(c);
    return NULL;
}

static void sigpipe_case(struct sf_api *api)
{
    int l = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in a;
    memset(&a, 0, sizeof a);
    a.sin_family = AF_INET;
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    socklen_t alen = sizeof a;
    if (l < 0 || bind(l, (struct sockaddr *)&a, sizeof a) != 0 || listen(l, 1) != 0 ||
        getsockname(l, (struct sockaddr *)&a, &alen) != 0) {
        report(0, "hangup: writing to a closed connection", "listener: %s", strerror(errno));
        if (l >= 0)
            close(l);
        return;
    }
    struct hangup hs = {l};
    pthread_t t;
    if (pthread_create(&t, NULL, hangup_server, &hs) != 0) {
        report(0, "hangup: writing to a closed connection", "pthread_create failed");
        close(l);
        return;
    }
    char path[4096], text[256];
    snprintf(path, sizeof path, "%s/hangup.opt", workdir);
    int n = snprintf(text, sizeof text, "HOST=127.0.0.1\nPORT=%d\nTIMEOUT=500\n",
                     ntohs(a.sin_port));
    write_file(path, text, (size_t)n);
    SpamfilterHandle *h = NULL;
    SpamfilterStatus st = api->init(path, &h);
    if (st != SPAMFILTER_STATUS_OK) {
        report(0, "hangup: writing to a closed connection", "init: %s", api->last_error());
    } else {
        struct gen g;
        struct msg x;
        gen_init(&g, "Subject: load 4\r\n\r\n", (8u << 20) / 64);
        msg_init_read(&x, &g);
        st = api->filter(h, &x.m, &x.res);
        /* Reaching this line at all means no SIGPIPE killed the process. */
        report(st == SPAMFILTER_STATUS_ERR_IO, "hangup: writing to a closed connection",
               "status %s, expected ERR_IO: %s", sf_status_name(st), api->last_error());
        api->close(h);
    }
    pthread_join(t, NULL);
    close(l);
}

/* ------------------------------------------------------------------------------------------ */
/* Load, use, close: many times in one process. */

static void cycle_cases(int cycles)
{
    int fds_before = -1;
    int bad = 0;
    for (int i = 0; i < cycles && !bad; i++) {
        struct sf_api api;
        if (load(&api) != 0) {
            report(0, "cycles: dlopen", "round %d", i);
            return;
        }
        SpamfilterHandle *h = NULL;
        SpamfilterStatus st = api.init(option_file("cycle.opt", ""), &h);
        if (st != SPAMFILTER_STATUS_OK) {
            report(0, "cycles: init", "round %d: %s", i, api.last_error());
            bad = 1;
        } else {
            char data[128];
            snprintf(data, sizeof data, "Subject: load %d\r\n\r\nround %d\r\n", 100 + i, i);
            struct msg x;
            msg_init(&x, data);
            st = api.filter(h, &x.m, &x.res);
            int before = failures;
            char name[64];
            snprintf(name, sizeof name, "cycles: round %d verdict", i);
            if (i == 0 || i == cycles - 1)
                expect_verdict(&api, name, st, &x.res, 100 + i);
            else if (st != SPAMFILTER_STATUS_OK)
                expect_verdict(&api, name, st, &x.res, 100 + i);
            bad = failures != before;
            api.result_free(&x.res);
            api.result_free(&x.res);
            api.close(h);
        }
        api.close(NULL);
        if (dlclose(api.lib) != 0) {
            report(0, "cycles: dlclose", "round %d: %s", i, dlerror());
            bad = 1;
        }
        /* The first round may load things once per process (libc's resolver, locale). */
        if (i == 0)
            fds_before = count_fds();
    }
    int fds_after = count_fds();
    char name[64];
    snprintf(name, sizeof name, "cycles: %d rounds of dlopen/init/filter/close/dlclose", cycles);
    report(!bad, name, "a round failed");
    report(fds_before == fds_after, "cycles: no descriptor leaked",
           "%d descriptors after the first round, %d after the last", fds_before, fds_after);
}

/* ------------------------------------------------------------------------------------------ */

static void exit_guard(void)
{
    if (!main_finished) {
        static const char text[] = "FAIL exit() was called before main finished (by the "
                                   "library?)\n";
        ssize_t w = write(2, text, sizeof text - 1);
        (void)w;
        _exit(99);
    }
}

int main(int argc, char **argv)
{
    long big_mb = 100;
    int cycles = 50, check_rss = 1;
    if (argc < 4) {
        fprintf(stderr, "usage: abuse LIBRARY WORKDIR MILTER_PORT [--big-mb N] [--cycles N] "
                        "[--no-rss]\n");
        return 2;
    }
    library_path = argv[1];
    workdir = argv[2];
    milter_port = atoi(argv[3]);
    for (int i = 4; i < argc; i++) {
        if (strcmp(argv[i], "--big-mb") == 0 && i + 1 < argc)
            big_mb = atol(argv[++i]);
        else if (strcmp(argv[i], "--cycles") == 0 && i + 1 < argc)
            cycles = atoi(argv[++i]);
        else if (strcmp(argv[i], "--no-rss") == 0)
            check_rss = 0;
        else {
            fprintf(stderr, "abuse: unknown argument %s\n", argv[i]);
            return 2;
        }
    }
    atexit(exit_guard);

    /* SIGPIPE at its default (terminate), so that a write without MSG_NOSIGNAL kills us. */
    signal(SIGPIPE, SIG_DFL);

    /* Everything the library might print to stdout lands in this file, checked at the end. */
    fflush(stdout);
    FILE *captured = tmpfile();
    if (captured == NULL || dup2(fileno(captured), 1) < 0) {
        fprintf(stderr, "abuse: cannot capture stdout: %s\n", strerror(errno));
        return 2;
    }

    struct sigaction before[NSIG];
    sigset_t mask_before;
    memset(before, 0, sizeof before);
    for (int s = 1; s < NSIG; s++)
        sigaction(s, NULL, &before[s]);
    sigprocmask(SIG_BLOCK, NULL, &mask_before);

    struct sf_api api;
    if (load(&api) != 0)
        return 2;

    init_cases(&api);

    SpamfilterHandle *h = NULL;
    SpamfilterStatus st = api.init(option_file("abuse.opt", ""), &h);
    if (st != SPAMFILTER_STATUS_OK) {
        fprintf(stderr, "abuse: spamfilter_init: %s\n", api.last_error());
        return 2;
    }
    argument_cases(&api, h);
    content_cases(&api, h);
    callback_cases(&api, h, big_mb, check_rss);
    api.close(h);
    api.close(NULL);
    sigpipe_case(&api);
    dlclose(api.lib);

    cycle_cases(cycles);

    fflush(stdout);
    struct stat sb;
    if (fstat(1, &sb) != 0) {
        report(0, "nothing written to stdout", "fstat: %s", strerror(errno));
    } else {
        char head[200] = "";
        if (sb.st_size > 0) {
            ssize_t r = pread(1, head, sizeof head - 1, 0);
            head[r > 0 ? r : 0] = 0;
        }
        report(sb.st_size == 0, "nothing written to stdout", "%lld bytes, starting \"%s\"",
               (long long)sb.st_size, head);
    }

    int changed = 0;
    for (int s = 1; s < NSIG; s++) {
        struct sigaction now;
        if (sigaction(s, NULL, &now) != 0)
            continue;
        if (now.sa_handler != before[s].sa_handler || now.sa_flags != before[s].sa_flags) {
            fprintf(stderr, "     signal %d (%s): disposition changed\n", s, strsignal(s));
            changed++;
        }
    }
    report(changed == 0, "signal dispositions unchanged", "%d changed", changed);
    sigset_t mask_after;
    sigprocmask(SIG_BLOCK, NULL, &mask_after);
    int mask_changed = 0;
    for (int s = 1; s < NSIG; s++)
        if (sigismember(&mask_before, s) != sigismember(&mask_after, s))
            mask_changed++;
    report(mask_changed == 0, "signal mask unchanged", "%d signals changed", mask_changed);

    fprintf(stderr, "abuse: %d cases, %d failed\n", cases, failures);
    main_finished = 1;
    return failures ? 1 : 0;
}
