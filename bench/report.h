/*
 * report: the tables the bench prints and the targets it judges. A row is one case (a Milter,
 * a message size, a number of threads) with both clients' figures side by side; the targets
 * (issue 8) are checked over every row and the 100 MiB section and printed last, each HOLDS or
 * MISSED. docs/bench.md explains every column.
 */
#ifndef BENCH_REPORT_H
#define BENCH_REPORT_H

/* One case: index 0 the library (or the left side), 1 the ideal client. */
struct row {
    const char *milter;
    const char *size;
    int threads;
    double mps[2], p50[2], p99[2];
    double ratio; /* median of the rounds' library/ideal rate ratios */
    double rt[2], writes[2], bytes[2], connects[2], sockopts[2], other[2], cpu_us[2];
    int failures[2];
};

#define MAX_ROWS 128
extern struct row rows[MAX_ROWS];
extern int nrows;
/* The next row to fill (dies past MAX_ROWS). */
struct row *new_row(void);

/* What the targets of the ratio, the round trips and the writes have seen so far. */
struct targets_seen {
    double worst_ratio;
    char worst_where[96];
    int rt_ok, wr_ok;
};
void judge(struct targets_seen *v, const struct row *r, double rtmin);

void print_row_header(void);
/* One row; rtmin is the fewest round trips the negotiation allows (the `min` column). */
void print_row(const struct row *r, double rtmin);
/* Socket calls per message (1 thread, 2K) of the rows from `first` on: where the two clients
 * differ beside round trips and writes. */
void print_other_calls(int first);

/* What the 100 MiB section found (stream.c), for the targets. */
struct stream_summary {
    int mem_ok, stream_ok;
    double ratio[2];       /* library / plain copy: noop-reply, noop-noreply */
    double ideal_ratio[2]; /* ideal client / plain copy */
    double reply_vs_ideal; /* library / ideal client against noop-reply */
    unsigned long long reply_rtt; /* round trips of 100 MiB against noop-reply */
    int bmi_ran, bmi_mem_ok;      /* the BMI face streamed 100 MiB; under 2 MB */
    long bmi_growth_kb;
};
/* The targets, each HOLDS or MISSED. */
void print_targets(const struct targets_seen *v, const struct stream_summary *s, int all_ok);

#endif
