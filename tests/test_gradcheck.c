/* Gradient checks for every differentiable primitive, in f64: the full Jacobian against
 * central differences, random directions, and the second order. A walk over the op table
 * fails when a differentiable primitive has no case here. A planted wrong rule must fail. */
#include "testing.h"

#include <math.h>
#include <stdio.h>
#include <string.h>

#include "internal.h"

typedef enum { NORMAL, POSITIVE } init_kind;

typedef struct {
    const char *name;
    tg_op op;        /* the primitive this case covers */
    tg_fn f;
    int n;
    int ndim[3];
    int64_t shape[3][6];
    init_kind init[3];
    double eps, tol; /* 0 for the defaults */
} grad_case;

#define T(...) ((tg_tensor *)(__VA_ARGS__))

static tg_tensor *f_neg(tg_tape *t, int n, tg_tensor *const *x, void *c) { (void)t, (void)n, (void)c; return tg_neg(x[0]); }
static tg_tensor *f_exp(tg_tape *t, int n, tg_tensor *const *x, void *c) { (void)t, (void)n, (void)c; return tg_exp(x[0]); }
static tg_tensor *f_log(tg_tape *t, int n, tg_tensor *const *x, void *c) { (void)t, (void)n, (void)c; return tg_log(x[0]); }
static tg_tensor *f_sqrt(tg_tape *t, int n, tg_tensor *const *x, void *c) { (void)t, (void)n, (void)c; return tg_sqrt(x[0]); }
static tg_tensor *f_recip(tg_tape *t, int n, tg_tensor *const *x, void *c) { (void)t, (void)n, (void)c; return tg_recip(x[0]); }
static tg_tensor *f_add(tg_tape *t, int n, tg_tensor *const *x, void *c) { (void)t, (void)n, (void)c; return tg_add(x[0], x[1]); }
static tg_tensor *f_sub(tg_tape *t, int n, tg_tensor *const *x, void *c) { (void)t, (void)n, (void)c; return tg_sub(x[0], x[1]); }
static tg_tensor *f_mul(tg_tape *t, int n, tg_tensor *const *x, void *c) { (void)t, (void)n, (void)c; return tg_mul(x[0], x[1]); }
static tg_tensor *f_div(tg_tape *t, int n, tg_tensor *const *x, void *c) { (void)t, (void)n, (void)c; return tg_div(x[0], x[1]); }
static tg_tensor *f_maximum(tg_tape *t, int n, tg_tensor *const *x, void *c) { (void)t, (void)n, (void)c; return tg_maximum(x[0], x[1]); }
/* Squares after linear ops so the second-order check has a non-zero Hessian to compare. */
static tg_tensor *f_matmul(tg_tape *t, int n, tg_tensor *const *x, void *c) { (void)t, (void)n, (void)c; return tg_square(tg_matmul(x[0], x[1])); }
/* One rank (no communicator on the tape): the all-reduce is the identity, its rule too; the
 * MPI suite (tests/mpi) checks the rule across two ranks. */
static tg_tensor *f_allreduce(tg_tape *t, int n, tg_tensor *const *x, void *c) { (void)t, (void)n, (void)c; return tg_mul(tg_allreduce_sum(x[0]), x[0]); }
static tg_tensor *f_cast(tg_tape *t, int n, tg_tensor *const *x, void *c) { (void)t, (void)n, (void)c; return tg_square(tg_cast(tg_cast(x[0], TG_F32), TG_F64)); }

