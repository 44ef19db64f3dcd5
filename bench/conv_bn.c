/* bench/conv_bn: the block conv 3x3 (padding 1, no bias) -> batch norm (training: batch
 * statistics) -> ReLU, forward and forward + backward (gradients of the input, the weights,
 * gamma and beta), four ways side by side in one run, alternating:
 *
 *   eager     the composed block (tg_conv2d, tg_batch_norm, tg_relu; tg_grad) op by op
 *   compiled  the same code traced (tg_tape_trace, tg_placeholder), tg_compile (all passes),
 *             tg_plan_run
 *   onednn    oneDNN 2.6's hand-fused primitives in the layouts it picks (onednn_block.c);
 *             "missing" when the build found no oneDNN
 *   roofline  the block's GEMM FLOPs at libxsmm's best measured rate plus the bytes batch norm
 *             must move at the measured triad bandwidth (roofline.c; docs/speed.md)
 *
 * and the convolution alone (forward, backward data, backward weights) against libxsmm's
 * GEMM on the same shapes. Shapes: A = N 128, 1 -> 32 at 28x28 (no input gradient) and
 * B = N 128, 32 -> 64 at 14x14, the reference MNIST model's two blocks.
 *
 *   conv_bn [--shape A|B|all] [--batch N] [--cin C --cout C --hw S] [--threads 1,2]
 *           [--repeats N] [--csv FILE|-] [--quick] [--only eager|compiled|onednn]
 *
 * --quick (the meson test `conv_bn_quick`): a small batch, two repeats, and a check that
 * every variant's output and gradients agree with an f64 evaluation of the same block;
 * exits 1 when one does not (77 is never used: without oneDNN the check covers eager and
 * compiled). Timings are medians over the repeats. The last lines are key=value summaries,
 * one per shape and thread count. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#ifdef _OPENMP
#include <omp.h>
#endif

#include "onednn_block.h"
#include "roofline.h"
#include "tapegrad_nn.h"
#include "timing.h"

#define EPS 1e-5
#define MAX_THREADS 16
#define MAX_REPEATS 1000
/* Gradients and outputs are compared with the f64 evaluation as max|v - ref| / max|ref| per
 * tensor; see check_tolerance in docs/speed.md and the comment at check_results. */
#define CHECK_TOLERANCE 1e-4
/* dy is zeroed where the f64 pre-activation is this close to ReLU's kink, where f32 variants
 * may legitimately take different sides (see make_data). */
#define KINK_MARGIN 1e-3

/* ---- small helpers -------------------------------------------------------------------------- */
/* CPU time of the whole process: on a busy machine, time spent waiting for a core is not in it,
 * so at 1 thread it measures the work itself (at more threads it adds spinning threads up). */
static double cpu_now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

static double median(const double *v, int n)
{
    if (n < 1)
        return NAN;
    double *s = malloc((size_t)n * sizeof *s);
    if (!s)
        return NAN;
    memcpy(s, v, (size_t)n * sizeof *s);
    qsort(s, (size_t)n, sizeof *s, bench_compare);
    double m = n % 2 ? s[n / 2] : 0.5 * (s[n / 2 - 1] + s[n / 2]);
    free(s);
    return m;
}

static void set_threads(int t)
{
    tg_set_num_threads(t);
#ifdef _OPENMP
    omp_set_num_threads(t); /* oneDNN's (and the roofline's) OpenMP threads */
#endif
}

/* ---- shapes and data -------------------------------------------------------------------------- */
typedef struct {
    char name[16];
    int n, c, oc, h, w;
    bool need_dx; /* shape A's input is the image: no gradient wanted */
} shape;

typedef struct {
    float *x, *w, *gamma, *beta, *dy;
} block_data;

/* What a variant computes: y, dx (need_dx), dw, dgamma, dbeta, in plain layouts. */
typedef struct {
    float *y, *dx, *dw, *dgamma, *dbeta;
} block_results;

static size_t x_count(const shape *s) { return (size_t)s->n * s->c * s->h * s->w; }
static size_t y_count(const shape *s) { return (size_t)s->n * s->oc * s->h * s->w; }
static size_t w_count(const shape *s) { return (size_t)s->oc * s->c * 9; }

/* GEMM FLOPs of the convolution, one direction (forward, backward data or backward weights). */
static double conv_flops(const shape *s)
{
    return 2.0 * s->n * s->oc * s->c * 9.0 * s->h * s->w;
}

static int alloc_results(block_results *r, const shape *s)
{
    r->y = malloc(y_count(s) * sizeof(float));
    r->dx = malloc(x_count(s) * sizeof(float));
    r->dw = malloc(w_count(s) * sizeof(float));
    r->dgamma = malloc((size_t)s->oc * sizeof(float));
    r->dbeta = malloc((size_t)s->oc * sizeof(float));
    return r->y && r->dx && r->dw && r->dgamma && r->dbeta ? 0 : -1;
}

static void free_results(block_results *r)
{
    free(r->y), free(r->dx), free(r->dw), free(r->dgamma), free(r->dbeta);
    memset(r, 0, sizeof *r);
}

/* Random inputs from a fixed seed: x ~ N(0, 1), weights as PyTorch initializes them, gamma in
 * [0.5, 1.5) and beta in [-0.5, 0.5) (so that neither is trivially 1 or 0), dy ~ N(0, 1). */
