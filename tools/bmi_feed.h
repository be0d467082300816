/*
 * A message file as a BMI caller pushes it (bmi-interface.md §2, as Exim does): one header field
 * per call (name, colon, value, folded lines, its line end), then the body in chunks of at most
 * FEED_CHUNK bytes, split anywhere. Line ends become LF (Exim's spool has no CR) and a final
 * newline is added when the body lacks one. Nothing holds more than one field or one chunk, so
 * a message of any size streams through.
 */
#ifndef SPAMFILTER_BMI_FEED_H
#define SPAMFILTER_BMI_FEED_H

#include <stddef.h>
#include <stdio.h>

#define FEED_CHUNK 4096

/* Each callback returns 0 to go on; anything else stops the feed and is returned by it. */
struct feed_sink {
    int (*header)(void *ctx, const char *field, size_t len);
    int (*end_headers)(void *ctx);
    int (*body)(void *ctx, const char *chunk, size_t len);
    void *ctx;
};

/* Feeds `f` from its current position to its end. Returns 0, a callback's nonzero value, or -1
 * when reading fails (errno says why) or memory runs out. */
int feed_message(FILE *f, const struct feed_sink *sink);

#endif
