/* Direct 2-D convolutions on libxsmm's batch-reduce GEMM: the CONV and CONV_WGRAD plan ops
 * (compile/plan_ops.def), stride 1, NCHW tensors, no im2col buffer. A node the winograd pass
 * marked (TG_CONV_WINOGRAD) is read and checked here and computed by winograd.c.
 *
 * The "wide rows" layout makes every kernel tap the same matrix at a shifted address: with
 * the zero-padded image stored in rows of wp = w + 2 pw columns, output position p = y wp + x
 * reads input position p + kh wp + kw under tap (kh, kw). Positions with x >= ow straddle
 * two rows; they are computed and dropped (2 of 16 columns for 3x3, padding 1, 14x14).
 *
 * libxsmm is column-major and our tensors are row-major, so a row-major [C][P] image is the
 * column-major P x C matrix that libxsmm wants as its first operand, with the channel plane
 * as leading dimension:
 * - CONV: per band of output rows, out[pos, oc] = sum over taps t of X[pos + shift_t, c]
 *   W_t[c, oc]: one call batch-reduced over the KH*KW taps (accumulating in registers),
 *   M = positions, N = OC, K = C. The weights are repacked per run, tap-major [t][OC][C]; for
 *   the input gradient (TG_CONV_TRANSPOSED_FLIPPED) that repack also transposes and rotates
 *   them, and the rest is the same convolution.
 * - CONV_WGRAD: per tap, dW_t[oc, c] = sum over images and positions of G[oc, pos]
 *   X[c, pos + shift_t]. Both operands run along the reduced positions; libxsmm 1.17's JIT
 *   cannot transpose its first operand, so the gradient is transposed per image into
 *   [pos][OC] scratch (garbage positions zero, so they add nothing). M = a block of OC, N = C,
 *   K = positions, batch-reduced over a chunk of images.
 * - Channels last, with 16 channels or more along the vectors (output channels for CONV,
 *   input channels for CONV_WGRAD): the padded image is staged transposed, [row][x][c], and
 *   the GEMMs run per output row, so no garbage position is computed. CONV: M = OC, N = ow,
 *   K = C batch-reduced over the taps, into [x][oc] scratch that a transpose writes into y.
 *   CONV_WGRAD: per tap, M = C, N = a block of OC, K = ow, batch-reduced over a chunk's images
 *   and output rows, with G read where it is (its rows are the K x N operand as they lie).
 * With few input channels (an image's first layer: C = 1 or 3) K = C per tap is too short
 * for a GEMM to be fast, and the output is large next to the work, so the taps are gathered
 * instead: the C*KH*KW shifted windows of a band's rows go to scratch as an im2col of that
 * band, small because C is, without garbage positions. One GEMM with K = C*KH*KW then writes
 * the output in place (forward; where conv_rows.c's kernel is chosen, it multiplies and adds
 * over KW shifted copies of the band's rows instead); for the weight gradient, the image's
 * im2col transposed ([pos][C*KH*KW], M = C*KH*KW) against the gradient read where it is
 * (N = OC) sums straight into dW, with no transpose of the gradient at all, or, with 16
 * output channels or more, the gradient transposed per image ([pos][OC], M = OC) against
 * the im2col (N = C*KH*KW): M = 9 would fill one vector and a lane of the next with AVX2.
 *
 * The copies in and out of scratch use libxsmm's JIT copies and transposes where it has them
 * (2-3 times faster than loops on such short rows), and plain loops elsewhere; where libxsmm
 * generates no GEMM kernel, a plain loop computes the same batch-reduce GEMM. Everything is
 * dispatched by prepare; a run allocates nothing. Threads, at most one per THREAD_MACS
 * multiply-adds, take tasks that do not depend on their number: (image, band of rows) for
 * CONV, a block of output channels over a group of images for CONV_WGRAD (the groups' sums
 * added in order). So results are bit-identical for any thread count. */
#include "../compile/plan_ops.h"
#include "../compile/prologue.h"
#include "channel_sums.h"
#include "conv_rows.h"
#include "winograd.h"
#include "xsmm_copies.h"

#include <libxsmm.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#ifdef _OPENMP
#include <omp.h>
#endif

/* ---- one batch-reduce GEMM ------------------------------------------------------------------ */
/* Column-major C (m x n, ldc) = or += the sum over i < count of A_i (m x k, lda) B_i (k x n,
 * ldb), where A_i and B_i sit a_offs[i] and b_offs[i] bytes after a and b. */
typedef struct {
    tg_dtype dt;
    int64_t m, n, k, lda, ldb, ldc;
    bool accumulate;
    union {
        libxsmm_smmfunction_reducebatch_offs s;
        libxsmm_dmmfunction_reducebatch_offs d;
    } jit; /* NULL: the loop */
} brgemm;

static void brgemm_init(brgemm *b, tg_dtype dt, int64_t m, int64_t n, int64_t k, int64_t lda,
                        int64_t ldb, int64_t ldc, bool accumulate)
{
    *b = (brgemm){dt, m, n, k, lda, ldb, ldc, accumulate, {NULL}};
    if (m > INT_MAX || n > INT_MAX || k > INT_MAX || lda > INT_MAX || ldb > INT_MAX ||
        ldc > INT_MAX)
        return;
    libxsmm_blasint lm = (libxsmm_blasint)m, ln = (libxsmm_blasint)n, lk = (libxsmm_blasint)k;
    libxsmm_blasint la = (libxsmm_blasint)lda, lb = (libxsmm_blasint)ldb,
                    lc = (libxsmm_blasint)ldc;
    if (dt == TG_F64) {
        double alpha = 1, beta = accumulate;
        b->jit.d = libxsmm_dmmdispatch_reducebatch_offs(lm, ln, lk, &la, &lb, &lc, &alpha, &beta,
                                                        NULL, NULL);
    } else {
        float alpha = 1, beta = accumulate;
        b->jit.s = libxsmm_smmdispatch_reducebatch_offs(lm, ln, lk, &la, &lb, &lc, &alpha, &beta,
                                                        NULL, NULL);
    }
}

#define BRGEMM_LOOP(T)                                                                          \
    static void brgemm_loop_##T(const brgemm *g, const char *a, const char *b, T *c,            \
                                unsigned long long count, const unsigned long long *a_offs,     \
                                const unsigned long long *b_offs)                               \
    {                                                                                           \
        for (int64_t j = 0; j < g->n; j++) {                                                    \
            T *cj = c + j * g->ldc;                                                             \
            if (!g->accumulate)                                                                 \
                memset(cj, 0, (size_t)g->m * sizeof *cj);                                       \
            for (unsigned long long i = 0; i < count; i++) {                                    \
                const T *ai = (const T *)(a + a_offs[i]);                                       \
                const T *bj = (const T *)(b + b_offs[i]) + j * g->ldb;                          \
                for (int64_t p = 0; p < g->k; p++)                                              \
                    for (int64_t r = 0; r < g->m; r++)                                          \
                        cj[r] += ai[p * g->lda + r] * bj[p];                                    \
            }                                                                                   \
        }                                                                                       \
    }
BRGEMM_LOOP(float)
BRGEMM_LOOP(double)

static void brgemm_run(const brgemm *g, const void *a, const void *b, void *c,
                       unsigned long long count, const unsigned long long *a_offs,
                       const unsigned long long *b_offs)
{
    if (g->dt == TG_F64) {
        if (g->jit.d)
            g->jit.d(a, b, c, &count, a_offs, b_offs);
        else
            brgemm_loop_double(g, a, b, c, count, a_offs, b_offs);
    } else {
        if (g->jit.s)
            g->jit.s(a, b, c, &count, a_offs, b_offs);
        else
            brgemm_loop_float(g, a, b, c, count, a_offs, b_offs);
    }
}

/* ---- geometry ------------------------------------------------------------------------------ */
/* Taps are gathered when C*KH*KW is at most this (see the top of the file); conv_rows.c's
 * kernel takes them all. */
#define GATHER_MAX_K 32
_Static_assert(GATHER_MAX_K <= TG_CONV_ROWS_MAX_K, "conv_rows.c must take every gathered K");

/* A stride-1 convolution as the kernels see it: the image x [batch, c, h, w] zero-padded by
 * (ph, pw), oc output channels of oh x ow, a kh x kw kernel. */
