/* Winograd's minimal filtering for 3x3 stride-1 convolutions (Lavin and Gray, "Fast
 * Algorithms for Convolutional Neural Networks", 2015): F(r x r, 3x3) computes an r x r
 * output tile from an (r+2) x (r+2) input patch, patches r apart, with (r+2)^2
 * multiplications per channel pair where the direct form has 9 r^2: r = 2 (16 for 36),
 * r = 3 (25 for 81), r = 4 (36 for 144) or r = 5 (49 for 225). With the transforms' constant
 * matrices B^T, G and A^T:
 *
 *   U = G g G^T         per (output channel, input channel): the 3x3 kernel g
 *   V = B^T d B         per (tile, input channel): the input patch d
 *   M[xi] = U[xi] V[xi] for each point xi of the (r+2) x (r+2): a GEMM over input channels
 *   Y = A^T M A         per (tile, output channel): the r x r output
 *
 * The weight gradient runs the chain backwards (below). All of it runs per task, an image's
 * band of tile rows, in a thread's scratch: the band's padded input staged channels last
 * ([row][x][c], as conv.c's channels-last path stages it), V as [xi][tile][c], M as
 * [xi][tile][oc], the output as [row][x][oc], transposed into y's channel planes at the end.
 * The transforms run along channels, VL at a time (the layouts pad the channels to a
 * multiple of VL), so they vectorize for whatever vectors the machine has; the GEMMs are
 * libxsmm's (M = OC, N = the band's tiles, K = C; a loop where it generates none). Bands are
 * sized so that V and M stay in the core's L2 (BAND_BYTES).
 *
 * The transforms only add and scale by constants; the values differ from the direct
 * convolution's by rounding (tg_winograd_tile says how much). The file is built with
 * -ffp-contract=fast (meson.build), so the transforms' multiply-adds are fused ones. Each
 * output element is computed by one task in a fixed order, so results do not depend on the
 * thread count. */
#include "winograd.h"
#include "../compile/prologue.h"
#include "channel_sums.h"
#include "xsmm_copies.h"

#include <libxsmm.h>
#include <limits.h>
#include <stdlib.h>
#include <string.h>

#ifdef _OPENMP
#include <omp.h>
#endif

/* V and M of a band: at most this, so that both stay in L2 (512 KB on the cores we run on,
 * 1 MB on some); with 32 and 64 channels an image of 14x14 takes 294 KB (F(2x2): 49
 * tiles of 16 points), 216 KB (F(4x4): 16 tiles of 36) or 169 KB (F(5x5): 9 of 49). */
#define BAND_BYTES (384 * 1024)
/* Fewer images than this many tasks: thinner bands, so that two threads have work. */
#define MIN_TASKS 4
/* The element size: f32 only (conv.c sends f64 convolutions to the direct kernels). */
#define F32 sizeof(float)

/* Column-major C (m x n, ldc = m) = A (m x k, lda = m) B (k x n, ldb = k); with `tb`
 * (the weight gradient's) C += A B^T, B stored n x k (ldb = n). */
typedef struct {
    int64_t m, n, k;
    bool tb;
    libxsmm_smmfunction jit; /* NULL: the loop */
} gemm;

typedef struct {
    tg_winograd_shape s;
    int64_t tiles_w;            /* tiles per row of tiles: ceil(ow / r) */
    int64_t band, bands;        /* rows of tiles per task; tasks per image */
    int64_t tiles;              /* a full band's tiles */
    int r, xi;                  /* the output tile's side (2-5), the points per tile ((r+2)^2) */
    int64_t cp, ocp;            /* the channels, padded to a multiple of VL in the layouts */
    /* the strides of U's (or the weight gradient's sums'), V's and M's planes, one per point:
     * a plane's size plus VL floats, so that the planes a transform writes in turn start in
     * different cache sets (at 4 KB apart, F(4x4)'s 36 would all fall in one of L1's) */
    int64_t uplane, vplane, mplane;
    int64_t rows, wq;           /* the staged band: r band + 2 rows of r tiles_w + 2 positions */
    gemm full, last;            /* a full band's products, and the last band's */
    /* the forward: a full band's output rows [pos][oc] into y's planes, and the last band's
     * (when shorter: oh not a multiple of r, or fewer tiles) */
    libxsmm_xtransfunction out_band, out_last;
    /* per band: its rows of x [c][pos] to [pos][c], and (the weight gradient) of the gradient
     * [oc][pos] to [pos][oc], each as one transpose into scratch; NULL: the loop */
    libxsmm_xtransfunction *band_x, *band_grad;
    int64_t groups, chunks;     /* the weight gradient's groups of chunks of WGRAD_CHUNK images */
    size_t group_bytes;         /* a group's double sums [xi][c][oc], WGRAD_GROUPS of them */
    /* in a thread's scratch: U (the forward) or the chunk's f32 sums (the weight gradient, after
     * the groups' sums); the staged band; V; M or the gradient's transform; the output band or
     * the staged gradient */
    size_t at_u, at_staged, at_v, at_m, at_out, at_rows; /* at_rows: the transposed rows */
    libxsmm_xtransfunction kernels[]; /* band_x, then band_grad */
} wino;

/* The weight gradient sums a chunk of this many images in f32 (as conv.c's direct kernel
 * does, by the GEMMs' own accumulation), then adds the chunk into its group's double sums;
 * the WGRAD_GROUPS groups of consecutive chunks, fixed by the batch alone, are what threads
 * share, and are added in order at the end. */
#define WGRAD_CHUNK 8
#define WGRAD_GROUPS 2

static void gemm_init(gemm *g, int64_t m, int64_t n, int64_t k, bool tb)
{
    *g = (gemm){m, n, k, tb, NULL};
    if (m > INT_MAX || n > INT_MAX || k > INT_MAX)
        return;
    libxsmm_blasint lm = (libxsmm_blasint)m, ln = (libxsmm_blasint)n, lk = (libxsmm_blasint)k;
    float alpha = 1, beta = tb;
    int flags = tb ? LIBXSMM_GEMM_FLAG_TRANS_B : LIBXSMM_GEMM_FLAG_NONE;
    g->jit = libxsmm_smmdispatch(lm, ln, lk, &lm, tb ? &ln : &lk, &lm, &alpha, &beta, &flags,
                                 NULL);
}

