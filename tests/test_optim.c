/* Optimizers: hand-computed steps for SGD (momentum, Nesterov, dampening, weight decay),
 * Adam and AdamW; skipped parameters; the learning rate; state exposed by name and restored
 * exactly; argument errors; a training loop over marks and rewinds; the same step traced and
 * compiled against eager twins; one tape for parameters and state; state dropped by a
 * rewind. The PyTorch fixtures (test_torch_agreement) cover longer runs. */
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
        /* The same gradients, on b's tape (an optimizer takes them from its parameters'). */
        tg_tensor *gb[2];
        for (int i = 0; i < 2; i++)
            gb[i] = tg_from_data(b.tape, tg_dtype_of(g[i]), tg_ndim(g[i]), tg_shape(g[i]),
                                 tg_data(g[i]));
        ck_assert_int_eq(tg_optim_step(ob, gb), 0);
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

/* ---- traced and compiled steps -------------------------------------------------------------- */
/* Three parameters on one tape, "w" f64 [2, 3], "b" f64 [4] and "h" f32 [3], the same values
 * for the same seed, with an optimizer over them. */
enum { NP = 3 };
static const int64_t twin_shapes[NP][2] = {{2, 3}, {4, 0}, {3, 0}};
static const int twin_ndim[NP] = {2, 1, 1};
static const tg_dtype twin_dtype[NP] = {TG_F64, TG_F64, TG_F32};

static int64_t twin_numel(int i)
{
    return twin_shapes[i][0] * (twin_ndim[i] == 2 ? twin_shapes[i][1] : 1);
}

typedef struct {
    tg_tape *tape;
    tg_params *params;
    tg_tensor *p[NP];
    tg_optim *opt;
} twin;

typedef tg_optim *(*make_fn)(const tg_params *, const void *);

static void twin_init(twin *t, make_fn make, const void *opts)
{
    tg_rng rng;
    tg_rng_seed(&rng, 11);
    t->tape = tg_tape_new();
    t->params = tg_params_new();
    const char *names[NP] = {"w", "b", "h"};
    for (int i = 0; i < NP; i++) {
        t->p[i] = tg_rand_normal(t->tape, &rng, twin_dtype[i], twin_ndim[i], twin_shapes[i], 0, 1);
        ck_assert_int_eq(tg_params_add(t->params, NULL, names[i], t->p[i], TG_TRAINABLE), 0);
    }
    t->opt = make(t->params, opts);
    ck_assert_msg(t->opt != NULL, "%s", tg_last_error());
}

static void twin_free(twin *t)
{
    tg_optim_free(t->opt);
    tg_params_free(t->params);
    tg_tape_free(t->tape);
}

/* |a - b| <= tol max(|a|, |b|) element by element. */
static void assert_close(const char *what, const tg_tensor *a, const tg_tensor *b, double tol)
{
    ck_assert_int_eq(tg_numel(a), tg_numel(b));
    for (int64_t e = 0; e < tg_numel(a); e++) {
        double x = tg_get(a, e), y = tg_get(b, e);
        ck_assert_msg(fabs(x - y) <= tol * fmax(fabs(x), fabs(y)),
                      "%s[%lld]: eager %.17g, compiled %.17g", what, (long long)e, x, y);
    }
}

typedef struct {
    const char *name;
    make_fn make;
    const void *opts;
    int skip; /* a parameter left without a gradient in every step, or -1 */
    int slots;
} traced_case;

/* Traces one step over placeholders, compiles it, and runs it `steps` times next to an eager
 * twin given the same gradients; halves the learning rate of both halfway through. */
