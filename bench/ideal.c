/* See ideal.h. */
#define _GNU_SOURCE
#include "ideal.h"
#include "util.h"

/* The protocol bits (SMFIP_*) from sendmail's own header (libmilter-dev), as the no-op Milter
 * uses. */
#include <libmilter/mfdef.h>

#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

/* The macro values of the envelope (message.h), as the library derives them from the
 * SpamfilterMessage (the `B` columns show both clients write the same bytes). */
static const char *const native_macros[][2] = {
    {"j", MTA_HOSTNAME},
    {"_", CLIENT_NAME " [" CLIENT_ADDR "]"},
    {"client_addr", CLIENT_ADDR},
    {"client_name", CLIENT_NAME},
    {"client_port", "40000"},
    {"client_ptr", CLIENT_NAME},
    {"i", QUEUE_ID},
    {"mail_mailer", "smtp"},
    {"mail_host", "example.org"},
    {"mail_addr", SENDER},
    {"rcpt_mailer", "smtp"},
    {"rcpt_host", "example.net"},
    {"rcpt_addr", RECIPIENT},
};

const struct ideal_env native_env = {
    .host = CLIENT_NAME,
    .family = '4',
    .port = CLIENT_PORT,
    .addr = CLIENT_ADDR,
    .helo = HELO_NAME,
    .sender = SENDER,
    .recipient = RECIPIENT,
    .macros = native_macros,
    .nmacros = sizeof native_macros / sizeof native_macros[0],
};

/* The BMI face knows only the client's address, the sender and the recipients
 * (bmiProcessConnection, bmiProcessFROM, bmiAccumulateTO): no host name, port, HELO, queue ID
 * or MTA host name. The library then names the client by its bracketed address, and derives
 * the rest as for the native face. */
static const char *const bmi_macros[][2] = {
    {"_", "[" CLIENT_ADDR "]"},
    {"client_addr", CLIENT_ADDR},
    {"client_name", "[" CLIENT_ADDR "]"},
    {"client_port", "0"},
    {"mail_mailer", "smtp"},
    {"mail_host", "example.org"},
    {"mail_addr", SENDER},
    {"rcpt_mailer", "smtp"},
    {"rcpt_host", "example.net"},
    {"rcpt_addr", RECIPIENT},
};

const struct ideal_env bmi_env = {
    .host = "[" CLIENT_ADDR "]",
    .family = '4',
    .port = 0,
    .addr = CLIENT_ADDR,
    .helo = NULL,
    .sender = SENDER,
    .recipient = RECIPIENT,
    .macros = bmi_macros,
    .nmacros = sizeof bmi_macros / sizeof bmi_macros[0],
};

/* The library's default lists (sendmail's and Postfix's), by stage index SMFIM_*: from the
 * crate (bench-consts.h). */
static const char *const default_macros[LIB_MACRO_STAGES] = LIB_DEFAULT_MACROS;
/* The command of each stage index. */
static const char stage_cmd[] = {'C', 'H', 'M', 'R', 'T', 'E', 'N'};
_Static_assert(sizeof stage_cmd == LIB_MACRO_STAGES, "a command for every macro stage");

static void ob_need(struct obuf *b, size_t n)
{
    if (b->len + n <= b->cap)
        return;
    size_t cap = b->cap ? b->cap : 8192;
    while (cap < b->len + n)
        cap *= 2;
    unsigned char *p = realloc(b->p, cap);
    if (p == NULL)
        die("out of memory");
    b->p = p;
    b->cap = cap;
}

static void ob_put(struct obuf *b, const void *data, size_t n)
{
    ob_need(b, n);
    memcpy(b->p + b->len, data, n);
    b->len += n;
}

static void ob_str(struct obuf *b, const char *s)
{
    ob_put(b, s, strlen(s) + 1);
}

static size_t pkt_begin(struct obuf *b, char cmd)
{
    size_t at = b->len;
    ob_need(b, 5);
    b->len += 4;
    b->p[b->len++] = (unsigned char)cmd;
    return at;
}

static void pkt_end(struct obuf *b, size_t at)
{
    uint32_t len = htonl((uint32_t)(b->len - at - 4));
    memcpy(b->p + at, &len, 4);
}