static tg_tensor *f_where(tg_tape *t, int n, tg_tensor *const *x, void *c)
{
    (void)n, (void)c;
    /* The condition is a constant pattern, broadcast along axis 0. */
    tg_tensor *cond = tg_from_data(t, TG_F64, 2, SHAPE(1, 3), (const double[]){1, 0, 1});
    return tg_mul(tg_where(cond, x[0], x[1]), x[0]);
}
static tg_tensor *f_where_from_input(tg_tape *t, int n, tg_tensor *const *x, void *c)
{
    (void)n, (void)c;
    /* relu: the condition depends on the input itself and carries no gradient. */
    tg_tensor *zero = tg_scalar(t, TG_F64, 0);
    return tg_square(tg_where(tg_gt(x[0], zero), x[0], zero));
}
static tg_tensor *f_sum_02(tg_tape *t, int n, tg_tensor *const *x, void *c) { (void)t, (void)n, (void)c; return tg_square(tg_sum(x[0], 2, (const int[]){0, 2}, false)); }
static tg_tensor *f_sum_all(tg_tape *t, int n, tg_tensor *const *x, void *c) { (void)t, (void)n, (void)c; return tg_square(tg_sum(x[0], 0, NULL, false)); }
static tg_tensor *f_sum_last_keep(tg_tape *t, int n, tg_tensor *const *x, void *c) { (void)t, (void)n, (void)c; return tg_mul(tg_sum(x[0], 1, (const int[]){-1}, true), x[0]); }
static tg_tensor *f_max_1(tg_tape *t, int n, tg_tensor *const *x, void *c) { (void)t, (void)n, (void)c; return tg_square(tg_max(x[0], 1, (const int[]){1}, false)); }
static tg_tensor *f_max_02(tg_tape *t, int n, tg_tensor *const *x, void *c) { (void)t, (void)n, (void)c; return tg_square(tg_max(x[0], 2, (const int[]){0, 2}, true)); }
static tg_tensor *f_reshape(tg_tape *t, int n, tg_tensor *const *x, void *c) { (void)t, (void)n, (void)c; return tg_square(tg_reshape(x[0], 3, SHAPE(3, 1, 4))); }
static tg_tensor *f_permute(tg_tape *t, int n, tg_tensor *const *x, void *c) { (void)t, (void)n, (void)c; return tg_square(tg_permute(x[0], (const int[]){2, 0, 1})); }
static tg_tensor *f_expand(tg_tape *t, int n, tg_tensor *const *x, void *c) { (void)t, (void)n, (void)c; return tg_square(tg_expand(x[0], 3, SHAPE(2, 3, 4))); }
static tg_tensor *f_slice(tg_tape *t, int n, tg_tensor *const *x, void *c) { (void)t, (void)n, (void)c; return tg_square(tg_slice(x[0], SHAPE(1, 0, 2), SHAPE(3, 1, 5))); }
static tg_tensor *f_pad(tg_tape *t, int n, tg_tensor *const *x, void *c) { (void)t, (void)n, (void)c; return tg_square(tg_pad(x[0], SHAPE(1, 0), SHAPE(0, 2), 0.5)); }
static tg_tensor *f_im2col(tg_tape *t, int n, tg_tensor *const *x, void *c) { (void)t, (void)n, (void)c; return tg_square(tg_im2col(x[0], 3, 2, 2, 1)); }
static tg_tensor *f_col2im(tg_tape *t, int n, tg_tensor *const *x, void *c) { (void)t, (void)n, (void)c; return tg_square(tg_col2im(x[0], 5, 4, 2, 1)); }

