/*
 * supervise: the servers the bench starts (the no-op Milter in two modes, opendkim, the copy
 * sink of the 100 MiB section) and its work directory. They are stopped, and the directory
 * removed, on every way out: normal end, die(), SIGINT/SIGTERM/SIGHUP; each child also gets
 * PR_SET_PDEATHSIG, so that even a SIGKILL of the bench takes them down.
 */
#ifndef BENCH_SUPERVISE_H
#define BENCH_SUPERVISE_H

#include <sys/types.h>

/* The work directory (/tmp/sfbench.XXXXXX): option files, opendkim's key and configuration. */
extern char workdir[64];

/* Makes the work directory and installs the handlers that clean up on every way out. */
void supervise_setup(void);

int free_port(void);
/* A connected TCP socket to 127.0.0.1:port, or -1 with errno. */
int connect_loopback(int port);

/* Starts argv as a server listening on port (its output to `log` if given); returns once it
 * accepts connections, dies if it exits first or does not listen within 10 s. */
void start_server(const char *name, char *const argv[], int port, const char *log);
/* A child forked elsewhere, stopped with the servers; reap it with supervise_reap. */
void supervise_adopt(pid_t pid, const char *name);
void supervise_reap(pid_t pid);

/* The no-op Milter (tests/milters/noop_milter.c) in mode "reply" or "noreply". */
void start_noop(const char *noop, const char *mode, int port);
/* opendkim signing for example.org with a key made here; returns its port. */
int start_opendkim(void);

#endif