typedef struct {
    tg_dtype dt;
    size_t elem;
    const struct conv_copies *copy; /* the typed copies for dt */
    int64_t batch, c, h, w, oc, oh, ow, kh, kw, ph, pw;
    int64_t taps; /* kh kw */
    int64_t wp;   /* the wide rows: w + 2 pw */
    bool direct;  /* no padding: the GEMMs read x where it is */
    bool gathered;
    bool channels_last; /* the GEMMs' vectors run along channels (CONV, channels last) */
    int64_t threads_max; /* threads the work is worth: THREAD_MACS multiply-adds each */
} conv_geom;

/* Multiply-adds a thread should have before a convolution takes another: below, the second
 * thread costs more than it brings (each thread repacks the weights, and waking it takes
 * microseconds). The reference model's batch-1 evaluation on 2 threads: 152 us with every
 * convolution on both threads, 116 with them on one (1 thread: 103). TG_CONV_THREAD_MACS
 * sets another (0: every thread, always; the tests that compare thread counts use it).
 * Tasks do not depend on the thread count, so neither do results. */
#define THREAD_MACS (1 << 22)

static int64_t thread_macs(void)
{
    const char *env = getenv("TG_CONV_THREAD_MACS");
    char *end;
    long long n = env ? strtoll(env, &end, 10) : -1;
    return env && end != env && *end == '\0' && n >= 0 ? (int64_t)n : THREAD_MACS;
}

/* The threads a run takes: the library's, at most the work's worth; all of them with a
 * prologue (compile/prologue.h), whose full-size pass is work the count does not see. */
static int conv_threads(const conv_geom *g, const tg_ir_node *n)
{
    int threads = tg_num_threads();
    return g->threads_max < threads && !n->prologue ? (int)g->threads_max : threads;
}

/* Where tap t reads, relative to the output position, in the wide layout. */
static int64_t tap_shift(const conv_geom *g, int64_t t) { return t / g->kw * g->wp + t % g->kw; }

static int thread_index(void)
{
#ifdef _OPENMP
    return omp_get_thread_num();
#else
    return 0;
#endif
}

/* ---- the typed copies in and out of scratch ---------------------------------------------- */
/* Rows here are short (14 elements for the reference model), so these are plain loops the
 * compiler vectorizes, not memcpy calls; plain copies and transposes of rows are libxsmm's
 * (xsmm_copies.h). Weights and sums come in two layouts: tap-major [t][o][c] when the
 * GEMMs batch over taps, [o][c][t] (the tensors' own) when taps are gathered. */
#define COPIES(T)                                                                               \
    /* cols[c taps + t][r ow + x] = src[c][(r + kh) wp + x + kw] for the first `rows` output \
     * rows: the band's im2col, from its wide image src (plane elements per channel). */       \
    static void gather_taps_##T(const conv_geom *g, const void *src_, int64_t plane,            \
                                int64_t rows, void *cols_, int64_t ld)                          \
    {                                                                                           \
        const T *src = src_;                                                                    \
        T *cols = cols_;                                                                        \
        for (int64_t c = 0; c < g->c; c++)                                                      \
            for (int64_t t = 0; t < g->taps; t++) {                                             \
                const T *from = src + c * plane + tap_shift(g, t);                              \
                T *to = cols + (c * g->taps + t) * ld;                                          \
                for (int64_t r = 0; r < rows; r++, from += g->wp, to += g->ow)                  \
                    for (int64_t x = 0; x < g->ow; x++)                                         \
                        to[x] = from[x];                                                        \
            }                                                                                   \
    }                                                                                           \
    /* cols[r ow + x][c taps + t] = src[c][(r + kh) wp + x + kw]: a whole image's im2col,      \
     * transposed, from its wide image src (plane elements per channel). */                    \
    static void gather_taps_transposed_##T(const conv_geom *g, const void *src_, int64_t plane, \
                                           void *cols_)                                         \
    {                                                                                           \
        const T *src = src_;                                                                    \
        T *cols = cols_;                                                                        \
        int64_t ckk = g->c * g->taps, shift[GATHER_MAX_K];                                      \
        for (int64_t j = 0; j < ckk; j++)                                                       \
            shift[j] = j / g->taps * plane + tap_shift(g, j % g->taps);                         \
        for (int64_t r = 0; r < g->oh; r++)                                                     \
            for (int64_t x = 0; x < g->ow; x++, cols += ckk) {                                  \
                const T *at = src + r * g->wp + x;                                              \
                for (int64_t j = 0; j < ckk; j++)                                               \
                    cols[j] = at[shift[j]];                                                     \
            }                                                                                   \
    }                                                                                           \
    /* The weights W_t[c, o] = w[o][c][t], or flipped: w[c][o][taps - 1 - t]. */                \
    static void repack_weights_##T(const conv_geom *g, bool flipped, const void *w_, void *wt_) \
    {                                                                                           \
        const T *w = w_;                                                                        \
        T *wt = wt_;                                                                            \
        int64_t taps = g->taps;                                                                 \
        for (int64_t o = 0; o < g->oc; o++)                                                     \
            for (int64_t c = 0; c < g->c; c++)                                                  \
                for (int64_t t = 0; t < taps; t++) {                                            \
                    size_t at = g->gathered        ? (size_t)((o * g->c + c) * taps + t)        \
                                : g->channels_last ? (size_t)((t * g->c + c) * g->oc + o)       \
                                                   : (size_t)((t * g->oc + o) * g->c + c);      \
                    wt[at] = flipped ? w[(c * g->oc + o) * taps + taps - 1 - t]                 \
                                     : w[(o * g->c + c) * taps + t];                            \
                }                                                                               \
    }                                                                                           \
    /* gt[y wp + x][o] = grad[oc0 + o][y][x]; the garbage positions (x >= ow) stay as the      \
     * caller cleared them, once. */                                                            \
    static void transpose_grad_##T(const conv_geom *g, const void *grad, int64_t oc0,           \
                                   int64_t m, void *gt_)                                        \
    {                                                                                           \
        int64_t plane = g->oh * g->ow;                                                          \
        const T *first = (const T *)grad + oc0 * plane;                                         \
        for (int64_t y = 0; y < g->oh; y++)                                                     \
            for (int64_t x = 0; x < g->ow; x++) {                                               \
                const T *src = first + y * g->ow + x;                                           \
                T *gt = (T *)gt_ + (y * g->wp + x) * m;                                         \
                for (int64_t o = 0; o < m; o++)                                                 \
                    gt[o] = src[o * plane];                                                     \
            }                                                                                   \
    }                                                                                           \
    /* dw[oc0 + o][c][t] = the taps' sums acc[t][c][o], or acc[t][o][c] channels last. */       \
    static void scatter_wgrad_##T(const conv_geom *g, const double *acc, int64_t oc0,           \
                                  int64_t m, void *dw_)                                         \
    {                                                                                           \
        T *dw = dw_;                                                                            \
        for (int64_t o = 0; o < m; o++)                                                         \
            for (int64_t c = 0; c < g->c; c++)                                                  \
                for (int64_t t = 0; t < g->taps; t++) {                                         \
                    int64_t at = g->channels_last ? (t * m + o) * g->c + c                      \
                                                  : (t * g->c + c) * m + o;                     \
                    dw[((oc0 + o) * g->c + c) * g->taps + t] = (T)acc[at];                      \
                }                                                                               \
    }                                                                                           \
    /* acc[i] += part[i]: a chunk's sums join the running total in double. */                  \
    static void add_partial_##T(double *acc, const void *part_, int64_t count)                  \
    {                                                                                           \
        const T *part = part_;                                                                  \
        for (int64_t i = 0; i < count; i++)                                                     \
            acc[i] += part[i];                                                                  \
    }                                                                                           \
    static const struct conv_copies copies_##T = {                                              \
        gather_taps_##T, gather_taps_transposed_##T, repack_weights_##T, transpose_grad_##T,    \
        scatter_wgrad_##T, add_partial_##T};

struct conv_copies {
    void (*gather_taps)(const conv_geom *g, const void *src, int64_t plane, int64_t rows,
                        void *cols, int64_t ld);
    void (*gather_taps_transposed)(const conv_geom *g, const void *src, int64_t plane,
                                   void *cols);
    void (*repack_weights)(const conv_geom *g, bool flipped, const void *w, void *wt);
    void (*transpose_grad)(const conv_geom *g, const void *grad, int64_t oc0, int64_t m,
                           void *gt);
    void (*scatter_wgrad)(const conv_geom *g, const double *acc, int64_t oc0, int64_t m,
                          void *dw);
    void (*add_partial)(double *acc, const void *part, int64_t count);
};
COPIES(float)
COPIES(double)

