/* Agreement with PyTorch: the network and optimizer runs recorded by make_torch_fixtures.py
 * are rebuilt with tapegrad_nn and compared quantity by quantity, in f32 and in f64.
 *
 * Error measure, per quantity: max |ours - torch| / max(max |torch|, 1e-6), i.e. the largest
 * deviation relative to the tensor's scale. Bounds: 1e-4 in f32 (the task's bound), 1e-12
 * in f64 (which shows the semantics match, not just roughly). The references are float64
 * results from float32-exact inputs, so the f32 errors are tapegrad's own rounding.
 *
 * One exception: a bias followed by batch norm (conv1.bias, fc1.bias) has a gradient that is
 * exactly zero in exact arithmetic, since the batch mean subtracts it again. Both sides only
 * hold rounding noise there (torch: ~1e-17), so its scale would be meaningless; its error is
 * measured against the scale of the same layer's weight gradient instead. */
#include "testing.h"
#include "tapegrad_nn.h"

#include "fixtures/torch_fixtures.h"

#include <math.h>
#include <stdio.h>
#include <string.h>

static const double TOL[2] = {[TG_F32] = 1e-4, [TG_F64] = 1e-12};

static const fx_tensor *fx(const char *name)
{
    for (int i = 0; i < FX_COUNT; i++)
        if (strcmp(fx_tensors[i].name, name) == 0)
            return &fx_tensors[i];
    ck_abort_msg("no fixture named %s", name);
    return NULL;
}

/* Inputs are float32-exact: rounding through float recovers them bit for bit. */
static tg_tensor *load(tg_tape *tape, tg_dtype dt, const char *name)
{
    const fx_tensor *f = fx(name);
    tg_tensor *t = tg_zeros(tape, dt, f->ndim, f->shape);
    ck_assert_ptr_nonnull(t);
    for (int64_t i = 0; i < f->numel; i++) {
        if (dt == TG_F32)
            ((float *)tg_data(t))[i] = (float)f->data[i];
        else
            ((double *)tg_data(t))[i] = (double)(float)f->data[i];
    }
    return t;
}

static double max_abs(const fx_tensor *f)
{
    double m = 0;
    for (int64_t i = 0; i < f->numel; i++)
        m = fmax(m, fabs(f->data[i]));
    return m;
}

/* The gradients that are zero in exact arithmetic, and the scale to measure them by. */
static const char *const zero_gradients[][2] = {
    {"grad.conv1.bias", "grad.conv1.weight"},
    {"grad.fc1.bias", "grad.fc1.weight"},
};

/* The relative error of t against the fixture; checks the shape too. */
static double compare(const tg_tensor *t, const char *name)
{
    const fx_tensor *f = fx(name);
    double floor = 1e-6;
    for (size_t i = 0; i < sizeof zero_gradients / sizeof zero_gradients[0]; i++)
        if (strcmp(name, zero_gradients[i][0]) == 0)
            floor = max_abs(fx(zero_gradients[i][1]));
    ck_assert_msg(t != NULL, "%s: no tensor (%s)", name, tg_last_error());
    ck_assert_msg(tg_numel(t) == f->numel, "%s: %lld elements, torch has %lld", name,
                  (long long)tg_numel(t), (long long)f->numel);
    double diff = 0, scale = 0;
    for (int64_t i = 0; i < f->numel; i++) {
        diff = fmax(diff, fabs(tg_get(t, i) - f->data[i]));
        scale = fmax(scale, fabs(f->data[i]));
    }
    double err = diff / fmax(scale, floor);
    return isnan(err) ? INFINITY : err;
}

/* Prints and checks one quantity. */
static void report(const char *what, tg_dtype dt, double err)
{
    printf("  %-6s %-26s rel err %.2e\n", tg_dtype_name(dt), what, err);
    ck_assert_msg(err <= TOL[dt], "%s (%s): relative error %.3e > %.0e", what, tg_dtype_name(dt),
                  err, TOL[dt]);
}

/* ---- the network ---------------------------------------------------------------------------- */
typedef struct {
    tg_conv2d_layer conv1, conv2;
    tg_batchnorm_layer bn1, bn2, bn3;
    tg_linear_layer fc1, fc2;
    tg_params *params;
} net;

