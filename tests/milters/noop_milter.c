/*
 * noop_milter: a Milter on sendmail's libmilter that does nothing, as fast as libmilter lets it,
 * for the benchmark (bench/, `make bench`). It listens on 127.0.0.1:PORT.
 *
 *   noop_milter PORT reply     every stage answered: CONTINUE from each callback; no NO* step and
 *                              no NR_* bit negotiated, so every command costs a round trip
 *   noop_milter PORT noreply   every no-reply bit the MTA offers (NR_CONN, NR_HELO, NR_MAIL,
 *                              NR_RCPT, NR_DATA, NR_HDR, NR_EOH, NR_BODY, NR_UNKN) negotiated and
 *                              the callbacks return SMFIS_NOREPLY: only OPTNEG and end of message
 *                              are answered
 *
 * It asks for no actions and no macros. SIGTERM (or SIGINT, SIGHUP) stops it: libmilter's signal
 * thread ends smfi_main, which returns 0.
 *
 * cc -Wall -Wextra -O2 noop_milter.c -lmilter -pthread -o noop_milter
 */
#define _GNU_SOURCE
#include <libmilter/mfapi.h>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static int noreply;

/* The answer of every callback but end of message. */
static sfsistat pass(void)
{
    return noreply ? SMFIS_NOREPLY : SMFIS_CONTINUE;
}

static sfsistat on_negotiate(SMFICTX *ctx, unsigned long f0, unsigned long f1, unsigned long f2,
                             unsigned long f3, unsigned long *pf0, unsigned long *pf1,
                             unsigned long *pf2, unsigned long *pf3)
{
    (void)ctx;
    (void)f0;
    (void)f2;
    (void)f3;
    /* libmilter's order: actions, protocol steps, then two reserved words. */
    const unsigned long nr = SMFIP_NR_CONN | SMFIP_NR_HELO | SMFIP_NR_MAIL | SMFIP_NR_RCPT |
                             SMFIP_NR_DATA | SMFIP_NR_HDR | SMFIP_NR_EOH | SMFIP_NR_BODY |
                             SMFIP_NR_UNKN;
    *pf0 = 0;
    *pf1 = noreply ? (f1 & nr) : 0;
    *pf2 = 0;
    *pf3 = 0;
    return SMFIS_CONTINUE;
}

static sfsistat on_connect(SMFICTX *ctx, char *host, _SOCK_ADDR *addr)
{
    (void)ctx;
    (void)host;
    (void)addr;
    return pass();
}

static sfsistat on_helo(SMFICTX *ctx, char *helo)
{
    (void)ctx;
    (void)helo;
    return pass();
}

static sfsistat on_args(SMFICTX *ctx, char **argv)
{
    (void)ctx;
    (void)argv;
    return pass();
}

static sfsistat on_header(SMFICTX *ctx, char *name, char *value)
{
    (void)ctx;
    (void)name;
    (void)value;
    return pass();
}

static sfsistat on_stage(SMFICTX *ctx)
{
    (void)ctx;
    return pass();
}

static sfsistat on_body(SMFICTX *ctx, unsigned char *chunk, size_t len)
{
    (void)ctx;
    (void)chunk;
    (void)len;
    return pass();
}

static sfsistat on_unknown(SMFICTX *ctx, const char *cmd)
{
    (void)ctx;
    (void)cmd;
    return pass();
}

static sfsistat on_eom(SMFICTX *ctx)
{
    (void)ctx;
    return SMFIS_CONTINUE;
}

static sfsistat on_abort(SMFICTX *ctx)
{
    (void)ctx;
    return SMFIS_CONTINUE;
}

static sfsistat on_close(SMFICTX *ctx)
{
    (void)ctx;
    return SMFIS_CONTINUE;
}

int main(int argc, char **argv)
{
    if (argc != 3 || (strcmp(argv[2], "reply") != 0 && strcmp(argv[2], "noreply") != 0)) {
        fprintf(stderr, "usage: noop_milter PORT reply|noreply\n");
        return 2;
    }
    char *end;
    long port = strtol(argv[1], &end, 10);
    if (*argv[1] == '\0' || *end != '\0' || port < 1 || port > 65535) {
        fprintf(stderr, "noop_milter: %s is not a port number from 1 to 65535\n", argv[1]);
        return 2;
    }
    noreply = strcmp(argv[2], "noreply") == 0;

    /* Every callback is set: libmilter turns a missing one into a NO* step. */
    struct smfiDesc desc = {
        .xxfi_name = noreply ? "noop-noreply" : "noop-reply",
        .xxfi_version = SMFI_VERSION,
        .xxfi_flags = SMFIF_NONE,
        .xxfi_connect = on_connect,
        .xxfi_helo = on_helo,
        .xxfi_envfrom = on_args,
        .xxfi_envrcpt = on_args,
        .xxfi_header = on_header,
        .xxfi_eoh = on_stage,
        .xxfi_body = on_body,
        .xxfi_eom = on_eom,
        .xxfi_abort = on_abort,
        .xxfi_close = on_close,
        .xxfi_unknown = on_unknown,
        .xxfi_data = on_stage,
        .xxfi_negotiate = on_negotiate,
    };
    char conn[64];
    snprintf(conn, sizeof conn, "inet:%ld@127.0.0.1", port);
    if (smfi_setconn(conn) == MI_FAILURE || smfi_setbacklog(256) == MI_FAILURE ||
        smfi_register(desc) == MI_FAILURE) {
        fprintf(stderr, "noop_milter: cannot set up %s\n", conn);
        return 1;
    }
    /* Bind now, so that a busy port is an error here and not a silent exit later. */
    if (smfi_opensocket(1) == MI_FAILURE) {
        fprintf(stderr, "noop_milter: cannot listen on %s\n", conn);
        return 1;
    }
    return smfi_main() == MI_SUCCESS ? 0 : 1;
}