static int make_data(block_data *d, const shape *s)
{
    tg_rng rng;
    tg_rng_seed(&rng, 8);
    d->x = malloc(x_count(s) * sizeof(float));
    d->w = malloc(w_count(s) * sizeof(float));
    d->gamma = malloc((size_t)s->oc * sizeof(float));
    d->beta = malloc((size_t)s->oc * sizeof(float));
    d->dy = malloc(y_count(s) * sizeof(float));
    if (!d->x || !d->w || !d->gamma || !d->beta || !d->dy)
        return -1;
    double bound = 1.0 / sqrt(9.0 * s->c);
    for (size_t i = 0; i < x_count(s); i++)
        d->x[i] = (float)tg_rng_normal(&rng);
    for (size_t i = 0; i < w_count(s); i++)
        d->w[i] = (float)(bound * (2 * tg_rng_uniform(&rng) - 1));
    for (int i = 0; i < s->oc; i++) {
        d->gamma[i] = (float)(0.5 + tg_rng_uniform(&rng));
        d->beta[i] = (float)(tg_rng_uniform(&rng) - 0.5);
    }
    for (size_t i = 0; i < y_count(s); i++)
        d->dy[i] = (float)tg_rng_normal(&rng);
    return 0;
}

static void free_data(block_data *d)
{
    free(d->x), free(d->w), free(d->gamma), free(d->beta), free(d->dy);
}

/* ---- the composed block ------------------------------------------------------------------------ */
static tg_tensor *block_forward(tg_tensor *x, tg_tensor *w, tg_tensor *gamma, tg_tensor *beta,
                                tg_tensor **pre_activation)
{
    tg_tensor *z = tg_batch_norm(tg_conv2d(x, w, NULL, 1, 1), gamma, beta, NULL, NULL, true, 0.9,
                                 EPS);
    if (pre_activation)
        *pre_activation = z;
    return tg_relu(z);
}

/* The eager variant: parameters and inputs are leaves made once; every run builds the block
 * (and its gradient) op by op, then rewinds the tape. */
typedef struct {
    const shape *s;
    tg_tape *tape;
    tg_tensor *x, *w, *gamma, *beta, *dy;
    tg_mark mark;
} eager_block;

static int eager_init(eager_block *e, const shape *s, const block_data *d)
{
    *e = (eager_block){.s = s, .tape = tg_tape_new()};
    if (!e->tape)
        return -1;
    e->x = tg_from_data(e->tape, TG_F32, 4, (int64_t[]){s->n, s->c, s->h, s->w}, d->x);
    e->w = tg_from_data(e->tape, TG_F32, 4, (int64_t[]){s->oc, s->c, 3, 3}, d->w);
    e->gamma = tg_from_data(e->tape, TG_F32, 1, (int64_t[]){s->oc}, d->gamma);
    e->beta = tg_from_data(e->tape, TG_F32, 1, (int64_t[]){s->oc}, d->beta);
    e->dy = tg_from_data(e->tape, TG_F32, 4, (int64_t[]){s->n, s->oc, s->h, s->w}, d->dy);
    e->mark = tg_tape_mark(e->tape);
    return e->x && e->w && e->gamma && e->beta && e->dy ? 0 : -1;
}

/* One run; with results, copies them out (outside the caller's timing). */
static int eager_run(eager_block *e, bool backward, block_results *out)
{
    tg_tensor *y = block_forward(e->x, e->w, e->gamma, e->beta, NULL);
    tg_tensor *xs[4] = {e->w, e->gamma, e->beta, e->x}, *grads[4] = {0};
    int n = e->s->need_dx ? 4 : 3;
    int status = y ? 0 : -1;
    if (!status && backward)
        status = tg_grad(y, n, xs, e->dy, grads);
    if (!status && out) {
        const shape *s = e->s;
        memcpy(out->y, tg_data(y), y_count(s) * sizeof(float));
        if (backward) {
            memcpy(out->dw, tg_data(grads[0]), w_count(s) * sizeof(float));
            memcpy(out->dgamma, tg_data(grads[1]), (size_t)s->oc * sizeof(float));
            memcpy(out->dbeta, tg_data(grads[2]), (size_t)s->oc * sizeof(float));
            if (s->need_dx)
                memcpy(out->dx, tg_data(grads[3]), x_count(s) * sizeof(float));
        }
    }
    tg_tape_rewind(e->tape, e->mark);
    return status;
}

/* The compiled variant: the same block traced with x and dy as placeholders, the parameters
 * read by pointer. Plans: 0 forward, 1 forward + backward, and the convolution alone:
 * 2 forward, 3 backward data, 4 backward weights. */
enum { PLAN_FWD, PLAN_FWDBWD, PLAN_CONV_FWD, PLAN_CONV_BWD_D, PLAN_CONV_BWD_W, N_PLANS };

typedef struct {
    const shape *s;
    tg_plan *plan[N_PLANS];
} compiled_block;

