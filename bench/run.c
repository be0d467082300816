/* See run.h. */
#define _GNU_SOURCE
#include "run.h"
#include "bmi.h"
#include "supervise.h"
#include "util.h"

#include <errno.h>
#include <pthread.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

struct sf_api api;
int aa = 0;
const struct bmi_api *against = NULL;

struct job {
    struct pool *pool; /* first: run_block clears the rest */
    const struct msgdef *m;
    int client;
    int count;
    uint64_t *lat;
    struct iostat io;
    uint64_t cpu_ns;
    int lastfd; /* the connection its last message was written to */
    int gather; /* reuse table: the first message waits for every thread's (see gathered_read) */
    int failures;
    char err[256];
};
_Static_assert(offsetof(struct job, pool) == 0, "run_block clears a job from its second field");

/* The client threads of a case. They live as long as the case, as an MTA's threads live as long
 * as the MTA: created once, then handed block after block. So no block pays for starting and
 * ending threads, and what a thread keeps between messages (the library's per-thread buffers)
 * lasts across blocks for both clients alike. The ideal client's connections (one per thread
 * and side: its own, or in the reuse table the library's, borrowed) are here, so that they can
 * be renewed and borrowed between blocks (see fresh_connections). */
struct pool {
    struct target *t;
    int threads;
    int quit;
    pthread_barrier_t go, done; /* the threads and the main thread */
    pthread_t tids[64];
    struct job jobs[64];
    struct conn conns[64][2];
    int libfd[64]; /* reuse table: the connection each thread's library side used last */
    int gathered;  /* threads whose first warm-up message has begun (see gathered_read) */
    int gather_next; /* the next block's first messages gather (run_block) */
};

/* The library's first message of a round of the reuse table (see fresh_connections) is read
 * through this callback, which waits until every thread's conversation has begun: the library
 * then holds a connection per thread at once, and each goes back to its own thread's slot. */
struct gathered {
    struct pool *pool;
    const struct msgdef *m;
    size_t pos;
    int waited;
};

static ptrdiff_t gathered_read(void *ctx, uint8_t *buf, size_t len)
{
    struct gathered *g = ctx;
    if (!g->waited) {
        g->waited = 1;
        __atomic_add_fetch(&g->pool->gathered, 1, __ATOMIC_SEQ_CST);
        uint64_t t0 = now_ns();
        while (__atomic_load_n(&g->pool->gathered, __ATOMIC_SEQ_CST) < g->pool->threads) {
            if (now_ns() - t0 > 10000000000u)
                die("reuse warm-up: only %d of %d threads began a conversation within 10 s",
                    __atomic_load_n(&g->pool->gathered, __ATOMIC_SEQ_CST), g->pool->threads);
            usleep(100);
        }
    }
    size_t left = g->m->len - g->pos;
    if (len > left)
        len = left;
    memcpy(buf, g->m->data + g->pos, len);
    g->pos += len;
    return (ptrdiff_t)len;
}


int lib_message(const struct target *t, const SpamfilterMessage *msg, char *err, size_t errlen)
{
    SpamfilterResult res;
    memset(&res, 0, sizeof res);
    res.struct_size = sizeof res;
    SpamfilterStatus st = api.filter(t->h, msg, &res);
    int ok = st == SPAMFILTER_STATUS_OK;
    if (!ok)
        snprintf(err, errlen, "%s: %s", sf_status_name(st), api.last_error());
    else if (t->expect_edits && (res.kind != SPAMFILTER_KIND_VERDICT || res.verdict == NULL ||
                                 strstr(res.verdict, "DKIM-Signature") == NULL)) {
        snprintf(err, errlen, "no DKIM-Signature in the verdict (kind %s)",
                 sf_kind_name(res.kind));
        ok = 0;
    }
    api.result_free(&res);
    return ok ? 0 : -1;
}

/* The library's side of a block, message i: through the BMI face, or spamfilter_filter (the
 * first message of a reuse round through the gathering read callback). */
static int library_side(struct job *j, int i, const SpamfilterMessage *msg)
{
    const struct target *t = j->pool->t;
    if (t->bmi != NULL) {
        struct bmi_source bs = {.msg = j->m};
        return bmi_message(t->bmi, t->opt, &bs, t->expect_edits, j->err, sizeof j->err);
    }
    if (j->gather && i == 0) {
        struct gathered g = {.pool = j->pool, .m = j->m};
        SpamfilterMessage gm = *msg;
        gm.data = NULL;
        gm.data_len = 0;
        gm.read = gathered_read;
        gm.read_ctx = &g;
        return lib_message(t, &gm, j->err, sizeof j->err);
    }
    return lib_message(t, msg, j->err, sizeof j->err);
}

