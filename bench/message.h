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
    unsigned char *data;
    size_t len;
};

/* Fills the generator's pattern; before any message is made or generated. */
void message_setup(void);
/* A message of `size` bytes (malloc'd into m->data): the header section, then body lines. */
void make_message(struct msgdef *m, const char *name, size_t size);

/* The generated message: `total` bytes, the header section first; `pos` bytes read so far. */
struct gen {
    uint64_t total, pos;
};
/* The library's read callback (SpamfilterReadFn) over a struct gen. */
ptrdiff_t gen_read(void *ctx, uint8_t *buf, size_t len);

/* The envelope above as the library's C struct, without content. */
SpamfilterMessage envelope(void);

#endif