static const grad_case cases[] = {
    {"neg", TG_OP_NEG, f_neg, 1, {2}, {{3, 4}}, {NORMAL}, 0, 0},
    {"exp", TG_OP_EXP, f_exp, 1, {2}, {{3, 4}}, {NORMAL}, 0, 0},
    {"log", TG_OP_LOG, f_log, 1, {2}, {{3, 4}}, {POSITIVE}, 0, 0},
    {"sqrt", TG_OP_SQRT, f_sqrt, 1, {2}, {{3, 4}}, {POSITIVE}, 0, 0},
    {"recip", TG_OP_RECIP, f_recip, 1, {2}, {{3, 4}}, {POSITIVE}, 0, 0},
    {"add broadcast [2,3,4]+[3,1]", TG_OP_ADD, f_add, 2, {3, 2}, {{2, 3, 4}, {3, 1}}, {NORMAL, NORMAL}, 0, 0},
    {"add size-1 [1]+[2,1]", TG_OP_ADD, f_add, 2, {1, 2}, {{1}, {2, 1}}, {NORMAL, NORMAL}, 0, 0},
    {"sub broadcast [4,1,3]-[2,3]", TG_OP_SUB, f_sub, 2, {3, 2}, {{4, 1, 3}, {2, 3}}, {NORMAL, NORMAL}, 0, 0},
    {"mul same shape", TG_OP_MUL, f_mul, 2, {2, 2}, {{2, 3}, {2, 3}}, {NORMAL, NORMAL}, 0, 0},
    {"mul outer [5,1]*[1,4]", TG_OP_MUL, f_mul, 2, {2, 2}, {{5, 1}, {1, 4}}, {NORMAL, NORMAL}, 0, 0},
    {"div broadcast [3,4]/[4]", TG_OP_DIV, f_div, 2, {2, 1}, {{3, 4}, {4}}, {NORMAL, POSITIVE}, 0, 0},
    {"maximum broadcast [3,4],[4]", TG_OP_MAXIMUM, f_maximum, 2, {2, 1}, {{3, 4}, {4}}, {NORMAL, NORMAL}, 0, 0},
    {"where constant cond", TG_OP_WHERE, f_where, 2, {2, 1}, {{2, 3}, {3}}, {NORMAL, NORMAL}, 0, 0},
    {"where cond from input (relu)", TG_OP_WHERE, f_where_from_input, 1, {2}, {{4, 5}}, {NORMAL}, 0, 0},
    {"sum axes {0,2}", TG_OP_SUM, f_sum_02, 1, {3}, {{2, 3, 4}}, {NORMAL}, 0, 0},
    {"sum all", TG_OP_SUM, f_sum_all, 1, {2}, {{3, 2}}, {NORMAL}, 0, 0},
    {"sum last, keepdims", TG_OP_SUM, f_sum_last_keep, 1, {2}, {{3, 4}}, {NORMAL}, 0, 0},
    {"max axis 1", TG_OP_MAX, f_max_1, 1, {3}, {{3, 4, 2}}, {NORMAL}, 0, 0},
    {"max axes {0,2} keepdims", TG_OP_MAX, f_max_02, 1, {3}, {{2, 3, 4}}, {NORMAL}, 0, 0},
    {"reshape", TG_OP_RESHAPE, f_reshape, 1, {2}, {{2, 6}}, {NORMAL}, 0, 0},
    {"permute", TG_OP_PERMUTE, f_permute, 1, {3}, {{2, 3, 4}}, {NORMAL}, 0, 0},
    {"expand [3,1]->[2,3,4]", TG_OP_EXPAND, f_expand, 1, {2}, {{3, 1}}, {NORMAL}, 0, 0},
    {"slice", TG_OP_SLICE, f_slice, 1, {3}, {{4, 2, 5}}, {NORMAL}, 0, 0},
    {"pad", TG_OP_PAD, f_pad, 1, {2}, {{2, 3}}, {NORMAL}, 0, 0},
    {"matmul [2,3]x[3,4]", TG_OP_MATMUL, f_matmul, 2, {2, 2}, {{2, 3}, {3, 4}}, {NORMAL, NORMAL}, 0, 0},
    {"matmul batched [2,3,4]x[2,4,5]", TG_OP_MATMUL, f_matmul, 2, {3, 3}, {{2, 3, 4}, {2, 4, 5}}, {NORMAL, NORMAL}, 0, 0},
    {"matmul broadcast [3,4]x[2,4,2]", TG_OP_MATMUL, f_matmul, 2, {2, 3}, {{3, 4}, {2, 4, 2}}, {NORMAL, NORMAL}, 0, 0},
    {"matmul broadcast [2,1,2,3]x[3,3,1]", TG_OP_MATMUL, f_matmul, 2, {4, 3}, {{2, 1, 2, 3}, {3, 3, 1}}, {NORMAL, NORMAL}, 0, 0},
    {"im2col 3x2 stride 2x1", TG_OP_IM2COL, f_im2col, 1, {4}, {{1, 2, 5, 4}}, {NORMAL}, 0, 0},
    {"col2im 5x4 stride 2x1", TG_OP_COL2IM, f_col2im, 1, {6}, {{1, 2, 2, 2, 2, 3}}, {NORMAL}, 0, 0},
    /* Through f32 the differences need a coarse step (cast is linear, so a coarse step costs
     * nothing but rounding) and a looser tolerance. */
    {"cast f64->f32->f64", TG_OP_CAST, f_cast, 1, {2}, {{2, 3}}, {NORMAL}, 1e-2, 1e-4},
    {"allreduce_sum (one rank)", TG_OP_ALLREDUCE, f_allreduce, 1, {2}, {{2, 3}}, {NORMAL}, 0, 0},
};
#define N_CASES (int)(sizeof cases / sizeof cases[0])

