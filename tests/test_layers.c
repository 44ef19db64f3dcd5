/* Layers: gradient checks in f64 through the public tg_gradcheck (first and second order),
 * forward values against plain loops, the subgradient conventions, batch-norm running
 * estimates, initialization, parameter lists and argument errors. */
#include "testing.h"
#include "tapegrad_nn.h"

#include <math.h>
#include <stdio.h>
#include <string.h>

/* ---- helpers -------------------------------------------------------------------------------- */
static tg_tensor *randn(tg_tape *tape, uint64_t seed, int ndim, const int64_t *shape)
{
    tg_rng rng;
    tg_rng_seed(&rng, seed);
    return tg_rand_normal(tape, &rng, TG_F64, ndim, shape, 0, 1);
}

/* Runs tg_gradcheck with a full Jacobian, prints the errors and requires a pass. */
static void gradcheck(const char *name, tg_fn f, void *ctx, int n, tg_tensor *const *inputs,
                      bool second_order)
{
    tg_gradcheck_opts opts = {.second_order = second_order, .full_limit = 1 << 20,
                              .directions = 3, .seed = 17};
    tg_gradcheck_result r;
    int status = tg_gradcheck(f, ctx, n, inputs, &opts, &r);
    ck_assert_msg(status == 0, "%s: gradcheck failed to run: %s", name, tg_last_error());
    printf("gradcheck %-26s jacobian %.2e  direction %.2e  second %.2e  max %.2e\n", name,
           r.jacobian_err, r.direction_err, r.second_err, r.max_err);
    ck_assert_msg(r.passed, "%s: %s", name, r.message);
    if (second_order)
        ck_assert_double_ge(r.second_err, 0);
}

static double max_abs_diff(const tg_tensor *a, const double *b, int64_t n)
{
    ck_assert_int_eq(tg_numel(a), n);
    double m = 0;
    for (int64_t i = 0; i < n; i++)
        m = fmax(m, fabs(tg_get(a, i) - b[i]));
    return m;
}

/* ---- gradient checks ------------------------------------------------------------------------ */
typedef struct {
    int64_t stride, padding;
    bool bias;
} conv_ctx;

static tg_tensor *conv_fn(tg_tape *tape, int n, tg_tensor *const *in, void *ctx)
{
    (void)tape;
    (void)n;
    const conv_ctx *c = ctx;
    return tg_conv2d(in[0], in[1], c->bias ? in[2] : NULL, c->stride, c->padding);
}

START_TEST(gradcheck_conv2d)
{
    tg_tape *tape = tg_tape_new();
    /* Stride 2 with padding, with a bias. */
    conv_ctx s2 = {2, 1, true};
    tg_tensor *in[3] = {randn(tape, 1, 4, SHAPE(2, 3, 5, 5)), randn(tape, 2, 4, SHAPE(4, 3, 3, 3)),
                        randn(tape, 3, 1, SHAPE(4))};
    gradcheck("conv2d s2 p1 bias", conv_fn, &s2, 3, in, true);
    /* A rectangular kernel, stride 1, wide padding, no bias. */
    conv_ctx rect = {1, 2, false};
    tg_tensor *in2[2] = {randn(tape, 4, 4, SHAPE(1, 2, 4, 3)),
                         randn(tape, 5, 4, SHAPE(3, 2, 2, 3))};
    gradcheck("conv2d 2x3 s1 p2", conv_fn, &rect, 2, in2, true);
    /* Stride 3 that skips the edge of the image. */
    conv_ctx s3 = {3, 0, true};
    tg_tensor *in3[3] = {randn(tape, 6, 4, SHAPE(2, 2, 7, 8)), randn(tape, 7, 4, SHAPE(2, 2, 2, 2)),
                         randn(tape, 8, 1, SHAPE(2))};
    gradcheck("conv2d s3 edge skipped", conv_fn, &s3, 3, in3, true);
    tg_tape_free(tape);
}
END_TEST

static tg_tensor *linear_fn(tg_tape *tape, int n, tg_tensor *const *in, void *ctx)
{
    (void)tape;
    (void)ctx;
    return tg_linear(in[0], in[1], n > 2 ? in[2] : NULL);
}

START_TEST(gradcheck_linear)
{
    tg_tape *tape = tg_tape_new();
    tg_tensor *in[3] = {randn(tape, 1, 2, SHAPE(3, 4)), randn(tape, 2, 2, SHAPE(5, 4)),
                        randn(tape, 3, 1, SHAPE(5))};
    gradcheck("linear", linear_fn, NULL, 3, in, true);
    tg_tensor *in3[2] = {randn(tape, 4, 3, SHAPE(2, 3, 4)), randn(tape, 5, 2, SHAPE(2, 4))};
    gradcheck("linear 3-D input, no bias", linear_fn, NULL, 2, in3, true);
    tg_tape_free(tape);
}
END_TEST

typedef struct {
    bool training;
    int64_t channels;
} bn_ctx;

/* Running estimates are made on gradcheck's tape, so the training path records its update
 * there too; they are not inputs, since they carry no gradient in training. */
static tg_tensor *bn_fn(tg_tape *tape, int n, tg_tensor *const *in, void *ctx)
{
    (void)n;
    const bn_ctx *c = ctx;
    int64_t ch = c->channels;
    tg_tensor *rm = tg_full(tape, TG_F64, 1, &ch, 0.25);
    tg_tensor *rv = tg_full(tape, TG_F64, 1, &ch, 1.5);
    return tg_batch_norm(in[0], in[1], in[2], rm, rv, c->training, 0.9, 1e-5);
}

