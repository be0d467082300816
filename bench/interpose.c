/* See interpose.h. A round trip is a read that returns data on a socket written to since that
 * socket's last such read. */
#define _GNU_SOURCE
#include "interpose.h"
#include "util.h"

#include <dlfcn.h>
#include <sys/socket.h>
#include <sys/uio.h>
#include <unistd.h>

__thread int t_mode;
__thread struct iostat t_io;
__thread int t_lastfd = -1;
__thread uint64_t t_sys_ticks;
int ticking;

/* Around each real call: its ticks added to t_sys_ticks, when ticking. */
static inline uint64_t kernel_in(void)
{
    return ticking ? ticks_now() : 0;
}

static inline void kernel_out(uint64_t t0)
{
    if (ticking)
        t_sys_ticks += ticks_now() - t0;
}

#define FD_SLOTS 65536
/* Per fd: 1 a TCP socket created while a mode was set; 2 also written since its last read. */
static unsigned char fd_state[FD_SLOTS];

static ssize_t (*real_send)(int, const void *, size_t, int);
static ssize_t (*real_sendto)(int, const void *, size_t, int, const struct sockaddr *, socklen_t);
static ssize_t (*real_sendmsg)(int, const struct msghdr *, int);
static ssize_t (*real_write)(int, const void *, size_t);
static ssize_t (*real_writev)(int, const struct iovec *, int);
static ssize_t (*real_recv)(int, void *, size_t, int);
static ssize_t (*real_recvfrom)(int, void *, size_t, int, struct sockaddr *, socklen_t *);
static ssize_t (*real_recvmsg)(int, struct msghdr *, int);
static ssize_t (*real_read)(int, void *, size_t);
static ssize_t (*real_readv)(int, const struct iovec *, int);
static int (*real_socket)(int, int, int);
static int (*real_connect)(int, const struct sockaddr *, socklen_t);
static int (*real_close)(int);
static int (*real_setsockopt)(int, int, int, const void *, socklen_t);

static void *next_sym(const char *name)
{
    void *p = dlsym(RTLD_NEXT, name);
    if (p == NULL) {
        static const char msg[] = PROG ": dlsym(RTLD_NEXT) failed for a socket call\n";
        if (real_write != NULL)
            (void)real_write(2, msg, sizeof msg - 1);
        _exit(70);
    }
    return p;
}

__attribute__((constructor)) static void resolve_real(void)
{
    *(void **)&real_write = next_sym("write");
    *(void **)&real_send = next_sym("send");
    *(void **)&real_sendto = next_sym("sendto");
    *(void **)&real_sendmsg = next_sym("sendmsg");
    *(void **)&real_writev = next_sym("writev");
    *(void **)&real_recv = next_sym("recv");
    *(void **)&real_recvfrom = next_sym("recvfrom");
    *(void **)&real_recvmsg = next_sym("recvmsg");
    *(void **)&real_read = next_sym("read");
    *(void **)&real_readv = next_sym("readv");
    *(void **)&real_socket = next_sym("socket");
    *(void **)&real_connect = next_sym("connect");
    *(void **)&real_close = next_sym("close");
    *(void **)&real_setsockopt = next_sym("setsockopt");
}

static int counted(int fd)
{
    return t_mode != M_NONE && fd >= 0 && fd < FD_SLOTS && fd_state[fd] != 0;
}

static void count_write(int fd, ssize_t n)
{
    if (!counted(fd))
        return;
    if (n > 0) {
        t_io.writes++;
        t_io.wbytes += (uint64_t)n;
        fd_state[fd] = 2;
        t_lastfd = fd;
    } else {
        t_io.other++;
    }
}

static void count_read(int fd, ssize_t n, int flags)
{
    if (!counted(fd))
        return;
    if (n > 0 && !(flags & MSG_PEEK)) {
        t_io.reads++;
        t_io.rbytes += (uint64_t)n;
        if (fd_state[fd] == 2)
            t_io.rtt++;
        fd_state[fd] = 1;
    } else {
        t_io.other++;
    }
}

