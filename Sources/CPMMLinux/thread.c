#define _GNU_SOURCE
#include "CPMMLinux.h"
#include <pthread.h>
#include <sched.h>

int pmm_set_thread_name(const char *name) { return pthread_setname_np(pthread_self(), name); }

int pmm_pin_thread(int cpu) {
    cpu_set_t set;
    CPU_ZERO(&set);
    CPU_SET(cpu, &set);
    return sched_setaffinity(0, sizeof(set), &set);
}
