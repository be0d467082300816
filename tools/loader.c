/*
 * spamfilter-load: loads libmilter_spamfilter.so the way an MTA does (dlopen/dlsym, never linked
 * at build time), filters one message and prints what the MTA would get.
 *
 *   spamfilter-load [options] LIBRARY OPTION_FILE MESSAGE_FILE
 *
 * Output on stdout, one "key: value" per line, then the verdict:
 *   status: ok                       (or the status name, e.g. err_connect)
 *   error: <spamfilter_last_error()> (on failure)
 *   kind: none | verdict | defer
 *   disposition: continue | accept | reject | tempfail | discard
 *   reply: <SMTP reply>              (when there is one)
 *   quarantine: <reason>             (when there is one)
 *   rejected_recipients: N
 *   recipient I: ADDRESS: reject | tempfail: REPLY
 *                                    (one per recipient with its own outcome, refused at RCPT)
 *   verdict:                         (followed by the Sieve scriptlet, for kind verdict)
 * Exit code: 0 success, 1 the library reported a failure, 2 usage or loading error.
 *
 *   spamfilter-load [options] --option-dat OPTION_DAT MESSAGE_FILE
 *
 * loads the library as Messaging Server does instead (msgserver.h): every spamfilterN_library of
 * the MTA option file OPTION_DAT through the BMI names only, all slots at once on the message,
 * each slot's verdicts applied with its spamfilterN_null_action / _string_action / _optional.
 * Output, per slot N and its verdict K:
 *   slot N: spamfilterN_library=PATH
 *   slot N: fatal error 0xXXXXXXXX from bmiCALL: LOCATION, TYPE     (a failed call)
 *   slot N: defer: 451 4.0.0 Spam filter CALL failed - LOCATION - TYPE [slot N]
 *   slot N: spamfilterN_optional=1: the message passes unfiltered
 *   slot N: verdict K: recipients: ADDRESS ...
 *   slot N: verdict K: default: deliver normally | null | string (L bytes)
 *   slot N: verdict K: spamfilterN_string_action (L bytes):   (then the action, $U replaced,
 *                                   exactly L bytes, and a newline unless it ends with one)
 *   message: accept | defer: <the first deferring slot's 451 text>
 * Exit code: 0 accepted, 1 deferred, 2 usage, option file or loading error.
 */
#define _GNU_SOURCE
#include "msgserver.h"
#include "mta.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static const char *const PROG = "spamfilter-load";

static void usage(void)
{
    fprintf(stderr, "usage: spamfilter-load [options] LIBRARY OPTION_FILE MESSAGE_FILE\n"
                    "       spamfilter-load [options] --option-dat OPTION_DAT MESSAGE_FILE\n");
    sf_envelope_usage(stderr);
    fprintf(stderr,
            "  --stream            pass the message through the read callback\n"
            "  --repeat N          filter the message N times (prints the last result)\n"
            "  --quiet             print nothing on success (for load tests)\n"
            "  --option-dat FILE   load every spamfilterN_library of this MTA option file as\n"
            "                      Messaging Server does (BMI names only, slots in parallel);\n"
            "                      envelope: --from, --rcpt, --client-addr only\n"
            "  --optin VALUES      (--option-dat) opt-in values of every recipient, a:b:c\n");
}

/* The envelope options a BMI caller has no place for: refused with --option-dat rather than
 * silently dropped. Returns the first one given, or NULL. */
static const char *not_for_bmi(const struct sf_envelope *e, int stream)
{
    if (stream)
        return "--stream";
    if (e->nmail > 0)
        return "--mail-arg";
    if (e->nmacro > 0)
        return "--macro";
    for (size_t r = 0; r < e->nrcpt; r++)
        if (e->rcpt_argc[r] > 0)
            return "--rcpt-arg";
    const char *given[][2] = {
        {e->client_name, "--client-name"}, {e->helo, "--helo"}, {e->hostname, "--hostname"},
        {e->queue_id, "--queue-id"},       {e->auth_type, "--auth-type"},
        {e->auth_user, "--auth-user"},
    };
    for (size_t k = 0; k < sizeof given / sizeof given[0]; k++)
        if (given[k][0] != NULL)
            return given[k][1];
    return e->client_port != 0 ? "--client-port" : NULL;
}

/* --option-dat: the Messaging Server path (msgserver.c). */
static int run_option_dat(struct sf_envelope *env, int stream, const char *option_dat,
                          const char *optin, const char *message_file, long repeat, int quiet)
{
    const char *bad = not_for_bmi(env, stream);
    if (bad != NULL) {
        fprintf(stderr,
                "spamfilter-load: %s: the BMI calls of --option-dat carry only the client "
                "address, the sender and the recipients\n",
                bad);
        return 2;
    }
    sf_envelope_finish(env);
    struct ms_envelope me = {
        env->client_addr != NULL ? env->client_addr : "127.0.0.1",
        env->from,
        env->rcpt_addr,
        env->nrcpt,
        optin,
    };
    int rc = ms_run(PROG, option_dat, message_file, &me, repeat, quiet);
    sf_envelope_free(env);
    return rc;
}

