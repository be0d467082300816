/* See report.h. */
#include "report.h"
#include "util.h"

#include <math.h>
#include <stdio.h>
#include <string.h>

struct row rows[MAX_ROWS];
int nrows;

struct row *new_row(void)
{
    if (nrows == MAX_ROWS)
        die("more than %d rows", MAX_ROWS);
    struct row *r = &rows[nrows++];
    memset(r, 0, sizeof *r);
    return r;
}

void judge(struct targets_seen *v, const struct row *r, double rtmin)
{
    if (r->ratio < v->worst_ratio) {
        v->worst_ratio = r->ratio;
        snprintf(v->worst_where, sizeof v->worst_where, "%s %s %d threads", r->milter, r->size,
                 r->threads);
    }
    if (fabs(r->rt[0] - rtmin) > 0.01)
        v->rt_ok = 0;
    if (r->writes[0] > r->writes[1] + 0.01)
        v->wr_ok = 0;
}

void print_other_calls(int first)
{
    printf("\nother socket calls per message, 1 thread, 2K (library / ideal): connect, setsockopt, "
           "reads that return no data (MSG_PEEK probes, EAGAIN)\n");
    for (int i = first; i < nrows; i++) {
        struct row *r = &rows[i];
        if (r->threads == 1 && strcmp(r->size, "2K") == 0)
            printf("  %-21s connect %.2f / %.2f   setsockopt %.2f / %.2f   no-data reads "
                   "%.2f / %.2f\n",
                   r->milter, r->connects[0], r->connects[1], r->sockopts[0], r->sockopts[1],
                   r->other[0], r->other[1]);
    }
}

void print_row_header(void)
{
    printf("%-21s %4s %3s | %7s %6s %6s | %7s %6s %6s | %5s | %5s %5s %3s | %5s %5s | %6s %6s"
           " | %5s %5s\n",
           "milter", "size", "thr", "lib/s", "p50 ms", "p99 ms", "ideal/s", "p50 ms", "p99 ms",
           "ratio", "RT", "RT id", "min", "wr", "wr id", "B", "B id", "cpu", "cpu id");
}

void print_row(const struct row *r, double rtmin)
{
    printf("%-21s %4s %3d | %7.0f %6.2f %6.2f | %7.0f %6.2f %6.2f | %5.2f | %5.2f %5.2f %3.0f |"
           " %5.2f %5.2f | %6.0f %6.0f | %5.0f %5.0f%s\n",
           r->milter, r->size, r->threads, r->mps[0], r->p50[0], r->p99[0], r->mps[1], r->p50[1],
           r->p99[1], r->ratio, r->rt[0], r->rt[1], rtmin, r->writes[0],
           r->writes[1], r->bytes[0], r->bytes[1], r->cpu_us[0], r->cpu_us[1],
           (r->failures[0] || r->failures[1]) ? "  FAILURES" : "");
    fflush(stdout);
}

void print_targets(const struct targets_seen *v, const struct stream_summary *s, int all_ok)
{
    printf("\ntargets:\n");
    printf("  %s throughput ratio >= 0.95 in every case of every table (worst %.3f: %s)\n",
           v->worst_ratio >= 0.95 ? "HOLDS " : "MISSED", v->worst_ratio, v->worst_where);
    printf("  %s library round trips = minimum the negotiation allows, in every case\n",
           v->rt_ok ? "HOLDS " : "MISSED");
    printf("  %s no-reply packets coalesced: library writes per message <= ideal client's\n",
           v->wr_ok ? "HOLDS " : "MISSED");
    printf("  %s 100 MiB streamed with peak memory growth < 2 MB\n",
           s->mem_ok ? "HOLDS " : "MISSED");
    if (s->bmi_ran)
        printf("  %s 100 MiB pushed through the BMI face 4 KB a call, peak memory growth < 2 MB "
               "(%ld kB)\n",
               s->bmi_mem_ok ? "HOLDS " : "MISSED", s->bmi_growth_kb);
    printf("  %s 100 MiB streamed at >= 80%% of a plain loopback copy, against noop-noreply "
           "(%.2f)\n         (against noop-reply, paced by %llu round trips: library %.2f of the "
           "copy, ideal client %.2f, library/ideal %.2f)\n",
           s->stream_ok ? "HOLDS " : "MISSED", s->ratio[1], s->reply_rtt, s->ratio[0],
           s->ideal_ratio[0], s->reply_vs_ideal);
    printf("  %s no failed conversation\n", all_ok ? "HOLDS " : "MISSED");
}
