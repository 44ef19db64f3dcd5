/* Elementwise kernels: unary maps, broadcasting binary ops, where, cast and copy. */
#include "strided.h"

#include <math.h>
#include <string.h>

static size_t elem_size(tg_dtype dt) { return dt == TG_F64 ? sizeof(double) : sizeof(float); }

/* ---- unary --------------------------------------------------------------------------------- */
#define UNARY_LOOP(T, EXPF, LOGF, SQRTF)                                                        \
    do {                                                                                        \
        const T *x = in[0];                                                                     \
        T *y = out;                                                                             \
        int64_t count = n->numel;                                                               \
        int threads = count >= TG_PARALLEL_MIN ? tg_num_threads() : 1;                          \
        _Pragma("omp parallel for num_threads(threads) schedule(static)")                       \
        for (int t = 0; t < threads; t++) {                                                     \
            int64_t lo = count * t / threads, hi = count * (t + 1) / threads;                   \
            switch (n->op) {                                                                    \
            case TG_OP_NEG: for (int64_t i = lo; i < hi; i++) y[i] = -x[i]; break;              \
            case TG_OP_EXP: for (int64_t i = lo; i < hi; i++) y[i] = EXPF(x[i]); break;        \
            case TG_OP_LOG: for (int64_t i = lo; i < hi; i++) y[i] = LOGF(x[i]); break;        \
            case TG_OP_SQRT: for (int64_t i = lo; i < hi; i++) y[i] = SQRTF(x[i]); break;      \
            case TG_OP_RECIP: for (int64_t i = lo; i < hi; i++) y[i] = (T)1 / x[i]; break;     \
            default: break;                                                                     \
            }                                                                                   \
        }                                                                                       \
    } while (0)

void tg_kernel_unary(const struct tg_node *n, void *out, const void *const *in)
{
    if (n->dtype == TG_F64)
        UNARY_LOOP(double, exp, log, sqrt);
    else
        UNARY_LOOP(float, expf, logf, sqrtf);
}

/* ---- binary and where --------------------------------------------------------------------- */
typedef struct {
    tg_op op;
    void *out;
    const void *in[3];
} rows_ctx;

/* After broadcasting, the inner strides are 0 or 1. The three common pairs get loops with
 * constant strides, which the compiler vectorizes; anything else takes the general loop. */
#define BINARY_LOOPS(T, EXPR)                                                                      \
    do {                                                                                        \
        if (sa == 1 && sb == 1)                                                                 \
            for (int64_t i = 0; i < len; i++) {                                                 \
                T u = a[i], v = b[i];                                                           \
                y[i] = EXPR;                                                                    \
            }                                                                                   \
        else if (sa == 1 && sb == 0)                                                            \
            for (int64_t i = 0; i < len; i++) {                                                 \
                T u = a[i], v = b[0];                                                           \
                y[i] = EXPR;                                                                    \
            }                                                                                   \
        else if (sa == 0 && sb == 1)                                                            \
            for (int64_t i = 0; i < len; i++) {                                                 \
                T u = a[0], v = b[i];                                                           \
                y[i] = EXPR;                                                                    \
            }                                                                                   \
        else                                                                                    \
            for (int64_t i = 0; i < len; i++) {                                                 \
                T u = a[i * sa], v = b[i * sb];                                                 \
                y[i] = EXPR;                                                                    \
            }                                                                                   \
    } while (0)

