/* The fusion pass and the fused kernel: every case compiles one traced graph twice, with
 * fusion and without, runs both on the same inputs and compares. f64 agrees to 1e-12 where
 * fusion keeps the order of arithmetic (elementwise chains) and 1e-9 where it does not
 * (sums accumulate per tile); f32 to 1e-5. Around that: the shape of the fused graph (no
 * elementwise op or reduction left outside a fused kernel, batch norm + relu + max pool in
 * one kernel, the pool's backward gradient written once for batch norm's backward kernels),
 * bit-identical results for 1 and 2 threads, a planted wrong instruction that
 * the comparison catches, and programs the executor refuses. Every fused plan is run twice,
 * its kernels compiled to machine code (compile/native.h, the C written by
 * kernels/fused_emit.c; however small, here) and
 * interpreted; the native code is shown to catch a planted instruction too, and a plan
 * without a compiler to run interpreted. */
#include "testing.h"
#include "compile/native.h"
#include "compile/plan_ops.h"
#include "kernels/fused.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "tapegrad_nn.h"

#define MAX_IO 24

/* ---- cases ------------------------------------------------------------------------------- */
typedef struct {
    const char *name;
    int ndim;
    int64_t shape[6];
    double lo, hi; /* uniform inputs in [lo, hi) */
    bool whole;    /* rounded down: class labels */
} input_spec;

typedef struct fuse_case fuse_case;
/* Builds the outputs from the placeholders (tracing is on); returns how many, or -1. */
typedef int (*build_fn)(fuse_case *c, tg_tape *tape, tg_tensor *const *in, tg_tensor **out);

struct fuse_case {
    tg_dtype dt;
    int n_in;
    input_spec in[6];
    build_fn build;
    /* Called before tracing: makes the tensors the trace reads by pointer (parameters). */
    void (*setup)(fuse_case *c, tg_tape *tape, tg_rng *rng);
    const char *disable; /* passes off in both configurations, besides fuse */
    double tol;
    int param;           /* a case parameter (an axis mask, a kernel size) */
    /* Tensors made before tracing that the plan updates: restored before each compile,
     * compared after each run. */
    tg_tensor *watch[MAX_IO];
    int n_watch;
};

typedef struct {
    int n;
    int64_t numel[MAX_IO];
    double *value[MAX_IO]; /* as f64, for comparing */
} results;

static size_t elem_size(tg_dtype dt) { return dt == TG_F64 ? sizeof(double) : sizeof(float); }

static void collect(results *r, tg_dtype dt, const void *data, int64_t numel)
{
    double *v = malloc((size_t)(numel > 0 ? numel : 1) * sizeof *v);
    for (int64_t i = 0; i < numel; i++)
        v[i] = dt == TG_F64 ? ((const double *)data)[i] : ((const float *)data)[i];
    r->numel[r->n] = numel;
    r->value[r->n++] = v;
}

static void results_free(results *r)
{
    for (int i = 0; i < r->n; i++)
        free(r->value[i]);
    r->n = 0;
}

/* max |a - b| / max |b|: NaNs must sit in the same places. */
static double rel_error(const results *a, const results *b)
{
    double worst = 0;
    for (int o = 0; o < b->n; o++) {
        double err = 0, scale = 0;
        for (int64_t i = 0; i < b->numel[o]; i++) {
            double x = a->value[o][i], y = b->value[o][i];
            if (isnan(x) || isnan(y)) {
                if (isnan(x) != isnan(y))
                    return INFINITY;
                continue;
            }
            if (isinf(x) || isinf(y)) {
                if (x != y)
                    return INFINITY;
                continue;
            }
            err = fmax(err, fabs(x - y));
            scale = fmax(scale, fabs(y));
        }
        worst = fmax(worst, scale > 0 ? err / scale : err);
    }
    return worst;
}

/* A traced case: the tape, its outputs, the inputs' data and the watched tensors' state
 * before any run. */
typedef struct {
    fuse_case *c;
    tg_tape *tape;
    tg_tensor *out[MAX_IO];
    int n_out;
    void *data[6];
    void *saved[MAX_IO];
} traced;

static void trace_case(traced *t, fuse_case *c, uint64_t seed)
{
    memset(t, 0, sizeof *t);
    t->c = c;
    t->tape = tg_tape_new();
    tg_rng rng;
    tg_rng_seed(&rng, seed);
    if (c->setup)
        c->setup(c, t->tape, &rng);
    tg_tensor *in[6];
    ck_assert_int_eq(tg_tape_trace(t->tape, true), 0);
    for (int i = 0; i < c->n_in; i++) {
        const input_spec *s = &c->in[i];
        in[i] = tg_placeholder(t->tape, s->name, c->dt, s->ndim, s->shape);
        ck_assert_ptr_nonnull(in[i]);
        int64_t n = tg_numel(in[i]);
        t->data[i] = malloc((size_t)(n > 0 ? n : 1) * elem_size(c->dt));
        for (int64_t k = 0; k < n; k++) {
            double v = s->lo + (s->hi - s->lo) * tg_rng_uniform(&rng);
            v = s->whole ? floor(v) : v;
            if (c->dt == TG_F64)
                ((double *)t->data[i])[k] = v;
            else
                ((float *)t->data[i])[k] = (float)v;
        }
    }
    t->n_out = c->build(c, t->tape, in, t->out);
    ck_assert_msg(t->n_out > 0, "building the case failed: %s", tg_last_error());
    ck_assert_int_eq(tg_tape_trace(t->tape, false), 0);
    for (int w = 0; w < c->n_watch; w++) {
        size_t bytes = (size_t)tg_numel(c->watch[w]) * elem_size(c->watch[w]->dtype);
        t->saved[w] = malloc(bytes ? bytes : 1);
        memcpy(t->saved[w], tg_data(c->watch[w]), bytes);
    }
}

static void traced_free(traced *t)
{
    for (int i = 0; i < t->c->n_in; i++)
        free(t->data[i]);
    for (int w = 0; w < t->c->n_watch; w++)
        free(t->saved[w]);
    tg_tape_free(t->tape);
    t->c->n_watch = 0;
}

/* With fusion or without; fused kernels run natively (compile/native.h) where the emitter
 * writes them unless `interpret`. */
static tg_plan *compile_with(traced *t, bool fuse, bool interpret)
{
    char disable[128];
    const char *off = !fuse ? "fuse" : interpret ? "native" : "";
    snprintf(disable, sizeof disable, "%s%s%s", off, off[0] && t->c->disable ? "," : "",
             t->c->disable ? t->c->disable : "");
    tg_compile_opts opts = {.disable = disable};
    tg_plan *plan = tg_compile(t->tape, t->n_out, t->out, &opts);
    ck_assert_msg(plan != NULL, "compile: %s", tg_last_error());
    for (int i = 0; i < t->c->n_in; i++)
        ck_assert_int_eq(tg_plan_set_input(plan, t->c->in[i].name, t->data[i]), 0);
    return plan;
}

static tg_plan *compile_case(traced *t, bool fuse) { return compile_with(t, fuse, false); }

/* Runs plan from the saved state and collects its outputs and the watched tensors. */
static void run_case(traced *t, tg_plan *plan, results *r)
{
    for (int w = 0; w < t->c->n_watch; w++)
        memcpy(tg_data(t->c->watch[w]), t->saved[w],
               (size_t)tg_numel(t->c->watch[w]) * elem_size(t->c->watch[w]->dtype));
    ck_assert_msg(tg_plan_run(plan) == 0, "run: %s", tg_last_error());
    r->n = 0;
    for (int o = 0; o < t->n_out; o++)
        collect(r, t->out[o]->dtype, tg_plan_output(plan, o), tg_numel(t->out[o]));
    for (int w = 0; w < t->c->n_watch; w++)
        collect(r, t->c->watch[w]->dtype, tg_data(t->c->watch[w]), tg_numel(t->c->watch[w]));
}

/* No elementwise op or reduction may run outside a fused kernel. Returns the kernels. */
static int check_all_fused(const tg_graph *g)
{
    int fused = 0;
    for (int i = 0; i < g->n; i++) {
        int op = g->nodes[i].op;
        ck_assert_msg(!tg_ir_is_elementwise(op) && op != TG_OP_SUM && op != TG_OP_MAX,
                      "node %d (%s) was left unfused", i, tg_ir_op_name(op));
        fused += op == TG_PLAN_OP_FUSED;
    }
    return fused;
}

/* How many fused kernels' descriptions contain text. */
static int count_kernels(const tg_graph *g, const char *text)
{
    int count = 0;
    for (int i = 0; i < g->n; i++) {
        char what[512];
        if (g->nodes[i].op != TG_PLAN_OP_FUSED)
            continue;
        tg_fused_describe(&g->nodes[i], what, sizeof what);
        count += strstr(what, text) != NULL;
    }
    return count;
}

static bool has_kernel(const tg_graph *g, const char *text) { return count_kernels(g, text) > 0; }

static void print_kernels(const tg_graph *g)
{
    for (int i = 0; i < g->n; i++) {
        char what[512];
        if (g->nodes[i].op != TG_PLAN_OP_FUSED)
            continue;
        tg_fused_describe(&g->nodes[i], what, sizeof what);
        fprintf(stderr, "  %%%d %s\n", i, what);
    }
}

/* The case with fusion, its kernels native and interpreted, against the case without;
 * returns the fused native plan (the caller frees it) when keep is set. */