static void check_traced(const traced_case *c, int steps)
{
    twin e, k;
    twin_init(&e, c->make, c->opts);
    twin_init(&k, c->make, c->opts);

    tg_mark mark = tg_tape_mark(k.tape);
    ck_assert_int_eq(tg_tape_trace(k.tape, true), 0);
    tg_tensor *ph[NP];
    for (int i = 0; i < NP; i++) {
        char name[8];
        snprintf(name, sizeof name, "g%d", i);
        ph[i] = i == c->skip ? NULL
                             : tg_placeholder(k.tape, name, twin_dtype[i], twin_ndim[i],
                                              twin_shapes[i]);
    }
    size_t updates = tg_tape_updates(k.tape, NULL, NULL);
    ck_assert_msg(tg_optim_step(k.opt, ph) == 0, "%s: %s", c->name, tg_last_error());
    /* Recorded, not applied: each updated parameter, its buffers and its step count. */
    int updated = NP - (c->skip >= 0);
    ck_assert_uint_eq(tg_tape_updates(k.tape, NULL, NULL), updates + updated * (2 + c->slots));
    ck_assert_double_eq(tg_item(tg_params_find(tg_optim_state(k.opt), "optim.step.w")), 0);
    ck_assert_int_eq(tg_tape_trace(k.tape, false), 0);
    tg_plan *plan = tg_compile(k.tape, 0, NULL, NULL);
    ck_assert_msg(plan != NULL, "%s: %s", c->name, tg_last_error());
    ck_assert_int_eq(tg_tape_rewind(k.tape, mark), 0); /* the plan has its own copy */

    tg_rng rng;
    tg_rng_seed(&rng, 5);
    tg_mark eager_mark = tg_tape_mark(e.tape);
    for (int s = 0; s < steps; s++) {
        if (s == steps / 2) {
            double lr = 0.5 * tg_optim_lr(e.opt);
            ck_assert_int_eq(tg_optim_set_lr(e.opt, lr), 0);
            ck_assert_int_eq(tg_optim_set_lr(k.opt, lr), 0); /* no recompiling */
        }
        double g64[2][6];
        float g32[3];
        tg_tensor *g[NP];
        for (int i = 0; i < NP; i++) {
            const void *data = i < 2 ? (const void *)g64[i] : (const void *)g32;
            for (int64_t j = 0; j < twin_numel(i); j++) {
                double v = tg_rng_normal(&rng);
                if (i < 2)
                    g64[i][j] = v;
                else
                    g32[j] = (float)v;
            }
            g[i] = i == c->skip ? NULL
                                : tg_from_data(e.tape, twin_dtype[i], twin_ndim[i],
                                               twin_shapes[i], data);
            if (i != c->skip) {
                char name[8];
                snprintf(name, sizeof name, "g%d", i);
                ck_assert_int_eq(tg_plan_set_input(plan, name, data), 0);
            }
        }
        size_t size = tg_tape_size(e.tape), recorded = tg_tape_updates(e.tape, NULL, NULL);
        ck_assert_int_eq(tg_optim_step(e.opt, g), 0);
        /* Eagerly the step's nodes are gone once applied. */
        ck_assert_uint_eq(tg_tape_size(e.tape), size);
        ck_assert_uint_eq(tg_tape_updates(e.tape, NULL, NULL), recorded);
        ck_assert_msg(tg_plan_run(plan) == 0, "%s: %s", c->name, tg_last_error());
        ck_assert_int_eq(tg_tape_rewind(e.tape, eager_mark), 0);
    }

    char what[96];
    for (int i = 0; i < NP; i++) {
        snprintf(what, sizeof what, "%s: parameter %d", c->name, i);
        assert_close(what, e.p[i], k.p[i], twin_dtype[i] == TG_F64 ? 1e-12 : 1e-6);
    }
    tg_params *se = tg_optim_state(e.opt), *sk = tg_optim_state(k.opt);
    ck_assert_uint_eq(tg_params_count(se), (size_t)(NP * (1 + c->slots)));
    for (size_t j = 0; j < tg_params_count(se); j++) {
        const tg_param *entry = tg_params_get(se, j);
        tg_tensor *other = tg_params_find(sk, entry->name);
        ck_assert_ptr_nonnull(other);
        snprintf(what, sizeof what, "%s: %s", c->name, entry->name);
        assert_close(what, entry->tensor, other,
                     tg_dtype_of(other) == TG_F64 ? 1e-12 : 1e-6);
    }
    ck_assert_double_eq(tg_item(tg_params_find(sk, "optim.step.w")), c->skip == 0 ? 0 : steps);
    ck_assert_double_eq(tg_item(tg_params_find(sk, "optim.step.b")), c->skip == 1 ? 0 : steps);
    tg_plan_free(plan);
    twin_free(&e);
    twin_free(&k);
}

