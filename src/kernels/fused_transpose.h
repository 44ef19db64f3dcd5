/* Fused programs that are 2-D transposing copies, run by libxsmm's transposes
 * (fused_transpose.c); kernels/fused.c asks when it prepares a program. */
#ifndef TG_KERNELS_FUSED_TRANSPOSE_H
#define TG_KERNELS_FUSED_TRANSPOSE_H

#include "fused.h"

#include <libxsmm.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

/* y[i n + j] = in[i + j ldi] for i < m, j < n: the input's n rows of m elements, ldi apart,
 * into m rows of n; by blocks of columns, `full` a whole block's kernel, `tail` the last's. */
typedef struct {
    bool on;
    size_t elem;
    int64_t m, n, ldi;
    libxsmm_xtransfunction full, tail;
} tg_fused_transpose;

/* Whether p only copies its load, transposed as above, with libxsmm kernels for it: then t
 * says how (else it is all zeros). */
bool tg_fused_transpose_plan(const tg_fused_program *p, tg_fused_transpose *t);

/* The copy: `in` the load's first element (its offset applied), `out` the node's output. */
void tg_fused_transpose_run(const tg_fused_transpose *t, void *out, const void *in);

#endif
