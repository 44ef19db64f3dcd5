/* Random graphs, compiled against eager execution.
 *
 * A seeded generator builds small graphs over every primitive (broadcasting, reductions
 * over several axes, movement ops, matmul, im2col/col2im) and the gradient of a scalar made
 * from them. The same graph is built twice from the same seed: once eagerly and once traced,
 * then compiled with a random subset of the passes switched off. The plan's outputs must
 * match eager values (f64, relative 1e-9; 1e-12 with every pass off, where the arithmetic is
 * the same), and its gradients must match central differences of its own forward values:
 * a gradient check through a compiled plan. */
#include "testing.h"
#include "internal.h"

#include <math.h>
#include <stdlib.h>
#include <stdio.h>
#include <string.h>

#define POOL 64
#define N_INPUTS 3

typedef struct {
    tg_tensor *t[POOL];
    int n;
    tg_rng rng;
} pool;

static int below(pool *p, int n) { return (int)tg_rng_below(&p->rng, (uint64_t)n); }
static tg_tensor *pick(pool *p) { return p->t[below(p, p->n)]; }

static void push(pool *p, tg_tensor *t)
{
    ck_assert_msg(t != NULL, "generator: %s", tg_last_error());
    if (p->n < POOL)
        p->t[p->n++] = t;
}

/* x / sqrt(x^2 + 1): keeps values in (-1, 1) whatever came before, so exp and division stay
 * tame however deep the graph is. */
static tg_tensor *bounded(tg_tensor *x)
{
    return tg_mul(x, tg_recip(tg_sqrt(tg_add_scalar(tg_mul(x, x), 1.0))));
}

static tg_tensor *partner(pool *p, tg_tensor *a)
{
    for (int tries = 0; tries < 8; tries++) {
        tg_tensor *b = pick(p);
        int nd;
        int64_t shape[TG_MAX_DIMS];
        if (tg_ndim(b) <= TG_MAX_DIMS &&
            tg_broadcast_shapes(tg_ndim(a), tg_shape(a), tg_ndim(b), tg_shape(b), &nd, shape))
            return b;
    }
    return a;
}

static tg_tensor *random_op(pool *p)
{
    tg_tensor *a = pick(p);
    int nd = tg_ndim(a);
    const int64_t *s = tg_shape(a);
    switch (below(p, 12)) {
    case 0: { /* unary */
        tg_tensor *x = bounded(a);
        switch (below(p, 5)) {
        case 0: return tg_neg(x);
        case 1: return tg_exp(x);
        case 2: return tg_log(tg_add_scalar(tg_mul(x, x), 0.5));
        case 3: return tg_sqrt(tg_add_scalar(tg_mul(x, x), 0.25));
        default: return tg_recip(tg_add_scalar(tg_mul(x, x), 1.0));
        }
    }
    case 1: case 2: { /* binary, broadcasting */
        tg_tensor *b = partner(p, a);
        switch (below(p, 4)) {
        case 0: return tg_add(a, b);
        case 1: return tg_sub(a, b);
        case 2: return tg_mul(a, b);
        default: return tg_div(a, tg_add_scalar(tg_mul(b, b), 1.0));
        }
    }
    case 3: { /* comparisons, where, maximum */
        tg_tensor *b = partner(p, a);
        switch (below(p, 3)) {
        case 0: return tg_maximum(a, b);
        case 1: return tg_where(tg_lt(a, b), a, b);
        default: return tg_where(tg_eq(a, b), b, tg_mul_scalar(a, 0.5));
        }
    }
    case 4: case 5: { /* reductions over a random set of axes */
        if (nd == 0)
            return tg_exp(bounded(a));
        int axes[TG_MAX_DIMS], n = 0;
        for (int d = 0; d < nd; d++)
            if (below(p, 2))
                axes[n++] = d;
        bool keep = below(p, 2);
        return below(p, 3) ? tg_sum(a, n, axes, keep) : tg_max(a, n, axes, keep);
    }
    case 6: { /* permute */
        int perm[TG_MAX_DIMS];
        for (int d = 0; d < nd; d++)
            perm[d] = d;
        for (int d = nd - 1; d > 0; d--) {
            int j = below(p, d + 1), t = perm[d];
            perm[d] = perm[j];
            perm[j] = t;
        }
        return tg_permute(a, perm);
    }
    case 7: { /* reshape: merge two neighbouring axes, or split off a leading 1 */
        int64_t shape[TG_MAX_DIMS];
        if (nd >= 2 && below(p, 2)) {
            int d = below(p, nd - 1);
            int out = 0;
            for (int k = 0; k < nd; k++)
                shape[out++] = k == d ? s[k] * s[k + 1] : s[k];
            for (int k = d + 1; k < out - 1; k++)
                shape[k] = shape[k + 1];
            return tg_reshape(a, nd - 1, shape);
        }
        if (nd >= TG_MAX_DIMS - 2)
            return tg_neg(a);
        shape[0] = 1;
        memcpy(shape + 1, s, (size_t)nd * sizeof *s);
        return tg_reshape(a, nd + 1, shape);
    }
    case 8: { /* expand a size-1 axis, or slice, or pad */
        int64_t lo[TG_MAX_DIMS], hi[TG_MAX_DIMS];
        int kind = below(p, 3);
        for (int d = 0; d < nd; d++) {
            if (kind == 0) { /* expand: size-1 axes grow to 3 */
                lo[d] = s[d] == 1 ? 3 : s[d];
            } else if (kind == 1) { /* slice: a non-empty [lo, hi) */
                lo[d] = s[d] > 0 ? below(p, (int)s[d]) : 0;
                hi[d] = s[d] > 0 ? lo[d] + 1 + below(p, (int)(s[d] - lo[d])) : 0;
            } else { /* pad: 0 or 1 on each side */
                lo[d] = below(p, 2);
                hi[d] = below(p, 2);
            }
        }
        if (kind == 0)
            return tg_expand(a, nd, lo);
        if (kind == 1)
            return tg_slice(a, lo, hi);
        return tg_pad(a, lo, hi, below(p, 2) ? 0.0 : 0.25);
    }
    case 9: /* matmul with its own transpose */
        if (nd < 2)
            return tg_mul(a, a);
        return tg_matmul(a, tg_transpose(a, -1, -2));
    case 10: { /* im2col, and col2im back */
        if (nd != 4 || s[2] < 2 || s[3] < 2)
            return tg_add(a, a);
        int64_t k = 1 + below(p, 2), st = 1 + below(p, 2);
        tg_tensor *cols = tg_im2col(a, k, k, st, st);
        if (below(p, 2))
            return tg_reshape(cols, 5, (int64_t[]){s[0], s[1], k * k, tg_dim(cols, 4),
                                                    tg_dim(cols, 5)});
        return tg_col2im(tg_mul(cols, bounded(cols)), s[2], s[3], st, st);
    }
    default: { /* a composition: softmax-like */
        if (nd == 0)
            return tg_exp(bounded(a));
        int axis = below(p, nd);
        tg_tensor *m = tg_detach(tg_max(a, 1, &axis, true));
        tg_tensor *e = tg_exp(tg_sub(a, m));
        return tg_div(e, tg_sum(e, 1, &axis, true));
    }
    }
}

