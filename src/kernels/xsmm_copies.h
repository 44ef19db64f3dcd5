/* libxsmm's JIT copies and transposes for the convolution kernels (conv.c, winograd.c):
 * each is dispatched once, when a plan node is prepared, and run with a plain loop wherever
 * libxsmm generates none (sizes past its limits, or a CPU it has no code for), so that a run
 * never depends on the JIT succeeding. Elements are f32 or f64 (elem 4 or 8). */
#ifndef TG_KERNELS_XSMM_COPIES_H
#define TG_KERNELS_XSMM_COPIES_H

#include <libxsmm.h>
#include <stddef.h>
#include <stdint.h>

/* libxsmm's transpose of n rows of m elements (ldi apart, given at the call) into m rows of
 * n, ldo apart; NULL where it has none. */
libxsmm_xtransfunction tg_xsmm_transpose_kernel(size_t elem, int64_t m, int64_t n,
                                                int64_t ldo);

/* dst[i ldo + j] = src[j ldi + i] for i < m, j < n: by `jit`, a transpose kernel of exactly
 * these m, n and ldo, or by the loop when it is NULL. */
void tg_xsmm_transpose(libxsmm_xtransfunction jit, size_t elem, const void *src, int64_t ldi,
                       void *dst, int64_t ldo, int64_t m, int64_t n);

/* libxsmm's copy of n rows of m elements, ldi apart, to rows ldo apart; NULL where it has
 * none. */
libxsmm_xmcopyfunction tg_xsmm_copy_kernel(size_t elem, int64_t m, int64_t n, int64_t ldi,
                                           int64_t ldo);

/* dst[j ldo + i] = src[j ldi + i] for i < m, j < n: by `jit`, a copy kernel of exactly these
 * sizes, or by the loop when it is NULL. */
void tg_xsmm_copy(libxsmm_xmcopyfunction jit, size_t elem, const void *src, int64_t ldi,
                  void *dst, int64_t ldo, int64_t m, int64_t n);

static inline int64_t tg_min64(int64_t a, int64_t b) { return a < b ? a : b; }

/* Bytes rounded up to a cache line: the kernels' scratch areas start on one each. */
static inline size_t tg_round64(size_t bytes) { return (bytes + 63) / 64 * 64; }

#endif
