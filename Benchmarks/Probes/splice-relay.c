// What a relay gains by moving bytes between pipes with tee(2) and splice(2) instead of read(2) and write(2):
// a probe, not part of pmm. One producer thread writes 64 KiB batches of 4032-byte frames (a two-byte varint
// length and 4030 bytes) into pipe A, a relay moves whole frames from A to pipe B, a consumer thread reads B
// 256 KiB at a time and checks that every frame arrived whole. All pipes are 1 MiB.
//
//   mode 0: read 256 KiB from A, write the whole frames to B (the minimal relay of `pmm bench`)
//   mode 1: the same with one more memcpy of the frames (what the router's queue costs)
//   mode 2: tee up to 256 KiB of A into a private pipe, read that to find the whole frames, splice them A -> B
//
//   cc -O2 -pthread -o splice-relay Benchmarks/Probes/splice-relay.c && ./splice-relay 2 1000000
#define _GNU_SOURCE
#include <fcntl.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>
#include <stdint.h>

enum { PAY = 4030, FRAME = PAY + 2 };
static long COUNT = 1000000;
static int A[2], B[2], S[2];
static int mode;

static void *producer(void *x) {
    static uint8_t batch[65536];
    int per = sizeof batch / FRAME; size_t len = per * FRAME;
    for (int i = 0; i < per; i++) { uint8_t *f = batch + i * FRAME; f[0] = 0x80 | (PAY & 0x7f); f[1] = PAY >> 7; memset(f + 2, 'a', PAY); }
    long sent = 0;
    while (sent < COUNT) { int n = per; if (COUNT - sent < n) n = COUNT - sent; size_t l = n * FRAME, o = 0; while (o < l) { ssize_t w = write(A[1], batch + o, l - o); if (w < 0) { perror("w"); exit(1);} o += w; } sent += n; }
    close(A[1]); return 0;
}
static void *consumer(void *x) {
    static uint8_t buf[1 << 18]; long got = 0, bytes = 0; ssize_t n;
    while ((n = read(B[0], buf, sizeof buf)) > 0) bytes += n;
    got = bytes / FRAME; if (bytes % FRAME) { fprintf(stderr, "torn %ld\n", bytes); exit(1); }
    *(long *)x = got; return 0;
}
static size_t whole(uint8_t *b, size_t n) { size_t o = 0; while (o + 2 <= n) { size_t l = (b[o] & 0x7f) | (b[o+1] << 7); if (o + 2 + l > n) break; o += 2 + l; } return o; }
static void relay(void) {
    static uint8_t buf[1 << 20], q[1 << 20]; size_t end = 0;
    for (;;) {
        if (mode == 2) { // tee + read + splice
            ssize_t t = tee(A[0], S[1], 1 << 18, 0);
            if (t == 0) break; if (t < 0) { perror("tee"); exit(1); }
            size_t got = 0; while (got < (size_t)t) { ssize_t r = read(S[0], buf + got, t - got); if (r <= 0) { perror("rs"); exit(1);} got += r; }
            size_t w = whole(buf, got);
            if (w == 0) { /* partial: wait for more */ usleep(10); continue; }
            size_t done = 0; while (done < w) { ssize_t s = splice(A[0], 0, B[1], 0, w - done, SPLICE_F_MOVE); if (s <= 0) { perror("splice"); exit(1);} done += s; }
            continue;
        }
        ssize_t r = read(A[0], buf + end, (1 << 18));
        if (r == 0) break; if (r < 0) { perror("r"); exit(1); }
        end += r; size_t w = whole(buf, end);
        uint8_t *src = buf;
        if (mode == 1) { memcpy(q, buf, w); src = q; }
        size_t o = 0; while (o < w) { ssize_t x = write(B[1], src + o, w - o); if (x < 0) { perror("wb"); exit(1);} o += x; }
        memmove(buf, buf + w, end - w); end -= w;
    }
    close(B[1]);
}
int main(int argc, char **argv) {
    mode = atoi(argv[1]); if (argc > 2) COUNT = atol(argv[2]);
    pipe(A); pipe(B); pipe(S);
    fcntl(A[0], F_SETPIPE_SZ, 1 << 20); fcntl(B[0], F_SETPIPE_SZ, 1 << 20); fcntl(S[0], F_SETPIPE_SZ, 1 << 20);
    struct timespec t0, t1; clock_gettime(CLOCK_MONOTONIC, &t0);
    pthread_t p, c; long got = 0; pthread_create(&p, 0, producer, 0); pthread_create(&c, 0, consumer, &got);
    relay(); pthread_join(p, 0); pthread_join(c, 0);
    clock_gettime(CLOCK_MONOTONIC, &t1);
    struct timespec cpu; clock_gettime(CLOCK_THREAD_CPUTIME_ID, &cpu);
    double s = (t1.tv_sec - t0.tv_sec) + (t1.tv_nsec - t0.tv_nsec) / 1e9;
    printf("mode %d: %ld frames, %.0f msg/s, relay CPU %.2f s\n", mode, got, got / s, cpu.tv_sec + cpu.tv_nsec / 1e9);
    return got != COUNT;
}