/* transpose_rows for floats where m and n are multiples of 8: 8x8 blocks transposed in
 * registers, written with the compilers' vector extensions (no instruction set assumed: a
 * target without 32-byte vectors gets two halves). The weight gradient's G^T per image,
 * [32][784] floats in cache: 0.22 ms for 128 images against 0.34 for libxsmm's JIT
 * transpose of the same shape (Zen 5). */
#if defined(__GNUC__) && (defined(__clang__) || __GNUC__ >= 12)
#define HAVE_TRANSPOSE8 1
typedef float f32x8 __attribute__((vector_size(32)));
/* Rows are loaded through an under-aligned vector type, not memcpy: GCC 12 tuned for Zen 3
 * or generic x86-64-v3 copied each row to the stack in two 16-byte halves and read it back
 * whole, a failed store forwarding per row (the transpose took 3.5x its AVX-512 time). */
typedef float f32x8_unaligned __attribute__((vector_size(32), aligned(4)));
#define SHUFFLE8(a, b, ...) __builtin_shufflevector(a, b, __VA_ARGS__)

static void transpose8_block(const float *src, int64_t ldi, float *dst, int64_t ldo)
{
    f32x8 r[8], t[8], u[8];
    for (int i = 0; i < 8; i++)
        r[i] = *(const f32x8_unaligned *)(src + i * ldi);
    for (int i = 0; i < 8; i += 2) { /* pairs of rows interleaved */
        t[i] = SHUFFLE8(r[i], r[i + 1], 0, 8, 1, 9, 4, 12, 5, 13);
        t[i + 1] = SHUFFLE8(r[i], r[i + 1], 2, 10, 3, 11, 6, 14, 7, 15);
    }
    for (int i = 0; i < 8; i += 4) /* then pairs of pairs */
        for (int k = 0; k < 2; k++) {
            u[i + k] = SHUFFLE8(t[i + k], t[i + k + 2], 0, 1, 8, 9, 4, 5, 12, 13);
            u[i + k + 2] = SHUFFLE8(t[i + k], t[i + k + 2], 2, 3, 10, 11, 6, 7, 14, 15);
        }
    for (int k = 0; k < 4; k++) { /* then the halves: column k and column k + 4 */
        f32x8 lo = SHUFFLE8(u[k], u[k + 4], 0, 1, 2, 3, 8, 9, 10, 11);
        f32x8 hi = SHUFFLE8(u[k], u[k + 4], 4, 5, 6, 7, 12, 13, 14, 15);
        int col = k == 0 ? 0 : k == 1 ? 2 : k == 2 ? 1 : 3; /* u's order: 0, 2, 1, 3 */
        *(f32x8_unaligned *)(dst + col * ldo) = lo;
        *(f32x8_unaligned *)(dst + (col + 4) * ldo) = hi;
    }
}

static void transpose8(const float *src, int64_t ldi, float *dst, int64_t ldo, int64_t m,
                       int64_t n)
{
    for (int64_t i = 0; i < m; i += 8)
        for (int64_t j = 0; j < n; j += 8)
            transpose8_block(src + j * ldi + i, ldi, dst + i * ldo + j, ldo);
}
#else
#define HAVE_TRANSPOSE8 0
#endif

/* Rows first .. first + rows - 1 of each channel's zero-padded image (negative: the top
 * padding) into dst, `plane` elements per channel. Only what can change between calls is
 * written: the left and right padding columns stay as the caller cleared them, once.
 * `whole` copies a channel's h rows, for when all of them are in range. */
static void stage_rows(const conv_geom *g, libxsmm_xmcopyfunction whole, const char *image,
                       int64_t first, int64_t rows, int64_t plane, char *dst)
{
    size_t e = g->elem, row = (size_t)g->wp * e;
    int64_t above = tg_min64(first < 0 ? -first : 0, rows); /* rows of padding, then of x */
    int64_t in = tg_min64(rows - above, g->h - (first + above));
    in = in > 0 ? in : 0;
    for (int64_t c = 0; c < g->c; c++) {
        char *band = dst + (size_t)(c * plane) * e;
        memset(band, 0, (size_t)above * row);
        memset(band + (size_t)(above + in) * row, 0, (size_t)(rows - above - in) * row);
        if (in > 0)
            tg_xsmm_copy(in == g->h ? whole : NULL, e,
                         image + (size_t)((c * g->h + first + above) * g->w) * e, g->w,
                         band + (size_t)above * row + (size_t)g->pw * e, g->wp, g->w, in);
    }
}

/* The same rows staged channels last: dst[r][x][c], rows of wp positions of C channels, by
 * `each`, a transpose of one input row (w positions of C channels) where libxsmm has one. */
static void stage_rows_last(const conv_geom *g, libxsmm_xtransfunction each, const char *image,
                            int64_t first, int64_t rows, char *dst)
{
    size_t e = g->elem, row = (size_t)(g->wp * g->c) * e;
    int64_t above = tg_min64(first < 0 ? -first : 0, rows);
    int64_t in = tg_min64(rows - above, g->h - (first + above));
    in = in > 0 ? in : 0;
    memset(dst, 0, (size_t)above * row);
    memset(dst + (size_t)(above + in) * row, 0, (size_t)(rows - above - in) * row);
    for (int64_t r = 0; r < in; r++)
        tg_xsmm_transpose(each, e, image + (size_t)((first + above + r) * g->w) * e,
                          g->h * g->w, dst + (above + r) * row + (size_t)(g->pw * g->c) * e,
                          g->c, g->w, g->c);
}

/* ---- CONV ------------------------------------------------------------------------------------ */
/* Output rows go in bands: thin enough that the band's A operand stays in L1 while the GEMM
 * passes over it once per block of output channels (BAND_L1_BYTES, the L1 of current cores;
 * for the reference model's input gradient, 64 channels at 14x14, two bands instead of one
 * are 10-15% faster), at most BAND_POSITIONS positions, and with few images thinner still,
 * so that there are MIN_TASKS tasks to share. All depend on the shapes only, never on the
 * thread count. */
#define BAND_L1_BYTES (48 * 1024)
#define BAND_POSITIONS 1024
#define MIN_TASKS 4

typedef struct {
    conv_geom g;
    bool flipped;
    bool channel_sums;        /* TG_CONV_CHANNEL_SUMS: each band's sums after y */
    bool by_rows;             /* taps gathered: conv_rows.c computes the bands */
    tg_conv_rows_shape rows;
    int64_t band_rows, bands;
    int64_t plane;            /* elements per channel of the band's input: its rows, or h w */
    brgemm full, last;        /* a full band and the last, maybe shorter, band */
    libxsmm_xmcopyfunction stage, copy_out; /* an image's rows in; a full band's rows out */
    /* channels last: an input row in; a full band's and the last band's output out */
    libxsmm_xtransfunction stage_last, out_full, out_last;
    size_t at_image, at_cols, at_out; /* in a thread's scratch (the weights are first) */
    unsigned long long count; /* GEMMs summed per band: the taps, or 1 when gathered */
    unsigned long long offs[]; /* A offsets, then B offsets (bytes) */
} conv_fwd;

/* ---- CONV, channels last -------------------------------------------------------------------- */
/* With enough output channels to fill vectors (CHANNELS_LAST_MIN), the GEMMs run the other way
 * round: a band's padded rows are staged channels last, [row][x][c], and each output row is
 * one GEMM batch-reduced over the taps with M = OC, N = ow, K = C, into [x][oc] scratch; the
 * band's output is then transposed into y's channel planes. The wide rows compute wp columns
 * for ow (16 for 14 at 14x14: an eighth of the work thrown away), this computes none, and
 * the vectors run along output channels. Measured at 14x14, N 128, one thread (Zen 5,
 * AVX-512): 32->64 4.5 ms against 5.5 for the wide rows, 64->32 (the reference model's input
 * gradient) 4.4 against 5.6; oneDNN's blocked kernels 4.4 and 4.5. The staging and the
 * transposes are libxsmm's JIT transposes (loops where it has none): 7% of the time. */