/* Builds graph `seed` on the inputs; returns the outputs: a few pool tensors, a scalar loss,
 * and the loss's gradients with respect to the inputs. */
static int build(tg_tensor *const *inputs, uint64_t seed, tg_tensor **outs)
{
    pool p = {.n = 0};
    tg_rng_seed(&p.rng, seed);
    for (int i = 0; i < N_INPUTS; i++)
        push(&p, inputs[i]);
    int ops = 8 + below(&p, 20);
    for (int i = 0; i < ops; i++)
        push(&p, random_op(&p));
    int n = 0;
    tg_tensor *loss = tg_sum(tg_mul(bounded(p.t[p.n - 1]), p.t[p.n - 1]), 0, NULL, false);
    for (int k = 0; k < 3; k++) {
        tg_tensor *t = p.t[N_INPUTS + below(&p, p.n - N_INPUTS)];
        outs[n++] = t;
        loss = tg_add(loss, tg_sum(tg_mul(bounded(t), t), 0, NULL, false));
    }
    outs[n++] = loss;
    tg_tensor *grads[N_INPUTS];
    ck_assert_int_eq(tg_grad(loss, N_INPUTS, inputs, NULL, grads), 0);
    for (int i = 0; i < N_INPUTS; i++)
        outs[n++] = grads[i] ? grads[i] : tg_scalar(tg_tape_of(loss), TG_F64, 0.0);
    return n;
}

static const int64_t input_shapes[N_INPUTS][4] = {{2, 3, 5, 4}, {3, 1, 4}, {1, 5, 1}};
static const int input_ndims[N_INPUTS] = {4, 3, 3};
static const char *const input_names[N_INPUTS] = {"a", "b", "c"};

static const char *const pass_names[] = {"dce",  "simplify", "cse",         "lower_conv",
                                         "fold_scale", "fuse", "fuse_stores", "memplan"};

static double rel_err(double got, double want) { return fabs(got - want) / fmax(1.0, fabs(want)); }