START_TEST(traced_step_matches_eager)
{
    static const tg_sgd_opts plain = {.lr = 0.1};
    static const tg_sgd_opts damped = {.lr = 0.05, .momentum = 0.9, .dampening = 0.3,
                                       .weight_decay = 0.01};
    static const tg_sgd_opts nesterov = {.lr = 0.05, .momentum = 0.8, .nesterov = true,
                                         .weight_decay = 1e-3};
    tg_adam_opts adam = tg_adam_defaults();
    adam.lr = 0.01;
    adam.weight_decay = 0.01;
    tg_adam_opts adam_beta0 = adam; /* beta1 = 0: no first bias correction at all */
    adam_beta0.beta1 = 0;
    adam_beta0.weight_decay = 0;
    tg_adam_opts adamw = tg_adamw_defaults();
    adamw.lr = 0.01;
    const traced_case cases[] = {
        {"sgd", make_sgd, &plain, -1, 0},
        {"sgd momentum+dampening+wd", make_sgd, &damped, -1, 1},
        {"sgd nesterov+wd, b skipped", make_sgd, &nesterov, 1, 1},
        {"adam+wd", make_adam, &adam, -1, 2},
        {"adam beta1=0, w skipped", make_adam, &adam_beta0, 0, 2},
        {"adamw", make_adamw, &adamw, -1, 2},
    };
    for (size_t i = 0; i < sizeof cases / sizeof *cases; i++)
        check_traced(&cases[i], 6);
}
END_TEST

/* One plan, three learning rates: the plan reads the rate's tensor at every run. */
START_TEST(compiled_step_reads_the_current_lr)
{
    tg_tape *tape = tg_tape_new();
    tg_tensor *w = tg_full(tape, TG_F64, 1, SHAPE(2), 1.0);
    tg_params *params = tg_params_new();
    ck_assert_int_eq(tg_params_add(params, NULL, "w", w, TG_TRAINABLE), 0);
    tg_optim *opt = tg_sgd_new(params, &(tg_sgd_opts){.lr = 0.1});
    tg_mark mark = tg_tape_mark(tape);
    ck_assert_int_eq(tg_tape_trace(tape, true), 0);
    tg_tensor *g = tg_placeholder(tape, "g", TG_F64, 1, SHAPE(2));
    ck_assert_int_eq(tg_optim_step(opt, &g), 0);
    ck_assert_int_eq(tg_tape_trace(tape, false), 0);
    tg_plan *plan = tg_compile(tape, 0, NULL, NULL);
    ck_assert_msg(plan != NULL, "%s", tg_last_error());
    ck_assert_int_eq(tg_tape_rewind(tape, mark), 0);
    const double ones[2] = {1, 1};
    ck_assert_int_eq(tg_plan_set_input(plan, "g", ones), 0);
    const double rates[3] = {0.1, 0.5, 0}, expect[3] = {0.9, 0.4, 0.4};
    for (int s = 0; s < 3; s++) {
        ck_assert_int_eq(tg_optim_set_lr(opt, rates[s]), 0);
        ck_assert_int_eq(tg_plan_run(plan), 0);
        ck_assert_double_eq_tol(tg_get(w, 1), expect[s], 1e-15);
        ck_assert_double_eq(tg_item(tg_params_find(tg_optim_state(opt), "optim.step.w")), s + 1);
    }
    tg_plan_free(plan);
    tg_optim_free(opt);
    tg_params_free(params);
    tg_tape_free(tape);
}
END_TEST

/* The parameters, their gradients and the state share one tape, which is not tracing when the
 * optimizer is made. */