#define CHANNELS_LAST_MIN 16

/* Output rows r0 .. r0 + rows - 1 of image `image` (at img), channels last. */
static void forward_band_last(const conv_fwd *p, const char *img, char *mine, char *y,
                              int64_t image, int64_t r0, int64_t rows)
{
    const conv_geom *g = &p->g;
    size_t e = g->elem;
    char *staged = mine + p->at_image, *band_out = mine + p->at_out;
    stage_rows_last(g, p->stage_last, img, r0 - g->ph, rows + g->kh - 1, staged);
    for (int64_t r = 0; r < rows; r++)
        brgemm_run(&p->full, mine, staged + (size_t)(r * g->wp * g->c) * e,
                   band_out + (size_t)(r * g->ow * g->oc) * e, p->count, p->offs,
                   p->offs + p->count);
    if (p->channel_sums)
        tg_conv_band_sums_last((const float *)band_out, g->oc, g->oc, g->oh, g->ow, image, r0,
                               rows, (float *)y + g->batch * g->oc * g->oh * g->ow);
    tg_xsmm_transpose(rows == p->band_rows ? p->out_full : p->out_last, e, band_out, g->oc,
                      y + (size_t)((image * g->oc * g->oh + r0) * g->ow) * e, g->oh * g->ow,
                      g->oc, rows * g->ow);
}

/* With TG_CONV_CHANNEL_SUMS, the band's sums of y's rows r0 .. r0 + rows - 1, from y. */
static void band_sums(const conv_fwd *p, char *y, int64_t image, int64_t r0, int64_t rows)
{
    const conv_geom *g = &p->g;
    if (p->channel_sums)
        tg_conv_band_sums((const float *)y, g->oc, g->oh, g->ow, image, r0, rows,
                          (float *)y + g->batch * g->oc * g->oh * g->ow);
}

static void forward_band(const conv_fwd *p, const char *x, char *mine, char *y, int64_t image,
                         int64_t band)
{
    const conv_geom *g = &p->g;
    size_t e = g->elem;
    int64_t r0 = band * p->band_rows, rows = tg_min64(p->band_rows, g->oh - r0);
    const brgemm *gemm = rows == p->band_rows ? &p->full : &p->last;
    const char *img = x + (size_t)(image * g->c * g->h * g->w) * e;
    const char *a = img + (size_t)(r0 * g->w) * e;
    if (g->channels_last) {
        forward_band_last(p, img, mine, y, image, r0, rows);
        return;
    }
    float *sums = (float *)y + g->batch * g->oc * g->oh * g->ow; /* with channel sums */
    double col[GATHER_MAX_K];
    if (p->by_rows) {
        tg_conv_rows(g->dt, &p->rows, img, mine, r0, rows, mine + p->at_cols,
                     y + (size_t)(image * g->oc * g->oh * g->ow) * e);
        if (p->channel_sums) {
            tg_conv_rows_tap_sums(&p->rows, rows, mine + p->at_cols, col);
            tg_conv_band_sums_taps(col, g->c * g->taps, (const float *)mine, g->oc, g->oh,
                                   image, r0, rows, sums);
        }
        return;
    }
    if (!g->direct) {
        stage_rows(g, p->stage, img, r0 - g->ph, rows + g->kh - 1, p->plane, mine + p->at_image);
        a = mine + p->at_image;
    }
    if (g->gathered) { /* straight into y, whose rows have no garbage */
        g->copy->gather_taps(g, a, p->plane, rows, mine + p->at_cols, gemm->lda);
        brgemm_run(gemm, mine + p->at_cols, mine,
                   y + (size_t)((image * g->oc * g->oh + r0) * g->ow) * e, 1, p->offs,
                   p->offs + 1);
        for (int64_t j = 0; p->channel_sums && j < g->c * g->taps; j++)
            col[j] = tg_lane_sum((const float *)(mine + p->at_cols) + j * gemm->lda,
                                 rows * g->ow);
        if (p->channel_sums)
            tg_conv_band_sums_taps(col, g->c * g->taps, (const float *)mine, g->oc, g->oh,
                                   image, r0, rows, sums);
        return;
    }
    char *band_out = mine + p->at_out;
    brgemm_run(gemm, a, mine, band_out, p->count, p->offs, p->offs + p->count);
    for (int64_t o = 0; o < g->oc; o++) /* without the garbage positions */
        tg_xsmm_copy(rows == p->band_rows ? p->copy_out : NULL, e,
                     band_out + (size_t)(o * gemm->ldc) * e, g->wp,
                     y + (size_t)(((image * g->oc + o) * g->oh + r0) * g->ow) * e, g->ow,
                     g->ow, rows);
    band_sums(p, y, image, r0, rows);
}

void tg_conv_run(const tg_ir_node *n, void *out, const void *const *in, void *scratch)
{
    if (n->attr[4] & TG_CONV_WINOGRAD) {
        tg_winograd_run(n, out, in, scratch);
        return;
    }
    const conv_fwd *p = n->payload;
    int64_t tasks = p->g.batch * p->bands;
    if (tasks == 0)
        return;
#pragma omp parallel num_threads(conv_threads(&p->g, n))
    {
        char *mine = (char *)scratch + (size_t)thread_index() * n->scratch_bytes;
        p->g.copy->repack_weights(&p->g, p->flipped, in[1], mine);
        memset(mine + p->at_image, 0, p->at_cols - p->at_image); /* the padding columns */
#pragma omp for schedule(static)
        for (int64_t t = 0; t < tasks; t++)
            forward_band(p, in[0], mine, out, t / p->bands, t % p->bands);
    }
}

/* Bands of output rows whose A operand (the band's padded rows, its im2col, or with
 * conv_rows.c's kernel its shifted copies) fits in L1; see BAND_L1_BYTES. */
static int64_t choose_bands(const conv_geom *g, bool by_rows)
{
    bool cols = g->gathered && !by_rows;
    int64_t row_elems = by_rows ? g->c * g->kw * g->ow
                        : cols  ? g->c * g->taps * g->ow
                                : g->c * g->wp;
    int64_t fit = BAND_L1_BYTES / (row_elems * (int64_t)g->elem) - (cols ? 0 : g->kh - 1);
    fit = fit < 1 ? 1 : fit;
    int64_t bands = (g->oh * g->wp + BAND_POSITIONS - 1) / BAND_POSITIONS;
    if (bands < (g->oh + fit - 1) / fit)
        bands = (g->oh + fit - 1) / fit;
    if (g->batch * bands < MIN_TASKS)
        bands = (MIN_TASKS + g->batch - 1) / g->batch;
    bands = tg_min64(bands, g->oh);
    /* as many bands as rows of that height make */
    int64_t band_rows = (g->oh + bands - 1) / bands;
    return (g->oh + band_rows - 1) / band_rows;
}

