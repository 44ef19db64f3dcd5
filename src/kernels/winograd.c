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

/* Column-major C (m x n) = A (m x k, lda = m) B (k x n, ldb = k). */
typedef struct {
    int64_t m, n, k;
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
    libxsmm_xtransfunction out_band;  /* a full band's output rows [pos][oc] into y's planes */
    libxsmm_xtransfunction out_last;  /* the last band's, when shorter (oh odd, or fewer tiles) */
    libxsmm_xtransfunction out_row;   /* one output row of it (ow odd: rows not contiguous) */
    size_t at_staged, at_v, at_m, at_out; /* in a thread's scratch, after U */
} wino;

static int64_t min64(int64_t a, int64_t b) { return a < b ? a : b; }

static size_t round64(size_t bytes) { return (bytes + 63) / 64 * 64; }

static void gemm_init(gemm *g, int64_t m, int64_t n, int64_t k)
{
    *g = (gemm){m, n, k, NULL};
    if (m > INT_MAX || n > INT_MAX || k > INT_MAX)
        return;
    libxsmm_blasint lm = (libxsmm_blasint)m, ln = (libxsmm_blasint)n, lk = (libxsmm_blasint)k;
    float alpha = 1, beta = 0;
    g->jit = libxsmm_smmdispatch(lm, ln, lk, &lm, &lk, &lm, &alpha, &beta, NULL, NULL);
}

static void gemm_run(const gemm *g, const float *a, const float *b, float *c)
{
    if (g->jit) {
        g->jit(a, b, c);
        return;
    }
    for (int64_t j = 0; j < g->n; j++) {
        float *cj = c + j * g->m;
        memset(cj, 0, (size_t)g->m * sizeof *cj);
        for (int64_t p = 0; p < g->k; p++)
            for (int64_t r = 0; r < g->m; r++)
                cj[r] += a[p * g->m + r] * b[j * g->k + p];
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

static void run_task(const wino *p, const float *x, const float *u, float *y, char *mine,
                     int64_t img, int64_t band)
{
    const tg_winograd_shape *s = &p->s;
    float *staged = (float *)(mine + p->at_staged), *v = (float *)(mine + p->at_v);
    float *m = (float *)(mine + p->at_m), *out = (float *)(mine + p->at_out);
    int64_t tiles_h = (s->oh + 1) / 2, ty0 = band * p->band;
    int64_t tile_rows = min64(p->band, tiles_h - ty0);
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
        transform_weights(p, in[1], (float *)mine);
        memset(mine + p->at_staged, 0, p->at_v - p->at_staged); /* the padding columns */
#pragma omp for schedule(static)
        for (int64_t t = 0; t < tasks; t++)
            run_task(p, in[0], (const float *)mine, y, mine, t / p->bands, t % p->bands);
    }
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
    if (s->batch * bands < MIN_TASKS)
        bands = min64((MIN_TASKS + s->batch - 1) / s->batch, tiles_h);
    p->band = (tiles_h + bands - 1) / bands;
    p->bands = (tiles_h + p->band - 1) / p->band;
    p->tiles = p->band * p->tiles_w;
    p->rows = 2 * p->band + 2;
    p->wq = 2 * p->tiles_w + 2;
    int64_t last = tiles_h - (p->bands - 1) * p->band;
    gemm_init(&p->full, s->oc, p->tiles, s->c);
    gemm_init(&p->last, s->oc, last * p->tiles_w, s->c);
    int64_t plane = s->oh * s->ow;
    p->stage_row = transpose_kernel(s->w, s->c, s->c);
    p->out_band = transpose_kernel(s->oc, 2 * p->band * s->ow, plane);
    p->out_last = transpose_kernel(s->oc, (s->oh - 2 * (p->bands - 1) * p->band) * s->ow, plane);
    p->out_row = transpose_kernel(s->oc, s->ow, plane);
    size_t e = sizeof(float);
    p->at_staged = round64((size_t)(16 * s->c * s->oc) * e);
    p->at_v = p->at_staged + round64((size_t)(p->rows * p->wq * s->c) * e);
    p->at_m = p->at_v + round64((size_t)(16 * p->tiles * s->c) * e);
    p->at_out = p->at_m + round64((size_t)(16 * p->tiles * s->oc) * e);
    n->scratch_bytes = p->at_out + round64((size_t)(2 * p->band * 2 * p->tiles_w * s->oc) * e);
    n->payload = p;
    return TG_OK;
}