/* The ideal client's message; on failure its connection is given up. */
static int ideal_side(struct job *j, const struct source *src, struct conn *c, struct obuf *b)
{
    const struct target *t = j->pool->t;
    if (against != NULL) { /* only BMI cases run (see selected in main.c) */
        struct bmi_source bs = {.msg = j->m};
        return bmi_message(against, t->opt, &bs, t->expect_edits, j->err, sizeof j->err);
    }
    int edits = 0;
    char final = 0;
    int r = ideal_message(c, t->port, src, b, t->reuse > 0, &edits, &final);
    if (r == 0 && final != 'c' && final != 'a')
        r = -1;
    if (r == 0 && t->expect_edits && edits == 0)
        r = -1;
    if (r == 0)
        return 0;
    snprintf(j->err, sizeof j->err, "ideal client: conversation failed (%s)",
             errno ? strerror(errno) : "protocol");
    if (c->fd >= 0 && c->borrowed) {
        /* Not ours to close: shut down, the library then finds it closed. */
        shutdown(c->fd, SHUT_RDWR);
        c->fd = -1;
        c->borrowed = 0;
    } else if (c->fd >= 0) {
        close(c->fd);
        c->fd = -1;
    }
    return -1;
}

/* One block of a job: j->count messages by j->client. */
static void work_block(struct job *j, SpamfilterMessage *msg, struct conn *c, struct obuf *b)
{
    const struct target *t = j->pool->t;
    msg->data = j->m->data;
    msg->data_len = j->m->len;
    struct source src = {.data = j->m->data, .len = j->m->len, .env = t->env};
    if (t->bmi != NULL) {
        /* Beside the BMI face, the ideal client starts from what the face gets: the LF form,
         * whose body it converts to CRLF as the library must. */
        src.data = (const unsigned char *)j->m->lf;
        src.len = j->m->lf_len;
        src.lf = 1;
    }
    memset(&t_io, 0, sizeof t_io);
    t_lastfd = -1;
    t_mode = j->client == CLIENT_LIB ? M_LIB : M_IDEAL;
    uint64_t cpu0 = thread_cpu_ns();
    for (int i = 0; i < j->count; i++) {
        uint64_t t0 = now_ns();
        int r = j->client == CLIENT_LIB && !aa ? library_side(j, i, msg)
                                               : ideal_side(j, &src, c, b);
        j->lat[i] = now_ns() - t0;
        if (r != 0)
            j->failures++;
    }
    j->cpu_ns = thread_cpu_ns() - cpu0;
    t_mode = M_NONE;
    j->io = t_io;
    j->lastfd = t_lastfd;
}

static void *worker(void *arg)
{
    struct job *j = arg;
    struct pool *p = j->pool;
    /* The ideal client's connection on each side (--aa runs it on both sides). */
    struct conn *conns = p->conns[j - p->jobs];
    SpamfilterMessage msg = envelope();
    struct obuf b = {0};
    for (;;) {
        pthread_barrier_wait(&p->go);
        if (p->quit)
            break;
        work_block(j, &msg, &conns[j->client], &b);
        pthread_barrier_wait(&p->done);
    }
    for (int c = 0; c < 2; c++)
        ideal_close(&conns[c], &b);
    free(b.p);
    return NULL;
}

static void pool_start(struct pool *p, struct target *t, int threads)
{
    memset(p, 0, sizeof *p);
    p->t = t;
    p->threads = threads;
    for (int i = 0; i < threads; i++)
        p->conns[i][0].fd = p->conns[i][1].fd = -1;
    if (pthread_barrier_init(&p->go, NULL, (unsigned)threads + 1) != 0 ||
        pthread_barrier_init(&p->done, NULL, (unsigned)threads + 1) != 0)
        die("pthread_barrier_init failed");
    for (int i = 0; i < threads; i++) {
        p->jobs[i].pool = p;
        if (pthread_create(&p->tids[i], NULL, worker, &p->jobs[i]) != 0)
            die("pthread_create failed");
    }
}

static void pool_stop(struct pool *p)
{
    p->quit = 1;
    pthread_barrier_wait(&p->go);
    for (int i = 0; i < p->threads; i++)
        pthread_join(p->tids[i], NULL);
    pthread_barrier_destroy(&p->go);
    pthread_barrier_destroy(&p->done);
}

