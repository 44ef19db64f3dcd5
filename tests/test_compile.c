/* Compiled plans against eager execution: tracing, the runner, updates, inputs, errors; each
 * pass alone (src/compile/pass_dce.c, pass_simplify.c, pass_cse.c, pass_fold_scale.c,
 * pass_lower_conv.c, pass_fuse.c, pass_fuse_stores.c) and all together on a CNN's training
 * step, and each shown to change the graph it is given (fuse_stores by tests/test_fuse.c,
 * as it acts only on fuse's kernels). */
#include "testing.h"
#include "compile/arena.h"
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

/* Ends the trace and compiles `out` with the passes in `disable` off. */
static tg_plan *compile_traced(tg_tape *tape, tg_tensor *out, const char *disable)
{
    ck_assert_int_eq(tg_tape_trace(tape, false), 0);
    tg_compile_opts opts = {.disable = disable};
    tg_plan *plan = tg_compile(tape, 1, &out, &opts);
    ck_assert_msg(plan != NULL, "%s", tg_last_error());
    return plan;
}

/* Runs the plan (its inputs set) and checks its f64 output against eager's values. */
static void run_and_compare(tg_plan *plan, const tg_tensor *eager, int64_t n)
{
    ck_assert_int_eq(tg_plan_run(plan), 0);
    const double *y = tg_plan_output(plan, 0);
    for (int64_t i = 0; i < n; i++)
        ck_assert_double_eq_tol(y[i], tg_get(eager, i), 1e-12 * (1 + fabs(tg_get(eager, i))));
}

/* One row times a transposed matrix, x W^T with x [1, K] (a linear layer at batch 1):
 * simplify turns it into W x^T, which reads W where it is instead of copying its transpose
 * at every run, and the result is eager's. With simplify off the product reads a copy. */
static bool product_reads_weight_in_place(const tg_plan *plan)
{
    const tg_graph *g = tg_plan_graph(plan);
    for (int i = 0; i < g->n; i++)
        if (g->nodes[i].op == TG_OP_MATMUL) {
            const tg_ir_node *left = &g->nodes[g->nodes[i].in[0]];
            return left->op == TG_OP_LEAF && left->leaf != TG_LEAF_INPUT; /* W, not x */
        }
    return false;
}

START_TEST(single_row_times_transpose)
{
    const char *configs[] = {"", "simplify"};
    for (size_t c = 0; c < 2; c++) {
        tg_tape *tape = tg_tape_new();
        tg_rng rng;
        tg_rng_seed(&rng, 7);
        tg_tensor *w = tg_rand_normal(tape, &rng, TG_F64, 2, SHAPE(5, 37), 0, 1);
        tg_tensor *ex = tg_rand_normal(tape, &rng, TG_F64, 2, SHAPE(1, 37), 0, 1);
        tg_tensor *ey = tg_matmul(ex, tg_transpose(w, 0, 1));
        ck_assert_ptr_nonnull(ey);
        ck_assert_int_eq(tg_tape_trace(tape, true), 0);
        tg_tensor *px = tg_placeholder(tape, "x", TG_F64, 2, SHAPE(1, 37));
        tg_plan *plan = compile_traced(tape, tg_matmul(px, tg_transpose(w, 0, 1)), configs[c]);
        ck_assert_int_eq(tg_plan_set_input(plan, "x", tg_data(ex)), 0);
        run_and_compare(plan, ey, 5);
        ck_assert_msg(product_reads_weight_in_place(plan) == (c == 0),
                      "with '%s' disabled the product %s the weight in place", configs[c],
                      c == 0 ? "does not read" : "reads");
        tg_plan_free(plan);
        tg_tape_free(tape);
    }
}
END_TEST

/* (x^T @ dy)^T, a linear layer's weight gradient in the weight's layout: simplify makes it
 * dy^T @ x, so the plan copies the small dy^T, not x^T, and no kernel reads the product
 * transposed. With simplify off the plan still computes the same values. */
static int64_t largest_matmul_operand_copy(const tg_plan *plan)
{
    const tg_graph *g = tg_plan_graph(plan);
    int64_t largest = 0;
    for (int i = 0; i < g->n; i++) {
        if (g->nodes[i].op != TG_OP_MATMUL)
            continue;
        for (int k = 0; k < 2; k++) {
            const tg_ir_node *in = &g->nodes[g->nodes[i].in[k]];
            if (in->op != TG_OP_LEAF && in->numel > largest)
                largest = in->numel; /* a kernel's output: a copy of a transposed view */
        }
    }
    return largest;
}

