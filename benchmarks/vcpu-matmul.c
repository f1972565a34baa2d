// Usage: gcc -O3 -march=native -o /tmp/vcpu-matmul benchmarks/vcpu-matmul.c &&
//        for c in 0 1 0 1; do taskset -c $c /tmp/vcpu-matmul 8; done        (issue 17)
// Are this machine's vCPUs equally fast? A single-precision matrix product small enough for a
// core's L2 (192x192, SIMD from the compiler), 20 times per sample; prints GFLOP/s per sample.
// Pinned to one vCPU with taskset, it shows what a pool's helper gets on the core the scheduler
// gives it (a tab's second worker runs where the first is not: benchmarks/bell-ab.log's
// /proc/stat lines).
#include <stdio.h>
#include <stdlib.h>
#include <time.h>
#define N 192
static float A[N][N], B[N][N], C[N][N];
static double now(void) {
  struct timespec t;
  clock_gettime(CLOCK_MONOTONIC, &t);
  return t.tv_sec + t.tv_nsec / 1e9;
}
int main(int argc, char **argv) {
  int samples = argc > 1 ? atoi(argv[1]) : 8;
  for (int i = 0; i < N; i++)
    for (int j = 0; j < N; j++) A[i][j] = i + j, B[i][j] = i - j;
  for (int s = 0; s < samples; s++) {
    double t = now();
    for (int r = 0; r < 20; r++)
      for (int i = 0; i < N; i++)
        for (int l = 0; l < N; l++) {
          float a = A[i][l];
          for (int j = 0; j < N; j++) C[i][j] += a * B[l][j];
        }
    printf("%.1f ", 20.0 * 2 * N * N * N / (now() - t) / 1e9);
    fflush(stdout);
  }
  printf("(C[1][1] %g)\n", C[1][1]);
  return 0;
}