static tg_tensor *make_input(tg_tape *tape, tg_rng *rng, const grad_case *c, int i)
{
    tg_tensor *x = tg_rand_normal(tape, rng, TG_F64, c->ndim[i], c->shape[i], 0, 1);
    if (c->init[i] == POSITIVE) {
        double *d = tg_data(x);
        for (int64_t k = 0; k < tg_numel(x); k++)
            d[k] = 0.5 + fabs(d[k]);
    }
    return x;
}

static double worst_per_op[TG_OP_COUNT];

START_TEST(primitive_passes_gradcheck)
{
    const grad_case *c = &cases[_i];
    tg_tape *tape = tg_tape_new();
    tg_rng rng;
    tg_rng_seed(&rng, 1000 + (uint64_t)_i);
    tg_tensor *inputs[3];
    for (int i = 0; i < c->n; i++)
        inputs[i] = make_input(tape, &rng, c, i);
    tg_gradcheck_opts opts = {.eps = c->eps, .tol = c->tol, .second_order = true, .seed = 7};
    tg_gradcheck_result r;
    int status = tg_gradcheck(c->f, NULL, c->n, inputs, &opts, &r);
    ck_assert_msg(status == 0, "%s: gradcheck could not run: %s", c->name, tg_last_error());
    printf("gradcheck %-36s jacobian %.2e  direction %.2e  second %.2e\n", c->name,
           r.jacobian_err, r.direction_err, r.second_err);
    ck_assert_msg(r.jacobian_err >= 0, "%s: the full Jacobian was skipped", c->name);
    ck_assert_msg(r.passed, "%s: max error %.3e: %s", c->name, r.max_err, r.message);
    tg_tape_free(tape);
}
END_TEST

START_TEST(every_differentiable_primitive_has_a_case)
{
    for (int op = 0; op < TG_OP_COUNT; op++) {
        if (!tg_op_table[op].vjp)
            continue;
        bool covered = false;
        for (int k = 0; k < N_CASES; k++)
            covered |= cases[k].op == (tg_op)op;
        ck_assert_msg(covered, "primitive '%s' has a gradient rule but no gradcheck case",
                      tg_op_name((tg_op)op));
    }
    TG_UNUSED(worst_per_op);
}
END_TEST

/* ---- the check must fail on a wrong rule ------------------------------------------------- */
static int wrong_mul_rule(const struct tg_node *n, tg_tensor *g, const bool *need,
                          tg_tensor **grads)
{
    /* Swaps the factors: right only when a == b. */
    grads[0] = need[0] ? tg_mul(g, n->in[0]) : NULL;
    grads[1] = need[1] ? tg_mul(g, n->in[1]) : NULL;
    return 0;
}

static int off_by_scale_exp_rule(const struct tg_node *n, tg_tensor *g, const bool *need,
                                 tg_tensor **grads)
{
    (void)need;
    grads[0] = tg_mul_scalar(tg_mul(g, (tg_tensor *)n), 1.001); /* a 0.1% error */
    return 0;
}