static tg_plan *compare_case(fuse_case *c, traced *t, bool keep)
{
    tg_plan *plain = compile_case(t, false), *fused = compile_case(t, true);
    tg_plan *interpreted = compile_with(t, true, true);
    results a = {0}, b = {0}, r = {0};
    run_case(t, fused, &a);
    run_case(t, plain, &b);
    run_case(t, interpreted, &r);
    check_all_fused(tg_plan_graph(fused));
    double err = rel_error(&a, &b), err_r = rel_error(&r, &b);
    if (!(err <= c->tol))
        print_kernels(tg_plan_graph(fused));
    ck_assert_msg(err <= c->tol, "fused differs from unfused by %g (tolerance %g)", err, c->tol);
    ck_assert_msg(err_r <= c->tol, "fused and interpreted differs from unfused by %g "
                  "(tolerance %g)", err_r, c->tol);
    results_free(&a);
    results_free(&b);
    results_free(&r);
    tg_plan_free(plain);
    tg_plan_free(interpreted);
    if (keep)
        return fused;
    tg_plan_free(fused);
    return NULL;
}

static void check_case(fuse_case *c)
{
    traced t;
    trace_case(&t, c, 42);
    compare_case(c, &t, false);
    traced_free(&t);
}

static double tol_for(tg_dtype dt, bool same_order) { return dt == TG_F32 ? 1e-5 : same_order ? 1e-12 : 1e-9; }

/* ---- elementwise chains with broadcasting ------------------------------------------------- */
static int build_chain(fuse_case *c, tg_tape *tape, tg_tensor *const *in, tg_tensor **out)
{
    (void)c;
    tg_tensor *x = in[0], *b = in[1], *w = in[2];
    tg_tensor *t = tg_add(tg_mul(tg_exp(tg_neg(x)), b), tg_div(w, tg_add_scalar(b, 3)));
    t = tg_maximum(t, tg_sqrt(tg_recip(tg_add_scalar(tg_mul(w, w), 1))));
    t = tg_sub(tg_log(tg_add_scalar(tg_mul(t, t), 0.5)), tg_scalar(tape, c->dt, 0.25));
    out[0] = t;
    out[1] = tg_mul(t, x); /* shares t: recomputed or stored, the values agree */
    return out[1] ? 2 : -1;
}

START_TEST(elementwise_broadcast)
{
    for (int d = 0; d < 2; d++) {
        fuse_case c = {.dt = d ? TG_F64 : TG_F32, .n_in = 3, .build = build_chain};
        c.in[0] = (input_spec){"x", 3, {4, 5, 37}, -2, 2, false};
        c.in[1] = (input_spec){"b", 3, {1, 5, 1}, 0.5, 2, false};
        c.in[2] = (input_spec){"w", 2, {1, 37}, -1, 1, false};
        c.tol = tol_for(c.dt, true);
        check_case(&c);
    }
}
END_TEST

/* ---- batch norm: statistics, normalize, gradients ----------------------------------------- */
static int build_batchnorm(fuse_case *c, tg_tape *tape, tg_tensor *const *in, tg_tensor **out)
{
    (void)c, (void)tape;
    tg_tensor *x = in[0], *w = in[1];
    tg_tensor *y = tg_batch_norm(x, in[2], in[3], NULL, NULL, true, 0.1, 1e-5);
    tg_tensor *loss = tg_sum(tg_mul(tg_relu(y), w), 0, NULL, false);
    tg_tensor *xs[3] = {x, in[2], in[3]}, *g[3];
    if (!loss || tg_grad(loss, 3, xs, NULL, g) != 0)
        return -1;
    out[0] = loss;
    out[1] = g[0];
    out[2] = g[1];
    out[3] = tg_add_scalar(g[2], 0.5); /* read by a kernel, as an optimizer would */
    return 4;
}

START_TEST(batchnorm_statistics_and_normalize)
{
    /* planes of 63 points (tiles span channels: the statistics are gathered), of 576
     * (a tile is one plane, as two do not fit: the statistics are one value per tile, and
     * (x - mean) * scale + shift is one loop, sub_mul_add), and of 100 and 144: a tile is
     * several planes, the statistics one value per plane (segmented), 10 planes a tile over
     * 13 channels (the last tile of 3), and all 5 channels of an image in one tile */
    const int64_t shapes[][4] = {{6, 3, 7, 9}, {2, 3, 24, 24}, {3, 13, 10, 10}, {2, 5, 12, 12}};
    for (int d = 0; d < 8; d++) {
        const int64_t *sh = shapes[d / 2];
        fuse_case c = {.dt = d % 2 ? TG_F64 : TG_F32, .n_in = 4, .build = build_batchnorm};
        c.in[0] = (input_spec){"x", 4, {sh[0], sh[1], sh[2], sh[3]}, -1, 3, false};
        c.in[1] = (input_spec){"w", 4, {sh[0], sh[1], sh[2], sh[3]}, -1, 1, false};
        c.in[2] = (input_spec){"gamma", 1, {sh[1]}, 0.5, 1.5, false};
        c.in[3] = (input_spec){"beta", 1, {sh[1]}, -0.5, 0.5, false};
        c.tol = tol_for(c.dt, false);
        traced t;
        trace_case(&t, &c, 7);
        tg_plan *fused = compare_case(&c, &t, true);
        const tg_graph *g = tg_plan_graph(fused);
        /* The normalize-scale-shift-relu pass over x is one kernel (here also the loss's). */
        ck_assert_msg(has_kernel(g, "fused{sub mul add lt where"), "no single normalize kernel");
        /* The backward's sum(g) (beta) and sum(g * (x - mean)) (gamma) are one pass. */
        if (!has_kernel(g, "+ sum(0,2,3) of 2 values"))
            print_kernels(g);
        ck_assert_msg(has_kernel(g, "+ sum(0,2,3) of 2 values"), "sibling sums not merged");
        /* Three passes of sums in all: sum(x); sum((x - mean)^2) with sum(x - mean); the
         * backward's two. The backward's third sum, of a linear combination of g and
         * x - mean, is made of those (distribute_sums). */
        int passes = count_kernels(g, "+ sum(0,2,3)");
        if (passes != 3)
            print_kernels(g);
        ck_assert_msg(passes == 3, "%d passes of sums over (N, H, W), not 3", passes);
        /* The ReLU's gradient where(mask, w, 0) is recomputed by both of its readers, the
         * sums and the input gradient, which read x anyway: storing it would write a full
         * array and read it back where recomputing reads w instead of it. */
        if (has_kernel(g, "+ store"))
            print_kernels(g);
        ck_assert_msg(!has_kernel(g, "+ store"), "the ReLU's gradient is stored");
        /* sum((x - mean)^2) and sum(x - mean) share x - mean: merged, they compute it once. */
        if (!has_kernel(g, "fused{sub mul} + sum(0,2,3) of 2 values"))
            print_kernels(g);
        ck_assert_msg(has_kernel(g, "fused{sub mul} + sum(0,2,3) of 2 values"),
                      "merged sums repeat their shared instructions");
        if (d >= 4 && !has_kernel(g, "planes a tile)"))
            print_kernels(g);
        ck_assert_msg(d < 4 || has_kernel(g, "planes a tile)"), "no segmented tiles");
        tg_plan_free(fused);
        traced_free(&t);
    }
}
END_TEST

/* ---- segmented tiles ---------------------------------------------------------------------- */
/* Planes of 100 points, 10 to a tile, with per-channel values one per plane (s, t, and
 * exp(s) and s t, which fusion writes once as [1, C, 1, 1]): compared (where), in products
 * with a plane's points, and summed per channel (a reduction folding a tile's planes into
 * their channels). 13 channels: the last tile has 3 planes; 11: the last tile has one plane,
 * run as one plane (its per-plane values are then the tile's scalars). A value computed per
 * plane inside a kernel: executor_per_plane_values. */
static int build_segmented(fuse_case *c, tg_tape *tape, tg_tensor *const *in, tg_tensor **out)
{
    (void)c, (void)tape;
    tg_tensor *x = in[0], *s = in[1], *t = in[2];
    tg_tensor *y = tg_add(tg_mul(x, tg_exp(s)), tg_mul(s, t));
    out[0] = tg_where(tg_lt(y, s), tg_mul(y, t), x);
    out[1] = tg_sum(tg_mul(tg_sub(x, s), y), 3, (const int[]){0, 2, 3}, true);
    return out[1] ? 2 : -1;
}

START_TEST(segmented_tiles)
{
    for (int d = 0; d < 4; d++) {
        int64_t C = d < 2 ? 13 : 11;
        fuse_case c = {.dt = d % 2 ? TG_F64 : TG_F32, .n_in = 3, .build = build_segmented};
        c.in[0] = (input_spec){"x", 4, {3, C, 10, 10}, -2, 2, false};
        c.in[1] = (input_spec){"s", 4, {1, C, 1, 1}, -1, 1, false};
        c.in[2] = (input_spec){"t", 4, {1, C, 1, 1}, 0.5, 2, false};
        c.tol = tol_for(c.dt, false);
        traced t;
        trace_case(&t, &c, 5);
        tg_plan *fused = compare_case(&c, &t, true);
        const tg_graph *g = tg_plan_graph(fused);
        if (count_kernels(g, "(10 planes a tile)") != 2)
            print_kernels(g);
        ck_assert_msg(count_kernels(g, "(10 planes a tile)") == 2, "not two segmented kernels");
        tg_plan_free(fused);
        traced_free(&t);
    }
}
END_TEST

static void check_threads(fuse_case *c);

/* Batch norm, ReLU and a 2x2 max pool, forward and backward, at 14x14 (196-point planes, 5 a
 * tile): the pool's max with its tie counts folds a tile's planes window by window, and the
 * backward's kernel spreads the pooled gradient over each plane's windows; values are
 * multiples of 0.25, so windows tie. */
