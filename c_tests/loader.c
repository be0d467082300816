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
 *   verdict:                         (followed by the Sieve scriptlet, for kind verdict)
 * Exit code: 0 success, 1 the library reported a failure, 2 usage or loading error.
 */
#define _GNU_SOURCE
#include "milter_spamfilter.h"

#include <dlfcn.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

typedef SpamfilterStatus (*init_fn)(const char *, SpamfilterHandle **);
typedef SpamfilterStatus (*filter_fn)(const SpamfilterHandle *, const SpamfilterMessage *,
                                      SpamfilterResult *);
typedef void (*result_free_fn)(SpamfilterResult *);
typedef void (*close_fn)(SpamfilterHandle *);
typedef const char *(*string_fn)(void);
typedef const char *(*status_text_fn)(SpamfilterStatus);

struct api {
    init_fn init;
    filter_fn filter;
    result_free_fn result_free;
    close_fn close;
    string_fn version;
    string_fn last_error;
    status_text_fn status_text;
};

#define MAX_LIST 256

static void usage(void)
{
    fprintf(stderr,
            "usage: spamfilter-load [options] LIBRARY OPTION_FILE MESSAGE_FILE\n"
            "  --from ADDR         reverse path without <> (default: empty, the null sender)\n"
            "  --rcpt ADDR         a recipient (repeatable; default: postmaster@localhost)\n"
            "  --rcpt-arg ARG      ESMTP parameter of the last --rcpt (repeatable)\n"
            "  --mail-arg ARG      ESMTP parameter of MAIL FROM (repeatable)\n"
            "  --client-addr IP    client address (default: none, a local submission)\n"
            "  --client-name NAME  client host name\n"
            "  --client-port N     client port\n"
            "  --helo NAME         HELO/EHLO argument\n"
            "  --hostname NAME     the MTA's host name (macro j)\n"
            "  --queue-id ID       queue id (macro i)\n"
            "  --auth-type MECH    SMTP AUTH mechanism\n"
            "  --auth-user USER    authenticated user\n"
            "  --macro NAME=VALUE  another macro (repeatable)\n"
            "  --stream            pass the message through the read callback\n"
            "  --repeat N          filter the message N times (prints the last result)\n"
            "  --quiet             print nothing on success (for load tests)\n");
}

static const char *status_name(SpamfilterStatus s)
{
    switch (s) {
    case SPAMFILTER_STATUS_OK: return "ok";
    case SPAMFILTER_STATUS_ERR_ARGUMENT: return "err_argument";
    case SPAMFILTER_STATUS_ERR_CONFIG: return "err_config";
    case SPAMFILTER_STATUS_ERR_CONNECT: return "err_connect";
    case SPAMFILTER_STATUS_ERR_TIMEOUT: return "err_timeout";
    case SPAMFILTER_STATUS_ERR_PROTOCOL: return "err_protocol";
    case SPAMFILTER_STATUS_ERR_IO: return "err_io";
    case SPAMFILTER_STATUS_ERR_MESSAGE: return "err_message";
    case SPAMFILTER_STATUS_ERR_SOCKS: return "err_socks";
    case SPAMFILTER_STATUS_ERR_INTERNAL: return "err_internal";
    }
    return "unknown";
}

static const char *kind_name(SpamfilterKind k)
{
    switch (k) {
    case SPAMFILTER_KIND_NONE: return "none";
    case SPAMFILTER_KIND_VERDICT: return "verdict";
    case SPAMFILTER_KIND_DEFER: return "defer";
    }
    return "unknown";
}

static const char *disposition_name(SpamfilterDisposition d)
{
    switch (d) {
    case SPAMFILTER_DISPOSITION_CONTINUE: return "continue";
    case SPAMFILTER_DISPOSITION_ACCEPT: return "accept";
    case SPAMFILTER_DISPOSITION_REJECT: return "reject";
    case SPAMFILTER_DISPOSITION_TEMPFAIL: return "tempfail";
    case SPAMFILTER_DISPOSITION_DISCARD: return "discard";
    }
    return "unknown";
}

