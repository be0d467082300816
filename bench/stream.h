/*
 * stream: the 100 MiB message, generated as it is read, through the library's read callback
 * and through the ideal client to each no-op Milter, beside a plain loopback socket copy of the
 * same bytes; the library's peak memory growth (VmHWM after clear_refs).
 */
#ifndef BENCH_STREAM_H
#define BENCH_STREAM_H

#include "report.h"
#include "run.h"

/* BIG_ROUNDS rounds against targets[0] (noop-reply) and targets[1] (noop-noreply), printed;
 * what the targets need in *out. */
void stream_section(const struct target targets[2], struct stream_summary *out);

#endif
