/* Walking several strided operands over one shape, row by row. Adjacent axes that every
 * operand steps through contiguously are merged first, so a bias add over [N, C, H, W] runs
 * rows of H*W rather than rows of W. */
#ifndef TG_STRIDED_H
#define TG_STRIDED_H

#include "../core/internal.h"

#define TG_MAX_OPERANDS 4

typedef struct {
    int ndim;
    int nops;
    int64_t shape[TG_MAX_DIMS];
    int64_t stride[TG_MAX_OPERANDS][TG_MAX_DIMS]; /* in elements */
} tg_strided;

/* Merges axis i into axis i+1 wherever every operand allows it, and drops size-1 axes. */
static inline void tg_strided_collapse(tg_strided *p)
{
    int out = 0;
    tg_strided q = *p;
    q.ndim = 0;
    for (int i = 0; i < p->ndim; i++) {
        if (p->shape[i] == 1 && p->ndim > 1)
            continue;
        if (out > 0) {
            bool merge = true;
            for (int k = 0; k < p->nops; k++)
                if (q.stride[k][out - 1] != p->stride[k][i] * p->shape[i])
                    merge = false;
            if (merge) {
                q.shape[out - 1] *= p->shape[i];
                for (int k = 0; k < p->nops; k++)
                    q.stride[k][out - 1] = p->stride[k][i];
                continue;
            }
        }
        q.shape[out] = p->shape[i];
        for (int k = 0; k < p->nops; k++)
            q.stride[k][out] = p->stride[k][i];
        out++;
    }
    if (out == 0) { /* a single element */
        q.shape[0] = 1;
        for (int k = 0; k < p->nops; k++)
            q.stride[k][0] = 0;
        out = 1;
    }
    q.ndim = out;
    *p = q;
}

typedef void (*tg_row_fn)(const tg_strided *p, const int64_t *off, int64_t len, void *ctx);

/* Calls row(p, offsets, length, ctx) for rows first .. first + count - 1 along the last axis
 * (offsets in elements), each in full or, with a segment, only its [begin, end) part. */
static inline void tg_strided_rows_range(const tg_strided *p, int64_t first, int64_t count,
                                         int64_t begin, int64_t end, tg_row_fn row, void *ctx)
{
    int64_t idx[TG_MAX_DIMS] = {0};
    int64_t off[TG_MAX_OPERANDS] = {0};
    int last = p->ndim - 1;
    int64_t rest = first;
    for (int d = last - 1; d >= 0; d--) {
        idx[d] = rest % p->shape[d];
        rest /= p->shape[d];
        for (int k = 0; k < p->nops; k++)
            off[k] += idx[d] * p->stride[k][d];
    }
    for (int64_t r = 0; r < count; r++) {
        int64_t at[TG_MAX_OPERANDS];
        for (int k = 0; k < p->nops; k++)
            at[k] = off[k] + begin * p->stride[k][last];
        row(p, at, end - begin, ctx);
        for (int d = last - 1; d >= 0; d--) {
            idx[d]++;
            for (int k = 0; k < p->nops; k++)
                off[k] += p->stride[k][d];
            if (idx[d] < p->shape[d])
                break;
            for (int k = 0; k < p->nops; k++)
                off[k] -= p->stride[k][d] * p->shape[d];
            idx[d] = 0;
        }
    }
}

/* Work below this many elements is not worth waking threads for. */
#define TG_PARALLEL_MIN 32768

/* Calls row once per row along the last axis. parallel: rows write disjoint outputs, so
 * threads may take whole rows (or, when there are fewer rows than threads, pieces of rows).
 * Either way each output element is computed exactly as in one thread. */
static inline void tg_strided_rows_mode(const tg_strided *p, tg_row_fn row, void *ctx,
                                        bool parallel)
{
    int last = p->ndim - 1;
    int64_t rows = 1;
    for (int i = 0; i < p->ndim; i++)
        if (p->shape[i] == 0)
            return;
    for (int d = 0; d < last; d++)
        rows *= p->shape[d];
    int64_t len = p->shape[last];
    int threads = parallel && rows * len >= TG_PARALLEL_MIN ? tg_num_threads() : 1;
    if (threads <= 1) {
        tg_strided_rows_range(p, 0, rows, 0, len, row, ctx);
    } else if (rows >= threads) {
#pragma omp parallel for num_threads(threads) schedule(static)
        for (int t = 0; t < threads; t++) {
            int64_t a = rows * t / threads, b = rows * (t + 1) / threads;
            tg_strided_rows_range(p, a, b - a, 0, len, row, ctx);
        }
    } else {
        for (int64_t r = 0; r < rows; r++) {
#pragma omp parallel for num_threads(threads) schedule(static)
            for (int t = 0; t < threads; t++)
                tg_strided_rows_range(p, r, 1, len * t / threads, len * (t + 1) / threads, row,
                                      ctx);
        }
    }
}

static inline void tg_strided_rows(const tg_strided *p, tg_row_fn row, void *ctx)
{
    tg_strided_rows_mode(p, row, ctx, true);
}

#endif