static int prepare_forward(tg_ir_node *n, const conv_geom *g)
{
    unsigned long long count = g->gathered ? 1 : (unsigned long long)g->taps;
    conv_fwd *p = calloc(1, sizeof *p + 2 * count * sizeof p->offs[0]);
    if (!p)
        return tg_fail(TG_ERR_NOMEM, "conv: out of memory");
    p->g = *g;
    p->flipped = n->attr[4] & TG_CONV_TRANSPOSED_FLIPPED;
    p->channel_sums = n->attr[4] & TG_CONV_CHANNEL_SUMS;
    p->count = count;
    /* Taps gathered: conv_rows.c's kernel where it is the faster, unless a band would be
     * shorter than its vector. */
    p->by_rows = g->gathered && tg_conv_rows_chosen();
    p->rows = (tg_conv_rows_shape){g->c, g->h, g->w, g->oc, g->oh, g->ow, g->kh, g->kw, g->ph,
                                   g->pw};
    int64_t bands = choose_bands(g, p->by_rows);
    int64_t band_rows = (g->oh + bands - 1) / bands;
    if (p->by_rows && (g->oh - (bands - 1) * band_rows) * g->ow <
                          tg_conv_rows_min_positions(g->dt)) {
        p->by_rows = false;
        bands = choose_bands(g, false);
    }
    bool cols = g->gathered && !p->by_rows;
    p->band_rows = (g->oh + bands - 1) / bands;
    p->bands = (g->oh + p->band_rows - 1) / p->band_rows;
    bool staged = (!g->direct || g->channels_last) && !p->by_rows;
    p->plane = staged ? (p->band_rows + g->kh - 1) * g->wp : g->h * g->w;
    int64_t last_rows = g->oh - (p->bands - 1) * p->band_rows, k = g->gathered ? g->c * g->taps
                                                                                        : g->c;
    if (cols) { /* A: the band's im2col; C: y's channel planes */
        int64_t positions = p->band_rows * g->ow;
        brgemm_init(&p->full, g->dt, positions, g->oc, k, positions, k, g->oh * g->ow, false);
        brgemm_init(&p->last, g->dt, last_rows * g->ow, g->oc, k, positions, k, g->oh * g->ow,
                    false);
    } else if (g->channels_last) { /* A: W_t [c][oc]; B: a staged row [x][c]; C: [x][oc] */
        int64_t plane = g->oh * g->ow;
        brgemm_init(&p->full, g->dt, g->oc, g->ow, k, g->oc, k, g->oc, false);
        p->stage_last = tg_xsmm_transpose_kernel(g->elem, g->w, g->c, g->c);
        p->out_full = tg_xsmm_transpose_kernel(g->elem, g->oc, p->band_rows * g->ow, plane);
        p->out_last = tg_xsmm_transpose_kernel(g->elem, g->oc, last_rows * g->ow, plane);
    } else if (!p->by_rows) { /* A: the wide band, a plane per channel; C: the band's output */
        int64_t positions = p->band_rows * g->wp;
        brgemm_init(&p->full, g->dt, (p->band_rows - 1) * g->wp + g->ow, g->oc, k, p->plane, k,
                    positions, false);
        brgemm_init(&p->last, g->dt, (last_rows - 1) * g->wp + g->ow, g->oc, k, p->plane, k,
                    positions, false);
        p->copy_out = tg_xsmm_copy_kernel(g->elem, g->ow, p->band_rows, g->wp, g->ow);
    }
    if (!g->direct && !g->channels_last && !p->by_rows)
        p->stage = tg_xsmm_copy_kernel(g->elem, g->w, g->h, g->w, g->wp);
    for (unsigned long long t = 0; t < count && !g->gathered; t++) {
        unsigned long long shift = (unsigned long long)tap_shift(g, (int64_t)t) * g->elem;
        unsigned long long weights = t * (unsigned long long)(g->oc * g->c) * g->elem;
        /* channels last, A is the weights and a position holds c channels */
        p->offs[t] = g->channels_last ? weights : shift;
        p->offs[count + t] = g->channels_last ? shift * (unsigned long long)g->c : weights;
    }
    size_t weights = tg_round64((size_t)(g->taps * g->oc * g->c) * g->elem);
    size_t image = staged ? tg_round64((size_t)(g->c * p->plane) * g->elem) : 0;
    size_t cols_bytes = p->by_rows ? tg_round64(tg_conv_rows_scratch(g->dt, &p->rows,
                                                                      p->band_rows))
                        : cols ? tg_round64((size_t)(k * p->full.lda) * g->elem)
                               : 0;
    int64_t band_positions = g->channels_last ? p->band_rows * g->ow : p->full.ldc;
    size_t band_out = g->gathered ? 0 : tg_round64((size_t)(g->oc * band_positions) * g->elem);
    p->at_image = weights;
    p->at_cols = weights + image;
    p->at_out = p->at_cols + cols_bytes;
    n->scratch_bytes = p->at_out + band_out;
    n->payload = p;
    return TG_OK;
}

/* ---- CONV_WGRAD ------------------------------------------------------------------------------ */
/* Output channels go in blocks of at most OC_BLOCK, images in chunks of about CHUNK_BYTES of
 * staged operands, and chunks in IMAGE_GROUPS groups of consecutive chunks: the tasks, a
 * group of one block each, are what threads share. A chunk's sums are accumulated by the
 * GEMM in the tensors' dtype and added into its group's running total in double, as the eager
 * path sums its per-image products (over a whole batch in f32, the cancellation in a gradient
 * whose mean batch norm has removed costs an order of magnitude in accuracy); the groups'
 * totals are then added in group order. Blocks and groups are fixed when the kernel is
 * prepared, so every element is summed in the same order for any thread count.
 *
 * Groups, not blocks, give two threads their work: a block stages every image of its group
 * (pads it, or gathers its taps, and transposes the gradient's rows), so with two blocks of
 * output channels each image would be staged twice. Measured with 32->64 at 14x14, N 128, one
 * thread: one block of 64 channels takes 0.86 of the time of two blocks of 32. */
#define OC_BLOCK 64
#define CHUNK_BYTES (256 * 1024)
#define IMAGE_GROUPS 2

typedef struct {
    conv_geom g;
    int64_t ocb, blocks, chunk;
    int64_t groups, chunks;    /* image groups, and the chunks of the batch */
    int64_t k;                 /* positions summed per image: (oh - 1) wp + ow, or oh ow */
    int64_t plane;             /* elements per channel of the (padded) input image */
    brgemm full, last;         /* a full block of output channels and the last one */
    libxsmm_xtransfunction transpose_full, transpose_last; /* their G rows; NULL: the loop */
    bool transpose8;           /* gathered channels last: G^T by transpose8 instead */
    libxsmm_xmcopyfunction stage; /* an image's rows into the padded layout; NULL: the loop */
    libxsmm_xtransfunction stage_last; /* channels last: an input row; NULL: the loop */
    size_t a_bytes;            /* A staged per image: the gradient block or the im2col */
    size_t b_bytes;            /* B staged per image: the padded input (taps batched) */
    size_t padded_bytes;       /* a padded input image; 0 without padding */
    int64_t sums;              /* elements of a block's sums */
    size_t group_bytes;        /* a group's double sums, IMAGE_GROUPS of them first */
    size_t at_part, at_a, at_b, at_image; /* in a thread's scratch, after the groups' sums */
    size_t staged_bytes;       /* from at_a on */
    unsigned long long offs[]; /* images of a chunk: A offsets, then B offsets (bytes) */
} conv_wgrad;

/* Image i's zero-padded copy at `to`, or where it is when there is no padding. */
static const char *padded_image(const conv_wgrad *p, const char *x, int64_t i, char *to)
{
    const conv_geom *g = &p->g;
    const char *img = x + (size_t)(i * g->c * g->h * g->w) * g->elem;
    if (g->direct)
        return img;
    stage_rows(g, p->stage, img, -g->ph, g->oh + g->kh - 1, p->plane, to);
    return to;
}

/* gt[y wp + x][o] = grad[oc0 + o][y][x] for one image: a libxsmm transpose per output row
 * where there is one (twice as fast as the loop), else the loop. */
static void transpose_grad(const conv_wgrad *p, const char *grad, int64_t oc0, int64_t m,
                           char *gt)
{
    const conv_geom *g = &p->g;
    libxsmm_xtransfunction jit = m == p->ocb ? p->transpose_full : p->transpose_last;
    if (!jit) {
        g->copy->transpose_grad(g, grad, oc0, m, gt);
        return;
    }
    unsigned int ldi = (unsigned int)(g->oh * g->ow), ldo = (unsigned int)m;
    const char *rows = grad + (size_t)(oc0 * g->oh * g->ow) * g->elem;
    for (int64_t y = 0; y < g->oh; y++)
        jit(rows + (size_t)(y * g->ow) * g->elem, &ldi, gt + (size_t)(y * g->wp * m) * g->elem,
            &ldo);
}

/* A task: the block of output channels from oc0 (m of them) over the images of chunks
 * c0 .. c1 - 1, summed into acc. */
typedef struct {
    int64_t oc0, m, c0, c1;
    double *acc;
    const tg_prologue *prologue; /* computes the gradient's images first, or NULL */
} wgrad_task;

/* The chunk's images of the gradient, images n0 .. n0 + count - 1: computed first where a
 * prologue makes them (for the first block of output channels only, unless the prologue is
 * chunked: the others find them in memory), and where they then are. */
static const char *chunk_grad(const conv_wgrad *p, const wgrad_task *task, const char *grad,
                              char *mine, int64_t n0, int64_t count)
{
    if (task->prologue)
        return tg_prologue_run(task->prologue, n0, count, mine);
    return grad + (size_t)(n0 * p->g.oc * p->g.oh * p->g.ow) * p->g.elem;
}

