/* See bmi.h. */
#define _GNU_SOURCE
#include "bmi.h"
#include "interpose.h"
#include "util.h"

#include <dlfcn.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* spamfilter_last_error: the text behind a BMI error (bmi_api.h). */
static const char *(*last_error)(void);

int bench_bmi_load(const char *path, struct bmi_api *api, char *err, size_t errlen)
{
    if (bmi_load("library", path, api, err, errlen) != 0)
        return -1;
    *(void **)(&last_error) = dlsym(api->lib, "spamfilter_last_error");
    return 0;
}

/* Each BMI call's time outside system calls, when timed (bmi_time_calls). */
static int timing;
static struct {
    const char *name;
    uint64_t ticks, calls;
} call_time[24];

void bmi_time_calls(void)
{
    timing = 1;
}

/* Adds a call of `name` that began at tick t0 with the thread's system-call ticks at s0. */
static void timed(const char *name, uint64_t t0, uint64_t s0)
{
    uint64_t own = ticks_now() - t0 - (t_sys_ticks - s0);
    size_t n = sizeof call_time / sizeof call_time[0];
    for (size_t i = 0; i < n; i++) {
        if (call_time[i].name == NULL)
            call_time[i].name = name;
        if (call_time[i].name == name || strcmp(call_time[i].name, name) == 0) {
            call_time[i].ticks += own;
            call_time[i].calls++;
            return;
        }
    }
}

void bmi_call_report(FILE *out, uint64_t messages)
{
    uint64_t all = 0;
    fprintf(out, "each BMI call's time a message outside system calls (" TICKS_UNIT "):\n");
    for (size_t i = 0; i < sizeof call_time / sizeof call_time[0] && call_time[i].name; i++) {
        fprintf(out, "  %-26s %8.0f  (%.1f calls)\n", call_time[i].name,
                (double)call_time[i].ticks / (double)messages,
                (double)call_time[i].calls / (double)messages);
        all += call_time[i].ticks;
    }
    fprintf(out, "  %-26s %8.0f\n", "in all", (double)all / (double)messages);
}

/* Runs the statement `stmt`, a BMI call named `name`, timed when timing is on. */
#define TIMED(name, stmt)                                                                   \
    do {                                                                                    \
        uint64_t t0_ = timing ? ticks_now() : 0, s0_ = timing ? t_sys_ticks : 0;            \
        stmt;                                                                               \
        if (timing)                                                                         \
            timed(name, t0_, s0_);                                                          \
    } while (0)

/* A failed call: what it was, where and what the library says; -1. */
static int failed(const struct bmi_api *api, const char *call, BmiError e, char *err,
                  size_t errlen)
{
    snprintf(err, errlen, "%s: error 0x%x (location %d, type %d): %s", call, (unsigned)e,
             (int)api->error_get_location(e), (int)api->error_get_type(e),
             last_error != NULL ? last_error() : "?");
    return -1;
}

#define CALL(expr, name)                                                                    \
    do {                                                                                    \
        BmiError e_;                                                                        \
        TIMED(name, e_ = (expr));                                                           \
        if (api->error_is_fatal(e_) == BMI_TRUE)                                            \
            return failed(api, name, e_, err, errlen);                                      \
    } while (0)

/* The body of the 100 MiB message, generated with LF line ends as it is pushed, BMI_CHUNK a
 * call. */
static int push_generated(const struct bmi_api *api, BmiMessage *msg, struct gen *g, char *err,
                          size_t errlen)
{
    char chunk[BMI_CHUNK];
    ptrdiff_t n;
    while ((n = gen_read_lf_body(g, (uint8_t *)chunk, sizeof chunk)) > 0)
        CALL(api->accumulate_body(chunk, (int)n, msg), "bmiAccumulateBody");
    return 0;
}

