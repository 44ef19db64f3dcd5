/* A fused program that only copies one input into the transpose of its layout (a linear
 * layer's weight, [out, in] to [in, out], for a matmul that cannot read it transposed:
 * libxsmm 1.17 generates no GEMM with a transposed first operand) runs as libxsmm's
 * transpose kernels instead of the fused kernel's loops, which step through one side with
 * a stride whatever the order: the reference model's fc1 weight, 128 x 3136 floats, took
 * 0.17 ms a step as a generated kernel (Zen 5, AVX-512 and AVX2 code alike), 0.04 ms as
 * libxsmm's transposes of 64 columns at a time. */
#include "fused_transpose.h"
#include "strided.h"
#include "xsmm_copies.h"

#include <stdbool.h>

/* Source columns a transpose kernel takes at once: blocks that stay in L1 with their
 * output, and that two threads share. */
#define COLUMNS 64

bool tg_fused_transpose_plan(const tg_fused_program *p, tg_fused_transpose *t)
{
    *t = (tg_fused_transpose){0};
    if (p->reduce_op != TG_OP_LEAF || p->n_instrs != 0 || p->n_loads != 1 || p->result != 0 ||
        p->stores)
        return false;
    tg_fused_loops x;
    tg_fused_loops_of(p, false, &x);
    /* y[i][j] = in[i + j ldi]: the output row-major [m][n], the input n rows of m, ldi apart */
    if (x.ndim != 2 || x.out_stride[1] != 1 || x.out_stride[0] != x.shape[1] ||
        x.stride[0][0] != 1 || x.stride[0][1] < x.shape[0])
        return false;
    size_t elem = p->load[0].dtype == TG_F64 ? sizeof(double) : sizeof(float);
    int64_t m = x.shape[0], n = x.shape[1], last = m - (m - 1) / COLUMNS * COLUMNS;
    libxsmm_xtransfunction full = tg_xsmm_transpose_kernel(elem, COLUMNS, n, n);
    libxsmm_xtransfunction tail = tg_xsmm_transpose_kernel(elem, last, n, n);
    if ((m > COLUMNS && !full) || !tail)
        return false; /* no JIT here: the generated kernel is the faster loop */
    *t = (tg_fused_transpose){true, elem, m, n, x.stride[0][1], full, tail};
    return true;
}

void tg_fused_transpose_run(const tg_fused_transpose *t, void *out, const void *in)
{
    int64_t blocks = (t->m + COLUMNS - 1) / COLUMNS;
    int threads = t->m * t->n >= TG_PARALLEL_MIN ? tg_num_threads() : 1;
#pragma omp parallel for num_threads(threads) schedule(static)
    for (int64_t b = 0; b < blocks; b++) {
        int64_t i0 = b * COLUMNS, cols = tg_min64(COLUMNS, t->m - i0);
        tg_xsmm_transpose(cols == COLUMNS ? t->full : t->tail, t->elem,
                          (const char *)in + (size_t)i0 * t->elem, t->ldi,
                          (char *)out + (size_t)(i0 * t->n) * t->elem, t->n, cols, t->n);
    }
}
