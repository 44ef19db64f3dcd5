/* Winograd F(2x2, 3x3): a 3x3 stride-1 convolution computed on 4x4 input tiles, each giving
 * a 2x2 output tile, with 16 multiplications per tile and channel pair where the direct form
 * has 36 (Lavin and Gray, "Fast Algorithms for Convolutional Neural Networks", 2015). With
 * the transforms' matrices B^T (4x4), G (4x3) and A^T (2x4):
 *
 *   U = G g G^T         per (output channel, input channel): the 3x3 kernel g becomes 4x4
 *   V = B^T d B         per (tile, input channel): the 4x4 input patch d, tiles 2 apart
 *   M[xi] = U[xi] V[xi] for each of the 16 points xi: a GEMM over the input channels
 *   Y = A^T M A         per (tile, output channel): the 2x2 output
 *
 * so the multiply-adds of the GEMMs drop by 36/16 = 2.25, and the transforms are additions.
 * All of it runs per task, an image's band of tile rows, in a thread's scratch: the band's
 * padded input staged channels last ([row][x][c], as conv.c's channels-last path stages it),
 * V as [xi][tile][c], M as [xi][tile][oc], the output as [row][x][oc], transposed into y's
 * channel planes at the end. The transforms' loops run along channels, so they vectorize for
 * whatever vectors the machine has; the 16 GEMMs are libxsmm's (M = OC, N = the band's
 * tiles, K = C; a loop where it generates none). Bands are sized so that V and M stay in
 * the core's L2 (BAND_BYTES).
 *
 * Numerically the transforms only add, and halve exactly; the values differ from the direct
 * convolution's by rounding (a few ulps of the largest terms at the reference model's sizes).
 * Each output element is computed by one task in a fixed order, so results do not depend on
 * the thread count. */
#include "winograd.h"
#include "../compile/prologue.h"

#include <libxsmm.h>
#include <limits.h>
#include <stdlib.h>
#include <string.h>

#ifdef _OPENMP
#include <omp.h>
#endif

/* V and M of a band: at most this, so that both stay in L2 (512 KB on the cores we run on,
 * 1 MB on some); with 32 and 64 channels an image of 14x14 (49 tiles) takes 294 KB. */
#define BAND_BYTES (384 * 1024)
/* Fewer images than this many tasks: thinner bands, so that two threads have work. */
#define MIN_TASKS 4

/* Column-major C (m x n, ldc = m) = A (m x k, lda = m) B (k x n, ldb = k); with `tb`
 * (the weight gradient's) C += A B^T, B stored n x k (ldb = n). */
typedef struct {
    int64_t m, n, k;
    bool tb;
    libxsmm_smmfunction jit; /* NULL: the loop */
} gemm;

typedef struct {
    tg_winograd_shape s;
    int64_t tiles_w;            /* tiles per row of tiles: ceil(ow / 2) */
    int64_t band, bands;        /* rows of tiles per task; tasks per image */
    int64_t tiles;              /* a full band's tiles, the stride of V's and M's planes */
    int64_t rows, wq;           /* the staged band: 2 band + 2 rows of 2 tiles_w + 2 positions */
    gemm full, last;            /* a full band's products, and the last band's */
    libxsmm_xtransfunction stage_row; /* an input row [c][w] to [w][c]; NULL: the loop */
    /* the forward: a full band's output rows [pos][oc] into y's planes, the last band's (when
     * shorter: oh odd, or fewer tiles), one row (ow odd: rows not contiguous); the weight
     * gradient: a row of the gradient [oc][ow] to [ow][oc] */
    libxsmm_xtransfunction out_band, out_last, out_row, grad_row;
    int64_t groups, chunks;     /* the weight gradient's groups of chunks of WGRAD_CHUNK images */
    size_t group_bytes;         /* a group's double sums [xi][c][oc], WGRAD_GROUPS of them */
    /* in a thread's scratch: U (the forward) or the chunk's f32 sums (the weight gradient, after
     * the groups' sums); the staged band; V; M or the gradient's transform; the output band or
     * the staged gradient */
    size_t at_u, at_staged, at_v, at_m, at_out;
} wino;