START_TEST(one_tape_for_parameters_and_state)
{
    tg_tape *t1 = tg_tape_new(), *t2 = tg_tape_new();
    tg_tensor *a = tg_full(t1, TG_F64, 1, SHAPE(2), 1.0);
    tg_tensor *b = tg_full(t2, TG_F64, 1, SHAPE(2), 1.0);
    tg_params *params = tg_params_new();
    ck_assert_int_eq(tg_params_add(params, NULL, "a", a, TG_TRAINABLE), 0);
    ck_assert_int_eq(tg_params_add(params, NULL, "b", b, TG_TRAINABLE), 0);
    ck_assert_ptr_null(tg_sgd_new(params, &(tg_sgd_opts){.lr = 0.1}));
    ck_assert_int_eq(tg_last_error_code(), TG_ERR_TAPE);
    ck_assert_msg(strstr(tg_last_error(), "parameter 'b' is on a different tape from 'a'"),
                  "%s", tg_last_error());
    ck_assert_ptr_null(tg_adamw_new(params, &(tg_adam_opts){.lr = 0.1, .beta1 = 0.9}));
    ck_assert_int_eq(tg_last_error_code(), TG_ERR_TAPE);
    tg_params_free(params);

    /* A gradient from another tape is refused before anything moves. */
    params = tg_params_new();
    ck_assert_int_eq(tg_params_add(params, NULL, "a", a, TG_TRAINABLE), 0);
    tg_optim *opt = tg_adam_new(params, &(tg_adam_opts){.lr = 0.1, .beta2 = 0.9});
    ck_assert_ptr_nonnull(opt);
    tg_tensor *g = tg_full(t2, TG_F64, 1, SHAPE(2), 1.0);
    ck_assert_int_eq(tg_optim_step(opt, &g), TG_ERR_TAPE);
    ck_assert_msg(strstr(tg_last_error(), "different tape"), "%s", tg_last_error());
    ck_assert_double_eq(tg_get(a, 0), 1.0);
    /* Eagerly, a gradient must have a value: a placeholder has none. */
    ck_assert_int_eq(tg_tape_trace(t1, true), 0);
    g = tg_placeholder(t1, "g", TG_F64, 1, SHAPE(2));
    tg_tensor *constant = tg_full(t1, TG_F64, 1, SHAPE(2), 1.0);
    /* State made while tracing would be constants of the trace, and so would parameters. */
    ck_assert_ptr_null(tg_sgd_new(params, &(tg_sgd_opts){.lr = 0.1}));
    ck_assert_int_eq(tg_last_error_code(), TG_ERR_TAPE);
    ck_assert_int_eq(tg_tape_trace(t1, false), 0);
    tg_params *traced = tg_params_new();
    ck_assert_int_eq(tg_params_add(traced, NULL, "c", constant, TG_TRAINABLE), 0);
    ck_assert_ptr_null(tg_sgd_new(traced, &(tg_sgd_opts){.lr = 0.1}));
    ck_assert_msg(strstr(tg_last_error(), "parameter 'c' was made while tracing"), "%s",
                  tg_last_error());
    tg_params_free(traced);
    ck_assert_int_eq(tg_optim_step(opt, &g), TG_ERR_TAPE);
    ck_assert_double_eq(tg_get(a, 0), 1.0);
    ck_assert_double_eq(tg_item(tg_params_find(tg_optim_state(opt), "optim.step.a")), 0);
    tg_optim_free(opt);
    tg_params_free(params);
    tg_tape_free(t1);
    tg_tape_free(t2);
}
END_TEST

/* An optimizer made after the mark loses its state at the rewind: refused, never a crash, even
 * when the next step's nodes have taken the dropped slots (and the same memory). */
START_TEST(state_dropped_by_a_rewind_is_refused)
{
    tg_tape *tape = tg_tape_new();
    tg_tensor *w = tg_full(tape, TG_F64, 1, SHAPE(2), 1.0);
    tg_params *params = tg_params_new();
    ck_assert_int_eq(tg_params_add(params, NULL, "w", w, TG_TRAINABLE), 0);
    tg_mark mark = tg_tape_mark(tape);
    tg_optim *opt = tg_sgd_new(params, &(tg_sgd_opts){.lr = 0.1, .momentum = 0.9});
    ck_assert_ptr_nonnull(opt);
    tg_tensor *g = tg_full(tape, TG_F64, 1, SHAPE(2), 1.0);
    ck_assert_int_eq(tg_optim_step(opt, &g), 0);
    ck_assert_double_eq_tol(tg_get(w, 0), 0.9, 1e-15);
    ck_assert_int_eq(tg_tape_rewind(tape, mark), 0);
    ck_assert_int_eq(tg_optim_step(opt, &g), TG_ERR_TAPE);
    /* The next step's first leaf lands where the step count was, with its shape and memory. */
    tg_tensor *look_alike = tg_scalar(tape, TG_F64, 0.0);
    g = tg_full(tape, TG_F64, 1, SHAPE(2), 1.0);
    ck_assert_int_eq(tg_optim_step(opt, &g), TG_ERR_TAPE);
    ck_assert_msg(strstr(tg_last_error(), "optim.step.w was dropped by tg_tape_rewind"), "%s",
                  tg_last_error());
    ck_assert_double_eq(tg_item(look_alike), 0);
    ck_assert_double_eq_tol(tg_get(w, 0), 0.9, 1e-15);
    ck_assert_int_eq(tg_optim_set_lr(opt, 0.2), TG_ERR_TAPE);
    ck_assert(isnan(tg_optim_lr(opt)));
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
    tcase_add_test(tc, traced_step_matches_eager);
    tcase_add_test(tc, compiled_step_reads_the_current_lr);
    tcase_add_test(tc, one_tape_for_parameters_and_state);
    tcase_add_test(tc, state_dropped_by_a_rewind_is_refused);
    suite_add_tcase(s, tc);
    return tg_run_suite(s);
}
