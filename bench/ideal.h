/*
 * ideal: the ideal client, a second Milter client written directly on sockets. It holds the
 * library's conversation byte for byte (it offers what the library offers, honours what the
 * Milter negotiates, sends the same macros) and then does only what the wire requires: every
 * packet that needs no reply goes into the write of the next one that does, TCP_NODELAY, and
 * TCP_QUICKACK before the replies to end of message. The limit the Milter sets, so that the
 * library's rate divided by its rate is the library's own overhead. What the library offers and
 * its default macro lists come from the crate (build/bench-consts.h, made by bench/consts.rs).
 */
#ifndef BENCH_IDEAL_H
#define BENCH_IDEAL_H

#include "bench-consts.h"
#include "message.h"

#include <stddef.h>
#include <stdint.h>

/* Written out without a reply due once this much is held (as the library does). */
#define HIGH_WATER (256u << 10)
/* The largest BODY chunk. */
#define CHUNK LIB_MAX_DATA_LEN

/* What a Milter negotiated. */
struct neg {
    uint32_t version, actions, protocol;
    char macros[LIB_MACRO_STAGES][512]; /* space-separated names: the Milter's list, else the
                                           library's default */
};

/* The packets being put together, written at the next reply due. */
struct obuf {
    unsigned char *p;
    size_t len, cap;
};

/* One connection to the Milter (fd -1 if none). */
struct conn {
    int fd;
    struct neg neg;
    unsigned char rbuf[4096];
    size_t rlen, rpos;
    int reused;   /* the connection is negotiated and past a message */
    int borrowed; /* the library's connection, used between its blocks: never closed here */
};

/* What the client tells the Milter beside the content, as the library does for one of its
 * faces: CONNECT's host name, family, port and address; HELO (NULL: none); the sender and the
 * recipient; the macro values the library derives from them, by name without braces. */
struct ideal_env {
    const char *host;
    char family;
    uint16_t port;
    const char *addr;
    const char *helo;
    const char *sender, *recipient;
    const char *const (*macros)[2];
    size_t nmacros;
};
/* The envelope of message.h as spamfilter_filter gets it, and as the BMI face gets it (bmi.c:
 * the client's address, the sender, the recipient). */
extern const struct ideal_env native_env;
extern const struct ideal_env bmi_env;

/* The message source of the ideal client: a buffer, or the generator; the envelope (NULL:
 * native_env). */
struct source {
    const unsigned char *data; /* the whole message, or NULL for gen */
    size_t len;
    struct gen *gen;
    const struct ideal_env *env;
    /* data has LF line ends, as a BMI caller holds it: the body goes out converted to CRLF,
     * the work the library must do for the same conversation. */
    int lf;
};

/* 0: the ideal client does not set TCP_QUICKACK (the line that shows why it must). */
extern int ideal_quickack;

/* Connects and negotiates (OPTNEG written from b); 0 or -1. */
int ideal_open(struct conn *c, int port, struct obuf *b);
/* QUIT and close, if open. */
void ideal_close(struct conn *c, struct obuf *b);
/* One message: 0 and the final reply in *final (edits counted in *edits if given), or -1. With
 * reuse, the connection stays open for the next message (QUIT_NC goes out with that message's
 * first packets). */
int ideal_message(struct conn *c, int port, const struct source *src, struct obuf *b, int reuse,
                  int *edits, char *final);

/* What the Milter negotiates (one conversation, not counted). */
struct neg probe(int port);
/* The fewest round trips a message can take with this negotiation and envelope (NULL:
 * native_env): one per command that needs a reply (OPTNEG once per connection, none with
 * reuse; HELO only with a HELO). */
double min_rt(const struct neg *n, const struct msgdef *m, int reuse,
              const struct ideal_env *env);
/* The protocol bits by name, e.g. "NOHELO NR_HDR". */
void describe_protocol(uint32_t p, char *out, size_t len);

#endif
