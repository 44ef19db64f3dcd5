/* Sliding windows: im2col gathers every KHxKW window of [N, C, H, W] into
 * [N, C, KH, KW, OH, OW]; col2im is its adjoint and sums each entry back where it came from.
 * The layout makes a convolution one matmul: [OC, C*KH*KW] x [N, C*KH*KW, OH*OW]. */
#include "strided.h"

#include <string.h>

#define WINDOW_KERNELS(T)                                                                       \
    static void im2col_##T(const int64_t *s, int64_t h, int64_t w, int64_t sh, int64_t sw,      \
                           const T *x, T *out)                                                  \
    {                                                                                           \
        int64_t planes = s[0] * s[1], kh = s[2], kw = s[3], oh = s[4], ow = s[5];               \
        int threads = planes * kh * kw * oh * ow >= TG_PARALLEL_MIN ? tg_num_threads() : 1;     \
        _Pragma("omp parallel for num_threads(threads) schedule(static)")                       \
        for (int64_t p = 0; p < planes; p++) {                                                  \
            const T *img = x + p * h * w;                                                       \
            T *cols = out + p * kh * kw * oh * ow;                                              \
            for (int64_t i = 0; i < kh; i++)                                                    \
                for (int64_t j = 0; j < kw; j++)                                                \
                    for (int64_t y = 0; y < oh; y++) {                                          \
                        const T *src = img + (y * sh + i) * w + j;                              \
                        if (sw == 1)                                                            \
                            memcpy(cols, src, (size_t)ow * sizeof *cols);                       \
                        else                                                                    \
                            for (int64_t z = 0; z < ow; z++)                                    \
                                cols[z] = src[z * sw];                                          \
                        cols += ow;                                                             \
                    }                                                                           \
        }                                                                                       \
    }                                                                                           \
    static void col2im_##T(const int64_t *s, int64_t h, int64_t w, int64_t sh, int64_t sw,      \
                           const T *in, T *x)                                                   \
    {                                                                                           \
        int64_t planes = s[0] * s[1], kh = s[2], kw = s[3], oh = s[4], ow = s[5];               \
        int threads = planes * kh * kw * oh * ow >= TG_PARALLEL_MIN ? tg_num_threads() : 1;     \
        _Pragma("omp parallel for num_threads(threads) schedule(static)")                       \
        for (int64_t p = 0; p < planes; p++) {                                                  \
            T *img = x + p * h * w;                                                             \
            const T *cols = in + p * kh * kw * oh * ow;                                         \
            memset(img, 0, (size_t)(h * w) * sizeof *img);                                      \
            for (int64_t i = 0; i < kh; i++)                                                    \
                for (int64_t j = 0; j < kw; j++)                                                \
                    for (int64_t y = 0; y < oh; y++) {                                          \
                        T *dst = img + (y * sh + i) * w + j;                                    \
                        for (int64_t z = 0; z < ow; z++)                                        \
                            dst[z * sw] += cols[z];                                             \
                        cols += ow;                                                             \
                    }                                                                           \
        }                                                                                       \
    }
WINDOW_KERNELS(float)
WINDOW_KERNELS(double)

void tg_kernel_im2col(const struct tg_node *n, void *out, const void *const *in)
{
    const struct tg_node *x = n->in[0];
    if (n->dtype == TG_F64)
        im2col_double(n->shape, x->shape[2], x->shape[3], n->attr[2], n->attr[3], in[0], out);
    else
        im2col_float(n->shape, x->shape[2], x->shape[3], n->attr[2], n->attr[3], in[0], out);
}

void tg_kernel_col2im(const struct tg_node *n, void *out, const void *const *in)
{
    const struct tg_node *c = n->in[0];
    if (n->dtype == TG_F64)
        col2im_double(c->shape, n->shape[2], n->shape[3], n->attr[2], n->attr[3], in[0], out);
    else
        col2im_float(c->shape, n->shape[2], n->shape[3], n->attr[2], n->attr[3], in[0], out);
}