/* The weight gradient sums a chunk of this many images in f32 (as conv.c's direct kernel
 * does, by the GEMMs' own accumulation), then adds the chunk into its group's double sums;
 * the WGRAD_GROUPS groups of consecutive chunks, fixed by the batch alone, are what threads
 * share, and are added in order at the end. */
#define WGRAD_CHUNK 8
#define WGRAD_GROUPS 2

static int64_t min64(int64_t a, int64_t b) { return a < b ? a : b; }

static size_t round64(size_t bytes) { return (bytes + 63) / 64 * 64; }

static void gemm_init(gemm *g, int64_t m, int64_t n, int64_t k, bool tb)
{
    *g = (gemm){m, n, k, tb, NULL};
    if (m > INT_MAX || n > INT_MAX || k > INT_MAX)
        return;
    libxsmm_blasint lm = (libxsmm_blasint)m, ln = (libxsmm_blasint)n, lk = (libxsmm_blasint)k;
    float alpha = 1, beta = tb;
    int flags = tb ? LIBXSMM_GEMM_FLAG_TRANS_B : LIBXSMM_GEMM_FLAG_NONE;
    g->jit = libxsmm_smmdispatch(lm, ln, lk, &lm, tb ? &ln : &lk, &lm, &alpha, &beta, &flags,
                                 NULL);
}

static void gemm_run(const gemm *g, const float *a, const float *b, float *c)
{
    if (g->jit) {
        g->jit(a, b, c);
        return;
    }
    for (int64_t j = 0; j < g->n; j++) {
        float *cj = c + j * g->m;
        if (!g->tb)
            memset(cj, 0, (size_t)g->m * sizeof *cj);
        for (int64_t p = 0; p < g->k; p++) {
            float bjp = g->tb ? b[p * g->n + j] : b[j * g->k + p];
            for (int64_t r = 0; r < g->m; r++)
                cj[r] += a[p * g->m + r] * bjp;
        }
    }
}

/* libxsmm's transpose of n rows of m floats, given ldi at the call, into m rows of n, ldo
 * apart; NULL where it has none. */
static libxsmm_xtransfunction transpose_kernel(int64_t m, int64_t n, int64_t ldo)
{
    if (m > UINT_MAX || n > UINT_MAX || ldo > UINT_MAX)
        return NULL;
    libxsmm_descriptor_blob blob;
    const libxsmm_trans_descriptor *desc = libxsmm_trans_descriptor_init(
        &blob, sizeof(float), (unsigned int)m, (unsigned int)n, (unsigned int)ldo);
    return desc ? libxsmm_dispatch_trans(desc) : NULL;
}

/* dst[i ldo + j] = src[j ldi + i] for i < m, j < n: by `jit` (made for m, n, ldo) or a loop. */
static void transpose(libxsmm_xtransfunction jit, const float *src, int64_t ldi, float *dst,
                      int64_t ldo, int64_t m, int64_t n)
{
    if (jit) {
        unsigned int i = (unsigned int)ldi, o = (unsigned int)ldo;
        jit(src, &i, dst, &o);
        return;
    }
    for (int64_t j = 0; j < n; j++)
        for (int64_t i = 0; i < m; i++)
            dst[i * ldo + j] = src[j * ldi + i];
}

/* ---- the transforms -------------------------------------------------------------------- */
/* U[xi][c][oc] = (G g G^T)[xi] for every kernel g, with G = [1 0 0; 1/2 1/2 1/2; 1/2 -1/2
 * 1/2; 0 0 1]. */