/* Runs `count` messages over the pool's threads; adds to *s. */
static void run_block(struct pool *p, const struct msgdef *m, int client, int count,
                      struct side *s)
{
    int threads = p->threads;
    int per = (count + threads - 1) / threads;
    for (int i = 0; i < threads; i++) {
        struct job *j = &p->jobs[i];
        /* Everything but `pool`, which pool_start set before the thread began: a thread that
         * has only just started may be reading it now (clearing it here had that thread wait
         * on a barrier at address 0x10 once, under load). */
        memset((char *)j + offsetof(struct job, m), 0, sizeof *j - offsetof(struct job, m));
        j->gather = p->gather_next;
        j->m = m;
        j->client = client;
        j->count = per;
        j->lat = s->lat + s->nlat + (size_t)i * (size_t)per;
    }
    uint64_t t0 = now_ns();
    pthread_barrier_wait(&p->go);
    pthread_barrier_wait(&p->done);
    s->wall_ns += now_ns() - t0;
    s->msgs += (uint64_t)per * (uint64_t)threads;
    s->nlat += (size_t)per * (size_t)threads;
    for (int i = 0; i < threads; i++) {
        struct job *j = &p->jobs[i];
        io_add(&s->io, &j->io);
        s->cpu_ns += j->cpu_ns;
        if (client == CLIENT_LIB)
            p->libfd[i] = j->lastfd;
        s->failures += j->failures;
        if (j->failures && s->err[0] == '\0')
            snprintf(s->err, sizeof s->err, "%s", j->err);
    }
}

/* A single block on threads of its own (the warm-up before the first case, the line without
 * TCP_QUICKACK). */
void run_alone(struct target *t, const struct msgdef *m, int client, int threads, int count,
               struct side *s)
{
    struct pool p;
    pool_start(&p, t, threads);
    run_block(&p, m, client, count, s);
    pool_stop(&p);
}

/* The CONNECTION_REUSE table. A kept connection lasts, and with it whatever makes it faster or
 * slower than another: which of the Milter's threads serves it and where the scheduler put that
 * thread. With each side on connections of its own, one block's rate differed from the next by
 * 7-10% (4 threads against noop-noreply) for that alone, and a case's ratio, the median of 75
 * rounds, moved by a hundredth or two from run to run; kept for a whole case, one side's
 * connections tipped every round the same way (a real run at 0.80-0.88 where the next gave
 * 1.00). So both sides now run on the same connections, the library's: in each round its handle
 * is opened anew (QUIT on the old kept connections) and warmed up until its pool holds a
 * connection per thread, and the ideal client's thread i then holds its conversations on the
 * connection the library's thread i last wrote to (the library keeps it idle in its pool
 * meanwhile; it is never closed here). Each round draws new connections; within a round both
 * sides meet the same Milter threads, so that the draw cancels out of the round's ratio. With
 * --aa the left side is the ideal client on connections of its own, renewed the same way. */
static void fresh_connections(struct pool *p)
{
    struct target *t = p->t;
    if (t->reuse == 0)
        return;
    if (!aa) {
        api.close(t->h);
        t->h = open_handle(t->base, t->port, t->reuse, NULL);
    }
    struct obuf b = {0};
    for (int i = 0; i < p->threads; i++)
        for (int c = 0; c < 2; c++)
            ideal_close(&p->conns[i][c], &b);
    free(b.p);
}

/* Not measured: `per_thread` messages per thread from the side `client`. */
static void warm_up_side(struct pool *p, const struct msgdef *m, int client, int per_thread)
{
    const struct target *t = p->t;
    struct side w;
    memset(&w, 0, sizeof w);
    w.lat = xmalloc(sizeof(uint64_t) * (size_t)p->threads * (size_t)per_thread);
    run_block(p, m, client, p->threads * per_thread, &w);
    if (w.failures)
        die("%s %s %d threads: %s failed in warm-up: %s", t->name, m->name, p->threads,
            client == CLIENT_LIB ? "library" : "ideal client", w.err);
    free(w.lat);
}

/* Not measured: `per_thread` messages per thread from each side. */
static void warm_up(struct pool *p, const struct msgdef *m, int per_thread)
{
    for (int c = 0; c < 2; c++)
        warm_up_side(p, m, c, per_thread);
}