static tg_plan *trace_and_compile(eager_block *e, int which)
{
    const shape *s = e->s;
    tg_tape *tape = e->tape;
    tg_tape_trace(tape, true);
    tg_tensor *x = tg_placeholder(tape, "x", TG_F32, 4, (int64_t[]){s->n, s->c, s->h, s->w});
    tg_tensor *dy = tg_placeholder(tape, "dy", TG_F32, 4, (int64_t[]){s->n, s->oc, s->h, s->w});
    tg_tensor *outputs[5] = {0}, *xs[4] = {e->w, e->gamma, e->beta, x};
    int n_out = 0;
    switch (which) {
    case PLAN_FWD: outputs[n_out++] = block_forward(x, e->w, e->gamma, e->beta, NULL); break;
    case PLAN_FWDBWD: {
        tg_tensor *y = block_forward(x, e->w, e->gamma, e->beta, NULL), *g[4] = {0};
        int n = s->need_dx ? 4 : 3;
        if (y && tg_grad(y, n, xs, dy, g) == 0) {
            outputs[n_out++] = y;
            for (int i = 0; i < n; i++)
                outputs[n_out++] = g[i];
        } else {
            n_out = 1; /* outputs[0] NULL: compile fails and says why */
        }
        break;
    }
    case PLAN_CONV_FWD: outputs[n_out++] = tg_conv2d(x, e->w, NULL, 1, 1); break;
    case PLAN_CONV_BWD_D:
    case PLAN_CONV_BWD_W: {
        tg_tensor *z = tg_conv2d(x, e->w, NULL, 1, 1), *g = NULL;
        tg_tensor *wrt = which == PLAN_CONV_BWD_D ? x : e->w;
        if (z)
            tg_grad(z, 1, &wrt, dy, &g);
        outputs[n_out++] = g;
        break;
    }
    }
    tg_tape_trace(tape, false);
    tg_plan *plan = outputs[0] ? tg_compile(tape, n_out, outputs, NULL) : NULL;
    tg_tape_rewind(tape, e->mark);
    return plan;
}

static int compiled_init(compiled_block *c, eager_block *e, const block_data *d)
{
    *c = (compiled_block){.s = e->s};
    for (int i = 0; i < N_PLANS; i++) {
        if (i == PLAN_CONV_BWD_D && !e->s->need_dx)
            continue;
        c->plan[i] = trace_and_compile(e, i);
        if (!c->plan[i] || tg_plan_set_input(c->plan[i], "x", d->x) != 0)
            return -1;
        /* A plan that does not read dy has no such input: that refusal is fine. */
        tg_plan_set_input(c->plan[i], "dy", d->dy);
        tg_clear_error();
    }
    return 0;
}

static void compiled_free(compiled_block *c)
{
    for (int i = 0; i < N_PLANS; i++)
        tg_plan_free(c->plan[i]);
}

static int compiled_run(compiled_block *c, int which, block_results *out)
{
    if (!c->plan[which] || tg_plan_run(c->plan[which]) != 0)
        return -1;
    if (out) {
        const shape *s = c->s;
        tg_plan *p = c->plan[which];
        memcpy(out->y, tg_plan_output(p, 0), y_count(s) * sizeof(float));
        if (which == PLAN_FWDBWD) {
            memcpy(out->dw, tg_plan_output(p, 1), w_count(s) * sizeof(float));
            memcpy(out->dgamma, tg_plan_output(p, 2), (size_t)s->oc * sizeof(float));
            memcpy(out->dbeta, tg_plan_output(p, 3), (size_t)s->oc * sizeof(float));
            if (s->need_dx)
                memcpy(out->dx, tg_plan_output(p, 4), x_count(s) * sizeof(float));
        }
    }
    return 0;
}

/* ---- the numerical check ------------------------------------------------------------------------ */
/* The block evaluated eagerly in f64 from the same f32 data: the reference every f32 variant is
 * held to. dy is zeroed where the pre-activation lies within KINK_MARGIN of 0 (about 0.08%
 * of the elements): there a variant's f32 rounding may put the value on the other side of
 * ReLU's kink, which changes the gradient by a whole dy at that element; with dy 0 there both
 * sides are right and the comparison measures rounding only. */
static int reference(const shape *s, block_data *d, block_results *ref)
{
    tg_tape *tape = tg_tape_new();
    double *buf = malloc((x_count(s) > y_count(s) ? x_count(s) : y_count(s)) * sizeof *buf);
    if (!tape || !buf)
        return -1;
    int64_t xs_[4] = {s->n, s->c, s->h, s->w}, ws_[4] = {s->oc, s->c, 3, 3}, cs_[1] = {s->oc};
    int64_t ys_[4] = {s->n, s->oc, s->h, s->w};
tg_tensor *x, *w, *g, *b, *z, *y, *dy;
    for (size_t i = 0; i < x_count(s); i++) buf[i] = d->x[i];
    x = tg_from_data(tape, TG_F64, 4, xs_, buf);
    for (size_t i = 0; i < w_count(s); i++) buf[i] = d->w[i];
    w = tg_from_data(tape, TG_F64, 4, ws_, buf);
    for (int i = 0; i < s->oc; i++) buf[i] = d->gamma[i];
    g = tg_from_data(tape, TG_F64, 1, cs_, buf);
    for (int i = 0; i < s->oc; i++) buf[i] = d->beta[i];
    b = tg_from_data(tape, TG_F64, 1, cs_, buf);
    y = block_forward(x, w, g, b, &z);
    if (!y) {
        fprintf(stderr, "conv_bn: f64 reference: %s\n", tg_last_error());
        return -1;
    }
    const double *zv = tg_data(z);
    size_t zeroed = 0;
    for (size_t i = 0; i < y_count(s); i++) {
        if (fabs(zv[i]) < KINK_MARGIN) {
            d->dy[i] = 0;
            zeroed++;
        }
        buf[i] = d->dy[i];
    }
    dy = tg_from_data(tape, TG_F64, 4, ys_, buf);
    tg_tensor *xs[4] = {w, g, b, x}, *grads[4] = {0};
    if (tg_grad(y, s->need_dx ? 4 : 3, xs, dy, grads) != 0) {
        fprintf(stderr, "conv_bn: f64 reference gradient: %s\n", tg_last_error());
        return -1;
    }
    const double *v = tg_data(y);
    for (size_t i = 0; i < y_count(s); i++) ref->y[i] = (float)v[i];
    v = tg_data(grads[0]);
    for (size_t i = 0; i < w_count(s); i++) ref->dw[i] = (float)v[i];
    v = tg_data(grads[1]);
    for (int i = 0; i < s->oc; i++) ref->dgamma[i] = (float)v[i];
    v = tg_data(grads[2]);
    for (int i = 0; i < s->oc; i++) ref->dbeta[i] = (float)v[i];
    if (s->need_dx) {
        v = tg_data(grads[3]);
        for (size_t i = 0; i < x_count(s); i++) ref->dx[i] = (float)v[i];
    }
    printf("check %s: reference in f64; dy zeroed at %zu of %zu elements within %g of the "
           "ReLU kink\n", s->name, zeroed, y_count(s), KINK_MARGIN);
    free(buf);
    tg_tape_free(tape);
    return 0;
}

