/*
 * bench: how fast the library filters mail, measured as an MTA uses it (dlopen, the C ABI, one
 * handle shared by all threads), next to the ideal client (ideal.c) run in the same process and
 * the same run. `make bench` runs it; docs/bench.md explains every column. This file is the
 * order of the run: arguments, the servers, the tables, the 100 MiB section, the targets.
 *
 *   bench [--quick] [--scale F] [--only TEXT] LIBRARY NOOP_MILTER   the whole benchmark
 *   bench --aa ...                 the same with the ideal client on both sides: the noise floor
 *   bench --against LIBRARY_B ...  the BMI table only, LIBRARY_B's BMI face in the ideal
 *                                  client's place: two builds compared in the same rounds
 *   bench --callgrind N [--size B] [--noreply | --opendkim] [--reuse] [--bmi] [--ideal]
 *         LIBRARY NOOP_MILTER
 *                                                        N messages only (make callgrind)
 *   bench --callgrind-report CALLGRIND_OUT MESSAGES OBJECT   instructions per message by object
 *
 * The exit status is 1 if any conversation failed; a missed target is reported, not an error.
 */
#define _GNU_SOURCE
#include "bmi.h"
#include "callgrind.h"
#include "report.h"
#include "run.h"
#include "stream.h"
#include "supervise.h"
#include "util.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

/* --only TEXT: run just the cases whose label ("noop-noreply 2K", "noop-reply reuse=16 100K",
 * "100MiB") contains TEXT; for a quick look at one case while working on it. */
static const char *only = NULL;

static int selected(const char *milter, const char *size)
{
    char label[128];
    snprintf(label, sizeof label, "%s %s", milter, size);
    if (against != NULL && strstr(label, " bmi ") == NULL)
        return 0; /* --against compares the BMI face only */
    return only == NULL || strstr(label, only) != NULL;
}

static void usage(void)
{
    fprintf(stderr, "usage: bench [--quick] [--scale F] [--only TEXT] [--aa | --against LIBRARY_B] "
                    "LIBRARY NOOP_MILTER\n"
                    "       bench --callgrind N [--size BYTES] [--noreply | --opendkim] [--reuse] "
                    "[--bmi] [--ideal] [--ticks] LIBRARY NOOP_MILTER\n"
                    "       bench --callgrind-report CALLGRIND_OUT MESSAGES OBJECT\n");
    exit(2);
}

/* What the run shares between its sections. */
struct bench {
    double scale;
    const char *libpath;
    struct target targets[3]; /* noop-reply, noop-noreply, opendkim-sign */
    struct bmi_api bmi;       /* the library's BMI face */
    int has_bmi;              /* ... if it has one */
    struct msgdef msgs[2];    /* 2K, 100K */
    struct targets_seen seen;
    int all_ok;
};

static const int thread_counts[3] = {1, 4, 16};
/* Messages per case and client (library and ideal each), by milter, size and threads, chosen
 * for about two minutes on 2 cores; opendkim signs, about 3 ms a message at 1 thread, hence its
 * smaller counts (still 6 messages or more per block: 2 per thread at 16 threads). */
static const int counts[3][2][3] = {
    {{3000, 5000, 5000}, {2000, 2400, 2400}}, /* noop-reply: 2K, 100K at 1, 4, 16 threads */
    {{5000, 6000, 6000}, {2400, 3000, 3000}}, /* noop-noreply */
    {{300, 600, 1600}, {300, 600, 1600}},     /* opendkim */
};

static void print_machine(const char *libpath)
{
    char cpu[128] = "unknown";
    FILE *f = fopen("/proc/cpuinfo", "r");
    if (f != NULL) {
        char line[256];
        while (fgets(line, sizeof line, f) != NULL)
            if (strncmp(line, "model name", 10) == 0) {
                char *c = strchr(line, ':');
                if (c != NULL) {
                    c += 2;
                    c[strcspn(c, "\n")] = '\0';
                    snprintf(cpu, sizeof cpu, "%s", c);
                }
                break;
            }
        fclose(f);
    }
    printf("bench: %s (%s); %ld CPUs, %s\n", api.version(), libpath, sysconf(_SC_NPROCESSORS_ONLN),
           cpu);
}