static void transform_weights(const wino *p, const float *w, float *restrict u)
{
    int64_t c_in = p->s.c, oc_n = p->s.oc;
    for (int64_t oc = 0; oc < oc_n; oc++)
        for (int64_t c = 0; c < c_in; c++) {
            float g[3][3], t[4][3];
            for (int k = 0; k < 9; k++)
                g[k / 3][k % 3] = p->s.flipped ? w[(c * oc_n + oc) * 9 + 8 - k]
                                               : w[(oc * c_in + c) * 9 + k];
            for (int j = 0; j < 3; j++) { /* G g: along the kernel's rows */
                t[0][j] = g[0][j];
                t[1][j] = 0.5f * (g[0][j] + g[1][j] + g[2][j]);
                t[2][j] = 0.5f * (g[0][j] - g[1][j] + g[2][j]);
                t[3][j] = g[2][j];
            }
            for (int i = 0; i < 4; i++) { /* (G g) G^T: along its columns */
                float row[4] = {t[i][0], 0.5f * (t[i][0] + t[i][1] + t[i][2]),
                                0.5f * (t[i][0] - t[i][1] + t[i][2]), t[i][2]};
                for (int j = 0; j < 4; j++)
                    u[((4 * i + j) * c_in + c) * oc_n + oc] = row[j];
            }
        }
}

/* V[xi][tile][c] = (B^T d B)[xi] for the band's tiles (tile_rows rows of them), with B^T =
 * [1 0 -1 0; 0 1 1 0; 0 -1 1 0; 0 1 0 -1]; d is the tile's 4x4 patch of the staged band. */
static void transform_input(const wino *p, const float *restrict staged, int64_t tile_rows,
                            float *restrict v)
{
    int64_t c_n = p->s.c, row = p->wq * c_n, plane = p->tiles * c_n;
    for (int64_t ty = 0; ty < tile_rows; ty++)
        for (int64_t tx = 0; tx < p->tiles_w; tx++) {
            const float *d = staged + 2 * ty * row + 2 * tx * c_n;
            float *out = v + (ty * p->tiles_w + tx) * c_n;
#pragma omp simd
            for (int64_t c = 0; c < c_n; c++) {
                float t[4][4];
                for (int j = 0; j < 4; j++) { /* B^T d: along the patch's rows */
                    float d0 = d[j * c_n + c], d1 = d[row + j * c_n + c];
                    float d2 = d[2 * row + j * c_n + c], d3 = d[3 * row + j * c_n + c];
                    t[0][j] = d0 - d2;
                    t[1][j] = d1 + d2;
                    t[2][j] = d2 - d1;
                    t[3][j] = d1 - d3;
                }
                for (int i = 0; i < 4; i++) { /* (B^T d) B: along its columns */
                    out[(4 * i + 0) * plane + c] = t[i][0] - t[i][2];
                    out[(4 * i + 1) * plane + c] = t[i][1] + t[i][2];
                    out[(4 * i + 2) * plane + c] = t[i][2] - t[i][1];
                    out[(4 * i + 3) * plane + c] = t[i][1] - t[i][3];
                }
            }
        }
}

/* out[2 ty + i][2 tx + j][oc] = (A^T M A)[i][j] for the band's tiles, with A^T = [1 1 1 0;
 * 0 1 -1 -1]; out has rows of 2 tiles_w positions (the odd last column, if any, unused). */
static void transform_output(const wino *p, const float *restrict m, int64_t tile_rows,
                             float *restrict out)
{
    int64_t oc_n = p->s.oc, plane = p->tiles * oc_n, row = 2 * p->tiles_w * oc_n;
    for (int64_t ty = 0; ty < tile_rows; ty++)
        for (int64_t tx = 0; tx < p->tiles_w; tx++) {
            const float *mt = m + (ty * p->tiles_w + tx) * oc_n;
            float *o = out + 2 * ty * row + 2 * tx * oc_n;
#pragma omp simd
            for (int64_t oc = 0; oc < oc_n; oc++) {
                float s[2][4];
                for (int j = 0; j < 4; j++) { /* A^T M: along the rows */
                    float m0 = mt[j * plane + oc], m1 = mt[(4 + j) * plane + oc];
                    float m2 = mt[(8 + j) * plane + oc], m3 = mt[(12 + j) * plane + oc];
                    s[0][j] = m0 + m1 + m2;
                    s[1][j] = m1 - m2 - m3;
                }
                for (int i = 0; i < 2; i++) { /* (A^T M) A: along the columns */
                    o[i * row + oc] = s[i][0] + s[i][1] + s[i][2];
                    o[i * row + oc_n + oc] = s[i][1] - s[i][2] - s[i][3];
                }
            }
        }
}

