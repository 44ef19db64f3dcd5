/* Reductions (sum, max) over any set of axes, keeping the reduced axes with size 1. */
#include "strided.h"

#include <math.h>
#include <string.h>

typedef struct {
    tg_op op;
    void *out;
    const void *in;
} reduce_ctx;

/* Operand 0 is the output (stride 0 along reduced axes), operand 1 the input. A row whose
 * output stride is 0 folds into one value; otherwise it combines elementwise. Sums of a row
 * are accumulated in double, so f32 sums lose little over long axes. */
#define REDUCE_ROW(T)                                                                           \
    static void reduce_row_##T(const tg_strided *p, const int64_t *off, int64_t len, void *c) \
    {                                                                                           \
        const reduce_ctx *ctx = c;                                                              \
        T *y = (T *)ctx->out + off[0];                                                          \
        const T *x = (const T *)ctx->in + off[1];                                               \
        int64_t sy = p->stride[0][p->ndim - 1], sx = p->stride[1][p->ndim - 1];                 \
        if (sy == 0) {                                                                          \
            if (ctx->op == TG_OP_SUM && sx == 1) {                                              \
                /* Eight running sums in a fixed order: vectorizable and deterministic. */      \
                double lane[8] = {0};                                                           \
                int64_t i = 0;                                                                  \
                for (; i + 8 <= len; i += 8)                                                    \
                    for (int l = 0; l < 8; l++)                                                 \
                        lane[l] += x[i + l];                                                    \
                double acc = ((lane[0] + lane[1]) + (lane[2] + lane[3])) +                      \
                             ((lane[4] + lane[5]) + (lane[6] + lane[7]));                       \
                for (; i < len; i++)                                                            \
                    acc += x[i];                                                                \
                *y += (T)acc;                                                                   \
            } else if (ctx->op == TG_OP_SUM) {                                                  \
                double acc = 0;                                                                 \
                for (int64_t i = 0; i < len; i++)                                               \
                    acc += x[i * sx];                                                           \
                *y += (T)acc;                                                                   \
            } else {                                                                            \
                T acc = *y;                                                                     \
                for (int64_t i = 0; i < len; i++) {                                             \
                    T v = x[i * sx];                                                            \
                    if (v > acc || v != v)                                                      \
                        acc = v;                                                                \
                }                                                                               \
                *y = acc;                                                                       \
            }                                                                                   \
        } else if (ctx->op == TG_OP_SUM && sy == 1 && sx == 1) {                                \
            for (int64_t i = 0; i < len; i++)                                                   \
                y[i] += x[i];                                                                   \
        } else if (ctx->op == TG_OP_SUM) {                                                      \
            for (int64_t i = 0; i < len; i++)                                                   \
                y[i * sy] += x[i * sx];                                                         \
        } else {                                                                                \
            for (int64_t i = 0; i < len; i++) {                                                 \
                T v = x[i * sx];                                                                \
                if (v > y[i * sy] || v != v)                                                    \
                    y[i * sy] = v;                                                              \
            }                                                                                   \
        }                                                                                       \
    }
REDUCE_ROW(float)
REDUCE_ROW(double)

void tg_kernel_reduce(const struct tg_node *n, void *out, const void *const *in)
{
    const struct tg_node *a = n->in[0];
    double init = n->op == TG_OP_SUM ? 0.0 : -INFINITY;
    for (int64_t i = 0; i < n->numel; i++) {
        if (n->dtype == TG_F64)
            ((double *)out)[i] = init;
        else
            ((float *)out)[i] = (float)init;
    }
    tg_strided p = {.ndim = a->ndim, .nops = 2};
    memcpy(p.shape, a->shape, sizeof p.shape);
    tg_broadcast_strides(n->ndim, n->shape, a->ndim, a->shape, p.stride[0]);
    tg_contiguous_strides(a->ndim, a->shape, p.stride[1]);
    if (a->ndim == 0) {
        p.ndim = 1;
        p.shape[0] = 1;
        p.stride[0][0] = p.stride[1][0] = 0;
    }
    tg_strided_collapse(&p);
    reduce_ctx ctx = {n->op, out, in[0]};
    /* Rows may fold into the same output element, so one thread walks them in order. */
    tg_strided_rows_mode(&p, n->dtype == TG_F64 ? reduce_row_double : reduce_row_float, &ctx,
                         false);
}