static int build_bn_pool(fuse_case *c, tg_tape *tape, tg_tensor *const *in, tg_tensor **out)
{
    (void)c, (void)tape;
    tg_tensor *x = in[0];
    tg_tensor *y = tg_relu(tg_batch_norm(x, in[2], in[3], NULL, NULL, true, 0.1, 1e-5));
    tg_tensor *mp = tg_max_pool2d(y, 2, 2, 0);
    tg_tensor *loss = tg_sum(tg_mul(mp, in[1]), 0, NULL, false);
    tg_tensor *xs[3] = {x, in[2], in[3]}, *g[3];
    if (!loss || tg_grad(loss, 3, xs, NULL, g) != 0)
        return -1;
    out[0] = mp;
    out[1] = g[0];
    out[2] = g[1];
    out[3] = tg_add_scalar(g[2], 0.5);
    return 4;
}

START_TEST(segmented_pooling)
{
    for (int d = 0; d < 2; d++) {
        fuse_case c = {.dt = d ? TG_F64 : TG_F32, .n_in = 4, .build = build_bn_pool};
        c.in[0] = (input_spec){"x", 4, {4, 7, 14, 14}, -1, 3, false};
        c.in[1] = (input_spec){"w", 4, {4, 7, 7, 7}, -1, 1, false};
        c.in[2] = (input_spec){"gamma", 1, {7}, 0.5, 1.5, false};
        c.in[3] = (input_spec){"beta", 1, {7}, -0.5, 0.5, false};
        c.tol = tol_for(c.dt, false);
        traced t;
        trace_case(&t, &c, 11);
        int64_t n = 4 * 7 * 14 * 14;
        for (int64_t i = 0; i < n; i++) { /* ties in most windows */
            double v = floor((double)(i * 37 % 13) / 2.0) * 0.25 - 0.5;
            if (c.dt == TG_F64)
                ((double *)t.data[0])[i] = v;
            else
                ((float *)t.data[0])[i] = (float)v;
        }
        tg_plan *fused = compare_case(&c, &t, true);
        /* compiled, batch norm's sums recompute the pooled gradient; interpreted, they write
         * it beside them (pass_fuse.c's cost of a gather) */
        tg_plan *interpreted = compile_with(&t, true, true);
        const tg_graph *g = tg_plan_graph(fused), *gi = tg_plan_graph(interpreted);
        bool ties = has_kernel(g, "with tie counts (5 planes a tile)"),
             spread = has_kernel(g, "} + sum(0,2,3,4,5) of 2 values (5 planes a tile)"),
             spread_stored =
                 has_kernel(gi, "+ store + sum(0,2,3,4,5) of 2 values (5 planes a tile)");
        if (!ties || !spread)
            print_kernels(g);
        if (!spread_stored)
            print_kernels(gi);
        ck_assert_msg(ties && spread && spread_stored, "the pool's kernels are not segmented");
        tg_plan_free(fused);
        tg_plan_free(interpreted);
        traced_free(&t);
        check_threads(&c);
    }
}
END_TEST

/* ---- scaled differences ------------------------------------------------------------------- */
/* (x - m) s and (x - m) s + b, m, s, b one value per plane of x (600 points: a tile is one
 * plane, as two do not fit), written every way round:
 * each is one loop when the difference and the product have no other reader, and the
 * values are those of the separate operations. (x - m) scaled by a buffer (x itself, exp(x)
 * summed as batch norm's backward sums (x - mean) g) is one loop, and an add after it
 * another; (m - x) s and a difference read twice stay separate steps. */
static int build_scaled(fuse_case *c, tg_tape *tape, tg_tensor *const *in, tg_tensor **out)
{
    (void)c, (void)tape;
    tg_tensor *x = in[0], *m = in[1], *s = in[2], *b = in[3];
    out[0] = tg_add(tg_mul(tg_sub(x, m), s), b);
    out[1] = tg_add(b, tg_mul(s, tg_sub(x, m)));
    out[2] = tg_exp(tg_mul(tg_sub(x, m), s));
    out[3] = tg_sum(tg_mul(s, tg_sub(x, m)), 3, (const int[]){0, 2, 3}, false);
    out[4] = tg_add(tg_mul(tg_sub(m, x), s), b);
    tg_tensor *d = tg_sub(x, m);
    out[5] = tg_add(tg_mul(tg_mul(d, s), d), b);
    out[6] = tg_add(tg_mul(tg_sub(x, m), x), b);
    out[7] = tg_sum(tg_mul(tg_exp(x), tg_sub(x, m)), 3, (const int[]){0, 2, 3}, false);
    return out[7] ? 8 : -1;
}

START_TEST(scaled_differences)
{
    for (int d = 0; d < 2; d++) {
        fuse_case c = {.dt = d ? TG_F64 : TG_F32, .n_in = 4, .build = build_scaled};
        c.in[0] = (input_spec){"x", 4, {2, 3, 20, 30}, -2, 2, false};
        c.in[1] = (input_spec){"m", 4, {1, 3, 1, 1}, -1, 1, false};
        c.in[2] = (input_spec){"s", 4, {1, 3, 1, 1}, 0.5, 2, false};
        c.in[3] = (input_spec){"b", 4, {1, 3, 1, 1}, -1, 1, false};
        c.tol = tol_for(c.dt, false);
        check_case(&c);
    }
}
END_TEST

/* ---- chains (fold_chains) ------------------------------------------------------------------ */
/* Every chain y OUTER (x INNER s), s one value per channel, y a buffer or (the last four) one
 * value per channel too. Each s differs (s + n / 8), so that no two inner ops are the same
 * value (common-subexpression elimination would give them two readers). Computed op by op
 * as the separate loops compute them: the same bits as without fusion. */
static int build_chains(fuse_case *c, tg_tape *tape, tg_tensor *const *in, tg_tensor **out)
{
    (void)c, (void)tape;
    tg_tensor *x = in[0], *y = in[1], *t = in[3];
    int n = 0;
    for (int k = 0; k < 20; k++) {
        tg_tensor *s = tg_add_scalar(in[2], 0.125 * k);
        int inner = k % 4, outer = k / 4;
        tg_tensor *a = inner == 0   ? tg_add(x, s)
                       : inner == 1 ? tg_sub(x, s)
                       : inner == 2 ? tg_sub(s, x)
                                    : tg_mul(x, s);
        out[n++] = outer == 0   ? tg_add(y, a)
                   : outer == 1 ? tg_sub(y, a)
                   : outer == 2 ? tg_sub(a, y)
                   : outer == 3 ? tg_mul(a, y)
                                : tg_sub(t, a);
    }
    return out[n - 1] ? n : -1;
}

START_TEST(chains)
{
    /* planes of 600 points (a tile is one plane: s is a scalar) and of 100 (a tile is
     * several planes: s is one value per plane, and the chains run plane by plane) */
    const int64_t shapes[][4] = {{2, 3, 20, 30}, {2, 5, 10, 10}};
    for (int d = 0; d < 4; d++) {
        const int64_t *sh = shapes[d / 2];
        fuse_case c = {.dt = d % 2 ? TG_F64 : TG_F32, .n_in = 4, .build = build_chains};
        c.in[0] = (input_spec){"x", 4, {sh[0], sh[1], sh[2], sh[3]}, -2, 2, false};
        c.in[1] = (input_spec){"y", 4, {sh[0], sh[1], sh[2], sh[3]}, -2, 2, false};
        c.in[2] = (input_spec){"s", 4, {1, sh[1], 1, 1}, -1, 1, false};
        c.in[3] = (input_spec){"t", 4, {1, sh[1], 1, 1}, 0.5, 2, false};
        c.tol = 0;
        traced t;
        trace_case(&t, &c, 3);
        tg_plan *fused = compare_case(&c, &t, true);
        const tg_graph *g = tg_plan_graph(fused);
        /* all but (x - s) * y, a scaled difference (folded first; its step is the same loop) */
        int chained = count_kernels(g, "(1 chained)");
        if (chained != 19)
            print_kernels(g);
        ck_assert_msg(chained == 19, "%d kernels with a chain, not 19", chained);
        tg_plan_free(fused);
        traced_free(&t);
    }
}
END_TEST

/* ---- stores fused into reductions (compile/pass_fuse_stores.c) ----------------------------- */
/* A value written once (a chain too long to recompute in each reader), read by sums over its
 * own points and by an elementwise kernel: the shape of batch norm's backward, whose dz feeds
 * the sums and the input gradient. The sums are read by kernels (not outputs themselves), so
 * the merge applies. param 0: sums over (N, H, W), sibling sums; 1: over the rows (W); 2:
 * 2x2 pools, which read e out of its order, and 3: a sum that also needs e's total (one
 * value: its kernel takes no store), so that nothing merges; 4: as 0, but the sums are
 * outputs themselves (the merged kernel's blocks are copied out); 5: one sum, an output. */