/* Messages per thread after the gathered one (see gathered_read), to warm up a round of the
 * reuse table. The library's pool opens a connection only when every kept one is in use: with
 * plain messages, the threads' overlapping only in part, it was left with fewer connections
 * than threads and the block opened the rest inside its time (about one connection per block
 * at 16 threads). */
#define REUSE_WARM_UP 2

/* The start of a round of the reuse table: new connections, a connection per thread in the
 * library's pool, each in its own thread's slot, all outside the blocks' time. */
static void reuse_round_start(struct pool *p, const struct msgdef *m)
{
    fresh_connections(p);
    p->gathered = 0;
    p->gather_next = 1;
    warm_up_side(p, m, CLIENT_LIB, 1);
    p->gather_next = 0;
    warm_up_side(p, m, CLIENT_LIB, REUSE_WARM_UP);
}

/* The ideal client's thread i takes the connection the library's thread i last used (see
 * fresh_connections). Two threads on one connection would garble both conversations: the bench
 * stops instead (the gathered warm-up gives every thread a connection of its own, and a thread
 * always finds its own again in its slot). */
static void borrow_connections(struct pool *p)
{
    for (int i = 0; i < p->threads; i++) {
        for (int k = 0; k < i; k++)
            if (p->libfd[k] == p->libfd[i])
                die("%s: library threads %d and %d last used the same connection", p->t->name,
                    k, i);
        if (p->libfd[i] < 0)
            die("%s: library thread %d wrote to no connection", p->t->name, i);
        struct conn *c = &p->conns[i][CLIENT_IDEAL];
        c->fd = p->libfd[i];
        c->neg = p->t->neg;
        c->reused = 1;
        c->borrowed = 1;
        c->rlen = c->rpos = 0;
    }
}

static void return_connections(struct pool *p)
{
    for (int i = 0; i < p->threads; i++) {
        struct conn *c = &p->conns[i][CLIENT_IDEAL];
        c->fd = -1;
        c->borrowed = 0;
    }
}

/* One case: library and ideal in alternating blocks, L I I L repeated ROUNDS times, so that
 * drift and the machine's other load hit both alike. n: messages per client. The ratio is the
 * median of the rounds' ratios (each the library's rate in the round over the ideal client's):
 * a burst of load from elsewhere on a shared machine then moves one round, not the figure.
 * Many short rounds rather than a few long ones: the finer the interleave, the less the
 * machine's other load tells on the ratio. `--aa` (the ideal client on both sides) shows the
 * noise that is left: on the 2-core VM this was written on, A/A ratios spread 0.97-1.03 in the
 * first table and 0.91-1.07 in the reuse table with 9 rounds and threads started per block,
 * 0.99-1.02 and 0.97-1.05 with 25 rounds and the pool (the reuse table now: see
 * fresh_connections). */
