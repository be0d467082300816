/* See msgserver.h: every slot of an MTA option file on one message, in parallel, and what the
 * MTA then does with each slot's verdicts. */
#define _GNU_SOURCE
#include "msgserver.h"
#include "ms_slot.h"
#include "optiondat.h"

#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

struct slot {
    int n;
    const struct ms_slot *opt;
    struct bmi_api api;
    int loaded;
    struct slot_job job;
    pthread_t thread;
};

/* Loads every slot that has a library. A slot whose library cannot be loaded is a configuration
 * error, unless spamfilterN_optional=1 says the MTA carries on without that filter. Returns the
 * number of slots ready to run, or -1. */
static int load_slots(const char *prog, const char *option_dat, const struct ms_options *opts,
                      struct slot *slots)
{
    int ready = 0, any = 0;
    for (int n = 1; n <= MS_SLOTS; n++) {
        struct slot *s = &slots[n];
        s->n = n;
        s->opt = &opts->slot[n];
        if (s->opt->library == NULL) {
            if (s->opt->used)
                fprintf(stderr, "%s: slot %d: no spamfilter%d_library in %s: the slot is off\n",
                        prog, n, n, option_dat);
            continue;
        }
        any = 1;
        char option[32], err[1024];
        snprintf(option, sizeof option, "spamfilter%d_library", n);
        if (bmi_load(option, s->opt->library, &s->api, err, sizeof err) != 0) {
            fprintf(stderr, "%s: slot %d: %s\n", prog, n, err);
            if (!s->opt->optional)
                return -1;
            fprintf(stderr, "%s: slot %d: spamfilter%d_optional=1: going on without it\n", prog,
                    n, n);
            continue;
        }
        s->loaded = 1;
        ready++;
    }
    if (!any) {
        fprintf(stderr, "%s: %s names no spamfilterN_library: nothing to filter with\n", prog,
                option_dat);
        return -1;
    }
    return ready;
}

/* Every loaded slot on its own thread, all at once, then waits for all of them. */
static int run_slots(const char *prog, struct slot *slots, const char *message_file,
                     const struct ms_envelope *env)
{
    int rc = 0;
    for (int n = 1; n <= MS_SLOTS; n++) {
        struct slot *s = &slots[n];
        if (!s->loaded)
            continue;
        ms_slot_result_free(&s->job.result);
        s->job = (struct slot_job){n, s->opt->config_file, &s->api, message_file, env, {0}};
        int e = pthread_create(&s->thread, NULL, ms_slot_run, &s->job);
        if (e != 0) {
            fprintf(stderr, "%s: slot %d: cannot start a thread: %s\n", prog, n, strerror(e));
            s->loaded = 0;
            rc = -1;
        }
    }
    for (int n = 1; n <= MS_SLOTS; n++)
        if (slots[n].loaded)
            pthread_join(slots[n].thread, NULL);
    return rc;
}

/* `name`, or "`what` N" (in `buf`) for a number N the header does not name. */
static const char *name_or_number(const char *name, const char *what, int n, char *buf,
                                  size_t len)
{
    if (name != NULL)
        return name;
    snprintf(buf, len, "%s %d", what, n);
    return buf;
}

/* "network", or "location 9" for a number the header does not name. */
static const char *loc_text(BmiError e, const struct bmi_api *a, char *buf, size_t len)
{
    BmiErrorLocation l = a->error_get_location(e);
    return name_or_number(bmi_location_name(l), "location", (int)l, buf, len);
}

/* "tempfail", or "type 99" likewise. */
static const char *type_text(BmiError e, const struct bmi_api *a, char *buf, size_t len)
{
    BmiErrorType t = a->error_get_type(e);
    return name_or_number(bmi_type_name(t), "type", (int)t, buf, len);
}

/* The MTA's deferral for a fatal error, in the words of Messaging Server's own
 * ("451 4.0.0 Spam filter end message failed - server - license [slot 1]"). */
