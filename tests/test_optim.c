/* Optimizers: hand-computed steps for SGD (momentum, Nesterov, dampening, weight decay),
 * Adam and AdamW; skipped parameters; the learning rate; state exposed by name and restored
 * exactly; argument errors; and a training loop over marks and rewinds. The PyTorch fixtures
 * (test_torch_agreement) cover longer runs. */
#include "testing.h"
#include "tapegrad_nn.h"

#include <math.h>
#include <stdio.h>
#include <string.h>

/* One parameter "w" = {value} in f64, and an optimizer stepping it with the given grads. */
static double run_scalar(tg_optim *(*make)(const tg_params *, const void *), const void *opts,
                         double start, int steps, const double *grads)
{
    tg_tape *tape = tg_tape_new();
    tg_tensor *w = tg_full(tape, TG_F64, 1, SHAPE(1), start);
    tg_params *params = tg_params_new();
    ck_assert_int_eq(tg_params_add(params, NULL, "w", w, TG_TRAINABLE), 0);
    tg_optim *opt = make(params, opts);
    ck_assert_ptr_nonnull(opt);
    for (int s = 0; s < steps; s++) {
        tg_tensor *g = tg_full(tape, TG_F64, 1, SHAPE(1), grads[s]);
        ck_assert_int_eq(tg_optim_step(opt, &g), 0);
    }
    ck_assert_double_eq(tg_item(tg_params_find(tg_optim_state(opt), "optim.step.w")), steps);
    double result = tg_get(w, 0);
    tg_optim_free(opt);
    tg_params_free(params);
    tg_tape_free(tape);
    return result;
}

static tg_optim *make_sgd(const tg_params *p, const void *o) { return tg_sgd_new(p, o); }
static tg_optim *make_adam(const tg_params *p, const void *o) { return tg_adam_new(p, o); }
static tg_optim *make_adamw(const tg_params *p, const void *o) { return tg_adamw_new(p, o); }

START_TEST(sgd_hand_computed)
{
    const double g[3] = {1, 2, -1};
    /* Plain: p -= lr g. */
    tg_sgd_opts plain = {.lr = 0.1};
    ck_assert_double_eq_tol(run_scalar(make_sgd, &plain, 1, 3, g), 1 - 0.1 * 2, 1e-15);
    /* Momentum 0.9: buf = 1, 2.9, 1.61; p = 0.9, 0.61, 0.449. */
    tg_sgd_opts mom = {.lr = 0.1, .momentum = 0.9};
    ck_assert_double_eq_tol(run_scalar(make_sgd, &mom, 1, 1, g), 0.9, 1e-15);
    ck_assert_double_eq_tol(run_scalar(make_sgd, &mom, 1, 2, g), 0.61, 1e-15);
    ck_assert_double_eq_tol(run_scalar(make_sgd, &mom, 1, 3, g), 0.449, 1e-15);
    /* Nesterov: d = g + 0.9 buf = 1.9, 4.61; p = 0.81, 0.349. */
    tg_sgd_opts nes = {.lr = 0.1, .momentum = 0.9, .nesterov = true};
    ck_assert_double_eq_tol(run_scalar(make_sgd, &nes, 1, 1, g), 0.81, 1e-15);
    ck_assert_double_eq_tol(run_scalar(make_sgd, &nes, 1, 2, g), 0.349, 1e-15);
    /* Dampening 0.5 spares the first step: buf = 1, then 0.9 + 0.5 * 2 = 1.9. */
    tg_sgd_opts damp = {.lr = 0.1, .momentum = 0.9, .dampening = 0.5};
    ck_assert_double_eq_tol(run_scalar(make_sgd, &damp, 1, 2, g), 1 - 0.1 - 0.19, 1e-15);
    /* Weight decay adds wd p to the gradient: 1 - 0.1 (1 + 0.1). */
    tg_sgd_opts wd = {.lr = 0.1, .weight_decay = 0.1};
    ck_assert_double_eq_tol(run_scalar(make_sgd, &wd, 1, 1, g), 0.89, 1e-15);
}
END_TEST

