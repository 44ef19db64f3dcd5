/* Batched matrix products on libxsmm's JIT kernels.
 *
 * libxsmm is column-major; our tensors are row-major. A row-major C[M,N] = A[M,K] B[K,N] is,
 * read column-major, C^T = B^T A^T, so we ask libxsmm for an (N x K)(K x M) product with
 * B as its first operand. We dispatch JIT kernels rather than calling libxsmm_sgemm, whose
 * large-size path falls back to a BLAS that is not linked. Where no kernel can be generated
 * (sizes past the JIT's limits) a plain loop takes over. */
#include "strided.h"

#include <libxsmm.h>
#include <limits.h>
#include <string.h>

/* The loop where libxsmm generates no kernel: row-major C[m, n] (ldc) = or += A[m, k] (lda)
 * B[k, n] (ldb). */
#define FALLBACK_GEMM(T)                                                                        \
    static void gemm_loop_##T(int64_t m, int64_t n, int64_t k, const T *a, int64_t lda,         \
                              const T *b, int64_t ldb, T *c, int64_t ldc, bool accumulate)      \
    {                                                                                           \
        for (int64_t i = 0; i < m; i++) {                                                       \
            T *crow = c + i * ldc;                                                              \
            if (!accumulate)                                                                    \
                memset(crow, 0, (size_t)n * sizeof *crow);                                      \
            for (int64_t p = 0; p < k; p++) {                                                   \
                T av = a[i * lda + p];                                                          \
                const T *brow = b + p * ldb;                                                    \
                for (int64_t j = 0; j < n; j++)                                                 \
                    crow[j] += av * brow[j];                                                    \
            }                                                                                   \
        }                                                                                       \
    }
FALLBACK_GEMM(float)
FALLBACK_GEMM(double)

/* A matrix times one column, C[m, 1] = A[m, k] b[k]: libxsmm vectorizes along C's rows of
 * its column-major view, which here is one element wide, so its kernel runs scalar. Each row
 * is instead a dot product over contiguous memory, folded into DOT_LANES independent partial
 * sums (which the compiler turns into vector registers of whatever width the machine has)
 * and added up in a fixed order: the same result for any thread count. */
#define DOT_LANES 16
#define DOT_ROWS(T)                                                                             \
    static void dot_rows_##T(int64_t m, int64_t k, const T *a, const T *b, T *c)                \
    {                                                                                           \
        for (int64_t i = 0; i < m; i++) {                                                       \
            const T *row = a + i * k;                                                           \
            T lane[DOT_LANES] = {0};                                                            \
            int64_t p = 0;                                                                      \
            for (; p + DOT_LANES <= k; p += DOT_LANES)                                          \
                for (int l = 0; l < DOT_LANES; l++)                                             \
                    lane[l] += row[p + l] * b[p + l];                                           \
            T sum = 0;                                                                          \
            for (int l = 0; l < DOT_LANES; l++)                                                 \
                sum += lane[l];                                                                 \
            for (; p < k; p++)                                                                  \
                sum += row[p] * b[p];                                                           \
            c[i] = sum;                                                                         \
        }                                                                                       \
    }
DOT_ROWS(float)
DOT_ROWS(double)

/* Cache blocking. A libxsmm kernel computes its C a few columns at a time, each time
 * streaming its whole first operand, our B (column-major: B^T), k rows of n: with fc1's
 * 3136 x 128 (1.6 MB) that comes from L3 again and again. So a call gets a panel of B of at
 * most PANEL_BYTES, PANEL_COLS columns of it and as many of its rows as fit, and the rows'
 * partial products are added into C (beta = 1, which loads C into the accumulators: the sums
 * are formed in the same order as without blocking). Measured on the reference model's fc1,
 * in cache, 1 thread, Zen 5: C[128, 128] = A[128, 3136] B[3136, 128] 0.60 -> 0.45 ms with
 * libxsmm's AVX-512 kernels, 1.39 -> 0.98 with its AVX2 ones; C[128, 3136] = A[128, 128]
 * B[128, 3136] 0.59 -> 0.46 and 1.30 -> 0.91. */
#define PANEL_BYTES (256 * 1024)
#define PANEL_COLS 512

