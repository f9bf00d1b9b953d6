#define _GNU_SOURCE
#include "CFanoutSpawn.h"

#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <signal.h>
#include <spawn.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

int fanout_spawn(const char *file, char *const argv[], char *const envp[], const char *cwd,
                 const int fds[4], pid_t *pid) {
    posix_spawn_file_actions_t actions;
    posix_spawnattr_t attributes;
    int rc = posix_spawn_file_actions_init(&actions);
    if (rc != 0) return rc;
    rc = posix_spawnattr_init(&attributes);
    if (rc != 0) {
        posix_spawn_file_actions_destroy(&actions);
        return rc;
    }
    if (cwd != NULL) rc = posix_spawn_file_actions_addchdir_np(&actions, cwd);
    for (int target = 0; rc == 0 && target < 4; target++) {
        rc = posix_spawn_file_actions_adddup2(&actions, fds[target], target);
    }
    // Descriptors other threads of the daemon open without O_CLOEXEC must not leak into the child.
    if (rc == 0) rc = posix_spawn_file_actions_addclosefrom_np(&actions, 4);

    sigset_t empty, defaults;
    sigemptyset(&empty);
    // The daemon may ignore SIGPIPE or block signals; a command expects the defaults.
    sigfillset(&defaults);
    sigdelset(&defaults, SIGKILL);
    sigdelset(&defaults, SIGSTOP);
    if (rc == 0) rc = posix_spawnattr_setsigmask(&attributes, &empty);
    if (rc == 0) rc = posix_spawnattr_setsigdefault(&attributes, &defaults);
    // Its own group (pgid = its pid), so stopping it reaches everything it started.
    if (rc == 0) rc = posix_spawnattr_setpgroup(&attributes, 0);
    if (rc == 0) {
        rc = posix_spawnattr_setflags(&attributes,
                                      POSIX_SPAWN_SETPGROUP | POSIX_SPAWN_SETSIGMASK | POSIX_SPAWN_SETSIGDEF);
    }
    if (rc == 0) rc = posix_spawnp(pid, file, &actions, &attributes, argv, envp);
    posix_spawnattr_destroy(&attributes);
    posix_spawn_file_actions_destroy(&actions);
    return rc;
}

static int move_above_stdio(int fd) {
    if (fd >= 4) return fd;
    int moved = fcntl(fd, F_DUPFD_CLOEXEC, 4);
    int error = errno;
    close(fd);
    return moved < 0 ? -error : moved;
}

int fanout_pipe(int fds[2], int nonblocking_end) {
    int raw[2];
    if (pipe2(raw, O_CLOEXEC) < 0) return -errno;
    int read_end = move_above_stdio(raw[0]);
    int write_end = move_above_stdio(raw[1]);
    if (read_end < 0 || write_end < 0) {
        if (read_end >= 0) close(read_end);
        if (write_end >= 0) close(write_end);
        return read_end < 0 ? read_end : write_end;
    }
    int ours = nonblocking_end == 0 ? read_end : write_end;
    int flags = fcntl(ours, F_GETFL);
    if (flags < 0 || fcntl(ours, F_SETFL, flags | O_NONBLOCK) < 0) {
        int error = errno;
        close(read_end);
        close(write_end);
        return -error;
    }
    fds[0] = read_end;
    fds[1] = write_end;
    return 0;
}

int fanout_pipe_capacity(int fd) {
    int size = fcntl(fd, F_GETPIPE_SZ);
    return size < 0 ? -errno : size;
}

int fanout_pidfd_open(pid_t pid) {
    // Through syscall(2): glibc's wrapper is newer than the kernel call.
    long fd = syscall(SYS_pidfd_open, pid, 0);
    return fd < 0 ? -errno : (int)fd;
}

int fanout_has_exited(pid_t pid) {
    siginfo_t info;
    memset(&info, 0, sizeof info);
    int rc;
    do {
        rc = waitid(P_PID, (id_t)pid, &info, WEXITED | WNOHANG | WNOWAIT);
    } while (rc < 0 && errno == EINTR);
    // ECHILD: nothing left to wait for; the reap reports it.
    if (rc < 0) return errno == ECHILD ? 1 : -errno;
    return info.si_pid != 0;
}

