/* See supervise.h. */
#define _GNU_SOURCE
#include "supervise.h"
#include "util.h"

#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#define MAX_SERVERS 8
static volatile pid_t server_pid[MAX_SERVERS];
static const char *server_name[MAX_SERVERS];
char workdir[64];
/* Files in workdir, removed at exit (names only; fixed so the signal handler can use them). */
static const char *const work_files[] = {"bench.private", "bench.txt", "opendkim.conf",
                                         "noop-reply.opt", "noop-noreply.opt", "opendkim.opt",
                                         "noop-reply-reuse.opt", "noop-noreply-reuse.opt",
                                         "opendkim.log", "genkey.log"};

static void stop_servers(void)
{
    for (int i = 0; i < MAX_SERVERS; i++)
        if (server_pid[i] > 0)
            kill(server_pid[i], SIGTERM);
    /* Up to 3 s for a clean stop, then SIGKILL. */
    for (int round = 0; round < 300; round++) {
        int left = 0;
        for (int i = 0; i < MAX_SERVERS; i++) {
            if (server_pid[i] <= 0)
                continue;
            pid_t r = waitpid(server_pid[i], NULL, WNOHANG);
            if (r == server_pid[i] || (r < 0 && errno == ECHILD))
                server_pid[i] = 0;
            else
                left++;
        }
        if (left == 0)
            return;
        struct timespec ts = {0, 10000000};
        nanosleep(&ts, NULL);
    }
    for (int i = 0; i < MAX_SERVERS; i++) {
        if (server_pid[i] > 0) {
            kill(server_pid[i], SIGKILL);
            waitpid(server_pid[i], NULL, 0);
            server_pid[i] = 0;
        }
    }
}

static void remove_workdir(void)
{
    if (workdir[0] == '\0')
        return;
    char path[160];
    for (size_t i = 0; i < sizeof work_files / sizeof work_files[0]; i++) {
        size_t a = strlen(workdir), b = strlen(work_files[i]);
        if (a + 1 + b + 1 > sizeof path)
            continue;
        memcpy(path, workdir, a);
        path[a] = '/';
        memcpy(path + a + 1, work_files[i], b + 1);
        unlink(path);
    }
    rmdir(workdir);
    workdir[0] = '\0';
}

static void at_exit(void)
{
    stop_servers();
    remove_workdir();
}

static void on_signal(int sig)
{
    /* Only async-signal-safe calls: kill, waitpid, nanosleep, unlink, rmdir. */
    stop_servers();
    remove_workdir();
    signal(sig, SIG_DFL);
    raise(sig);
}

int free_port(void)
{
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    socklen_t len = sizeof a;
    if (fd < 0 || bind(fd, (struct sockaddr *)&a, sizeof a) != 0 ||
        getsockname(fd, (struct sockaddr *)&a, &len) != 0)
        die("cannot find a free loopback port: %s", strerror(errno));
    close(fd);
    return ntohs(a.sin_port);
}

int connect_loopback(int port)
{
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd < 0)
        return -1;
    struct sockaddr_in a = {.sin_family = AF_INET,
                            .sin_port = htons((uint16_t)port),
                            .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    if (connect(fd, (struct sockaddr *)&a, sizeof a) != 0) {
        int e = errno;
        close(fd);
        errno = e;
        return -1;
    }
    return fd;
}

