/*
 * interpose: the socket calls counted, not assumed. interpose.c defines send, recv, write, read,
 * sendmsg, recvmsg, sendto, recvfrom, writev, readv, socket, connect, setsockopt and close
 * itself; the bench is linked with -rdynamic, so the dlopen'ed library's calls land there too.
 * Each wrapper counts and calls the real function (dlsym(RTLD_NEXT)). Counting is per thread,
 * only while the thread's mode is set, and only on TCP sockets created meanwhile.
 */
#ifndef BENCH_INTERPOSE_H
#define BENCH_INTERPOSE_H

#include <stdint.h>

/* Which client a thread is running, if any: what it does on its sockets counts. */
enum { M_NONE, M_LIB, M_IDEAL, M_COPY };

/* What one thread did on its sockets while its mode was set. */
struct iostat {
    uint64_t writes;  /* write calls that wrote data */
    uint64_t wbytes;  /* bytes written */
    uint64_t reads;   /* read calls that returned data */
    uint64_t rbytes;  /* bytes read */
    uint64_t rtt;     /* reads returning data on a socket written to since its last such read */
    uint64_t other;   /* read calls without data (EAGAIN, EOF) and MSG_PEEK reads */
    uint64_t connects;
    uint64_t sockopts;
};

extern __thread int t_mode;
extern __thread struct iostat t_io;
/* The connection this thread last wrote a message to (the reuse table's ideal client runs on
 * the connection the library's thread used: see fresh_connections in run.c). */
extern __thread int t_lastfd;

/* Time-stamp ticks this thread spent inside the socket calls above (each of them, counted or
 * not): a client's time less this is its time outside system calls (`--callgrind`), a finer
 * measure of its own cost than the kernel's tick-sampled user time. */
extern __thread uint64_t t_sys_ticks;
/* Whether the socket calls are timed into t_sys_ticks at all (`--callgrind --ticks`). */
extern int ticking;

void io_add(struct iostat *to, const struct iostat *from);

/* A tick: the time-stamp counter's on x86 (read in a few cycles, no system call), else a
 * nanosecond of CLOCK_MONOTONIC. */
#if defined(__x86_64__) || defined(__i386__)
#include <x86intrin.h>
static inline uint64_t ticks_now(void)
{
    return __rdtsc();
}
#define TICKS_UNIT "TSC ticks"
#else
#include <time.h>
static inline uint64_t ticks_now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}
#define TICKS_UNIT "ns"
#endif

#endif