/* Taps batched: per tap, the task's sums acc[t][c][o] += G^T X_t over its images, with G
 * transposed into [pos][oc] and X padded into the wide layout. */
static void wgrad_taps(const conv_wgrad *p, const char *grad, const char *x, char *mine,
                       const wgrad_task *task)
{
    const conv_geom *g = &p->g;
    size_t e = g->elem;
    int64_t m = task->m;
    const brgemm *gemm = m == p->ocb ? &p->full : &p->last;
    char *part = mine + p->at_part, *gt = mine + p->at_a;
    int64_t sums = g->taps * g->c * m;
    memset(task->acc, 0, (size_t)sums * sizeof *task->acc);
    memset(gt, 0, p->staged_bytes); /* the garbage positions and padding columns */
    for (int64_t n0 = task->c0 * p->chunk; n0 < tg_min64(task->c1 * p->chunk, g->batch);
         n0 += p->chunk) {
        int64_t count = tg_min64(p->chunk, g->batch - n0);
        const char *images = chunk_grad(p, task, grad, mine, n0, count);
        for (int64_t i = 0; i < count; i++) {
            transpose_grad(p, images + (size_t)(i * g->oc * g->oh * g->ow) * e, task->oc0, m,
                           gt + (size_t)i * p->a_bytes);
            padded_image(p, x, n0 + i, mine + p->at_b + (size_t)i * p->b_bytes);
        }
        const char *b = g->direct ? x + (size_t)(n0 * g->c * g->h * g->w) * e : mine + p->at_b;
        for (int64_t t = 0; t < g->taps; t++)
            brgemm_run(gemm, gt, b + (size_t)tap_shift(g, t) * e,
                       part + (size_t)(t * g->c * m) * e, (unsigned long long)count, p->offs,
                       p->offs + p->chunk);
        g->copy->add_partial(task->acc, part, sums);
    }
}

/* Taps gathered: the task's sums acc[o][c, t] += cols^T G^T over its images, with cols^T the
 * image's im2col transposed, [pos][c, t], and G read where it is: M = C*KH*KW, N = the
 * block's channels. Channels last (16 output channels or more), the vectors run along the
 * output channels instead: acc[c, t][o] += G^T cols^T with G transposed per image into
 * [pos][o] (one libxsmm transpose) and the im2col as the forward gathers it, [c, t][pos]:
 * M = the block's channels, N = C*KH*KW. With one input channel M = 9 filled one vector and
 * a lane of the next on AVX2 (8 floats): the reference model's first weight gradient took
 * 3.1 ms a step there against 1.1 with AVX-512. Measured: docs/speed.md. */
static void wgrad_gathered(const conv_wgrad *p, const char *grad, const char *x, char *mine,
                           const wgrad_task *task)
{
    const conv_geom *g = &p->g;
    size_t e = g->elem;
    int64_t m = task->m, ckk = g->c * g->taps, plane = g->oh * g->ow;
    const brgemm *gemm = m == p->ocb ? &p->full : &p->last;
    char *part = mine + p->at_part;
    memset(task->acc, 0, (size_t)(m * ckk) * sizeof *task->acc);
    memset(mine + p->at_image, 0, p->padded_bytes); /* the padding */
    for (int64_t n0 = task->c0 * p->chunk; n0 < tg_min64(task->c1 * p->chunk, g->batch);
         n0 += p->chunk) {
        int64_t count = tg_min64(p->chunk, g->batch - n0);
        const char *block = chunk_grad(p, task, grad, mine, n0, count) +
                            (size_t)(task->oc0 * plane) * e;
        for (int64_t i = 0; i < count; i++) {
            const char *image = padded_image(p, x, n0 + i, mine + p->at_image);
            char *a = mine + p->at_a + (size_t)i * p->a_bytes;
            if (g->channels_last) { /* A: G^T, B: the im2col */
                const char *rows = block + (size_t)(i * g->oc * plane) * e;
#if HAVE_TRANSPOSE8
                if (p->transpose8)
                    transpose8((const float *)rows, plane, (float *)a, m, plane, m);
                else
#endif
                    tg_xsmm_transpose(m == p->ocb ? p->transpose_full : p->transpose_last,
                                      g->elem, rows, plane, a, m, plane, m);
                g->copy->gather_taps(g, image, p->plane, g->oh,
                                     mine + p->at_b + (size_t)i * p->b_bytes, plane);
            } else { /* A: the im2col transposed, B: G where it is */
                g->copy->gather_taps_transposed(g, image, p->plane, a);
            }
        }
        const char *b = g->channels_last ? mine + p->at_b : block;
        brgemm_run(gemm, mine + p->at_a, b, part, (unsigned long long)count, p->offs,
                   p->offs + p->chunk);
        g->copy->add_partial(task->acc, part, m * ckk);
    }
}

/* Channels last: per tap, the task's sums acc[t][o][c] += X_t^T G^T over its images' output
 * rows, with X staged channels last as the forward stages it and G read where it is: one
 * GEMM per tap, batch-reduced over the chunk's images and their output rows, M = C, N = the
 * block's channels, K = ow. Neither garbage positions nor a transposed G. Measured (32->64
 * at 14x14, N 128, one thread, Zen 5): 4.4-5.3 ms against 5.6 for the taps over wide rows. */
static void wgrad_last(const conv_wgrad *p, const char *grad, const char *x, char *mine,
                       const wgrad_task *task)
{
    const conv_geom *g = &p->g;
    size_t e = g->elem;
    int64_t m = task->m, sums = g->taps * g->c * m;
    const brgemm *gemm = m == p->ocb ? &p->full : &p->last;
    char *part = mine + p->at_part, *staged = mine + p->at_b;
    memset(task->acc, 0, (size_t)sums * sizeof *task->acc);
    memset(staged, 0, p->staged_bytes); /* the padding columns */
    for (int64_t n0 = task->c0 * p->chunk; n0 < tg_min64(task->c1 * p->chunk, g->batch);
         n0 += p->chunk) {
        int64_t count = tg_min64(p->chunk, g->batch - n0);
        const char *images = chunk_grad(p, task, grad, mine, n0, count);
        for (int64_t i = 0; i < count; i++)
            stage_rows_last(g, p->stage_last, x + (size_t)((n0 + i) * g->c * g->h * g->w) * e,
                            -g->ph, g->oh + g->kh - 1, staged + (size_t)i * p->b_bytes);
        const char *b = images + (size_t)(task->oc0 * g->oh * g->ow) * e;
        for (int64_t t = 0; t < g->taps; t++)
            brgemm_run(gemm, staged + (size_t)(tap_shift(g, t) * g->c) * e, b,
                       part + (size_t)(t * m * g->c) * e, (unsigned long long)(count * g->oh),
                       p->offs, p->offs + p->chunk * g->oh);
        g->copy->add_partial(task->acc, part, sums);
    }
}

/* The block's groups' sums added in group order, into dW's rows oc0 .. oc0 + m - 1. */
static void wgrad_store(const conv_wgrad *p, double *const *acc, int64_t oc0, int64_t m,
                        char *dw)
{
    const conv_geom *g = &p->g;
    int64_t sums = g->taps * g->c * m;
    for (int64_t grp = 1; grp < p->groups; grp++)
        for (int64_t i = 0; i < sums; i++)
            acc[0][i] += acc[grp][i];
    if (!g->gathered) {
        g->copy->scatter_wgrad(g, acc[0], oc0, m, dw);
        return;
    }
    char *rows = dw + (size_t)(oc0 * g->c * g->taps) * g->elem; /* [oc][c, taps], in place */
    int64_t ckk = g->c * g->taps;
    for (int64_t i = 0; i < sums; i++) {
        /* the sums lie [oc][c, taps], or [c, taps][oc] channels last */
        double v = g->channels_last ? acc[0][i % ckk * m + i / ckk] : acc[0][i];
        if (g->dt == TG_F64)
            ((double *)rows)[i] = v;
        else
            ((float *)rows)[i] = (float)v;
    }
}

int64_t tg_conv_wgrad_chunk_images(const tg_ir_node *n)
{
    if (n->attr[4] & TG_CONV_WINOGRAD)
        return tg_winograd_chunk_images();
    return ((const conv_wgrad *)n->payload)->chunk;
}