typedef struct {
    int64_t nc, kc; /* columns and rows of B a call takes */
} panel;

static panel panel_for(int64_t n, int64_t k, size_t elem)
{
    panel p = {n < PANEL_COLS ? n : PANEL_COLS, 0};
    p.kc = (int64_t)(PANEL_BYTES / elem) / p.nc;
    p.kc = p.kc < 1 ? 1 : p.kc > k ? k : p.kc;
    return p;
}

/* Row-major C[m, n] (ldc) = or += A[m, k] (lda) B[k, n] (ldb) by libxsmm's kernel, or the
 * loop where it has none; `run` false only dispatches it (prepare's warm-up). libxsmm sees
 * the column-major C^T = B^T A^T: M = n, N = m, its first operand our B. */
#define GEMM_BLOCK(T, DISPATCH, KERNEL)                                                         \
    static void gemm_block_##T(int64_t m, int64_t n, int64_t k, const T *a, int64_t lda,        \
                               const T *b, int64_t ldb, T *c, int64_t ldc, bool accumulate,     \
                               bool run)                                                        \
    {                                                                                           \
        bool fits = m <= INT_MAX && n <= INT_MAX && k <= INT_MAX && lda <= INT_MAX &&           \
                    ldb <= INT_MAX && ldc <= INT_MAX;                                           \
        libxsmm_blasint lm = (libxsmm_blasint)n, ln = (libxsmm_blasint)m;                       \
        libxsmm_blasint lk = (libxsmm_blasint)k, la = (libxsmm_blasint)ldb;                     \
        libxsmm_blasint lb = (libxsmm_blasint)lda, lc = (libxsmm_blasint)ldc;                   \
        T alpha = 1, beta = accumulate;                                                         \
        KERNEL kernel =                                                                         \
            fits ? DISPATCH(lm, ln, lk, &la, &lb, &lc, &alpha, &beta, NULL, NULL) : NULL;       \
        if (run && kernel)                                                                      \
            kernel(b, a, c);                                                                    \
        else if (run)                                                                           \
            gemm_loop_##T(m, n, k, a, lda, b, ldb, c, ldc, accumulate);                         \
    }
GEMM_BLOCK(float, libxsmm_smmdispatch, libxsmm_smmfunction)
GEMM_BLOCK(double, libxsmm_dmmdispatch, libxsmm_dmmfunction)

/* C[m, n] (ldc) = A[m, k] B[k, n] (ldb), row-major, A contiguous, in panels of B. */
static void gemm(tg_dtype dt, int64_t m, int64_t n, int64_t k, const void *a, const void *b,
                 int64_t ldb, void *c, int64_t ldc, bool run)
{
    if (n == 1 && ldb == 1 && ldc == 1) {
        if (run && dt == TG_F64)
            dot_rows_double(m, k, a, b, c);
        else if (run)
            dot_rows_float(m, k, a, b, c);
        return;
    }
    size_t elem = dt == TG_F64 ? sizeof(double) : sizeof(float);
    panel p = panel_for(n, k, elem);
    for (int64_t j = 0; j < n; j += p.nc)
        for (int64_t q = 0; q < k; q += p.kc) {
            int64_t cols = n - j < p.nc ? n - j : p.nc, rows = k - q < p.kc ? k - q : p.kc;
            const char *aq = run ? (const char *)a + (size_t)q * elem : NULL;
            const char *bq = run ? (const char *)b + (size_t)(q * ldb + j) * elem : NULL;
            char *cj = run ? (char *)c + (size_t)j * elem : NULL;
            if (dt == TG_F64)
                gemm_block_double(m, cols, rows, (const double *)aq, k, (const double *)bq, ldb,
                                  (double *)cj, ldc, q > 0, run);
            else
                gemm_block_float(m, cols, rows, (const float *)aq, k, (const float *)bq, ldb,
                                 (float *)cj, ldc, q > 0, run);
        }
}

/* The work is cut into tasks that do not depend on the thread count — whole products, or for
 * a few large products bands of BAND rows or blocks of columns — so each output element is
 * computed by the same kernel in the same order however many threads share the tasks. */
#define BAND 64
#define FEW_PRODUCTS 8