START_TEST(gradcheck_batchnorm)
{
    tg_tape *tape = tg_tape_new();
    /* 2-D (N, C, H, W) in training: the gradient goes through the batch mean and variance. */
    bn_ctx train2 = {true, 2};
    tg_tensor *in[3] = {randn(tape, 1, 4, SHAPE(3, 2, 3, 3)), randn(tape, 2, 1, SHAPE(2)),
                        randn(tape, 3, 1, SHAPE(2))};
    gradcheck("batchnorm2d train", bn_fn, &train2, 3, in, true);
    /* 1-D (N, C) in training. */
    bn_ctx train1 = {true, 3};
    tg_tensor *in1[3] = {randn(tape, 4, 2, SHAPE(4, 3)), randn(tape, 5, 1, SHAPE(3)),
                         randn(tape, 6, 1, SHAPE(3))};
    gradcheck("batchnorm1d train", bn_fn, &train1, 3, in1, true);
    /* Evaluation with the running estimates. */
    bn_ctx eval = {false, 2};
    gradcheck("batchnorm2d eval", bn_fn, &eval, 3, in, true);
    tg_tape_free(tape);
}
END_TEST

typedef struct {
    bool is_max;
    int64_t kernel, stride, padding;
} pool_ctx;

static tg_tensor *pool_fn(tg_tape *tape, int n, tg_tensor *const *in, void *ctx)
{
    (void)tape;
    (void)n;
    const pool_ctx *c = ctx;
    return c->is_max ? tg_max_pool2d(in[0], c->kernel, c->stride, c->padding)
                     : tg_avg_pool2d(in[0], c->kernel, c->stride, c->padding);
}

START_TEST(gradcheck_pools)
{
    tg_tape *tape = tg_tape_new();
    /* Normal values: the gaps between window elements are far above the 1e-6 step, so no
     * window changes its winner during the differences. */
    tg_tensor *x = randn(tape, 1, 4, SHAPE(2, 2, 5, 5));
    pool_ctx cases[] = {{true, 2, 0, 0}, {true, 3, 2, 1}, {false, 2, 0, 0}, {false, 3, 2, 1}};
    const char *names[] = {"maxpool2d k2", "maxpool2d k3 s2 p1", "avgpool2d k2",
                           "avgpool2d k3 s2 p1"};
    for (int i = 0; i < 4; i++)
        gradcheck(names[i], pool_fn, &cases[i], 1, &x, true);
    tg_tape_free(tape);
}
END_TEST

/* ---- src/nn/activations.c: relu and dropout ---- */
static tg_tensor *relu_fn(tg_tape *tape, int n, tg_tensor *const *in, void *ctx)
{
    (void)tape;
    (void)n;
    (void)ctx;
    /* Squared so the second derivative is not zero everywhere. */
    return tg_square(tg_relu(in[0]));
}

START_TEST(gradcheck_relu)
{
    tg_tape *tape = tg_tape_new();
    tg_tensor *x = randn(tape, 1, 2, SHAPE(4, 5));
    double *d = tg_data(x);
    for (int i = 0; i < 20; i++) /* away from the kink at 0 */
        d[i] += d[i] < 0 ? -0.1 : 0.1;
    gradcheck("relu", relu_fn, NULL, 1, &x, true);
    tg_tape_free(tape);
}
END_TEST

typedef struct {
    const double *mask;
    double p;
} dropout_ctx;

static tg_tensor *dropout_fn(tg_tape *tape, int n, tg_tensor *const *in, void *ctx)
{
    (void)n;
    const dropout_ctx *c = ctx;
    tg_tensor *mask = tg_from_data(tape, TG_F64, tg_ndim(in[0]), tg_shape(in[0]), c->mask);
    return tg_square(tg_dropout_mask(in[0], mask, c->p));
}

START_TEST(gradcheck_dropout)
{
    tg_tape *tape = tg_tape_new();
    double mask[12] = {1, 0, 1, 1, 0, 0, 1, 0, 1, 1, 1, 0};
    dropout_ctx c = {mask, 0.3};
    tg_tensor *x = randn(tape, 1, 2, SHAPE(3, 4));
    gradcheck("dropout fixed mask", dropout_fn, &c, 1, &x, true);
    tg_tape_free(tape);
}
END_TEST

static tg_tensor *log_softmax_fn(tg_tape *tape, int n, tg_tensor *const *in, void *ctx)
{
    (void)tape;
    (void)n;
    return tg_log_softmax(in[0], *(const int *)ctx);
}

START_TEST(gradcheck_log_softmax)
{
    tg_tape *tape = tg_tape_new();
    tg_tensor *x = randn(tape, 1, 2, SHAPE(3, 4));
    int axis1 = 1, axis0 = 0, last = -1;
    gradcheck("log_softmax axis 1", log_softmax_fn, &axis1, 1, &x, true);
    gradcheck("log_softmax axis 0", log_softmax_fn, &axis0, 1, &x, true);
    /* Ties for the max do not matter: m is detached and cancels. */
    tg_tensor *tied = tg_full(tape, TG_F64, 3, SHAPE(2, 2, 3), 0.5);
    gradcheck("log_softmax tied, 3-D", log_softmax_fn, &last, 1, &tied, true);
    tg_tape_free(tape);
}
END_TEST

static tg_tensor *cross_entropy_fn(tg_tape *tape, int n, tg_tensor *const *in, void *ctx)
{
    (void)n;
    const int *labels = ctx;
    return tg_cross_entropy(in[0], tg_labels_from_int(tape, TG_F64, tg_dim(in[0], 0), labels));
}

START_TEST(gradcheck_cross_entropy)
{
    tg_tape *tape = tg_tape_new();
    int labels[4] = {2, 0, 4, 2};
    tg_tensor *logits = randn(tape, 1, 2, SHAPE(4, 5));
    gradcheck("cross_entropy", cross_entropy_fn, labels, 1, &logits, true);
    tg_tape_free(tape);
}
END_TEST