static int load(const char *path, struct api *api)
{
    void *lib = dlopen(path, RTLD_NOW | RTLD_LOCAL);
    if (lib == NULL) {
        fprintf(stderr, "spamfilter-load: cannot load %s: %s\n", path, dlerror());
        return -1;
    }
#define SYM(field, name)                                                                    \
    do {                                                                                    \
        *(void **)(&api->field) = dlsym(lib, name);                                         \
        if (api->field == NULL) {                                                           \
            fprintf(stderr, "spamfilter-load: %s has no symbol %s\n", path, name);          \
            return -1;                                                                      \
        }                                                                                   \
    } while (0)
    SYM(init, "spamfilter_init");
    SYM(filter, "spamfilter_filter");
    SYM(result_free, "spamfilter_result_free");
    SYM(close, "spamfilter_close");
    SYM(version, "spamfilter_version");
    SYM(last_error, "spamfilter_last_error");
    SYM(status_text, "spamfilter_status_text");
#undef SYM
    return 0;
}

static unsigned char *read_file(const char *path, size_t *len)
{
    FILE *f = fopen(path, "rb");
    if (f == NULL) {
        fprintf(stderr, "spamfilter-load: cannot open message %s: %s\n", path, strerror(errno));
        return NULL;
    }
    size_t cap = 65536, n = 0;
    unsigned char *buf = malloc(cap);
    if (buf == NULL) {
        fclose(f);
        return NULL;
    }
    for (;;) {
        if (n == cap) {
            unsigned char *bigger = realloc(buf, cap * 2);
            if (bigger == NULL) {
                free(buf);
                fclose(f);
                return NULL;
            }
            buf = bigger;
            cap *= 2;
        }
        size_t got = fread(buf + n, 1, cap - n, f);
        n += got;
        if (got == 0)
            break;
    }
    fclose(f);
    *len = n;
    return buf;
}

struct stream_ctx {
    const unsigned char *data;
    size_t len, pos;
};

static ptrdiff_t stream_read(void *ctx, uint8_t *buf, size_t len)
{
    struct stream_ctx *s = ctx;
    size_t n = s->len - s->pos;
    if (n > len)
        n = len;
    memcpy(buf, s->data + s->pos, n);
    s->pos += n;
    return (ptrdiff_t)n;
}

