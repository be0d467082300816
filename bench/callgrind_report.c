/* See callgrind.h: the instructions per message by object, from a raw callgrind output file. */
#define _GNU_SOURCE
#include "callgrind.h"
#include "util.h"

#include <errno.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* --callgrind-report FILE MESSAGES OBJECT: from a callgrind output file, the instructions each
 * object executed itself (exclusive: cost lines that follow a calls= line are a callee's
 * inclusive cost and are skipped), and the object's top functions, per message. Read from the
 * raw file because callgrind_annotate prints lines of inlined code (core::iter, ...) without
 * their object, so summing its "[object]" lines undercounts. */
struct names {
    char **v;
    size_t n;
};

static void names_set(struct names *t, size_t id, const char *name)
{
    if (id >= t->n) {
        size_t n = t->n ? t->n : 1024;
        while (n <= id)
            n *= 2;
        char **v = realloc(t->v, n * sizeof *v);
        if (v == NULL)
            die("out of memory");
        memset(v + t->n, 0, (n - t->n) * sizeof *v);
        t->v = v;
        t->n = n;
    }
    if (t->v[id] == NULL)
        t->v[id] = strdup(name);
}

/* "(id) name" or "(id)" or "name": returns the id (defining it); -1 for an uncompressed name. */
static long name_ref(struct names *t, char *spec)
{
    spec[strcspn(spec, "\n")] = '\0';
    if (spec[0] != '(')
        return -1;
    char *end;
    long id = strtol(spec + 1, &end, 10);
    if (*end != ')' || id < 0)
        return -1;
    if (end[1] == ' ')
        names_set(t, (size_t)id, end + 2);
    return id;
}

struct fncost {
    long fn;
    uint64_t cost;
};

/* Adds c to (*v)[i], growing the zero-filled array (first size `first`, then doubling). */
static void add_cost(uint64_t **v, size_t *cap, size_t i, uint64_t c, size_t first)
{
    if (i >= *cap) {
        size_t n = *cap ? *cap * 2 : first;
        while (n <= i)
            n *= 2;
        uint64_t *grown = realloc(*v, n * sizeof **v);
        if (grown == NULL)
            die("out of memory");
        memset(grown + *cap, 0, (n - *cap) * sizeof *grown);
        *v = grown;
        *cap = n;
    }
    (*v)[i] += c;
}

static int cmp_fncost(const void *a, const void *b)
{
    uint64_t x = ((const struct fncost *)a)->cost, y = ((const struct fncost *)b)->cost;
    return x > y ? -1 : x < y;
}

int callgrind_report(const char *file, long msgs, const char *object)
{
    FILE *f = fopen(file, "r");
    if (f == NULL)
        die("cannot open %s: %s", file, strerror(errno));
    struct names obs = {0}, fns = {0};
    uint64_t *ob_cost = NULL, *fn_cost = NULL; /* by ob id; by fn id within the object */
    size_t ob_cap = 0, fn_cap = 0;
    long cur_ob = -1, cur_fn = -1;
    int npos = 1, skip_next = 0;
    uint64_t total = 0, summary = 0;
    char *line = NULL;
    size_t cap = 0;
    while (getline(&line, &cap, f) > 0) {
        if (strncmp(line, "positions:", 10) == 0) {
            npos = 0;
            for (char *p = strtok(line + 10, " \n"); p; p = strtok(NULL, " \n"))
                npos++;
        } else if (strncmp(line, "events:", 7) == 0) {
            if (strncmp(line + 7, " Ir", 3) != 0)
                die("%s: expected Ir as the first event", file);
        } else if (strncmp(line, "summary:", 8) == 0 || strncmp(line, "totals:", 7) == 0) {
            summary = strtoull(strchr(line, ':') + 1, NULL, 10);
        } else if (strncmp(line, "ob=", 3) == 0) {
            cur_ob = name_ref(&obs, line + 3);
        } else if (strncmp(line, "cob=", 4) == 0) {
            name_ref(&obs, line + 4);
        } else if (strncmp(line, "fn=", 3) == 0) {
            cur_fn = name_ref(&fns, line + 3);
        } else if (strncmp(line, "cfn=", 4) == 0) {
            name_ref(&fns, line + 4);
        } else if (strncmp(line, "calls=", 6) == 0) {
            skip_next = 1;
        } else if ((line[0] >= '0' && line[0] <= '9') || line[0] == '+' || line[0] == '-' ||
                   line[0] == '*') {
            if (skip_next) {
                skip_next = 0;
                continue;
            }
            char *p = line;
            for (int i = 0; i < npos && *p; i++) {
                p += strcspn(p, " \n");
                p += strspn(p, " ");
            }
            uint64_t c = strtoull(p, NULL, 10);
            total += c;
            if (cur_ob >= 0) {
                add_cost(&ob_cost, &ob_cap, (size_t)cur_ob, c, 64);
                const char *obname = (size_t)cur_ob < obs.n ? obs.v[cur_ob] : NULL;
                if (cur_fn >= 0 && obname != NULL && strstr(obname, object) != NULL)
                    add_cost(&fn_cost, &fn_cap, (size_t)cur_fn, c, 1024);
            }
        } else {
            skip_next = 0;
        }
    }
    free(line);
    fclose(f);
    if (msgs <= 0)
        msgs = 1;
    uint64_t lib = 0;
    printf("instructions per message by object (exclusive):\n");
    for (size_t i = 0; i < ob_cap; i++) {
        if (ob_cost[i] == 0)
            continue;
        const char *name = i < obs.n && obs.v[i] ? obs.v[i] : "?";
        if (strstr(name, object) != NULL)
            lib += ob_cost[i];
        if (ob_cost[i] * 100 >= total)
            printf("  %10llu  %s\n", (unsigned long long)(ob_cost[i] / (uint64_t)msgs), name);
    }
    size_t nf = 0;
    struct fncost *top = xmalloc((fn_cap + 1) * sizeof *top);
    for (size_t i = 0; i < fn_cap; i++)
        if (fn_cost[i] > 0)
            top[nf++] = (struct fncost){(long)i, fn_cost[i]};
    qsort(top, nf, sizeof *top, cmp_fncost);
    printf("the library's top functions (own instructions per message, inlined code included):\n");
    for (size_t i = 0; i < nf && i < 12; i++) {
        const char *name = (size_t)top[i].fn < fns.n && fns.v[top[i].fn] ? fns.v[top[i].fn] : "?";
        printf("  %10llu  %.150s\n", (unsigned long long)(top[i].cost / (uint64_t)msgs), name);
    }
    printf("all user-space instructions per message in the measured loop: %llu%s\n",
           (unsigned long long)(total / (uint64_t)msgs),
           summary && summary != total ? " (WARNING: does not match the file's total)" : "");
    printf("library instructions per message: %llu\n", (unsigned long long)(lib / (uint64_t)msgs));
    free(top);
    return 0;
}