/* A small network end to end: conv -> BN (training) -> relu -> maxpool -> flatten -> linear
 * -> cross-entropy, differentiated with respect to the input and every parameter. */
static tg_tensor *network_fn(tg_tape *tape, int n, tg_tensor *const *in, void *ctx)
{
    (void)n;
    const int *labels = ctx;
    tg_tensor *h = tg_conv2d(in[0], in[1], in[2], 1, 1);
    h = tg_batch_norm(h, in[3], in[4], NULL, NULL, true, 0.9, 1e-5);
    h = tg_max_pool2d(tg_relu(h), 2, 0, 0);
    h = tg_linear(tg_flatten(h, 1), in[5], in[6]);
    return tg_cross_entropy(h, tg_labels_from_int(tape, TG_F64, 3, labels));
}

START_TEST(gradcheck_network)
{
    tg_tape *tape = tg_tape_new();
    int labels[3] = {1, 0, 1};
    tg_tensor *in[7] = {randn(tape, 1, 4, SHAPE(3, 2, 4, 4)), randn(tape, 2, 4, SHAPE(3, 2, 3, 3)),
                        randn(tape, 3, 1, SHAPE(3)),          randn(tape, 4, 1, SHAPE(3)),
                        randn(tape, 5, 1, SHAPE(3)),          randn(tape, 6, 2, SHAPE(2, 12)),
                        randn(tape, 7, 1, SHAPE(2))};
    gradcheck("network conv-bn-relu-pool-fc-ce", network_fn, labels, 7, in, true);
    tg_tape_free(tape);
}
END_TEST

/* The numerical guard stays quiet on a whole network, forward and backward, including the
 * -inf padding of a max-pool (an infinity the layer makes on purpose). */
START_TEST(layers_pass_the_numerical_guard)
{
    tg_tape *tape = tg_tape_new();
    ck_assert_int_eq(tg_tape_set_check_finite(tape, true), 0);
    tg_rng rng;
    tg_rng_seed(&rng, 3);
    tg_conv2d_layer conv;
    tg_batchnorm_layer bn;
    tg_linear_layer fc;
    ck_assert_int_eq(tg_conv2d_layer_init(&conv, tape, &rng, TG_F32, 2, 3, 3, 2, 1, true), 0);
    ck_assert_int_eq(tg_batchnorm_layer_init(&bn, tape, TG_F32, 3), 0);
    ck_assert_int_eq(tg_linear_layer_init(&fc, tape, &rng, TG_F32, 3 * 2 * 2, 4, true), 0);
    tg_tensor *x = tg_rand_normal(tape, &rng, TG_F32, 4, SHAPE(5, 2, 7, 7), 0, 1);
    tg_tensor *h = tg_relu(tg_batchnorm_layer_forward(&bn, tg_conv2d_layer_forward(&conv, x),
                                                      true));
    h = tg_avg_pool2d(tg_max_pool2d(h, 3, 2, 1), 1, 1, 0);
    h = tg_dropout(tg_linear_layer_forward(&fc, tg_flatten(h, 1)), 0.5, true, &rng);
    tg_tensor *loss = tg_cross_entropy(h, tg_labels_from_int(tape, TG_F32, 5,
                                                             (const int[]){0, 1, 2, 3, 0}));
    ck_assert_msg(loss != NULL, "%s", tg_last_error());
    tg_tensor *xs[3] = {conv.weight, bn.gamma, fc.weight}, *g[3];
    ck_assert_msg(tg_grad(loss, 3, xs, NULL, g) == 0, "%s", tg_last_error());
    ck_assert(isfinite(tg_item(loss)));
    tg_tape_free(tape);
}
END_TEST

/* ---- conventions ---------------------------------------------------------------------------- */
START_TEST(relu_gradient_at_zero_is_zero)
{
    tg_tape *tape = tg_tape_new();
    tg_tensor *x = tg_from_data(tape, TG_F64, 1, SHAPE(4), (double[]){-1, 0, 2, -0.0});
    tg_tensor *y = tg_sum(tg_relu(x), 0, NULL, false);
    tg_tensor *g;
    ck_assert_int_eq(tg_grad(y, 1, &x, NULL, &g), 0);
    ck_assert_double_eq(tg_get(g, 0), 0);
    ck_assert_double_eq(tg_get(g, 1), 0);
    ck_assert_double_eq(tg_get(g, 2), 1);
    ck_assert_double_eq(tg_get(g, 3), 0);
    ck_assert_double_eq(tg_item(y), 2);
    tg_tape_free(tape);
}
END_TEST

START_TEST(maxpool_ties_share_the_gradient)
{
    tg_tape *tape = tg_tape_new();
    /* Window 1 has a two-way tie (3), window 2 a four-way tie (5). */
    double xs[8] = {1, 3, 5, 5, 3, 2, 5, 5};
    tg_tensor *x = tg_from_data(tape, TG_F64, 4, SHAPE(1, 1, 2, 4), xs);
    tg_tensor *y = tg_max_pool2d(x, 2, 2, 0);
    ck_assert_double_eq(tg_get(y, 0), 3);
    ck_assert_double_eq(tg_get(y, 1), 5);
    tg_tensor *g;
    ck_assert_int_eq(tg_grad(tg_sum(y, 0, NULL, false), 1, &x, NULL, &g), 0);
    const double expect[8] = {0, 0.5, 0.25, 0.25, 0.5, 0, 0.25, 0.25};
    ck_assert_double_eq(max_abs_diff(g, expect, 8), 0);
    /* Padding with -inf never wins, even against all-negative windows. */
    tg_tensor *neg = tg_full(tape, TG_F64, 4, SHAPE(1, 1, 2, 2), -7);
    tg_tensor *p = tg_max_pool2d(neg, 3, 1, 1);
    for (int i = 0; i < 4; i++)
        ck_assert_double_eq(tg_get(p, i), -7);
    ck_assert_int_eq(tg_grad(tg_sum(p, 0, NULL, false), 1, &neg, NULL, &g), 0);
    /* Each of the 4 windows covers all 4 tied elements: 4 x 1/4 each. */
    for (int i = 0; i < 4; i++)
        ck_assert_double_eq_tol(tg_get(g, i), 1.0, 1e-15);
    tg_tape_free(tape);
}
END_TEST

