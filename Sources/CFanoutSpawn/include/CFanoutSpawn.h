#ifndef CFANOUTSPAWN_H
#define CFANOUTSPAWN_H

#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

// Process and descriptor primitives for the exec runner (Linux). Functions
// return 0 (or a count / descriptor) on success and a negated errno on
// failure, so Swift never has to read errno after the fact.

/// Spawns `file` (looked up in the daemon's PATH when it has no slash, as
/// execvp does) in a new process group, with `fds[0..3]` as its descriptors
/// 0-3, nothing else open, default signal dispositions and an empty signal
/// mask, running in `cwd` when not NULL. Returns 0 or a positive errno.
int fanout_spawn(const char *file, char *const argv[], char *const envp[], const char *cwd,
                 const int fds[4], pid_t *pid);

/// A close-on-exec pipe whose two ends are numbered 4 or above (so the
/// spawn's dup2 onto 0-3 never clobbers another source descriptor);
/// `nonblocking_end` (0 or 1) is made non-blocking: the daemon's side.
int fanout_pipe(int fds[2], int nonblocking_end);

/// How many bytes the pipe holds at most.
int fanout_pipe_capacity(int fd);

/// A descriptor that becomes readable when process `pid` exits.
int fanout_pidfd_open(pid_t pid);

/// Whether child `pid` has exited, without reaping it: 1 yes, 0 no.
int fanout_has_exited(pid_t pid);

/// Reaps child `pid`: `*exit_status` is its exit status (or -1), `*term_signal`
/// the signal that killed it (or 0).
int fanout_reap(pid_t pid, int *exit_status, int *term_signal);

ssize_t fanout_read(int fd, void *buffer, size_t count);

/// write(2) that returns -EPIPE instead of raising SIGPIPE in the daemon when
/// the child closed its end, whatever the daemon's SIGPIPE disposition.
ssize_t fanout_write(int fd, const void *buffer, size_t count);

/// "TERM" for SIGTERM; NULL when the number has no name.
const char *fanout_signal_name(int signal);

int fanout_epoll_create(void);
/// Arms a one-shot readiness notification for `fd` (`writable` 0: readable),
/// adding it to the set or re-arming it.
int fanout_epoll_arm(int epfd, int fd, int writable);
/// Adds `fd` for readable notifications that stay armed (the wake-up eventfd).
int fanout_epoll_add_persistent(int epfd, int fd);
int fanout_epoll_remove(int epfd, int fd);
/// Waits up to `timeout_ms` (-1: no limit); fills `fds` with the ready descriptors.
int fanout_epoll_wait(int epfd, int32_t *fds, int capacity, int timeout_ms);

int fanout_eventfd(void);
void fanout_eventfd_signal(int fd);
void fanout_eventfd_drain(int fd);

#endif
