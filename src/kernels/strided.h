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

/* Calls row(p, offsets, length, ctx) once per row along the last axis, offsets in elements. */
typedef void (*tg_row_fn)(const tg_strided *p, const int64_t *off, int64_t len, void *ctx);

static inline void tg_strided_rows(const tg_strided *p, tg_row_fn row, void *ctx)
{
    int64_t idx[TG_MAX_DIMS] = {0};
    int64_t off[TG_MAX_OPERANDS] = {0};
    int last = p->ndim - 1;
    for (int i = 0; i < p->ndim; i++)
        if (p->shape[i] == 0)
            return;
    for (;;) {
        row(p, off, p->shape[last], ctx);
        int d = last - 1;
        for (; d >= 0; d--) {
            idx[d]++;
            for (int k = 0; k < p->nops; k++)
                off[k] += p->stride[k][d];
            if (idx[d] < p->shape[d])
                break;
            for (int k = 0; k < p->nops; k++)
                off[k] -= p->stride[k][d] * p->shape[d];
            idx[d] = 0;
        }
        if (d < 0)
            return;
    }
}

#endif
