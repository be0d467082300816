/*
 * clock_offset.so: moves the wall clock of the program it is preloaded into by CLOCK_OFFSET
 * seconds (a signed integer), for `make test-future`. libfaketime does the same for every other
 * program of that run; rspamd cannot take libfaketime, because its bundled jemalloc reads the
 * clock while libfaketime sets itself up, and that setup allocates (libfaketime issue #130:
 * recursion, then a deadlock). This one never allocates and never calls dlsym: it asks the
 * kernel directly.
 */
#define _GNU_SOURCE
#include <stdlib.h>
#include <sys/syscall.h>
#include <sys/time.h>
#include <time.h>
#include <unistd.h>

static long offset_seconds(void)
{
    static long offset = -1;
    static int known;
    if (!known) {
        const char *v = getenv("CLOCK_OFFSET");
        offset = v != NULL ? strtol(v, NULL, 10) : 0;
        known = 1;
    }
    return offset;
}

static int wall_clock(clockid_t id)
{
    return id == CLOCK_REALTIME || id == CLOCK_REALTIME_COARSE || id == CLOCK_TAI;
}

int clock_gettime(clockid_t id, struct timespec *ts)
{
    int rc = (int)syscall(SYS_clock_gettime, id, ts);
    if (rc == 0 && wall_clock(id))
        ts->tv_sec += offset_seconds();
    return rc;
}

int gettimeofday(struct timeval *restrict tv, void *restrict tz)
{
    struct timespec ts;
    if (clock_gettime(CLOCK_REALTIME, &ts) != 0)
        return -1;
    tv->tv_sec = ts.tv_sec;
    tv->tv_usec = ts.tv_nsec / 1000;
    (void)tz;
    return 0;
}

time_t time(time_t *out)
{
    struct timespec ts;
    if (clock_gettime(CLOCK_REALTIME, &ts) != 0)
        return (time_t)-1;
    if (out != NULL)
        *out = ts.tv_sec;
    return ts.tv_sec;
}