static double rel_error(const float *v, const float *ref, size_t n)
{
    double diff = 0, scale = 0;
    for (size_t i = 0; i < n; i++) {
        double e = fabs((double)v[i] - (double)ref[i]);
        if (!(e <= diff)) /* NaN counts as the worst */
            diff = isnan(e) ? INFINITY : e;
        if (fabs(ref[i]) > scale)
            scale = fabs(ref[i]);
    }
    return scale > 0 ? diff / scale : diff;
}

/* Each tensor's max |v - ref| / max |ref| must be at most CHECK_TOLERANCE = 1e-4. Why that
 * bound: f32 rounds to u = 6e-8; the longest sums are batch norm's statistics and the weight
 * gradient, over N*H*W terms (3136 for shape A in quick mode, 784 for B; 25088 at batch 128)
 * and the convolution's 9*C = 288; blocked or pairwise summation keeps their error near sqrt(terms) * u ~
 * 1e-5 of the largest term, and the worst case (terms * u) is 2e-4 only for naive sums, with
 * batch norm's backward (dy - mean(dy) - xhat mean(dy xhat)) adding a cancellation of a few
 * units. Measured errors are printed (~1e-6 to 1e-5); an error in a rule (eps in the wrong
 * place, biased/unbiased variance, a missing term) shows up at 1e-3 and above. */
static int check_results(const char *variant, const shape *s, int threads,
                         const block_results *v, const block_results *ref)
{
    double e[5] = {rel_error(v->y, ref->y, y_count(s)),
                   s->need_dx ? rel_error(v->dx, ref->dx, x_count(s)) : 0,
                   rel_error(v->dw, ref->dw, w_count(s)),
                   rel_error(v->dgamma, ref->dgamma, (size_t)s->oc),
                   rel_error(v->dbeta, ref->dbeta, (size_t)s->oc)};
    double worst = 0;
    for (int i = 0; i < 5; i++)
        worst = e[i] > worst || isnan(e[i]) ? e[i] : worst;
    bool ok = worst <= CHECK_TOLERANCE;
    printf("check %s threads=%d %-9s y %.1e dx %s%.1e dw %.1e dgamma %.1e dbeta %.1e: %s\n",
           s->name, threads, variant, e[0], s->need_dx ? "" : "(none) ", e[1], e[2], e[3], e[4],
           ok ? "ok" : "FAILED");
    return ok ? 0 : -1;
}

/* ---- the roofline ---------------------------------------------------------------------------- */
typedef struct {
    double gemm_gflops; /* libxsmm's best, cache-resident, all threads */
    double triad_gbs;   /* memory bandwidth */
} machine;

/* The GEMMs of a convolution lowered to one product per image (row-major, P = H*W, K = 9C):
 * forward Y[OC, P] = W[OC, K] cols[K, P]; backward data dcols[K, P] = W^T[K, OC] dY[OC, P];
 * backward weights dW[OC, K] += dY[OC, P] cols^T[P, K]. */
static void conv_gemm_shapes(const shape *s, int mnk[3][4])
{
    int P = s->h * s->w, K = 9 * s->c;
    int shapes[3][4] = {{s->oc, P, K, 0}, {K, P, s->oc, 0}, {s->oc, K, P, 1}};
    memcpy(mnk, shapes, sizeof shapes);
}

static machine measure_machine(const shape *shapes, int n_shapes, int threads, bool quick)
{
    machine m = {0};
    double per_round = quick ? 5e7 : 1e9;
    int rounds = quick ? 2 : 5;
    /* Candidates: each shape's three GEMMs and two square sizes libxsmm handles well. */
    int square[2][4] = {{64, 64, 64, 0}, {96, 96, 96, 0}};
    for (int i = 0; i < 2; i++) {
        double r = xsmm_gemm_gflops(square[i][0], square[i][1], square[i][2], 0, threads,
                                    per_round, rounds);
        m.gemm_gflops = r > m.gemm_gflops ? r : m.gemm_gflops;
    }
    for (int i = 0; i < n_shapes; i++) {
        int mnk[3][4];
        conv_gemm_shapes(&shapes[i], mnk);
        for (int j = 0; j < 3; j++) {
            double r = xsmm_gemm_gflops(mnk[j][0], mnk[j][1], mnk[j][2], mnk[j][3], threads,
                                        per_round, rounds);
            m.gemm_gflops = r > m.gemm_gflops ? r : m.gemm_gflops;
        }
    }
    m.triad_gbs = triad_gbs(quick ? (size_t)1 << 21 : (size_t)1 << 24, threads, quick ? 2 : 5);
    return m;
}