/* ---- a task ----------------------------------------------------------------------------- */
/* The padded input rows of band `band` of image `img`, channels last, into staged: rows
 * outside the image are zeros (written here, as they depend on the band); the padding
 * columns were cleared once per run and nothing writes them. */
static void stage_band(const wino *p, const float *img, int64_t band, float *staged)
{
    const tg_winograd_shape *s = &p->s;
    int64_t row = p->wq * s->c, first = 2 * band * p->band - s->ph; /* an input row */
    for (int64_t r = 0; r < p->rows; r++) {
        int64_t y = first + r;
        float *to = staged + r * row;
        if (y < 0 || y >= s->h)
            memset(to, 0, (size_t)row * sizeof *to);
        else
            transpose(p->stage_row, img + y * s->w, s->h * s->w, to + s->pw * s->c, s->c, s->w,
                      s->c);
    }
}

static int64_t tile_rows_of(const wino *p, int64_t band)
{
    return min64(p->band, (p->s.oh + 1) / 2 - band * p->band);
}

static void run_task(const wino *p, const float *x, const float *u, float *y, char *mine,
                     int64_t img, int64_t band)
{
    const tg_winograd_shape *s = &p->s;
    float *staged = (float *)(mine + p->at_staged), *v = (float *)(mine + p->at_v);
    float *m = (float *)(mine + p->at_m), *out = (float *)(mine + p->at_out);
    int64_t ty0 = band * p->band, tile_rows = tile_rows_of(p, band);
    const gemm *g = tile_rows == p->band ? &p->full : &p->last;
    stage_band(p, x + img * s->c * s->h * s->w, band, staged);
    transform_input(p, staged, tile_rows, v);
    for (int xi = 0; xi < 16; xi++)
        gemm_run(g, u + xi * s->c * s->oc, v + xi * p->tiles * s->c, m + xi * p->tiles * s->oc);
    transform_output(p, m, tile_rows, out);
    int64_t plane = s->oh * s->ow, r0 = 2 * ty0, rows = min64(2 * tile_rows, s->oh - r0);
    float *to = y + img * s->oc * plane + r0 * s->ow;
    if (s->ow % 2 == 0) /* the band's rows are contiguous in out */
        transpose(rows == 2 * p->band ? p->out_band : p->out_last, out, s->oc, to, plane,
                  s->oc, rows * s->ow);
    else
        for (int64_t r = 0; r < rows; r++)
            transpose(p->out_row, out + r * 2 * p->tiles_w * s->oc, s->oc, to + r * s->ow, plane,
                      s->oc, s->ow);
}

void tg_winograd_run(const tg_ir_node *n, void *y, const void *const *in, void *scratch)
{
    const wino *p = n->payload;
    int64_t tasks = p->s.batch * p->bands;
    int threads = tg_num_threads();
    if (p->s.threads_max < threads)
        threads = (int)p->s.threads_max;
    if (tasks == 0)
        return;
#pragma omp parallel num_threads(threads)
    {
        int me = 0;
#ifdef _OPENMP
        me = omp_get_thread_num();
#endif
        char *mine = (char *)scratch + (size_t)me * n->scratch_bytes;
        float *u = (float *)(mine + p->at_u);
        transform_weights(p, in[1], u);
        memset(mine + p->at_staged, 0, p->at_v - p->at_staged); /* the padding columns */
#pragma omp for schedule(static)
        for (int64_t t = 0; t < tasks; t++)
            run_task(p, in[0], u, y, mine, t / p->bands, t % p->bands);
    }
}