#define BINARY_ROW(T)                                                                           \
    static void binary_row_##T(const tg_strided *p, const int64_t *off, int64_t len, void *c) \
    {                                                                                           \
        const rows_ctx *ctx = c;                                                                \
        T *restrict y = (T *)ctx->out + off[0];                                                 \
        const T *restrict a = (const T *)ctx->in[0] + off[1];                                   \
        const T *restrict b = (const T *)ctx->in[1] + off[2];                                   \
        int64_t sa = p->stride[1][p->ndim - 1], sb = p->stride[2][p->ndim - 1];                 \
        switch (ctx->op) {                                                                      \
        case TG_OP_ADD: BINARY_LOOPS(T, u + v); break;                                             \
        case TG_OP_SUB: BINARY_LOOPS(T, u - v); break;                                             \
        case TG_OP_MUL: BINARY_LOOPS(T, u * v); break;                                             \
        case TG_OP_DIV: BINARY_LOOPS(T, u / v); break;                                             \
        case TG_OP_MAXIMUM: BINARY_LOOPS(T, (u >= v || u != u) ? u : v); break;                    \
        case TG_OP_LT: BINARY_LOOPS(T, (T)(u < v)); break;                                         \
        case TG_OP_EQ: BINARY_LOOPS(T, (T)(u == v)); break;                                        \
        default: break;                                                                         \
        }                                                                                       \
    }                                                                                           \
    static void where_row_##T(const tg_strided *p, const int64_t *off, int64_t len, void *c)  \
    {                                                                                           \
        const rows_ctx *ctx = c;                                                                \
        T *restrict y = (T *)ctx->out + off[0];                                                 \
        const T *restrict k = (const T *)ctx->in[0] + off[1];                                   \
        const T *restrict a = (const T *)ctx->in[1] + off[2];                                   \
        const T *restrict b = (const T *)ctx->in[2] + off[3];                                   \
        int64_t sk = p->stride[1][p->ndim - 1], sa = p->stride[2][p->ndim - 1];                 \
        int64_t sb = p->stride[3][p->ndim - 1];                                                 \
        if (sk == 1 && sa == 1 && sb == 1)                                                      \
            for (int64_t i = 0; i < len; i++)                                                   \
                y[i] = k[i] != 0 ? a[i] : b[i];                                                 \
        else if (sk == 1 && sa == 1 && sb == 0)                                                 \
            for (int64_t i = 0; i < len; i++)                                                   \
                y[i] = k[i] != 0 ? a[i] : b[0];                                                 \
        else if (sk == 1 && sa == 0 && sb == 1)                                                 \
            for (int64_t i = 0; i < len; i++)                                                   \
                y[i] = k[i] != 0 ? a[0] : b[i];                                                 \
        else                                                                                    \
            for (int64_t i = 0; i < len; i++)                                                   \
                y[i] = k[i * sk] != 0 ? a[i * sa] : b[i * sb];                                  \
    }
BINARY_ROW(float)
BINARY_ROW(double)

static void run_broadcast(const struct tg_node *n, void *out, const void *const *in,
                          tg_row_fn row)
{
    tg_strided p = {.ndim = n->ndim, .nops = n->n_in + 1};
    memcpy(p.shape, n->shape, sizeof p.shape);
    tg_contiguous_strides(n->ndim, n->shape, p.stride[0]);
    for (int i = 0; i < n->n_in; i++)
        tg_broadcast_strides(n->in[i]->ndim, n->in[i]->shape, n->ndim, n->shape, p.stride[i + 1]);
    if (n->ndim == 0) {
        p.ndim = 1;
        p.shape[0] = 1;
        for (int k = 0; k < p.nops; k++)
            p.stride[k][0] = 0;
    }
    tg_strided_collapse(&p);
    rows_ctx ctx = {n->op, out, {in[0], in[1], in[2]}};
    tg_strided_rows(&p, row, &ctx);
}

void tg_kernel_binary(const struct tg_node *n, void *out, const void *const *in)
{
    run_broadcast(n, out, in, n->dtype == TG_F64 ? binary_row_double : binary_row_float);
}

void tg_kernel_where(const struct tg_node *n, void *out, const void *const *in)
{
    run_broadcast(n, out, in, n->dtype == TG_F64 ? where_row_double : where_row_float);
}

/* ---- cast and copy ------------------------------------------------------------------------- */
void tg_kernel_cast(const struct tg_node *n, void *out, const void *const *in)
{
    tg_dtype from = n->in[0]->dtype;
    if (from == n->dtype) {
        memcpy(out, in[0], (size_t)n->numel * elem_size(n->dtype));
    } else if (n->dtype == TG_F64) {
        const float *x = in[0];
        double *y = out;
        for (int64_t i = 0; i < n->numel; i++)
            y[i] = x[i];
    } else {
        const double *x = in[0];
        float *y = out;
        for (int64_t i = 0; i < n->numel; i++)
            y[i] = (float)x[i];
    }
}

void tg_kernel_copy(const struct tg_node *n, void *out, const void *const *in)
{
    if (out != in[0])
        memcpy(out, in[0], (size_t)n->numel * elem_size(n->dtype));
}