/* Bytes batch norm (with the ReLU fused) must move, in units of the output size S = N*OC*H*W*4,
 * with the fewest passes over memory that unfused kernels can do:
 *   forward:  pass 1 reads z (sum and sum of squares together): 1 read; pass 2 reads z and
 *             writes y: 1 read + 1 write. In all 3 S.
 *   backward: pass 1 reads dy and z (the ReLU mask is recomputed from z and the statistics)
 *             for sum(dy') and sum(dy' xhat): 2 reads; pass 2 reads dy and z and writes dz:
 *             2 reads + 1 write. In all 5 S.
 * The convolutions' own reads and writes are taken to overlap their arithmetic. */
static double bn_bytes(const shape *s, bool backward)
{
    return (backward ? 8.0 : 3.0) * (double)y_count(s) * sizeof(float);
}

static double block_gemm_flops(const shape *s, bool backward)
{
    return conv_flops(s) * (backward ? (s->need_dx ? 3 : 2) : 1);
}

static double roofline_seconds(const shape *s, bool backward, const machine *m)
{
    return block_gemm_flops(s, backward) / (m->gemm_gflops * 1e9) +
           bn_bytes(s, backward) / (m->triad_gbs * 1e9);
}

/* ---- measurement --------------------------------------------------------------------------- */
enum { V_EAGER, V_COMPILED, V_ONEDNN, N_VARIANTS };
static const char *variant_names[N_VARIANTS + 1] = {"eager", "compiled", "onednn", "roofline"};

typedef struct {
    double fwd[N_VARIANTS + 1], fwdbwd[N_VARIANTS + 1]; /* median seconds; NAN: missing */
    double conv[3][3];     /* [fwd, bwd-d, bwd-w][compiled, onednn, libxsmm] */
    double cpu_fwd[N_VARIANTS], cpu_fwdbwd[N_VARIANTS]; /* median process CPU seconds */
} measured;

static int time_variant(int v, bool backward, eager_block *e, compiled_block *c, onednn_block *o,
                        double *seconds, double *cpu_seconds)
{
    double c0 = cpu_now(), t0 = bench_now();
    int status;
    if (v == V_EAGER)
        status = eager_run(e, backward, NULL);
    else if (v == V_COMPILED)
        status = compiled_run(c, backward ? PLAN_FWDBWD : PLAN_FWD, NULL);
    else
        status = backward ? onednn_block_forward_backward(o) : onednn_block_forward(o);
    *seconds = bench_now() - t0;
    *cpu_seconds = cpu_now() - c0;
    return status;
}

typedef struct {
    const char *csv;
    FILE *csv_file;
    bool quick;
    int repeats;
    int only; /* -1: every variant; else time only this one (for profilers) */
} run_opts;

static void print_table(const shape *s, int threads, const measured *m, const machine *mc,
                        FILE *csv)
{
    printf("\nshape %s: N %d, %d -> %d at %dx%d, conv 3x3 pad 1 -> batch norm (training) -> "
           "ReLU; %d thread(s)\n", s->name, s->n, s->c, s->oc, s->h, s->w, threads);
    printf("  roofline: libxsmm GEMM %.1f GFLOP/s (best cache-resident), triad %.1f GB/s\n",
           mc->gemm_gflops, mc->triad_gbs);
    printf("  %-9s %10s %9s %9s %9s | %10s %9s %9s %9s\n", "variant", "fwd ms", "GFLOP/s",
           "/onednn", "roofline", "fwd+bwd ms", "GFLOP/s", "/onednn", "roofline");
    for (int v = 0; v <= N_VARIANTS; v++) {
        double f = m->fwd[v], b = m->fwdbwd[v];
        if (isnan(f)) {
            printf("  %-9s %10s\n", variant_names[v],
                   v == V_ONEDNN && !onednn_available() ? "missing (no oneDNN in this build)"
                                                        : "not measured");
            continue;
        }
        printf("  %-9s %10.2f %9.1f %9.2f %9.2f | %10.2f %9.1f %9.2f %9.2f\n", variant_names[v],
               1e3 * f, block_gemm_flops(s, false) / f * 1e-9, f / m->fwd[V_ONEDNN],
               m->fwd[N_VARIANTS] / f, 1e3 * b, block_gemm_flops(s, true) / b * 1e-9,
               b / m->fwdbwd[V_ONEDNN], m->fwdbwd[N_VARIANTS] / b);
        if (csv)
            for (int pass = 0; pass < 2; pass++) {
                double t = pass ? b : f, ref = pass ? m->fwdbwd[V_ONEDNN] : m->fwd[V_ONEDNN];
                double roof = pass ? m->fwdbwd[N_VARIANTS] : m->fwd[N_VARIANTS];
                fprintf(csv, "block,%s,%d,%d,%d,%d,%d,%s,%s,%.4f,%.2f,%.3f,%.3f\n", s->name, s->n,
                        s->c, s->oc, s->h, threads, pass ? "fwd+bwd" : "fwd", variant_names[v],
                        1e3 * t, block_gemm_flops(s, pass) / t * 1e-9, t / ref, roof / t);
            }
    }
    printf("  (GFLOP/s counts the convolution's GEMM FLOPs only; /onednn is time over oneDNN's "
           "time; roofline is roofline time over the variant's time)\n");
    printf("  process CPU ms, fwd+bwd (robust to a busy machine at 1 thread):");
    for (int v = 0; v < N_VARIANTS; v++)
        printf(" %s %.2f", variant_names[v], 1e3 * m->cpu_fwdbwd[v]);
    printf("\n");
    static const char *dirs[3] = {"fwd", "bwd-data", "bwd-weights"};
    if (isnan(m->conv[0][0]))
        return; /* --only: the convolution alone was not timed */
    printf("  the convolution alone, against libxsmm's GEMM on the same shapes (streamed over "
           "the batch):\n");
    printf("  %-12s %12s %10s %12s %10s %12s %10s\n", "direction", "compiled ms", "GFLOP/s",
           "% of libxsmm", "onednn ms", "libxsmm ms", "GFLOP/s");
    for (int d = 0; d < 3; d++) {
        if (d == 1 && !s->need_dx)
            continue;
        double flops = conv_flops(s), tc = m->conv[d][0], to = m->conv[d][1], tx = m->conv[d][2];
        printf("  %-12s %12.2f %10.1f %11.0f%% %10.2f %12.2f %10.1f\n", dirs[d], 1e3 * tc,
               flops / tc * 1e-9, 100 * tx / tc, 1e3 * to, 1e3 * tx, flops / tx * 1e-9);
        if (csv) {
            const char *who[3] = {"compiled", "onednn", "libxsmm-gemm"};
            for (int k = 0; k < 3; k++)
                fprintf(csv, "conv,%s,%d,%d,%d,%d,%d,%s,%s,%.4f,%.2f,,%.3f\n", s->name, s->n,
                        s->c, s->oc, s->h, threads, dirs[d], who[k], 1e3 * m->conv[d][k],
                        flops / m->conv[d][k] * 1e-9, tx / m->conv[d][k]);
        }
    }
}

