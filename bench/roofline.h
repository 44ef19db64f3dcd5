/* What this machine can do at best, measured rather than assumed: the rate of libxsmm's GEMM
 * kernels on operands that stay in cache, and the memory bandwidth of a STREAM-like triad.
 * bench/conv_bn builds its roofline from these two numbers (see docs/speed.md). */
#ifndef BENCH_ROOFLINE_H
#define BENCH_ROOFLINE_H

#include <stddef.h>

/* GFLOP/s of one libxsmm kernel for the row-major product C[m, n] (+)= A[m, k] B[k, n]
 * (beta 1 when accumulate), called over and over on the same operands (they stay in cache),
 * on `threads` threads at once, each with operands of its own: the best of `rounds` rounds
 * of about `flops_per_round` floating-point operations per thread. -1 on failure. */
double xsmm_gemm_gflops(int m, int n, int k, int accumulate, int threads, double flops_per_round,
                        int rounds);

/* The same kernel streamed over `batch` distinct operand sets (as a convolution lowered to
 * one GEMM per image runs it): A shared, B and C per image. -1 on failure. */
double xsmm_gemm_batch_gflops(int m, int n, int k, int accumulate, int batch, int threads,
                              int rounds);

/* GB/s of the triad a[i] = b[i] + s * c[i] over three arrays of `floats` elements, split
 * evenly over `threads` threads, best of `rounds`. Counts 12 bytes per element (two reads,
 * one write), as STREAM does: write-allocate traffic is not counted. -1 on failure. */
double triad_gbs(size_t floats, int threads, int rounds);

#endif
