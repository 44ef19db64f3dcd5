/* The forward convolution of few input channels (conv_rows.h): an image's first layer, 1 ->
 * 32 at 28x28 in the reference model. With K = C*KH*KW = 9 a GEMM has little to sum per
 * output; conv.c gathers such taps into an im2col (K copies of the band) for one GEMM with
 * K = 9 where this kernel is not taken. Here each input row is copied KW times instead,
 * shifted by each kernel column and cut to the output's width (zeros where the shift reaches
 * into the padding): in those copies a tap (ci, i, jj) of output position p = r ow + j is at
 * p + i ow of copy (ci, jj), the same offset for every position. So a band's output positions
 * run as one flat row of vectors, each the sum of K input vectors scaled by one weight each,
 * none computed for nothing but the last, which ends exactly at the band's end (overlapping
 * the one before; its stores are the same values), and an input vector, once loaded, serves
 * a block of output channels. Built with -ffp-contract=fast (meson.build): its
 * multiply-adds are fused ones. Measured: docs/compiler.md. */
#include "conv_rows.h"
#include "channel_sums.h"

#include <stdlib.h>
#include <string.h>

/* A vector of the target's width, 64 bytes with AVX-512 and 32 elsewhere: one of the
 * compilers' vector extensions, or without them an array in loops the compiler vectorizes.
 * Wider than the machine's, GCC 12 split each into halves and kept a block's accumulators
 * on the stack (AVX2's 16 registers; that first version, without fused multiply-adds as
 * well, took 9 times the GEMM's time). */
#if defined(__AVX512F__)
#define ROW_BYTES 64
#else
#define ROW_BYTES 32
#endif
/* A block: OC_BLOCK output channels times VECTORS vectors of positions, whose accumulators,
 * the VECTORS input vectors and a weight's broadcast stay in registers (28 of AVX-512's 32,
 * 16 of AVX2's 16). Per tap, each weight broadcast
 * serves VECTORS multiply-adds and each input vector OC_BLOCK; with 1 x 8 the broadcasts
 * were as many as the multiply-adds, and the kernel took 1.4 times the im2col's time with
 * AVX2 code. */
#if defined(__AVX512F__)
#define OC_BLOCK 8
#else
#define OC_BLOCK 4
#endif
#define VECTORS 3

/* A block of vectors at positions at[v] of the band's output: y rows yb[b], weights wb[b]
 * (their k taps), the first nb of them stored; tap j of position p is at p + shift[j]. */