/* The Milters, a handle for each, and what each negotiates. */
static void start_targets(struct bench *b, const char *noop)
{
    int port_reply = free_port();
    start_noop(noop, "reply", port_reply);
    int port_noreply = free_port();
    start_noop(noop, "noreply", port_noreply);
    int port_dkim = start_opendkim();
    static const char *const opt_names[3] = {"noop-reply", "noop-noreply", "opendkim"};
    struct target init[3] = {
        {.name = "noop-reply", .port = port_reply},
        {.name = "noop-noreply", .port = port_noreply},
        {.name = "opendkim-sign", .port = port_dkim, .expect_edits = 1},
    };
    for (int i = 0; i < 3; i++) {
        struct target *t = &b->targets[i];
        *t = init[i];
        t->h = open_handle(opt_names[i], t->port, 0, &t->opt);
        t->neg = probe(t->port);
        char desc[512];
        describe_protocol(t->neg.protocol, desc, sizeof desc);
        printf("negotiated with %-13s version %u, actions 0x%x, protocol %s\n", t->name,
               t->neg.version, t->neg.actions, desc);
    }
}

/* A warm-up of both clients for about a second, not measured: the first case otherwise runs on
 * a machine still settling (CPU frequency, caches, the Milter's first threads). */
static void warm_up_machine(struct bench *b)
{
    struct side w[2];
    memset(w, 0, sizeof w);
    int n = (int)(2000 * b->scale) < 100 ? 100 : (int)(2000 * b->scale);
    for (int c = 0; c < 2; c++) {
        w[c].lat = xmalloc(sizeof(uint64_t) * (size_t)n);
        run_alone(&b->targets[1], &b->msgs[0], c, 1, n, &w[c]);
        if (w[c].failures)
            die("warm-up: %s failed: %s", c == CLIENT_LIB ? "library" : "ideal client",
                w[c].err);
        free(w[c].lat);
    }
}

static void print_legend(double scale)
{
    const int(*n)[2][3] = counts;
    printf("\nmessages per case and client: noop-reply 2K %d/%d/%d, 100K %d/%d/%d; noop-noreply 2K "
           "%d/%d/%d, 100K %d/%d/%d;\nopendkim 2K %d/%d/%d, 100K %d/%d/%d (at 1/4/16 threads; "
           "scale %.2f)\n",
           n[0][0][0], n[0][0][1], n[0][0][2], n[0][1][0], n[0][1][1], n[0][1][2], n[1][0][0],
           n[1][0][1], n[1][0][2], n[1][1][0], n[1][1][1], n[1][1][2], n[2][0][0], n[2][0][1],
           n[2][0][2], n[2][1][0], n[2][1][1], n[2][1][2], scale);
    printf("lib/s, ideal/s: messages per second; p50/p99: latency per message; ratio: the "
           "median over %d rounds (%d for reuse)\nof the library's rate / the ideal client's rate "
           "within the round; RT: round trips per message (library, ideal,\nminimum the "
           "negotiation allows); wr: socket writes per message;\nB: bytes written per message; "
           "cpu: CPU time of the client thread per message, microseconds (user + system)\n\n",
           ROUNDS, REUSE_ROUNDS);
    if (aa)
        printf("--aa: the ideal client runs on both sides of every case (the lib columns too), so "
               "each ratio\nshows only the bench's own noise on this machine\n\n");
    if (against != NULL)
        printf("--against: the BMI table only; the ideal columns are the other library's BMI face, "
               "so each ratio\nis this library's rate over the other's\n\n");
}

/* The cases of one table: targets[0..ntargets) (their counts: counts[ti], times factor), each
 * message size, each number of threads. */
static void table(struct bench *b, struct target *targets, int ntargets, int reuse, double factor)
{
    print_row_header();
    for (int ti = 0; ti < ntargets; ti++) {
        for (int mi = 0; mi < 2; mi++) {
            double rtmin = min_rt(&targets[ti].neg, &b->msgs[mi], reuse, targets[ti].env);
            for (int k = 0; k < 3; k++) {
                if (!selected(targets[ti].name, b->msgs[mi].name))
                    continue;
                double n = factor * counts[ti][mi][k] * b->scale;
                judge(&b->seen,
                      measure(&targets[ti], &b->msgs[mi], thread_counts[k], n, rtmin, &b->all_ok),
                      rtmin);
            }
        }
    }
}

