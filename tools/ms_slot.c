/* See ms_slot.h: one slot's BMI calls for one message. */
#define _GNU_SOURCE
#include "ms_slot.h"
#include "bmi_feed.h"

#include <errno.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* A library whose verdict list (or recipient list) runs longer than this does not end: the
 * harness stops there instead of looping for ever. */
#define MS_MAX_LIST 4096

struct call_state {
    const struct bmi_api *api;
    BmiMessage *msg;
    struct slot_result *r;
};

/* Records `err` of the call `function` ("bmiEndMessage", in the MTA's words "end message");
 * returns 1 when it is fatal (the slot stops there). */
static int check(struct call_state *c, BmiError err, const char *function, const char *words)
{
    if (err == BMI_OK)
        return 0;
    if (c->api->error_is_fatal(err) != BMI_TRUE) {
        if (c->r->warning == BMI_OK) {
            c->r->warning = err;
            c->r->warning_function = function;
        }
        return 0;
    }
    c->r->failed = 1;
    c->r->error = err;
    c->r->function = function;
    c->r->words = words;
    return 1;
}

static int sink_header(void *ctx, const char *field, size_t len)
{
    struct call_state *c = ctx;
    if (len > INT_MAX) {
        snprintf(c->r->harness_error, sizeof c->r->harness_error,
                 "a header field of %zu bytes is longer than the API's int length", len);
        return 1;
    }
    return check(c, c->api->accumulate_headers(field, (int)len, c->msg), "bmiAccumulateHeaders",
                 "accumulate headers");
}

static int sink_end_headers(void *ctx)
{
    struct call_state *c = ctx;
    return check(c, c->api->end_headers(c->msg), "bmiEndHeaders", "end headers");
}

static int sink_body(void *ctx, const char *chunk, size_t len)
{
    struct call_state *c = ctx;
    return check(c, c->api->accumulate_body(chunk, (int)len, c->msg), "bmiAccumulateBody",
                 "accumulate body");
}

/* One recipient, with its opt-in values when the envelope has some (as the MTA passes a
 * recipient's LDAP or channel opt-in). */
static int send_recipient(struct call_state *c, const char *rcpt, const char *optin_values)
{
    BmiOptin *optin = NULL;
    if (optin_values != NULL) {
        if (check(c, c->api->optin_init(&optin), "bmiOptinInit", "optin init"))
            return 1;
        if (check(c, c->api->optin_mset(optin, optin_values, ':'), "bmiOptinMset",
                   "optin mset")) {
            c->api->optin_free(optin);
            return 1;
        }
    }
    int stop = check(c, c->api->accumulate_to(rcpt, optin, c->msg), "bmiAccumulateTO",
                     "accumulate to");
    if (optin != NULL)
        c->api->optin_free(optin);
    return stop;
}

/* The envelope: connection, sender, recipients. */
static int send_envelope(struct call_state *c, const struct ms_envelope *env)
{
    const struct bmi_api *a = c->api;
    if (check(c, a->process_connection(env->client_ip, c->msg), "bmiProcessConnection",
              "process connection"))
        return 1;
    if (check(c, a->process_from(env->from, c->msg), "bmiProcessFROM", "process from"))
        return 1;
    for (size_t i = 0; i < env->nrcpt; i++)
        if (send_recipient(c, env->rcpt[i], env->optin))
            return 1;
    return check(c, a->end_to(c->msg), "bmiEndTO", "end to");
}

/* The content, header fields one by one, then the body in chunks; then the end. */
static int send_content(struct call_state *c, const char *message_file)
{
    FILE *f = fopen(message_file, "rb");
    if (f == NULL) {
        snprintf(c->r->harness_error, sizeof c->r->harness_error, "cannot open message %s: %s",
                 message_file, strerror(errno));
        return 1;
    }
    struct feed_sink sink = {sink_header, sink_end_headers, sink_body, c};
    int rc = feed_message(f, &sink);
    fclose(f);
    if (rc < 0 && c->r->harness_error[0] == '\0')
        snprintf(c->r->harness_error, sizeof c->r->harness_error, "cannot read message %s",
                 message_file);
    if (rc != 0)
        return 1;
    if (check(c, c->api->end_body(c->msg), "bmiEndBody", "end body"))
        return 1;
    return check(c, c->api->end_message(c->msg), "bmiEndMessage", "end message");
}