/* ---- forward values against plain loops ----------------------------------------------------- */
START_TEST(conv2d_matches_direct_loops)
{
    for (int dt = 0; dt < 2; dt++) {
        tg_tape *tape = tg_tape_new();
        tg_rng rng;
        tg_rng_seed(&rng, 5);
        const int N = 2, C = 3, H = 6, W = 5, OC = 4, K = 3, S = 2, P = 1;
        tg_tensor *x = tg_rand_normal(tape, &rng, (tg_dtype)dt, 4, SHAPE(N, C, H, W), 0, 1);
        tg_tensor *w = tg_rand_normal(tape, &rng, (tg_dtype)dt, 4, SHAPE(OC, C, K, K), 0, 1);
        tg_tensor *b = tg_rand_normal(tape, &rng, (tg_dtype)dt, 1, SHAPE(OC), 0, 1);
        tg_tensor *y = tg_conv2d(x, w, b, S, P);
        ck_assert_ptr_nonnull(y);
        int OH = (H + 2 * P - K) / S + 1, OW = (W + 2 * P - K) / S + 1;
        ck_assert_int_eq(tg_dim(y, 2), OH);
        ck_assert_int_eq(tg_dim(y, 3), OW);
        double worst = 0;
        for (int n = 0; n < N; n++)
            for (int o = 0; o < OC; o++)
                for (int i = 0; i < OH; i++)
                    for (int j = 0; j < OW; j++) {
                        double s = tg_get(b, o);
                        for (int c = 0; c < C; c++)
                            for (int u = 0; u < K; u++)
                                for (int v = 0; v < K; v++) {
                                    int r = i * S + u - P, q = j * S + v - P;
                                    if (r < 0 || r >= H || q < 0 || q >= W)
                                        continue;
                                    s += tg_get(x, ((n * C + c) * H + r) * W + q) *
                                         tg_get(w, ((o * C + c) * K + u) * K + v);
                                }
                        double got = tg_get(y, ((n * OC + o) * OH + i) * OW + j);
                        worst = fmax(worst, fabs(got - s));
                    }
        ck_assert_double_lt(worst, dt == TG_F64 ? 1e-12 : 1e-5);
        tg_tape_free(tape);
    }
}
END_TEST

START_TEST(pools_match_direct_loops)
{
    tg_tape *tape = tg_tape_new();
    const int H = 5, W = 6, K = 3, S = 2, P = 1;
    tg_tensor *x = randn(tape, 9, 4, SHAPE(1, 2, H, W));
    tg_tensor *mx = tg_max_pool2d(x, K, S, P), *av = tg_avg_pool2d(x, K, S, P);
    ck_assert_ptr_nonnull(mx);
    ck_assert_ptr_nonnull(av);
    int OH = (H + 2 * P - K) / S + 1, OW = (W + 2 * P - K) / S + 1;
    ck_assert_int_eq(tg_dim(mx, 2), OH);
    ck_assert_int_eq(tg_dim(av, 3), OW);
    for (int c = 0; c < 2; c++)
        for (int i = 0; i < OH; i++)
            for (int j = 0; j < OW; j++) {
                double m = -INFINITY, s = 0;
                for (int u = 0; u < K; u++)
                    for (int v = 0; v < K; v++) {
                        int r = i * S + u - P, q = j * S + v - P;
                        if (r < 0 || r >= H || q < 0 || q >= W)
                            continue;
                        double e = tg_get(x, (c * H + r) * W + q);
                        m = fmax(m, e);
                        s += e;
                    }
                int o = (c * OH + i) * OW + j;
                ck_assert_double_eq(tg_get(mx, o), m);
                ck_assert_double_eq_tol(tg_get(av, o), s / (K * K), 1e-14);
            }
    /* stride 0 means stride = kernel. */
    tg_tensor *d = tg_max_pool2d(x, 2, 0, 0);
    ck_assert_int_eq(tg_dim(d, 2), 2);
    ck_assert_int_eq(tg_dim(d, 3), 3);
    tg_tape_free(tape);
}
END_TEST

START_TEST(linear_log_softmax_and_cross_entropy_values)
{
    tg_tape *tape = tg_tape_new();
    tg_tensor *x = tg_from_data(tape, TG_F64, 2, SHAPE(1, 2), (double[]){1, 2});
    tg_tensor *w = tg_from_data(tape, TG_F64, 2, SHAPE(3, 2), (double[]){1, 0, 0, 1, 1, 1});
    tg_tensor *b = tg_from_data(tape, TG_F64, 1, SHAPE(3), (double[]){0.5, 0, -1});
    tg_tensor *y = tg_linear(x, w, b);
    ck_assert_double_eq(max_abs_diff(y, (double[]){1.5, 2, 2}, 3), 0);
    /* log_softmax stays finite far from 0 and its exponentials sum to 1. */
    tg_tensor *big = tg_from_data(tape, TG_F64, 2, SHAPE(1, 3), (double[]){1000, 1001, 999});
    tg_tensor *ls = tg_log_softmax(big, 1);
    double total = 0;
    for (int i = 0; i < 3; i++) {
        ck_assert(isfinite(tg_get(ls, i)));
        total += exp(tg_get(ls, i));
    }
    ck_assert_double_eq_tol(total, 1, 1e-14);
    ck_assert_double_eq_tol(tg_get(ls, 1), -log(1 + exp(-1) + exp(-2)), 1e-13);
    /* Uniform logits: the loss is log C whatever the labels. */
    tg_tensor *zeros = tg_zeros(tape, TG_F32, 2, SHAPE(2, 3));
    tg_tensor *loss = tg_cross_entropy(zeros, tg_labels_from_u8(tape, TG_F32, 2,
                                                               (const uint8_t[]){2, 0}));
    ck_assert_double_eq_tol(tg_item(loss), log(3.0), 1e-6);
    /* A hand value: -mean(log_softmax[0, 1], log_softmax[1, 0]). */
    tg_tensor *lg = tg_from_data(tape, TG_F64, 2, SHAPE(2, 2), (double[]){0, 1, 2, 0});
    loss = tg_cross_entropy(lg, tg_labels_from_int(tape, TG_F64, 2, (const int[]){1, 0}));
    double expect = -0.5 * ((1 - log(1 + exp(1))) + (2 - log(exp(2) + 1)));
    ck_assert_double_eq_tol(tg_item(loss), expect, 1e-14);
    tg_tape_free(tape);
}
END_TEST

