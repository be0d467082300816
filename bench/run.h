/*
 * run: how a case is measured. Each case has client threads of its own, started once and
 * handed block after block; blocks of the library's messages and of the ideal client's
 * alternate (L I I L) in many short rounds, and the ratio is the median of the rounds' ratios,
 * so that the machine's other load hits both clients alike. The CONNECTION_REUSE table runs
 * both clients on the library's kept connections (see fresh_connections in run.c).
 */
#ifndef BENCH_RUN_H
#define BENCH_RUN_H

#include "bmi.h"
#include "ideal.h"
#include "interpose.h"
#include "message.h"
#include "mta.h"
#include "report.h"

#include <stddef.h>
#include <stdint.h>

/* The library's entry points (dlopen'ed, as an MTA loads it). */
extern struct sf_api api;
/* --aa: the ideal client on both sides, to show the bench's own noise (the ratios' spread). */
extern int aa;
/* --against LIBRARY_B: another build's BMI face in the ideal client's place (the BMI cases
 * only), so that two builds are compared in the same process and rounds: the ratio is then
 * LIBRARY's rate over LIBRARY_B's. NULL otherwise. */
extern const struct bmi_api *against;

enum { CLIENT_LIB, CLIENT_IDEAL };

/* A Milter the cases run against, and the library's handle for it. */
struct target {
    const char *name; /* noop-reply, noop-noreply, opendkim */
    int port;
    int reuse;        /* CONNECTION_REUSE of this target's option file (0: none) */
    const char *base; /* the Milter's name for its option file (reuse: to open it again) */
    SpamfilterHandle *h;
    int expect_edits; /* opendkim signs: the verdict must add a header */
    struct neg neg;   /* what the Milter negotiates (the ideal client on borrowed connections) */
    const char *opt;  /* its option file (the BMI face reads it for every message) */
    /* The library's BMI face instead of spamfilter_filter (NULL: the native one), and the
     * envelope the library sends on that face, for the ideal client (NULL: native_env). */
    const struct bmi_api *bmi;
    const struct ideal_env *env;
};

/* One client's messages in a case, summed over its blocks. */
struct side {
    uint64_t wall_ns;
    uint64_t msgs;
    uint64_t *lat;
    size_t nlat;
    struct iostat io;
    uint64_t cpu_ns;
    int failures;
    char err[256];
};

/* The rounds of a case: blocks L I I L, each round's ratio one sample (see run.c). */
#define ROUNDS 25
/* A message on a kept connection is about twice as fast: the CONNECTION_REUSE table runs four
 * times the messages of the first, */
#define REUSE_COUNT_FACTOR 4
/* in three times the rounds (shorter blocks), taken in pairs of opposite order (see
 * fresh_connections): the median of 38 pairs. */
#define REUSE_ROUNDS 76

void load_library(const char *path);
/* A handle on an option file for the Milter at port, written into the work directory; the
 * file's path in *path if given (it lives as long as the run). */
SpamfilterHandle *open_handle(const char *name, int port, int reuse, const char **path);
/* One library message; 0, or -1 and why in err. */
int lib_message(const struct target *t, const SpamfilterMessage *msg, char *err, size_t errlen);
/* Dies unless one library message's socket calls were counted (-rdynamic). */
void check_interposition(struct target *t, const struct msgdef *m);

/* A single block on threads of its own; adds to *s (whose lat has room for count). */
void run_alone(struct target *t, const struct msgdef *m, int client, int threads, int count,
               struct side *s);
/* One case of a table: `count` messages per client (at least 4 per thread), run, printed;
 * *all_ok cleared on a failed conversation. */
struct row *measure(struct target *t, const struct msgdef *m, int threads, double count,
                    double rtmin, int *all_ok);

#endif
