/*
 * callgrind: `make callgrind`. callgrind.c runs N messages of one case under valgrind, counting
 * only inside callgrind_messages (--toggle-collect); callgrind_report.c reads the raw callgrind
 * output and sums each object's own instructions per message (callgrind_annotate prints inlined
 * code without its object, so summing its lines undercounts).
 */
#ifndef BENCH_CALLGRIND_H
#define BENCH_CALLGRIND_H

#include <stddef.h>

/* --callgrind N [--size BYTES] [--noreply | --opendkim] [--reuse] [--bmi] [--ideal] [--ticks]. */
struct callgrind_case {
    int n;
    size_t size;
    int noreply, dkim, reuse, bmi, ideal;
    /* The client's time outside system calls, from the time-stamp counter (interpose.h), and
     * with --bmi each BMI call's: not under valgrind, where it would be counted. */
    int ticks;
};
int callgrind_main(const struct callgrind_case *k, const char *lib, const char *noop);

/* --callgrind-report FILE MESSAGES OBJECT. */
int callgrind_report(const char *file, long msgs, const char *object);

#endif