/* ---- the weight gradient ------------------------------------------------------------------ */
/* With dY the gradient at the output and Y = A^T M A, M = U . V (pointwise):
 *
 *   dM = A dY A^T        per (tile, output channel): the 2x2 gradient becomes 4x4
 *   dU[xi] = sum over tiles of dM[xi] V[xi]^T: a GEMM over the tiles, summed over images
 *   dg = G^T dU G        per (output channel, input channel): 3x3 from 4x4
 *
 * V is the forward's input transform, recomputed; dY is staged channels last like x. */

/* dY's output rows of band `band` of one image, [row][x][oc], 2 band rows of 2 tiles_w
 * positions: rows past the output are zeros (here), as is the odd last column when ow is odd
 * (cleared once per run), so the tiles that hang over the output add nothing. */
static void stage_grad(const wino *p, const float *grad, int64_t band, float *staged)
{
    const tg_winograd_shape *s = &p->s;
    int64_t row = 2 * p->tiles_w * s->oc;
    for (int64_t r = 0; r < 2 * p->band; r++) {
        int64_t y = 2 * band * p->band + r;
        float *to = staged + r * row;
        if (y >= s->oh)
            memset(to, 0, (size_t)row * sizeof *to);
        else
            transpose(p->grad_row, grad + y * s->ow, s->oh * s->ow, to, s->oc, s->ow, s->oc);
    }
}

/* dM[xi][tile][oc] = (A dY A^T)[xi], with A = [1 0; 1 1; 1 -1; 0 -1]. */
static void transform_grad(const wino *p, const float *restrict staged, int64_t tile_rows,
                           float *restrict dm)
{
    int64_t oc_n = p->s.oc, row = 2 * p->tiles_w * oc_n, plane = p->tiles * oc_n;
    for (int64_t ty = 0; ty < tile_rows; ty++)
        for (int64_t tx = 0; tx < p->tiles_w; tx++) {
            const float *d = staged + 2 * ty * row + 2 * tx * oc_n;
            float *out = dm + (ty * p->tiles_w + tx) * oc_n;
#pragma omp simd
            for (int64_t oc = 0; oc < oc_n; oc++) {
                float g00 = d[oc], g01 = d[oc_n + oc], g10 = d[row + oc];
                float g11 = d[row + oc_n + oc];
                float a[4][2] = {{g00, g01}, /* A dY: along the rows */
                                 {g00 + g10, g01 + g11},
                                 {g00 - g10, g01 - g11},
                                 {-g10, -g11}};
                for (int i = 0; i < 4; i++) { /* (A dY) A^T: along the columns */
                    out[(4 * i + 0) * plane + oc] = a[i][0];
                    out[(4 * i + 1) * plane + oc] = a[i][0] + a[i][1];
                    out[(4 * i + 2) * plane + oc] = a[i][0] - a[i][1];
                    out[(4 * i + 3) * plane + oc] = -a[i][1];
                }
            }
        }
}

/* sums[xi][c][oc] += dM[xi] V[xi]^T over one band of one image's tiles. */
static void wgrad_band(const wino *p, const float *x, const float *grad, char *mine, int64_t band)
{
    const tg_winograd_shape *s = &p->s;
    float *sums = (float *)(mine + p->at_u), *staged = (float *)(mine + p->at_staged);
    float *v = (float *)(mine + p->at_v), *dm = (float *)(mine + p->at_m);
    float *staged_grad = (float *)(mine + p->at_out);
    int64_t tile_rows = tile_rows_of(p, band);
    const gemm *g = tile_rows == p->band ? &p->full : &p->last;
    stage_band(p, x, band, staged);
    transform_input(p, staged, tile_rows, v);
    stage_grad(p, grad, band, staged_grad);
    transform_grad(p, staged_grad, tile_rows, dm);
    for (int xi = 0; xi < 16; xi++)
        gemm_run(g, dm + xi * p->tiles * s->oc, v + xi * p->tiles * s->c, sums + xi * s->c * s->oc);
}

