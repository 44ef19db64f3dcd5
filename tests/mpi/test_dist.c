/* The all-reduce primitive and synchronized batch norm across ranks, run under mpirun by
 * run_mpi_tests.sh (2 ranks; 1 works too). No check framework: check forks, and MPI
 * processes must not. Every rank checks and prints its failures; the exit status is non-zero
 * on any.
 *
 *   values         eager all-reduce of rank-dependent values, f32 and f64
 *   gradient       d(sum over ranks of sum(allreduce(x) * w_r))/dx_r = sum over ranks of w:
 *                  the rule is an all-reduce (planted identity rule: must fail)
 *   second order   the gradient of a gradient through the all-reduce
 *   plan           the same traced and compiled, with all passes and with none
 *   grads          tg_allreduce_grads: one all-reduce of several gradients, averaged
 *   failure        a failed all-reduce: NULL eagerly, TG_ERR_COMM from a plan, no update
 *   sync_bn        synchronized batch norm on each rank's shard of a batch against plain batch
 *                  norm of the whole batch on one tape (no communicator): output, gradients of
 *                  the shard and of gamma/beta, running estimates; eager and compiled */
#include "tapegrad.h"
#include "tapegrad_dist.h"
#include "tapegrad_nn.h"
#include "internal.h"
#include "dist/dist_internal.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static int failures, rank_id;

#define CHECK(cond, ...)                                                                        \
    do {                                                                                        \
        if (!(cond)) {                                                                          \
            fprintf(stderr, "rank %d: FAILED %s:%d: ", rank_id, __FILE__, __LINE__);           \
            fprintf(stderr, __VA_ARGS__);                                                       \
            fprintf(stderr, " (last error: %s)\n", tg_last_error());                           \
            failures++;                                                                         \
        }                                                                                       \
    } while (0)

static double max_rel_diff(const double *a, const double *b, int64_t n)
{
    double worst = 0, scale = 1;
    for (int64_t i = 0; i < n; i++)
        scale = fmax(scale, fabs(b[i]));
    for (int64_t i = 0; i < n; i++)
        worst = fmax(worst, fabs(a[i] - b[i]) / scale);
    return worst;
}

/* ---- the primitive ------------------------------------------------------------------------ */
static void test_values(tg_comm *comm)
{
    int r = tg_comm_rank(comm), size = tg_comm_size(comm);
    tg_tape *tape = tg_tape_new();
    tg_tape_set_comm(tape, comm);
    for (int d = 0; d < 2; d++) {
        tg_dtype dt = d ? TG_F64 : TG_F32;
        tg_tensor *x = tg_full(tape, dt, 2, (int64_t[]){2, 3}, r + 1.0);
        tg_tensor *y = tg_allreduce_sum(x);
        CHECK(y != NULL, "allreduce_sum (%s)", tg_dtype_name(dt));
        for (int64_t i = 0; y && i < 6; i++) {
            double v = d ? ((double *)tg_data(y))[i] : ((float *)tg_data(y))[i];
            CHECK(v == size * (size + 1) / 2.0, "element %lld is %g", (long long)i, v);
        }
    }
    tg_tape_free(tape);
    CHECK(tg_comm_allreduce_sum(comm, NULL, NULL, 1, TG_F32) == TG_ERR_NULL, "NULL buffers");
    float one = 1;
    CHECK(tg_comm_allreduce_sum(comm, &one, &one, -1, TG_F32) == TG_ERR_ARG, "negative count");
}

/* Per-rank weights: w_r[i] = (r + 1) * (i + 1); their sum over ranks. */
static tg_tensor *rank_weights(tg_tape *tape, int r)
{
    double w[6];
    for (int i = 0; i < 6; i++)
        w[i] = (r + 1.0) * (i + 1.0);
    return tg_from_data(tape, TG_F64, 1, (int64_t[]){6}, w);
}

static double weight_sum(int size, int i) { return size * (size + 1) / 2.0 * (i + 1.0); }

