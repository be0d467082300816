/*
 * bmi: the library's other face, the Brightmail client API (include/bmi_api.h), driven as Exim
 * drives it (Exim's bmi_spam.c; /work/shared/spec/bmi-interface.md §2 and §4): per message
 * bmiInitSystem on the option file, bmiInitMessage, the client's address, the sender, each
 * recipient, each header field in a call of its own, the body in chunks of 4 KB, bmiEndMessage,
 * then each verdict made a string (bmiCreateStrFromVerdict, bmiFreeStr) as Exim saves it. The
 * library is the same .so, its BMI names looked up with dlsym.
 */
#ifndef BENCH_BMI_H
#define BENCH_BMI_H

#include "bmi_api.h"
#include "bmi_load.h"
#include "message.h"

#include <stddef.h>
#include <stdint.h>
#include <stdio.h>

/* Exim's body chunk: it reads its spool file 4096 bytes at a time. */
#define BMI_CHUNK 4096

/* The BMI names of the library at `path` (loaded already by the bench: the same copy), by the
 * MTA-side loader (tools/bmi_load.c), and spamfilter_last_error for the bench's error texts; 0,
 * or -1 with why in err (a library without the BMI face). */
int bench_bmi_load(const char *path, struct bmi_api *api, char *err, size_t errlen);

/* The message source of one BMI message: the LF form of a message (message.h), or its header
 * fields and the generator for an LF body of gen->total bytes (gen_read_lf_body: the 100 MiB
 * message). */
struct bmi_source {
    const struct msgdef *msg;
    struct gen *gen;
};

/* One message through the BMI calls, on the option file `opt`. Its verdict must be the
 * default (deliver normally), or with expect_edits a string holding a DKIM-Signature. 0, or -1
 * and why in err (the call, the error's location and type, and the library's last error). */
int bmi_message(const struct bmi_api *api, const char *opt, const struct bmi_source *src,
                int expect_edits, char *err, size_t errlen);

/* `--callgrind --ticks`: time each BMI call of bmi_message from now on, outside system calls
 * (interpose.h); off in the tables, where it costs a branch a call. */
void bmi_time_calls(void);

/* The BMI calls timed so far, each's ticks a message outside system calls, to `out`. */
void bmi_call_report(FILE *out, uint64_t messages);

#endif
