/*
 * spamfilter-check: checks an option file against a live Milter, the way the MTA would use it.
 * Built on the same loader as the tests (mta.c: dlopen/dlsym, never linked at build time).
 *
 *   spamfilter-check [options] OPTION_FILE [MESSAGE_FILE]
 *   spamfilter-check [--library PATH] --compare-exports VENDOR_LIBRARY
 *
 * Prints the options as understood (with defaults, and warnings for unknown names), how the
 * Milter was reached, what was negotiated (version, actions, protocol steps, macros by stage),
 * every packet of the conversation each way, the result (verdict, reply) and the time taken.
 * Without MESSAGE_FILE a built-in sample message is filtered.
 *
 * --compare-exports lists the dynamic symbols of VENDOR_LIBRARY (e.g. Messaging Server's own
 * libmilter.so) that the library does not export, and the reverse (exports.h); exit code 0 when
 * ours exports all of them, 1 when some are missing, 2 when a file is not a shared library.
 *
 * Exit code, for scripts and monitoring:
 *   0  the Milter answered, with no verdict (the message would be delivered as it is)
 *   1  the Milter answered with a verdict or a deferral
 *   2  failure: bad option file, Milter unreachable, timeout, protocol error ...
 *   3  usage error, or the library cannot be loaded
 */
#define _GNU_SOURCE
#include "exports.h"
#include "mta.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#ifndef SPAMFILTER_LIBRARY
#define SPAMFILTER_LIBRARY "/usr/local/lib/libmilter_spamfilter.so"
#endif

static const char *const PROG = "spamfilter-check";

/* The built-in sample, dated now: a spam filter scores a message whose Date lies days in the past
 * (rspamd's DATE_IN_PAST, SpamAssassin's DATE_IN_PAST_*), which would make the check's answer
 * depend on the age of this program. The two %s are the date, as RFC 5322 writes it. */
static const char SAMPLE_FORMAT[] =
    "Received: from client.example.org (client.example.org [192.0.2.10])\r\n"
    "\tby mx.example.net; %s\r\n"
    "From: Alice Example <alice@example.org>\r\n"
    "To: Bob Example <bob@example.net>\r\n"
    "Subject: spamfilter-check sample message\r\n"
    "Date: %s\r\n"
    "Message-ID: <spamfilter-check@example.org>\r\n"
    "MIME-Version: 1.0\r\n"
    "Content-Type: text/plain; charset=us-ascii\r\n"
    "\r\n"
    "This is the built-in sample message of spamfilter-check.\r\n"
    "It should pass any Milter unchanged, or get its usual headers.\r\n";

/* The sample message with the current date and time (UTC) in `buf`; returns its length. */
static size_t dated_sample(char *buf, size_t size)
{
    char date[64];
    time_t now = time(NULL);
    struct tm tm;
    gmtime_r(&now, &tm);
    /* The C locale (this program never calls setlocale): English day and month names. */
    strftime(date, sizeof date, "%a, %d %b %Y %H:%M:%S +0000", &tm);
    int n = snprintf(buf, size, SAMPLE_FORMAT, date, date);
    return n < 0 ? 0 : (size_t)n < size ? (size_t)n : size - 1;
}

static void usage(FILE *out)
{
    fprintf(out,
            "usage: spamfilter-check [options] OPTION_FILE [MESSAGE_FILE]\n"
            "       spamfilter-check [--library PATH] --compare-exports VENDOR_LIBRARY\n"
            "Checks OPTION_FILE against its live Milter: options as understood, connection,\n"
            "negotiation, every packet, the verdict and the time taken.\n"
            "  --library PATH      the plug-in library (default: $SPAMFILTER_LIBRARY, else\n"
            "                      " SPAMFILTER_LIBRARY ")\n"
            "  --stream            pass the message through the read callback, as big\n"
            "                      messages are\n"
            "  --options-only      print the options as understood and stop (no connection)\n"
            "  --compare-exports VENDOR_LIBRARY\n"
            "                      list the dynamic symbols of VENDOR_LIBRARY (the MTA's own\n"
            "                      plug-in, e.g. its libmilter.so) that the library does not\n"
            "                      export, and the reverse; exit code 0 none missing, 1 some\n"
            "envelope of the message (defaults: a local submission to postmaster@localhost):\n");
    sf_envelope_usage(out);
    fprintf(out,
            "exit code: 0 no verdict, 1 verdict or deferral, 2 failure, 3 usage or loading\n");
}

static void indented(const char *text)
{
    const char *p = text;
    while (*p) {
        const char *nl = strchr(p, '\n');
        size_t n = nl ? (size_t)(nl - p) : strlen(p);
        printf("    %.*s\n", (int)n, p);
        p += n + (nl ? 1 : 0);
    }
}