void tg_conv_wgrad_run(const tg_ir_node *n, void *out, const void *const *in, void *scratch)
{
    if (n->attr[4] & TG_CONV_WINOGRAD) {
        tg_winograd_wgrad_run(n, out, in, scratch);
        return;
    }
    const conv_wgrad *p = n->payload;
    double *acc[IMAGE_GROUPS]; /* in the first thread's scratch, whoever runs the group */
    for (int64_t grp = 0; grp < p->groups; grp++)
        acc[grp] = (double *)((char *)scratch + (size_t)grp * p->group_bytes);
    for (int64_t b = 0; b < p->blocks; b++) {
        int64_t oc0 = b * p->ocb, m = tg_min64(p->ocb, p->g.oc - oc0);
#pragma omp parallel for num_threads(conv_threads(&p->g, n)) schedule(static)
        for (int64_t grp = 0; grp < p->groups; grp++) {
            char *mine = (char *)scratch + (size_t)thread_index() * n->scratch_bytes;
            /* a chunked prologue keeps no images for the next block: it runs for each */
            const tg_prologue *pr = n->prologue && (b == 0 || !n->prologue->out)
                                        ? n->prologue : NULL;
            wgrad_task task = {oc0, m, grp * p->chunks / p->groups,
                               (grp + 1) * p->chunks / p->groups, acc[grp], pr};
            if (p->g.gathered)
                wgrad_gathered(p, in[0], in[1], mine, &task);
            else if (p->g.channels_last)
                wgrad_last(p, in[0], in[1], mine, &task);
            else
                wgrad_taps(p, in[0], in[1], mine, &task);
        }
        wgrad_store(p, acc, oc0, m, out);
    }
}

static int prepare_wgrad(tg_ir_node *n, const conv_geom *g)
{
    int64_t blocks = (g->oc + OC_BLOCK - 1) / OC_BLOCK;
    int64_t ocb = (g->oc + blocks - 1) / blocks, ckk = g->c * g->taps;
    bool last_ch = g->channels_last; /* batched: always staged, the padded image channels last */
    bool staged = !g->direct || (last_ch && !g->gathered);
    int64_t k = g->gathered ? g->oh * g->ow : last_ch ? g->ow : (g->oh - 1) * g->wp + g->ow;
    int64_t plane = staged ? (g->oh + g->kh - 1) * g->wp : g->h * g->w;
    size_t padded = staged ? tg_round64((size_t)(g->c * plane) * g->elem) : 0;
    /* A and B staged per image: G^T and X (batched, wide rows), the im2col transposed
     * (gathered), X alone (batched, channels last), G^T and the im2col (gathered, channels
     * last); a gathered padded image is one, reused */
    bool gathered_last = g->gathered && last_ch;
    int64_t a_rows = g->gathered && !last_ch ? ckk : ocb;
    size_t a_bytes = last_ch && !g->gathered ? 0 : tg_round64((size_t)(k * a_rows) * g->elem);
    size_t b_bytes = gathered_last ? tg_round64((size_t)(ckk * k) * g->elem)
                     : g->gathered ? 0
                                   : padded;
    int64_t chunk = (int64_t)(CHUNK_BYTES / (a_bytes + b_bytes));
    chunk = chunk < 1 ? 1 : tg_min64(chunk, g->batch > 0 ? g->batch : 1);
    /* batch-reduced per chunk: row by row when batched channels last */
    int64_t gemms = last_ch && !g->gathered ? chunk * g->oh : chunk;
    conv_wgrad *p = calloc(1, sizeof *p + 2 * (size_t)gemms * sizeof p->offs[0]);
    if (!p)
        return tg_fail(TG_ERR_NOMEM, "conv_wgrad: out of memory");
    int64_t chunks = (g->batch + chunk - 1) / chunk;
    *p = (conv_wgrad){.g = *g, .ocb = ocb, .blocks = (g->oc + ocb - 1) / ocb, .chunk = chunk,
                      .groups = tg_min64(IMAGE_GROUPS, chunks > 0 ? chunks : 1), .chunks = chunks,
                      .k = k, .plane = plane, .a_bytes = a_bytes, .b_bytes = b_bytes,
                      .padded_bytes = padded};
    int64_t last = g->oc - (p->blocks - 1) * ocb;
    if (!g->direct && !(last_ch && !g->gathered))
        p->stage = tg_xsmm_copy_kernel(g->elem, g->w, g->h, g->w, g->wp);
    size_t b_stride = 0; /* between the chunk's images in B */
    if (gathered_last) { /* A: G^T [pos][oc]; B: cols [ckk][pos]; C: [ckk][oc] */
        brgemm_init(&p->full, g->dt, ocb, ckk, k, ocb, k, ocb, false);
        brgemm_init(&p->last, g->dt, last, ckk, k, last, k, last, false);
        b_stride = b_bytes;
        /* an image's block of G, m rows of oh ow positions, as [pos][m] */
        p->transpose_full = tg_xsmm_transpose_kernel(g->elem, k, ocb, ocb);
        p->transpose_last = tg_xsmm_transpose_kernel(g->elem, k, last, last);
        p->transpose8 = HAVE_TRANSPOSE8 && g->dt == TG_F32 && k % 8 == 0 && ocb % 8 == 0 &&
                        last % 8 == 0;
    } else if (g->gathered) { /* A: cols^T [pos][ckk]; B: G [oc][pos] in place; C: [oc][ckk] */
        brgemm_init(&p->full, g->dt, ckk, ocb, k, ckk, k, ckk, false);
        brgemm_init(&p->last, g->dt, ckk, last, k, ckk, k, ckk, false);
        b_stride = (size_t)(g->oc * k) * g->elem;
    } else if (last_ch) { /* A: X_t [x][c] staged; B: G [oc][pos] in place; C: [oc][c] */
        brgemm_init(&p->full, g->dt, g->c, ocb, k, g->c, g->oh * g->ow, g->c, false);
        brgemm_init(&p->last, g->dt, g->c, last, k, g->c, g->oh * g->ow, g->c, false);
        p->stage_last = tg_xsmm_transpose_kernel(g->elem, g->w, g->c, g->c);
        size_t e = g->elem;
        for (int64_t i = 0; i < chunk; i++) /* image i's output row r */
            for (int64_t r = 0; r < g->oh; r++) {
                p->offs[i * g->oh + r] = i * b_bytes + (size_t)(r * g->wp * g->c) * e;
                p->offs[gemms + i * g->oh + r] = (size_t)((i * g->oc * g->oh + r) * g->ow) * e;
            }
    } else { /* A: G^T [pos][oc]; B: X [c][pos] wide; C: the tap's sums [c][oc] */
        brgemm_init(&p->full, g->dt, ocb, g->c, k, ocb, plane, ocb, false);
        brgemm_init(&p->last, g->dt, last, g->c, k, last, plane, last, false);
        b_stride = g->direct ? (size_t)(g->c * plane) * g->elem : b_bytes;
        /* a row of G, ow positions of m channels (the channel plane apart), as [x][m] */
        p->transpose_full = tg_xsmm_transpose_kernel(g->elem, g->ow, ocb, ocb);
        p->transpose_last = tg_xsmm_transpose_kernel(g->elem, g->ow, last, last);
    }
    for (int64_t i = 0; i < chunk && !(last_ch && !g->gathered); i++) {
        p->offs[i] = (unsigned long long)i * a_bytes;
        p->offs[chunk + i] = (unsigned long long)i * b_stride;
    }
    /* [taps][c][oc] batched, [taps][oc][c] batched channels last, [oc][c, taps] gathered,
     * [c, taps][oc] gathered channels last */
    p->sums = g->taps * g->c * ocb;
    p->group_bytes = tg_round64((size_t)p->sums * sizeof(double));
    p->at_part = IMAGE_GROUPS * p->group_bytes;
    p->at_a = p->at_part + tg_round64((size_t)p->sums * g->elem);
    p->at_b = p->at_a + (size_t)chunk * a_bytes;
    p->at_image = p->at_b + (size_t)chunk * b_bytes;
    p->staged_bytes = p->at_image + (g->gathered ? padded : 0) - p->at_a;
    n->scratch_bytes = p->at_a + p->staged_bytes;
    n->payload = p;
    return TG_OK;
}