START_TEST(transpose_of_a_product)
{
    const char *configs[] = {"", "simplify"};
    for (size_t c = 0; c < 2; c++) {
        tg_tape *tape = tg_tape_new();
        tg_rng rng;
        tg_rng_seed(&rng, 3);
        tg_tensor *ex = tg_rand_normal(tape, &rng, TG_F64, 2, SHAPE(6, 40), 0, 1);
        tg_tensor *edy = tg_rand_normal(tape, &rng, TG_F64, 2, SHAPE(6, 3), 0, 1);
        tg_tensor *ey = tg_transpose(tg_matmul(tg_transpose(ex, 0, 1), edy), 0, 1);
        ck_assert_ptr_nonnull(ey);
        ck_assert_int_eq(tg_tape_trace(tape, true), 0);
        tg_tensor *px = tg_placeholder(tape, "x", TG_F64, 2, SHAPE(6, 40));
        tg_tensor *pdy = tg_placeholder(tape, "dy", TG_F64, 2, SHAPE(6, 3));
        tg_tensor *py = tg_transpose(tg_matmul(tg_transpose(px, 0, 1), pdy), 0, 1);
        tg_plan *plan = compile_traced(tape, tg_mul_scalar(py, 1.0), configs[c]);
        ck_assert_int_eq(tg_plan_set_input(plan, "x", tg_data(ex)), 0);
        ck_assert_int_eq(tg_plan_set_input(plan, "dy", tg_data(edy)), 0);
        run_and_compare(plan, ey, 3 * 40);
        int64_t copied = largest_matmul_operand_copy(plan);
        ck_assert_msg(c == 0 ? copied == 3 * 6 : copied == 6 * 40,
                      "with '%s' disabled the largest copied operand has %lld elements",
                      configs[c], (long long)copied);
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
            count += in->op == TG_OP_MATMUL || in->op == TG_PLAN_OP_CONV;
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

/* ---- a training step, each pass alone and all together --------------------------------------- */
/* A small CNN with every kind of layer the MNIST models use, f32: conv 3x3 -> batch norm
 * (training) -> relu -> max pool 2 -> conv -> batch norm -> relu -> avg pool -> linear ->
 * cross-entropy, its gradients, an SGD step with momentum and weight decay, and the
 * running-estimate updates. */
typedef struct {
    tg_tape *tape;
    tg_conv2d_layer c1, c2;
    tg_batchnorm_layer b1, b2;
    tg_linear_layer fc;
    tg_params *params;
    tg_optim *opt;
} cnn;

enum { BATCH = 8 };

static void cnn_init(cnn *m)
{
    tg_rng rng;
    tg_rng_seed(&rng, 11);
    m->tape = tg_tape_new();
    ck_assert_int_eq(tg_conv2d_layer_init(&m->c1, m->tape, &rng, TG_F32, 1, 4, 3, 1, 1, false), 0);
    ck_assert_int_eq(tg_batchnorm_layer_init(&m->b1, m->tape, TG_F32, 4), 0);
    ck_assert_int_eq(tg_conv2d_layer_init(&m->c2, m->tape, &rng, TG_F32, 4, 6, 3, 1, 1, true), 0);
    ck_assert_int_eq(tg_batchnorm_layer_init(&m->b2, m->tape, TG_F32, 6), 0);
    ck_assert_int_eq(tg_linear_layer_init(&m->fc, m->tape, &rng, TG_F32, 6 * 2 * 2, 10, true), 0);
    m->params = tg_params_new();
    ck_assert_int_eq(tg_conv2d_layer_register(&m->c1, m->params, "c1"), 0);
    ck_assert_int_eq(tg_batchnorm_layer_register(&m->b1, m->params, "b1"), 0);
    ck_assert_int_eq(tg_conv2d_layer_register(&m->c2, m->params, "c2"), 0);
    ck_assert_int_eq(tg_batchnorm_layer_register(&m->b2, m->params, "b2"), 0);
    ck_assert_int_eq(tg_linear_layer_register(&m->fc, m->params, "fc"), 0);
    m->opt = tg_sgd_new(m->params, &(tg_sgd_opts){.lr = 0.05, .momentum = 0.9,
                                                  .weight_decay = 1e-3});
    ck_assert_ptr_nonnull(m->opt);
}

static void cnn_free(cnn *m)
{
    tg_optim_free(m->opt);
    tg_params_free(m->params);
    tg_tape_free(m->tape);
}

/* The loss of one training step on x, y (placeholders or data), with the update recorded. */
static tg_tensor *cnn_step(cnn *m, tg_tensor *x, tg_tensor *y)
{
    tg_tensor *h = tg_conv2d_layer_forward(&m->c1, x);
    h = tg_max_pool2d(tg_relu(tg_batchnorm_layer_forward(&m->b1, h, true)), 2, 2, 0);
    h = tg_conv2d_layer_forward(&m->c2, h);
    h = tg_avg_pool2d(tg_relu(tg_batchnorm_layer_forward(&m->b2, h, true)), 2, 2, 0);
    tg_tensor *loss = tg_cross_entropy(tg_linear_layer_forward(&m->fc, tg_flatten(h, 1)), y);
    tg_tensor *w[16], *g[16];
    size_t n = tg_params_trainable(m->params, w, 16);
    ck_assert_int_eq(tg_grad(loss, (int)n, w, NULL, g), 0);
    ck_assert_int_eq(tg_optim_step(m->opt, g), 0);
    return loss;
}

static void batch_data(int step, float *x, float *y)
{
    tg_rng rng;
    tg_rng_seed(&rng, 100 + (uint64_t)step);
    for (int i = 0; i < BATCH * 64; i++)
        x[i] = (float)tg_rng_normal(&rng);
    for (int i = 0; i < BATCH; i++)
        y[i] = (float)tg_rng_below(&rng, 10);
}

/* Every parameter and buffer (running estimates, optimizer state) of both models agree. */
static void expect_same_state(cnn *a, cnn *b, double tol, const char *what)
{
    tg_params *lists[2][2] = {{a->params, tg_optim_state(a->opt)},
                              {b->params, tg_optim_state(b->opt)}};
    for (int l = 0; l < 2; l++) {
        ck_assert_uint_eq(tg_params_count(lists[0][l]), tg_params_count(lists[1][l]));
        for (size_t i = 0; i < tg_params_count(lists[0][l]); i++) {
            const tg_param *p = tg_params_get(lists[0][l], i), *q = tg_params_get(lists[1][l], i);
            double scale = 1e-30, diff = 0;
            for (int64_t e = 0; e < tg_numel(p->tensor); e++) {
                scale = fmax(scale, fabs(tg_get(p->tensor, e)));
                diff = fmax(diff, fabs(tg_get(p->tensor, e) - tg_get(q->tensor, e)));
            }
            ck_assert_msg(diff <= tol * fmax(1.0, scale), "%s: %s differs by %g (scale %g)",
                          what, p->name, diff, scale);
        }
    }
}

static const char *const all_passes[] = {"dce",  "simplify",    "cse",    "fold_scale",
                                         "lower_conv", "fuse", "fuse_stores", "memplan"};
#define N_PASSES (sizeof all_passes / sizeof *all_passes)

/* config < N_PASSES: that pass alone; N_PASSES: none; N_PASSES + 1: all. */
static void disable_list(size_t config, char *buf, size_t size)
{
    buf[0] = '\0';
    if (config == N_PASSES + 1)
        return;
    for (size_t k = 0; k < N_PASSES; k++) {
        if (k == config)
            continue;
        if (buf[0])
            strncat(buf, ",", size - strlen(buf) - 1);
        strncat(buf, all_passes[k], size - strlen(buf) - 1);
    }
}

START_TEST(training_step_each_pass)
{
    size_t config = (size_t)_i;
    char disable[256];
    disable_list(config, disable, sizeof disable);
    cnn eager, compiled;
    cnn_init(&eager);
    cnn_init(&compiled);

    tg_mark mark = tg_tape_mark(compiled.tape);
    tg_tape_trace(compiled.tape, true);
    tg_tensor *px = tg_placeholder(compiled.tape, "x", TG_F32, 4, SHAPE(BATCH, 1, 8, 8));
    tg_tensor *py = tg_placeholder(compiled.tape, "y", TG_F32, 1, SHAPE(BATCH));
    tg_tensor *loss = cnn_step(&compiled, px, py);
    tg_tape_trace(compiled.tape, false);
    tg_plan *plan = tg_compile(compiled.tape, 1, &loss, &(tg_compile_opts){.disable = disable});
    ck_assert_msg(plan != NULL, "%s", tg_last_error());
    tg_tape_rewind(compiled.tape, mark);

    tg_mark eager_mark = tg_tape_mark(eager.tape);
    float x[BATCH * 64], y[BATCH];
    for (int step = 0; step < 5; step++) {
        batch_data(step, x, y);
        tg_tensor *ex = tg_from_data(eager.tape, TG_F32, 4, SHAPE(BATCH, 1, 8, 8), x);
        tg_tensor *ey = tg_from_data(eager.tape, TG_F32, 1, SHAPE(BATCH), y);
        double want = tg_item(cnn_step(&eager, ex, ey));
        tg_tape_rewind(eager.tape, eager_mark);
        ck_assert_int_eq(tg_plan_set_input(plan, "x", x), 0);
        ck_assert_int_eq(tg_plan_set_input(plan, "y", y), 0);
        ck_assert_int_eq(tg_plan_run(plan), 0);
        double got = *(const float *)tg_plan_output(plan, 0);
        ck_assert_msg(fabs(got - want) <= 1e-5 * fmax(1.0, fabs(want)),
                      "off: '%s', step %d: loss %.9g compiled, %.9g eager", disable, step, got,
                      want);
    }
    expect_same_state(&eager, &compiled, 1e-5, disable);
    tg_plan_free(plan);
    cnn_free(&eager);
    cnn_free(&compiled);
}
END_TEST

/* Each pass does something to the training step: a pass that silently stopped firing would
 * still pass the equivalence tests above. DCE alone drops a dead value; every other pass, run
 * with DCE only (which sweeps what it replaced), leaves fewer nodes than DCE alone did.
 * (fold_scale acts on evaluation graphs; its own test is fold_scale_folds_batch_norm.) */
START_TEST(each_pass_changes_the_step)
{
    const char *const changes[] = {"dce", "simplify", "cse", "lower_conv", "fuse"};
    for (size_t c = 0; c < sizeof changes / sizeof *changes; c++) {
        size_t config = 0;
        while (strcmp(all_passes[config], changes[c]) != 0)
            config++;
        char disable[256] = "";
        for (size_t k = 0; k < N_PASSES; k++) {
            if (k == config || strcmp(all_passes[k], "dce") == 0)
                continue;
            strcat(disable, disable[0] ? "," : "");
            strcat(disable, all_passes[k]);
        }
        cnn m;
        cnn_init(&m);
        tg_mark mark = tg_tape_mark(m.tape);
        tg_tape_trace(m.tape, true);
        tg_tensor *loss = cnn_step(&m, tg_placeholder(m.tape, "x", TG_F32, 4, SHAPE(BATCH, 1, 8, 8)),
                                   tg_placeholder(m.tape, "y", TG_F32, 1, SHAPE(BATCH)));
        tg_exp(loss); /* a value no output needs, which eager execution would compute */
        tg_tape_trace(m.tape, false);
        tg_plan *plan = tg_compile(m.tape, 1, &loss, &(tg_compile_opts){.disable = disable});
        ck_assert_msg(plan != NULL, "%s", tg_last_error());
        tg_tape_rewind(m.tape, mark);
        tg_plan_stage before, after; /* the stage before the pass: traced, or after DCE */
        int stages = tg_plan_stages(plan, 0, &before);
        for (int s = 1; s < stages; s++) {
            tg_plan_stages(plan, s, &after);
            if (strcmp(after.name, changes[c]) == 0)
                break;
            if (strcmp(after.name, "dce") == 0)
                before = after;
        }
        ck_assert_str_eq(after.name, changes[c]);
        ck_assert_msg(after.ran && after.nodes < before.nodes, "%s left %d of %d nodes",
                      changes[c], after.nodes, before.nodes);
        tg_plan_free(plan);
        cnn_free(&m);
    }
}
END_TEST

/* A plan's arena: aligned, zeroed and writable end to end, in malloc's blocks and in the
 * huge-page mappings of the larger ones alike (compile/arena.c), sizes on either side of
 * its 8 MB threshold. */
START_TEST(arena_sizes)
{
    const size_t sizes[] = {0, 100, 4096, (8u << 20) - 64, 8u << 20, (9u << 20) + 1, 33u << 20};
    for (size_t i = 0; i < sizeof sizes / sizeof sizes[0]; i++) {
        size_t n = sizes[i];
        char *a = tg_arena_alloc(n);
        ck_assert_ptr_nonnull(a);
        ck_assert_uint_eq((uintptr_t)a % 64, 0);
        for (size_t k = 0; k < n; k += 4093)
            ck_assert_int_eq(a[k], 0);
        if (n > 0) {
            ck_assert_int_eq(a[n - 1], 0);
            memset(a, 0x5a, n);
        }
        tg_arena_free(a, n);
    }
    tg_arena_free(NULL, 0);
}
END_TEST

int main(void)
{
    Suite *s = suite_create("compile");
    TCase *tc = tcase_create("compile");
    tcase_set_timeout(tc, 120);
    tcase_add_test(tc, arena_sizes);
    tcase_add_test(tc, compiled_matches_eager);
    tcase_add_test(tc, fold_scale_folds_batch_norm);
    tcase_add_test(tc, single_row_times_transpose);
    tcase_add_test(tc, transpose_of_a_product);
    tcase_add_loop_test(tc, training_step_each_pass, 0, (int)N_PASSES + 2);
    tcase_add_test(tc, each_pass_changes_the_step);
    suite_add_tcase(s, tc);
    return tg_run_suite(s);
}