START_TEST(adam_hand_computed)
{
    /* On the first step both moments are exactly corrected: p -= lr g / (|g| + eps). */
    const double g[2] = {0.5, -3};
    tg_adam_opts adam = tg_adam_defaults();
    adam.lr = 0.01;
    adam.eps = 0.1;
    ck_assert_double_eq_tol(run_scalar(make_adam, &adam, 2, 1, g), 2 - 0.01 * 0.5 / 0.6, 1e-15);
    /* L2 decay goes into the gradient: g' = 0.5 + 0.1 * 2 = 0.7. */
    adam.weight_decay = 0.1;
    ck_assert_double_eq_tol(run_scalar(make_adam, &adam, 2, 1, g), 2 - 0.01 * 0.7 / 0.8, 1e-15);
    /* AdamW shrinks p first: 2 (1 - 0.01 * 0.1) - 0.01 * 0.5 / 0.6. */
    ck_assert_double_eq_tol(run_scalar(make_adamw, &adam, 2, 1, g),
                            2 * (1 - 0.001) - 0.01 * 0.5 / 0.6, 1e-15);
    /* Second step by the formula: m = 0.1 (0.9 * 0.5 - 3), v = 0.001 (0.999 * 0.25 + 9). */
    tg_adam_opts plain = tg_adam_defaults();
    double p = 2 - 1e-3 * 0.5 / (0.5 + 1e-8);
    double m = 0.9 * 0.05 + 0.1 * -3, v = 0.999 * 0.00025 + 0.001 * 9;
    p -= 1e-3 / (1 - 0.81) * m / (sqrt(v) / sqrt(1 - 0.999 * 0.999) + 1e-8);
    ck_assert_double_eq_tol(run_scalar(make_adam, &plain, 2, 2, g), p, 1e-14);
    tg_adam_opts w = tg_adamw_defaults();
    ck_assert_double_eq(w.weight_decay, 1e-2);
    ck_assert_double_eq(w.beta2, 0.999);
}
END_TEST

/* Two parameters (f32 [2, 3] and f64 [4]) named "a.weight" and "b". */
typedef struct {
    tg_tape *tape;
    tg_params *params;
    tg_tensor *p[2];
} model;

static void model_init(model *m, uint64_t seed)
{
    tg_rng rng;
    tg_rng_seed(&rng, seed);
    m->tape = tg_tape_new();
    m->params = tg_params_new();
    m->p[0] = tg_rand_normal(m->tape, &rng, TG_F32, 2, SHAPE(2, 3), 0, 1);
    m->p[1] = tg_rand_normal(m->tape, &rng, TG_F64, 1, SHAPE(4), 0, 1);
    tg_tensor *buffer = tg_zeros(m->tape, TG_F32, 1, SHAPE(2));
    ck_assert_int_eq(tg_params_add(m->params, "a", "weight", m->p[0], TG_TRAINABLE), 0);
    ck_assert_int_eq(tg_params_add(m->params, "a", "running", buffer, TG_BUFFER), 0);
    ck_assert_int_eq(tg_params_add(m->params, NULL, "b", m->p[1], TG_TRAINABLE), 0);
}

static void model_free(model *m)
{
    tg_params_free(m->params);
    tg_tape_free(m->tape);
}

static void random_grads(tg_tape *tape, tg_rng *rng, tg_tensor **g)
{
    g[0] = tg_rand_normal(tape, rng, TG_F32, 2, SHAPE(2, 3), 0, 1);
    g[1] = tg_rand_normal(tape, rng, TG_F64, 1, SHAPE(4), 0, 1);
}

static size_t bytes_of(const tg_tensor *t)
{
    return (size_t)tg_numel(t) * (tg_dtype_of(t) == TG_F64 ? 8 : 4);
}

/* Runs 3 steps on one optimizer, copies parameters and state into a second one by name, then
 * steps both with the same gradients: they must stay bit-identical. */