/* ---- batch norm ----------------------------------------------------------------------------- */
START_TEST(batchnorm_running_estimates)
{
    tg_tape *tape = tg_tape_new();
    tg_batchnorm_layer bn;
    ck_assert_int_eq(tg_batchnorm_layer_init(&bn, tape, TG_F64, 2), 0);
    ck_assert_double_eq(bn.retention, 0.9);
    ck_assert_double_eq(bn.eps, 1e-5);
    tg_mark mark = tg_tape_mark(tape);
    /* x [4, 2]: channel 0 = 1, 2, 3, 4 (mean 2.5, biased var 1.25, unbiased 5/3);
     * channel 1 = 0, 0, 0, 8 (mean 2, biased var 12, unbiased 16). */
    tg_tensor *x = tg_from_data(tape, TG_F64, 2, SHAPE(4, 2), (double[]){1, 0, 2, 0, 3, 0, 4, 8});
    tg_tensor *y = tg_batchnorm_layer_forward(&bn, x, true);
    ck_assert_ptr_nonnull(y);
    ck_assert_double_eq_tol(tg_get(y, 0), -1.5 / sqrt(1.25 + 1e-5), 1e-14);
    ck_assert_double_eq_tol(tg_get(y, 7), 6 / sqrt(12 + 1e-5), 1e-14);
    ck_assert_double_eq_tol(tg_get(bn.running_mean, 0), 0.1 * 2.5, 1e-15);
    ck_assert_double_eq_tol(tg_get(bn.running_mean, 1), 0.1 * 2, 1e-15);
    ck_assert_double_eq_tol(tg_get(bn.running_var, 0), 0.9 + 0.1 * 5.0 / 3.0, 1e-15);
    ck_assert_double_eq_tol(tg_get(bn.running_var, 1), 0.9 + 0.1 * 16, 1e-14);
    tg_tensor **targets;
    ck_assert_uint_eq(tg_tape_updates(tape, &targets, NULL), 2);
    ck_assert_ptr_eq(targets[0], bn.running_mean);
    ck_assert_ptr_eq(targets[1], bn.running_var);
    /* The running estimates are not on the gradient's path in training. */
    tg_tensor *xs[3] = {x, bn.running_mean, bn.gamma}, *g[3];
    ck_assert_int_eq(tg_grad(tg_sum(tg_square(y), 0, NULL, false), 3, xs, NULL, g), 0);
    ck_assert_ptr_nonnull(g[0]);
    ck_assert_ptr_null(g[1]);
    ck_assert_ptr_nonnull(g[2]);
    /* A rewind drops the step but the estimates keep their new values. */
    ck_assert_int_eq(tg_tape_rewind(tape, mark), 0);
    ck_assert_double_eq_tol(tg_get(bn.running_mean, 0), 0.25, 1e-15);
    /* Evaluation normalizes with the running estimates, and the gamma and beta. */
    tg_init_constant(bn.gamma, 2);
    tg_init_constant(bn.beta, -1);
    x = tg_from_data(tape, TG_F64, 2, SHAPE(1, 2), (double[]){1, 1});
    y = tg_batchnorm_layer_forward(&bn, x, false);
    double rv0 = 0.9 + 0.1 * 5.0 / 3.0;
    ck_assert_double_eq_tol(tg_get(y, 0), 2 * (1 - 0.25) / sqrt(rv0 + 1e-5) - 1, 1e-14);
    ck_assert_uint_eq(tg_tape_updates(tape, NULL, NULL), 0);
    /* 2-D: statistics over N, H, W per channel. */
    tg_batchnorm_layer bn2;
    ck_assert_int_eq(tg_batchnorm_layer_init(&bn2, tape, TG_F32, 3), 0);
    bn2.retention = 0.5;
    tg_rng rng;
    tg_rng_seed(&rng, 3);
    tg_tensor *img = tg_rand_normal(tape, &rng, TG_F32, 4, SHAPE(2, 3, 4, 5), 1, 2);
    tg_tensor *out = tg_batchnorm_layer_forward(&bn2, img, true);
    ck_assert_ptr_nonnull(out);
    for (int c = 0; c < 3; c++) {
        double s = 0, s2 = 0, m = 0;
        for (int n = 0; n < 2; n++)
            for (int k = 0; k < 20; k++) {
                s += tg_get(out, (n * 3 + c) * 20 + k);
                s2 += pow(tg_get(out, (n * 3 + c) * 20 + k), 2);
                m += tg_get(img, (n * 3 + c) * 20 + k);
            }
        ck_assert_double_lt(fabs(s / 40), 1e-6);
        ck_assert_double_eq_tol(s2 / 40, 1, 1e-4);
        ck_assert_double_eq_tol(tg_get(bn2.running_mean, c), 0.5 * m / 40, 1e-6);
    }
    tg_tape_free(tape);
}
END_TEST

