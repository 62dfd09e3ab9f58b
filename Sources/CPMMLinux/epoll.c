#include "CPMMLinux.h"
#include <sys/epoll.h>

const uint32_t PMM_EPOLLIN = EPOLLIN;
const uint32_t PMM_EPOLLOUT = EPOLLOUT;
const uint32_t PMM_EPOLLERR = EPOLLERR;
const uint32_t PMM_EPOLLHUP = EPOLLHUP;
const int PMM_EPOLL_CTL_ADD = EPOLL_CTL_ADD;
const int PMM_EPOLL_CTL_MOD = EPOLL_CTL_MOD;
const int PMM_EPOLL_CTL_DEL = EPOLL_CTL_DEL;

int pmm_epoll_create(void) { return epoll_create1(EPOLL_CLOEXEC); }

int pmm_epoll_ctl(int epfd, int op, int fd, uint32_t events, uint64_t token) {
    struct epoll_event event = {.events = events, .data = {.u64 = token}};
    return epoll_ctl(epfd, op, fd, &event);
}

int pmm_epoll_wait(int epfd, pmm_epoll_ready *ready, int capacity, int timeout) {
    struct epoll_event events[1024];
    if (capacity > 1024) capacity = 1024;
    int n = epoll_wait(epfd, events, capacity, timeout);
    for (int i = 0; i < n; i++) {
        ready[i].token = events[i].data.u64;
        ready[i].events = events[i].events;
    }
    return n;
}