START_TEST(planted_wrong_rule_fails)
{
    tg_tape *tape = tg_tape_new();
    tg_rng rng;
    tg_rng_seed(&rng, 3);
    tg_tensor *in[2] = {tg_rand_normal(tape, &rng, TG_F64, 2, SHAPE(3, 2), 0, 1),
                        tg_rand_normal(tape, &rng, TG_F64, 2, SHAPE(3, 2), 0, 1)};
    tg_gradcheck_result r;
    tg_vjp_fn right = tg_debug_swap_vjp(TG_OP_MUL, wrong_mul_rule);
    ck_assert_int_eq(tg_gradcheck(f_mul, NULL, 2, in, NULL, &r), 0);
    tg_debug_swap_vjp(TG_OP_MUL, right);
    ck_assert_msg(!r.passed, "a wrong mul rule passed the check (error %.3e)", r.max_err);
    printf("planted wrong mul rule: max error %.3e (%s)\n", r.max_err, r.message);

    /* A small scale error in a rule, and only the random-direction check on a big input. */
    tg_tensor *big = tg_rand_normal(tape, &rng, TG_F64, 2, SHAPE(100, 100), 0, 0.1);
    tg_gradcheck_opts opts = {.directions = 2};
    right = tg_debug_swap_vjp(TG_OP_EXP, off_by_scale_exp_rule);
    ck_assert_int_eq(tg_gradcheck(f_exp, NULL, 1, &big, &opts, &r), 0);
    tg_debug_swap_vjp(TG_OP_EXP, right);
    ck_assert_double_eq(r.jacobian_err, -1); /* too big for the full Jacobian */
    ck_assert_msg(!r.passed, "a 0.1%% error in exp's rule passed (error %.3e)", r.max_err);

    /* And the right rules pass the same checks. */
    ck_assert_int_eq(tg_gradcheck(f_exp, NULL, 1, &big, &opts, &r), 0);
    ck_assert_msg(r.passed, "exp failed: %s", r.message);
    ck_assert_int_eq(tg_gradcheck(f_mul, NULL, 2, in, NULL, &r), 0);
    ck_assert_msg(r.passed, "mul failed: %s", r.message);
    tg_tape_free(tape);
}
END_TEST

/* A wrong rule that is right to first order only must fail the second-order check. The rule
 * for recip below uses a detached output: first derivatives are exact, second are not. */
static int detached_recip_rule(const struct tg_node *n, tg_tensor *g, const bool *need,
                               tg_tensor **grads)
{
    (void)need;
    tg_tensor *r = tg_detach((tg_tensor *)n);
    grads[0] = tg_neg(tg_mul(g, tg_mul(r, r)));
    return 0;
}

START_TEST(first_order_only_rule_fails_second_order)
{
    tg_tape *tape = tg_tape_new();
    tg_rng rng;
    tg_rng_seed(&rng, 5);
    tg_tensor *x = tg_rand_uniform(tape, &rng, TG_F64, 1, SHAPE(4), 0.5, 2.0);
    tg_gradcheck_opts first = {0}, second = {.second_order = true};
    tg_gradcheck_result r;
    tg_vjp_fn right = tg_debug_swap_vjp(TG_OP_RECIP, detached_recip_rule);
    ck_assert_int_eq(tg_gradcheck(f_recip, NULL, 1, &x, &first, &r), 0);
    bool first_passed = r.passed;
    ck_assert_int_eq(tg_gradcheck(f_recip, NULL, 1, &x, &second, &r), 0);
    tg_debug_swap_vjp(TG_OP_RECIP, right);
    ck_assert_msg(first_passed, "the detached rule is exact to first order");
    ck_assert_msg(!r.passed, "a first-order-only rule passed the second-order check");
    tg_tape_free(tape);
}
END_TEST

