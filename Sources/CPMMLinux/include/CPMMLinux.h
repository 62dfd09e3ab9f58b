// Linux system calls Swift's Glibc module does not import: epoll(7). The kernel's `struct epoll_event` is
// packed on x86_64 and not elsewhere, so Swift sees a plain struct of our own and these functions translate.
#pragma once
#include <stdint.h>

/// One ready descriptor: the token it was registered with and its events (EPOLLIN, EPOLLOUT, EPOLLERR, EPOLLHUP).
typedef struct {
    uint64_t token;
    uint32_t events;
} pmm_epoll_ready;

extern const uint32_t PMM_EPOLLIN;
extern const uint32_t PMM_EPOLLOUT;
extern const uint32_t PMM_EPOLLERR;
extern const uint32_t PMM_EPOLLHUP;
extern const int PMM_EPOLL_CTL_ADD;
extern const int PMM_EPOLL_CTL_MOD;
extern const int PMM_EPOLL_CTL_DEL;

/// epoll_create1(EPOLL_CLOEXEC).
int pmm_epoll_create(void);
/// epoll_ctl with an event of `events` and `token`.
int pmm_epoll_ctl(int epfd, int op, int fd, uint32_t events, uint64_t token);
/// epoll_wait into `ready` (at most `capacity`, which must be at most 1024).
int pmm_epoll_wait(int epfd, pmm_epoll_ready *ready, int capacity, int timeout);

/// pthread_setname_np for the calling thread (a GNU extension Glibc's module leaves out); at most 15 bytes.
int pmm_set_thread_name(const char *name);
/// sched_setaffinity of the calling thread to the one CPU `cpu` (CPU_SET is a macro Swift cannot call).
int pmm_pin_thread(int cpu);