static void deferral(char *out, size_t len, const char *words, BmiError e, const struct slot *s)
{
    char lb[32], tb[32];
    snprintf(out, len, "451 4.0.0 Spam filter %s failed - %s - %s [slot %d]", words,
             loc_text(e, &s->api, lb, sizeof lb), type_text(e, &s->api, tb, sizeof tb), s->n);
}

/* `action` with every "$U" replaced by `verdict` (malloc'd). */
static char *substitute(const char *action, const char *verdict)
{
    size_t vl = strlen(verdict), n = 0;
    for (const char *p = strstr(action, "$U"); p != NULL; p = strstr(p + 2, "$U"))
        n++;
    char *out = malloc(strlen(action) + n * vl + 1);
    if (out == NULL)
        return NULL;
    char *o = out;
    for (const char *p = action;;) {
        const char *u = strstr(p, "$U");
        if (u == NULL) {
            strcpy(o, p);
            break;
        }
        memcpy(o, p, (size_t)(u - p));
        o += u - p;
        memcpy(o, verdict, vl);
        o += vl;
        p = u + 2;
    }
    return out;
}

/* The action text exactly, prefixed by its length, so that a reader can take it byte for byte
 * (a Sieve scriptlet spans lines); then a line end unless the text ends with one. */
static void print_action(const char *prefix, const char *option, const char *text)
{
    size_t len = strlen(text);
    printf("%s: %s (%zu bytes):\n%s%s", prefix, option, len, text,
           len > 0 && text[len - 1] == '\n' ? "" : "\n");
}

static void print_recipients(const char *prefix, const struct ms_verdict *v)
{
    printf("%s: recipients:", prefix);
    for (size_t i = 0; i < v->nrcpt; i++)
        printf(" %s", v->rcpt[i]);
    printf("\n");
}

/* One verdict: what the MTA does for the recipients it covers. Returns 1 when those recipients
 * are deferred. */
static int apply_verdict(const struct slot *s, size_t k, const struct ms_verdict *v)
{
    char prefix[64], option[64];
    snprintf(prefix, sizeof prefix, "slot %d: verdict %zu", s->n, k + 1);
    print_recipients(prefix, v);
    switch (v->kind) {
    case MS_DEFAULT:
        printf("%s: default: deliver normally\n", prefix);
        return 0;
    case MS_NULL:
        snprintf(option, sizeof option, "spamfilter%d_null_action", s->n);
        if (s->opt->null_action == NULL) {
            printf("%s: null: %s is not set: no action\n", prefix, option);
            return 0;
        }
        printf("%s: null\n", prefix);
        print_action(prefix, option, s->opt->null_action);
        return 0;
    case MS_STRING: {
        snprintf(option, sizeof option, "spamfilter%d_string_action", s->n);
        printf("%s: string (%zu bytes)\n", prefix, strlen(v->destination));
        if (s->opt->string_action == NULL) {
            printf("%s: %s is not set: the verdict is not acted on\n", prefix, option);
            return 0;
        }
        char *action = substitute(s->opt->string_action, v->destination);
        if (action == NULL) {
            printf("%s: out of memory\n", prefix);
            return 1;
        }
        print_action(prefix, option, action);
        free(action);
        return 0;
    }
    case MS_ERROR: {
        char text[256];
        deferral(text, sizeof text, "verdict", v->error, s);
        if (s->opt->optional) {
            printf("%s: fatal error 0x%08x: spamfilter%d_optional=1: unfiltered\n", prefix,
                   (unsigned)v->error, s->n);
            return 0;
        }
        printf("%s: fatal error 0x%08x: defer: %s\n", prefix, (unsigned)v->error, text);
        return 1;
    }
    }
    return 0;
}

/* One slot's outcome. Returns 1 when the slot defers the whole message (its text in `defer`);
 * adds the recipients deferred by a failed verdict to *rcpt_deferred. */