static void gemm_run(const gemm *g, const float *a, const float *b, float *c)
{
    if (g->jit) {
        g->jit(a, b, c);
        return;
    }
    for (int64_t j = 0; j < g->n; j++) {
        float *cj = c + j * g->m;
        if (!g->tb)
            memset(cj, 0, (size_t)g->m * sizeof *cj);
        for (int64_t p = 0; p < g->k; p++) {
            float bjp = g->tb ? b[p * g->n + j] : b[j * g->k + p];
            for (int64_t r = 0; r < g->m; r++)
                cj[r] += a[p * g->m + r] * bjp;
        }
    }
}

/* ---- the transforms -------------------------------------------------------------------- */
/* Each 2-D transform is a 1-D one along the patch's columns, then along its rows; the 1-D
 * ones for F(r, 3) (patches of r + 2) follow, written out so that only nonzero coefficients
 * cost an operation. The 2-D loops are written once, for a constant r (always_inline: each
 * caller passes 2, 3, 4 or 5, and the compiler unrolls).
 * They work on TVL channels at a time (VL or half of it, below), as arrays of TVL floats
 * whose loops the compiler turns into the machine's vectors, whatever their width; the
 * layouts pad the channels to a multiple of VL (zeros, which the GEMMs carry through as
 * zeros) so that there is no tail. */
#define INLINE static inline __attribute__((always_inline))
/* transform_block's loops carry `#pragma GCC unroll 7`: unrolled, the arrays of vectors
 * they pass between the two 1-D passes live in registers. Without it GCC 12 kept them on
 * the stack when it split the vectors into AVX2's halves: shape B of bench/conv_bn 1.36
 * times slower with AVX2 code (no difference with AVX-512's). */
#define VL 16
/* The transforms' own vectors: TVL channels, VL or half of it. A 4x4 patch of VL-float
 * vectors is 16 vectors, 32 registers once split into AVX2's halves, and AVX2 has 16: GCC
 * spilled most of the patch to the stack (1157 stack accesses in the input transform's
 * code against 611 instructions in all with AVX-512's 32 registers; that transform took 2.6
 * times AVX-512's time). Where the target's vectors are narrower than VL floats the
 * transforms take 8 channels at a time, and their patches fit. */
#if defined(__AVX512F__)
#define TVL VL
#else
#define TVL (VL / 2)
#endif
/* TVL channels: one vector of the compilers' vector extensions where they have them (the
 * compiler splits it into the machine's own: 2 of SSE's, 1 of AVX2's or AVX-512's), else
 * an array of TVL floats in a loop it vectorizes. X(a, k) is lane l of a[k], or all of it. */
#if defined(__GNUC__)
typedef float lanes __attribute__((vector_size(TVL * sizeof(float))));
typedef lanes lane;
#define LANES(...) do { __VA_ARGS__ } while (0)
#define X(a, k) (a)[k]
#else
typedef float lanes[TVL];
typedef float lane;
#define LANES(...) for (int l = 0; l < TVL; l++) { __VA_ARGS__ }
#define X(a, k) (a)[k][l]
#endif

/* y = B^T x: B^T = [1 0 -1 0; 0 1 1 0; 0 -1 1 0; 0 1 0 -1], for r = 3 [2 -1 -2 1 0;
 * 0 -2 -1 1 0; 0 2 -3 1 0; 0 -1 0 1 0; 0 2 -1 -2 1], for r = 4 [4 0 -5 0 1 0;
 * 0 -4 -4 1 1 0; 0 4 -4 -1 1 0; 0 -2 -1 2 1 0; 0 2 -1 -2 1 0; 0 4 0 -5 0 1], or for r = 5
 * [-4 8 5 -10 -1 2 0; 0 4 -4 -9 1 2 0; 0 -4 12 -7 -3 2 0; 0 2 -3 -4 3 2 0; 0 -2 5 0 -5 2 0;
 * 0 4 0 -5 0 1 0; 0 -4 8 5 -10 -1 2]. F(5, 3)'s points are F(4, 3)'s (0, 1, -1, 2, -2 and
 * infinity) and 1/2: its rows for the points they share are F(4, 3)'s applied to
 * z[l] = 2 x[l + 1] - x[l] (a product with the polynomial 2 t - 1, whose root 1/2 is the new
 * point): 35 multiplications and additions where the matrix's rows take 57. */
INLINE void input_1d(int r, lanes *x, lanes *y)
{
    LANES(if (r == 2) {
        X(y, 0) = X(x, 0) - X(x, 2), X(y, 1) = X(x, 1) + X(x, 2);
        X(y, 2) = X(x, 2) - X(x, 1), X(y, 3) = X(x, 1) - X(x, 3);
    } else if (r == 3) {
        lane a = X(x, 3) - X(x, 1), b = X(x, 2) + X(x, 2);
        X(y, 0) = 2 * X(x, 0) - b + a, X(y, 1) = a - X(x, 1) - X(x, 2);
        X(y, 2) = a + 3 * (X(x, 1) - X(x, 2)), X(y, 3) = a;
        X(y, 4) = 2 * X(x, 1) - X(x, 2) - 2 * X(x, 3) + X(x, 4);
    } else if (r == 4) {
        lane a = X(x, 4) - 4 * X(x, 2), b = X(x, 3) - 4 * X(x, 1);
        lane c = X(x, 4) - X(x, 2), d = 2 * (X(x, 3) - X(x, 1));
        X(y, 0) = 4 * X(x, 0) - 5 * X(x, 2) + X(x, 4), X(y, 1) = a + b, X(y, 2) = a - b;
        X(y, 3) = c + d, X(y, 4) = c - d, X(y, 5) = 4 * X(x, 1) - 5 * X(x, 3) + X(x, 5);
    } else {
        lane z[6];
        for (int k = 0; k < 6; k++)
            z[k] = 2 * X(x, k + 1) - X(x, k);
        lane a = z[4] - 4 * z[2], b = z[3] - 4 * z[1];
        lane c = z[4] - z[2], d = 2 * (z[3] - z[1]);
        X(y, 0) = 4 * z[0] - 5 * z[2] + z[4], X(y, 1) = a + b, X(y, 2) = a - b;
        X(y, 3) = c + d, X(y, 4) = c - d, X(y, 5) = 4 * X(x, 1) - 5 * X(x, 3) + X(x, 5);
        X(y, 6) = 4 * z[1] - 5 * z[3] + z[5];
    });
}