/* The cause of the opendkim gap, shown: the ideal client without TCP_QUICKACK. */
static void quickack_line(struct bench *b)
{
    ideal_quickack = 0;
    struct side sd;
    memset(&sd, 0, sizeof sd);
    int n = (int)(40 * b->scale) < 8 ? 8 : (int)(40 * b->scale);
    sd.lat = xmalloc(sizeof(uint64_t) * (size_t)n);
    run_alone(&b->targets[2], &b->msgs[0], CLIENT_IDEAL, 1, n, &sd);
    ideal_quickack = 1;
    qsort(sd.lat, sd.nlat, sizeof sd.lat[0], cmp_u64);
    printf("\nopendkim-sign 2K 1 thread, ideal client WITHOUT TCP_QUICKACK at end of message: "
           "%.0f msg/s, p50 %.2f ms (%d messages)\n",
           (double)sd.msgs / ((double)sd.wall_ns / 1e9), pct_ms(sd.lat, sd.nlat, 50), n);
    free(sd.lat);
}

/* Does the library reuse? Three messages on one thread: connects counted. */
static void check_reuse(struct target *t, const struct msgdef *m)
{
    SpamfilterMessage msg = envelope();
    msg.data = m->data;
    msg.data_len = m->len;
    char err[256];
    memset(&t_io, 0, sizeof t_io);
    t_mode = M_LIB;
    for (int i = 0; i < 3; i++)
        if (lib_message(t, &msg, err, sizeof err) != 0)
            die("CONNECTION_REUSE=16: %s", err);
    t_mode = M_NONE;
    int in_effect = t_io.connects < 3;
    printf("library connects for 3 messages with CONNECTION_REUSE=16: %llu (%s)\n",
           (unsigned long long)t_io.connects,
           in_effect ? "reuse in effect" : "reuse NOT in effect in this build");
}

/* Does the BMI face reach the Milter through the counted calls? One message. */
static void check_bmi(struct target *t, const struct msgdef *m)
{
    struct bmi_source src = {.msg = m};
    char err[256];
    memset(&t_io, 0, sizeof t_io);
    t_mode = M_LIB;
    int r = bmi_message(t->bmi, t->opt, &src, t->expect_edits, err, sizeof err);
    t_mode = M_NONE;
    if (r != 0)
        die("BMI face against %s: %s", t->name, err);
    if (t_io.writes == 0 || t_io.connects == 0)
        die("BMI face against %s: no socket call was counted", t->name);
}

/* The same messages through the library's BMI face (bmi.c: as Exim calls it), against the
 * ideal client holding the conversation the library holds for what that face knows. */
static void bmi_table(struct bench *b)
{
    char err[256];
    b->has_bmi = bench_bmi_load(b->libpath, &b->bmi, err, sizeof err) == 0;
    if (!b->has_bmi) {
        printf("\nBMI face: not measured: %s\n", err);
        return;
    }
    printf("\nBMI face (bmiInitSystem ... bmiEndMessage for every message, as Exim calls it: "
           "header fields one per call,\nthe body in %d-byte chunks, LF line ends; each verdict "
           "made a string) against the ideal client:\n",
           BMI_CHUNK);
    struct target bmi_t[3];
    static const char *const names[3] = {"noop-reply bmi", "noop-noreply bmi",
                                         "opendkim-sign bmi"};
    for (int ti = 0; ti < 3; ti++) {
        bmi_t[ti] = b->targets[ti];
        bmi_t[ti].name = names[ti];
        bmi_t[ti].bmi = &b->bmi;
        bmi_t[ti].env = &bmi_env;
    }
    check_bmi(&bmi_t[0], &b->msgs[0]);
    int first = nrows;
    table(b, bmi_t, 3, 0, 1.0);
    print_other_calls(first);
}

/* CONNECTION_REUSE=16 against the no-op Milter. */
static void reuse_table(struct bench *b)
{
    printf("\nCONNECTION_REUSE=16 (library) against the ideal client reusing its connection "
           "(QUIT_NC, then CONNECT);\nboth on the library's connections, renewed every round "
           "outside the blocks' time:\n");
    struct target reuse_t[2];
    for (int ti = 0; ti < 2; ti++) {
        reuse_t[ti] = b->targets[ti];
        reuse_t[ti].reuse = 16;
        reuse_t[ti].base = ti == 0 ? "noop-reply" : "noop-noreply";
        reuse_t[ti].h = open_handle(reuse_t[ti].base, b->targets[ti].port, 16, NULL);
        reuse_t[ti].name = ti == 0 ? "noop-reply reuse=16" : "noop-noreply reuse=16";
    }
    check_reuse(&reuse_t[0], &b->msgs[0]);
    int first = nrows;
    table(b, reuse_t, 2, 1, REUSE_COUNT_FACTOR);
    print_other_calls(first);
    for (int ti = 0; ti < 2; ti++)
        api.close(reuse_t[ti].h);
}

