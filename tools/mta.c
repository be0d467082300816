/* See mta.h: what every MTA-side C program of this project shares. */
#define _GNU_SOURCE
#include "mta.h"

#include <dlfcn.h>
#include <errno.h>
#include <stdlib.h>
#include <string.h>

int sf_load(const char *prog, const char *path, struct sf_api *api)
{
    memset(api, 0, sizeof *api);
    void *lib = dlopen(path, RTLD_NOW | RTLD_LOCAL);
    if (lib == NULL) {
        fprintf(stderr, "%s: cannot load %s: %s\n", prog, path, dlerror());
        return -1;
    }
    api->lib = lib;
#define SYM(field, name)                                                                    \
    do {                                                                                    \
        *(void **)(&api->field) = dlsym(lib, name);                                         \
        if (api->field == NULL) {                                                           \
            fprintf(stderr, "%s: %s has no symbol %s: is it libmilter_spamfilter.so?\n",    \
                    prog, path, name);                                                      \
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
    *(void **)(&api->describe) = dlsym(lib, "spamfilter_describe");
    *(void **)(&api->string_free) = dlsym(lib, "spamfilter_string_free");
    return 0;
}

const char *sf_status_name(SpamfilterStatus s)
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

const char *sf_kind_name(SpamfilterKind k)
{
    switch (k) {
    case SPAMFILTER_KIND_NONE: return "none";
    case SPAMFILTER_KIND_VERDICT: return "verdict";
    case SPAMFILTER_KIND_DEFER: return "defer";
    }
    return "unknown";
}

const char *sf_disposition_name(SpamfilterDisposition d)
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

unsigned char *sf_read_file(const char *prog, const char *path, size_t *len)
{
    FILE *f = fopen(path, "rb");
    if (f == NULL) {
        fprintf(stderr, "%s: cannot open message %s: %s\n", prog, path, strerror(errno));
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
                fprintf(stderr, "%s: %s: out of memory\n", prog, path);
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
    int bad = ferror(f);
    fclose(f);
    if (bad) {
        fprintf(stderr, "%s: cannot read message %s\n", prog, path);
        free(buf);
        return NULL;
    }
    *len = n;
    return buf;
}

void sf_envelope_init(struct sf_envelope *e)
{
    memset(e, 0, sizeof *e);
    e->from = "";
}

int sf_envelope_option(const char *prog, struct sf_envelope *e, const char *opt,
                       const char *val)
{
    if (strcmp(opt, "--from") == 0) {
        e->from = val;
    } else if (strcmp(opt, "--rcpt") == 0) {
        if (e->nrcpt >= SF_MAX_LIST) {
            fprintf(stderr, "%s: more than %d recipients\n", prog, SF_MAX_LIST);
            return -1;
        }
        e->rcpt_argc[e->nrcpt] = 0;
        e->rcpt_addr[e->nrcpt++] = val;
    } else if (strcmp(opt, "--rcpt-arg") == 0) {
        if (e->nrcpt == 0 || e->rcpt_argc[e->nrcpt - 1] >= SF_MAX_LIST) {
            fprintf(stderr, "%s: --rcpt-arg %s: needs a --rcpt before it\n", prog, val);
            return -1;
        }
        e->rcpt_args[e->nrcpt - 1][e->rcpt_argc[e->nrcpt - 1]++] = val;
    } else if (strcmp(opt, "--mail-arg") == 0) {
        if (e->nmail >= SF_MAX_LIST) {
            fprintf(stderr, "%s: more than %d --mail-arg\n", prog, SF_MAX_LIST);
            return -1;
        }
        e->mail_args[e->nmail++] = val;
    } else if (strcmp(opt, "--client-addr") == 0) {
        e->client_addr = val;
    } else if (strcmp(opt, "--client-name") == 0) {
        e->client_name = val;
    } else if (strcmp(opt, "--client-port") == 0) {
        char *end;
        long port = strtol(val, &end, 10);
        if (*val == '\0' || *end != '\0' || port < 0 || port > 65535) {
            fprintf(stderr, "%s: --client-port %s: not a port number from 0 to 65535\n", prog,
                    val);
            return -1;
        }
        e->client_port = (int)port;
    } else if (strcmp(opt, "--helo") == 0) {
        e->helo = val;
    } else if (strcmp(opt, "--hostname") == 0) {
        e->hostname = val;
    } else if (strcmp(opt, "--queue-id") == 0) {
        e->queue_id = val;
    } else if (strcmp(opt, "--auth-type") == 0) {
        e->auth_type = val;
    } else if (strcmp(opt, "--auth-user") == 0) {
        e->auth_user = val;
    } else if (strcmp(opt, "--macro") == 0) {
        const char *eq = strchr(val, '=');
        if (eq == NULL || eq == val) {
            fprintf(stderr, "%s: --macro %s: expected NAME=VALUE\n", prog, val);
            return -1;
        }
        if (e->nmacro >= SF_MAX_LIST) {
            fprintf(stderr, "%s: more than %d macros\n", prog, SF_MAX_LIST);
            return -1;
        }
        char *name = strndup(val, (size_t)(eq - val));
        if (name == NULL)
            return -1;
        e->macros[e->nmacro].name = name;
        e->macros[e->nmacro].value = eq + 1;
        e->nmacro++;
    } else {
        return 0;
    }
    return 1;
}

void sf_envelope_finish(struct sf_envelope *e)
{
    if (e->nrcpt == 0) {
        e->rcpt_addr[0] = "postmaster@localhost";
        e->rcpt_argc[0] = 0;
        e->nrcpt = 1;
    }
    for (size_t r = 0; r < e->nrcpt; r++) {
        e->rcpts[r].address = e->rcpt_addr[r];
        e->rcpts[r].esmtp_args = e->rcpt_args[r];
        e->rcpts[r].esmtp_argc = e->rcpt_argc[r];
    }
    SpamfilterMessage *m = &e->msg;
    memset(m, 0, sizeof *m);
    m->struct_size = sizeof *m;
    m->client_name = e->client_name;
    m->client_addr = e->client_addr;
    m->client_port = (uint16_t)e->client_port;
    m->helo = e->helo;
    m->sender = e->from;
    m->mail_args = e->mail_args;
    m->mail_argc = e->nmail;
    m->recipients = e->rcpts;
    m->recipient_count = e->nrcpt;
    m->mta_hostname = e->hostname;
    m->queue_id = e->queue_id;
    m->auth_type = e->auth_type;
    m->auth_authen = e->auth_user;
    m->macros = e->macros;
    m->macro_count = e->nmacro;
}

void sf_envelope_free(struct sf_envelope *e)
{
    for (size_t m = 0; m < e->nmacro; m++)
        free((char *)e->macros[m].name);
    e->nmacro = 0;
}

void sf_envelope_usage(FILE *out)
{
    fprintf(out,
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
            "  --macro NAME=VALUE  another macro (repeatable)\n");
}

int sf_options(const char *prog, int argc, char **argv, struct sf_envelope *e,
               const struct sf_option *own)
{
    int i;
    for (i = 1; i < argc && strncmp(argv[i], "--", 2) == 0; i++) {
        const char *opt = argv[i];
        const struct sf_option *o = own;
        while (o->name != NULL && strcmp(o->name, opt) != 0)
            o++;
        if (o->name != NULL && o->flag != NULL) {
            *o->flag = 1;
            continue;
        }
        if (i + 1 >= argc) {
            fprintf(stderr, "%s: %s needs a value\n", prog, opt);
            return -1;
        }
        const char *val = argv[++i];
        if (o->name != NULL) {
            *o->value = val;
            continue;
        }
        int taken = sf_envelope_option(prog, e, opt, val);
        if (taken < 0)
            return -1;
        if (taken == 0) {
            fprintf(stderr, "%s: unknown option %s\n", prog, opt);
            return -1;
        }
    }
    return i;
}

ptrdiff_t sf_stream_read(void *ctx, uint8_t *buf, size_t len)
{
    struct sf_stream *s = ctx;
    size_t n = s->len - s->pos;
    if (n > len)
        n = len;
    memcpy(buf, s->data + s->pos, n);
    s->pos += n;
    return (ptrdiff_t)n;
}

void sf_message_content(SpamfilterMessage *m, struct sf_stream *s, const unsigned char *data,
                        size_t len, int stream)
{
    s->data = data;
    s->len = len;
    s->pos = 0;
    if (stream) {
        m->read = sf_stream_read;
        m->read_ctx = s;
    } else {
        m->data = data;
        m->data_len = len;
    }
}