static int bench_shape(const shape *s, const int *threads, const machine *machines,
                       int n_threads, const run_opts *o, char *summary, size_t summary_size)
{
    block_data d;
    block_results ref = {0}, got = {0};
    int failures = 0;
    if (make_data(&d, s) || alloc_results(&ref, s) || alloc_results(&got, s)) {
        fprintf(stderr, "conv_bn: out of memory\n");
        return -1;
    }
    if (o->quick && reference(s, &d, &ref) != 0)
        return -1;
    size_t used = strlen(summary);
    for (int ti = 0; ti < n_threads; ti++) {
        int t = threads[ti];
        set_threads(t);
        machine mc = machines[ti];
        eager_block e;
        compiled_block c;
        char err[256] = "";
        if (eager_init(&e, s, &d) || compiled_init(&c, &e, &d)) {
            fprintf(stderr, "conv_bn: setting up the tapegrad block: %s\n", tg_last_error());
            return -1;
        }
        onednn_block *od = onednn_block_new(s->n, s->c, s->oc, s->h, s->w, s->need_dx,
                                            (float)EPS, d.x, d.w, d.gamma, d.beta, d.dy, err,
                                            sizeof err);
        if (!od && onednn_available()) {
            fprintf(stderr, "conv_bn: %s\n", err);
            failures++;
        }
        if (od && ti == 0)
            printf("oneDNN for shape %s: %s\n", s->name, onednn_block_impls(od));
        int n_var = od ? N_VARIANTS : V_ONEDNN;

        if (o->quick) {
            if (eager_run(&e, true, &got) || check_results("eager", s, t, &got, &ref))
                failures++;
            if (compiled_run(&c, PLAN_FWDBWD, &got) || check_results("compiled", s, t, &got, &ref))
                failures++;
            if (od && (onednn_block_forward_backward(od) ||
                       onednn_block_results(od, got.y, got.dx, got.dw, got.dgamma, got.dbeta) ||
                       check_results("onednn", s, t, &got, &ref)))
                failures++;
            /* The forward plans must give the same y. */
            if (compiled_run(&c, PLAN_FWD, &got) ||
                rel_error(got.y, ref.y, y_count(s)) > CHECK_TOLERANCE) {
                printf("check %s threads=%d compiled forward plan: FAILED\n", s->name, t);
                failures++;
            }
        }

        /* Timings: every repeat runs each variant once, forward then forward + backward,
         * so drifts in the machine's speed hit them all alike. Two warm-up rounds. */
        double *samples = calloc((size_t)(N_VARIANTS * 4 + 2) * (size_t)(o->repeats + 2),
                                 sizeof *samples);
        if (!samples)
            return -1;
        int R = o->repeats;
#define SAMPLE(k, r) samples[(size_t)(k) * (size_t)R + (size_t)(r)]
        for (int r = -2; r < R; r++)
            for (int v = 0; v < n_var; v++)
                for (int bwd = 0; bwd < 2 && (o->only < 0 || o->only == v); bwd++) {
                    double sec, cpu;
                    if (time_variant(v, bwd, &e, &c, od, &sec, &cpu) != 0) {
                        fprintf(stderr, "conv_bn: %s failed: %s\n", variant_names[v],
                                v == V_ONEDNN ? "oneDNN" : tg_last_error());
                        return -1;
                    }
                    if (r >= 0)
                        SAMPLE(v * 2 + bwd, r) = sec;
                    if (r >= 0)
                        SAMPLE(N_VARIANTS * 2 + 2 + v * 2 + bwd, r) = cpu;
                }
        /* The convolution alone: compiled, oneDNN, libxsmm GEMM on the same shapes. */
        int mnk[3][4];
        conv_gemm_shapes(s, mnk);
        static const int conv_plans[3] = {PLAN_CONV_FWD, PLAN_CONV_BWD_D, PLAN_CONV_BWD_W};
        measured m;
        for (int dir = 0; dir < 3; dir++) {
            m.conv[dir][0] = m.conv[dir][1] = m.conv[dir][2] = NAN;
            if ((dir == 1 && !s->need_dx) || o->only >= 0)
                continue;
            for (int r = -1; r < R; r++) {
                double t0 = bench_now();
                if (compiled_run(&c, conv_plans[dir], NULL) != 0)
                    return -1;
                double t1 = bench_now();
                if (od && onednn_block_conv(od, dir) != 0)
                    return -1;
                double t2 = bench_now();
                if (r >= 0) {
                    SAMPLE(N_VARIANTS * 2 + 0, r) = t1 - t0;
                    SAMPLE(N_VARIANTS * 2 + 1, r) = t2 - t1;
                }
            }
            m.conv[dir][0] = median(&SAMPLE(N_VARIANTS * 2 + 0, 0), R);
            m.conv[dir][1] = od ? median(&SAMPLE(N_VARIANTS * 2 + 1, 0), R) : NAN;
            double gf = xsmm_gemm_batch_gflops(mnk[dir][0], mnk[dir][1], mnk[dir][2], mnk[dir][3],
                                               s->n, t, o->quick ? 2 : 5);
            m.conv[dir][2] = gf > 0 ? conv_flops(s) / (gf * 1e9) : NAN;
        }
        for (int v = 0; v < N_VARIANTS; v++) {
            bool timed = v < n_var && (o->only < 0 || o->only == v);
            m.fwd[v] = timed ? median(&SAMPLE(v * 2, 0), R) : NAN;
            m.fwdbwd[v] = timed ? median(&SAMPLE(v * 2 + 1, 0), R) : NAN;
            m.cpu_fwd[v] = timed ? median(&SAMPLE(N_VARIANTS * 2 + 2 + v * 2, 0), R) : NAN;
            m.cpu_fwdbwd[v] = timed ? median(&SAMPLE(N_VARIANTS * 2 + 3 + v * 2, 0), R) : NAN;
        }
#undef SAMPLE
        free(samples);
        m.fwd[N_VARIANTS] = roofline_seconds(s, false, &mc);
        m.fwdbwd[N_VARIANTS] = roofline_seconds(s, true, &mc);
        print_table(s, t, &m, &mc, o->csv_file);
        used += (size_t)snprintf(summary + used, used < summary_size ? summary_size - used : 0,
                       "shape=%s threads=%d batch=%d eager_ms=%.2f compiled_ms=%.2f "
                       "onednn_ms=%.2f roofline_ms=%.2f eager_fwd_ms=%.2f compiled_fwd_ms=%.2f "
                       "onednn_fwd_ms=%.2f roofline_fwd_ms=%.2f compiled_over_onednn=%.2f "
                       "conv_fwd_pct_gemm=%.0f conv_bwd_data_pct_gemm=%.0f "
                       "conv_bwd_weights_pct_gemm=%.0f gemm_gflops=%.1f triad_gbs=%.1f "
                       "eager_cpu_ms=%.2f compiled_cpu_ms=%.2f onednn_cpu_ms=%.2f\n",
                       s->name, t, s->n, 1e3 * m.fwdbwd[V_EAGER], 1e3 * m.fwdbwd[V_COMPILED],
                       1e3 * m.fwdbwd[V_ONEDNN], 1e3 * m.fwdbwd[N_VARIANTS], 1e3 * m.fwd[V_EAGER],
                       1e3 * m.fwd[V_COMPILED], 1e3 * m.fwd[V_ONEDNN], 1e3 * m.fwd[N_VARIANTS],
                       m.fwdbwd[V_COMPILED] / m.fwdbwd[V_ONEDNN], 100 * m.conv[0][2] / m.conv[0][0],
                       100 * m.conv[1][2] / m.conv[1][0], 100 * m.conv[2][2] / m.conv[2][0],
                       mc.gemm_gflops, mc.triad_gbs, 1e3 * m.cpu_fwdbwd[V_EAGER],
                       1e3 * m.cpu_fwdbwd[V_COMPILED], 1e3 * m.cpu_fwdbwd[V_ONEDNN]);
        onednn_block_free(od);
        compiled_free(&c);
        tg_tape_free(e.tape);
    }
    free_results(&ref);
    free_results(&got);
    free_data(&d);
    return failures ? 1 : 0;
}