int main(int argc, char **argv)
{
    const char *rcpt_addr[MAX_LIST];
    const char *rcpt_args[MAX_LIST][MAX_LIST];
    size_t rcpt_argc[MAX_LIST];
    const char *mail_args[MAX_LIST];
    SpamfilterMacro macros[MAX_LIST];
    size_t nrcpt = 0, nmail = 0, nmacro = 0;
    const char *from = "", *client_addr = NULL, *client_name = NULL, *helo = NULL;
    const char *hostname = NULL, *queue_id = NULL, *auth_type = NULL, *auth_user = NULL;
    int client_port = 0, stream = 0, quiet = 0;
    long repeat = 1;
    int i;

    for (i = 1; i < argc && strncmp(argv[i], "--", 2) == 0; i++) {
        const char *opt = argv[i];
        if (strcmp(opt, "--stream") == 0) {
            stream = 1;
            continue;
        }
        if (strcmp(opt, "--quiet") == 0) {
            quiet = 1;
            continue;
        }
        if (i + 1 >= argc) {
            usage();
            return 2;
        }
        const char *val = argv[++i];
        if (strcmp(opt, "--from") == 0) {
            from = val;
        } else if (strcmp(opt, "--rcpt") == 0 && nrcpt < MAX_LIST) {
            rcpt_argc[nrcpt] = 0;
            rcpt_addr[nrcpt++] = val;
        } else if (strcmp(opt, "--rcpt-arg") == 0 && nrcpt > 0 && rcpt_argc[nrcpt - 1] < MAX_LIST) {
            rcpt_args[nrcpt - 1][rcpt_argc[nrcpt - 1]++] = val;
        } else if (strcmp(opt, "--mail-arg") == 0 && nmail < MAX_LIST) {
            mail_args[nmail++] = val;
        } else if (strcmp(opt, "--client-addr") == 0) {
            client_addr = val;
        } else if (strcmp(opt, "--client-name") == 0) {
            client_name = val;
        } else if (strcmp(opt, "--client-port") == 0) {
            client_port = atoi(val);
        } else if (strcmp(opt, "--helo") == 0) {
            helo = val;
        } else if (strcmp(opt, "--hostname") == 0) {
            hostname = val;
        } else if (strcmp(opt, "--queue-id") == 0) {
            queue_id = val;
        } else if (strcmp(opt, "--auth-type") == 0) {
            auth_type = val;
        } else if (strcmp(opt, "--auth-user") == 0) {
            auth_user = val;
        } else if (strcmp(opt, "--repeat") == 0) {
            repeat = atol(val);
        } else if (strcmp(opt, "--macro") == 0 && nmacro < MAX_LIST) {
            char *eq = strchr(val, '=');
            if (eq == NULL) {
                fprintf(stderr, "spamfilter-load: --macro %s: expected NAME=VALUE\n", val);
                return 2;
            }
            char *name = strndup(val, (size_t)(eq - val));
            macros[nmacro].name = name;
            macros[nmacro].value = eq + 1;
            nmacro++;
        } else {
            fprintf(stderr, "spamfilter-load: unknown or misplaced option %s\n", opt);
            usage();
            return 2;
        }
    }
    if (argc - i != 3) {
        usage();
        return 2;
    }
    const char *library = argv[i], *option_file = argv[i + 1], *message_file = argv[i + 2];

    struct api api;
    if (load(library, &api) != 0)
        return 2;

    size_t data_len = 0;
    unsigned char *data = read_file(message_file, &data_len);
    if (data == NULL)
        return 2;

    SpamfilterHandle *handle = NULL;
    SpamfilterStatus st = api.init(option_file, &handle);
    if (st != SPAMFILTER_STATUS_OK) {
        printf("status: %s\nerror: %s\n", status_name(st), api.last_error());
        fprintf(stderr, "spamfilter-load: spamfilter_init: %s: %s\n", api.status_text(st),
                api.last_error());
        free(data);
        return 1;
    }

    SpamfilterRecipient rcpts[MAX_LIST];
    if (nrcpt == 0) {
        rcpt_addr[0] = "postmaster@localhost";
        rcpt_argc[0] = 0;
        nrcpt = 1;
    }
    for (size_t r = 0; r < nrcpt; r++) {
        rcpts[r].address = rcpt_addr[r];
        rcpts[r].esmtp_args = rcpt_args[r];
        rcpts[r].esmtp_argc = rcpt_argc[r];
    }

    SpamfilterMessage msg;
    memset(&msg, 0, sizeof msg);
    msg.struct_size = sizeof msg;
    msg.client_name = client_name;
    msg.client_addr = client_addr;
    msg.client_port = (uint16_t)client_port;
    msg.helo = helo;
    msg.sender = from;
    msg.mail_args = mail_args;
    msg.mail_argc = nmail;
    msg.recipients = rcpts;
    msg.recipient_count = nrcpt;
    msg.mta_hostname = hostname;
    msg.queue_id = queue_id;
    msg.auth_type = auth_type;
    msg.auth_authen = auth_user;
    msg.macros = macros;
    msg.macro_count = nmacro;

    SpamfilterResult res;
    int rc = 0;
    for (long n = 0; n < repeat; n++) {
        struct stream_ctx ctx = {data, data_len, 0};
        if (stream) {
            msg.read = stream_read;
            msg.read_ctx = &ctx;
        } else {
            msg.data = data;
            msg.data_len = data_len;
        }
        memset(&res, 0, sizeof res);
        res.struct_size = sizeof res;
        st = api.filter(handle, &msg, &res);
        if (st != SPAMFILTER_STATUS_OK) {
            printf("status: %s\nerror: %s\n", status_name(st), api.last_error());
            fprintf(stderr, "spamfilter-load: spamfilter_filter: %s: %s\n", api.status_text(st),
                    api.last_error());
            rc = 1;
            break;
        }
        if (n + 1 < repeat)
            api.result_free(&res);
    }
    if (rc == 0 && !quiet) {
        printf("status: ok\n");
        printf("kind: %s\n", kind_name(res.kind));
        printf("disposition: %s\n", disposition_name(res.disposition));
        if (res.reply != NULL)
            printf("reply: %s\n", res.reply);
        if (res.quarantine_reason != NULL)
            printf("quarantine: %s\n", res.quarantine_reason);
        printf("rejected_recipients: %zu\n", res.rejected_recipients);
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
    for (size_t m = 0; m < nmacro; m++)
        free((char *)macros[m].name);
    free(data);
    return rc;
}
