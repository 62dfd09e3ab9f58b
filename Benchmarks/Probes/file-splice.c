// What moving a file's bytes into a pipe with splice(2) saves against pread(2) and write(2): a probe, not part
// of pmm (the question was whether an at-least-once spool could feed consumers' pipes without a copy). It writes
// 256 MiB into a file (so it is in the page cache), then moves 1 GiB from it into a 1 MiB pipe that a thread
// drains 256 KiB at a time, in 256 KiB pieces:
//
//   mode 0: pread into a buffer, write it to the pipe
//   mode 1: pread (as the router reads a spool back to route it), then splice the same bytes file -> pipe
//
//   cc -O2 -pthread -o file-splice Benchmarks/Probes/file-splice.c && ./file-splice 0 && ./file-splice 1
// (It writes /tmp/fsplice.dat, removed at the end.)
#define _GNU_SOURCE
#include <fcntl.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>
static int P[2]; static long TOTAL = 1L << 30;
static void *consumer(void *x) { static char buf[1 << 18]; long got = 0; ssize_t n; while ((n = read(P[0], buf, sizeof buf)) > 0) got += n; *(long *)x = got; return 0; }
int main(int argc, char **argv) {
    int mode = atoi(argv[1]);
    int fd = open("/tmp/fsplice.dat", O_RDWR | O_CREAT | O_TRUNC, 0600);
    static char chunk[1 << 20]; memset(chunk, 'x', sizeof chunk);
    for (long o = 0; o < (256L << 20); o += sizeof chunk) write(fd, chunk, sizeof chunk);  // 256 MiB in page cache
    pipe(P); fcntl(P[1], F_SETPIPE_SZ, 1 << 20);
    pthread_t c; long got = 0; pthread_create(&c, 0, consumer, &got);
    struct timespec t0, t1; clock_gettime(CLOCK_MONOTONIC, &t0);
    static char buf[1 << 18];
    long moved = 0; loff_t off = 0;
    while (moved < TOTAL) {
        if (off >= (256L << 20)) off = 0;
        if (mode == 0) { ssize_t r = pread(fd, buf, sizeof buf, off); ssize_t w = 0; while (w < r) w += write(P[1], buf + w, r - w); off += r; moved += r; }
        else if (mode == 1) { ssize_t r = pread(fd, buf, sizeof buf, off); loff_t o2 = off; ssize_t s = 0; while (s < r) { ssize_t k = splice(fd, &o2, P[1], NULL, r - s, SPLICE_F_MOVE); if (k <= 0) { perror("splice"); return 1; } s += k; } off += r; moved += r; }
    }
    close(P[1]); pthread_join(c, 0); clock_gettime(CLOCK_MONOTONIC, &t1);
    struct timespec cpu; clock_gettime(CLOCK_THREAD_CPUTIME_ID, &cpu);
    double s = (t1.tv_sec - t0.tv_sec) + (t1.tv_nsec - t0.tv_nsec) / 1e9;
    printf("mode %d: %.2f GB/s, sender CPU %.2f s\n", mode, got / s / 1e9, cpu.tv_sec + cpu.tv_nsec / 1e9);
    unlink("/tmp/fsplice.dat"); return 0;
}
