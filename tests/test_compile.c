/* Compiled plans against eager execution: tracing, the runner, updates, inputs, errors. */
#include "testing.h"
#include "compile/graph.h"
#include "tapegrad_nn.h"

#include <math.h>
#include <string.h>

/* y = sum((a * b + exp(a)) / 2) over axis 1, with b broadcast. */
static tg_tensor *small_fn(tg_tensor *a, tg_tensor *b)
{
    tg_tensor *t = tg_add(tg_mul(a, b), tg_exp(a));
    return tg_sum(tg_mul_scalar(t, 0.5), 1, (const int[]){1}, false);
}

START_TEST(compiled_matches_eager)
{
    const char *configs[] = {"all", "", "dce", "memplan"};
    for (size_t c = 0; c < sizeof configs / sizeof *configs; c++) {
        tg_tape *tape = tg_tape_new();
        double a[6] = {0.1, -0.2, 0.3, 0.4, 0.5, -0.6}, b[3] = {1, 2, 3};
        tg_tensor *ea = tg_from_data(tape, TG_F64, 2, SHAPE(2, 3), a);
        tg_tensor *eb = tg_from_data(tape, TG_F64, 1, SHAPE(3), b);
        tg_tensor *ey = small_fn(ea, eb);
        ck_assert_ptr_nonnull(ey);

        ck_assert_int_eq(tg_tape_trace(tape, true), 0);
        tg_tensor *pa = tg_placeholder(tape, "a", TG_F64, 2, SHAPE(2, 3));
        tg_tensor *pb = tg_placeholder(tape, "b", TG_F64, 1, SHAPE(3));
        tg_tensor *py = small_fn(pa, pb);
        ck_assert_ptr_nonnull(py);
        ck_assert_ptr_null(tg_data(py));
        ck_assert_int_eq(tg_tape_trace(tape, false), 0);
        tg_compile_opts opts = {.disable = configs[c]};
        tg_plan *plan = tg_compile(tape, 1, &py, &opts);
        ck_assert_msg(plan != NULL, "%s", tg_last_error());
        ck_assert_int_eq(tg_plan_set_input(plan, "a", a), 0);
        ck_assert_int_eq(tg_plan_set_input(plan, "b", b), 0);
        ck_assert_int_eq(tg_plan_run(plan), 0);
        const double *y = tg_plan_output(plan, 0);
        for (int i = 0; i < 2; i++)
            ck_assert_double_eq_tol(y[i], tg_get(ey, i), 1e-12 * fabs(tg_get(ey, i)));
        tg_plan_free(plan);
        tg_tape_free(tape);
    }
}
END_TEST

/* Evaluation-mode conv -> batch norm -> relu -> linear -> batch norm: with fold_scale the
 * batch-norm scales move into the weights (no full-size multiply is left after a product),
 * and the result is the unfolded one up to rounding. */
static int full_size_products(const tg_plan *plan)
{
    const tg_graph *g = tg_plan_graph(plan);
    int count = 0;
    for (int i = 0; i < g->n; i++) {
        const tg_ir_node *n = &g->nodes[i];
        if (n->op != TG_OP_MUL)
            continue;
        for (int k = 0; k < 2; k++) {
            const tg_ir_node *in = &g->nodes[n->in[k]];
            while (in->op == TG_OP_RESHAPE || in->op == TG_OP_SUB || in->op == TG_OP_ADD)
                in = &g->nodes[in->in[0]];
            count += in->op == TG_OP_MATMUL;
        }
    }
    return count;
}

START_TEST(fold_scale_folds_batch_norm)
{
    tg_tape *tape = tg_tape_new();
    tg_rng rng;
    tg_rng_seed(&rng, 3);
    tg_conv2d_layer conv;
    tg_batchnorm_layer bn1, bn2;
    tg_linear_layer fc;
    ck_assert_int_eq(tg_conv2d_layer_init(&conv, tape, &rng, TG_F32, 2, 3, 3, 1, 1, false), 0);
    ck_assert_int_eq(tg_batchnorm_layer_init(&bn1, tape, TG_F32, 3), 0);
    ck_assert_int_eq(tg_linear_layer_init(&fc, tape, &rng, TG_F32, 3 * 5 * 5, 4, true), 0);
    ck_assert_int_eq(tg_batchnorm_layer_init(&bn2, tape, TG_F32, 4), 0);
    /* Running estimates and affine parameters that are not the identity. */
    tg_batchnorm_layer *bns[2] = {&bn1, &bn2};
    for (int b = 0; b < 2; b++) {
        tg_tensor *v[4] = {bns[b]->gamma, bns[b]->beta, bns[b]->running_mean, bns[b]->running_var};
        for (int k = 0; k < 4; k++)
            for (int64_t e = 0; e < tg_numel(v[k]); e++)
                ((float *)tg_data(v[k]))[e] = (float)(k == 3 ? 0.5 + tg_rng_uniform(&rng)
                                                             : tg_rng_uniform(&rng) - 0.5);
    }
    float x[2 * 2 * 5 * 5];
    for (int i = 0; i < 100; i++)
        x[i] = (float)tg_rng_uniform(&rng);
    const float *out[2];
    tg_plan *plans[2];
    const char *disable[2] = {"fold_scale,fuse", "fuse"};
    for (int c = 0; c < 2; c++) {
        tg_mark mark = tg_tape_mark(tape);
        tg_tape_trace(tape, true);
        tg_tensor *in = tg_placeholder(tape, "x", TG_F32, 4, SHAPE(2, 2, 5, 5));
        tg_tensor *h = tg_relu(tg_batchnorm_layer_forward(&bn1, tg_conv2d_layer_forward(&conv, in),
                                                          false));
        tg_tensor *y = tg_batchnorm_layer_forward(&bn2, tg_linear_layer_forward(&fc, tg_flatten(h, 1)),
                                                  false);
        tg_tape_trace(tape, false);
        plans[c] = tg_compile(tape, 1, &y, &(tg_compile_opts){.disable = disable[c]});
        ck_assert_msg(plans[c] != NULL, "%s", tg_last_error());
        tg_tape_rewind(tape, mark);
        ck_assert_int_eq(tg_plan_set_input(plans[c], "x", x), 0);
        ck_assert_int_eq(tg_plan_run(plans[c]), 0);
        out[c] = tg_plan_output(plans[c], 0);
    }
    ck_assert_int_eq(full_size_products(plans[0]), 2); /* conv's and linear's scales */
    ck_assert_int_eq(full_size_products(plans[1]), 0);
    for (int i = 0; i < 8; i++)
        ck_assert_float_eq_tol(out[1][i], out[0][i], 1e-5 * fmaxf(1.0f, fabsf(out[0][i])));
    tg_plan_free(plans[0]);
    tg_plan_free(plans[1]);
    tg_tape_free(tape);
}
END_TEST

int main(void)
{
    Suite *s = suite_create("compile");
    TCase *tc = tcase_create("compile");
    tcase_set_timeout(tc, 120);
    tcase_add_test(tc, compiled_matches_eager);
    tcase_add_test(tc, fold_scale_folds_batch_norm);
    suite_add_tcase(s, tc);
    return tg_run_suite(s);
}