/* y = A^T x: A^T = [1 1 1 0; 0 1 -1 -1], for r = 3 [1 1 1 1 0; 0 1 -1 2 0; 0 1 1 4 1],
 * for r = 4 [1 1 1 1 1 0; 0 1 -1 2 -2 0; 0 1 1 4 4 0; 0 1 -1 8 -8 1], or for r = 5
 * [1 1 1 1 1 16 0; 0 1 -1 2 -2 8 0; 0 1 1 4 4 4 0; 0 1 -1 8 -8 2 0; 0 1 1 16 16 1 1] (the
 * point 1/2's column (1, 1/2, .., 1/16) times 16, and its row of G divided by 16). */
INLINE void output_1d(int r, lanes *x, lanes *y)
{
    LANES(if (r == 2) {
        X(y, 0) = X(x, 0) + X(x, 1) + X(x, 2), X(y, 1) = X(x, 1) - X(x, 2) - X(x, 3);
    } else if (r == 3) {
        lane p = X(x, 1) + X(x, 2), q = X(x, 1) - X(x, 2);
        X(y, 0) = X(x, 0) + p + X(x, 3), X(y, 1) = q + 2 * X(x, 3);
        X(y, 2) = p + 4 * X(x, 3) + X(x, 4);
    } else if (r == 4) {
        lane p = X(x, 1) + X(x, 2), q = X(x, 1) - X(x, 2);
        lane s = X(x, 3) + X(x, 4), t = X(x, 3) - X(x, 4);
        X(y, 0) = X(x, 0) + p + s, X(y, 1) = q + 2 * t, X(y, 2) = p + 4 * s;
        X(y, 3) = q + 8 * t + X(x, 5);
    } else {
        lane p = X(x, 1) + X(x, 2), q = X(x, 1) - X(x, 2);
        lane s = X(x, 3) + X(x, 4), t = X(x, 3) - X(x, 4);
        X(y, 0) = X(x, 0) + p + s + 16 * X(x, 5), X(y, 1) = q + 2 * t + 8 * X(x, 5);
        X(y, 2) = p + 4 * s + 4 * X(x, 5), X(y, 3) = q + 8 * t + 2 * X(x, 5);
        X(y, 4) = p + 16 * s + X(x, 5) + X(x, 6);
    });
}

/* y = A x (the gradient's: r values to r + 2). */
INLINE void grad_1d(int r, lanes *x, lanes *y)
{
    LANES(if (r == 2) {
        X(y, 0) = X(x, 0), X(y, 1) = X(x, 0) + X(x, 1), X(y, 2) = X(x, 0) - X(x, 1);
        X(y, 3) = -X(x, 1);
    } else if (r == 3) {
        lane e = X(x, 0) + X(x, 2);
        X(y, 0) = X(x, 0), X(y, 1) = e + X(x, 1), X(y, 2) = e - X(x, 1);
        X(y, 3) = X(x, 0) + 2 * X(x, 1) + 4 * X(x, 2), X(y, 4) = X(x, 2);
    } else if (r == 4) {
        lane e = X(x, 0) + X(x, 2), o = X(x, 1) + X(x, 3);
        lane e4 = X(x, 0) + 4 * X(x, 2), o4 = 2 * X(x, 1) + 8 * X(x, 3);
        X(y, 0) = X(x, 0), X(y, 1) = e + o, X(y, 2) = e - o, X(y, 3) = e4 + o4;
        X(y, 4) = e4 - o4, X(y, 5) = X(x, 3);
    } else {
        lane e = X(x, 0) + X(x, 2) + X(x, 4), o = X(x, 1) + X(x, 3);
        lane e4 = X(x, 0) + 4 * X(x, 2) + 16 * X(x, 4), o4 = 2 * X(x, 1) + 8 * X(x, 3);
        X(y, 0) = X(x, 0), X(y, 1) = e + o, X(y, 2) = e - o, X(y, 3) = e4 + o4;
        X(y, 4) = e4 - o4;
        X(y, 5) = X(x, 4) + 2 * (X(x, 3) + 2 * (X(x, 2) + 2 * (X(x, 1) + 2 * X(x, 0))));
        X(y, 6) = X(x, 4);
    });
}

/* y = G x (a kernel's 3 values to r + 2): G = [1 0 0; 1/2 1/2 1/2; 1/2 -1/2 1/2; 0 0 1],
 * for r = 3 [1/2 0 0; -1/2 -1/2 -1/2; -1/6 1/6 -1/6; 1/6 1/3 2/3; 0 0 1],
 * for r = 4 [1/4 0 0; -1/6 -1/6 -1/6; -1/6 1/6 -1/6; 1/24 1/12 1/6; 1/24 -1/12 1/6;
 * 0 0 1], or for r = 5 [-1/4 0 0; -1/6 -1/6 -1/6; 1/18 -1/18 1/18; 1/72 1/36 1/18;
 * -1/120 1/60 -1/30; 2/45 1/45 1/90; 0 0 1/2]. In double, one kernel at a time: the
 * weights are transformed once per run, and 1/6 is inexact. */