/* ---- dropout -------------------------------------------------------------------------------- */
START_TEST(dropout_masks_and_scales)
{
    tg_tape *tape = tg_tape_new();
    tg_rng rng;
    tg_rng_seed(&rng, 11);
    tg_tensor *x = tg_full(tape, TG_F32, 2, SHAPE(100, 100), 1.0);
    ck_assert_ptr_eq(tg_dropout(x, 0.5, false, &rng), x);
    tg_tensor *y = tg_dropout(x, 0.25, true, &rng);
    ck_assert_ptr_nonnull(y);
    int kept = 0;
    for (int i = 0; i < 10000; i++) {
        double v = tg_get(y, i);
        ck_assert(v == 0 || fabs(v - 1 / 0.75) < 1e-6);
        kept += v != 0;
    }
    ck_assert_int_gt(kept, 7300);
    ck_assert_int_lt(kept, 7700);
    /* The same seed gives the same mask. */
    tg_rng a, b;
    tg_rng_seed(&a, 4);
    tg_rng_seed(&b, 4);
    tg_tensor *ya = tg_dropout(x, 0.5, true, &a), *yb = tg_dropout(x, 0.5, true, &b);
    ck_assert_int_eq(memcmp(tg_data(ya), tg_data(yb), 10000 * sizeof(float)), 0);
    /* p = 1 drops everything, finitely. */
    tg_tensor *z = tg_dropout(x, 1.0, true, &rng);
    for (int i = 0; i < 10000; i++)
        ck_assert_double_eq(tg_get(z, i), 0);
    ck_assert_ptr_null(tg_dropout(x, 1.5, true, &rng));
    ck_assert_ptr_nonnull(strstr(tg_last_error(), "p = 1.5"));
    ck_assert_ptr_null(tg_dropout(x, 0.5, true, NULL));
    tg_tensor *bad = tg_full(tape, TG_F32, 2, SHAPE(100, 100), 0.5);
    ck_assert_ptr_null(tg_dropout_mask(x, bad, 0.5));
    ck_assert_ptr_nonnull(strstr(tg_last_error(), "0s and 1s"));
    tg_tape_free(tape);
}
END_TEST

/* ---- initialization ------------------------------------------------------------------------- */
START_TEST(initialization_follows_pytorch_defaults)
{
    tg_tape *tape = tg_tape_new();
    tg_rng rng;
    tg_rng_seed(&rng, 1);
    tg_conv2d_layer conv;
    ck_assert_int_eq(tg_conv2d_layer_init(&conv, tape, &rng, TG_F32, 3, 16, 3, 1, 1, true), 0);
    ck_assert_int_eq(tg_fan_in(conv.weight), 27);
    double bound = 1 / sqrt(27.0), lo = 1, hi = -1, sum = 0;
    for (int64_t i = 0; i < tg_numel(conv.weight); i++) {
        double v = tg_get(conv.weight, i);
        lo = fmin(lo, v);
        hi = fmax(hi, v);
        sum += v;
    }
    ck_assert_double_ge(lo, -bound);
    ck_assert_double_lt(hi, bound);
    ck_assert_double_gt(hi - lo, 1.8 * bound); /* the whole interval is used */
    ck_assert_double_lt(fabs(sum / 432), 0.05);
    for (int i = 0; i < 16; i++)
        ck_assert_double_le(fabs(tg_get(conv.bias, i)), bound);
    /* Linear: the same rule with fan_in = in; the stream is fixed by the seed. */
    tg_linear_layer fc1, fc2;
    tg_rng_seed(&rng, 2);
    ck_assert_int_eq(tg_linear_layer_init(&fc1, tape, &rng, TG_F64, 100, 10, true), 0);
    tg_rng_seed(&rng, 2);
    ck_assert_int_eq(tg_linear_layer_init(&fc2, tape, &rng, TG_F64, 100, 10, true), 0);
    ck_assert_int_eq(memcmp(tg_data(fc1.weight), tg_data(fc2.weight), 1000 * sizeof(double)), 0);
    ck_assert_int_eq(memcmp(tg_data(fc1.bias), tg_data(fc2.bias), 10 * sizeof(double)), 0);
    tg_rng_seed(&rng, 2);
    ck_assert_double_eq(tg_get(fc1.weight, 0), -0.1 + 0.2 * tg_rng_uniform(&rng));
    for (int i = 0; i < 1000; i++)
        ck_assert_double_le(fabs(tg_get(fc1.weight, i)), 0.1);
    /* Kaiming with a = 0: bound sqrt(6 / fan_in). */
    tg_tensor *w = tg_zeros(tape, TG_F64, 2, SHAPE(200, 6));
    ck_assert_int_eq(tg_init_kaiming_uniform(w, &rng, 0), 0);
    hi = 0;
    for (int i = 0; i < 1200; i++)
        hi = fmax(hi, fabs(tg_get(w, i)));
    ck_assert_double_le(hi, 1.0);
    ck_assert_double_gt(hi, 0.98);
    /* Batch norm: gamma 1, beta 0, running mean 0, running var 1. */
    tg_batchnorm_layer bn;
    ck_assert_int_eq(tg_batchnorm_layer_init(&bn, tape, TG_F32, 4), 0);
    for (int i = 0; i < 4; i++) {
        ck_assert_double_eq(tg_get(bn.gamma, i), 1);
        ck_assert_double_eq(tg_get(bn.beta, i), 0);
        ck_assert_double_eq(tg_get(bn.running_mean, i), 0);
        ck_assert_double_eq(tg_get(bn.running_var, i), 1);
    }
    /* Only leaves can be initialized. */
    ck_assert_int_ne(tg_init_uniform(tg_exp(w), &rng, 0, 1), 0);
    ck_assert_ptr_nonnull(strstr(tg_last_error(), "leaves"));
    ck_assert_int_ne(tg_init_uniform(w, &rng, 1, 0), 0);
    ck_assert_int_eq(tg_fan_in(bn.gamma), -1);
    tg_tape_free(tape);
}
END_TEST