static int build_stored(fuse_case *c, tg_tape *tape, tg_tensor *const *in, tg_tensor **out)
{
    (void)tape;
    tg_tensor *x = in[0], *e = x;
    for (int i = 0; i < 10; i++)
        e = tg_add_scalar(tg_mul(e, in[1]), 0.125 * (i % 3) - 0.1);
    e = tg_relu(e);
    const int planes[3] = {0, 2, 3}, rows[1] = {3};
    int n = c->param ? 1 : 3;
    const int *axes = c->param ? rows : planes;
    out[0] = tg_add_scalar(tg_sum(e, n, axes, true), 1.0);
    out[1] = tg_mul_scalar(tg_sum(tg_mul(e, x), n, axes, true), 2.0);
    if (c->param == 2) { /* pools read e window by window, not in its order: no merge */
        out[0] = tg_add_scalar(tg_avg_pool2d(e, 2, 2, 0), 1.0);
        out[1] = tg_mul_scalar(tg_max_pool2d(e, 2, 2, 0), 2.0);
    }
    if (c->param == 4) { /* the sums are outputs (roots), one through a reshape */
        out[0] = tg_sum(e, n, axes, false);
        out[1] = tg_sum(tg_mul(e, x), n, axes, true);
    }
    if (c->param == 5) { /* one sum, an output: no sibling to merge it first */
        out[0] = tg_sum(tg_mul(e, x), n, axes, false);
        out[1] = tg_exp(x);
    }
    if (c->param == 3) { /* the sums need e through its total too: no merge (a cycle) */
        tg_tensor *total = tg_sum(e, 0, NULL, true);
        out[0] = tg_add_scalar(tg_sum(tg_maximum(e, tg_mul_scalar(total, 1e-3)), n, axes, true),
                               1.0);
        out[1] = tg_mul_scalar(total, 2.0);
    }
    out[2] = tg_sub(tg_mul(e, x), x); /* the value's other reader */
    return out[2] ? 3 : -1;
}

/* Compiled with every pass and with all but fuse_stores: the same bits, since the merged
 * kernel folds in the reduction's own order. Returns how many kernels store as they fold;
 * *sums: how many kernels sum. */
static int check_store_bits(traced *t, int *sums)
{
    tg_plan *plans[2];
    results r[2] = {{0}, {0}};
    for (int k = 0; k < 2; k++) {
        tg_compile_opts opts = {.disable = k ? "fuse_stores" : NULL};
        plans[k] = tg_compile(t->tape, t->n_out, t->out, &opts);
        ck_assert_msg(plans[k] != NULL, "compile: %s", tg_last_error());
        for (int i = 0; i < t->c->n_in; i++)
            ck_assert_int_eq(tg_plan_set_input(plans[k], t->c->in[i].name, t->data[i]), 0);
        run_case(t, plans[k], &r[k]);
    }
    for (int o = 0; o < r[0].n; o++)
        ck_assert_msg(memcmp(r[0].value[o], r[1].value[o],
                             (size_t)r[0].numel[o] * sizeof(double)) == 0,
                      "result %d differs with fuse_stores", o);
    int stores = count_kernels(tg_plan_graph(plans[0]), "+ store");
    *sums = count_kernels(tg_plan_graph(plans[0]), "+ sum(");
    ck_assert_int_eq(count_kernels(tg_plan_graph(plans[1]), "+ store"), 0);
    results_free(&r[0]);
    results_free(&r[1]);
    tg_plan_free(plans[0]);
    tg_plan_free(plans[1]);
    return stores;
}

START_TEST(stores_in_reductions)
{
    /* sums over (N, H, W) of planes of 600 points (a tile is a plane: the value is made
     * where it is stored) and of 35 (a tile is a channel's planes of every image: the store
     * scatters); sums over rows of 7 and of 3000 (cut into tiles); pools; a total; sums
     * that are outputs; one sum, an output; no points at all (nothing merges) */
    const int64_t shapes[][4] = {{2, 3, 20, 30}, {3, 4, 5, 7},  {3, 4, 5, 7},
                                 {2, 2, 2, 3000}, {2, 3, 28, 28}, {2, 3, 20, 30},
                                 {2, 3, 20, 30}, {3, 4, 5, 7},  {2, 3, 0, 30}};
    const int params[] = {0, 0, 1, 1, 2, 3, 4, 5, 0};
    for (int d = 0; d < 18; d++) {
        const int64_t *sh = shapes[d / 2];
        fuse_case c = {.dt = d % 2 ? TG_F64 : TG_F32, .n_in = 2, .build = build_stored,
                       .param = params[d / 2]};
        c.in[0] = (input_spec){"x", 4, {sh[0], sh[1], sh[2], sh[3]}, -2, 2, false};
        c.in[1] = (input_spec){"w", 4, {1, sh[1], 1, 1}, 0.5, 1.25, false};
        c.tol = tol_for(c.dt, false);
        traced t;
        trace_case(&t, &c, 13 + (uint64_t)d);
        compare_case(&c, &t, false);
        int sums, stores = check_store_bits(&t, &sums);
        int want = c.param == 2 || c.param == 3 || sh[2] == 0 ? 0 : 1;
        /* Where it merges, the two sums and the value are one kernel: no sum is left
         * behind (an output must not keep its own kernel beside the merged one). */
        if (stores != want || (want && sums != 1)) {
            tg_plan *plan = compile_case(&t, true);
            print_kernels(tg_plan_graph(plan));
            tg_plan_free(plan);
        }
        ck_assert_msg(stores == want, "case %d: %d kernels store as they fold, not %d", d, stores,
                      want);
        ck_assert_msg(!want || sums == 1, "case %d: %d kernels sum, not 1", d, sums);
        traced_free(&t);
        check_threads(&c);
    }
}
END_TEST

/* ---- reductions over several axes ----------------------------------------------------------- */
static int build_reduce(fuse_case *c, tg_tape *tape, tg_tensor *const *in, tg_tensor **out)
{
    (void)tape;
    tg_tensor *x = in[0];
    tg_tensor *t = tg_add(tg_mul(x, x), tg_exp(tg_neg(x))); /* fused into the reduction */
    uint32_t mask = (uint32_t)c->param;
    out[0] = tg_reduce_mask(TG_OP_SUM, t, mask);
    out[1] = tg_reduce_mask(TG_OP_MAX, t, mask);
    out[2] = tg_reduce_mask(TG_OP_SUM, x, mask); /* straight from a load */
    return out[2] ? 3 : -1;
}

START_TEST(reductions_over_axes)
{
    /* inner, outer, middle, inner + outer, two middle ones, all, batch norm's (N, H, W) */
    const uint32_t masks[] = {0x8, 0x1, 0x2, 0x4, 0x9, 0x5, 0x6, 0xF, 0xD};
    /* one tile; a long row cut into chunks; a chunk of the outer axis; short inner axes;
     * several images or channels per tile; an image's channel per tile, visited image by
     * image (run_reduction_interleaved) */
    const int64_t shapes[][4] = {{3, 4, 5, 6},   {2, 3, 40, 1100}, {300, 2, 3, 5},
                                 {9, 50, 3, 2},  {7, 37, 13, 11},  {5, 301, 2, 3},
                                 {9, 5, 24, 30}, {17, 3, 40, 20}};
    for (int d = 0; d < 2; d++)
        for (size_t s = 0; s < sizeof shapes / sizeof *shapes; s++)
            for (size_t m = 0; m < sizeof masks / sizeof *masks; m++) {
                fuse_case c = {.dt = d ? TG_F64 : TG_F32, .n_in = 1, .build = build_reduce,
                               .param = (int)masks[m]};
                c.in[0] = (input_spec){"x", 4, {0}, -2, 2, false};
                memcpy(c.in[0].shape, shapes[s], sizeof shapes[s]);
                c.tol = tol_for(c.dt, false);
                check_case(&c);
            }
}
END_TEST

/* ---- sums of linear combinations ------------------------------------------------------------- */
/* sum(x * k - y), sum(-(x + y * k)) over (N, H, W) with k per channel: distribute_sums makes
 * them k * sum(x) - sum(y) and -(sum(x) + k * sum(y)); sum(x), sum(y) and the sum(x * y)
 * beside them are one pass. */
static int build_linear_sums(fuse_case *c, tg_tape *tape, tg_tensor *const *in, tg_tensor **out)
{
    (void)c, (void)tape;
    tg_tensor *x = in[0], *y = in[1], *k = in[2];
    const int axes[] = {0, 2, 3};
    out[0] = tg_sum(tg_sub(tg_mul(x, k), y), 3, axes, true);
    out[1] = tg_sum(tg_neg(tg_add(x, tg_mul(y, k))), 3, axes, false);
    out[2] = tg_exp(tg_sum(tg_mul(x, y), 3, axes, true)); /* not linear: left alone */
    return out[2] ? 3 : -1;
}

START_TEST(sums_of_linear_combinations)
{
    for (int d = 0; d < 2; d++) {
        fuse_case c = {.dt = d ? TG_F64 : TG_F32, .n_in = 3, .build = build_linear_sums,
                       .tol = tol_for(d ? TG_F64 : TG_F32, false)};
        c.in[0] = (input_spec){"x", 4, {4, 3, 5, 6}, -1, 2, false};
        c.in[1] = (input_spec){"y", 4, {4, 3, 5, 6}, -2, 1, false};
        c.in[2] = (input_spec){"k", 4, {1, 3, 1, 1}, 0.5, 1.5, false};
        traced t;
        trace_case(&t, &c, 9);
        tg_plan *fused = compare_case(&c, &t, true);
        const tg_graph *g = tg_plan_graph(fused);
        int passes = count_kernels(g, "+ sum(");
        if (passes != 1 || !has_kernel(g, "of 3 values"))
            print_kernels(g);
        ck_assert_msg(passes == 1 && has_kernel(g, "of 3 values"),
                      "%d passes of sums, not one for sum(x), sum(y) and sum(x * y)", passes);
        tg_plan_free(fused);
        traced_free(&t);
    }
}
END_TEST