static void test_gradient(tg_comm *comm, bool planted)
{
    int r = tg_comm_rank(comm), size = tg_comm_size(comm);
    tg_vjp_fn old = NULL;
    if (planted) /* the identity: right for one rank only */
        old = tg_debug_swap_vjp(TG_OP_ALLREDUCE, tg_op_table[TG_OP_RESHAPE].vjp);
    tg_tape *tape = tg_tape_new();
    tg_tape_set_comm(tape, comm);
    tg_tensor *x = tg_full(tape, TG_F64, 1, (int64_t[]){6}, 0.5 * r);
    tg_tensor *loss = tg_sum(tg_mul(tg_allreduce_sum(x), rank_weights(tape, r)), 0, NULL, false);
    tg_tensor *g = NULL;
    CHECK(tg_grad(loss, 1, &x, NULL, &g) == 0 && g, "tg_grad");
    int wrong = 0;
    for (int i = 0; g && i < 6; i++)
        wrong += ((double *)tg_data(g))[i] != weight_sum(size, i);
    if (planted) {
        tg_debug_swap_vjp(TG_OP_ALLREDUCE, old);
        CHECK(size == 1 || wrong > 0, "the planted identity rule went unnoticed");
    } else {
        CHECK(wrong == 0, "%d gradient elements are not the sum of the ranks' weights", wrong);
    }
    tg_tape_free(tape);
}

/* L = sum over ranks of sum(allreduce(x)^2 * w_r) / 2; dL/dx_r = allreduce(allreduce(x) * w)
 * = S * W where S = allreduce(x) and W = sum of w. The second derivative along v = 1:
 * d/dx_r of sum(dL/dx_r) = allreduce over ranks of W... computed by the engine and compared
 * with the closed form: d(sum_i S_i W_i)/dx_r[j] = size * W_j. */
static void test_second_order(tg_comm *comm)
{
    int r = tg_comm_rank(comm), size = tg_comm_size(comm);
    tg_tape *tape = tg_tape_new();
    tg_tape_set_comm(tape, comm);
    tg_tensor *x = tg_full(tape, TG_F64, 1, (int64_t[]){6}, 1.0 + r);
    tg_tensor *s = tg_allreduce_sum(x);
    tg_tensor *loss = tg_mul_scalar(tg_sum(tg_mul(tg_square(s), rank_weights(tape, r)), 0, NULL,
                                           false), 0.5);
    tg_tensor *g = NULL, *gg = NULL;
    CHECK(tg_grad(loss, 1, &x, NULL, &g) == 0 && g, "first gradient");
    CHECK(tg_grad(tg_sum(g, 0, NULL, false), 1, &x, NULL, &gg) == 0 && gg, "second gradient");
    double total = size * (size + 1) / 2.0;
    for (int i = 0; g && gg && i < 6; i++) {
        double gi = ((double *)tg_data(g))[i], ggi = ((double *)tg_data(gg))[i];
        CHECK(gi == total * weight_sum(size, i), "first order [%d] = %g", i, gi);
        CHECK(ggi == size * weight_sum(size, i), "second order [%d] = %g", i, ggi);
    }
    tg_tape_free(tape);
}

/* The gradient test's step traced and compiled: the all-reduce node in a plan, forward and
 * backward. */
static void test_plan(tg_comm *comm, const char *disable)
{
    int r = tg_comm_rank(comm), size = tg_comm_size(comm);
    tg_tape *tape = tg_tape_new();
    tg_tape_set_comm(tape, comm);
    tg_tensor *w = rank_weights(tape, r);
    tg_tape_trace(tape, true);
    tg_tensor *x = tg_placeholder(tape, "x", TG_F64, 1, (int64_t[]){6});
    tg_tensor *y = tg_allreduce_sum(tg_mul_scalar(x, 2.0));
    tg_tensor *loss = tg_sum(tg_mul(y, w), 0, NULL, false);
    tg_tensor *g = NULL;
    tg_grad(loss, 1, &x, NULL, &g);
    tg_tape_trace(tape, false);
    tg_tensor *outs[3] = {loss, y, g};
    tg_plan *plan = tg_compile(tape, 3, outs, &(tg_compile_opts){.disable = disable});
    CHECK(plan != NULL, "compile (passes off: %s)", disable ? disable : "none");
    double xv[6];
    for (int i = 0; i < 6; i++)
        xv[i] = r + 0.25 * i;
    for (int run = 0; plan && run < 2; run++) { /* twice: the plan is reusable */
        CHECK(tg_plan_set_input(plan, "x", xv) == 0 && tg_plan_run(plan) == 0, "run");
        const double *yv = tg_plan_output(plan, 1), *gv = tg_plan_output(plan, 2);
        for (int i = 0; i < 6; i++) {
            double sum = 0;
            for (int q = 0; q < size; q++)
                sum += 2.0 * (q + 0.25 * i);
            CHECK(yv[i] == sum, "plan forward [%d] = %g, want %g", i, yv[i], sum);
            CHECK(gv[i] == 2.0 * weight_sum(size, i), "plan gradient [%d] = %g", i, gv[i]);
        }
    }
    tg_plan_free(plan);
    tg_tape_free(tape);
}

