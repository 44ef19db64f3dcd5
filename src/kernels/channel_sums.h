/* A convolution's channel sums, formed band by band as its kernel writes y (the
 * TG_CONV_CHANNEL_SUMS flag: compile/plan_ops.h, compile/pass_conv_sums.c). The band's
 * output has just been written and is still in cache; batch norm's mean would otherwise read
 * all of y again from memory. Each band writes its own rows of the partial sums, so no two
 * tasks share one, and a FUSED reduction adds the rows up afterwards in a fixed order:
 * the result does not depend on the thread count. */
#ifndef TG_KERNELS_CHANNEL_SUMS_H
#define TG_KERNELS_CHANNEL_SUMS_H

#include <stdint.h>
#include <string.h>

/* Lanes of independent partial sums along a channel's band: the compiler makes vectors of
 * them (4 with AVX2, 2 with AVX-512), enough to keep the adders busy while each waits for its
 * last sum. The tail goes into the first lanes, and the lanes are added pairwise (a tree,
 * vectors too): a chain of adds, one after the other, had taken as long per band as the
 * vector loop over a 28x28 plane. */
#define TG_CHANNEL_SUM_LANES 32

/* v[0] + ... + v[count - 1], in that fixed order of lanes and tree. */
static inline float tg_lane_sum(const float *v, int64_t count)
{
    float lane[TG_CHANNEL_SUM_LANES] = {0};
    int64_t i = 0;
    for (; i + TG_CHANNEL_SUM_LANES <= count; i += TG_CHANNEL_SUM_LANES)
        for (int l = 0; l < TG_CHANNEL_SUM_LANES; l++)
            lane[l] += v[i + l];
    for (int l = 0; i + l < count; l++)
        lane[l] += v[i + l];
    for (int width = TG_CHANNEL_SUM_LANES / 2; width >= 1; width /= 2)
        for (int l = 0; l < width; l++)
            lane[l] += lane[l + width];
    return lane[0];
}

/* y [N, OC, OH, OW] (float); output rows r0 .. r0 + rows - 1 of image `image` are written.
 * Row image*OH + r0 of sums [N*OH][OC] gets each channel's sum over those rows, rows
 * image*OH + r0 + 1 .. + rows - 1 zeros. */
static inline void tg_conv_band_sums(const float *y, int64_t oc, int64_t oh, int64_t ow,
                                     int64_t image, int64_t r0, int64_t rows, float *sums)
{
    float *row = sums + (image * oh + r0) * oc;
    for (int64_t o = 0; o < oc; o++)
        row[o] = tg_lane_sum(y + ((image * oc + o) * oh + r0) * ow, rows * ow);
    memset(row + oc, 0, (size_t)((rows - 1) * oc) * sizeof *row);
}

/* The same sums for a band whose output is a product y[p][o] = sum over k of a[p][k]
 * w[o][k] (the taps gathered: a the band's im2col or shifted copies of its rows), from the
 * sums of a's columns over the band's positions, col[k]: sum over p of y[p][o] = sum over k
 * of col[k] w[o][k]. The same value to rounding in another order, from K columns instead of
 * OC planes: reading the 32 planes of the first layer's 28x28 output back cost about half
 * of what the sums saved with AVX2 code, the 9 columns of its im2col (in L1) little. */
static inline void tg_conv_band_sums_taps(const double *col, int64_t k, const float *w,
                                          int64_t oc, int64_t oh, int64_t image, int64_t r0,
                                          int64_t rows, float *sums)
{
    float *row = sums + (image * oh + r0) * oc;
    for (int64_t o = 0; o < oc; o++) {
        double sum = 0;
        for (int64_t j = 0; j < k; j++)
            sum += col[j] * w[o * k + j];
        row[o] = (float)sum;
    }
    memset(row + oc, 0, (size_t)((rows - 1) * oc) * sizeof *row);
}

/* The same sums from the band's output as a kernel stages it channels last before it
 * transposes it into y: positions rows*OW of OC channels, position p's at out + p*ld.
 * Summed there rather than from y: the transposes into y are libxsmm's, and the band read
 * back from y took Winograd's kernel 1.11 times its time (AVX2 code), the sums saved by it
 * included. Blocks of 8 channels (an AVX2 vector), each summed over the
 * positions in 4 interleaved partial sums (independent adds; one sum in memory per channel
 * had waited on its own store at every position), added in a fixed order at the end; the
 * channels past the last whole block one by one. */
static inline void tg_conv_band_sums_last(const float *out, int64_t ld, int64_t oc, int64_t oh,
                                          int64_t ow, int64_t image, int64_t r0, int64_t rows,
                                          float *sums)
{
    float *row = sums + (image * oh + r0) * oc;
    int64_t positions = rows * ow, o0 = 0;
    for (; o0 + 8 <= oc; o0 += 8) {
#if defined(__GNUC__) /* written as vectors: GCC 12 made half vectors and scalars of arrays */
        typedef float vec8 __attribute__((vector_size(32)));
        vec8 acc[4] = {{0}}, v;
        int64_t p = 0;
        for (; p + 4 <= positions; p += 4)
            for (int q = 0; q < 4; q++) {
                memcpy(&v, out + (p + q) * ld + o0, sizeof v);
                acc[q] += v;
            }
        for (; p < positions; p++) {
            memcpy(&v, out + p * ld + o0, sizeof v);
            acc[0] += v;
        }
        v = (acc[0] + acc[1]) + (acc[2] + acc[3]);
        memcpy(row + o0, &v, sizeof v);
#else
        float acc[4][8] = {{0}};
        int64_t p = 0;
        for (; p + 4 <= positions; p += 4)
            for (int q = 0; q < 4; q++)
                for (int l = 0; l < 8; l++)
                    acc[q][l] += out[(p + q) * ld + o0 + l];
        for (; p < positions; p++)
            for (int l = 0; l < 8; l++)
                acc[0][l] += out[p * ld + o0 + l];
        for (int l = 0; l < 8; l++)
            row[o0 + l] = (acc[0][l] + acc[1][l]) + (acc[2][l] + acc[3][l]);
#endif
    }
    for (; o0 < oc; o0++) {
        float sum = 0;
        for (int64_t p = 0; p < positions; p++)
            sum += out[p * ld + o0];
        row[o0] = sum;
    }
    memset(row + oc, 0, (size_t)((rows - 1) * oc) * sizeof *row);
}

#endif