/* A group's chunks: each chunk's images summed in f32, then added into acc in double. */
static void wgrad_group(const tg_ir_node *n, const wino *p, const float *grad, const float *x,
                        char *mine, int64_t grp, double *acc)
{
    const tg_winograd_shape *s = &p->s;
    int64_t sums = 16 * s->c * s->oc;
    const float *part = (const float *)(mine + p->at_u);
    memset(acc, 0, (size_t)sums * sizeof *acc);
    for (int64_t ch = grp * p->chunks / p->groups; ch < (grp + 1) * p->chunks / p->groups; ch++) {
        int64_t n0 = ch * WGRAD_CHUNK, count = min64(WGRAD_CHUNK, s->batch - n0);
        if (n->prologue) /* the gradient of these images, computed just now (prologue.h) */
            tg_prologue_run(n->prologue, n0, count);
        memset(mine + p->at_u, 0, (size_t)sums * sizeof *part);
        for (int64_t i = n0; i < n0 + count; i++)
            for (int64_t b = 0; b < p->bands; b++)
                wgrad_band(p, x + i * s->c * s->h * s->w, grad + i * s->oc * s->oh * s->ow, mine,
                           b);
        for (int64_t k = 0; k < sums; k++)
            acc[k] += part[k];
    }
}

/* dw[oc][c] = G^T dU G from the sums [xi][c][oc], with G^T = [1 1/2 1/2 0; 0 1/2 -1/2 0;
 * 0 1/2 1/2 1]. */
static void transform_sums(const wino *p, const double *acc, float *dw)
{
    int64_t c_n = p->s.c, oc_n = p->s.oc;
    for (int64_t oc = 0; oc < oc_n; oc++)
        for (int64_t c = 0; c < c_n; c++) {
            double t[3][4];
            for (int j = 0; j < 4; j++) { /* G^T dU: along the rows */
                double u0 = acc[((0 + j) * c_n + c) * oc_n + oc];
                double u1 = acc[((4 + j) * c_n + c) * oc_n + oc];
                double u2 = acc[((8 + j) * c_n + c) * oc_n + oc];
                double u3 = acc[((12 + j) * c_n + c) * oc_n + oc];
                t[0][j] = u0 + 0.5 * (u1 + u2);
                t[1][j] = 0.5 * (u1 - u2);
                t[2][j] = 0.5 * (u1 + u2) + u3;
            }
            float *to = dw + (oc * c_n + c) * 9;
            for (int i = 0; i < 3; i++) { /* (G^T dU) G: along the columns */
                to[3 * i + 0] = (float)(t[i][0] + 0.5 * (t[i][1] + t[i][2]));
                to[3 * i + 1] = (float)(0.5 * (t[i][1] - t[i][2]));
                to[3 * i + 2] = (float)(0.5 * (t[i][1] + t[i][2]) + t[i][3]);
            }
        }
}

void tg_winograd_wgrad_run(const tg_ir_node *n, void *dw, const void *const *in, void *scratch)
{
    const wino *p = n->payload;
    int64_t sums = 16 * p->s.c * p->s.oc;
    int threads = tg_num_threads();
    if (p->s.threads_max < threads && !n->prologue) /* a prologue's pass is work too */
        threads = (int)p->s.threads_max;
    double *acc[WGRAD_GROUPS]; /* in the first thread's scratch, whoever runs the group */
    for (int64_t grp = 0; grp < WGRAD_GROUPS; grp++)
        acc[grp] = (double *)((char *)scratch + (size_t)grp * p->group_bytes);
#pragma omp parallel num_threads(threads)
    {
        int me = 0;
#ifdef _OPENMP
        me = omp_get_thread_num();
#endif
        char *mine = (char *)scratch + (size_t)me * n->scratch_bytes;
        memset(mine + p->at_staged, 0, p->at_v - p->at_staged); /* the padding columns */
        memset(mine + p->at_out, 0, n->scratch_bytes - p->at_out); /* and the gradient's */
#pragma omp for schedule(static)
        for (int64_t grp = 0; grp < p->groups; grp++)
            wgrad_group(n, p, in[0], in[1], mine, grp, acc[grp]);
    }
    if (p->groups == 0)
        memset(acc[0], 0, (size_t)sums * sizeof *acc[0]);
    for (int64_t grp = 1; grp < p->groups; grp++)
        for (int64_t k = 0; k < sums; k++)
            acc[0][k] += acc[grp][k];
    transform_sums(p, acc[0], dw);
}