static int apply_slot(const struct slot *s, char *defer, size_t defer_len, size_t *rcpt_deferred)
{
    const struct slot_result *r = &s->job.result;
    printf("slot %d: spamfilter%d_library=%s\n", s->n, s->n, s->opt->library);
    if (s->opt->config_file != NULL)
        printf("slot %d: spamfilter%d_config_file=%s\n", s->n, s->n, s->opt->config_file);
    if (r->warning != BMI_OK)
        printf("slot %d: warning 0x%08x from %s\n", s->n, (unsigned)r->warning,
               r->warning_function);
    if (r->failed) {
        char text[256], lb[32], tb[32];
        deferral(text, sizeof text, r->words, r->error, s);
        printf("slot %d: fatal error 0x%08x from %s: %s, %s\n", s->n, (unsigned)r->error,
               r->function, loc_text(r->error, &s->api, lb, sizeof lb),
               type_text(r->error, &s->api, tb, sizeof tb));
        if (s->opt->optional) {
            printf("slot %d: spamfilter%d_optional=1: the message passes unfiltered\n", s->n,
                   s->n);
            return 0;
        }
        printf("slot %d: defer: %s\n", s->n, text);
        snprintf(defer, defer_len, "%s", text);
        return 1;
    }
    for (size_t k = 0; k < r->nverdicts; k++)
        if (apply_verdict(s, k, &r->verdicts[k]))
            *rcpt_deferred += r->verdicts[k].nrcpt;
    if (r->nverdicts == 0)
        printf("slot %d: no verdict: deliver normally\n", s->n);
    return 0;
}

/* A harness failure in any slot (the message unreadable, a list that never ends). */
static int harness_failed(const char *prog, const struct slot *slots)
{
    int bad = 0;
    for (int n = 1; n <= MS_SLOTS; n++)
        if (slots[n].loaded && slots[n].job.result.harness_error[0] != '\0') {
            fprintf(stderr, "%s: slot %d: %s\n", prog, n, slots[n].job.result.harness_error);
            bad = 1;
        }
    return bad;
}

static int report(struct slot *slots)
{
    char defer[256] = "";
    int deferred = 0;
    size_t rcpt_deferred = 0;
    for (int n = 1; n <= MS_SLOTS; n++) {
        if (!slots[n].loaded)
            continue;
        char text[256];
        if (apply_slot(&slots[n], text, sizeof text, &rcpt_deferred) && !deferred) {
            deferred = 1; /* the first slot that defers gives the SMTP reply */
            snprintf(defer, sizeof defer, "%s", text);
        }
    }
    if (deferred) {
        printf("message: defer: %s\n", defer);
        return 1;
    }
    if (rcpt_deferred > 0)
        printf("message: accept, but for %zu recipient(s) deferred by a failed verdict\n",
               rcpt_deferred);
    else
        printf("message: accept\n");
    return 0;
}

int ms_run(const char *prog, const char *option_dat, const char *message_file,
           const struct ms_envelope *env, long repeat, int quiet)
{
    struct ms_options opts;
    char err[4200];
    if (ms_options_read(option_dat, &opts, err, sizeof err) != 0) {
        fprintf(stderr, "%s: %s\n", prog, err);
        return 2;
    }
    struct slot slots[MS_SLOTS + 1];
    memset(slots, 0, sizeof slots);
    int rc = 2;
    if (load_slots(prog, option_dat, &opts, slots) < 0)
        goto out;
    for (long i = 0; i < repeat; i++) {
        if (run_slots(prog, slots, message_file, env) != 0 || harness_failed(prog, slots))
            goto out;
    }
    if (quiet) {
        rc = 0;
        for (int n = 1; n <= MS_SLOTS; n++)
            if (slots[n].loaded && slots[n].job.result.failed && !slots[n].opt->optional)
                rc = 1;
    } else {
        rc = report(slots);
    }
out:
    /* The libraries stay loaded, as in the MTA, which loads them once for its life: unloading a
     * Rust library would orphan its process-wide caches (reported as leaks by valgrind). */
    for (int n = 1; n <= MS_SLOTS; n++)
        ms_slot_result_free(&slots[n].job.result);
    ms_options_free(&opts);
    return rc;
}