static void test_allreduce_grads(tg_comm *comm, bool compiled)
{
    int r = tg_comm_rank(comm), size = tg_comm_size(comm);
    tg_tape *tape = tg_tape_new();
    tg_tape_set_comm(tape, comm);
    int64_t shapes[3][2] = {{2, 3}, {5, 1}, {4, 4}};
    tg_tensor *g[3], *out[3] = {NULL, NULL, NULL};
    tg_tensor *in[3];
    if (compiled)
        tg_tape_trace(tape, true);
    for (int k = 0; k < 3; k++) {
        char name[8];
        snprintf(name, sizeof name, "g%d", k);
        in[k] = compiled ? tg_placeholder(tape, name, TG_F32, 2, shapes[k])
                         : tg_full(tape, TG_F32, 2, shapes[k], 0);
        g[k] = tg_mul_scalar(in[k], 1.0);
    }
    CHECK(tg_allreduce_grads(3, g, 1.0 / size, out) == 0, "allreduce_grads");
    tg_plan *plan = NULL;
    if (compiled) {
        tg_tape_trace(tape, false);
        plan = tg_compile(tape, 3, out, NULL);
        CHECK(plan != NULL, "compile");
    }
    float data[3][16];
    for (int k = 0; k < 3; k++)
        for (int i = 0; i < 16; i++)
            data[k][i] = (float)((r + 1) * (k * 16 + i));
    if (!compiled) { /* eager: fill and redo */
        for (int k = 0; k < 3; k++) {
            memcpy(tg_data(in[k]), data[k], (size_t)tg_numel(in[k]) * sizeof(float));
            g[k] = tg_mul_scalar(in[k], 1.0);
        }
        CHECK(tg_allreduce_grads(3, g, 1.0 / size, out) == 0, "allreduce_grads");
    } else if (plan) {
        for (int k = 0; k < 3; k++) {
            char name[8];
            snprintf(name, sizeof name, "g%d", k);
            tg_plan_set_input(plan, name, data[k]);
        }
        CHECK(tg_plan_run(plan) == 0, "run");
    }
    double mean_factor = (size + 1) / 2.0; /* mean over ranks of (r + 1) */
    for (int k = 0; k < 3; k++) {
        const float *v = compiled ? (plan ? tg_plan_output(plan, k) : NULL)
                                  : (out[k] ? tg_data(out[k]) : NULL);
        CHECK(v != NULL, "output %d", k);
        CHECK(!out[k] || (tg_ndim(out[k]) == 2 && tg_shape(out[k])[0] == shapes[k][0]),
              "output %d has the gradient's shape", k);
        for (int64_t i = 0; v && i < shapes[k][0] * shapes[k][1]; i++)
            CHECK(v[i] == (float)(mean_factor * (k * 16 + i)), "%s grad %d [%lld] = %g",
                  compiled ? "compiled" : "eager", k, (long long)i, v[i]);
    }
    tg_plan_free(plan);
    tg_tape_free(tape);
}

/* A failing all-reduce (planted on every rank, so the collectives stay matched): the eager
 * builder returns NULL, the plan returns TG_ERR_COMM naming the all-reduce and applies no
 * update, and the next run works again. */
static void test_failure(tg_comm *comm)
{
    tg_tape *tape = tg_tape_new();
    tg_tape_set_comm(tape, comm);
    tg_tensor *x = tg_full(tape, TG_F32, 1, (int64_t[]){4}, 1.0);
    tg_comm_debug_fail(comm, 1);
    CHECK(tg_allreduce_sum(x) == NULL && tg_last_error_code() == TG_ERR_COMM,
          "a failed eager all-reduce returns NULL with TG_ERR_COMM");
    tg_tensor *p = tg_full(tape, TG_F32, 1, (int64_t[]){4}, 5.0);
    tg_tape_trace(tape, true);
    tg_tensor *g = tg_allreduce_sum(tg_mul(p, x));
    tg_assign(p, tg_add_scalar(tg_sub(p, g), 1.0)); /* an update after the collective */
    tg_tape_trace(tape, false);
    tg_plan *plan = tg_compile(tape, 1, &g, NULL);
    CHECK(plan != NULL, "compile");
    tg_comm_debug_fail(comm, 1);
    int status = plan ? tg_plan_run(plan) : 0;
    CHECK(status == TG_ERR_COMM && strstr(tg_last_error(), "all-reduce"),
          "a failed plan all-reduce: status %d, '%s'", status, tg_last_error());
    CHECK(((float *)tg_data(p))[0] == 5.0f, "an update was applied after a failed all-reduce");
    CHECK(plan && tg_plan_run(plan) == 0, "the plan runs again");
    float want = 6.0f - 5.0f * (float)tg_comm_size(comm);
    CHECK(((float *)tg_data(p))[0] == want, "after a good run p = %g, want %g",
          ((float *)tg_data(p))[0], want);
    tg_plan_free(plan);
    tg_tape_free(tape);
}

