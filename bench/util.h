/*
 * util: what every part of the bench uses: dying with a message (the servers are stopped on the
 * way out, see supervise.h), clocks, memory, /proc/self/status, and small statistics.
 */
#ifndef BENCH_UTIL_H
#define BENCH_UTIL_H

#include <stddef.h>
#include <stdint.h>

#define PROG "bench"

/* Says what went wrong on stderr and exits 1 (atexit stops the servers). */
void die(const char *fmt, ...) __attribute__((noreturn, format(printf, 1, 2)));
void *xmalloc(size_t n);

uint64_t now_ns(void);        /* CLOCK_MONOTONIC */
uint64_t thread_cpu_ns(void); /* this thread's CPU time, user plus system */

/* A field of /proc/self/status in kB ("VmHWM:", "VmRSS:"), or -1. */
long status_kb(const char *field);
/* Resets VmHWM to the current RSS; 0 if the kernel allows it. */
int reset_hwm(void);

/* All of p to a socket (MSG_NOSIGNAL); 0, or -1 with errno. */
int write_all_fd(int fd, const unsigned char *p, size_t n);
void write_file(const char *path, const char *text);

int cmp_double(const void *a, const void *b);
int cmp_u64(const void *a, const void *b);
/* The median of v (sorted in place). */
double median(double *v, int n);
/* The p-th percentile of n sorted latencies in ns, in ms. */
double pct_ms(uint64_t *lat, size_t n, double p);

#endif