/* Starts argv as a server listening on port; waits until it accepts connections. */
void start_server(const char *name, char *const argv[], int port, const char *log)
{
    int slot = -1;
    for (int i = 0; i < MAX_SERVERS; i++)
        if (server_pid[i] == 0) {
            slot = i;
            break;
        }
    if (slot < 0)
        die("too many servers");
    pid_t parent = getpid();
    pid_t pid = fork();
    if (pid < 0)
        die("fork: %s", strerror(errno));
    if (pid == 0) {
        prctl(PR_SET_PDEATHSIG, SIGKILL);
        if (getppid() != parent)
            _exit(1);
        if (log != NULL) {
            int fd = open(log, O_WRONLY | O_CREAT | O_TRUNC, 0600);
            if (fd >= 0) {
                dup2(fd, 1);
                dup2(fd, 2);
                close(fd);
            }
        }
        execvp(argv[0], argv);
        fprintf(stderr, PROG ": cannot run %s: %s\n", argv[0], strerror(errno));
        _exit(127);
    }
    server_pid[slot] = pid;
    server_name[slot] = name;
    for (int i = 0; i < 1000; i++) {
        int st;
        if (waitpid(pid, &st, WNOHANG) == pid) {
            server_pid[slot] = 0;
            if (log != NULL) {
                char cmd[256];
                snprintf(cmd, sizeof cmd, "cat '%s' >&2", log);
                if (system(cmd) != 0)
                    fprintf(stderr, PROG ": (no log)\n");
            }
            die("%s exited (status %d) before listening on port %d", name,
                WIFEXITED(st) ? WEXITSTATUS(st) : 128 + WTERMSIG(st), port);
        }
        int fd = connect_loopback(port);
        if (fd >= 0) {
            close(fd);
            return;
        }
        struct timespec ts = {0, 10000000};
        nanosleep(&ts, NULL);
    }
    die("%s did not listen on port %d within 10 s", name, port);
}

void supervise_adopt(pid_t pid, const char *name)
{
    for (int i = 0; i < MAX_SERVERS; i++)
        if (server_pid[i] == 0) {
            server_pid[i] = pid;
            server_name[i] = name;
            return;
        }
    kill(pid, SIGKILL);
    die("too many servers");
}

void supervise_reap(pid_t pid)
{
    for (int i = 0; i < MAX_SERVERS; i++)
        if (server_pid[i] == pid) {
            waitpid(pid, NULL, 0);
            server_pid[i] = 0;
        }
}

/* ------------------------------------------------------------------------------------------ */
/* The Milters.                                                                                */

void start_noop(const char *noop, const char *mode, int port)
{
    char portstr[16];
    snprintf(portstr, sizeof portstr, "%d", port);
    char *argv[] = {(char *)noop, portstr, (char *)mode, NULL};
    start_server(strcmp(mode, "reply") == 0 ? "noop-reply" : "noop-noreply", argv, port, NULL);
}

int start_opendkim(void)
{
    char cmd[512], path[160], conf[1024], log[160];
    snprintf(log, sizeof log, "%s/genkey.log", workdir);
    snprintf(cmd, sizeof cmd, "opendkim-genkey -D '%s' -d example.org -s bench >'%s' 2>&1",
             workdir, log);
    if (system(cmd) != 0) {
        snprintf(cmd, sizeof cmd, "cat '%s' >&2", log);
        if (system(cmd) != 0)
            fprintf(stderr, PROG ": (no output)\n");
        die("opendkim-genkey failed: is opendkim-tools installed?");
    }
    snprintf(path, sizeof path, "%s/bench.private", workdir);
    chmod(path, 0600);
    int port = free_port();
    snprintf(conf, sizeof conf,
             "Socket inet:%d@127.0.0.1\n"
             "Mode s\n"
             "Domain example.org\n"
             "Selector bench\n"
             "KeyFile %s\n"
             "InternalHosts 127.0.0.0/8\n"
             "Background no\n"
             "Syslog no\n"
             "Nameservers 127.0.0.1\n"
             "RequireSafeKeys no\n",
             port, path);
    snprintf(path, sizeof path, "%s/opendkim.conf", workdir);
    write_file(path, conf);
    snprintf(log, sizeof log, "%s/opendkim.log", workdir);
    char *argv[] = {"opendkim", "-f", "-x", path, NULL};
    start_server("opendkim", argv, port, log);
    return port;
}

void supervise_setup(void)
{
    snprintf(workdir, sizeof workdir, "/tmp/sfbench.XXXXXX");
    if (mkdtemp(workdir) == NULL) {
        workdir[0] = '\0';
        die("mkdtemp: %s", strerror(errno));
    }
    atexit(at_exit);
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = on_signal;
    sigaction(SIGINT, &sa, NULL);
    sigaction(SIGTERM, &sa, NULL);
    sigaction(SIGHUP, &sa, NULL);
    signal(SIGPIPE, SIG_IGN);
}
