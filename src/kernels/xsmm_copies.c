/* libxsmm's JIT copies and transposes, and the loops that stand in for them
 * (xsmm_copies.h). The loops are typed, so that the compiler vectorizes them: rows here are
 * short (14 elements for the reference model's second block). */
#include "xsmm_copies.h"

#include <limits.h>

libxsmm_xtransfunction tg_xsmm_transpose_kernel(size_t elem, int64_t m, int64_t n, int64_t ldo)
{
    if (m > UINT_MAX || n > UINT_MAX || ldo > UINT_MAX)
        return NULL;
    libxsmm_descriptor_blob blob;
    const libxsmm_trans_descriptor *desc = libxsmm_trans_descriptor_init(
        &blob, (unsigned int)elem, (unsigned int)m, (unsigned int)n, (unsigned int)ldo);
    return desc ? libxsmm_dispatch_trans(desc) : NULL;
}

libxsmm_xmcopyfunction tg_xsmm_copy_kernel(size_t elem, int64_t m, int64_t n, int64_t ldi,
                                           int64_t ldo)
{
    if (m > UINT_MAX || n > UINT_MAX || ldi > UINT_MAX || ldo > UINT_MAX)
        return NULL;
    libxsmm_descriptor_blob blob;
    const libxsmm_mcopy_descriptor *desc = libxsmm_mcopy_descriptor_init(
        &blob, (unsigned int)elem, (unsigned int)m, (unsigned int)n, (unsigned int)ldo,
        (unsigned int)ldi, 0, 0, NULL);
    return desc ? libxsmm_dispatch_mcopy(desc) : NULL;
}

#define LOOPS(T)                                                                                \
    static void transpose_##T(const T *src, int64_t ldi, T *dst, int64_t ldo, int64_t m,        \
                              int64_t n)                                                        \
    {                                                                                           \
        for (int64_t j = 0; j < n; j++)                                                         \
            for (int64_t i = 0; i < m; i++)                                                     \
                dst[i * ldo + j] = src[j * ldi + i];                                            \
    }                                                                                           \
    static void copy_##T(const T *src, int64_t ldi, T *dst, int64_t ldo, int64_t m, int64_t n)  \
    {                                                                                           \
        for (int64_t j = 0; j < n; j++, src += ldi, dst += ldo)                                 \
            for (int64_t i = 0; i < m; i++)                                                     \
                dst[i] = src[i];                                                                \
    }
LOOPS(float)
LOOPS(double)

void tg_xsmm_transpose(libxsmm_xtransfunction jit, size_t elem, const void *src, int64_t ldi,
                       void *dst, int64_t ldo, int64_t m, int64_t n)
{
    if (jit) {
        unsigned int i = (unsigned int)ldi, o = (unsigned int)ldo;
        jit(src, &i, dst, &o);
    } else if (elem == sizeof(double)) {
        transpose_double(src, ldi, dst, ldo, m, n);
    } else {
        transpose_float(src, ldi, dst, ldo, m, n);
    }
}

void tg_xsmm_copy(libxsmm_xmcopyfunction jit, size_t elem, const void *src, int64_t ldi,
                  void *dst, int64_t ldo, int64_t m, int64_t n)
{
    if (jit) {
        unsigned int i = (unsigned int)ldi, o = (unsigned int)ldo;
        jit(src, &i, dst, &o);
    } else if (elem == sizeof(double)) {
        copy_double(src, ldi, dst, ldo, m, n);
    } else {
        copy_float(src, ldi, dst, ldo, m, n);
    }
}
