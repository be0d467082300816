/* See bmi_feed.h: header fields one by one, then the body in chunks, LF line ends. */
#define _GNU_SOURCE
#include "bmi_feed.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>

/* A line of `n` bytes ending in CRLF loses its CR; one without a line end (the last line of a
 * file) gets an LF. Returns the new length; `line` has room for one more byte (getline's
 * buffer holds its NUL). */
static size_t lf_line(char *line, size_t n)
{
    if (n >= 2 && line[n - 2] == '\r' && line[n - 1] == '\n') {
        line[n - 2] = '\n';
        return n - 1;
    }
    if (n == 0 || line[n - 1] != '\n')
        line[n++] = '\n';
    return n;
}

/* A header line: "Name:" with no blank before the colon. Anything else ends the header. */
static int is_field_start(const char *line, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        if (line[i] == ':')
            return i > 0;
        if (line[i] == ' ' || line[i] == '\t' || line[i] == '\n')
            return 0;
    }
    return 0;
}

struct field {
    char *text;
    size_t len, cap;
};

static int field_add(struct field *fl, const char *line, size_t n)
{
    if (fl->len + n > fl->cap) {
        size_t cap = (fl->len + n) * 2;
        char *bigger = realloc(fl->text, cap);
        if (bigger == NULL)
            return -1;
        fl->text = bigger;
        fl->cap = cap;
    }
    memcpy(fl->text + fl->len, line, n);
    fl->len += n;
    return 0;
}

/* Pushes the field being collected, if any. */
static int field_flush(struct field *fl, const struct feed_sink *sink)
{
    if (fl->len == 0)
        return 0;
    int rc = sink->header(sink->ctx, fl->text, fl->len);
    fl->len = 0;
    return rc;
}

/* The body: CRLF -> LF across chunk boundaries, chunks of at most FEED_CHUNK bytes. `first` is
 * a line already read that belongs to the body (a header section that ended without a blank
 * line), already in LF form. */
static int feed_body(FILE *f, const struct feed_sink *sink, const char *first, size_t first_len)
{
    char in[FEED_CHUNK], out[FEED_CHUNK];
    size_t used = 0;
    int pending_cr = 0, any = first_len > 0, rc;
    char last = first_len > 0 ? first[first_len - 1] : '\n';
#define EMIT(c)                                                                             \
    do {                                                                                    \
        out[used++] = (c);                                                                  \
        last = (c);                                                                         \
        if (used == sizeof out) {                                                           \
            if ((rc = sink->body(sink->ctx, out, used)) != 0)                               \
                return rc;                                                                  \
            used = 0;                                                                       \
        }                                                                                   \
    } while (0)
    for (size_t i = 0; i < first_len; i++)
        EMIT(first[i]);
    size_t got;
    while ((got = fread(in, 1, sizeof in, f)) > 0) {
        any = 1;
        for (size_t i = 0; i < got; i++) {
            if (pending_cr && in[i] != '\n')
                EMIT('\r');
            pending_cr = in[i] == '\r';
            if (!pending_cr)
                EMIT(in[i]);
        }
    }
    if (ferror(f))
        return -1;
    if (pending_cr)
        EMIT('\r');
    if (any && last != '\n')
        EMIT('\n');
#undef EMIT
    if (used > 0)
        return sink->body(sink->ctx, out, used);
    return 0;
}

int feed_message(FILE *f, const struct feed_sink *sink)
{
    struct field fl = {NULL, 0, 0};
    char *line = NULL;
    size_t cap = 0;
    ssize_t got;
    int rc = 0, body_from_line = 0;
    size_t n = 0;
    while ((got = getline(&line, &cap, f)) >= 0) {
        n = lf_line(line, (size_t)got);
        if (n == 1) /* the blank line: end of the header */
            break;
        if ((line[0] == ' ' || line[0] == '\t') && fl.len > 0) {
            if (field_add(&fl, line, n) != 0) {
                rc = -1;
                goto out;
            }
            continue;
        }
        if ((rc = field_flush(&fl, sink)) != 0)
            goto out;
        if (!is_field_start(line, n)) {
            body_from_line = 1; /* not a header line: the body starts here */
            break;
        }
        if (field_add(&fl, line, n) != 0) {
            rc = -1;
            goto out;
        }
    }
    if (got < 0 && ferror(f)) {
        rc = -1;
        goto out;
    }
    if ((rc = field_flush(&fl, sink)) != 0)
        goto out;
    if ((rc = sink->end_headers(sink->ctx)) != 0)
        goto out;
    rc = feed_body(f, sink, body_from_line ? line : NULL, body_from_line ? n : 0);
out:
    free(line);
    free(fl.text);
    return rc;
}