static void check_graph(uint64_t seed, bool all_off)
{
    /* TG_RANDOM_SEED=N runs that graph alone (with TG_DUMP_PASSES, to see its passes). */
    const char *only = getenv("TG_RANDOM_SEED");
    if (only && strtoull(only, NULL, 10) != seed)
        return;
    tg_rng data_rng;
    tg_rng_seed(&data_rng, seed ^ 0xabcdef);
    double data[N_INPUTS][120];
    for (int i = 0; i < N_INPUTS; i++)
        for (int k = 0; k < 120; k++)
            data[i][k] = 2 * tg_rng_uniform(&data_rng) - 1;

    tg_tape *tape = tg_tape_new();
    tg_tensor *in[N_INPUTS], *eager[16], *traced[16];
    for (int i = 0; i < N_INPUTS; i++)
        in[i] = tg_from_data(tape, TG_F64, input_ndims[i], input_shapes[i], data[i]);
    int n = build(in, seed, eager);

    tg_tape_trace(tape, true);
    for (int i = 0; i < N_INPUTS; i++)
        in[i] = tg_placeholder(tape, input_names[i], TG_F64, input_ndims[i], input_shapes[i]);
    ck_assert_int_eq(build(in, seed, traced), n);
    tg_tape_trace(tape, false);

    char disable[128] = "all";
    if (!all_off) {
        disable[0] = '\0';
        tg_rng choose;
        tg_rng_seed(&choose, seed * 31 + 7);
        for (size_t k = 0; k < sizeof pass_names / sizeof *pass_names; k++) {
            if (tg_rng_below(&choose, 3) == 0) {
                if (disable[0])
                    strcat(disable, ",");
                strcat(disable, pass_names[k]);
            }
        }
    }
    tg_plan *plan = tg_compile(tape, n, traced, &(tg_compile_opts){.disable = disable});
    ck_assert_msg(plan != NULL, "seed %llu: %s", (unsigned long long)seed, tg_last_error());
    for (int i = 0; i < N_INPUTS; i++)
        ck_assert_int_eq(tg_plan_set_input(plan, input_names[i], data[i]), 0);
    ck_assert_int_eq(tg_plan_run(plan), 0);
    double tol = all_off ? 1e-12 : 1e-9;
    for (int o = 0; o < n; o++) {
        const double *got = tg_plan_output(plan, o);
        for (int64_t k = 0; k < tg_numel(eager[o]); k++) {
            double want = tg_get(eager[o], k);
            ck_assert_msg(rel_err(got[k], want) <= tol || (isnan(want) && isnan(got[k])),
                          "seed %llu (off: %s): output %d element %lld: compiled %.17g, eager "
                          "%.17g", (unsigned long long)seed, disable, o, (long long)k, got[k],
                          want);
        }
    }

    /* Gradient check through the plan: d loss / d a[k] against central differences of the
     * plan's own loss, for a few elements of each input. */
    const int loss_out = n - N_INPUTS - 1;
    for (int i = 0; i < N_INPUTS; i++) {
        int64_t count = tg_numel(eager[loss_out + 1 + i]);
        double analytic[120];
        memcpy(analytic, tg_plan_output(plan, loss_out + 1 + i), (size_t)count * sizeof(double));
        for (int trial = 0; trial < 3 && count > 1; trial++) {
            int64_t k = (int64_t)tg_rng_below(&data_rng, (uint64_t)count);
            double saved = data[i][k], eps = 1e-6, f[2];
            for (int side = 0; side < 2; side++) {
                data[i][k] = saved + (side ? -eps : eps);
                ck_assert_int_eq(tg_plan_run(plan), 0);
                f[side] = *(const double *)tg_plan_output(plan, loss_out);
            }
            data[i][k] = saved;
            double numeric = (f[0] - f[1]) / (2 * eps);
            /* max() and comparisons have kinks; a difference across one is not a bug. */
            if (fabs(numeric - analytic[k]) > 1e-5 * fmax(1.0, fabs(numeric)))
                fprintf(stderr, "seed %llu: input %d element %lld: analytic %.10g numeric "
                        "%.10g (a kink?)\n", (unsigned long long)seed, i, (long long)k,
                        analytic[k], numeric);
            ck_assert_msg(fabs(numeric - analytic[k]) <= 1e-3 * fmax(1.0, fabs(numeric)),
                          "seed %llu: gradient of input %d element %lld: %.10g vs %.10g",
                          (unsigned long long)seed, i, (long long)k, analytic[k], numeric);
        }
    }
    tg_plan_free(plan);
    tg_tape_free(tape);
}

START_TEST(random_graphs_every_pass_off) { check_graph(1000 + (uint64_t)_i, true); }
END_TEST

START_TEST(random_graphs_random_passes) { check_graph(5000 + (uint64_t)_i, false); }
END_TEST

int main(void)
{
    Suite *s = suite_create("compile_random");
    TCase *tc = tcase_create("compile_random");
    tcase_set_timeout(tc, 300);
    tcase_add_loop_test(tc, random_graphs_every_pass_off, 0, 30);
    tcase_add_loop_test(tc, random_graphs_random_passes, 0, 150);
    suite_add_tcase(s, tc);
    return tg_run_suite(s);
}