int main(int argc, char **argv)
{
    static struct sf_envelope env;
    int stream = 0, quiet = 0;
    long repeat = 1;
    const char *option_dat = NULL, *optin = NULL, *repeat_text = NULL;

    sf_envelope_init(&env);
    const struct sf_option own[] = {
        {"--stream", &stream, NULL},
        {"--quiet", &quiet, NULL},
        {"--repeat", NULL, &repeat_text},
        {"--option-dat", NULL, &option_dat},
        {"--optin", NULL, &optin},
        {NULL, NULL, NULL},
    };
    int i = sf_options(PROG, argc, argv, &env, own);
    if (i < 0) {
        usage();
        return 2;
    }
    if (repeat_text != NULL) {
        char *end;
        repeat = strtol(repeat_text, &end, 10);
        if (*repeat_text == '\0' || *end != '\0' || repeat < 1) {
            fprintf(stderr, "spamfilter-load: --repeat %s: not a whole number from 1\n",
                    repeat_text);
            return 2;
        }
    }
    if (option_dat != NULL) {
        if (argc - i != 1) {
            usage();
            return 2;
        }
        return run_option_dat(&env, stream, option_dat, optin, argv[i], repeat, quiet);
    }
    if (optin != NULL) {
        fprintf(stderr, "spamfilter-load: --optin: only with --option-dat (a BMI caller's)\n");
        return 2;
    }
    if (argc - i != 3) {
        usage();
        return 2;
    }
    const char *library = argv[i], *option_file = argv[i + 1], *message_file = argv[i + 2];

    struct sf_api api;
    if (sf_load(PROG, library, &api) != 0)
        return 2;

    size_t data_len = 0;
    unsigned char *data = sf_read_file(PROG, message_file, &data_len);
    if (data == NULL)
        return 2;

    SpamfilterHandle *handle = NULL;
    SpamfilterStatus st = api.init(option_file, &handle);
    if (st != SPAMFILTER_STATUS_OK) {
        printf("status: %s\nerror: %s\n", sf_status_name(st), api.last_error());
        fprintf(stderr, "spamfilter-load: spamfilter_init: %s: %s\n", api.status_text(st),
                api.last_error());
        free(data);
        sf_envelope_free(&env);
        return 1;
    }

    sf_envelope_finish(&env);
    SpamfilterMessage *msg = &env.msg;
    SpamfilterResult res;
    int rc = 0;
    for (long n = 0; n < repeat; n++) {
        struct sf_stream ctx;
        sf_message_content(msg, &ctx, data, data_len, stream);
        memset(&res, 0, sizeof res);
        res.struct_size = sizeof res;
        st = api.filter(handle, msg, &res);
        if (st != SPAMFILTER_STATUS_OK) {
            printf("status: %s\nerror: %s\n", sf_status_name(st), api.last_error());
            fprintf(stderr, "spamfilter-load: spamfilter_filter: %s: %s\n",
                    api.status_text(st), api.last_error());
            rc = 1;
            break;
        }
        if (n + 1 < repeat)
            api.result_free(&res);
    }
    if (rc == 0 && !quiet) {
        printf("status: ok\n");
        printf("kind: %s\n", sf_kind_name(res.kind));
        printf("disposition: %s\n", sf_disposition_name(res.disposition));
        if (res.reply != NULL)
            printf("reply: %s\n", res.reply);
        if (res.quarantine_reason != NULL)
            printf("quarantine: %s\n", res.quarantine_reason);
        printf("rejected_recipients: %zu\n", res.rejected_recipients);
        for (size_t i = 0; i < res.recipient_result_count; i++) {
            const SpamfilterRecipientResult *r = &res.recipient_results[i];
            printf("recipient %zu: %s: %s: %s\n", r->index, r->address,
                   sf_disposition_name(r->disposition), r->reply);
        }
        if (res.kind == SPAMFILTER_KIND_VERDICT && res.verdict != NULL) {
            printf("verdict:\n");
            fwrite(res.verdict, 1, res.verdict_len, stdout);
            if (res.verdict_len > 0 && res.verdict[res.verdict_len - 1] != '\n')
                printf("\n");
        }
    }
    if (rc == 0) {
        api.result_free(&res);
        api.result_free(&res); /* idempotent by contract */
    }
    api.close(handle);
    api.close(NULL);
    sf_envelope_free(&env);
    free(data);
    return rc;
}