#if defined(__GNUC__)
#define ROWS_KERNEL(T)                                                                          \
    typedef T T##_vec __attribute__((vector_size(ROW_BYTES)));                                 \
    enum { T##_lanes = ROW_BYTES / sizeof(T) };                                                 \
    static inline T##_vec load_##T(const T *p)                                                  \
    {                                                                                           \
        T##_vec v;                                                                              \
        memcpy(&v, p, sizeof v);                                                                \
        return v;                                                                               \
    }                                                                                           \
    static inline void store_##T(T *p, T##_vec v) { memcpy(p, &v, sizeof v); }                 \
    static inline void block_##T(const T *in, const int64_t *at, const int64_t *shift,         \
                                 int64_t k, const T *const *wb, T *const *yb, int64_t nb)       \
    {                                                                                           \
        T##_vec acc[VECTORS][OC_BLOCK];                                                         \
        _Pragma("GCC unroll 4") for (int i = 0; i < VECTORS; i++)                               \
            _Pragma("GCC unroll 8") for (int b = 0; b < OC_BLOCK; b++) acc[i][b] = (T##_vec){0};\
        for (int64_t j = 0; j < k; j++) {                                                       \
            T##_vec v[VECTORS];                                                                 \
            _Pragma("GCC unroll 4") for (int i = 0; i < VECTORS; i++)                           \
                v[i] = load_##T(in + at[i] + shift[j]);                                         \
            _Pragma("GCC unroll 8") for (int b = 0; b < OC_BLOCK; b++) {                        \
                T weight = wb[b][j];                                                            \
                _Pragma("GCC unroll 4") for (int i = 0; i < VECTORS; i++)                       \
                    acc[i][b] += weight * v[i];                                                 \
            }                                                                                   \
        }                                                                                       \
        _Pragma("GCC unroll 8") for (int b = 0; b < OC_BLOCK; b++) if (b < nb)                  \
            _Pragma("GCC unroll 4") for (int i = 0; i < VECTORS; i++)                           \
                store_##T(yb[b] + at[i], acc[i][b]);                                            \
    }
#else
#define ROWS_KERNEL(T)                                                                          \
    enum { T##_lanes = ROW_BYTES / sizeof(T) };                                                 \
    static inline void block_##T(const T *in, const int64_t *at, const int64_t *shift,         \
                                 int64_t k, const T *const *wb, T *const *yb, int64_t nb)       \
    {                                                                                           \
        for (int i = 0; i < VECTORS; i++) {                                                     \
            T acc[OC_BLOCK][T##_lanes] = {{0}};                                                 \
            for (int64_t j = 0; j < k; j++)                                                     \
                for (int b = 0; b < OC_BLOCK; b++)                                              \
                    for (int l = 0; l < T##_lanes; l++)                                         \
                        acc[b][l] += wb[b][j] * in[at[i] + shift[j] + l];                       \
            for (int b = 0; b < nb; b++)                                                        \
                memcpy(yb[b] + at[i], acc[b], sizeof acc[b]);                                   \
        }                                                                                       \
    }
#endif

/* copy (ci, jj)[r ow + j] = xpad[ci][r0 + r][j + jj] for the band's input rows r (its rows
 * and the kh - 1 below them): x's row, shifted and cut, zeros where xpad has padding. */
#define ROWS_STAGE(T)                                                                           \
    static void stage_##T(const tg_conv_rows_shape *s, const T *x, int64_t r0, int64_t rows,    \
                          T *staged)                                                            \
    {                                                                                           \
        int64_t in_rows = rows + s->kh - 1, plane = in_rows * s->ow;                            \
        for (int64_t ci = 0; ci < s->c; ci++)                                                   \
            for (int64_t jj = 0; jj < s->kw; jj++) {                                            \
                /* columns j < lo and j >= hi read padding */                                   \
                int64_t lo = s->pw - jj, hi = s->w + s->pw - jj;                                \
                lo = lo < 0 ? 0 : lo > s->ow ? s->ow : lo;                                      \
                hi = hi < lo ? lo : hi > s->ow ? s->ow : hi;                                    \
                T *to = staged + (ci * s->kw + jj) * plane;                                     \
                for (int64_t r = 0; r < in_rows; r++, to += s->ow) {                            \
                    int64_t ir = r0 + r - s->ph;                                                \
                    if (ir < 0 || ir >= s->h) {                                                 \
                        memset(to, 0, (size_t)s->ow * sizeof(T));                               \
                        continue;                                                               \
                    }                                                                           \
                    /* column j reads x's column j + jj - pw, in the row for j in [lo, hi) */    \
                    const T *row = x + (ci * s->h + ir) * s->w;                                 \
                    for (int64_t j = 0; j < lo; j++)                                            \
                        to[j] = 0;                                                              \
                    for (int64_t j = lo; j < hi; j++)                                           \
                        to[j] = row[j + jj - s->pw];                                            \
                    for (int64_t j = hi; j < s->ow; j++)                                        \
                        to[j] = 0;                                                              \
                }                                                                               \
            }                                                                                   \
    }

/* The band, block of output channels by block, VECTORS vectors at a time along its
 * positions. A block short of OC_BLOCK channels computes its last channel again in the
 * missing places (not stored), and the band's last vectors short of VECTORS its last one
 * again (stored again), so that the accumulators are always whole blocks. */
#define ROWS_BAND(T)                                                                            \
    static void rows_##T(const tg_conv_rows_shape *s, const T *x, const T *w, int64_t r0,      \
                         int64_t rows, T *staged, T *y)                                         \
    {                                                                                           \
        stage_##T(s, x, r0, rows, staged);                                                      \
        int64_t k = s->c * s->kh * s->kw, taps = s->kh * s->kw;                                 \
        int64_t shift[TG_CONV_ROWS_MAX_K];                                                      \
        int64_t positions = rows * s->ow, last = positions - T##_lanes;                         \
        int64_t vectors = (positions + T##_lanes - 1) / T##_lanes;                              \
        for (int64_t j = 0; j < k; j++) {                                                       \
            int64_t ci = j / taps, i = j % taps / s->kw, jj = j % s->kw;                        \
            shift[j] = (ci * s->kw + jj) * (rows + s->kh - 1) * s->ow + i * s->ow;              \
        }                                                                                       \
        for (int64_t o0 = 0; o0 < s->oc; o0 += OC_BLOCK) {                                      \
            int64_t nb = s->oc - o0 < OC_BLOCK ? s->oc - o0 : OC_BLOCK;                         \
            const T *wb[OC_BLOCK];                                                              \
            T *yb[OC_BLOCK];                                                                    \
            for (int b = 0; b < OC_BLOCK; b++) {                                                \
                int64_t o = o0 + (b < nb ? b : nb - 1);                                         \
                wb[b] = w + o * k;                                                              \
                yb[b] = y + (o * s->oh + r0) * s->ow;                                           \
            }                                                                                   \
            for (int64_t v = 0; v < vectors; v += VECTORS) {                                   \
                int64_t at[VECTORS];                                                            \
                for (int i = 0; i < VECTORS; i++)                                               \
                    at[i] = (v + i) * T##_lanes < last ? (v + i) * T##_lanes : last;            \
                block_##T(staged, at, shift, k, wb, yb, nb);                                    \
            }                                                                                   \
        }                                                                                       \
    }

ROWS_KERNEL(float)
ROWS_KERNEL(double)
ROWS_STAGE(float)
ROWS_STAGE(double)
ROWS_BAND(float)
ROWS_BAND(double)

/* With AVX2 code (this CPU, a Zen 5, made to run it) the kernel took 1.07-1.11 times the
 * im2col and libxsmm GEMM's time in the reference model's training step, against 0.74-0.84
 * with AVX-512 code (1 and 2 threads): with 8 lanes a vector the multiply-adds bound it, as
 * many as the GEMM's, and libxsmm schedules its own better; with 16 lanes writing the output
 * bounds it, once, where the GEMM path also gathers the taps. */
bool tg_conv_rows_chosen(void)
{
    const char *env = getenv("TG_CONV_ROWS");
    if (env && strcmp(env, "0") == 0)
        return false;
    if (env && strcmp(env, "1") == 0)
        return true;
#if defined(__AVX512F__)
    return true;
#else
    return false;
#endif
}

int64_t tg_conv_rows_min_positions(tg_dtype dt)
{
    return dt == TG_F64 ? double_lanes : float_lanes;
}

size_t tg_conv_rows_scratch(tg_dtype dt, const tg_conv_rows_shape *s, int64_t rows)
{
    size_t elem = dt == TG_F64 ? sizeof(double) : sizeof(float);
    return (size_t)(s->c * s->kw * (rows + s->kh - 1) * s->ow) * elem;
}

void tg_conv_rows(tg_dtype dt, const tg_conv_rows_shape *s, const void *x, const void *w,
                  int64_t r0, int64_t rows, void *scratch, void *y)
{
    if (dt == TG_F64)
        rows_double(s, x, w, r0, rows, scratch, y);
    else
        rows_float(s, x, w, r0, rows, scratch, y);
}

void tg_conv_rows_tap_sums(const tg_conv_rows_shape *s, int64_t rows, const void *scratch,
                           double *col)
{
    const float *staged = scratch;
    int64_t taps = s->kh * s->kw;
    for (int64_t j = 0; j < s->c * taps; j++) { /* as rows_float's shift[j] */
        int64_t ci = j / taps, i = j % taps / s->kw, jj = j % s->kw;
        int64_t shift = (ci * s->kw + jj) * (rows + s->kh - 1) * s->ow + i * s->ow;
        col[j] = tg_lane_sum(staged + shift, rows * s->ow);
    }
}
