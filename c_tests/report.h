/*
 * report.h: how the C tests c_tests/abuse.c and c_tests/guard.c report: one line per case on
 * stderr, "ok   NAME" or "FAIL NAME: reason", counted in `cases` and `failures` for the summary
 * line tests/abi_abuse.rs reads (", 0 failed").
 */
#ifndef REPORT_H
#define REPORT_H

#include <stdarg.h>
#include <stdio.h>

static int cases, failures;

/* Counts a case; says "ok" when `ok`, else FAIL with the reason (printf's `fmt` and the rest). */
static void report(int ok, const char *name, const char *fmt, ...)
{
    cases++;
    if (ok) {
        fprintf(stderr, "ok   %s\n", name);
        return;
    }
    failures++;
    fprintf(stderr, "FAIL %s: ", name);
    va_list ap;
    va_start(ap, fmt);
    vfprintf(stderr, fmt, ap);
    va_end(ap);
    fputc('\n', stderr);
}

#endif