static tg_batchnorm_layer load_bn(tg_tape *tape, tg_dtype dt, const char *name, int64_t c)
{
    char w[32], b[32];
    snprintf(w, sizeof w, "%s.weight", name);
    snprintf(b, sizeof b, "%s.bias", name);
    tg_batchnorm_layer bn;
    ck_assert_int_eq(tg_batchnorm_layer_init(&bn, tape, dt, c), 0);
    bn.gamma = load(tape, dt, w);
    bn.beta = load(tape, dt, b);
    return bn;
}

static void net_load(net *m, tg_tape *tape, tg_dtype dt)
{
    m->conv1 = (tg_conv2d_layer){load(tape, dt, "conv1.weight"), load(tape, dt, "conv1.bias"), 1,
                                 1};
    m->bn1 = load_bn(tape, dt, "bn1", 4);
    m->conv2 = (tg_conv2d_layer){load(tape, dt, "conv2.weight"), NULL, 2, 1};
    m->bn2 = load_bn(tape, dt, "bn2", 4);
    m->fc1 = (tg_linear_layer){load(tape, dt, "fc1.weight"), load(tape, dt, "fc1.bias")};
    m->bn3 = load_bn(tape, dt, "bn3", 10);
    m->fc2 = (tg_linear_layer){load(tape, dt, "fc2.weight"), load(tape, dt, "fc2.bias")};
    m->params = tg_params_new();
    ck_assert_int_eq(tg_conv2d_layer_register(&m->conv1, m->params, "conv1"), 0);
    ck_assert_int_eq(tg_batchnorm_layer_register(&m->bn1, m->params, "bn1"), 0);
    ck_assert_int_eq(tg_conv2d_layer_register(&m->conv2, m->params, "conv2"), 0);
    ck_assert_int_eq(tg_batchnorm_layer_register(&m->bn2, m->params, "bn2"), 0);
    ck_assert_int_eq(tg_linear_layer_register(&m->fc1, m->params, "fc1"), 0);
    ck_assert_int_eq(tg_batchnorm_layer_register(&m->bn3, m->params, "bn3"), 0);
    ck_assert_int_eq(tg_linear_layer_register(&m->fc2, m->params, "fc2"), 0);
}

/* mask == NULL: evaluation (dropout is the identity). */
static tg_tensor *net_forward(const net *m, tg_tensor *x, tg_tensor *mask, bool training)
{
    tg_tensor *h = tg_conv2d_layer_forward(&m->conv1, x);
    h = tg_relu(tg_batchnorm_layer_forward(&m->bn1, h, training));
    h = tg_max_pool2d(h, 2, 0, 0);
    h = tg_relu(tg_batchnorm_layer_forward(&m->bn2, tg_conv2d_layer_forward(&m->conv2, h),
                                           training));
    h = tg_avg_pool2d(h, 2, 0, 0);
    h = tg_relu(tg_batchnorm_layer_forward(&m->bn3, tg_linear_layer_forward(&m->fc1,
                                                                            tg_flatten(h, 1)),
                                           training));
    if (training)
        h = tg_dropout_mask(h, mask, 0.3);
    else
        h = tg_dropout(h, 0.3, false, NULL);
    return tg_linear_layer_forward(&m->fc2, h);
}

static void check_network(tg_dtype dt)
{
    printf("network, %s:\n", tg_dtype_name(dt));
    tg_tape *tape = tg_tape_new();
    net m;
    net_load(&m, tape, dt);
    tg_tensor *x = load(tape, dt, "x");
    tg_tensor *labels = load(tape, dt, "labels");
    tg_tensor *mask = load(tape, dt, "dropout_mask");

    tg_tensor *logits = net_forward(&m, x, mask, true);
    tg_tensor *loss = tg_cross_entropy(logits, labels);
    ck_assert_msg(loss != NULL, "%s", tg_last_error());
    report("logits", dt, compare(logits, "logits"));
    report("loss", dt, compare(loss, "loss"));

    tg_tensor *xs[16], *grads[16];
    xs[0] = x;
    size_t n = tg_params_trainable(m.params, xs + 1, 15);
    ck_assert_uint_eq(n, 13);
    ck_assert_int_eq(tg_grad(loss, (int)n + 1, xs, NULL, grads), 0);
    report("grad.x", dt, compare(grads[0], "grad.x"));
    size_t k = 1;
    for (size_t i = 0; i < tg_params_count(m.params); i++) {
        const tg_param *p = tg_params_get(m.params, i);
        char name[64];
        snprintf(name, sizeof name, p->kind == TG_TRAINABLE ? "grad.%s" : "%s", p->name);
        /* Buffers: the running estimates after this training step. */
        report(name, dt, compare(p->kind == TG_TRAINABLE ? grads[k++] : p->tensor, name));
    }
    tg_tensor *eval = net_forward(&m, x, NULL, false);
    report("eval_logits", dt, compare(eval, "eval_logits"));
    tg_params_free(m.params);
    tg_tape_free(tape);
}