static void check_restore(tg_optim *(*make)(const tg_params *, const void *), const void *opts,
                          const char *const *slots, int nslots)
{
    model a, b;
    model_init(&a, 1);
    model_init(&b, 2);
    tg_optim *oa = make(a.params, opts), *ob = make(b.params, opts);
    ck_assert_ptr_nonnull(oa);
    ck_assert_ptr_nonnull(ob);
    ck_assert_uint_eq(tg_optim_count(oa), 2);
    tg_params *state = tg_optim_state(oa);
    ck_assert_uint_eq(tg_params_count(state), (size_t)(2 * (1 + nslots)));
    for (size_t i = 0; i < tg_params_count(state); i++)
        ck_assert_int_eq(tg_params_get(state, i)->kind, TG_BUFFER);
    char name[64];
    for (int k = 0; k < nslots; k++) {
        snprintf(name, sizeof name, "optim.%s.a.weight", slots[k]);
        tg_tensor *s = tg_params_find(state, name);
        ck_assert_msg(s != NULL, "no %s", name);
        ck_assert_int_eq(tg_dtype_of(s), TG_F32);
        ck_assert_int_eq(tg_dim(s, 1), 3);
    }
    tg_rng rng;
    tg_rng_seed(&rng, 9);
    tg_tensor *g[2];
    for (int s = 0; s < 3; s++) {
        random_grads(a.tape, &rng, g);
        if (s == 1)
            g[1] = NULL; /* "b" skips a step */
        ck_assert_int_eq(tg_optim_step(oa, g), 0);
    }
    ck_assert_double_eq(tg_item(tg_params_find(state, "optim.step.a.weight")), 3);
    ck_assert_double_eq(tg_item(tg_params_find(state, "optim.step.b")), 2);
    /* The restore, as a checkpoint would do it: every entry by name. */
    for (int i = 0; i < 2; i++)
        memcpy(tg_data(b.p[i]), tg_data(a.p[i]), bytes_of(a.p[i]));
    tg_params *sb = tg_optim_state(ob);
    for (size_t i = 0; i < tg_params_count(state); i++) {
        const tg_param *e = tg_params_get(state, i);
        tg_tensor *dst = tg_params_find(sb, e->name);
        ck_assert_ptr_nonnull(dst);
        memcpy(tg_data(dst), tg_data(e->tensor), bytes_of(e->tensor));
    }
    for (int s = 0; s < 2; s++) {
        random_grads(a.tape, &rng, g);
        ck_assert_int_eq(tg_optim_step(oa, g), 0);
        ck_assert_int_eq(tg_optim_step(ob, g), 0);
    }
    for (int i = 0; i < 2; i++)
        ck_assert_int_eq(memcmp(tg_data(a.p[i]), tg_data(b.p[i]), bytes_of(a.p[i])), 0);
    tg_optim_free(oa);
    tg_optim_free(ob);
    model_free(&a);
    model_free(&b);
}

START_TEST(state_is_named_and_restores_exactly)
{
    tg_sgd_opts sgd = {.lr = 0.05, .momentum = 0.9, .weight_decay = 1e-2, .nesterov = true};
    const char *sgd_slots[] = {"momentum"};
    check_restore(make_sgd, &sgd, sgd_slots, 1);
    tg_sgd_opts plain = {.lr = 0.05};
    check_restore(make_sgd, &plain, NULL, 0); /* no momentum, no buffer */
    tg_adam_opts adam = tg_adam_defaults();
    adam.weight_decay = 1e-2;
    const char *adam_slots[] = {"exp_avg", "exp_avg_sq"};
    check_restore(make_adam, &adam, adam_slots, 2);
    tg_adam_opts adamw = tg_adamw_defaults();
    check_restore(make_adamw, &adamw, adam_slots, 2);
}
END_TEST