INLINE void weights_1d(int r, const double *x, double *y)
{
    if (r == 2) {
        y[0] = x[0], y[1] = 0.5 * (x[0] + x[1] + x[2]), y[2] = 0.5 * (x[0] - x[1] + x[2]);
        y[3] = x[2];
        return;
    }
    if (r == 3) {
        const double sixth = 1.0 / 6;
        y[0] = 0.5 * x[0], y[1] = -0.5 * (x[0] + x[1] + x[2]);
        y[2] = sixth * (x[1] - x[0] - x[2]), y[3] = sixth * (x[0] + 2 * x[1] + 4 * x[2]);
        y[4] = x[2];
        return;
    }
    if (r == 4) {
        const double sixth = 1.0 / 6, twelfth = 1.0 / 12, twentyfourth = 1.0 / 24;
        y[0] = 0.25 * x[0], y[1] = -sixth * (x[0] + x[1] + x[2]);
        y[2] = -sixth * (x[0] - x[1] + x[2]);
        y[3] = twentyfourth * x[0] + twelfth * x[1] + sixth * x[2];
        y[4] = twentyfourth * x[0] - twelfth * x[1] + sixth * x[2], y[5] = x[2];
        return;
    }
    /* multiplications by the inverses: with divisions the transform took twice the time */
    const double i6 = 1.0 / 6, i18 = 1.0 / 18, i36 = 1.0 / 36, i45 = 1.0 / 45, i60 = 1.0 / 60;
    y[0] = -0.25 * x[0], y[1] = -i6 * (x[0] + x[1] + x[2]), y[2] = i18 * (x[0] - x[1] + x[2]);
    y[3] = i36 * (0.5 * x[0] + x[1] + 2 * x[2]), y[4] = i60 * (x[1] - 0.5 * x[0] - 2 * x[2]);
    y[5] = i45 * (2 * x[0] + x[1] + 0.5 * x[2]), y[6] = 0.5 * x[2];
}

/* y = G^T x (the weight gradient's: r + 2 values to 3), in double. */
INLINE void sums_1d(int r, const double *x, double *y)
{
    if (r == 2) {
        y[0] = x[0] + 0.5 * (x[1] + x[2]), y[1] = 0.5 * (x[1] - x[2]);
        y[2] = 0.5 * (x[1] + x[2]) + x[3];
        return;
    }
    if (r == 3) {
        const double sixth = 1.0 / 6;
        y[0] = 0.5 * (x[0] - x[1]) + sixth * (x[3] - x[2]);
        y[1] = -0.5 * x[1] + sixth * (x[2] + 2 * x[3]);
        y[2] = -0.5 * x[1] + sixth * (4 * x[3] - x[2]) + x[4];
        return;
    }
    if (r == 4) {
        const double sixth = 1.0 / 6, twelfth = 1.0 / 12, twentyfourth = 1.0 / 24;
        y[0] = 0.25 * x[0] - sixth * (x[1] + x[2]) + twentyfourth * (x[3] + x[4]);
        y[1] = sixth * (x[2] - x[1]) + twelfth * (x[3] - x[4]);
        y[2] = sixth * (x[3] + x[4] - x[1] - x[2]) + x[5];
        return;
    }
    const double i6 = 1.0 / 6, i18 = 1.0 / 18, i36 = 1.0 / 36, i45 = 1.0 / 45, i60 = 1.0 / 60;
    y[0] = -0.25 * x[0] - i6 * x[1] + i18 * x[2] + i36 * 0.5 * x[3] - i60 * 0.5 * x[4] +
           i45 * 2 * x[5];
    y[1] = -i6 * x[1] - i18 * x[2] + i36 * x[3] + i60 * x[4] + i45 * x[5];
    y[2] = -i6 * x[1] + i18 * x[2] + i36 * 2 * x[3] - i60 * 2 * x[4] + i45 * 0.5 * x[5] +
           0.5 * x[6];
}

/* U[xi][c][oc] = (G g G^T)[xi] for every kernel g; zeros for the padding channels. */
INLINE void weights_2d(const wino *p, const float *w, float *restrict u, int r)
{
    int64_t c_n = p->s.c, oc_n = p->s.oc, ocp = p->ocp;
    const int n = r + 2;
    memset(u, 0, (size_t)(p->xi * p->uplane) * sizeof *u);
    for (int64_t oc = 0; oc < oc_n; oc++)
        for (int64_t c = 0; c < c_n; c++) {
            double g[3][3], col[3], t[7][3], v[7];
            for (int k = 0; k < 9; k++)
                g[k / 3][k % 3] = p->s.flipped ? w[(c * oc_n + oc) * 9 + 8 - k]
                                               : w[(oc * c_n + c) * 9 + k];
            for (int j = 0; j < 3; j++) { /* G g: along the kernel's columns */
                for (int i = 0; i < 3; i++)
                    col[i] = g[i][j];
                weights_1d(r, col, v);
                for (int i = 0; i < n; i++)
                    t[i][j] = v[i];
            }
            for (int i = 0; i < n; i++) { /* (G g) G^T: along its rows */
                weights_1d(r, t[i], v);
                for (int j = 0; j < n; j++)
                    u[(n * i + j) * p->uplane + c * ocp + oc] = (float)v[j];
            }
        }
}

/* The three 2-D transforms over floats, TVL channels at a time: x, nx by nx, at in + i in_i +
 * j in_j, goes through the 1-D transform along its columns and then along its rows, and the
 * ny by ny result goes to out + i out_i + j out_j for j < cols (the output's last tile may
 * hang over). */
enum { INPUT, OUTPUT, GRAD };

INLINE void transform_1d(int kind, int r, lanes *x, lanes *y)
{
    if (kind == INPUT)
        input_1d(r, x, y);
    else if (kind == OUTPUT)
        output_1d(r, x, y);
    else
        grad_1d(r, x, y);
}

/* Keeps GCC from computing a block's 36 addresses once, for every block, and spilling them
 * (AVX2's 16 registers are full): nearly half the transforms' time went to reloading them.
 * The pointers step from one row to the next only when there is a next one. */
#if defined(__GNUC__)
#define OPAQUE(pointer) __asm__("" : "+r"(pointer))
#else
#define OPAQUE(pointer) (void)(pointer)
#endif