int main(int argc, char **argv)
{
    static struct sf_envelope env;
    const char *library = getenv("SPAMFILTER_LIBRARY");
    int help = 0, stream = 0, options_only = 0;
    const char *vendor = NULL;

    if (library == NULL || *library == '\0')
        library = SPAMFILTER_LIBRARY;
    sf_envelope_init(&env);
    const struct sf_option own[] = {
        {"--help", &help, NULL},
        {"--stream", &stream, NULL},
        {"--options-only", &options_only, NULL},
        {"--library", NULL, &library},
        {"--compare-exports", NULL, &vendor},
        {NULL, NULL, NULL},
    };
    int i = sf_options(PROG, argc, argv, &env, own);
    if (i < 0) {
        usage(stderr);
        return 3;
    }
    if (help) {
        usage(stdout);
        return 0;
    }
    if (vendor != NULL) {
        sf_envelope_free(&env);
        if (argc - i != 0) {
            fprintf(stderr, "%s: --compare-exports takes no option file\n", PROG);
            return 3;
        }
        return compare_exports(PROG, library, vendor);
    }
    if (argc - i < 1 || argc - i > 2) {
        usage(stderr);
        return 3;
    }
    const char *option_file = argv[i], *message_file = argc - i == 2 ? argv[i + 1] : NULL;

    struct sf_api api;
    if (sf_load(PROG, library, &api) != 0) {
        fprintf(stderr, "%s: give the library's path with --library PATH\n", PROG);
        sf_envelope_free(&env);
        return 3;
    }
    printf("library: %s (%s)\n", api.version(), library);

    SpamfilterHandle *handle = NULL;
    SpamfilterStatus st = api.init(option_file, &handle);
    if (st != SPAMFILTER_STATUS_OK) {
        printf("options: %s\n", option_file);
        printf("FAIL (%s): %s\n", sf_status_name(st), api.last_error());
        printf("The MTA cannot load this option file: fix the line named above.\n");
        sf_envelope_free(&env);
        return 2;
    }
    printf("options: %s, as understood:\n", option_file);
    if (api.describe != NULL && api.string_free != NULL) {
        char *d = api.describe(handle);
        if (d != NULL) {
            indented(d);
            api.string_free(d);
        }
    } else {
        printf("    (this library version cannot describe its options)\n");
    }
    if (options_only) {
        printf("PASS: the option file loads\n");
        api.close(handle);
        sf_envelope_free(&env);
        return 0;
    }

    const unsigned char *data;
    unsigned char *file_data = NULL;
    char sample[sizeof SAMPLE_FORMAT + 128];
    size_t data_len;
    if (message_file != NULL) {
        file_data = sf_read_file(PROG, message_file, &data_len);
        if (file_data == NULL) {
            api.close(handle);
            sf_envelope_free(&env);
            return 3;
        }
        data = file_data;
        printf("message: %s (%zu bytes)\n", message_file, data_len);
    } else {
        data_len = dated_sample(sample, sizeof sample);
        data = (const unsigned char *)sample;
        printf("message: the built-in sample (%zu bytes)\n", data_len);
    }

    sf_envelope_finish(&env);
    SpamfilterMessage *msg = &env.msg;
    msg->flags = SPAMFILTER_FLAG_TRANSCRIPT;
    struct sf_stream ctx;
    sf_message_content(msg, &ctx, data, data_len, stream);
    SpamfilterResult res;
    memset(&res, 0, sizeof res);
    res.struct_size = sizeof res;
    st = api.filter(handle, msg, &res);
    if (res.transcript != NULL) {
        printf("conversation:\n");
        indented(res.transcript);
    }
    int rc;
    if (st != SPAMFILTER_STATUS_OK) {
        printf("FAIL (%s): %s\n", sf_status_name(st), api.last_error());
        printf("The MTA would pass such a message unfiltered with spamfilterN_optional=1, or "
               "defer it with 0.\n");
        rc = 2;
    } else {
        printf("result: %s, disposition %s, %zu recipient(s) refused at RCPT\n",
               sf_kind_name(res.kind), sf_disposition_name(res.disposition),
               res.rejected_recipients);
        if (res.reply != NULL)
            printf("reply: %s\n", res.reply);
        if (res.quarantine_reason != NULL)
            printf("quarantine: %s\n", res.quarantine_reason);
        if (res.kind == SPAMFILTER_KIND_VERDICT && res.verdict != NULL) {
            printf("verdict:\n");
            indented(res.verdict);
        }
        printf("time: %llu ms\n", (unsigned long long)res.elapsed_ms);
        switch (res.kind) {
        case SPAMFILTER_KIND_NONE:
            printf("PASS: the Milter answered; no verdict (the message is delivered as it is)\n");
            rc = 0;
            break;
        case SPAMFILTER_KIND_DEFER:
            printf("PASS: the Milter answered; the message would be deferred\n");
            rc = 1;
            break;
        default:
            printf("PASS: the Milter answered; the MTA would run the verdict above\n");
            rc = 1;
            break;
        }
    }
    api.result_free(&res);
    api.close(handle);
    sf_envelope_free(&env);
    free(file_data);
    return rc;
}