START_TEST(network_f32) { check_network(TG_F32); }
END_TEST

START_TEST(network_f64) { check_network(TG_F64); }
END_TEST

/* ---- optimizers ----------------------------------------------------------------------------- */
/* The settings make_torch_fixtures.py uses, case by case. */
typedef struct {
    const char *name;
    enum { SGD, ADAM, ADAMW } kind;
    tg_sgd_opts sgd;
    tg_adam_opts adam;
} optim_case;

static const optim_case optim_cases[] = {
    {"sgd_nesterov", SGD, {.lr = 0.1, .momentum = 0.9, .nesterov = true, .weight_decay = 0.01},
     {.lr = 0}},
    {"sgd_dampening", SGD, {.lr = 0.1, .momentum = 0.8, .dampening = 0.25, .weight_decay = 0.001},
     {.lr = 0}},
    {"adam", ADAM, {.lr = 0},
     {.lr = 0.01, .beta1 = 0.9, .beta2 = 0.99, .eps = 1e-6, .weight_decay = 0.01}},
    {"adamw", ADAMW, {.lr = 0},
     {.lr = 0.01, .beta1 = 0.9, .beta2 = 0.999, .eps = 1e-8, .weight_decay = 0.1}},
};

static void check_optimizer(const optim_case *c, tg_dtype dt)
{
    tg_tape *tape = tg_tape_new();
    tg_tensor *p[2] = {load(tape, dt, "opt.p0"), load(tape, dt, "opt.p1")};
    tg_params *params = tg_params_new();
    ck_assert_int_eq(tg_params_add(params, NULL, "p0", p[0], TG_TRAINABLE), 0);
    ck_assert_int_eq(tg_params_add(params, NULL, "p1", p[1], TG_TRAINABLE), 0);
    tg_optim *opt = c->kind == SGD    ? tg_sgd_new(params, &c->sgd)
                    : c->kind == ADAM ? tg_adam_new(params, &c->adam)
                                      : tg_adamw_new(params, &c->adam);
    ck_assert_ptr_nonnull(opt);
    double err = 0;
    for (int s = 0; s < 4; s++) {
        char name[64];
        if (s == 2)
            ck_assert_int_eq(tg_optim_set_lr(opt, 0.5 * tg_optim_lr(opt)), 0);
        snprintf(name, sizeof name, "opt.g0.%d", s);
        tg_tensor *g[2] = {load(tape, dt, name), NULL};
        snprintf(name, sizeof name, "opt.g1.%d", s);
        if (s != 1)
            g[1] = load(tape, dt, name);
        ck_assert_int_eq(tg_optim_step(opt, g), 0);
        for (int i = 0; i < 2; i++) {
            snprintf(name, sizeof name, "opt.%s.p%d.%d", c->name, i, s);
            err = fmax(err, compare(p[i], name));
        }
    }
    char what[64];
    snprintf(what, sizeof what, "%s (4 steps)", c->name);
    report(what, dt, err);
    tg_optim_free(opt);
    tg_params_free(params);
    tg_tape_free(tape);
}

START_TEST(optimizers)
{
    printf("optimizers:\n");
    for (size_t i = 0; i < sizeof optim_cases / sizeof optim_cases[0]; i++) {
        check_optimizer(&optim_cases[i], TG_F32);
        check_optimizer(&optim_cases[i], TG_F64);
    }
}
END_TEST

int main(void)
{
    Suite *s = suite_create("torch_agreement");
    TCase *tc = tcase_create("torch");
    tcase_add_test(tc, network_f32);
    tcase_add_test(tc, network_f64);
    tcase_add_test(tc, optimizers);
    suite_add_tcase(s, tc);
    /* One process, so the per-quantity errors print in order. */
    setenv("CK_FORK", "no", 0);
    return tg_run_suite(s);
}