/* ---- main ----------------------------------------------------------------------------------- */
static void usage(FILE *f)
{
    fprintf(f, "usage: conv_bn [--shape A|B|all] [--batch N] [--cin C --cout C --hw S]\n"
               "               [--threads 1,2] [--repeats N] [--csv FILE|-] [--quick] [--only V]\n"
               "  --shape    A = 1->32 at 28x28, B = 32->64 at 14x14 (default all)\n"
               "  --cin/--cout/--hw  a custom shape instead (all three; with input gradient)\n"
               "  --batch    batch size (default 128; 4 with --quick)\n"
               "  --threads  comma-separated thread counts, each measured in turn (default 1,2)\n"
               "  --repeats  timed repeats per variant, medians reported (default 10; 2 quick)\n"
               "  --csv      also write CSV rows to FILE (- for stdout)\n"
               "  --quick    small and fast: check every variant against an f64 evaluation\n"
               "             and exit 1 when one disagrees\n"
               "  --only V   time only variant V (eager, compiled or onednn), nothing else:\n"
               "             for perf record / valgrind --tool=callgrind\n");
}

static void describe_cpu(void)
{
    char line[512], model[256] = "unknown";
    bool avx512 = false, avx2 = false;
    FILE *f = fopen("/proc/cpuinfo", "r");
    while (f && fgets(line, sizeof line, f)) {
        if (!strncmp(line, "model name", 10) && strchr(line, ':')) {
            snprintf(model, sizeof model, "%s", strchr(line, ':') + 2);
            model[strcspn(model, "\n")] = '\0';
        }
        if (!strncmp(line, "flags", 5)) {
            avx512 |= strstr(line, " avx512f") != NULL;
            avx2 |= strstr(line, " avx2") != NULL;
        }
    }
    if (f)
        fclose(f);
    printf("CPU: %s; vector: %s; oneDNN: %s\n", model,
           avx512 ? "avx512f" : avx2 ? "avx2 (no avx512f)" : "neither avx2 nor avx512f",
           onednn_available() ? "yes" : "missing (built without libdnnl-dev)");
}

