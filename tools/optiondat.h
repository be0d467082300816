/*
 * The MTA's option file (Messaging Server's option.dat) as far as spam-filter slots go:
 * spamfilterN_library, spamfilterN_config_file, spamfilterN_null_action,
 * spamfilterN_string_action and spamfilterN_optional for N = 1..8 (no number means 1, as the
 * MTA reads it). Every other line is an MTA option this harness has no use for and is skipped.
 */
#ifndef SPAMFILTER_OPTIONDAT_H
#define SPAMFILTER_OPTIONDAT_H

#include <stddef.h>

#define MS_SLOTS 8

struct ms_slot {
    int used;                  /* some spamfilterN_ option names this slot */
    char *library;             /* NULL: the slot is off (the option commented out) */
    char *config_file;
    char *null_action;         /* NULL: not set */
    char *string_action;       /* NULL: not set */
    int optional;              /* spamfilterN_optional: 0 (default) or 1 */
    int optional_set;
};

struct ms_options {
    struct ms_slot slot[MS_SLOTS + 1]; /* index 1..8; 0 unused */
};

/* Reads `path`. On failure writes "<path>:<line>: <option>: <problem>" (or why the file cannot be
 * read) into `err` and returns -1; what was read so far is freed. Options of a spam-filter slot
 * this harness does not implement (spamfilterN_verdict_M ...) are named on stderr, once each. */
int ms_options_read(const char *path, struct ms_options *opts, char *err, size_t errlen);
void ms_options_free(struct ms_options *opts);

#endif