INLINE void transform_block(int kind, int r, const float *in, int64_t in_i, int64_t in_j,
                            float *out, int64_t out_i, int64_t out_j, int cols)
{
    const int nx = kind == GRAD ? r : r + 2, ny = kind == OUTPUT ? r : r + 2;
    lanes col[7], t[7][7], y[7];
    #pragma GCC unroll 7
    for (int j = 0; j < nx; j++) { /* along the columns */
        const float *from = in + j * in_j;
        #pragma GCC unroll 7
        for (int i = 0; i < nx; i++) {
            if (i > 0) {
                from += in_i;
                OPAQUE(from);
            }
            memcpy(&col[i], from, sizeof col[i]);
        }
        transform_1d(kind, r, col, y);
        #pragma GCC unroll 7
        for (int i = 0; i < ny; i++)
            memcpy(&t[i][j], &y[i], sizeof y[i]);
    }
    float *to = out;
    #pragma GCC unroll 7
    for (int i = 0; i < ny; i++) { /* along the rows */
        transform_1d(kind, r, t[i], y);
        if (i > 0) {
            to += out_i;
            OPAQUE(to);
        }
        float *at = to;
        #pragma GCC unroll 7
        for (int j = 0; j < ny && j < cols; j++) {
            if (j > 0) {
                at += out_j;
                OPAQUE(at);
            }
            memcpy(at, &y[j], sizeof y[j]);
        }
    }
}

/* V[xi][tile][c] = (B^T d B)[xi] for the band's tiles (tile_rows rows of them); d is the
 * tile's patch of the staged band, r apart. */
INLINE void input_2d(const wino *p, const float *restrict staged, int64_t tile_rows,
                     float *restrict v, int r)
{
    int64_t cp = p->cp, row = p->wq * cp, plane = p->vplane;
    for (int64_t ty = 0; ty < tile_rows; ty++)
        for (int64_t tx = 0; tx < p->tiles_w; tx++) {
            const float *d = staged + r * ty * row + r * tx * cp;
            float *out = v + (ty * p->tiles_w + tx) * cp;
            for (int64_t c = 0; c < cp; c += TVL)
                transform_block(INPUT, r, d + c, row, cp, out + c, (r + 2) * plane, plane, r + 2);
        }
}

/* out[r ty + i][r tx + j][oc] = (A^T M A)[i][j] for the band's tiles, out's rows ow
 * positions long (columns past ow not written; rows past oh written, never read). */
INLINE void output_2d(const wino *p, const float *restrict m, int64_t tile_rows,
                      float *restrict out, int r)
{
    int64_t ocp = p->ocp, plane = p->mplane, row = p->s.ow * ocp;
    for (int64_t ty = 0; ty < tile_rows; ty++)
        for (int64_t tx = 0; tx < p->tiles_w; tx++) {
            const float *mt = m + (ty * p->tiles_w + tx) * ocp;
            float *o = out + r * ty * row + r * tx * ocp;
            int cols = (int)tg_min64(r, p->s.ow - r * tx); /* the last tile may hang over */
            for (int64_t oc = 0; oc < ocp; oc += TVL)
                transform_block(OUTPUT, r, mt + oc, (r + 2) * plane, plane, o + oc, row, ocp,
                                cols);
        }
}

/* dM[xi][tile][oc] = (A dY A^T)[xi] for the band's tiles of the staged gradient (rows of r
 * tiles_w positions). */
INLINE void grad_2d(const wino *p, const float *restrict staged, int64_t tile_rows,
                    float *restrict dm, int r)
{
    int64_t ocp = p->ocp, row = r * p->tiles_w * ocp, plane = p->mplane;
    for (int64_t ty = 0; ty < tile_rows; ty++)
        for (int64_t tx = 0; tx < p->tiles_w; tx++) {
            const float *d = staged + r * ty * row + r * tx * ocp;
            float *out = dm + (ty * p->tiles_w + tx) * ocp;
            for (int64_t oc = 0; oc < ocp; oc += TVL)
                transform_block(GRAD, r, d + oc, row, ocp, out + oc, (r + 2) * plane, plane,
                                r + 2);
        }
}

/* dw[oc][c] = G^T dU G from the sums [xi][c][oc]. */
INLINE void sums_2d(const wino *p, const double *acc, float *dw, int r)
{
    int64_t c_n = p->s.c, oc_n = p->s.oc, ocp = p->ocp;
    const int n = r + 2;
    for (int64_t oc = 0; oc < oc_n; oc++)
        for (int64_t c = 0; c < c_n; c++) {
            double col[7], t[3][7], y[3];
            for (int j = 0; j < n; j++) { /* G^T dU: along the columns */
                for (int i = 0; i < n; i++)
                    col[i] = acc[(n * i + j) * p->uplane + c * ocp + oc];
                sums_1d(r, col, y);
                for (int i = 0; i < 3; i++)
                    t[i][j] = y[i];
            }
            for (int i = 0; i < 3; i++) { /* (G^T dU) G: along the rows */
                sums_1d(r, t[i], y);
                for (int j = 0; j < 3; j++)
                    dw[(oc * c_n + c) * 9 + 3 * i + j] = (float)y[j];
            }
        }
}

/* The transforms for the node's tile size: f(..., r) with r a constant, so that each tile's
 * loops are compiled for it (their sizes known, unrolled). */
#define FOR_TILE(r, f, ...)                                                                     \
    ((r) == 2   ? f(__VA_ARGS__, 2)                                                             \
     : (r) == 3 ? f(__VA_ARGS__, 3)                                                             \
     : (r) == 4 ? f(__VA_ARGS__, 4)                                                             \
                : f(__VA_ARGS__, 5))

static void transform_weights(const wino *p, const float *w, float *u)
{
    FOR_TILE(p->r, weights_2d, p, w, u);
}

static void transform_input(const wino *p, const float *staged, int64_t tile_rows, float *v)
{
    FOR_TILE(p->r, input_2d, p, staged, tile_rows, v);
}

static void transform_output(const wino *p, const float *m, int64_t tile_rows, float *out)
{
    FOR_TILE(p->r, output_2d, p, m, tile_rows, out);
}

static void transform_grad(const wino *p, const float *staged, int64_t tile_rows, float *dm)
{
    FOR_TILE(p->r, grad_2d, p, staged, tile_rows, dm);
}

static void transform_sums(const wino *p, const double *acc, float *dw)
{
    FOR_TILE(p->r, sums_2d, p, acc, dw);
}

/* ---- a task ----------------------------------------------------------------------------- */
/* Rows first .. first + count - 1 of the image at `img` (rows of w positions, planes of
 * h w) that band `band` reads, clipped to the image: count may be 0. */