int main(int argc, char **argv)
{
    const char *which = "all", *thread_list = "1,2", *csv = NULL;
    int batch = 0, repeats = 0, cin = 0, cout = 0, hw = 0, only = -1;
    bool quick = false;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i], *v = i + 1 < argc ? argv[i + 1] : NULL;
        if (!strcmp(a, "--quick")) {
            quick = true;
            continue;
        }
        if (!strcmp(a, "--help") || !strcmp(a, "-h")) {
            usage(stdout);
            return 0;
        }
        if (!v) {
            usage(stderr);
            return 2;
        }
        i++;
        if (!strcmp(a, "--shape"))
            which = v;
        else if (!strcmp(a, "--batch"))
            batch = atoi(v);
        else if (!strcmp(a, "--repeats"))
            repeats = atoi(v);
        else if (!strcmp(a, "--threads"))
            thread_list = v;
        else if (!strcmp(a, "--csv"))
            csv = v;
        else if (!strcmp(a, "--only")) {
            for (int k = 0; k < N_VARIANTS; k++)
                if (!strcmp(v, variant_names[k]))
                    only = k;
            if (only < 0) {
                usage(stderr);
                return 2;
            }
        } else if (!strcmp(a, "--cin"))
            cin = atoi(v);
        else if (!strcmp(a, "--cout"))
            cout = atoi(v);
        else if (!strcmp(a, "--hw"))
            hw = atoi(v);
        else {
            usage(stderr);
            return 2;
        }
    }
    if (!batch)
        batch = quick ? 4 : 128;
    if (!repeats)
        repeats = quick ? 2 : 10;
    int threads[MAX_THREADS], n_threads = 0;
    for (const char *p = thread_list; *p && n_threads < MAX_THREADS;) {
        int t = atoi(p);
        if (t < 1 || tg_set_num_threads(t) != 0) {
            fprintf(stderr, "conv_bn: --threads %s: %s\n", thread_list, tg_last_error());
            return 2;
        }
        threads[n_threads++] = t;
        p = strchr(p, ',');
        if (!p)
            break;
        p++;
    }
    shape shapes[2];
    int n_shapes = 0;
    if (cin || cout || hw) {
        if (cin < 1 || cout < 1 || hw < 1) {
            fprintf(stderr, "conv_bn: a custom shape needs --cin, --cout and --hw, all >= 1\n");
            return 2;
        }
        shapes[n_shapes++] = (shape){"custom", batch, cin, cout, hw, hw, true};
    } else {
        if (!strcmp(which, "A") || !strcmp(which, "all"))
            shapes[n_shapes++] = (shape){"A", batch, 1, 32, 28, 28, false};
        if (!strcmp(which, "B") || !strcmp(which, "all"))
            shapes[n_shapes++] = (shape){"B", batch, 32, 64, 14, 14, true};
    }
    if (!n_shapes || batch < 2 || repeats < 1 || repeats > MAX_REPEATS || n_threads < 1) {
        usage(stderr);
        return 2;
    }
    run_opts o = {.csv = csv, .quick = quick, .repeats = repeats, .only = only};
    if (csv) {
        o.csv_file = strcmp(csv, "-") ? fopen(csv, "w") : stdout;
        if (!o.csv_file) {
            perror(csv);
            return 2;
        }
        fprintf(o.csv_file, "part,shape,batch,cin,cout,hw,threads,pass,variant,median_ms,"
                            "gflops,time_over_onednn,roofline_fraction\n");
    }
    describe_cpu();
    printf("batch %d, %d repeat(s), medians; variants alternate within each repeat\n", batch,
           repeats);
    /* The roofline's two numbers, once per thread count, over every shape's GEMMs. */
    machine machines[MAX_THREADS];
    for (int i = 0; i < n_threads; i++) {
        set_threads(threads[i]);
        machines[i] = only < 0 ? measure_machine(shapes, n_shapes, threads[i], quick)
                               : (machine){NAN, NAN};
        printf("machine at %d thread(s): libxsmm GEMM best %.1f GFLOP/s, triad %.1f GB/s\n",
               threads[i], machines[i].gemm_gflops, machines[i].triad_gbs);
    }
    char summary[8192] = "";
    int status = 0;
    for (int i = 0; i < n_shapes; i++) {
        int r = bench_shape(&shapes[i], threads, machines, n_threads, &o, summary,
                            sizeof summary);
        if (r < 0)
            return 1;
        status |= r;
    }
    if (o.csv_file && o.csv_file != stdout)
        fclose(o.csv_file);
    printf("\n%s", summary);
    if (quick)
        printf("quick check: %s\n", status ? "FAILED (see the lines marked FAILED)" : "all variants agree");
    return status ? 1 : 0;
}