/* Column blocks: with few products of at most 2 BAND rows and at least 2 PANEL_COLS
 * columns, two tasks of half the columns each (rounded up to COL_ALIGN), each with all the
 * rows, which libxsmm's kernels take as their N. fc1's backward products ([128, 128] by
 * [128, 3136]) took 0.90-0.93 of the time of two bands of 64 rows on 2 threads and 0.94-1.02
 * on 1 (AVX2 code, a noisy host; blocks of about PANEL_COLS columns, six tasks, 0.96-0.98).
 * fc1's forward has 128 columns: two blocks of 64 took 1.02-1.10 times the bands' time, so
 * it keeps them. A block is at least PANEL_COLS wide, so its panels take as many of B's rows
 * as without blocks: each element's sum is formed in the same order. */
#define COL_ALIGN 64
static int64_t col_width(int64_t batches, int64_t m, int64_t n)
{
    if (batches >= FEW_PRODUCTS || m > 2 * BAND || n < 2 * PANEL_COLS)
        return n;
    return ((n + 1) / 2 + COL_ALIGN - 1) / COL_ALIGN * COL_ALIGN;
}

/* Row bands: otherwise tasks of BAND rows when there are few, large products. */
static int64_t band_count(int64_t batches, int64_t m, int64_t n)
{
    return batches < FEW_PRODUCTS && m > BAND && col_width(batches, m, n) == n
               ? (m + BAND - 1) / BAND
               : 1;
}

void tg_matmul_prepare(const struct tg_node *node)
{
    int nd = node->ndim;
    int64_t m = node->shape[nd - 2], n = node->shape[nd - 1];
    int64_t k = node->in[0]->shape[node->in[0]->ndim - 1];
    if (m <= 0 || n <= 0 || k <= 0)
        return;
    int64_t batches = tg_shape_numel(nd - 2, node->shape), bands = band_count(batches, m, n);
    int64_t rows[2] = {bands > 1 ? BAND : m, bands > 1 ? m - (bands - 1) * BAND : m};
    int64_t cw = col_width(batches, m, n), cols[2] = {cw, n - (n - 1) / cw * cw};
    for (int r = 0; r < 2; r++)
        for (int q = 0; q < 2; q++)
            gemm(node->dtype, rows[r], cols[q], k, NULL, NULL, n, NULL, n, false);
}

void tg_kernel_matmul(const struct tg_node *node, void *out, const void *const *in)
{
    const struct tg_node *A = node->in[0], *B = node->in[1];
    int nd = node->ndim, nb = nd - 2;
    int64_t m = node->shape[nd - 2], n = node->shape[nd - 1], k = A->shape[A->ndim - 1];
    /* Batch strides in whole matrices, 0 along broadcast axes. */
    int64_t sa[TG_MAX_DIMS], sb[TG_MAX_DIMS];
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
    const char *a = in[0], *b = in[1];
    char *c = out;
    int64_t bands = band_count(batches, m, n), cw = col_width(batches, m, n);
    int64_t blocks = bands * ((n + cw - 1) / cw);
    int64_t rows = bands > 1 ? BAND : m, tasks = batches * blocks;
    int threads = batches * m * n * k >= 4 * TG_PARALLEL_MIN ? tg_num_threads() : 1;
    if (threads > tasks)
        threads = (int)tasks;
#pragma omp parallel for num_threads(threads) schedule(static)
    for (int64_t task = 0; task < tasks; task++) {
        int64_t bi = task / blocks, lo = task % blocks % bands * rows;
        int64_t j0 = task % blocks / bands * cw, cols = n - j0 < cw ? n - j0 : cw;
        int64_t hi = lo + rows < m ? lo + rows : m;
        int64_t oa = 0, ob = 0, rest = bi;
        for (int d = nb - 1; d >= 0; d--) {
            int64_t i = rest % node->shape[d];
            rest /= node->shape[d];
            oa += i * sa[d];
            ob += i * sb[d];
        }
        gemm(node->dtype, hi - lo, cols, k, a + (size_t)(oa * m * k + lo * k) * elem,
             b + (size_t)(ob * k * n + j0) * elem, n,
             c + (size_t)(bi * m * n + lo * n + j0) * elem, n, true);
    }
}