/* ---- max: ties and NaN ------------------------------------------------------------------------ */
/* Multiples of 0.5 in a pattern with ties everywhere, NaN at point 17 and at `nan_too`. */
static void fill_ties(void *data, tg_dtype dt, int64_t n, int64_t nan_too)
{
    for (int64_t i = 0; i < n; i++) {
        double v = i == 17 || i == nan_too ? NAN : floor((i * 37 % 11) / 4.0) * 0.5;
        if (dt == TG_F64)
            ((double *)data)[i] = v;
        else
            ((float *)data)[i] = (float)v;
    }
}

static int build_max(fuse_case *c, tg_tape *tape, tg_tensor *const *in, tg_tensor **out)
{
    (void)c, (void)tape;
    /* Rounding to multiples of 0.5 makes ties common; the gradient shares among them. */
    tg_tensor *x = tg_mul_scalar(in[0], 1.0);
    tg_tensor *m = tg_max(x, 1, (const int[]){1}, true);
    tg_tensor *loss = tg_sum(tg_mul(m, in[1]), 0, NULL, false);
    tg_tensor *g;
    if (!loss || tg_grad(loss, 1, &x, NULL, &g) != 0)
        return -1;
    out[0] = m;
    out[1] = g;
    out[2] = tg_max(tg_maximum(x, tg_scalar(tape, c->dt, 0.5)), 1, (const int[]){0}, false);
    return out[2] ? 3 : -1;
}

START_TEST(max_ties_and_nan)
{
    for (int d = 0; d < 2; d++) {
        fuse_case c = {.dt = d ? TG_F64 : TG_F32, .n_in = 2, .build = build_max};
        c.in[0] = (input_spec){"x", 3, {5, 7, 3}, 0, 1, false};
        c.in[1] = (input_spec){"w", 3, {5, 1, 3}, -1, 1, false};
        c.tol = tol_for(c.dt, true);
        traced t;
        trace_case(&t, &c, 3);
        fill_ties(t.data[0], c.dt, 5 * 7 * 3, 64); /* NaN in two rows */
        compare_case(&c, &t, false);
        traced_free(&t);
    }
}
END_TEST

/* A max that is not an output, so its kernel counts the ties its gradient divides by
 * (fuse_ties.c): over a long row (each row one piece), over the outer axis (each point a
 * piece), and of a value broadcast along the reduced axis (a whole tile one value: every
 * point ties). */
static int build_max_counted(fuse_case *c, tg_tape *tape, tg_tensor *const *in, tg_tensor **out)
{
    (void)tape;
    tg_tensor *x = tg_mul_scalar(in[0], 1.0);
    int axis = c->param == 1 ? 0 : 1;
    tg_tensor *v = x;
    if (c->param == 2) /* [3, 1] -> [3, 3000] */
        v = tg_expand(x, 2, (const int64_t[]){3, 3000});
    tg_tensor *m = tg_max(tg_mul_scalar(v, 2.0), 1, &axis, true);
    tg_tensor *loss = tg_sum(tg_mul(m, in[1]), 0, NULL, false);
    tg_tensor *g;
    if (!loss || tg_grad(loss, 1, &x, NULL, &g) != 0)
        return -1;
    out[0] = loss;
    out[1] = g;
    return 2;
}

START_TEST(max_tie_counts)
{
    const int64_t x_shape[3][2] = {{6, 40}, {40, 6}, {3, 1}};
    const int64_t w_shape[3][2] = {{6, 1}, {1, 6}, {3, 1}};
    for (int d = 0; d < 2; d++)
        for (int mode = 0; mode < 3; mode++) {
            fuse_case c = {.dt = d ? TG_F64 : TG_F32, .n_in = 2, .build = build_max_counted,
                           .param = mode};
            c.in[0] = (input_spec){"x", 2, {x_shape[mode][0], x_shape[mode][1]}, 0, 1, false};
            c.in[1] = (input_spec){"w", 2, {w_shape[mode][0], w_shape[mode][1]}, -1, 1, false};
            c.tol = tol_for(c.dt, true);
            traced t;
            trace_case(&t, &c, 5);
            int64_t n = x_shape[mode][0] * x_shape[mode][1];
            if (mode < 2)
                fill_ties(t.data[0], c.dt, n, -1);
            tg_plan *fused = compare_case(&c, &t, true);
            const tg_graph *g = tg_plan_graph(fused);
            if (!has_kernel(g, "with tie counts"))
                print_kernels(g);
            ck_assert_msg(has_kernel(g, "with tie counts"), "mode %d: ties not counted", mode);
            ck_assert_msg(!has_kernel(g, "eq} + sum("), "mode %d: a kernel still counts", mode);
            tg_plan_free(fused);
            traced_free(&t);
        }
}
END_TEST

/* ---- movement views folded into loads --------------------------------------------------------- */
static int build_views(fuse_case *c, tg_tape *tape, tg_tensor *const *in, tg_tensor **out)
{
    (void)tape;
    tg_tensor *x = in[0]; /* [2, 3, 8, 12] */
    tg_tensor *r = tg_relu(tg_add_scalar(tg_mul(x, x), -0.5));
    /* permute + slice + reshape + expand of an unmaterialized chain */
    tg_tensor *p = tg_permute(r, (const int[]){0, 2, 3, 1});                   /* [2,8,12,3] */
    tg_tensor *s = tg_slice(p, (const int64_t[]){0, 1, 2, 0}, (const int64_t[]){2, 7, 10, 3});
    tg_tensor *q = tg_reshape(s, 3, (const int64_t[]){2, 6, 24});
    tg_tensor *e = tg_expand(tg_reshape(in[1], 3, (const int64_t[]){1, 6, 1}), 3,
                             (const int64_t[]){2, 6, 24});
    out[0] = tg_mul(tg_exp(q), e);
    /* windows: overlapping (kernel 3, stride 1) and tiling (2, 2) */
    int k = c->param;
    tg_tensor *cols = tg_im2col(r, k, k, k == 2 ? 2 : 1, k == 2 ? 2 : 1);
    tg_tensor *win = tg_reshape(cols, 5, (const int64_t[]){cols->shape[0], cols->shape[1], k * k,
                                                           cols->shape[4], cols->shape[5]});
    out[1] = tg_max(win, 1, (const int[]){2}, false);
    out[2] = tg_sum(tg_mul(cols, cols), 2, (const int[]){2, 3}, true);
    /* a permute as an output: a kernel that only moves data */
    out[3] = tg_permute(x, (const int[]){3, 1, 0, 2});
    /* transposes of the windows, back onto the image */
    out[4] = tg_col2im(tg_mul_scalar(cols, 2.0), 8, 12, k == 2 ? 2 : 1, k == 2 ? 2 : 1);
    /* the window maxima repeated k x k times (nearest upsampling): a gather whose innermost
     * axis repeats one element (the pooled value over its window, in a pool's backward) */
    int64_t oh = out[1]->shape[2], ow = out[1]->shape[3];
    tg_tensor *up = tg_reshape(out[1], 6, (const int64_t[]){2, 3, oh, 1, ow, 1});
    up = tg_expand(up, 6, (const int64_t[]){2, 3, oh, k, ow, k});
    out[5] = tg_exp(tg_reshape(up, 4, (const int64_t[]){2, 3, oh * k, ow * k}));
    return out[5] ? 6 : -1;
}

START_TEST(movement_views)
{
    const char *disable[] = {NULL, "simplify"}; /* windows as reshape/permute, or as im2col */
    for (int d = 0; d < 2; d++)
        for (int k = 2; k <= 3; k++)
            for (int v = 0; v < 2; v++) {
                fuse_case c = {.dt = d ? TG_F64 : TG_F32, .n_in = 2, .build = build_views,
                               .param = k, .disable = disable[v]};
                c.in[0] = (input_spec){"x", 4, {2, 3, 8, 12}, -1.5, 1.5, false};
                c.in[1] = (input_spec){"s", 1, {6}, -1, 1, false};
                c.tol = tol_for(c.dt, false);
                check_case(&c);
            }
}
END_TEST

/* ---- where, lt, eq, cast --------------------------------------------------------------------- */
static int build_compare(fuse_case *c, tg_tape *tape, tg_tensor *const *in, tg_tensor **out)
{
    tg_tensor *x = in[0], *y = in[1];
    tg_dtype other = c->dt == TG_F64 ? TG_F32 : TG_F64;
    tg_tensor *half = tg_scalar(tape, c->dt, 0.5);
    tg_tensor *m = tg_where(tg_lt(x, y), tg_sub(y, x), tg_mul(x, half));
    tg_tensor *eq = tg_eq(tg_cast(tg_cast(x, other), c->dt), x); /* round trips are exact */
    tg_tensor *wide = tg_cast(tg_add(m, eq), other);
    out[0] = tg_cast(tg_mul(wide, tg_cast(y, other)), c->dt);
    out[1] = tg_sum(tg_where(tg_eq(tg_mul_scalar(x, 0), y), x, m), 1, (const int[]){1}, false);
    /* One comparison as two wheres' condition (computed inside both: ReLU's mask in its
     * backward), and one also read as a value (which must then be made). */
    tg_tensor *k = tg_lt(y, x), *k2 = tg_eq(tg_mul_scalar(x, 2), tg_add(x, x));
    out[2] = tg_add(tg_where(k, x, y), tg_where(k, m, half));
    out[3] = tg_mul(tg_where(k2, y, x), tg_add(k2, x));
    return out[3] ? 4 : -1;
}

START_TEST(where_lt_eq_cast)
{
    for (int d = 0; d < 2; d++) {
        fuse_case c = {.dt = d ? TG_F64 : TG_F32, .n_in = 2, .build = build_compare};
        c.in[0] = (input_spec){"x", 2, {9, 33}, -1, 1, false};
        c.in[1] = (input_spec){"y", 2, {1, 33}, -1, 1, false};
        c.tol = tol_for(c.dt, false);
        check_case(&c);
    }
}
END_TEST