/* ---- parameter lists ------------------------------------------------------------------------ */
START_TEST(params_register_find_and_order)
{
    tg_tape *tape = tg_tape_new();
    tg_rng rng;
    tg_rng_seed(&rng, 1);
    tg_conv2d_layer conv;
    tg_batchnorm_layer bn;
    tg_linear_layer fc;
    ck_assert_int_eq(tg_conv2d_layer_init(&conv, tape, &rng, TG_F32, 1, 2, 3, 1, 0, false), 0);
    ck_assert_int_eq(tg_batchnorm_layer_init(&bn, tape, TG_F32, 2), 0);
    ck_assert_int_eq(tg_linear_layer_init(&fc, tape, &rng, TG_F32, 8, 3, true), 0);
    tg_params *params = tg_params_new();
    ck_assert_int_eq(tg_conv2d_layer_register(&conv, params, "conv1"), 0);
    ck_assert_int_eq(tg_batchnorm_layer_register(&bn, params, "bn1"), 0);
    ck_assert_int_eq(tg_linear_layer_register(&fc, params, "fc"), 0);
    const char *names[] = {"conv1.weight", "bn1.weight", "bn1.bias", "bn1.running_mean",
                           "bn1.running_var", "fc.weight", "fc.bias"};
    ck_assert_uint_eq(tg_params_count(params), 7);
    for (size_t i = 0; i < 7; i++)
        ck_assert_str_eq(tg_params_get(params, i)->name, names[i]);
    ck_assert_ptr_null(tg_params_get(params, 7));
    ck_assert_int_eq(tg_params_get(params, 3)->kind, TG_BUFFER);
    ck_assert_ptr_eq(tg_params_find(params, "bn1.running_var"), bn.running_var);
    ck_assert_ptr_null(tg_params_find(params, "bn1.num_batches_tracked"));
    tg_tensor *train[8];
    ck_assert_uint_eq(tg_params_trainable(params, NULL, 0), 5);
    ck_assert_uint_eq(tg_params_trainable(params, train, 8), 5);
    ck_assert_ptr_eq(train[0], conv.weight);
    ck_assert_ptr_eq(train[1], bn.gamma);
    ck_assert_ptr_eq(train[4], fc.bias);
    /* Names are unique; tensors must be leaves; names are copied. */
    ck_assert_int_eq(tg_linear_layer_register(&fc, params, "fc"), TG_ERR_ARG);
    ck_assert_ptr_nonnull(strstr(tg_last_error(), "'fc.weight' is already"));
    ck_assert_int_eq(tg_params_add(params, NULL, "e", tg_exp(fc.bias), TG_TRAINABLE), TG_ERR_ARG);
    ck_assert_int_eq(tg_params_add(params, "", "", fc.bias, TG_BUFFER), TG_ERR_ARG);
    ck_assert_int_eq(tg_params_add(NULL, NULL, "x", fc.bias, TG_BUFFER), TG_ERR_NULL);
    char name[8] = "extra";
    ck_assert_int_eq(tg_params_add(params, NULL, name, fc.bias, TG_BUFFER), 0);
    strcpy(name, "xxxxx");
    ck_assert_ptr_eq(tg_params_find(params, "extra"), fc.bias);
    /* Appending with a prefix, e.g. to gather a model and its optimizer for a checkpoint. */
    tg_params *all = tg_params_new();
    ck_assert_int_eq(tg_params_append(all, params, "model"), 0);
    ck_assert_uint_eq(tg_params_count(all), 8);
    ck_assert_str_eq(tg_params_get(all, 0)->name, "model.conv1.weight");
    ck_assert_int_eq(tg_params_append(all, all, NULL), TG_ERR_ARG);
    tg_params_free(all);
    tg_params_free(params);
    tg_params_free(NULL);
    tg_tape_free(tape);
}
END_TEST

/* ---- argument errors ------------------------------------------------------------------------ */
static void expect_error(tg_tensor *t, tg_status code, const char *fragment)
{
    ck_assert_ptr_null(t);
    ck_assert_int_eq(tg_last_error_code(), code);
    ck_assert_msg(strstr(tg_last_error(), fragment), "'%s' lacks '%s'", tg_last_error(),
                  fragment);
}