int socket(int domain, int type, int protocol)
{
    uint64_t t0 = kernel_in();
    int fd = real_socket(domain, type, protocol);
    kernel_out(t0);
    if (fd >= 0 && fd < FD_SLOTS)
        fd_state[fd] = (t_mode != M_NONE && (domain == AF_INET || domain == AF_INET6) &&
                        (type & 0xf) == SOCK_STREAM)
                           ? 1
                           : 0;
    return fd;
}

int connect(int fd, const struct sockaddr *addr, socklen_t len)
{
    if (counted(fd))
        t_io.connects++;
    uint64_t t0 = kernel_in();
    int r = real_connect(fd, addr, len);
    kernel_out(t0);
    return r;
}

int close(int fd)
{
    if (fd >= 0 && fd < FD_SLOTS)
        fd_state[fd] = 0;
    uint64_t t0 = kernel_in();
    int r = real_close(fd);
    kernel_out(t0);
    return r;
}

int setsockopt(int fd, int level, int name, const void *val, socklen_t len)
{
    if (counted(fd))
        t_io.sockopts++;
    uint64_t t0 = kernel_in();
    int r = real_setsockopt(fd, level, name, val, len);
    kernel_out(t0);
    return r;
}

ssize_t send(int fd, const void *buf, size_t len, int flags)
{
    uint64_t t0 = kernel_in();
    ssize_t n = real_send(fd, buf, len, flags);
    kernel_out(t0);
    count_write(fd, n);
    return n;
}

ssize_t sendto(int fd, const void *buf, size_t len, int flags, const struct sockaddr *to,
               socklen_t tolen)
{
    uint64_t t0 = kernel_in();
    ssize_t n = real_sendto(fd, buf, len, flags, to, tolen);
    kernel_out(t0);
    count_write(fd, n);
    return n;
}

ssize_t sendmsg(int fd, const struct msghdr *msg, int flags)
{
    uint64_t t0 = kernel_in();
    ssize_t n = real_sendmsg(fd, msg, flags);
    kernel_out(t0);
    count_write(fd, n);
    return n;
}

ssize_t write(int fd, const void *buf, size_t len)
{
    uint64_t t0 = kernel_in();
    ssize_t n = real_write(fd, buf, len);
    kernel_out(t0);
    count_write(fd, n);
    return n;
}

ssize_t writev(int fd, const struct iovec *iov, int cnt)
{
    uint64_t t0 = kernel_in();
    ssize_t n = real_writev(fd, iov, cnt);
    kernel_out(t0);
    count_write(fd, n);
    return n;
}

ssize_t recv(int fd, void *buf, size_t len, int flags)
{
    uint64_t t0 = kernel_in();
    ssize_t n = real_recv(fd, buf, len, flags);
    kernel_out(t0);
    count_read(fd, n, flags);
    return n;
}

ssize_t recvfrom(int fd, void *buf, size_t len, int flags, struct sockaddr *from,
                 socklen_t *fromlen)
{
    uint64_t t0 = kernel_in();
    ssize_t n = real_recvfrom(fd, buf, len, flags, from, fromlen);
    kernel_out(t0);
    count_read(fd, n, flags);
    return n;
}

ssize_t recvmsg(int fd, struct msghdr *msg, int flags)
{
    uint64_t t0 = kernel_in();
    ssize_t n = real_recvmsg(fd, msg, flags);
    kernel_out(t0);
    count_read(fd, n, flags);
    return n;
}

ssize_t read(int fd, void *buf, size_t len)
{
    uint64_t t0 = kernel_in();
    ssize_t n = real_read(fd, buf, len);
    kernel_out(t0);
    count_read(fd, n, 0);
    return n;
}

ssize_t readv(int fd, const struct iovec *iov, int cnt)
{
    uint64_t t0 = kernel_in();
    ssize_t n = real_readv(fd, iov, cnt);
    kernel_out(t0);
    count_read(fd, n, 0);
    return n;
}

void io_add(struct iostat *to, const struct iostat *from)
{
    to->writes += from->writes;
    to->wbytes += from->wbytes;
    to->reads += from->reads;
    to->rbytes += from->rbytes;
    to->rtt += from->rtt;
    to->other += from->other;
    to->connects += from->connects;
    to->sockopts += from->sockopts;
}