static struct row *run_case(struct target *t, const struct msgdef *m, int threads, int n,
                            int verbose_fail)
{
    struct side sides[2];
    memset(sides, 0, sizeof sides);
    int rounds = t->reuse ? REUSE_ROUNDS : ROUNDS;
    int block = n / (2 * rounds);
    if (block < threads)
        block = threads;
    int per = (block + threads - 1) / threads;
    for (int c = 0; c < 2; c++)
        sides[c].lat = xmalloc(sizeof(uint64_t) * (size_t)per * (size_t)threads * 2 * rounds);
    struct pool pool;
    pool_start(&pool, t, threads);
    /* Warm-up, not measured: connections, thread stacks, the Milter's threads. */
    warm_up(&pool, m, 2);
    double ratios[REUSE_ROUNDS];
    int nratios = 0;
    /* The reuse table's rounds go in pairs, L I I L then I L L I (see fresh_connections), and
     * a ratio is taken over each pair. */
    int span = t->reuse ? 2 : 1;
    uint64_t wall0[2] = {0, 0}, msgs0[2] = {0, 0};
    for (int round = 0; round < rounds; round++) {
        if (round % span == 0)
            for (int c = 0; c < 2; c++) {
                wall0[c] = sides[c].wall_ns;
                msgs0[c] = sides[c].msgs;
            }
        static const int orders[2][4] = {{CLIENT_LIB, CLIENT_IDEAL, CLIENT_IDEAL, CLIENT_LIB},
                                         {CLIENT_IDEAL, CLIENT_LIB, CLIENT_LIB, CLIENT_IDEAL}};
        const int *order = orders[t->reuse ? round % 2 : 0];
        if (t->reuse)
            reuse_round_start(&pool, m);
        for (int k = 0; k < 4; k++) {
            if (t->reuse && order[k] == CLIENT_IDEAL)
                borrow_connections(&pool);
            run_block(&pool, m, order[k], block, &sides[order[k]]);
            if (t->reuse && order[k] == CLIENT_IDEAL)
                return_connections(&pool);
        }
        if (round % span != span - 1)
            continue;
        double rate[2];
        for (int c = 0; c < 2; c++)
            rate[c] = (double)(sides[c].msgs - msgs0[c]) /
                      ((double)(sides[c].wall_ns - wall0[c]) / 1e9);
        ratios[nratios++] = rate[CLIENT_LIB] / rate[CLIENT_IDEAL];
    }
    pool_stop(&pool);
    struct row *r = new_row();
    qsort(ratios, (size_t)nratios, sizeof ratios[0], cmp_double);
    r->ratio = ratios[nratios / 2];
    r->milter = t->name;
    r->size = m->name;
    r->threads = threads;
    for (int c = 0; c < 2; c++) {
        struct side *s = &sides[c];
        qsort(s->lat, s->nlat, sizeof s->lat[0], cmp_u64);
        double msgs = (double)s->msgs;
        r->mps[c] = msgs / ((double)s->wall_ns / 1e9);
        r->p50[c] = pct_ms(s->lat, s->nlat, 50);
        r->p99[c] = pct_ms(s->lat, s->nlat, 99);
        r->rt[c] = (double)s->io.rtt / msgs;
        r->writes[c] = (double)s->io.writes / msgs;
        r->bytes[c] = (double)s->io.wbytes / msgs;
        r->connects[c] = (double)s->io.connects / msgs;
        r->sockopts[c] = (double)s->io.sockopts / msgs;
        r->other[c] = (double)s->io.other / msgs;
        r->cpu_us[c] = (double)s->cpu_ns / 1e3 / msgs;
        r->failures[c] = s->failures;
        if (s->failures && verbose_fail)
            fprintf(stderr, PROG ": %s %s %d threads: %d %s failures, e.g. %s\n", t->name,
                    m->name, threads, s->failures, c == CLIENT_LIB ? "library" : "ideal",
                    s->err);
        free(s->lat);
    }
    return r;
}

SpamfilterHandle *open_handle(const char *name, int port, int reuse, const char **saved)
{
    char path[160], text[256];
    snprintf(path, sizeof path, "%s/%s%s.opt", workdir, name, reuse ? "-reuse" : "");
    snprintf(text, sizeof text, "HOST=127.0.0.1\nPORT=%d\nTIMEOUT=3000\n", port);
    if (reuse)
        snprintf(text + strlen(text), sizeof text - strlen(text), "CONNECTION_REUSE=%d\n",
                 reuse);
    write_file(path, text);
    SpamfilterHandle *h;
    if (api.init(path, &h) != SPAMFILTER_STATUS_OK)
        die("spamfilter_init %s: %s", path, api.last_error());
    if (saved != NULL && (*saved = strdup(path)) == NULL)
        die("out of memory");
    return h;
}

void load_library(const char *path)
{
    if (sf_load(PROG, path, &api) != 0)
        exit(1);
}

/* Checks that the library's socket calls land in our wrappers (else nothing is counted). */
void check_interposition(struct target *t, const struct msgdef *m)
{
    SpamfilterMessage msg = envelope();
    msg.data = m->data;
    msg.data_len = m->len;
    char err[256];
    memset(&t_io, 0, sizeof t_io);
    t_mode = M_LIB;
    int r = lib_message(t, &msg, err, sizeof err);
    t_mode = M_NONE;
    if (r != 0)
        die("library against %s: %s", t->name, err);
    if (t_io.writes == 0 || t_io.reads == 0 || t_io.connects == 0)
        die("the library's socket calls were not intercepted (writes %llu, reads %llu, connects "
            "%llu): is the bench linked with -rdynamic?",
            (unsigned long long)t_io.writes, (unsigned long long)t_io.reads,
            (unsigned long long)t_io.connects);
}

/* One case of a table: `count` messages per client (at least 4 per thread), run, printed;
 * *all_ok cleared on a failed conversation. */
struct row *measure(struct target *t, const struct msgdef *m, int threads, double count,
                    double rtmin, int *all_ok)
{
    int n = (int)count;
    if (n < 4 * threads)
        n = 4 * threads;
    struct row *r = run_case(t, m, threads, n, 1);
    print_row(r, rtmin);
    if (r->failures[0] || r->failures[1])
        *all_ok = 0;
    return r;
}
