/* Batched matrix products on libxsmm's JIT kernels.
 *
 * libxsmm is column-major; our tensors are row-major. A row-major C[M,N] = A[M,K] B[K,N] is,
 * read column-major, C^T = B^T A^T, so we ask libxsmm for an (N x K)(K x M) product with
 * B as its first operand. We dispatch JIT kernels rather than calling libxsmm_sgemm, whose
 * large-size path falls back to a BLAS that is not linked. Where no kernel can be generated
 * (sizes past the JIT's limits) a plain loop takes over. */
#include "../core/internal.h"

#include <libxsmm.h>
#include <limits.h>
#include <string.h>

#define FALLBACK_GEMM(T)                                                                        \
    static void gemm_loop_##T(int64_t m, int64_t n, int64_t k, const T *a, const T *b, T *c)    \
    {                                                                                           \
        memset(c, 0, (size_t)(m * n) * sizeof *c);                                              \
        for (int64_t i = 0; i < m; i++)                                                         \
            for (int64_t p = 0; p < k; p++) {                                                   \
                T av = a[i * k + p];                                                            \
                const T *brow = b + p * n;                                                      \
                T *crow = c + i * n;                                                            \
                for (int64_t j = 0; j < n; j++)                                                 \
                    crow[j] += av * brow[j];                                                    \
            }                                                                                   \
    }
FALLBACK_GEMM(float)
FALLBACK_GEMM(double)

void tg_kernel_matmul(const struct tg_node *node, void *out, const void *const *in)
{
    const struct tg_node *A = node->in[0], *B = node->in[1];
    int nd = node->ndim;
    int64_t m = node->shape[nd - 2], n = node->shape[nd - 1], k = A->shape[A->ndim - 1];
    int nb = nd - 2;
    /* Batch strides in whole matrices, 0 along broadcast axes. */
    int64_t sa[TG_MAX_DIMS], sb[TG_MAX_DIMS], idx[TG_MAX_DIMS] = {0};
    tg_broadcast_strides(A->ndim - 2, A->shape, nb, node->shape, sa);
    tg_broadcast_strides(B->ndim - 2, B->shape, nb, node->shape, sb);
    int64_t batches = tg_shape_numel(nb, node->shape);
    size_t elem = node->dtype == TG_F64 ? sizeof(double) : sizeof(float);
    if (m == 0 || n == 0 || batches == 0)
        return;
    if (k == 0) {
        memset(out, 0, (size_t)node->numel * elem);
        return;
    }

    bool fits = m <= INT_MAX && n <= INT_MAX && k <= INT_MAX;
    libxsmm_blasint lm = (libxsmm_blasint)n, ln = (libxsmm_blasint)m, lk = (libxsmm_blasint)k;
    libxsmm_smmfunction sk = NULL;
    libxsmm_dmmfunction dk = NULL;
    if (fits && node->dtype == TG_F64) {
        double alpha = 1, beta = 0;
        dk = libxsmm_dmmdispatch(lm, ln, lk, NULL, NULL, NULL, &alpha, &beta, NULL, NULL);
    } else if (fits) {
        float alpha = 1, beta = 0;
        sk = libxsmm_smmdispatch(lm, ln, lk, NULL, NULL, NULL, &alpha, &beta, NULL, NULL);
    }

    int64_t oa = 0, ob = 0;
    for (int64_t bi = 0; bi < batches; bi++) {
        if (node->dtype == TG_F64) {
            const double *a = (const double *)in[0] + oa * m * k;
            const double *b = (const double *)in[1] + ob * k * n;
            double *c = (double *)out + bi * m * n;
            if (dk)
                dk(b, a, c);
            else
                gemm_loop_double(m, n, k, a, b, c);
        } else {
            const float *a = (const float *)in[0] + oa * m * k;
            const float *b = (const float *)in[1] + ob * k * n;
            float *c = (float *)out + bi * m * n;
            if (sk)
                sk(b, a, c);
            else
                gemm_loop_float(m, n, k, a, b, c);
        }
        for (int d = nb - 1; d >= 0; d--) { /* next batch index, odometer style */
            idx[d]++;
            oa += sa[d];
            ob += sb[d];
            if (idx[d] < node->shape[d])
                break;
            oa -= sa[d] * node->shape[d];
            ob -= sb[d] * node->shape[d];
            idx[d] = 0;
        }
    }
}