int fanout_reap(pid_t pid, int *exit_status, int *term_signal) {
    int status = 0;
    pid_t rc;
    do {
        rc = waitpid(pid, &status, 0);
    } while (rc < 0 && errno == EINTR);
    if (rc < 0) return -errno;
    *exit_status = WIFEXITED(status) ? WEXITSTATUS(status) : -1;
    *term_signal = WIFSIGNALED(status) ? WTERMSIG(status) : 0;
    return 0;
}

ssize_t fanout_read(int fd, void *buffer, size_t count) {
    ssize_t n;
    do {
        n = read(fd, buffer, count);
    } while (n < 0 && errno == EINTR);
    return n < 0 ? -errno : n;
}

ssize_t fanout_write(int fd, const void *buffer, size_t count) {
    // Block SIGPIPE on this thread for the write; if the write raised it,
    // take it off the pending set before restoring the mask, so the daemon
    // never sees it (it is not ours to set a process-wide disposition).
    sigset_t sigpipe, previous, pending;
    sigemptyset(&sigpipe);
    sigaddset(&sigpipe, SIGPIPE);
    pthread_sigmask(SIG_BLOCK, &sigpipe, &previous);
    sigpending(&pending);
    int was_pending = sigismember(&pending, SIGPIPE);
    ssize_t n;
    do {
        n = write(fd, buffer, count);
    } while (n < 0 && errno == EINTR);
    int error = errno;
    if (n < 0 && error == EPIPE && !was_pending) {
        struct timespec now = {0, 0};
        while (sigtimedwait(&sigpipe, NULL, &now) < 0 && errno == EINTR) {}
    }
    pthread_sigmask(SIG_SETMASK, &previous, NULL);
    return n < 0 ? -error : n;
}

const char *fanout_signal_name(int signal) {
    return sigabbrev_np(signal);
}

int fanout_epoll_create(void) {
    int fd = epoll_create1(EPOLL_CLOEXEC);
    return fd < 0 ? -errno : fd;
}

int fanout_epoll_arm(int epfd, int fd, int writable) {
    struct epoll_event event;
    memset(&event, 0, sizeof event);
    event.events = (writable ? EPOLLOUT : EPOLLIN) | EPOLLONESHOT;
    event.data.fd = fd;
    if (epoll_ctl(epfd, EPOLL_CTL_MOD, fd, &event) == 0) return 0;
    if (errno != ENOENT) return -errno;
    if (epoll_ctl(epfd, EPOLL_CTL_ADD, fd, &event) == 0) return 0;
    return -errno;
}

int fanout_epoll_add_persistent(int epfd, int fd) {
    struct epoll_event event;
    memset(&event, 0, sizeof event);
    event.events = EPOLLIN;
    event.data.fd = fd;
    return epoll_ctl(epfd, EPOLL_CTL_ADD, fd, &event) == 0 ? 0 : -errno;
}

int fanout_epoll_remove(int epfd, int fd) {
    return epoll_ctl(epfd, EPOLL_CTL_DEL, fd, NULL) == 0 ? 0 : -errno;
}

int fanout_epoll_wait(int epfd, int32_t *fds, int capacity, int timeout_ms) {
    struct epoll_event events[64];
    if (capacity > 64) capacity = 64;
    int n = epoll_wait(epfd, events, capacity, timeout_ms);
    if (n < 0) return -errno;
    for (int i = 0; i < n; i++) fds[i] = events[i].data.fd;
    return n;
}

int fanout_eventfd(void) {
    int fd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
    return fd < 0 ? -errno : fd;
}

void fanout_eventfd_signal(int fd) {
    uint64_t one = 1;
    // EAGAIN only when the counter is saturated: a wake-up is pending anyway.
    while (write(fd, &one, sizeof one) < 0 && errno == EINTR) {}
}

void fanout_eventfd_drain(int fd) {
    uint64_t value;
    while (read(fd, &value, sizeof value) < 0 && errno == EINTR) {}
}