START_TEST(layers_report_bad_arguments)
{
    tg_tape *tape = tg_tape_new();
    tg_tensor *x = tg_zeros(tape, TG_F32, 4, SHAPE(2, 3, 6, 6));
    tg_tensor *w = tg_zeros(tape, TG_F32, 4, SHAPE(4, 2, 3, 3));
    tg_tensor *w3 = tg_zeros(tape, TG_F32, 4, SHAPE(4, 3, 3, 3));
    tg_tensor *wd = tg_zeros(tape, TG_F64, 4, SHAPE(4, 3, 3, 3));
    expect_error(tg_conv2d(x, w, NULL, 1, 0), TG_ERR_SHAPE, "conv2d: needs x [N, C, H, W]");
    expect_error(tg_conv2d(x, w3, NULL, 0, 0), TG_ERR_ARG, "stride 0");
    expect_error(tg_conv2d(x, w3, tg_zeros(tape, TG_F32, 1, SHAPE(3)), 1, 0), TG_ERR_SHAPE,
                 "bias must be [4]");
    expect_error(tg_conv2d(x, wd, NULL, 1, 0), TG_ERR_DTYPE, "conv2d: x is f32");
    expect_error(tg_conv2d(tg_zeros(tape, TG_F32, 4, SHAPE(1, 3, 2, 2)), w3, NULL, 1, 0),
                 TG_ERR_SHAPE, "larger than the padded input");
    /* A NULL from an earlier failure is reported with that failure. */
    expect_error(tg_relu(tg_conv2d(x, w, NULL, 1, 0)), TG_ERR_NULL, "after: conv2d");
    expect_error(tg_linear(tg_zeros(tape, TG_F32, 2, SHAPE(2, 5)),
                           tg_zeros(tape, TG_F32, 2, SHAPE(3, 4)), NULL),
                 TG_ERR_SHAPE, "linear: needs x");
    expect_error(tg_max_pool2d(x, 2, 2, 2), TG_ERR_ARG, "padding 2");
    expect_error(tg_avg_pool2d(tg_zeros(tape, TG_F32, 2, SHAPE(2, 3)), 2, 2, 0), TG_ERR_SHAPE,
                 "avg_pool2d: needs x");
    tg_tensor *g2 = tg_zeros(tape, TG_F32, 1, SHAPE(2));
    expect_error(tg_batch_norm(x, g2, NULL, NULL, NULL, true, 0.9, 1e-5), TG_ERR_SHAPE,
                 "gamma must be [3]");
    expect_error(tg_batch_norm(x, NULL, NULL, NULL, NULL, false, 0.9, 1e-5), TG_ERR_NULL,
                 "evaluation needs");
    expect_error(tg_batch_norm(tg_zeros(tape, TG_F32, 2, SHAPE(1, 3)), NULL, NULL, NULL, NULL,
                               true, 0.9, 1e-5),
                 TG_ERR_SHAPE, "more than one value per channel");
    expect_error(tg_batch_norm(x, NULL, NULL, NULL, NULL, true, 1.5, 1e-5), TG_ERR_ARG,
                 "retention 1.5");
    expect_error(tg_log_softmax(x, 4), TG_ERR_AXIS, "log_softmax: axis 4");
    /* Labels: integers in [0, C), the logits' dtype, shape [N]. */
    tg_tensor *logits = tg_zeros(tape, TG_F32, 2, SHAPE(2, 3));
    expect_error(tg_cross_entropy(logits, tg_labels_from_int(tape, TG_F32, 2, (int[]){0, 3})),
                 TG_ERR_ARG, "label 1 is 3; labels must be integers in [0, 3)");
    expect_error(tg_cross_entropy(logits, tg_from_data(tape, TG_F32, 1, SHAPE(2),
                                                       (float[]){0.5f, 1})),
                 TG_ERR_ARG, "label 0 is 0.5");
    expect_error(tg_cross_entropy(logits, tg_zeros(tape, TG_F64, 1, SHAPE(2))), TG_ERR_DTYPE,
                 "labels are f64 but logits are f32");
    expect_error(tg_cross_entropy(logits, tg_zeros(tape, TG_F32, 1, SHAPE(3))), TG_ERR_SHAPE,
                 "labels [3]");
    expect_error(tg_labels_from_int(tape, TG_F32, 2, (int[]){1, -2}), TG_ERR_ARG,
                 "label 1 is -2");
    /* Layer constructors. */
    tg_rng rng;
    tg_rng_seed(&rng, 1);
    tg_conv2d_layer conv;
    ck_assert_int_eq(tg_conv2d_layer_init(&conv, tape, &rng, TG_F32, 3, 0, 3, 1, 0, true),
                     TG_ERR_ARG);
    ck_assert_ptr_null(conv.weight);
    ck_assert_int_eq(tg_conv2d_layer_init(&conv, tape, NULL, TG_F32, 3, 4, 3, 1, 0, true),
                     TG_ERR_NULL);
    tg_linear_layer fc;
    ck_assert_int_eq(tg_linear_layer_init(&fc, tape, &rng, (tg_dtype)7, 3, 4, true),
                     TG_ERR_DTYPE);
    tg_batchnorm_layer bn;
    ck_assert_int_eq(tg_batchnorm_layer_init(&bn, tape, TG_F32, 0), TG_ERR_ARG);
    expect_error(tg_batchnorm_layer_forward(NULL, x, true), TG_ERR_NULL, "layer is NULL");
    tg_tape_free(tape);
}
END_TEST

int main(void)
{
    Suite *s = suite_create("layers");
    TCase *grad = tcase_create("gradcheck");
    tcase_set_timeout(grad, 600);
    tcase_add_test(grad, gradcheck_conv2d);
    tcase_add_test(grad, gradcheck_linear);
    tcase_add_test(grad, gradcheck_batchnorm);
    tcase_add_test(grad, gradcheck_pools);
    tcase_add_test(grad, gradcheck_relu);
    tcase_add_test(grad, gradcheck_dropout);
    tcase_add_test(grad, gradcheck_log_softmax);
    tcase_add_test(grad, gradcheck_cross_entropy);
    tcase_add_test(grad, gradcheck_network);
    suite_add_tcase(s, grad);
    TCase *tc = tcase_create("layers");
    tcase_add_test(tc, layers_pass_the_numerical_guard);
    tcase_add_test(tc, relu_gradient_at_zero_is_zero);
    tcase_add_test(tc, maxpool_ties_share_the_gradient);
    tcase_add_test(tc, conv2d_matches_direct_loops);
    tcase_add_test(tc, pools_match_direct_loops);
    tcase_add_test(tc, linear_log_softmax_and_cross_entropy_values);
    tcase_add_test(tc, batchnorm_running_estimates);
    tcase_add_test(tc, dropout_masks_and_scales);
    tcase_add_test(tc, initialization_follows_pytorch_defaults);
    tcase_add_test(tc, params_register_find_and_order);
    tcase_add_test(tc, layers_report_bad_arguments);
    suite_add_tcase(s, tc);
    return tg_run_suite(s);
}