/* ---- empty tensors and single values ------------------------------------------------------- */
static int build_small(fuse_case *c, tg_tape *tape, tg_tensor *const *in, tg_tensor **out)
{
    (void)c;
    tg_tensor *e = in[0], *s = in[1]; /* [0, 3] and [] */
    out[0] = tg_sum(tg_exp(e), 1, (const int[]){0}, true);  /* zeros */
    out[1] = tg_mul(tg_add_scalar(e, 1), s);                  /* empty */
    out[2] = tg_sqrt(tg_add(tg_mul(s, s), tg_scalar(tape, c->dt, 1)));
    out[3] = tg_expand(tg_reshape(out[2], 2, SHAPE(1, 1)), 2, SHAPE(4, 5));
    return out[3] ? 4 : -1;
}

START_TEST(empty_and_single_values)
{
    for (int d = 0; d < 2; d++) {
        fuse_case c = {.dt = d ? TG_F64 : TG_F32, .n_in = 2, .build = build_small};
        c.in[0] = (input_spec){"e", 2, {0, 3}, -1, 1, false};
        c.in[1] = (input_spec){"s", 0, {0}, -1, 1, false};
        c.tol = tol_for(c.dt, true);
        check_case(&c);
    }
}
END_TEST

/* ---- a training step: conv, batch norm, relu, max pool, linear, cross-entropy, SGD -------- */
typedef struct {
    tg_conv2d_layer conv;
    tg_batchnorm_layer bn;
    tg_linear_layer fc;
    tg_params *params;
    tg_optim *opt;
} small_net;

static small_net net; /* the training case's model, made before tracing */

/* Images of c->param x c->param pixels. */
static void setup_net(fuse_case *c, tg_tape *tape, tg_rng *rng)
{
    int64_t half = c->param / 2;
    net.params = tg_params_new();
    ck_assert_int_eq(tg_conv2d_layer_init(&net.conv, tape, rng, c->dt, 1, 4, 3, 1, 1, false), 0);
    ck_assert_int_eq(tg_batchnorm_layer_init(&net.bn, tape, c->dt, 4), 0);
    ck_assert_int_eq(tg_linear_layer_init(&net.fc, tape, rng, c->dt, 4 * half * half, 10, true),
                     0);
    ck_assert_int_eq(tg_conv2d_layer_register(&net.conv, net.params, "conv"), 0);
    ck_assert_int_eq(tg_batchnorm_layer_register(&net.bn, net.params, "bn"), 0);
    ck_assert_int_eq(tg_linear_layer_register(&net.fc, net.params, "fc"), 0);
    tg_sgd_opts sgd = {.lr = 0.1, .momentum = 0.9};
    net.opt = tg_sgd_new(net.params, &sgd);
    ck_assert_ptr_nonnull(net.opt);
}

/* The step's loss; the parameters, running estimates and momentum it updates are watched. */
static int build_step(fuse_case *c, tg_tape *tape, tg_tensor *const *in, tg_tensor **out)
{
    (void)tape;
    tg_tensor *h = tg_batchnorm_layer_forward(&net.bn, tg_conv2d_layer_forward(&net.conv, in[0]),
                                              true);
    h = tg_max_pool2d(tg_relu(h), 2, 2, 0);
    tg_tensor *loss = tg_cross_entropy(tg_linear_layer_forward(&net.fc, tg_flatten(h, 1)), in[1]);
    tg_tensor *trainable[8], *grads[8];
    size_t n = tg_params_trainable(net.params, trainable, 8);
    if (!loss || tg_grad(loss, (int)n, trainable, NULL, grads) != 0 ||
        tg_optim_step(net.opt, grads) != 0)
        return -1;
    for (size_t i = 0; i < tg_params_count(net.params); i++)
        c->watch[c->n_watch++] = tg_params_get(net.params, i)->tensor;
    tg_params *state = tg_optim_state(net.opt);
    for (size_t i = 0; i < tg_params_count(state); i++)
        c->watch[c->n_watch++] = tg_params_get(state, i)->tensor;
    out[0] = loss;
    return 1;
}

START_TEST(training_step)
{
    for (int d = 0; d < 2; d++) {
        fuse_case c = {.dt = d ? TG_F64 : TG_F32, .n_in = 2, .build = build_step,
                       .setup = setup_net, .param = 12};
        c.in[0] = (input_spec){"x", 4, {4, 1, 12, 12}, 0, 1, false};
        c.in[1] = (input_spec){"y", 1, {4}, 0, 10, true}; /* labels */
        c.tol = tol_for(c.dt, false);
        traced t;
        trace_case(&t, &c, 5);
        tg_plan *fused = compare_case(&c, &t, true);
        /* batch norm's normalize, relu and the 2x2 max pool: one kernel, whose relu output
         * is never written */
        ck_assert_msg(has_kernel(tg_plan_graph(fused), "fused{sub mul add lt where} + max("),
                      "normalize + relu + pool is not one kernel");
        /* The gradient routed back through the pool to the relu output reads the pooled
         * values repeated over each window (a gather). Compiled, that costs the pooled
         * values' own bytes, and both of batch norm's backward kernels (its sums, its input
         * gradient) recompute relu and test for the window's max, writing nothing between
         * them; interpreted, the gather costs its points, so the gradient is written once
         * beside the sums and the input gradient's kernel reads it back. Either way the count
         * of ties in each window, which the gradient divides by, is counted by the forward's
         * pool kernel (fuse_ties.c). */
        tg_plan *interpreted = compile_with(&t, true, true);
        int window_tests = count_kernels(tg_plan_graph(fused), "lt where eq"),
            window_tests_i = count_kernels(tg_plan_graph(interpreted), "lt where eq");
        if (window_tests != 2)
            print_kernels(tg_plan_graph(fused));
        if (window_tests_i != 1)
            print_kernels(tg_plan_graph(interpreted));
        ck_assert_msg(window_tests == 2 && window_tests_i == 1,
                      "%d kernels test for the window's max compiled, not 2, and %d "
                      "interpreted, not 1", window_tests, window_tests_i);
        ck_assert(!has_kernel(tg_plan_graph(fused), "+ store"));
        tg_plan_free(interpreted);
        ck_assert_msg(has_kernel(tg_plan_graph(fused), "+ max(") &&
                          has_kernel(tg_plan_graph(fused), "with tie counts"),
                      "the pool's kernel does not count ties");
        /* the linear layer's weight, transposed for its matmul: libxsmm's transposes, 64
         * columns (of 144) at a time and the rest (kernels/fused_transpose.c) */
        ck_assert_msg(has_kernel(tg_plan_graph(fused), "fused{copy} transposed by libxsmm"),
                      "the weight's transpose is not libxsmm's");
        tg_plan_free(fused);
        tg_optim_free(net.opt);
        tg_params_free(net.params);
        traced_free(&t);
    }
}
END_TEST

/* ---- pooling windows: reductions read in place, window by window ------------------------------ */
/* Max and average pools of a fused chain (and 3x3 and 2x2 max pools of the input, with its
 * NaN), their gradients:
 * the executor keeps such a reduction's axes in the order memory has them ([.., i, a, j, b])
 * and folds each row's windows side by side (kernels/fused.c, fold_windows). */
static void check_threads(fuse_case *c);

static int build_pools(fuse_case *c, tg_tape *tape, tg_tensor *const *in, tg_tensor **out)
{
    tg_tensor *x = tg_mul_scalar(in[0], 1.0);
    tg_tensor *y = tg_relu(tg_add_scalar(tg_mul_scalar(x, 1.5), -0.2));
    tg_tensor *mp = tg_max_pool2d(y, 2, 2, 0), *ap = tg_avg_pool2d(y, 2, 2, 0);
    tg_tensor *m3 = tg_max_pool2d(x, 3, 3, 0);
    tg_tensor *loss = tg_add(tg_sum(tg_mul(mp, in[1]), 0, NULL, false),
                             tg_sum(tg_mul(ap, tg_exp(in[1])), 0, NULL, false));
    loss = tg_add(loss, tg_sum(tg_mul(m3, tg_scalar(tape, c->dt, 0.5)), 0, NULL, false));
    tg_tensor *g;
    if (!loss || tg_grad(loss, 1, &x, NULL, &g) != 0)
        return -1;
    out[0] = mp;
    out[1] = ap;
    out[2] = m3;
    out[3] = loss;
    out[4] = g;
    out[5] = tg_max_pool2d(x, 2, 2, 0); /* of x itself: the NaN the relu above drops */
    return out[5] ? 6 : -1;
}

static void pool_case(fuse_case *c, tg_dtype dt, const int64_t *shape)
{
    *c = (fuse_case){.dt = dt, .n_in = 2, .build = build_pools, .tol = tol_for(dt, false)};
    c->in[0] = (input_spec){"x", 4, {shape[0], shape[1], shape[2], shape[3]}, -1, 1, false};
    c->in[1] = (input_spec){"w", 4, {shape[0], shape[1], shape[2] / 2, shape[3] / 2}, -1, 1,
                            false};
}