int tg_winograd_prepare(tg_ir_node *n, const tg_winograd_shape *s)
{
    wino *p = calloc(1, sizeof *p);
    if (!p)
        return tg_fail(TG_ERR_NOMEM, "conv: out of memory");
    p->s = *s;
    int64_t tiles_h = (s->oh + 1) / 2;
    p->tiles_w = (s->ow + 1) / 2;
    int64_t tile_bytes = 16 * (s->c + s->oc) * (int64_t)sizeof(float);
    int64_t fit = BAND_BYTES / (tile_bytes * p->tiles_w);
    int64_t bands = (tiles_h + (fit > 1 ? fit : 1) - 1) / (fit > 1 ? fit : 1);
    if (!s->wgrad && s->batch * bands < MIN_TASKS)
        bands = min64((MIN_TASKS + s->batch - 1) / s->batch, tiles_h);
    p->band = (tiles_h + bands - 1) / bands;
    p->bands = (tiles_h + p->band - 1) / p->band;
    p->tiles = p->band * p->tiles_w;
    p->rows = 2 * p->band + 2;
    p->wq = 2 * p->tiles_w + 2;
    int64_t last = tiles_h - (p->bands - 1) * p->band;
    int64_t plane = s->oh * s->ow;
    p->stage_row = transpose_kernel(s->w, s->c, s->c);
    if (s->wgrad) { /* M = OC, N = C, K = the band's tiles */
        gemm_init(&p->full, s->oc, s->c, p->tiles, true);
        gemm_init(&p->last, s->oc, s->c, last * p->tiles_w, true);
        p->grad_row = transpose_kernel(s->ow, s->oc, s->oc);
        p->chunks = (s->batch + WGRAD_CHUNK - 1) / WGRAD_CHUNK;
        p->groups = min64(WGRAD_GROUPS, p->chunks);
        p->group_bytes = round64((size_t)(16 * s->c * s->oc) * sizeof(double));
    } else { /* M = OC, N = the band's tiles, K = C */
        gemm_init(&p->full, s->oc, p->tiles, s->c, false);
        gemm_init(&p->last, s->oc, last * p->tiles_w, s->c, false);
        p->out_band = transpose_kernel(s->oc, 2 * p->band * s->ow, plane);
        p->out_last = transpose_kernel(s->oc, (s->oh - 2 * (p->bands - 1) * p->band) * s->ow,
                                       plane);
        p->out_row = transpose_kernel(s->oc, s->ow, plane);
    }
    size_t e = sizeof(float);
    p->at_u = WGRAD_GROUPS * p->group_bytes;
    p->at_staged = p->at_u + round64((size_t)(16 * s->c * s->oc) * e);
    p->at_v = p->at_staged + round64((size_t)(p->rows * p->wq * s->c) * e);
    p->at_m = p->at_v + round64((size_t)(16 * p->tiles * s->c) * e);
    p->at_out = p->at_m + round64((size_t)(16 * p->tiles * s->oc) * e);
    n->scratch_bytes = p->at_out + round64((size_t)(2 * p->band * 2 * p->tiles_w * s->oc) * e);
    n->payload = p;
    return TG_OK;
}