START_TEST(skips_null_gradients_and_sets_lr)
{
    model m;
    model_init(&m, 3);
    tg_sgd_opts o = {.lr = 0.5};
    tg_optim *opt = tg_sgd_new(m.params, &o);
    ck_assert_double_eq(tg_optim_lr(opt), 0.5);
    float before0[6];
    double before1[4];
    memcpy(before0, tg_data(m.p[0]), sizeof before0);
    memcpy(before1, tg_data(m.p[1]), sizeof before1);
    tg_tensor *g[2] = {tg_full(m.tape, TG_F32, 2, SHAPE(2, 3), 1), NULL};
    ck_assert_int_eq(tg_optim_step(opt, g), 0);
    ck_assert_int_eq(memcmp(before1, tg_data(m.p[1]), sizeof before1), 0);
    ck_assert_double_eq_tol(tg_get(m.p[0], 0), before0[0] - 0.5, 1e-6);
    ck_assert_int_eq(tg_optim_set_lr(opt, 0.25), 0);
    ck_assert_double_eq(tg_optim_lr(opt), 0.25);
    g[1] = tg_full(m.tape, TG_F64, 1, SHAPE(4), 2);
    ck_assert_int_eq(tg_optim_step(opt, g), 0);
    ck_assert_double_eq_tol(tg_get(m.p[0], 0), before0[0] - 0.75, 1e-6);
    ck_assert_double_eq_tol(tg_get(m.p[1], 3), before1[3] - 0.5, 1e-15);
    ck_assert_int_ne(tg_optim_set_lr(opt, -1), 0);
    ck_assert_int_ne(tg_optim_set_lr(opt, INFINITY), 0);
    ck_assert_double_eq(tg_optim_lr(opt), 0.25);
    tg_optim_free(opt);
    model_free(&m);
}
END_TEST

START_TEST(optimizers_report_bad_arguments)
{
    model m;
    model_init(&m, 4);
    tg_sgd_opts bad_nesterov = {.lr = 0.1, .nesterov = true};
    ck_assert_ptr_null(tg_sgd_new(m.params, &bad_nesterov));
    ck_assert_ptr_nonnull(strstr(tg_last_error(), "Nesterov"));
    tg_sgd_opts negative = {.lr = -0.1};
    ck_assert_ptr_null(tg_sgd_new(m.params, &negative));
    ck_assert_int_eq(tg_last_error_code(), TG_ERR_ARG);
    ck_assert_ptr_null(tg_sgd_new(NULL, &negative));
    ck_assert_int_eq(tg_last_error_code(), TG_ERR_NULL);
    tg_adam_opts betas = tg_adam_defaults();
    betas.beta2 = 1;
    ck_assert_ptr_null(tg_adamw_new(m.params, &betas));
    ck_assert_ptr_nonnull(strstr(tg_last_error(), "adamw: betas"));

    tg_adam_opts o = tg_adam_defaults();
    tg_params *twice = tg_params_new();
    ck_assert_int_eq(tg_params_add(twice, NULL, "x", m.p[1], TG_TRAINABLE), 0);
    ck_assert_int_eq(tg_params_add(twice, NULL, "y", m.p[1], TG_TRAINABLE), 0);
    ck_assert_ptr_null(tg_adam_new(twice, &o));
    ck_assert_ptr_nonnull(strstr(tg_last_error(), "'x' and 'y' are the same tensor"));
    tg_params_free(twice);
    tg_optim *opt = tg_adam_new(m.params, &o);
    ck_assert_ptr_nonnull(opt);
    float before[6];
    memcpy(before, tg_data(m.p[0]), sizeof before);
    /* A wrong gradient anywhere refuses the whole step. */
    tg_tensor *g[2] = {tg_full(m.tape, TG_F32, 2, SHAPE(2, 3), 1),
                       tg_full(m.tape, TG_F32, 1, SHAPE(4), 1)};
    ck_assert_int_eq(tg_optim_step(opt, g), TG_ERR_DTYPE);
    ck_assert_ptr_nonnull(strstr(tg_last_error(), "parameter 'b' is f64 [4]"));
    ck_assert_int_eq(memcmp(before, tg_data(m.p[0]), sizeof before), 0);
    ck_assert_double_eq(tg_item(tg_params_find(tg_optim_state(opt), "optim.step.a.weight")), 0);
    ck_assert_int_eq(tg_optim_step(opt, NULL), TG_ERR_NULL);
    /* A restored step count that is not a count is refused. */
    tg_tensor *step = tg_params_find(tg_optim_state(opt), "optim.step.b");
    *(double *)tg_data(step) = -1;
    g[1] = tg_full(m.tape, TG_F64, 1, SHAPE(4), 1);
    ck_assert_int_eq(tg_optim_step(opt, g), TG_ERR_NUMERIC);
    tg_optim_free(opt);
    tg_optim_free(NULL);
    ck_assert_int_eq(tg_optim_step(NULL, g), TG_ERR_NULL);
    ck_assert(isnan(tg_optim_lr(NULL)));
    model_free(&m);
}
END_TEST