static int64_t band_rows_in(const wino *p, int64_t band, int64_t *first)
{
    const tg_winograd_shape *s = &p->s;
    int64_t top = p->r * band * p->band - s->ph, lo = top > 0 ? top : 0;
    int64_t hi = tg_min64(s->h, top + p->rows);
    *first = lo;
    return hi > lo ? hi - lo : 0;
}

/* The padded input rows of band `band` of image `img`, channels last, into staged: the rows
 * in the image transposed at once into the scratch at `rows`, then copied into place; rows
 * outside the image are zeros (written here, as they depend on the band); the padding
 * columns were cleared once per run and nothing writes them. */
static void stage_band(const wino *p, const float *img, int64_t band, float *staged,
                       float *rows)
{
    const tg_winograd_shape *s = &p->s;
    int64_t row = p->wq * p->cp, top = p->r * band * p->band - s->ph, first;
    int64_t count = band_rows_in(p, band, &first);
    if (count > 0)
        tg_xsmm_transpose(p->band_x[band], F32, img + first * s->w, s->h * s->w, rows, p->cp,
                          count * s->w, s->c);
    for (int64_t r = 0; r < p->rows; r++) {
        int64_t y = top + r;
        float *to = staged + r * row;
        if (y < first || y >= first + count)
            memset(to, 0, (size_t)row * sizeof *to);
        else
            memcpy(to + s->pw * p->cp, rows + (y - first) * s->w * p->cp,
                   (size_t)(s->w * p->cp) * sizeof *to);
    }
}

/* The output rows of band `band` of one image: r band, or fewer for the last band. */
static int64_t band_rows_out(const wino *p, int64_t band)
{
    return tg_min64(p->r * p->band, p->s.oh - p->r * band * p->band);
}

static int64_t tile_rows_of(const wino *p, int64_t band)
{
    return tg_min64(p->band, (p->s.oh + p->r - 1) / p->r - band * p->band);
}

static void run_task(const wino *p, const float *x, const float *u, float *y, char *mine,
                     int64_t img, int64_t band)
{
    const tg_winograd_shape *s = &p->s;
    float *staged = (float *)(mine + p->at_staged), *v = (float *)(mine + p->at_v);
    float *m = (float *)(mine + p->at_m), *out = (float *)(mine + p->at_out);
    int64_t ty0 = band * p->band, tile_rows = tile_rows_of(p, band);
    const gemm *g = tile_rows == p->band ? &p->full : &p->last;
    stage_band(p, x + img * s->c * s->h * s->w, band, staged, (float *)(mine + p->at_rows));
    transform_input(p, staged, tile_rows, v);
    for (int xi = 0; xi < p->xi; xi++)
        gemm_run(g, u + xi * p->uplane, v + xi * p->vplane, m + xi * p->mplane);
    transform_output(p, m, tile_rows, out);
    int64_t plane = s->oh * s->ow, r0 = p->r * ty0, rows = band_rows_out(p, band);
    if (s->channel_sums)
        tg_conv_band_sums_last(out, p->ocp, s->oc, s->oh, s->ow, img, r0, rows,
                               y + s->batch * s->oc * plane);
    tg_xsmm_transpose(rows == p->r * p->band ? p->out_band : p->out_last, F32, out, p->ocp,
                      y + img * s->oc * plane + r0 * s->ow, plane, s->oc, rows * s->ow);
}

/* The threads a run takes: the library's, at most the work's worth (conv.c's threshold); all
 * of them with a prologue, whose full-size pass is work the threshold does not count. */
static int threads_for(const wino *p, const tg_ir_node *n)
{
    int threads = tg_num_threads();
    return p->s.threads_max < threads && !n->prologue ? (int)p->s.threads_max : threads;
}

/* The calling thread's block of the scratch. */
static char *my_scratch(const tg_ir_node *n, void *scratch)
{
    int me = 0;
#ifdef _OPENMP
    me = omp_get_thread_num();
#endif
    return (char *)scratch + (size_t)me * n->scratch_bytes;
}

/* F(5x5) has 1.96 multiplications per output and channel pair, F(4x4) 2.25, F(3x3) 2.78,
 * F(2x2) 4, but the larger tiles' transforms (7x7 patches, coefficients up to 16 and down to
 * 1/120 for F(5x5); 6x6, up to 8 and down to 1/24 for F(4x4); 5x5, up to 4 and down to 1/6
 * for F(3x3)) round worse: 1.3-4.7e-6 of the largest output with F(5x5), 1.8-3.5e-6 with
 * F(4x4), 1.0-1.5e-6 with F(3x3), 0.31-0.66e-6 with F(2x2) in the tests' forward
 * convolutions (tests/test_conv_lower.c, the transforms' multiply-adds fused as built;
 * their input gradients 2.4-6.6e-6 with F(5x5)).
 *
 * In a forward that shows: its values decide the kinks of ReLU and max pool, and a value
 * rounded to the other side of one moves the training state by a whole gradient's worth.
 * Any reordering of the sums flips some (compiled and eager training part by 1e-3 within ten
 * steps whatever the tile), larger rounding sooner. The reference model's state after 3
 * steps is more than 1e-4 from eager execution's at 6 of seeds 1-5, 7 and 8 with F(5x5) in
 * conv2's forward, at 4 with F(3x3) and at 3 with F(2x2) (within it at seed 6, the one
 * tests/example_tests.sh compares: 7.9e-6 with F(5x5)); 2 ranks with synchronized batch norm
 * part from 1 process after 3 steps by 1.9e-3 and 2.5e-3 at seeds 3 and 4 with F(5x5) in the
 * forward, by 2-4e-7 with F(2x2), F(3x3), F(4x4) or direct convolutions (after 1 step all
 * agree to 6e-7), so tests/mpi compares 3 steps with the winograd pass off. What the kinks
 * do not change is how well the model trains (test accuracy after one epoch, seeds 1-4:
 * 99.04, 99.06, 99.01, 99.02% with F(5x5) in the forward, 99.07, 98.99, 99.04, 99.09% with
 * F(3x3)). A gradient's values decide no kink (the masks and the max's routing are the
 * forward's), so its rounding stays its own size.
 *
 * Speed, at the reference model's 14x14 (TG_PLAN_PROFILE, alternating runs of 150 steps, 1
 * thread, Zen 5): F(5x5) takes 0.82 (AVX2 code) and 0.84 (AVX-512) of F(3x3)'s time in the
 * forward (9 tiles of 49 points against 25 of 25), which took 0.88 and 0.93 of F(2x2)'s (49
 * of 16); in the gradients F(5x5) takes 0.89-0.96 of F(4x4)'s (against 16 tiles of 36),
 * which had trained the model 1.03-1.05 times faster than F(2x2). So tg_winograd_tile takes
 * the tile with the fewest products for the plane (at 28x28 F(4x4) and F(5x5) tie, at 7x7
 * and 16x16 F(4x4) wins; the smaller on a tie), unless TG_WINOGRAD_TILE=2, 3, 4 or 5 asks
 * for one tile everywhere. */