/* ---- Hessian-vector product against differences of the gradient --------------------------- */
static tg_tensor *smooth(tg_tape *tape, tg_tensor *x)
{
    /* f(x) = sum(exp(x) * x^2) + log(sum(x^2) + 1) * sum(x) : couples every element. */
    tg_tensor *a = tg_sum(tg_mul(tg_exp(x), tg_square(x)), 0, NULL, false);
    tg_tensor *s = tg_add(tg_sum(tg_square(x), 0, NULL, false), tg_scalar(tape, TG_F64, 1));
    return tg_add(a, tg_mul(tg_log(s), tg_sum(x, 0, NULL, false)));
}

static void gradient_at(const double *x0, double *out, int n)
{
    tg_tape *tape = tg_tape_new();
    tg_tensor *x = tg_from_data(tape, TG_F64, 1, (int64_t[]){n}, x0);
    tg_tensor *g;
    ck_assert_int_eq(tg_grad(smooth(tape, x), 1, &x, NULL, &g), 0);
    memcpy(out, tg_data(g), (size_t)n * sizeof(double));
    tg_tape_free(tape);
}

START_TEST(hessian_vector_product_matches_differences)
{
    enum { N = 6 };
    double x0[N] = {0.3, -0.7, 1.1, 0.05, -1.4, 0.8}, v[N] = {1, -2, 0.5, 3, -1, 0.25};
    tg_tape *tape = tg_tape_new();
    tg_tensor *x = tg_from_data(tape, TG_F64, 1, SHAPE(N), x0);
    tg_tensor *vt = tg_from_data(tape, TG_F64, 1, SHAPE(N), v);
    tg_tensor *g, *hv;
    ck_assert_int_eq(tg_grad(smooth(tape, x), 1, &x, NULL, &g), 0);
    tg_tensor *gv = tg_sum(tg_mul(g, vt), 0, NULL, false);
    ck_assert_int_eq(tg_grad(gv, 1, &x, NULL, &hv), 0);
    double eps = 1e-5, xp[N], xm[N], gp[N], gm[N], worst = 0;
    for (int i = 0; i < N; i++) {
        xp[i] = x0[i] + eps * v[i];
        xm[i] = x0[i] - eps * v[i];
    }
    gradient_at(xp, gp, N);
    gradient_at(xm, gm, N);
    for (int i = 0; i < N; i++) {
        double numeric = (gp[i] - gm[i]) / (2 * eps);
        double err = fabs(tg_get(hv, i) - numeric) / fmax(1, fabs(numeric));
        worst = fmax(worst, err);
    }
    printf("hessian-vector product: max relative error %.2e\n", worst);
    ck_assert_double_lt(worst, 1e-7);
    tg_tape_free(tape);
}
END_TEST

START_TEST(no_gradient_is_null)
{
    tg_tape *tape = tg_tape_new();
    tg_tensor *x = tg_full(tape, TG_F64, 1, SHAPE(3), 2);
    tg_tensor *unrelated = tg_full(tape, TG_F64, 1, SHAPE(3), 1);
    tg_tensor *y = tg_sum(tg_add(tg_mul(x, x), tg_lt(x, unrelated)), 0, NULL, false);
    tg_tensor *grads[2];
    ck_assert_int_eq(tg_grad(y, 2, (tg_tensor *[]){x, unrelated}, NULL, grads), 0);
    ck_assert_ptr_nonnull(grads[0]);
    ck_assert_ptr_null(grads[1]); /* only reaches y through a comparison */
    ck_assert_double_eq(tg_get(grads[0], 1), 4.0);
    tg_tensor *d = tg_sum(tg_detach(x), 0, NULL, false), *gd;
    ck_assert_int_eq(tg_grad(d, 1, &x, NULL, &gd), 0);
    ck_assert_ptr_null(gd);
    /* The same input listed twice gets the same gradient; y itself gets the seed. */
    tg_tensor *gg[2], *gy;
    ck_assert_int_eq(tg_grad(y, 2, (tg_tensor *[]){x, x}, NULL, gg), 0);
    ck_assert_ptr_eq(gg[0], gg[1]);
    ck_assert_int_eq(tg_grad(y, 1, &y, NULL, &gy), 0);
    ck_assert_double_eq(tg_item(gy), 1.0);
    tg_tape_free(tape);
}
END_TEST