/* ---- prepare, describe, release ---------------------------------------------------------- */
/* Reads the convolution off the node and its inputs, checking that they agree. */
static int read_geometry(const tg_graph *gr, const tg_ir_node *n, conv_geom *g)
{
    bool wgrad = n->op == TG_PLAN_OP_CONV_WGRAD, flipped = n->attr[4] & TG_CONV_TRANSPOSED_FLIPPED;
    const char *name = wgrad ? "conv_wgrad" : "conv";
    if (n->n_in != 2)
        return tg_fail(TG_ERR_ARG, "%s: needs two inputs, has %d", name, n->n_in);
    const tg_ir_node *x = &gr->nodes[n->in[wgrad ? 1 : 0]];
    const tg_ir_node *other = &gr->nodes[n->in[wgrad ? 0 : 1]];
    /* with its channel sums, a CONV's output is flat, y's shape in attr[11..14] */
    bool sums = !wgrad && (n->attr[4] & TG_CONV_CHANNEL_SUMS);
    const int64_t *out = sums ? &n->attr[11] : n->shape;
    if ((sums ? n->ndim != 1 : n->ndim != 4) || x->ndim != 4 || other->ndim != 4)
        return tg_fail(TG_ERR_SHAPE, "%s: needs 4-D inputs and a 4-D output", name);
    if (sums && (n->dtype != TG_F32 ||
                 n->numel != out[0] * out[1] * out[2] * out[3] + out[0] * out[2] * out[1]))
        return tg_fail(TG_ERR_SHAPE, "conv: channel sums need an f32 output of y's values "
                       "and [N*OH][OC] sums, %lld elements, not %lld",
                       (long long)(out[0] * out[1] * out[2] * out[3] + out[0] * out[2] * out[1]),
                       (long long)n->numel);
    if ((n->dtype != TG_F32 && n->dtype != TG_F64) || x->dtype != n->dtype ||
        other->dtype != n->dtype)
        return tg_fail(TG_ERR_DTYPE, "%s: inputs and output must share one dtype, f32 or f64",
                       name);
    if (n->attr[2] != 1 || n->attr[3] != 1 || n->attr[0] < 0 || n->attr[1] < 0)
        return tg_fail(TG_ERR_ARG, "%s: stride %lldx%lld and padding %lldx%lld: only stride 1 "
                       "and padding >= 0 are supported", name, (long long)n->attr[2],
                       (long long)n->attr[3], (long long)n->attr[0], (long long)n->attr[1]);
    bool f64 = n->dtype == TG_F64;
    *g = (conv_geom){.dt = n->dtype, .elem = f64 ? sizeof(double) : sizeof(float),
                     .copy = f64 ? &copies_double : &copies_float,
                     .batch = x->shape[0], .c = x->shape[1], .h = x->shape[2], .w = x->shape[3],
                     .ph = n->attr[0], .pw = n->attr[1]};
    const int64_t *w = other->shape; /* CONV: the weights; CONV_WGRAD: the gradient */
    if (wgrad) {
        g->oc = n->shape[0], g->kh = n->shape[2], g->kw = n->shape[3];
    } else {
        g->oc = flipped ? w[1] : w[0], g->kh = w[2], g->kw = w[3];
    }
    g->taps = g->kh * g->kw;
    g->oh = g->h + 2 * g->ph - g->kh + 1;
    g->ow = g->w + 2 * g->pw - g->kw + 1;
    g->wp = g->w + 2 * g->pw;
    g->direct = g->ph == 0 && g->pw == 0;
    g->gathered = g->c * g->taps <= GATHER_MAX_K;
    int64_t macs = g->batch * g->oc * g->oh * g->ow * g->c * g->taps, per = thread_macs();
    g->threads_max = per == 0 ? INT_MAX : tg_min64(macs / per, INT_MAX);
    if (g->threads_max < 1)
        g->threads_max = 1;
    /* the vectors run along output channels (CONV; CONV_WGRAD with its taps gathered) or
     * input channels (CONV_WGRAD, taps batched) */
    g->channels_last = wgrad ? (g->gathered ? g->oc : g->c) >= CHANNELS_LAST_MIN
                             : !g->gathered && g->oc >= CHANNELS_LAST_MIN;
    const int64_t *y = wgrad ? w : out; /* [N, OC, OH, OW] */
    bool ok = g->kh >= 1 && g->kw >= 1 && g->oh >= 1 && g->ow >= 1 && y[0] == g->batch &&
              y[1] == g->oc && y[2] == g->oh && y[3] == g->ow &&
              (wgrad ? n->shape[1] == g->c : (flipped ? w[0] : w[1]) == g->c);
    if (!ok) {
        char sx[128], so[128], sn[128];
        return tg_fail(TG_ERR_SHAPE, "%s: x %s, %s %s and output %s do not make a stride-1 "
                       "convolution with padding %lldx%lld", name,
                       tg_shape_str(sx, sizeof sx, 4, x->shape), wgrad ? "gradient" : "weight",
                       tg_shape_str(so, sizeof so, 4, w), tg_shape_str(sn, sizeof sn, 4, out),
                       (long long)g->ph, (long long)g->pw);
    }
    return TG_OK;
}

int tg_conv_prepare(const tg_graph *g, tg_ir_node *n)
{
    conv_geom geom;
    int status = read_geometry(g, n, &geom);
    if (status != TG_OK)
        return status;
    tg_conv_release(n->payload);
    n->payload = NULL;
    if (n->attr[4] & TG_CONV_WINOGRAD) {
        if (geom.dt != TG_F32 || geom.kh != 3 || geom.kw != 3)
            return tg_fail(TG_ERR_ARG, "conv: Winograd's F(r x r, 3x3) needs a 3x3 f32 "
                           "convolution, not %lldx%lld %s", (long long)geom.kh,
                           (long long)geom.kw, geom.dt == TG_F64 ? "f64" : "f32");
        tg_winograd_shape s = {geom.batch, geom.c, geom.h, geom.w, geom.oc, geom.oh, geom.ow,
                               geom.ph, geom.pw, n->attr[4] & TG_CONV_TRANSPOSED_FLIPPED,
                               n->op == TG_PLAN_OP_CONV_WGRAD,
                               n->attr[4] & TG_CONV_CHANNEL_SUMS,
                               tg_conv_winograd_tile(n->attr[4]),
                               geom.threads_max};
        return tg_winograd_prepare(n, &s);
    }
    return n->op == TG_PLAN_OP_CONV_WGRAD ? prepare_wgrad(n, &geom) : prepare_forward(n, &geom);
}

/* "conv 3x3 pad 1 32->64 [128,32,14,14]": the kernel, padding, channels and the image slid
 * over, from the attributes the pass sets (attr[5..8] that image's shape, attr[9..10] the
 * kernel size of a CONV). */
void tg_conv_describe(const tg_ir_node *n, char *buf, size_t size)
{
    bool wgrad = n->op == TG_PLAN_OP_CONV_WGRAD;
    const int64_t *x = &n->attr[5];
    long long kh = wgrad ? n->shape[2] : n->attr[9], kw = wgrad ? n->shape[3] : n->attr[10];
    bool sums = !wgrad && (n->attr[4] & TG_CONV_CHANNEL_SUMS);
    long long c = wgrad ? n->shape[1] : x[1];
    long long oc = wgrad ? n->shape[0] : sums ? n->attr[12] : n->shape[1];
    char pad[48];
    if (n->attr[0] == n->attr[1])
        snprintf(pad, sizeof pad, "%lld", (long long)n->attr[0]);
    else
        snprintf(pad, sizeof pad, "%lldx%lld", (long long)n->attr[0], (long long)n->attr[1]);
    char winograd[24] = "";
    if (n->attr[4] & TG_CONV_WINOGRAD)
        snprintf(winograd, sizeof winograd, " winograd F(%d,3)",
                 tg_conv_winograd_tile(n->attr[4]));
    snprintf(buf, size, "%s%s%s %lldx%lld pad %s %lld->%lld [%lld,%lld,%lld,%lld]",
             wgrad ? "conv_wgrad" : "conv",
             n->attr[4] & TG_CONV_TRANSPOSED_FLIPPED ? " transposed+flipped" : "", winograd,
             kh, kw, pad,
             c, oc, (long long)x[0], (long long)x[1], (long long)x[2], (long long)x[3]);
    size_t used = strlen(buf);
    if (sums && used < size)
        snprintf(buf + used, size - used, " + channel sums");
}

void tg_conv_release(void *payload) { free(payload); }
