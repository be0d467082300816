/*
 * The MTA's side of the plug-in, shared by the C programs (spamfilter-load, spamfilter-check):
 * loading the library as an MTA does (dlopen/dlsym, never linked at build time), the envelope
 * options every program takes, and names for the library's enums.
 */
#ifndef SPAMFILTER_MTA_H
#define SPAMFILTER_MTA_H

#include "milter_spamfilter.h"

#include <stddef.h>
#include <stdio.h>

typedef SpamfilterStatus (*sf_init_fn)(const char *, SpamfilterHandle **);
typedef SpamfilterStatus (*sf_filter_fn)(const SpamfilterHandle *, const SpamfilterMessage *,
                                         SpamfilterResult *);
typedef void (*sf_result_free_fn)(SpamfilterResult *);
typedef void (*sf_close_fn)(SpamfilterHandle *);
typedef const char *(*sf_string_fn)(void);
typedef const char *(*sf_status_text_fn)(SpamfilterStatus);
typedef char *(*sf_describe_fn)(const SpamfilterHandle *);
typedef void (*sf_string_free_fn)(char *);

/* The entry points; describe and string_free are NULL when the library predates them. */
struct sf_api {
    void *lib;
    sf_init_fn init;
    sf_filter_fn filter;
    sf_result_free_fn result_free;
    sf_close_fn close;
    sf_string_fn version;
    sf_string_fn last_error;
    sf_status_text_fn status_text;
    sf_describe_fn describe;
    sf_string_free_fn string_free;
};

/* Loads the library at `path`; on failure says why on stderr (prefixed with `prog`). */
int sf_load(const char *prog, const char *path, struct sf_api *api);

const char *sf_status_name(SpamfilterStatus s);
const char *sf_kind_name(SpamfilterKind k);
const char *sf_disposition_name(SpamfilterDisposition d);

/* A whole file in memory (malloc'd; NULL and a message on stderr on failure). */
unsigned char *sf_read_file(const char *prog, const char *path, size_t *len);

#define SF_MAX_LIST 256

/* The envelope, built from command-line options. */
struct sf_envelope {
    const char *rcpt_addr[SF_MAX_LIST];
    const char *rcpt_args[SF_MAX_LIST][SF_MAX_LIST];
    size_t rcpt_argc[SF_MAX_LIST];
    const char *mail_args[SF_MAX_LIST];
    SpamfilterMacro macros[SF_MAX_LIST];
    SpamfilterRecipient rcpts[SF_MAX_LIST];
    size_t nrcpt, nmail, nmacro;
    const char *from, *client_addr, *client_name, *helo, *hostname, *queue_id;
    const char *auth_type, *auth_user;
    int client_port;
    SpamfilterMessage msg;
};

void sf_envelope_init(struct sf_envelope *e);
/* Takes option `opt` with its value `val`: 1 taken, 0 not an envelope option, -1 bad value
 * (said on stderr). */
int sf_envelope_option(const char *prog, struct sf_envelope *e, const char *opt,
                       const char *val);
/* Fills e->msg from the options (the message content is the caller's to set). */
void sf_envelope_finish(struct sf_envelope *e);
void sf_envelope_free(struct sf_envelope *e);
void sf_envelope_usage(FILE *out);

/* A program's own options, read by sf_options beside the envelope's: a flag (`value` NULL) sets
 * *flag to 1, an option with a value (`flag` NULL) sets *value. A table ends with a NULL name. */
struct sf_option {
    const char *name;
    int *flag;
    const char **value;
};

/* Reads the options at the front of argv (from argv[1], up to the first argument that does not
 * start with "--"): the envelope's into `e`, the program's own from `own`. Returns the index of
 * the first argument after them, or -1 after saying on stderr what is wrong (an unknown option,
 * a missing value, a bad envelope value). */
int sf_options(const char *prog, int argc, char **argv, struct sf_envelope *e,
               const struct sf_option *own);

/* The message through the read callback, from memory. */
struct sf_stream {
    const unsigned char *data;
    size_t len, pos;
};
ptrdiff_t sf_stream_read(void *ctx, uint8_t *buf, size_t len);

/* Gives `m` its content, `data`: in memory, or with `stream` through the read callback from `s`
 * (which must outlive the call that reads it). */
void sf_message_content(SpamfilterMessage *m, struct sf_stream *s, const unsigned char *data,
                        size_t len, int stream);

#endif