/* A training loop as users write it: layers before the mark, a rewind after every step. The
 * task: is the bright blob in the top or the bottom half of the image? */
START_TEST(training_loop_learns_with_rewinds)
{
    tg_tape *tape = tg_tape_new();
    tg_rng rng;
    tg_rng_seed(&rng, 7);
    tg_conv2d_layer conv;
    tg_batchnorm_layer bn;
    tg_linear_layer fc;
    ck_assert_int_eq(tg_conv2d_layer_init(&conv, tape, &rng, TG_F32, 1, 4, 3, 1, 1, true), 0);
    ck_assert_int_eq(tg_batchnorm_layer_init(&bn, tape, TG_F32, 4), 0);
    ck_assert_int_eq(tg_linear_layer_init(&fc, tape, &rng, TG_F32, 4 * 4 * 4, 2, true), 0);
    tg_params *params = tg_params_new();
    ck_assert_int_eq(tg_conv2d_layer_register(&conv, params, "conv"), 0);
    ck_assert_int_eq(tg_batchnorm_layer_register(&bn, params, "bn"), 0);
    ck_assert_int_eq(tg_linear_layer_register(&fc, params, "fc"), 0);
    tg_tensor *xs[8], *grads[8];
    size_t n = tg_params_trainable(params, xs, 8);
    ck_assert_uint_eq(n, 6);
    tg_adam_opts o = tg_adam_defaults();
    o.lr = 0.01;
    tg_optim *opt = tg_adam_new(params, &o);
    ck_assert_ptr_nonnull(opt);
    tg_mark mark = tg_tape_mark(tape);
    size_t size = 0;
    double first = 0, last = 0;
    enum { B = 16 };
    float images[B * 64];
    int labels[B];
    for (int step = 0; step < 60; step++) {
        for (int i = 0; i < B; i++) {
            labels[i] = (int)tg_rng_below(&rng, 2);
            for (int p = 0; p < 64; p++) {
                bool top = p < 32;
                images[i * 64 + p] = (float)(0.3 * tg_rng_normal(&rng) +
                                             (top == (labels[i] == 0) ? 1.0 : 0.0));
            }
        }
        tg_tensor *x = tg_from_data(tape, TG_F32, 4, SHAPE(B, 1, 8, 8), images);
        tg_tensor *h = tg_relu(tg_batchnorm_layer_forward(&bn, tg_conv2d_layer_forward(&conv, x),
                                                          true));
        h = tg_linear_layer_forward(&fc, tg_flatten(tg_max_pool2d(h, 2, 0, 0), 1));
        tg_tensor *loss = tg_cross_entropy(h, tg_labels_from_int(tape, TG_F32, B, labels));
        ck_assert_msg(loss != NULL, "%s", tg_last_error());
        ck_assert_int_eq(tg_grad(loss, (int)n, xs, NULL, grads), 0);
        ck_assert_int_eq(tg_optim_step(opt, grads), 0);
        if (step == 0) {
            first = tg_item(loss);
            size = tg_tape_size(tape);
        }
        ck_assert_uint_eq(tg_tape_size(tape), size); /* the same graph every step */
        last = tg_item(loss);
        ck_assert_int_eq(tg_tape_rewind(tape, mark), 0);
    }
    printf("training loop: loss %.4f -> %.4f\n", first, last);
    ck_assert_double_lt(last, 0.5 * first);
    ck_assert_double_ne(tg_get(bn.running_mean, 0), 0);
    tg_optim_free(opt);
    tg_params_free(params);
    tg_tape_free(tape);
}
END_TEST

int main(void)
{
    Suite *s = suite_create("optim");
    TCase *tc = tcase_create("optim");
    tcase_add_test(tc, sgd_hand_computed);
    tcase_add_test(tc, adam_hand_computed);
    tcase_add_test(tc, state_is_named_and_restores_exactly);
    tcase_add_test(tc, skips_null_gradients_and_sets_lr);
    tcase_add_test(tc, optimizers_report_bad_arguments);
    tcase_add_test(tc, training_loop_learns_with_rewinds);
    suite_add_tcase(s, tc);
    return tg_run_suite(s);
}