START_TEST(pooling_windows)
{
    /* small rows; the reference model's two shapes (a tile of one channel's 28x28, 14x14);
     * rows of 3 windows (shorter than one vector of the backward's spread, even in f64); the
     * backward spreads rows of 6 and 7 windows four and four, of 14 eight and eight, each
     * stored to both rows of its windows */
    const int64_t shapes[][4] = {{3, 5, 6, 12}, {2, 3, 28, 28}, {4, 6, 14, 14}, {2, 3, 6, 6}};
    for (int d = 0; d < 2; d++)
        for (size_t s = 0; s < sizeof shapes / sizeof *shapes; s++) {
            fuse_case c;
            pool_case(&c, d ? TG_F64 : TG_F32, shapes[s]);
            traced t;
            trace_case(&t, &c, 5 + s);
            /* ties (multiples of 0.25) everywhere, and in the first case NaN at each of a 2x2
             * window's four places (rows of 12: 1, 14, 17 and 100 are [0][1], [1][0],
             * [1][1] and [0][0] of their windows) */
            int64_t n = shapes[s][0] * shapes[s][1] * shapes[s][2] * shapes[s][3];
            for (int64_t i = 0; i < n; i++) {
                double v = floor((double)(i * 37 % 13) / 2.0) * 0.25 - 0.5;
                if (s == 0 && (i == 1 || i == 14 || i == 17 || i == 100))
                    v = NAN;
                if (c.dt == TG_F64)
                    ((double *)t.data[0])[i] = v;
                else
                    ((float *)t.data[0])[i] = (float)v;
            }
            compare_case(&c, &t, false);
            traced_free(&t);
            if (s > 0)
                check_threads(&c);
        }
}
END_TEST

/* ---- determinism across thread counts ------------------------------------------------------- */
/* Compiled for two threads, run with one and with two: the same bits. */
static void check_threads(fuse_case *c)
{
    traced t;
    trace_case(&t, c, 11);
    ck_assert_int_eq(tg_set_num_threads(2), 0);
    tg_plan *plan = compile_case(&t, true);
    results one = {0}, two = {0};
    run_case(&t, plan, &two);
    ck_assert_int_eq(tg_set_num_threads(1), 0);
    run_case(&t, plan, &one);
    for (int o = 0; o < one.n; o++)
        ck_assert_msg(memcmp(one.value[o], two.value[o], (size_t)one.numel[o] * sizeof(double)) == 0,
                      "result %d differs between 1 and 2 threads", o);
    results_free(&one);
    results_free(&two);
    tg_plan_free(plan);
    traced_free(&t);
}

START_TEST(threads_bit_identical)
{
    for (int d = 0; d < 2; d++) {
        fuse_case bn = {.dt = d ? TG_F64 : TG_F32, .n_in = 4, .build = build_batchnorm};
        bn.in[0] = (input_spec){"x", 4, {16, 4, 24, 40}, -1, 3, false};
        bn.in[1] = (input_spec){"w", 4, {16, 4, 24, 40}, -1, 1, false};
        bn.in[2] = (input_spec){"gamma", 1, {4}, 0.5, 1.5, false};
        bn.in[3] = (input_spec){"beta", 1, {4}, -0.5, 0.5, false};
        check_threads(&bn);
        /* 14x14 planes, 5 a tile (segmented), 24 channels: units of 5, 5, 5, 5 and 4 */
        bn.in[0].shape[1] = bn.in[1].shape[1] = bn.in[2].shape[0] = bn.in[3].shape[0] = 24;
        bn.in[0].shape[2] = bn.in[1].shape[2] = bn.in[0].shape[3] = bn.in[1].shape[3] = 14;
        check_threads(&bn);
        fuse_case step = {.dt = d ? TG_F64 : TG_F32, .n_in = 2, .build = build_step,
                          .setup = setup_net, .param = 28};
        step.in[0] = (input_spec){"x", 4, {16, 1, 28, 28}, 0, 1, false};
        step.in[1] = (input_spec){"y", 1, {16}, 0, 10, true};
        check_threads(&step);
        tg_optim_free(net.opt);
        tg_params_free(net.params);
    }
}
END_TEST

/* ---- native kernels ------------------------------------------------------------------------- */
/* How many fused programs of g run as machine code. */
static int count_native(const tg_graph *g)
{
    int count = 0;
    for (int i = 0; i < g->n; i++)
        if (g->nodes[i].op == TG_PLAN_OP_FUSED)
            count += ((const tg_fused_program *)g->nodes[i].payload)->native != NULL;
    return count;
}

static fuse_case batchnorm_case(tg_dtype dt)
{
    fuse_case c = {.dt = dt, .n_in = 4, .build = build_batchnorm, .tol = tol_for(dt, false)};
    c.in[0] = (input_spec){"x", 4, {6, 5, 9, 7}, -1, 3, false};
    c.in[1] = (input_spec){"w", 4, {6, 5, 9, 7}, -1, 1, false};
    c.in[2] = (input_spec){"gamma", 1, {5}, 0.5, 1.5, false};
    c.in[3] = (input_spec){"beta", 1, {5}, -0.5, 0.5, false};
    return c;
}

/* Batch norm's kernels (sums of two values, a sum that stores, applies) and a max pool's
 * (a max with tie counts over windows, the pooled gradient's sums over windows) compiled
 * natively, against the interpreter. */
START_TEST(native_kernels_run)
{
    for (int d = 0; d < 2; d++) {
        fuse_case c = batchnorm_case(d ? TG_F64 : TG_F32);
        if (d) /* more images than chunks, not a multiple of their number */
            c.in[0].shape[0] = c.in[1].shape[0] = 37;
        traced t;
        trace_case(&t, &c, 7);
        tg_plan *fused = compare_case(&c, &t, true);
        const tg_graph *g = tg_plan_graph(fused);
        ck_assert_msg(count_native(g) >= 3, "%d native kernels", count_native(g));
        /* the sums over (N, H, W) by chunks of images, one partial sum per chunk */
        ck_assert_msg(count_kernels(g, "native in ") >= 2, "no chunked sums");
        tg_plan_free(fused);
        traced_free(&t);
    }
    fuse_case pool = {.dt = TG_F32, .n_in = 4, .build = build_bn_pool, .tol = 1e-5};
    pool.in[0] = (input_spec){"x", 4, {4, 6, 14, 14}, -1, 3, false};
    pool.in[1] = (input_spec){"w", 4, {4, 6, 7, 7}, -1, 1, false};
    pool.in[2] = (input_spec){"gamma", 1, {6}, 0.5, 1.5, false};
    pool.in[3] = (input_spec){"beta", 1, {6}, -0.5, 0.5, false};
    traced t;
    trace_case(&t, &pool, 9);
    tg_plan *fused = compare_case(&pool, &t, true);
    const tg_graph *g = tg_plan_graph(fused);
    bool max_native = false, pooled_sums_native = false;
    for (int i = 0; i < g->n; i++) {
        const tg_fused_program *p = g->nodes[i].payload;
        if (g->nodes[i].op != TG_PLAN_OP_FUSED || !p->native)
            continue;
        max_native |= p->count_ties;
        pooled_sums_native |= p->reduce_op == TG_OP_SUM && p->ndim == 6;
    }
    ck_assert(max_native && pooled_sums_native);
    tg_plan_free(fused);
    traced_free(&t);
}
END_TEST

/* A wrong instruction compiled into the native code is caught as the interpreter's is. */
START_TEST(native_planted_instruction_is_caught)
{
    fuse_case c = batchnorm_case(TG_F64);
    traced t;
    trace_case(&t, &c, 11);
    tg_plan *fused = compare_case(&c, &t, true), *plain = compile_case(&t, false);
    tg_graph *g = (tg_graph *)tg_plan_graph(fused);
    bool planted = false;
    for (int i = 0; i < g->n && !planted; i++) {
        tg_fused_program *p = g->nodes[i].payload;
        if (g->nodes[i].op != TG_PLAN_OP_FUSED || !p->native)
            continue;
        for (int k = 0; k < p->n_instrs && !planted; k++) {
            if (p->instr[k].op == TG_OP_MUL) {
                p->instr[k].op = TG_OP_ADD;
                planted = true;
            }
        }
    }
    ck_assert(planted);
    int count;
    const char *why;
    void *code = tg_native_load(g, NULL, &count, &why); /* compiled again, with the plant */
    ck_assert_msg(code != NULL, "no native code: %s", why ? why : "?");
    results a = {0}, b = {0};
    run_case(&t, fused, &a);
    run_case(&t, plain, &b);
    ck_assert_msg(rel_error(&a, &b) > 1e-3, "the planted add for mul went unnoticed");
    results_free(&a);
    results_free(&b);
    tg_plan_free(fused);
    tg_native_unload(code);
    tg_plan_free(plain);
    traced_free(&t);
}
END_TEST

/* Without a compiler the plan is built and its kernels interpreted. */
START_TEST(native_without_compiler)
{
    char dir[] = "/tmp/tg-native-test-XXXXXX"; /* an empty cache: nothing compiled before */
    ck_assert_ptr_nonnull(mkdtemp(dir));
    setenv("TG_NATIVE_CACHE", dir, 1);
    setenv("TG_CC", "/nonexistent/cc", 1);
    fuse_case c = batchnorm_case(TG_F32);
    traced t;
    trace_case(&t, &c, 13);
    tg_plan *fused = compare_case(&c, &t, true);
    ck_assert_int_eq(count_native(tg_plan_graph(fused)), 0);
    tg_plan_free(fused);
    traced_free(&t);
    unsetenv("TG_CC");
    unsetenv("TG_NATIVE_CACHE");
    ck_assert_int_eq(rmdir(dir), 0); /* nothing left behind */
}
END_TEST