/* MAIL or RCPT: the address in angle brackets, NUL-terminated (no ESMTP arguments). */
static void put_address_cmd(struct obuf *b, char cmd, const char *addr)
{
    size_t at = pkt_begin(b, cmd);
    ob_put(b, "<", 1);
    ob_put(b, addr, strlen(addr));
    ob_str(b, ">");
    pkt_end(b, at);
}

static const char *macro_value(const struct ideal_env *env, const char *name, size_t len)
{
    if (len >= 2 && name[0] == '{' && name[len - 1] == '}') {
        name++;
        len -= 2;
    }
    for (size_t i = 0; i < env->nmacros; i++)
        if (strlen(env->macros[i][0]) == len && memcmp(env->macros[i][0], name, len) == 0)
            return env->macros[i][1];
    return NULL;
}

/* The macros of a stage that have a value, as one MACRO packet (none if no value). */
static void put_macros(struct obuf *b, const struct neg *n, const struct ideal_env *env,
                       int stage)
{
    const char *s = n->macros[stage];
    size_t at = 0;
    int any = 0;
    while (*s) {
        while (*s == ' ')
            s++;
        size_t l = strcspn(s, " ");
        if (l == 0)
            break;
        const char *v = macro_value(env, s, l);
        if (v != NULL) {
            if (!any) {
                at = pkt_begin(b, 'D');
                char c = stage_cmd[stage];
                ob_put(b, &c, 1);
                any = 1;
            }
            ob_put(b, s, l);
            ob_put(b, "", 1);
            ob_str(b, v);
        }
        s += l;
    }
    if (any)
        pkt_end(b, at);
}

static int flush_out(struct conn *c, struct obuf *b)
{
    if (b->len == 0)
        return 0;
    int r = write_all_fd(c->fd, b->p, b->len);
    b->len = 0;
    return r;
}

/* Reads one packet; its data stays valid until the next call. */
static int read_packet(struct conn *c, char *cmd, unsigned char **data, size_t *dlen,
                       unsigned char **big)
{
    unsigned char hdr[5];
    size_t have = 0;
    while (have < 5) {
        if (c->rpos == c->rlen) {
            ssize_t n = recv(c->fd, c->rbuf, sizeof c->rbuf, 0);
            if (n <= 0) {
                if (n < 0 && errno == EINTR)
                    continue;
                return -1;
            }
            c->rlen = (size_t)n;
            c->rpos = 0;
        }
        hdr[have++] = c->rbuf[c->rpos++];
    }
    uint32_t len;
    memcpy(&len, hdr, 4);
    len = ntohl(len);
    if (len < 1 || len > (1u << 20))
        return -1;
    *cmd = (char)hdr[4];
    size_t need = len - 1;
    *dlen = need;
    if (need <= c->rlen - c->rpos) {
        *data = c->rbuf + c->rpos;
        c->rpos += need;
        return 0;
    }
    free(*big);
    *big = xmalloc(need + 1);
    size_t got = 0;
    while (got < need) {
        if (c->rpos == c->rlen) {
            ssize_t n = recv(c->fd, c->rbuf, sizeof c->rbuf, 0);
            if (n <= 0) {
                if (n < 0 && errno == EINTR)
                    continue;
                return -1;
            }
            c->rlen = (size_t)n;
            c->rpos = 0;
        }
        size_t k = c->rlen - c->rpos;
        if (k > need - got)
            k = need - got;
        memcpy(*big + got, c->rbuf + c->rpos, k);
        c->rpos += k;
        got += k;
    }
    *data = *big;
    return 0;
}

int ideal_quickack = 1;