static int run_bench(struct bench *b, const char *libpath, const char *noop)
{
    uint64_t start = now_ns();
    b->libpath = libpath;
    supervise_setup();
    message_setup();
    load_library(libpath);
    print_machine(libpath);
    start_targets(b, noop);
    make_message(&b->msgs[0], "2K", 2048);
    make_message(&b->msgs[1], "100K", 100 * 1024);
    check_interposition(&b->targets[0], &b->msgs[0]);
    printf("interposition: the library's send/recv/connect calls are counted\n");
    warm_up_machine(b);
    print_legend(b->scale);
    b->all_ok = 1;
    b->seen = (struct targets_seen){.worst_ratio = 1e9, .rt_ok = 1, .wr_ok = 1};
    table(b, b->targets, 3, 0, 1.0);
    if (selected("opendkim-sign", "2K"))
        quickack_line(b);
    print_other_calls(0);
    reuse_table(b);
    bmi_table(b);
    struct stream_summary streamed = {.mem_ok = 1, .stream_ok = 1, .bmi_mem_ok = 1};
    if (selected("100MiB", "")) {
        /* The BMI face streams against the Milter that sets no pace of its own. */
        struct target bmi_noreply = b->targets[1];
        bmi_noreply.bmi = &b->bmi;
        bmi_noreply.env = &bmi_env;
        stream_section(b->targets, b->has_bmi ? &bmi_noreply : NULL, &streamed);
    }
    for (int i = 0; i < 3; i++)
        api.close(b->targets[i].h);
    if (against != NULL)
        printf("\n--against: two builds compared; the targets are judged on a whole run\n");
    else if (only != NULL)
        printf("\n--only %s: a partial run; the targets are judged on a whole run\n", only);
    else
        print_targets(&b->seen, &streamed, b->all_ok);
    printf("\nbench took %.0f s\n", (double)(now_ns() - start) / 1e9);
    for (int i = 0; i < 2; i++)
        free_message(&b->msgs[i]);
    return b->all_ok ? 0 : 1;
}

int main(int argc, char **argv)
{
    struct bench b = {.scale = 1.0};
    struct callgrind_case cg = {.size = 2048};
    int argi = 1;
    if (argc == 5 && strcmp(argv[1], "--callgrind-report") == 0)
        return callgrind_report(argv[2], atol(argv[3]), argv[4]);
    /* The options that only switch something on. */
    const struct {
        const char *name;
        int *flag;
    } switches[] = {{"--noreply", &cg.noreply}, {"--reuse", &cg.reuse}, {"--ideal", &cg.ideal}, {"--ticks", &cg.ticks},
                    {"--opendkim", &cg.dkim},   {"--bmi", &cg.bmi},     {"--aa", &aa}};
    while (argi < argc && strncmp(argv[argi], "--", 2) == 0) {
        size_t sw = 0;
        while (sw < sizeof switches / sizeof switches[0] && strcmp(argv[argi], switches[sw].name))
            sw++;
        if (sw < sizeof switches / sizeof switches[0]) {
            *switches[sw].flag = 1;
            argi++;
        } else if (strcmp(argv[argi], "--quick") == 0) {
            b.scale = 0.2;
            argi++;
        } else if (strcmp(argv[argi], "--scale") == 0 && argi + 1 < argc) {
            b.scale = atof(argv[argi + 1]);
            argi += 2;
        } else if (strcmp(argv[argi], "--callgrind") == 0 && argi + 1 < argc) {
            cg.n = atoi(argv[argi + 1]);
            argi += 2;
        } else if (strcmp(argv[argi], "--size") == 0 && argi + 1 < argc) {
            cg.size = (size_t)strtoull(argv[argi + 1], NULL, 10);
            argi += 2;
        } else if (strcmp(argv[argi], "--against") == 0 && argi + 1 < argc) {
            static struct bmi_api b_api;
            char why[256];
            if (bmi_load("--against", argv[argi + 1], &b_api, why, sizeof why) != 0)
                die("--against: %s", why);
            against = &b_api;
            argi += 2;
        } else if (strcmp(argv[argi], "--only") == 0 && argi + 1 < argc) {
            only = argv[argi + 1];
            argi += 2;
        } else {
            usage();
        }
    }
    if (argc - argi != 2 || b.scale <= 0)
        usage();
    const char *libpath = argv[argi], *noop = argv[argi + 1];
    if (cg.n > 0)
        return callgrind_main(&cg, libpath, noop);
    return run_bench(&b, libpath, noop);
}
