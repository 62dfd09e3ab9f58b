#define _GNU_SOURCE
#include "CPMMLinux.h"
#include <pthread.h>

int pmm_set_thread_name(const char *name) { return pthread_setname_np(pthread_self(), name); }
