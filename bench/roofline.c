/* Peak GEMM rate (libxsmm) and memory bandwidth (triad), measured on this machine.
 * Threads come from OpenMP (the library is built with it); each thread works on memory it
 * touched first, so the numbers are what the cores and memory give, not page faults. */
#include "roofline.h"
#include "timing.h"

#include <libxsmm.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#ifdef _OPENMP
#include <omp.h>
#endif

static float *aligned_floats(size_t n, float value)
{
    float *p = NULL;
    if (posix_memalign((void **)&p, 64, (n ? n : 1) * sizeof *p) != 0)
        return NULL;
    for (size_t i = 0; i < n; i++)
        p[i] = value;
    return p;
}

/* libxsmm is column-major: the row-major C[m, n] = A[m, k] B[k, n] is the column-major
 * C^T[n, m] = B^T[n, k] A^T[k, m], i.e. the kernel (n, m, k) called with (B, A, C). */
static libxsmm_smmfunction dispatch(int m, int n, int k, int accumulate)
{
    float alpha = 1, beta = accumulate ? 1.0f : 0.0f;
    return libxsmm_smmdispatch(n, m, k, NULL, NULL, NULL, &alpha, &beta, NULL, NULL);
}

/* Runs `calls` calls of f per thread over `sets` operand sets, `rounds` times; best rate. */
static double run_kernel(libxsmm_smmfunction f, int m, int n, int k, int sets, long calls,
                         int threads, int rounds)
{
    double best = 0;
    int failed = 0;
#pragma omp parallel num_threads(threads) reduction(+ : failed)
    {
        size_t a_n = (size_t)m * k, b_n = (size_t)k * n, c_n = (size_t)m * n;
        float *a = aligned_floats(a_n, 0.001f);
        float *b = aligned_floats(b_n * (size_t)sets, 0.002f);
        float *c = aligned_floats(c_n * (size_t)sets, 0.0f);
        failed += !a || !b || !c;
        if (a && b && c)
            f(b, a, c); /* first call: warm the code and the operands */
        for (int r = 0; r < rounds; r++) {
            double t0 = 0;
#pragma omp barrier
#pragma omp master
            t0 = bench_now();
            if (a && b && c)
                for (long i = 0; i < calls; i++) {
                    int s = (int)(i % sets);
                    f(b + (size_t)s * b_n, a, c + (size_t)s * c_n);
                }
#pragma omp barrier
#pragma omp master
            {
                double rate = 2.0 * m * n * k * (double)calls * threads / (bench_now() - t0) * 1e-9;
                if (rate > best)
                    best = rate;
            }
        }
        free(a), free(b), free(c);
    }
    return failed ? -1 : best;
}

double xsmm_gemm_gflops(int m, int n, int k, int accumulate, int threads, double flops_per_round,
                        int rounds)
{
    libxsmm_smmfunction f = dispatch(m, n, k, accumulate);
    if (!f)
        return -1;
    long calls = (long)(flops_per_round / (2.0 * m * n * k)) + 1;
    return run_kernel(f, m, n, k, 1, calls, threads, rounds);
}

double xsmm_gemm_batch_gflops(int m, int n, int k, int accumulate, int batch, int threads,
                              int rounds)
{
    libxsmm_smmfunction f = dispatch(m, n, k, accumulate);
    if (!f)
        return -1;
    int per_thread = (batch + threads - 1) / threads;
    return run_kernel(f, m, n, k, per_thread, per_thread, threads, rounds);
}

double triad_gbs(size_t floats, int threads, int rounds)
{
    float *a = NULL, *b = NULL, *c = NULL;
    if (posix_memalign((void **)&a, 64, floats * sizeof *a) ||
        posix_memalign((void **)&b, 64, floats * sizeof *b) ||
        posix_memalign((void **)&c, 64, floats * sizeof *c)) {
        free(a), free(b), free(c);
        return -1;
    }
    long n = (long)floats;
    /* First touch by the thread that will use each page. */
#pragma omp parallel for schedule(static) num_threads(threads)
    for (long i = 0; i < n; i++)
        a[i] = 0, b[i] = 1, c[i] = 2;
    double best = 0;
    const float s = 3;
    for (int r = 0; r < rounds; r++) {
        double t0 = bench_now();
#pragma omp parallel for schedule(static) num_threads(threads)
        for (long i = 0; i < n; i++)
            a[i] = b[i] + s * c[i];
        double rate = 12.0 * (double)n / (bench_now() - t0) * 1e-9;
        if (rate > best)
            best = rate;
    }
    volatile float sink = a[n / 2];
    (void)sink;
    free(a), free(b), free(c);
    return best;
}