/* ---- synchronized batch norm ---------------------------------------------------------------- */
#define GN 4 /* global batch */
#define C 3
#define HW 5

typedef struct {
    double y[GN * C * HW * HW], gx[GN * C * HW * HW], ggamma[C], gbeta[C], rmean[C], rvar[C];
} bn_result;

/* Batch norm of x [n, C, HW, HW] (data xs) on tape, loss sum(y * w); results into res at
 * batch offset `at`. Eager or compiled (then the running estimates are updated by the plan). */
static int bn_step(tg_tape *tape, bool sync, bool compiled, int64_t n, const double *xs,
                   const double *ws, int64_t at, bn_result *res)
{
    tg_rng rng;
    tg_rng_seed(&rng, 99);
    tg_batchnorm_layer bn;
    if (tg_batchnorm_layer_init(&bn, tape, TG_F64, C) != 0)
        return -1;
    /* Non-trivial affine parameters, the same on every rank. */
    tg_tensor *gr = tg_rand_normal(tape, &rng, TG_F64, 1, (int64_t[]){C}, 1, 0.3);
    tg_tensor *br = tg_rand_normal(tape, &rng, TG_F64, 1, (int64_t[]){C}, 0, 0.3);
    memcpy(tg_data(bn.gamma), tg_data(gr), C * sizeof(double));
    memcpy(tg_data(bn.beta), tg_data(br), C * sizeof(double));
    bn.synchronized = sync;
    int64_t shape[4] = {n, C, HW, HW};
    tg_tensor *w = tg_from_data(tape, TG_F64, 4, shape, ws);
    if (compiled)
        tg_tape_trace(tape, true);
    tg_tensor *x = compiled ? tg_placeholder(tape, "x", TG_F64, 4, shape)
                            : tg_from_data(tape, TG_F64, 4, shape, xs);
    tg_tensor *y = tg_batchnorm_layer_forward(&bn, x, true);
    tg_tensor *loss = tg_sum(tg_mul(y, w), 0, NULL, false);
    tg_tensor *wrt[3] = {x, bn.gamma, bn.beta}, *g[3] = {NULL, NULL, NULL};
    if (!loss || tg_grad(loss, 3, wrt, NULL, g) != 0)
        return -1;
    const double *out[4];
    tg_plan *plan = NULL;
    if (compiled) {
        tg_tape_trace(tape, false);
        tg_tensor *outs[4] = {y, g[0], g[1], g[2]};
        plan = tg_compile(tape, 4, outs, NULL);
        if (!plan || tg_plan_set_input(plan, "x", xs) != 0 || tg_plan_run(plan) != 0) {
            tg_plan_free(plan);
            return -1;
        }
        for (int k = 0; k < 4; k++)
            out[k] = tg_plan_output(plan, k);
    } else {
        out[0] = tg_data(y);
        for (int k = 0; k < 3; k++)
            out[k + 1] = tg_data(g[k]);
    }
    int64_t block = C * HW * HW;
    memcpy(res->y + at * block, out[0], (size_t)(n * block) * sizeof(double));
    memcpy(res->gx + at * block, out[1], (size_t)(n * block) * sizeof(double));
    memcpy(res->ggamma, out[2], C * sizeof(double));
    memcpy(res->gbeta, out[3], C * sizeof(double));
    memcpy(res->rmean, tg_data(bn.running_mean), C * sizeof(double));
    memcpy(res->rvar, tg_data(bn.running_var), C * sizeof(double));
    tg_plan_free(plan);
    return 0;
}

