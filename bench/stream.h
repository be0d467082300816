/*
 * stream: the 100 MiB message, generated as it is read, through the library's read callback
 * and through the ideal client to each no-op Milter, beside a plain loopback socket copy of the
 * same bytes; the library's peak memory growth (VmHWM after clear_refs). And the same body
 * pushed through the BMI face, 4 KB a call.
 */
#ifndef BENCH_STREAM_H
#define BENCH_STREAM_H

#include "report.h"
#include "run.h"

/* BIG_ROUNDS rounds against targets[0] (noop-reply) and targets[1] (noop-noreply), and through
 * the BMI face of `bmi` if given (noop-noreply: header fields one per call, the body in 4 KB
 * chunks), printed; what the targets need in *out. */
void stream_section(const struct target targets[2], const struct target *bmi,
                    struct stream_summary *out);

#endif
