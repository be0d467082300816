/* See callgrind.h: the messages that `make callgrind` measures. */
#define _GNU_SOURCE /* RUSAGE_THREAD */
#include "callgrind.h"
#include "bmi.h"
#include "run.h"
#include "supervise.h"
#include "util.h"

#include <stdio.h>
#include <stdlib.h>
#include <sys/resource.h>

/* Called by name from valgrind's command line: not static. */
void callgrind_messages(struct target *t, const SpamfilterMessage *msg,
                        const struct bmi_source *bsrc, int n, struct gen *g, int ideal,
                        struct conn *c, const struct source *src, struct obuf *b);

/* One library message: through the BMI face if the target has it, else spamfilter_filter. */
static int library_one(const struct target *t, const SpamfilterMessage *msg,
                       const struct bmi_source *bsrc, char *err, size_t errlen)
{
    if (t->bmi != NULL)
        return bmi_message(t->bmi, t->opt, bsrc, t->expect_edits, err, errlen);
    return lib_message(t, msg, err, errlen);
}

/* The messages that `make callgrind` measures: collected by this function's name
 * (valgrind --toggle-collect), so set-up, warm-up and the Milter's start are not counted. By
 * default the library's; with --ideal the ideal client's, for the floor to compare with. */
/* Microseconds from a to b. */
static double usec_between(const struct timeval *a, const struct timeval *b)
{
    return (double)(b->tv_sec - a->tv_sec) * 1e6 + (double)(b->tv_usec - a->tv_usec);
}

__attribute__((noinline)) void callgrind_messages(struct target *t, const SpamfilterMessage *msg,
                                                  const struct bmi_source *bsrc, int n,
                                                  struct gen *g, int ideal, struct conn *c,
                                                  const struct source *src, struct obuf *b)
{
    char err[256];
    for (int i = 0; i < n; i++) {
        if (g != NULL)
            g->pos = 0;
        if (ideal) {
            char final = 0;
            if (ideal_message(c, t->port, src, b, t->reuse > 0, NULL, &final) != 0)
                die("callgrind run: ideal client: conversation failed");
        } else if (library_one(t, msg, bsrc, err, sizeof err) != 0) {
            die("callgrind run: %s", err);
        }
    }
}

/* N messages of BYTES (default 2048; generated and streamed through the read callback above
 * 1 MiB) to the no-op Milter (or opendkim), 1 thread; with CONNECTION_REUSE=16 (and the ideal
 * client reusing its connection); through the BMI face (and the ideal client holding its
 * conversation); by the ideal client instead of the library. */
int callgrind_main(const struct callgrind_case *k, const char *lib, const char *noop)
{
    int n = k->n, noreply = k->noreply, reuse = k->reuse, ideal = k->ideal, dkim = k->dkim;
    size_t size = k->size;
    supervise_setup();
    message_setup();
    load_library(lib);
    int port;
    const char *name;
    if (dkim) {
        name = "opendkim";
        port = start_opendkim();
    } else {
        name = noreply ? "noop-noreply" : "noop-reply";
        port = free_port();
        start_noop(noop, noreply ? "noreply" : "reply", port);
    }
    struct target t = {.name = name, .port = port, .reuse = reuse ? 16 : 0, .expect_edits = dkim};
    t.h = open_handle(name, port, t.reuse, &t.opt);
    struct bmi_api bapi;
    if (k->bmi) {
        char why[256];
        if (bench_bmi_load(lib, &bapi, why, sizeof why) != 0)
            die("--bmi: %s", why);
        t.bmi = &bapi;
        t.env = &bmi_env;
    }
    SpamfilterMessage msg = envelope();
    struct msgdef m = {0};
    struct gen g = {.total = size};
    int stream = size > (1u << 20);
    struct source src = {.env = t.env};
    struct msgdef hdr = {0}; /* the header section alone, for the BMI face when streaming */
    struct bmi_source bsrc = {.msg = &m};
    if (stream) {
        msg.read = gen_read;
        msg.read_ctx = &g;
        src.gen = &g;
        make_message(&hdr, "header", 0);
        bsrc = (struct bmi_source){.msg = &hdr, .gen = &g};
    } else {
        make_message(&m, "msg", size);
        msg.data = m.data;
        msg.data_len = m.len;
        src.data = m.data;
        src.len = m.len;
        if (k->bmi) { /* as in the BMI table: the LF form, converted as the library must */
            src.data = (const unsigned char *)m.lf;
            src.len = m.lf_len;
            src.lf = 1;
        }
    }
    struct conn c = {.fd = -1};
    struct obuf b = {0};
    char err[256];
    for (int i = 0; i < 10 && !stream; i++) { /* warm-up, outside the collected function */
        char final = 0;
        if (ideal ? ideal_message(&c, port, &src, &b, t.reuse > 0, NULL, &final) != 0
                  : library_one(&t, &msg, &bsrc, err, sizeof err) != 0)
            die("callgrind warm-up: %s", ideal ? "ideal client failed" : err);
    }
    struct rusage ru0, ru1;
    ticking = k->ticks;
    if (k->ticks && k->bmi && !ideal)
        bmi_time_calls();
    getrusage(RUSAGE_THREAD, &ru0);
    uint64_t t0 = now_ns(), cpu0 = thread_cpu_ns();
    uint64_t ticks0 = ticks_now(), sys0 = t_sys_ticks;
    callgrind_messages(&t, &msg, &bsrc, n, stream ? &g : NULL, ideal, &c, &src, &b);
    uint64_t own = ticks_now() - ticks0 - (t_sys_ticks - sys0);
    double cpu_us = (double)(thread_cpu_ns() - cpu0) / 1e3 / n;
    getrusage(RUSAGE_THREAD, &ru1);
    printf("callgrind case: %s, %zu bytes%s, 1 thread, %s%s%s, %d messages in %.1f s\n", name,
           size, stream ? " (streamed)" : "", ideal ? "ideal client" : "library",
           k->bmi ? ", BMI face" : "", reuse ? ", connection reused" : "", n,
           (double)(now_ns() - t0) / 1e9);
    /* Run without valgrind (`build/bench --callgrind 20000 ...`), a quick comparison of two
     * builds, or of the library and the ideal client (--ideal). The split into user and
     * system time is the kernel's, sampled at its tick: good over many messages only. */
    printf("the thread's CPU a message: %.1f us (user %.1f, system %.1f; under valgrind, "
           "valgrind's)\n",
           cpu_us, usec_between(&ru0.ru_utime, &ru1.ru_utime) / n,
           usec_between(&ru0.ru_stime, &ru1.ru_stime) / n);
    /* Finer than the split above: the thread's time outside the socket calls, read from the
     * time-stamp counter around each of them (interpose.c). Compare builds, or the library and
     * the ideal client, by this; medians of several runs in turns. */
    if (k->ticks)
        printf("the thread's time a message outside system calls: %.0f " TICKS_UNIT "\n",
               (double)own / n);
    if (k->ticks && k->bmi && !ideal)
        bmi_call_report(stdout, (uint64_t)n);
    printf("messages: %d\n", n);
    if (c.fd >= 0)
        ideal_close(&c, &b);
    free(b.p);
    api.close(t.h);
    free_message(&m);
    free_message(&hdr);
    return 0;
}