static void test_sync_bn(tg_comm *comm, bool compiled)
{
    int r = tg_comm_rank(comm), size = tg_comm_size(comm);
    if (GN % size != 0)
        return;
    int64_t n = GN / size, total = GN * C * HW * HW, block = C * HW * HW;
    double *xs = malloc((size_t)total * sizeof *xs), *ws = malloc((size_t)total * sizeof *ws);
    bn_result *ref = calloc(1, sizeof *ref), *mine = calloc(1, sizeof *mine);
    tg_rng rng;
    tg_rng_seed(&rng, 7);
    for (int64_t i = 0; i < total; i++) {
        xs[i] = 2.0 + 3.0 * ((double)tg_rng_below(&rng, 1000) / 1000.0 - 0.5);
        ws[i] = (double)tg_rng_below(&rng, 1000) / 1000.0 - 0.5;
    }
    /* The reference: the whole batch on a tape without a communicator, plain batch norm. */
    tg_tape *one = tg_tape_new();
    CHECK(bn_step(one, false, compiled, GN, xs, ws, 0, ref) == 0, "reference step");
    tg_tape_free(one);
    /* This rank's shard, synchronized. */
    tg_tape *tape = tg_tape_new();
    tg_tape_set_comm(tape, comm);
    CHECK(bn_step(tape, true, compiled, n, xs + r * n * block, ws + r * n * block, r * n, mine) ==
              0, "synchronized step");
    tg_tape_free(tape);
    /* gamma's and beta's gradients are per rank: their sum over ranks is the whole batch's. */
    CHECK(tg_comm_allreduce_sum(comm, mine->ggamma, mine->ggamma, C, TG_F64) == 0 &&
              tg_comm_allreduce_sum(comm, mine->gbeta, mine->gbeta, C, TG_F64) == 0,
          "summing gamma's gradient");
    const double tol = 1e-12;
    int64_t off = r * n * block, len = n * block;
    double dy = max_rel_diff(mine->y + off, ref->y + off, len);
    double dgx = max_rel_diff(mine->gx + off, ref->gx + off, len);
    double dgg = max_rel_diff(mine->ggamma, ref->ggamma, C);
    double dgb = max_rel_diff(mine->gbeta, ref->gbeta, C);
    double drm = max_rel_diff(mine->rmean, ref->rmean, C);
    double drv = max_rel_diff(mine->rvar, ref->rvar, C);
    printf("rank %d sync_bn %s: max rel diff y %.1e dx %.1e dgamma %.1e dbeta %.1e running "
           "mean %.1e var %.1e\n", r, compiled ? "compiled" : "eager", dy, dgx, dgg, dgb, drm,
           drv);
    CHECK(dy < tol && dgx < tol && dgg < tol && dgb < tol && drm < tol && drv < tol,
          "synchronized batch norm differs from the whole batch's (tolerance %g)", tol);
    free(xs);
    free(ws);
    free(ref);
    free(mine);
}

/* Per-rank statistics (the default) must differ from the whole batch's when the shards
 * differ: shows the comparison above can fail. */
static void test_per_rank_differs(tg_comm *comm)
{
    int size = tg_comm_size(comm);
    if (size == 1)
        return;
    tg_tape *tape = tg_tape_new();
    tg_tape_set_comm(tape, comm);
    int r = tg_comm_rank(comm);
    tg_tensor *x = tg_full(tape, TG_F64, 2, (int64_t[]){2, 1}, 0);
    ((double *)tg_data(x))[0] = r;
    ((double *)tg_data(x))[1] = r + 2.0; /* mean r + 1 on this rank; (size + 1) / 2 overall */
    tg_tensor *plain = tg_batch_norm(x, NULL, NULL, NULL, NULL, true, 0.9, 1e-5);
    tg_tensor *synced = tg_batch_norm_sync(x, NULL, NULL, NULL, NULL, true, 0.9, 1e-5);
    CHECK(plain && synced && ((double *)tg_data(plain))[0] != ((double *)tg_data(synced))[0],
          "per-rank and synchronized statistics agree on different shards");
    tg_tape_free(tape);
}

int main(int argc, char **argv)
{
    tg_comm *comm = tg_comm_world(&argc, &argv);
    if (!comm) {
        fprintf(stderr, "test_dist: %s\n", tg_last_error());
        return 1;
    }
    rank_id = tg_comm_rank(comm);
    int expected = argc > 1 ? atoi(argv[1]) : 0;
    CHECK(!expected || tg_comm_size(comm) == expected, "%d ranks, expected %d",
          tg_comm_size(comm), expected);
    test_values(comm);
    test_gradient(comm, false);
    test_gradient(comm, true);
    test_second_order(comm);
    test_plan(comm, NULL);
    test_plan(comm, "all");
    test_allreduce_grads(comm, false);
    test_allreduce_grads(comm, true);
    test_failure(comm);
    test_sync_bn(comm, false);
    test_sync_bn(comm, true);
    test_per_rank_differs(comm);
    /* Every rank learns whether any failed, so all exit alike. */
    double mine = failures, all = 0;
    tg_comm_allreduce_sum(comm, &mine, &all, 1, TG_F64);
    printf("rank %d of %d: %d failure(s) here, %g in all\n", rank_id, tg_comm_size(comm),
           failures, all);
    tg_comm_free(comm);
    return all == 0 ? 0 : 1;
}
