/*
 * message: what the bench sends: the envelope, the 2 KB and 100 KB messages (9 header fields,
 * one folded, CRLF line ends) held in memory, and the 100 MiB message generated as it is read
 * from a 66 KB pattern, never held whole.
 */
#ifndef BENCH_MESSAGE_H
#define BENCH_MESSAGE_H

#include "milter_spamfilter.h"

#include <stddef.h>
#include <stdint.h>

#define CLIENT_NAME "mail.example.org"
#define CLIENT_ADDR "127.0.0.1"
#define CLIENT_PORT 40000
#define HELO_NAME "mail.example.org"
#define SENDER "alice@example.org"
#define RECIPIENT "bob@example.net"
#define MTA_HOSTNAME "mx.example.net"
#define QUEUE_ID "0ABC123"

/* The header section of every message, blank line included, and its length. */
extern const char message_header[];
extern const size_t message_header_len;

struct msgdef {
    const char *name; /* "2K", "100K" */
    unsigned char *data; /* CRLF line ends, as spamfilter_filter gets it */
    size_t len;
    /* The same message as a BMI caller (Exim) holds it: LF line ends (its spool has no CR),
     * and where each header field ends, so that the fields are pushed one per call without
     * looking for them on the clock. */
    char *lf;
    size_t lf_len;
    size_t *field_end; /* the end of each header field in lf, its line end included */
    size_t nfields;
    size_t lf_body; /* where the body starts in lf (after the blank line) */
};

/* Fills the generator's pattern; before any message is made or generated. */
void message_setup(void);
/* A message of `size` bytes (malloc'd into m->data): the header section, then body lines;
 * and its LF form. */
void make_message(struct msgdef *m, const char *name, size_t size);
void free_message(struct msgdef *m);

/* The generated message: `total` bytes, the header section first; `pos` bytes read so far. */
struct gen {
    uint64_t total, pos;
};
/* The library's read callback (SpamfilterReadFn) over a struct gen. */
ptrdiff_t gen_read(void *ctx, uint8_t *buf, size_t len);
/* The body alone, with LF line ends (as a BMI caller pushes it): `total` bytes. */
ptrdiff_t gen_read_lf_body(struct gen *g, uint8_t *buf, size_t len);

/* The envelope above as the library's C struct, without content. */
SpamfilterMessage envelope(void);

#endif