/* Outcome of a reply: 0 continue, 1 skip, 2 a final disposition, -1 error. */
static int read_reply(struct conn *c, int eom, int *edits, char *final)
{
    unsigned char *big = NULL;
    if (eom && ideal_quickack) {
        /* A Milter writes each modification and the final reply separately, without
         * TCP_NODELAY (libmilter): its second write waits for our ACK of the first, which
         * Linux delays ~40 ms while we have nothing to send. Acknowledge at once instead. */
        int one = 1;
        setsockopt(c->fd, IPPROTO_TCP, TCP_QUICKACK, &one, sizeof one);
    }
    for (;;) {
        char cmd;
        unsigned char *data;
        size_t dlen;
        if (read_packet(c, &cmd, &data, &dlen, &big) != 0) {
            free(big);
            return -1;
        }
        switch (cmd) {
        case 'c':
            free(big);
            if (final)
                *final = cmd;
            return eom ? 2 : 0;
        case 's':
            free(big);
            return 1;
        case 'a': case 'r': case 't': case 'd': case 'y': case '4':
            free(big);
            if (final)
                *final = cmd;
            return 2;
        case 'p':
            continue;
        case 'h': case 'i': case 'm': case '+': case '-': case '2': case 'e': case 'b': case 'q':
            if (!eom) {
                free(big);
                return -1;
            }
            if (edits)
                (*edits)++;
            continue;
        default:
            free(big);
            return -1;
        }
    }
}

/* Sends what is held and reads the one reply a stage owes. */
static int exchange(struct conn *c, struct obuf *b, int eom, int *edits, char *final)
{
    if (flush_out(c, b) != 0)
        return -1;
    return read_reply(c, eom, edits, final);
}