int64_t tg_winograd_chunk_images(void) { return WGRAD_CHUNK; }

/* The products per channel pair that F(r x r, 3x3) takes for an oh x ow output: its tiles
 * times (r + 2)^2, the last row and column of tiles hanging over where r does not divide. */
static int64_t winograd_products(int r, int64_t oh, int64_t ow)
{
    return (oh + r - 1) / r * ((ow + r - 1) / r) * (r + 2) * (r + 2);
}

int tg_winograd_tile(int64_t oh, int64_t ow)
{
    const char *env = getenv("TG_WINOGRAD_TILE");
    if (env && env[0] >= '2' && env[0] <= '5' && env[1] == 0)
        return env[0] - '0';
    int best = 2;
    for (int r = 3; r <= 5; r++)
        if (winograd_products(r, oh, ow) < winograd_products(best, oh, ow))
            best = r;
    return best;
}

void tg_winograd_run(const tg_ir_node *n, void *y, const void *const *in, void *scratch)
{
    const wino *p = n->payload;
    int64_t tasks = p->s.batch * p->bands;
    if (tasks == 0)
        return;
#pragma omp parallel num_threads(threads_for(p, n))
    {
        char *mine = my_scratch(n, scratch);
        float *u = (float *)(mine + p->at_u);
        transform_weights(p, in[1], u);
        memset(mine + p->at_staged, 0, p->at_v - p->at_staged); /* the padding columns */
#pragma omp for schedule(static)
        for (int64_t t = 0; t < tasks; t++)
            run_task(p, in[0], u, y, mine, t / p->bands, t % p->bands);
    }
}

/* ---- the weight gradient ------------------------------------------------------------------ */
/* With dY the gradient at the output and Y = A^T M A, M = U . V (pointwise):
 *
 *   dM = A dY A^T        per (tile, output channel): the 2x2 gradient becomes 4x4
 *   dU[xi] = sum over tiles of dM[xi] V[xi]^T: a GEMM over the tiles, summed over images
 *   dg = G^T dU G        per (output channel, input channel): 3x3 from 4x4
 *
 * V is the forward's input transform, recomputed; dY is staged channels last like x. */

/* dY's output rows of band `band` of one image, [row][x][oc], r band rows of r tiles_w
 * positions: transposed at once into the scratch at `rows`, then copied into place; rows
 * past the output are zeros (here), as are the columns past it (cleared once per run), so
 * the tiles that hang over the output add nothing. */
static void stage_grad(const wino *p, const float *grad, int64_t band, float *staged,
                       float *rows)
{
    const tg_winograd_shape *s = &p->s;
    int64_t row = p->r * p->tiles_w * p->ocp, count = band_rows_out(p, band);
    tg_xsmm_transpose(p->band_grad[band], F32, grad + p->r * band * p->band * s->ow,
                      s->oh * s->ow, rows, p->ocp, count * s->ow, s->oc);
    for (int64_t r = 0; r < p->r * p->band; r++) {
        float *to = staged + r * row;
        if (r >= count)
            memset(to, 0, (size_t)row * sizeof *to);
        else
            memcpy(to, rows + r * s->ow * p->ocp, (size_t)(s->ow * p->ocp) * sizeof *to);
    }
}

/* sums[xi][c][oc] += dM[xi] V[xi]^T over one band of one image's tiles. */
static void wgrad_band(const wino *p, const float *x, const float *grad, char *mine, int64_t band)
{
    float *sums = (float *)(mine + p->at_u), *staged = (float *)(mine + p->at_staged);
    float *v = (float *)(mine + p->at_v), *dm = (float *)(mine + p->at_m);
    float *staged_grad = (float *)(mine + p->at_out);
    int64_t tile_rows = tile_rows_of(p, band);
    const gemm *g = tile_rows == p->band ? &p->full : &p->last;
    float *rows = (float *)(mine + p->at_rows);
    stage_band(p, x, band, staged, rows);
    transform_input(p, staged, tile_rows, v);
    stage_grad(p, grad, band, staged_grad, rows);
    transform_grad(p, staged_grad, tile_rows, dm);
    for (int xi = 0; xi < p->xi; xi++)
        gemm_run(g, dm + xi * p->mplane, v + xi * p->vplane, sums + xi * p->uplane);
}

/* A group's chunks: each chunk's images summed in f32, then added into acc in double. */
static void wgrad_group(const tg_ir_node *n, const wino *p, const float *grad, const float *x,
                        char *mine, int64_t grp, double *acc)
{
    const tg_winograd_shape *s = &p->s;
    int64_t sums = p->xi * p->uplane;
    const float *part = (const float *)(mine + p->at_u);
    memset(acc, 0, (size_t)sums * sizeof *acc);
    for (int64_t ch = grp * p->chunks / p->groups; ch < (grp + 1) * p->chunks / p->groups; ch++) {
        int64_t n0 = ch * WGRAD_CHUNK, count = tg_min64(WGRAD_CHUNK, s->batch - n0);
        /* the gradient of these images, computed just now where a prologue makes it */
        const float *images = n->prologue ? tg_prologue_run(n->prologue, n0, count, mine)
                                          : grad + n0 * s->oc * s->oh * s->ow;
        memset(mine + p->at_u, 0, (size_t)sums * sizeof *part);
        for (int64_t i = 0; i < count; i++)
            for (int64_t b = 0; b < p->bands; b++)
                wgrad_band(p, x + (n0 + i) * s->c * s->h * s->w,
                           images + i * s->oc * s->oh * s->ow, mine, b);
        for (int64_t k = 0; k < sums; k++)
            acc[k] += part[k];
    }
}