/* ---- a planted bug must be caught -------------------------------------------------------------- */
START_TEST(planted_wrong_instruction_is_caught)
{
    fuse_case c = {.dt = TG_F64, .n_in = 3, .build = build_chain, .tol = 1e-12};
    c.in[0] = (input_spec){"x", 3, {4, 5, 37}, -2, 2, false};
    c.in[1] = (input_spec){"b", 3, {1, 5, 1}, 0.5, 2, false};
    c.in[2] = (input_spec){"w", 2, {1, 37}, -1, 1, false};
    traced t;
    trace_case(&t, &c, 42);
    tg_plan *fused = compare_case(&c, &t, true), *plain = compile_case(&t, false);
    tg_graph *g = (tg_graph *)tg_plan_graph(fused);
    bool planted = false;
    for (int i = 0; i < g->n && !planted; i++) {
        tg_fused_program *p = g->nodes[i].payload;
        for (int k = 0; g->nodes[i].op == TG_PLAN_OP_FUSED && k < p->n_instrs && !planted; k++) {
            if (p->instr[k].op == TG_OP_ADD) {
                p->instr[k].op = TG_OP_SUB;
                ck_assert_int_eq(tg_fused_prepare(g, &g->nodes[i]), 0); /* as a plan build would */
                planted = true;
            }
        }
    }
    ck_assert(planted);
    results a = {0}, b = {0};
    run_case(&t, fused, &a);
    run_case(&t, plain, &b);
    ck_assert_msg(rel_error(&a, &b) > 1e-3, "the planted sub for add went unnoticed");
    results_free(&a);
    results_free(&b);
    tg_plan_free(fused);
    tg_plan_free(plain);
    traced_free(&t);
}
END_TEST

/* ---- the executor on programs written by hand --------------------------------------------------- */
/* A graph with one f64 input [2, 3] and a FUSED node over it; prog says what it computes. */
static int hand_graph(tg_graph *g, tg_fused_program *prog, int64_t out_numel)
{
    tg_graph_init(g);
    double *data = malloc(6 * sizeof *data);
    for (int i = 0; i < 6; i++)
        data[i] = i - 2.5;
    tg_ir_node leaf = {.op = TG_OP_LEAF, .dtype = TG_F64, .ndim = 2, .shape = {2, 3},
                       .leaf = TG_LEAF_CONST, .data = data, .tape_id = SIZE_MAX};
    int x = tg_graph_add(g, &leaf);
    tg_ir_node f = {.op = TG_PLAN_OP_FUSED, .dtype = TG_F64, .ndim = 1, .shape = {out_numel},
                    .n_in = 1, .in = {x}, .payload = prog, .tape_id = SIZE_MAX};
    return tg_graph_add(g, &f);
}

/* A value computed per plane inside a segmented tile: y = x exp(s), s[c] = x[0, c, 0, 0],
 * x [2, 17, 8, 8] (planes of 64 points, 16 channels of an image in a tile, then a tile of one
 * plane): exp runs once per plane, on that plane's s. */
START_TEST(executor_per_plane_values)
{
    enum { N = 2, C = 17, P = 64 };
    tg_graph g;
    tg_graph_init(&g);
    double *data = malloc(N * C * P * sizeof *data);
    for (int i = 0; i < N * C * P; i++)
        data[i] = 0.01 * (i % 97) - 0.4;
    tg_ir_node leaf = {.op = TG_OP_LEAF, .dtype = TG_F64, .ndim = 4, .shape = {N, C, 8, 8},
                       .leaf = TG_LEAF_CONST, .data = data, .tape_id = SIZE_MAX};
    int x = tg_graph_add(&g, &leaf);
    tg_fused_program *p = tg_fused_program_new();
    *p = (tg_fused_program){.ndim = 3, .shape = {N, C, P}, .reduce_op = TG_OP_LEAF,
                            .n_loads = 2, .n_instrs = 2, .result = 3};
    p->load[0] = (tg_fused_load){.input = 0, .dtype = TG_F64, .stride = {C * P, P, 1}};
    p->load[1] = (tg_fused_load){.input = 0, .dtype = TG_F64, .stride = {0, P, 0}};
    p->instr[0] = (tg_fused_instr){.op = TG_OP_EXP, .dtype = TG_F64, .arg = {1}};
    p->instr[1] = (tg_fused_instr){.op = TG_OP_MUL, .dtype = TG_F64, .arg = {0, 2}};
    tg_ir_node fn = {.op = TG_PLAN_OP_FUSED, .dtype = TG_F64, .ndim = 1, .shape = {N * C * P},
                     .n_in = 1, .in = {x}, .payload = p, .tape_id = SIZE_MAX};
    int f = tg_graph_add(&g, &fn);
    ck_assert_int_eq(tg_fused_prepare(&g, &g.nodes[f]), 0);
    char what[128];
    tg_fused_describe(&g.nodes[f], what, sizeof what);
    ck_assert_str_eq(what, "fused{exp mul} (16 planes a tile)");
    double *y = malloc(N * C * P * sizeof *y);
    void *scratch = aligned_alloc(64, g.nodes[f].scratch_bytes ? g.nodes[f].scratch_bytes : 64);
    const void *in[1] = {data};
    tg_fused_run(&g.nodes[f], y, in, scratch);
    for (int i = 0; i < N * C * P; i++)
        ck_assert_double_eq(y[i], data[i] * exp(data[i / P % C * P]));
    free(y);
    free(scratch);
    tg_graph_free(&g);
}
END_TEST

START_TEST(executor_hand_programs)
{
    /* y[j] = max_i (x[i, j] * 2 - 1), read transposed: iteration [3, 2], reduce axis 1; the
     * multiply by 2 runs inside the subtract's loop (a chain, with a constant operand) */
    tg_fused_program *p = tg_fused_program_new();
    *p = (tg_fused_program){.ndim = 2, .shape = {3, 2}, .reduce_op = TG_OP_MAX,
                            .reduce_mask = 2, .n_loads = 1, .n_instrs = 4, .result = 4};
    p->load[0] = (tg_fused_load){.input = 0, .dtype = TG_F64, .stride = {1, 3}};
    p->instr[0] = (tg_fused_instr){.op = TG_OP_LEAF, .dtype = TG_F64, .value = 2};
    p->instr[1] = (tg_fused_instr){.op = TG_OP_MUL, .dtype = TG_F64, .arg = {0, 1}};
    p->instr[2] = (tg_fused_instr){.op = TG_OP_LEAF, .dtype = TG_F64, .value = 1};
    p->instr[3] = (tg_fused_instr){.op = TG_OP_SUB, .dtype = TG_F64, .arg = {2, 3}};
    tg_graph g;
    int f = hand_graph(&g, p, 3);
    ck_assert_int_eq(tg_fused_prepare(&g, &g.nodes[f]), 0);
    char what[128];
    tg_fused_describe(&g.nodes[f], what, sizeof what);
    ck_assert_str_eq(what, "fused{mul sub} + max(1) (1 chained)");
    double y[3];
    void *scratch = aligned_alloc(64, g.nodes[f].scratch_bytes ? g.nodes[f].scratch_bytes : 64);
    const void *in[1] = {g.nodes[0].data};
    tg_fused_run(&g.nodes[f], y, in, scratch);
    for (int j = 0; j < 3; j++)
        ck_assert_double_eq(y[j], fmax(2 * (j - 2.5) - 1, 2 * (3 + j - 2.5) - 1));

    /* Programs the executor refuses, rather than reading outside an input. */
    p->load[0].stride[1] = 4; /* reaches element 2 + 4 = 6 of 6 */
    ck_assert_int_eq(tg_fused_prepare(&g, &g.nodes[f]), TG_ERR_ARG);
    p->load[0].stride[1] = 3;
    p->instr[3].arg[1] = 4; /* reads itself */
    ck_assert_int_eq(tg_fused_prepare(&g, &g.nodes[f]), TG_ERR_ARG);
    p->instr[3].arg[1] = 3;
    p->instr[1].op = TG_OP_MATMUL;
    ck_assert_int_eq(tg_fused_prepare(&g, &g.nodes[f]), TG_ERR_ARG);
    p->instr[1].op = TG_OP_MUL;
    p->reduce_mask = 3; /* one output, but the node has three */
    ck_assert_int_eq(tg_fused_prepare(&g, &g.nodes[f]), TG_ERR_ARG);
    free(scratch);
    tg_graph_free(&g);
}
END_TEST

int main(void)
{
    tg_test_plans_everywhere();
    Suite *s = suite_create("fuse");
    TCase *tc = tcase_create("fuse");
    tcase_set_timeout(tc, 300);
    tcase_add_test(tc, elementwise_broadcast);
    tcase_add_test(tc, batchnorm_statistics_and_normalize);
    tcase_add_test(tc, reductions_over_axes);
    tcase_add_test(tc, max_ties_and_nan);
    tcase_add_test(tc, max_tie_counts);
    tcase_add_test(tc, pooling_windows);
    tcase_add_test(tc, sums_of_linear_combinations);
    tcase_add_test(tc, movement_views);
    tcase_add_test(tc, scaled_differences);
    tcase_add_test(tc, chains);
    tcase_add_test(tc, segmented_tiles);
    tcase_add_test(tc, segmented_pooling);
    tcase_add_test(tc, stores_in_reductions);
    tcase_add_test(tc, where_lt_eq_cast);
    tcase_add_test(tc, empty_and_single_values);
    tcase_add_test(tc, training_step);
    tcase_add_test(tc, threads_bit_identical);
    tcase_add_test(tc, planted_wrong_instruction_is_caught);
    tcase_add_test(tc, native_kernels_run);
    tcase_add_test(tc, native_planted_instruction_is_caught);
    tcase_add_test(tc, native_without_compiler);
    tcase_add_test(tc, executor_hand_programs);
    tcase_add_test(tc, executor_per_plane_values);
    suite_add_tcase(s, tc);
    return tg_run_suite(s);
}