int ideal_open(struct conn *c, int port, struct obuf *b)
{
    c->fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (c->fd < 0)
        return -1;
    int one = 1;
    setsockopt(c->fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    struct sockaddr_in a = {.sin_family = AF_INET,
                            .sin_port = htons((uint16_t)port),
                            .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    if (connect(c->fd, (struct sockaddr *)&a, sizeof a) != 0)
        return -1;
    c->rlen = c->rpos = 0;
    c->reused = 0;
    size_t at = pkt_begin(b, 'O');
    uint32_t v[3] = {htonl(LIB_OFFER_VERSION), htonl(LIB_OFFER_ACTIONS),
                    htonl(LIB_OFFER_PROTOCOL)};
    ob_put(b, v, sizeof v);
    pkt_end(b, at);
    if (flush_out(c, b) != 0)
        return -1;
    char cmd;
    unsigned char *data, *big = NULL;
    size_t dlen;
    if (read_packet(c, &cmd, &data, &dlen, &big) != 0 || cmd != 'O' || dlen < 12) {
        free(big);
        return -1;
    }
    uint32_t w[3];
    memcpy(w, data, 12);
    c->neg.version = ntohl(w[0]);
    c->neg.actions = ntohl(w[1]);
    c->neg.protocol = ntohl(w[2]) & LIB_OFFER_PROTOCOL;
    for (int s = 0; s < LIB_MACRO_STAGES; s++)
        snprintf(c->neg.macros[s], sizeof c->neg.macros[s], "%s", default_macros[s]);
    /* Symbol lists: {uint32 stage; names NUL} ... */
    size_t pos = 12;
    while (pos + 4 < dlen) {
        uint32_t st;
        memcpy(&st, data + pos, 4);
        st = ntohl(st);
        pos += 4;
        size_t l = strnlen((const char *)data + pos, dlen - pos);
        if (st < LIB_MACRO_STAGES)
            snprintf(c->neg.macros[st], sizeof c->neg.macros[st], "%.*s", (int)l,
                     (const char *)data + pos);
        pos += l + 1;
    }
    free(big);
    return 0;
}

void ideal_close(struct conn *c, struct obuf *b)
{
    if (c->fd < 0)
        return;
    size_t at = pkt_begin(b, 'Q');
    pkt_end(b, at);
    (void)flush_out(c, b);
    close(c->fd);
    c->fd = -1;
}

#define HAS(bit) (c->neg.protocol & (bit))

/* The outcome of a stage: go on, the Milter's final reply came (the message is done), or a
 * failure. */
enum { GO_ON = 0, DONE = 1, FAILED = -1 };

/* A command that owes a reply unless `nr` was negotiated: sent with what is held, its reply
 * read. A SKIP sets *skipped, and is a failure where skipped is NULL. */
static int stage_reply(struct conn *c, struct obuf *b, uint32_t nr, char *final, int *skipped)
{
    if (HAS(nr))
        return GO_ON;
    int r = exchange(c, b, 0, NULL, final);
    if (r < 0)
        return FAILED;
    if (r == 2)
        return DONE;
    if (r == 1) {
        if (skipped == NULL)
            return FAILED; /* no SKIP at this stage */
        *skipped = 1;
    }
    return GO_ON;
}

/* CONNECT, HELO, MAIL, RCPT and DATA, each with its macros, as negotiated. */
static int ideal_envelope(struct conn *c, struct obuf *b, const struct ideal_env *env,
                          char *final)
{
    int r, skipped = 0;
    put_macros(b, &c->neg, env, 0);
    if (!HAS(SMFIP_NOCONNECT)) {
        size_t at = pkt_begin(b, 'C');
        ob_str(b, env->host);
        ob_put(b, &env->family, 1);
        uint16_t port_be = htons(env->port);
        ob_put(b, &port_be, 2);
        ob_str(b, env->addr);
        pkt_end(b, at);
        if ((r = stage_reply(c, b, SMFIP_NR_CONN, final, NULL)) != GO_ON)
            return r;
    }
    if (env->helo != NULL) {
        put_macros(b, &c->neg, env, 1);
        if (!HAS(SMFIP_NOHELO)) {
            size_t at = pkt_begin(b, 'H');
            ob_str(b, env->helo);
            pkt_end(b, at);
            if ((r = stage_reply(c, b, SMFIP_NR_HELO, final, NULL)) != GO_ON)
                return r;
        }
    }
    put_macros(b, &c->neg, env, 2);
    if (!HAS(SMFIP_NOMAIL)) {
        put_address_cmd(b, 'M', env->sender);
        if ((r = stage_reply(c, b, SMFIP_NR_MAIL, final, NULL)) != GO_ON)
            return r;
    }
    put_macros(b, &c->neg, env, 3);
    if (!HAS(SMFIP_NORCPT)) {
        put_address_cmd(b, 'R', env->recipient);
        /* A refused recipient is not the end of the message. */
        if (stage_reply(c, b, SMFIP_NR_RCPT, final, &skipped) == FAILED)
            return FAILED;
    }
    put_macros(b, &c->neg, env, 4);
    if (!HAS(SMFIP_NODATA)) {
        size_t at = pkt_begin(b, 'T');
        pkt_end(b, at);
        if ((r = stage_reply(c, b, SMFIP_NR_DATA, final, NULL)) != GO_ON)
            return r;
    }
    return GO_ON;
}

/* The header fields, split as the library does (a fold becomes "\n" plus the next line), and
 * EOH; *pos is left where the body starts. */
static int ideal_headers(struct conn *c, struct obuf *b, const unsigned char *msg, size_t mlen,
                         size_t *pos, const struct ideal_env *env, char *final)
{
    int r, skip = HAS(SMFIP_NOHDRS) != 0;
    size_t hat = 0;
    int open_hdr = 0;
    while (*pos < mlen) {
        const unsigned char *eol = memchr(msg + *pos, '\n', mlen - *pos);
        size_t end = eol ? (size_t)(eol - msg) + 1 : mlen;
        size_t cl = end - *pos;
        if (cl >= 2 && msg[end - 2] == '\r')
            cl -= 2;
        else if (cl >= 1 && msg[end - 1] == '\n')
            cl -= 1;
        const unsigned char *line = msg + *pos;
        *pos = end;
        if (cl == 0)
            break; /* the blank line: the body follows */
        if (line[0] == ' ' || line[0] == '\t') {
            if (!skip) {
                ob_put(b, "\n", 1);
                ob_put(b, line, cl);
            }
            continue;
        }
        if (open_hdr) {
            ob_put(b, "", 1);
            pkt_end(b, hat);
            open_hdr = 0;
            if ((r = stage_reply(c, b, SMFIP_NR_HDR, final, &skip)) != GO_ON)
                return r;
        }
        if (skip)
            continue;
        const unsigned char *colon = memchr(line, ':', cl);
        if (colon == NULL)
            return FAILED;
        hat = pkt_begin(b, 'L');
        ob_put(b, line, (size_t)(colon - line));
        ob_put(b, "", 1);
        const unsigned char *v = colon + 1;
        size_t vl = cl - (size_t)(v - line);
        if (!HAS(SMFIP_HDR_LEADSPC) && vl > 0 && v[0] == ' ') {
            v++;
            vl--;
        }
        ob_put(b, v, vl);
        open_hdr = 1;
    }
    if (open_hdr) {
        int skipped = 0; /* after the last field, a SKIP changes nothing */
        ob_put(b, "", 1);
        pkt_end(b, hat);
        if ((r = stage_reply(c, b, SMFIP_NR_HDR, final, &skipped)) != GO_ON)
            return r;
    }
    put_macros(b, &c->neg, env, 6);
    if (!HAS(SMFIP_NOEOH)) {
        size_t at = pkt_begin(b, 'N');
        pkt_end(b, at);
        if ((r = stage_reply(c, b, SMFIP_NR_EOH, final, NULL)) != GO_ON)
            return r;
    }
    return GO_ON;
}

/* Appends the LF text s[*pos..len) to b as CRLF text, at most `room` bytes: a LF with no CR
 * before it gets one, as the library converts an LF body (a CRLF that does not fit ends the
 * packet before its LF, as there). Runs between line ends are found with memchr and copied at
 * once. The whole message is in memory, so the byte before a LF is always at hand. Returns the
 * bytes appended. */
static size_t put_crlf(struct obuf *b, const unsigned char *s, size_t len, size_t *pos,
                       size_t room)
{
    ob_need(b, room);
    unsigned char *out = b->p + b->len, *o = out;
    size_t p = *pos;
    while (p < len) {
        size_t left = room - (size_t)(o - out);
        size_t n = len - p < left ? len - p : left;
        const unsigned char *lf = memchr(s + p, '\n', n);
        size_t run = lf != NULL ? (size_t)(lf - (s + p)) : n;
        memcpy(o, s + p, run);
        o += run;
        p += run;
        if (lf == NULL)
            break;
        left -= run;
        if (p > 0 && s[p - 1] == '\r') {
            *o++ = '\n';
        } else {
            if (left < 2)
                break;
            *o++ = '\r';
            *o++ = '\n';
        }
        p++;
    }
    size_t wrote = (size_t)(o - out);
    b->len += wrote;
    *pos = p;
    return wrote;
}

/* The body in BODY packets of at most CHUNK bytes, from the buffer (from pos; converted to
 * CRLF if src->lf) or the generator; written at HIGH_WATER when no reply is due. */
static int ideal_body(struct conn *c, struct obuf *b, const struct source *src, size_t pos,
                      char *final)
{
    if (HAS(SMFIP_NOBODY))
        return GO_ON;
    for (;;) {
        size_t at = pkt_begin(b, 'B');
        size_t n;
        if (src->data != NULL && src->lf) {
            n = put_crlf(b, src->data, src->len, &pos, CHUNK);
        } else if (src->data != NULL) {
            n = src->len - pos;
            if (n > CHUNK)
                n = CHUNK;
            ob_put(b, src->data + pos, n);
            pos += n;
        } else {
            ob_need(b, CHUNK);
            ptrdiff_t got = gen_read(src->gen, b->p + b->len, CHUNK);
            n = got > 0 ? (size_t)got : 0;
            b->len += n;
        }
        if (n == 0) {
            b->len = at; /* no empty BODY */
            return GO_ON;
        }
        pkt_end(b, at);
        if (!HAS(SMFIP_NR_BODY)) {
            int skipped = 0;
            int r = stage_reply(c, b, SMFIP_NR_BODY, final, &skipped);
            if (r != GO_ON || skipped)
                return r;
        } else if (b->len >= HIGH_WATER && flush_out(c, b) != 0) {
            return FAILED;
        }
    }
}

int ideal_message(struct conn *c, int port, const struct source *src, struct obuf *b,
                  int reuse, int *edits, char *final)
{
    const struct ideal_env *env = src->env != NULL ? src->env : &native_env;
    b->len = 0;
    if (c->fd >= 0 && c->reused) {
        size_t at = pkt_begin(b, 'K');
        pkt_end(b, at);
    } else if (ideal_open(c, port, b) != 0) {
        return -1;
    }
    int r = ideal_envelope(c, b, env, final);
    if (r != GO_ON)
        return r == DONE ? 0 : -1;
    /* The generator's header section is message_header; the body is read from it. */
    const unsigned char *msg = src->data;
    size_t mlen = src->len, pos = 0;
    if (msg == NULL) {
        msg = (const unsigned char *)message_header;
        mlen = message_header_len;
        src->gen->pos = mlen;
    }
    r = ideal_headers(c, b, msg, mlen, &pos, env, final);
    if (r == GO_ON)
        r = ideal_body(c, b, src, pos, final);
    if (r != GO_ON)
        return r == DONE ? 0 : -1;
    put_macros(b, &c->neg, env, 5);
    size_t at = pkt_begin(b, 'E');
    pkt_end(b, at);
    if (exchange(c, b, 1, edits, final) != 2)
        return -1;
    if (reuse)
        c->reused = 1;
    else
        ideal_close(c, b);
    return 0;
}

double min_rt(const struct neg *n, const struct msgdef *m, int reuse,
              const struct ideal_env *env)
{
    int hdrs = 0;
    size_t pos = 0, body;
    for (;;) {
        const unsigned char *eol = memchr(m->data + pos, '\n', m->len - pos);
        size_t end = (size_t)(eol - m->data) + 1;
        if (end - pos <= 2) {
            pos = end;
            break;
        }
        if (m->data[pos] != ' ' && m->data[pos] != '\t')
            hdrs++;
        pos = end;
    }
    body = m->len - pos;
    int chunks = (int)((body + CHUNK - 1) / CHUNK);
    uint32_t p = n->protocol;
    int rt = reuse ? 0 : 1; /* OPTNEG */
    if (!(p & SMFIP_NOCONNECT) && !(p & SMFIP_NR_CONN))
        rt++;
    if ((env == NULL || env->helo != NULL) && !(p & SMFIP_NOHELO) && !(p & SMFIP_NR_HELO))
        rt++;
    if (!(p & SMFIP_NOMAIL) && !(p & SMFIP_NR_MAIL))
        rt++;
    if (!(p & SMFIP_NORCPT) && !(p & SMFIP_NR_RCPT))
        rt++;
    if (!(p & SMFIP_NODATA) && !(p & SMFIP_NR_DATA))
        rt++;
    if (!(p & SMFIP_NOHDRS) && !(p & SMFIP_NR_HDR))
        rt += hdrs;
    if (!(p & SMFIP_NOEOH) && !(p & SMFIP_NR_EOH))
        rt++;
    if (!(p & SMFIP_NOBODY) && !(p & SMFIP_NR_BODY))
        rt += chunks;
    return rt + 1; /* BODYEOB */
}

void describe_protocol(uint32_t p, char *out, size_t len)
{
    static const char *const names[] = {
        "NOCONNECT", "NOHELO", "NOMAIL", "NORCPT", "NOBODY", "NOHDRS", "NOEOH", "NR_HDR",
        "NOUNKNOWN", "NODATA", "SKIP", "RCPT_REJ", "NR_CONN", "NR_HELO", "NR_MAIL", "NR_RCPT",
        "NR_DATA", "NR_UNKN", "NR_EOH", "NR_BODY", "HDR_LEADSPC"};
    out[0] = '\0';
    size_t used = 0;
    for (unsigned i = 0; i < sizeof names / sizeof names[0]; i++)
        if (p & (1u << i))
            used += (size_t)snprintf(out + used, len > used ? len - used : 0, "%s%s",
                                     used ? " " : "", names[i]);
    if (used == 0)
        snprintf(out, len, "none");
}

/* What the Milter negotiates, as the ideal client sees it (one conversation, not counted). */
struct neg probe(int port)
{
    struct conn c = {.fd = -1};
    struct obuf b = {0};
    if (ideal_open(&c, port, &b) != 0)
        die("cannot negotiate with the Milter on port %d", port);
    struct neg n = c.neg;
    /* QUIT right after OPTNEG is a legal end of the conversation. */
    ideal_close(&c, &b);
    free(b.p);
    return n;
}
