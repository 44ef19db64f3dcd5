/* Microbenchmark: one conv -> batch norm -> ReLU block, forward and backward, as the MNIST
 * reference model's second block runs it (batch 128, 32 -> 64 channels, 14 x 14, 3 x 3,
 * padding 1), against a baseline measured in the same process: the three GEMMs of the same
 * convolution (forward, weight gradient, input gradient) run straight on libxsmm kernels over
 * an im2col buffer prepared in advance. The ratio is the price of everything that is not a
 * GEMM: im2col/col2im, batch norm, ReLU, and the engine.
 *
 *   conv_bn [--batch N] [--repeats N] [--threads N]
 *
 * Prints one line per measurement and a key=value summary with medians. */
#include <libxsmm.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "tapegrad_nn.h"

static double now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

static int compare(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

static double median(double *v, int n)
{
    qsort(v, (size_t)n, sizeof *v, compare);
    return n % 2 ? v[n / 2] : 0.5 * (v[n / 2 - 1] + v[n / 2]);
}

/* Row-major C[m, n] = A[m, k] B[k, n] on a libxsmm JIT kernel (see src/kernels/matmul.c). */
static int gemm(int m, int n, int k, const float *a, const float *b, float *c)
{
    float alpha = 1, beta = 0;
    libxsmm_smmfunction f = libxsmm_smmdispatch(n, m, k, NULL, NULL, NULL, &alpha, &beta, NULL,
                                                NULL);
    if (!f)
        return -1;
    f(b, a, c);
    return 0;
}

int main(int argc, char **argv)
{
    int batch = 128, repeats = 15, threads = 1;
    for (int i = 1; i + 1 < argc; i += 2) {
        if (!strcmp(argv[i], "--batch"))
            batch = atoi(argv[i + 1]);
        else if (!strcmp(argv[i], "--repeats"))
            repeats = atoi(argv[i + 1]);
        else if (!strcmp(argv[i], "--threads"))
            threads = atoi(argv[i + 1]);
    }
    if (batch < 1 || repeats < 1 || repeats > 1000 || tg_set_num_threads(threads) != 0) {
        fprintf(stderr, "usage: conv_bn [--batch N] [--repeats 1..1000] [--threads N] (%s)\n",
                tg_last_error());
        return 2;
    }
    const int C = 32, OC = 64, H = 14, W = 14, K = C * 9, P = H * W;

    tg_tape *tape = tg_tape_new();
    tg_rng rng;
    tg_rng_seed(&rng, 1);
    tg_conv2d_layer conv;
    tg_batchnorm_layer bn;
    tg_tensor *x = tg_rand_normal(tape, &rng, TG_F32, 4, (int64_t[]){batch, C, H, W}, 0, 1);
    if (tg_conv2d_layer_init(&conv, tape, &rng, TG_F32, C, OC, 3, 1, 1, false) ||
        tg_batchnorm_layer_init(&bn, tape, TG_F32, OC) || !x) {
        fprintf(stderr, "conv_bn: %s\n", tg_last_error());
        return 1;
    }
    tg_tensor *params[4] = {x, conv.weight, bn.gamma, bn.beta};
    tg_mark mark = tg_tape_mark(tape);

    /* The baseline's buffers: im2col of x, weights, output, and the gradient buffers. */
    float *cols = malloc((size_t)batch * K * P * sizeof(float));
    float *w = malloc((size_t)OC * K * sizeof(float));
    float *y = malloc((size_t)batch * OC * P * sizeof(float));
    float *dw = malloc((size_t)OC * K * sizeof(float));
    float *dcols = malloc((size_t)K * P * sizeof(float));
    float *wt = malloc((size_t)K * OC * sizeof(float));
    float *colst = malloc((size_t)P * K * sizeof(float));
    if (!cols || !w || !y || !dw || !dcols || !wt || !colst)
        return 1;
    for (size_t i = 0; i < (size_t)batch * K * P; i++)
        cols[i] = (float)tg_rng_uniform(&rng);
    for (size_t i = 0; i < (size_t)OC * K; i++)
        w[i] = wt[i] = (float)tg_rng_uniform(&rng);

    double *engine = malloc((size_t)repeats * sizeof *engine);
    double *baseline = malloc((size_t)repeats * sizeof *baseline);
    for (int r = -2; r < repeats; r++) { /* two warm-up rounds */
        double t0 = now();
        tg_tensor *out = tg_relu(tg_batchnorm_layer_forward(&bn, tg_conv2d_layer_forward(&conv, x),
                                                            true));
        tg_tensor *loss = tg_sum(out, 0, NULL, false), *grads[4];
        if (!loss || tg_grad(loss, 4, params, NULL, grads) != 0) {
            fprintf(stderr, "conv_bn: %s\n", tg_last_error());
            return 1;
        }
        double t1 = now();
        tg_tape_rewind(tape, mark);
        /* Baseline: per image, y = W cols; dW += dy cols^T; dcols = W^T dy (dy := y). */
        for (int n = 0; n < batch; n++) {
            const float *cn = cols + (size_t)n * K * P;
            float *yn = y + (size_t)n * OC * P;
            gemm(OC, P, K, w, cn, yn);
            gemm(OC, K, P, yn, colst, dw);
            gemm(K, P, OC, wt, yn, dcols);
        }
        double t2 = now();
        if (r >= 0) {
            engine[r] = t1 - t0;
            baseline[r] = t2 - t1;
        }
    }
    double e = median(engine, repeats), b = median(baseline, repeats);
    double flops = 3.0 * 2.0 * batch * OC * (double)K * P;
    printf("conv_bn batch=%d threads=%d repeats=%d engine_ms=%.2f gemm_only_ms=%.2f "
           "ratio=%.2f engine_gflops=%.1f gemm_gflops=%.1f\n", batch, threads, repeats, 1e3 * e,
           1e3 * b, e / b, flops / e * 1e-9, flops / b * 1e-9);
    free(engine);
    free(baseline);
    free(cols), free(w), free(y), free(dw), free(dcols), free(wt), free(colst);
    tg_tape_free(tape);
    return 0;
}