/* The content: each header field in a call of its own, the body in chunks of BMI_CHUNK. */
static int push_content(const struct bmi_api *api, BmiMessage *msg, const struct bmi_source *src,
                        char *err, size_t errlen)
{
    const struct msgdef *m = src->msg;
    size_t at = 0;
    for (size_t i = 0; i < m->nfields; i++) {
        CALL(api->accumulate_headers(m->lf + at, (int)(m->field_end[i] - at), msg),
             "bmiAccumulateHeaders");
        at = m->field_end[i];
    }
    CALL(api->end_headers(msg), "bmiEndHeaders");
    if (src->gen != NULL) {
        if (push_generated(api, msg, src->gen, err, errlen) != 0)
            return -1;
    } else {
        for (at = m->lf_body; at < m->lf_len; at += BMI_CHUNK) {
            size_t n = m->lf_len - at < BMI_CHUNK ? m->lf_len - at : BMI_CHUNK;
            CALL(api->accumulate_body(m->lf + at, (int)n, msg), "bmiAccumulateBody");
        }
    }
    CALL(api->end_body(msg), "bmiEndBody");
    return 0;
}

/* The verdicts, as Exim takes them at end of message: each made a string (which it spools) and
 * freed; the first checked. */
static int take_verdicts(const struct bmi_api *api, BmiMessage *msg, int expect_edits, char *err,
                         size_t errlen)
{
    const BmiVerdict *v = NULL;
    CALL(api->access_first_verdict(msg, &v), "bmiAccessFirstVerdict");
    if (v == NULL) {
        snprintf(err, errlen, "bmiEndMessage left no verdict");
        return -1;
    }
    const char *dest = api->verdict_access_destination(v);
    if (expect_edits && (api->verdict_destination_is_default(v) == BMI_TRUE || dest == NULL ||
                         strstr(dest, "DKIM-Signature") == NULL)) {
        snprintf(err, errlen, "no DKIM-Signature in the verdict's destination");
        return -1;
    }
    if (!expect_edits && api->verdict_destination_is_default(v) != BMI_TRUE) {
        snprintf(err, errlen, "the verdict is not the default (destination %s)",
                 dest != NULL ? dest : "NULL");
        return -1;
    }
    while (v != NULL) {
        char *text = NULL;
        CALL(api->create_str_from_verdict(v, &text), "bmiCreateStrFromVerdict");
        TIMED("bmiFreeStr", api->free_str(text));
        CALL(api->access_next_verdict(msg, v, &v), "bmiAccessNextVerdict");
    }
    return 0;
}

/* The calls between bmiInitMessage and the verdicts. */
static int push_message(const struct bmi_api *api, BmiMessage *msg, const struct bmi_source *src,
                        int expect_edits, char *err, size_t errlen)
{
    CALL(api->process_connection(CLIENT_ADDR, msg), "bmiProcessConnection");
    CALL(api->process_from(SENDER, msg), "bmiProcessFROM");
    CALL(api->accumulate_to(RECIPIENT, NULL, msg), "bmiAccumulateTO");
    CALL(api->end_to(msg), "bmiEndTO");
    if (push_content(api, msg, src, err, errlen) != 0)
        return -1;
    CALL(api->end_message(msg), "bmiEndMessage");
    return take_verdicts(api, msg, expect_edits, err, errlen);
}

int bmi_message(const struct bmi_api *api, const char *opt, const struct bmi_source *src,
                int expect_edits, char *err, size_t errlen)
{
    BmiSystem *sys = NULL;
    BmiError e;
    TIMED("bmiInitSystem", e = api->init_system(BMI_VERSION, opt, &sys));
    if (api->error_is_fatal(e) == BMI_TRUE)
        return failed(api, "bmiInitSystem", e, err, errlen);
    BmiMessage *msg = NULL;
    TIMED("bmiInitMessage", e = api->init_message(sys, &msg));
    if (api->error_is_fatal(e) == BMI_TRUE) {
        api->free_system(sys);
        return failed(api, "bmiInitMessage", e, err, errlen);
    }
    int r = push_message(api, msg, src, expect_edits, err, errlen);
    /* Exim leaves both on success; a bench that did so would leak per message. */
    TIMED("bmiFreeMessage", api->free_message(msg));
    TIMED("bmiFreeSystem", api->free_system(sys));
    return r;
}
