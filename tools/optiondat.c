/* See optiondat.h: option.dat's spam-filter slots. */
#define _GNU_SOURCE
#include "optiondat.h"

#include <ctype.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

/* The text between `s` and `e` without surrounding blanks, in place. */
static char *trim(char *s, char *e)
{
    while (s < e && isspace((unsigned char)*s))
        s++;
    while (e > s && isspace((unsigned char)e[-1]))
        e--;
    *e = '\0';
    return s;
}

/* "spamfilter3_library" -> slot 3, key "library"; "spamfilter_library" -> slot 1. Returns the
 * key, or NULL when the name is not a spam-filter option at all; *slot is -1 when the number is
 * there but not a slot number (0, 9, 123 ...). */
static const char *split_name(const char *name, int *slot)
{
    static const char prefix[] = "spamfilter";
    size_t n = sizeof prefix - 1;
    if (strncasecmp(name, prefix, n) != 0)
        return NULL;
    const char *p = name + n;
    if (*p == '_') {
        *slot = 1;
        return p + 1;
    }
    if (!isdigit((unsigned char)*p))
        return NULL;
    long v = 0;
    while (isdigit((unsigned char)*p) && v < 1000)
        v = v * 10 + (*p++ - '0');
    if (*p != '_')
        return NULL;
    *slot = (v >= 1 && v <= MS_SLOTS) ? (int)v : -1;
    return p + 1;
}

/* Stores `value` in *field; a second setting of the same option is an error, not a silent
 * override: two lines that disagree are a mistake the administrator should see. */
static int set_text(char **field, const char *value, const char *where, const char *name,
                    char *err, size_t errlen)
{
    if (*field != NULL) {
        snprintf(err, errlen, "%s: %s: set twice", where, name);
        return -1;
    }
    *field = strdup(value);
    if (*field == NULL) {
        snprintf(err, errlen, "%s: %s: out of memory", where, name);
        return -1;
    }
    return 0;
}

static int take(struct ms_slot *s, const char *key, const char *name, const char *value,
                const char *where, char *err, size_t errlen)
{
    if (strcasecmp(key, "library") == 0) {
        if (*value == '\0') {
            snprintf(err, errlen, "%s: %s: empty: give the library's full path", where, name);
            return -1;
        }
        return set_text(&s->library, value, where, name, err, errlen);
    }
    if (strcasecmp(key, "config_file") == 0)
        return set_text(&s->config_file, value, where, name, err, errlen);
    if (strcasecmp(key, "null_action") == 0)
        return set_text(&s->null_action, value, where, name, err, errlen);
    if (strcasecmp(key, "string_action") == 0)
        return set_text(&s->string_action, value, where, name, err, errlen);
    if (strcasecmp(key, "optional") == 0) {
        if (s->optional_set) {
            snprintf(err, errlen, "%s: %s: set twice", where, name);
            return -1;
        }
        if (strcmp(value, "0") != 0 && strcmp(value, "1") != 0) {
            snprintf(err, errlen, "%s: %s: \"%s\" is not 0 or 1", where, name, value);
            return -1;
        }
        s->optional = value[0] == '1';
        s->optional_set = 1;
        return 0;
    }
    fprintf(stderr, "note: %s: %s is not used by this harness (ignored)\n", where, name);
    return 0;
}

static int parse_line(char *line, const char *where, struct ms_options *opts, char *err,
                      size_t errlen)
{
    char *text = trim(line, line + strlen(line));
    /* option.dat comments start with '!'; '#' is accepted too. */
    if (*text == '\0' || *text == '!' || *text == '#')
        return 0;
    char *eq = strchr(text, '=');
    if (eq == NULL) {
        snprintf(err, errlen, "%s: \"%s\": not NAME=VALUE", where, text);
        return -1;
    }
    char *value = trim(eq + 1, eq + 1 + strlen(eq + 1));
    char *name = trim(text, eq);
    int slot = 0;
    const char *key = split_name(name, &slot);
    if (key == NULL)
        return 0; /* another MTA option */
    if (slot < 0) {
        snprintf(err, errlen, "%s: %s: the slot number must be 1 to %d", where, name, MS_SLOTS);
        return -1;
    }
    opts->slot[slot].used = 1;
    return take(&opts->slot[slot], key, name, value, where, err, errlen);
}

int ms_options_read(const char *path, struct ms_options *opts, char *err, size_t errlen)
{
    memset(opts, 0, sizeof *opts);
    FILE *f = fopen(path, "r");
    if (f == NULL) {
        snprintf(err, errlen, "%s: cannot open the MTA option file: %s", path, strerror(errno));
        return -1;
    }
    char *line = NULL;
    size_t cap = 0;
    long lineno = 0;
    int rc = 0;
    while (rc == 0 && getline(&line, &cap, f) >= 0) {
        char where[4096 + 32];
        snprintf(where, sizeof where, "%s:%ld", path, ++lineno);
        rc = parse_line(line, where, opts, err, errlen);
    }
    if (rc == 0 && ferror(f)) {
        snprintf(err, errlen, "%s: cannot read the MTA option file", path);
        rc = -1;
    }
    free(line);
    fclose(f);
    if (rc != 0)
        ms_options_free(opts);
    return rc;
}

void ms_options_free(struct ms_options *opts)
{
    for (int n = 1; n <= MS_SLOTS; n++) {
        struct ms_slot *s = &opts->slot[n];
        free(s->library);
        free(s->config_file);
        free(s->null_action);
        free(s->string_action);
    }
    memset(opts, 0, sizeof *opts);
}