void tg_winograd_wgrad_run(const tg_ir_node *n, void *dw, const void *const *in, void *scratch)
{
    const wino *p = n->payload;
    int64_t sums = p->xi * p->uplane;
    double *acc[WGRAD_GROUPS]; /* in the first thread's scratch, whoever runs the group */
    for (int64_t grp = 0; grp < WGRAD_GROUPS; grp++)
        acc[grp] = (double *)((char *)scratch + (size_t)grp * p->group_bytes);
#pragma omp parallel num_threads(threads_for(p, n))
    {
        char *mine = my_scratch(n, scratch);
        memset(mine + p->at_staged, 0, p->at_v - p->at_staged); /* the padding columns */
        memset(mine + p->at_out, 0, n->scratch_bytes - p->at_out); /* and the gradient's */
#pragma omp for schedule(static)
        for (int64_t grp = 0; grp < p->groups; grp++)
            wgrad_group(n, p, in[0], in[1], mine, grp, acc[grp]);
    }
    if (p->groups == 0)
        memset(acc[0], 0, (size_t)sums * sizeof *acc[0]);
    for (int64_t grp = 1; grp < p->groups; grp++)
        for (int64_t k = 0; k < sums; k++)
            acc[0][k] += acc[grp][k];
    transform_sums(p, acc[0], dw);
}

int tg_winograd_prepare(tg_ir_node *n, const tg_winograd_shape *s)
{
    wino g = {.s = *s, .r = s->tile, .xi = (s->tile + 2) * (s->tile + 2)}, *p = &g;
    int64_t tiles_h = (s->oh + p->r - 1) / p->r;
    p->tiles_w = (s->ow + p->r - 1) / p->r;
    p->cp = (s->c + VL - 1) / VL * VL;
    p->ocp = (s->oc + VL - 1) / VL * VL;
    int64_t tile_bytes = p->xi * (p->cp + p->ocp) * (int64_t)sizeof(float);
    int64_t fit = BAND_BYTES / (tile_bytes * p->tiles_w);
    int64_t bands = (tiles_h + (fit > 1 ? fit : 1) - 1) / (fit > 1 ? fit : 1);
    if (!s->wgrad && s->batch * bands < MIN_TASKS)
        bands = tg_min64((MIN_TASKS + s->batch - 1) / s->batch, tiles_h);
    p->band = (tiles_h + bands - 1) / bands;
    p->bands = (tiles_h + p->band - 1) / p->band;
    p->tiles = p->band * p->tiles_w;
    p->uplane = p->cp * p->ocp + VL;
    p->vplane = p->tiles * p->cp + VL;
    p->mplane = p->tiles * p->ocp + VL;
    p->rows = p->r * p->band + 2;
    p->wq = p->r * p->tiles_w + 2;
    int64_t last = tiles_h - (p->bands - 1) * p->band, plane = s->oh * s->ow;
    if (s->wgrad) { /* M = OC, N = C, K = the band's tiles */
        gemm_init(&p->full, p->ocp, p->cp, p->tiles, true);
        gemm_init(&p->last, p->ocp, p->cp, last * p->tiles_w, true);
        p->chunks = (s->batch + WGRAD_CHUNK - 1) / WGRAD_CHUNK;
        p->groups = tg_min64(WGRAD_GROUPS, p->chunks);
        p->group_bytes = tg_round64((size_t)(p->xi * p->uplane) * sizeof(double));
    } else { /* M = OC, N = the band's tiles, K = C */
        gemm_init(&p->full, p->ocp, p->tiles, p->cp, false);
        gemm_init(&p->last, p->ocp, last * p->tiles_w, p->cp, false);
        p->out_band = tg_xsmm_transpose_kernel(F32, s->oc, p->r * p->band * s->ow, plane);
        p->out_last =
            tg_xsmm_transpose_kernel(F32, s->oc, band_rows_out(p, p->bands - 1) * s->ow, plane);
    }
    size_t e = sizeof(float);
    p->at_u = WGRAD_GROUPS * p->group_bytes;
    p->at_staged = p->at_u + tg_round64((size_t)(p->xi * p->uplane) * e);
    p->at_v = p->at_staged + tg_round64((size_t)(p->rows * p->wq * p->cp) * e);
    p->at_m = p->at_v + tg_round64((size_t)(p->xi * p->vplane) * e);
    p->at_out = p->at_m + tg_round64((size_t)(p->xi * p->mplane) * e);
    int64_t out = p->r * p->band * p->r * p->tiles_w * p->ocp; /* >= r band ow ocp */
    p->at_rows = p->at_out + tg_round64((size_t)out * e);
    int64_t rows = p->rows * s->w * p->cp; /* x's rows, and the gradient's for a wgrad */
    int64_t grad_rows = s->wgrad ? p->r * p->band * s->ow * p->ocp : 0;
    n->scratch_bytes = p->at_rows + tg_round64((size_t)(rows > grad_rows ? rows : grad_rows) * e);
    p = calloc(1, sizeof *p + 2 * (size_t)p->bands * sizeof p->kernels[0]);
    if (!p)
        return tg_fail(TG_ERR_NOMEM, "conv: out of memory");
    *p = g;
    p->band_x = p->kernels;
    p->band_grad = p->kernels + p->bands;
    for (int64_t b = 0; b < p->bands; b++) {
        int64_t first, count = band_rows_in(p, b, &first);
        p->band_x[b] = count > 0 ? tg_xsmm_transpose_kernel(F32, count * s->w, s->c, p->cp) : NULL;
        if (s->wgrad)
            p->band_grad[b] =
                tg_xsmm_transpose_kernel(F32, band_rows_out(p, b) * s->ow, s->oc, p->ocp);
    }
    n->payload = p;
    return TG_OK;
}