/* The recipients a verdict covers, copied (the library owns its strings). */
static int copy_recipients(const struct bmi_api *a, const BmiVerdict *v, struct ms_verdict *out,
                           struct slot_result *r)
{
    for (const BmiRecipient *rc = a->verdict_first_recipient(v); rc != NULL;
         rc = a->verdict_next_recipient(v, rc)) {
        if (out->nrcpt >= MS_MAX_LIST) {
            snprintf(r->harness_error, sizeof r->harness_error,
                     "a verdict's recipient list does not end (more than %d)", MS_MAX_LIST);
            return 1;
        }
        char **more = realloc(out->rcpt, (out->nrcpt + 1) * sizeof *more);
        if (more == NULL)
            return 1;
        out->rcpt = more;
        const char *addr = a->recipient_address(rc);
        out->rcpt[out->nrcpt] = strdup(addr != NULL ? addr : "(null)");
        if (out->rcpt[out->nrcpt++] == NULL)
            return 1;
    }
    return 0;
}

/* One verdict, as the MTA reads it: its error, then default, then the destination. */
static int copy_verdict(const struct bmi_api *a, const BmiVerdict *v, struct slot_result *r)
{
    struct ms_verdict *more = realloc(r->verdicts, (r->nverdicts + 1) * sizeof *more);
    if (more == NULL)
        return 1;
    r->verdicts = more;
    struct ms_verdict *out = &r->verdicts[r->nverdicts++];
    memset(out, 0, sizeof *out);
    BmiError err = a->verdict_error(v);
    if (err != BMI_OK && a->error_is_fatal(err) == BMI_TRUE) {
        out->kind = MS_ERROR;
        out->error = err;
    } else if (a->verdict_destination_is_default(v) == BMI_TRUE) {
        out->kind = MS_DEFAULT;
    } else {
        const char *d = a->verdict_access_destination(v);
        out->kind = d == NULL ? MS_NULL : MS_STRING;
        if (d != NULL && (out->destination = strdup(d)) == NULL)
            return 1;
    }
    return copy_recipients(a, v, out, r);
}

static void collect_verdicts(struct call_state *c)
{
    const struct bmi_api *a = c->api;
    const BmiVerdict *v = NULL;
    if (check(c, a->access_first_verdict(c->msg, &v), "bmiAccessFirstVerdict", "access verdict"))
        return;
    while (v != NULL) {
        if (c->r->nverdicts >= MS_MAX_LIST) {
            snprintf(c->r->harness_error, sizeof c->r->harness_error,
                     "the verdict list does not end (more than %d)", MS_MAX_LIST);
            return;
        }
        if (copy_verdict(a, v, c->r)) {
            if (c->r->harness_error[0] == '\0')
                snprintf(c->r->harness_error, sizeof c->r->harness_error, "out of memory");
            return;
        }
        const BmiVerdict *next = NULL;
        if (check(c, a->access_next_verdict(c->msg, v, &next), "bmiAccessNextVerdict",
                  "access verdict"))
            return;
        v = next;
    }
}

void *ms_slot_run(void *arg)
{
    struct slot_job *job = arg;
    const struct bmi_api *a = job->api;
    struct slot_result *r = &job->result;
    memset(r, 0, sizeof *r);
    BmiSystem *sys = NULL;
    struct call_state c = {a, NULL, r};
    /* As the MTA does, per message: the library makes this cheap (its option-file cache). */
    if (check(&c, a->init_system(BMI_VERSION, job->config_file, &sys), "bmiInitSystem",
              "init system"))
        goto out;
    if (check(&c, a->init_message(sys, &c.msg), "bmiInitMessage", "init message"))
        goto out;
    if (send_envelope(&c, job->env) || send_content(&c, job->message_file))
        goto out;
    collect_verdicts(&c);
out:
    if (c.msg != NULL)
        a->free_message(c.msg);
    if (sys != NULL)
        a->free_system(sys);
    return NULL;
}

void ms_slot_result_free(struct slot_result *r)
{
    for (size_t i = 0; i < r->nverdicts; i++) {
        free(r->verdicts[i].destination);
        for (size_t j = 0; j < r->verdicts[i].nrcpt; j++)
            free(r->verdicts[i].rcpt[j]);
        free(r->verdicts[i].rcpt);
    }
    free(r->verdicts);
    memset(r, 0, sizeof *r);
}