START_TEST(subgradient_conventions)
{
    tg_tape *tape = tg_tape_new();
    /* relu'(0) = 0 with where(x > 0, x, 0). */
    tg_tensor *x = tg_from_data(tape, TG_F64, 1, SHAPE(3), (const double[]){-1, 0, 2});
    tg_tensor *zero = tg_scalar(tape, TG_F64, 0), *g;
    tg_tensor *relu = tg_where(tg_gt(x, zero), x, zero);
    ck_assert_int_eq(tg_grad(tg_sum(relu, 0, NULL, false), 1, &x, NULL, &g), 0);
    ck_assert_double_eq(tg_get(g, 0), 0);
    ck_assert_double_eq(tg_get(g, 1), 0);
    ck_assert_double_eq(tg_get(g, 2), 1);
    /* maximum: a tie goes to the first argument. */
    tg_tensor *a = tg_scalar(tape, TG_F64, 1), *b = tg_scalar(tape, TG_F64, 1), *gab[2];
    ck_assert_int_eq(tg_grad(tg_maximum(a, b), 2, (tg_tensor *[]){a, b}, NULL, gab), 0);
    ck_assert_double_eq(tg_item(gab[0]), 1);
    ck_assert_double_eq(tg_item(gab[1]), 0);
    /* max over axes: tied elements share the gradient equally. */
    tg_tensor *m = tg_from_data(tape, TG_F64, 1, SHAPE(4), (const double[]){3, 1, 3, 3});
    ck_assert_int_eq(tg_grad(tg_max(m, 0, NULL, false), 1, &m, NULL, &g), 0);
    ck_assert_double_eq_tol(tg_get(g, 0), 1.0 / 3, 1e-15);
    ck_assert_double_eq(tg_get(g, 1), 0);
    ck_assert_double_eq_tol(tg_get(g, 3), 1.0 / 3, 1e-15);
    tg_tape_free(tape);
}
END_TEST

START_TEST(gradcheck_rejects_bad_arguments)
{
    tg_tape *tape = tg_tape_new();
    tg_tensor *f32 = tg_zeros(tape, TG_F32, 1, SHAPE(2));
    tg_gradcheck_result r;
    ck_assert_int_eq(tg_gradcheck(f_neg, NULL, 1, &f32, NULL, &r), TG_ERR_DTYPE);
    ck_assert_int_eq(tg_gradcheck(NULL, NULL, 1, &f32, NULL, &r), TG_ERR_NULL);
    ck_assert_int_eq(tg_gradcheck(f_neg, NULL, 0, NULL, NULL, &r), TG_ERR_ARG);
    tg_tensor *x = tg_zeros(tape, TG_F64, 1, SHAPE(2));
    ck_assert_int_eq(tg_gradcheck(f_add, NULL, 2, (tg_tensor *[]){x, NULL}, NULL, &r),
                     TG_ERR_NULL);
    tg_tape_free(tape);
}
END_TEST

int main(void)
{
    Suite *s = suite_create("gradcheck");
    TCase *prims = tcase_create("primitives");
    tcase_add_loop_test(prims, primitive_passes_gradcheck, 0, N_CASES);
    tcase_add_test(prims, every_differentiable_primitive_has_a_case);
    suite_add_tcase(s, prims);
    TCase *meta = tcase_create("the check itself");
    tcase_add_test(meta, planted_wrong_rule_fails);
    tcase_add_test(meta, first_order_only_rule_fails_second_order);
    tcase_add_test(meta, hessian_vector_product_matches_differences);
    tcase_add_test(meta, no_gradient_is_null);
    tcase_add_test(meta, subgradient_conventions);
    tcase_add_test(meta, gradcheck_rejects_bad_arguments);
    suite_add_tcase(s, meta);
    return tg_run_suite(s);
}
