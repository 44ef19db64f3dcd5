/* Convolution lowering: the direct-convolution kernels (plan ops CONV and CONV_WGRAD) against
 * the eager composition of tg_conv2d and its gradients, and the lower_conv pass on traced
 * graphs against eager execution. */
#include "testing.h"
#include "compile/graph.h"
#include "compile/plan_ops.h"
#include "kernels/xsmm_copies.h"
#include "tapegrad_nn.h"

#include <libxsmm.h>
#include <math.h>
#include <string.h>

typedef struct {
    int64_t n, c, h, w, oc, k, pad;
} conv_case;

/* Odd sizes, C = 1, N = 1, kernels 1/3/5, padding 0/1/2, OC that is no multiple of 8 or 16
 * (33, 40: blocks of output channels of different sizes), single images cut in bands, images
 * large enough that the weight gradient stages one or a few at a time; few input channels
 * (C*KH*KW <= 32: taps gathered) and more (taps batched), each with and without padding, and
 * padding wider than the kernel (bands of padding only); taps batched with 40 and 64 output
 * channels, which one thread computes as one block and two threads as two (the same bits).
 * Sixteen output channels or more with taps batched run channels last (17, 24, 40, 64; the
 * input gradient of the 16-channel case, in bands), with padding and without (24); so do
 * weight gradients of sixteen input channels or more (16, 32), and with taps gathered those
 * of sixteen output channels or more (33, 40; 16 on 8x6 images, whose gradient's planes and
 * channels are multiples of 8: transposed in 8x8 blocks). Gathered forwards with conv_rows.c's
 * kernel: 1 and 3 channels, 3x3 and 5x5 (K = 25), with padding and without, output channels
 * no multiple of its blocks (5, 7, 33), bands of an odd number of vectors, and bands shorter
 * than a vector (N = 1 on 5x5: the GEMM takes those). */
static const conv_case cases[] = {
    {2, 3, 7, 9, 5, 3, 1},   {1, 1, 5, 5, 3, 1, 0},  {3, 4, 6, 6, 17, 5, 2},
    {2, 2, 8, 5, 3, 3, 0},   {1, 2, 20, 9, 5, 3, 1}, {2, 1, 9, 7, 33, 3, 2},
    {3, 16, 48, 40, 6, 3, 1}, {4, 5, 4, 4, 2, 3, 2}, {1, 6, 11, 7, 4, 3, 1},
    {2, 8, 7, 6, 5, 3, 0},   {3, 3, 30, 26, 40, 3, 1}, {1, 2, 5, 4, 3, 3, 4},
    {1, 5, 5, 4, 3, 3, 4},   {3, 8, 9, 7, 40, 3, 1}, {2, 32, 6, 6, 64, 3, 1},
    {2, 8, 7, 6, 24, 3, 0},  {3, 1, 8, 6, 16, 3, 1}, {2, 1, 12, 19, 7, 5, 2},
    {1, 3, 10, 17, 6, 3, 0},
};
#define N_CASES (sizeof cases / sizeof *cases)

static size_t elem_size(tg_dtype dt) { return dt == TG_F64 ? sizeof(double) : sizeof(float); }

static double value_at(tg_dtype dt, const void *p, int64_t i)
{
    return dt == TG_F64 ? ((const double *)p)[i] : ((const float *)p)[i];
}

/* max |a - ref| / max |ref|: the error relative to the largest magnitude. */
static double rel_error(tg_dtype dt, const void *a, const void *ref, int64_t n)
{
    double err = 0, scale = 0;
    for (int64_t i = 0; i < n; i++) {
        double r = value_at(dt, ref, i);
        err = fmax(err, fabs(value_at(dt, a, i) - r));
        scale = fmax(scale, fabs(r));
    }
    return err / (scale > 0 ? scale : 1);
}

static double tolerance(tg_dtype dt) { return dt == TG_F64 ? 1e-9 : 1e-5; }

/* ---- the eager reference ----------------------------------------------------------------- */
/* y = conv2d(x, w) with stride 1, and for the upstream gradient g: dx and dw. */
typedef struct {
    tg_tape *tape;
    tg_tensor *x, *w, *g, *y, *dx, *dw;
} eager_conv;

static void eager_conv_init(eager_conv *e, const conv_case *cs, tg_dtype dt, uint64_t seed)
{
    tg_rng rng;
    tg_rng_seed(&rng, seed);
    e->tape = tg_tape_new();
    e->x = tg_rand_normal(e->tape, &rng, dt, 4, SHAPE(cs->n, cs->c, cs->h, cs->w), 0, 1);
    e->w = tg_rand_normal(e->tape, &rng, dt, 4, SHAPE(cs->oc, cs->c, cs->k, cs->k), 0, 1);
    e->y = tg_conv2d(e->x, e->w, NULL, 1, cs->pad);
    ck_assert_msg(e->y != NULL, "%s", tg_last_error());
    e->g = tg_rand_normal(e->tape, &rng, dt, 4, tg_shape(e->y), 0, 1);
    tg_tensor *grads[2];
    ck_assert_int_eq(tg_grad(e->y, 2, (tg_tensor *[]){e->x, e->w}, e->g, grads), 0);
    e->dx = grads[0];
    e->dw = grads[1];
}

/* ---- the kernels on a hand-built graph ----------------------------------------------------- */
enum { X, W, G, FORWARD, INPUT_GRAD, WEIGHT_GRAD };

static int add_leaf(tg_graph *g, tg_tensor *t)
{
    tg_ir_node n = {.op = TG_OP_LEAF, .dtype = tg_dtype_of(t), .ndim = tg_ndim(t),
                    .leaf = TG_LEAF_BOUND, .data = tg_data(t), .tape_id = SIZE_MAX};
    memcpy(n.shape, tg_shape(t), (size_t)n.ndim * sizeof *n.shape);
    return tg_graph_add(g, &n);
}

static int add_conv_node(tg_graph *g, int op, int in0, int in1, int64_t pad, unsigned flags,
                         const int64_t *shape)
{
    tg_ir_node n = {.op = op, .dtype = g->nodes[in0].dtype, .ndim = 4, .n_in = 2,
                    .in = {in0, in1}, .attr = {pad, pad, 1, 1, flags}, .tape_id = SIZE_MAX};
    memcpy(n.shape, shape, 4 * sizeof *shape);
    return tg_graph_add(g, &n);
}

/* Padding of the flipped convolution that is the input gradient: k-1-pad gives x's
 * gradient; where the padding is wider than that, k-1 gives the padded x's. */
static int64_t input_grad_pad(const conv_case *cs)
{
    return cs->pad <= cs->k - 1 ? cs->k - 1 - cs->pad : cs->k - 1;
}

/* The forward, the input gradient and the weight gradient of e's convolution, prepared, each
 * with `flags` too (TG_CONV_WINOGRAD). */
static void build_kernels(tg_graph *g, const eager_conv *e, const conv_case *cs, unsigned flags)
{
    int64_t dpad = input_grad_pad(cs), crop = cs->pad - (cs->k - 1 - dpad);
    tg_graph_init(g);
    ck_assert_int_eq(add_leaf(g, e->x), X);
    ck_assert_int_eq(add_leaf(g, e->w), W);
    ck_assert_int_eq(add_leaf(g, e->g), G);
    ck_assert_int_eq(add_conv_node(g, TG_PLAN_OP_CONV, X, W, cs->pad, flags, tg_shape(e->y)),
                     FORWARD);
    ck_assert_int_eq(add_conv_node(g, TG_PLAN_OP_CONV, G, W, dpad,
                                   TG_CONV_TRANSPOSED_FLIPPED | flags,
                                   SHAPE(cs->n, cs->c, cs->h + 2 * crop, cs->w + 2 * crop)),
                     INPUT_GRAD);
    ck_assert_int_eq(add_conv_node(g, TG_PLAN_OP_CONV_WGRAD, G, X, cs->pad, flags,
                                   tg_shape(e->w)),
                     WEIGHT_GRAD);
    for (int i = FORWARD; i <= WEIGHT_GRAD; i++)
        ck_assert_msg(tg_conv_prepare(g, &g->nodes[i]) == TG_OK, "%s", tg_last_error());
}

/* Runs node i on its inputs' data with `threads` threads, handing it scratch as a plan does:
 * a block per thread, each 64-byte aligned. The caller frees the result. */
static void *run_node(const tg_graph *g, int i, int threads)
{
    const tg_ir_node *n = &g->nodes[i];
    ck_assert_int_eq(tg_set_num_threads(threads), 0);
    ck_assert_uint_eq(n->scratch_bytes % 64, 0);
    void *out = malloc((size_t)n->numel * elem_size(n->dtype));
    void *scratch = aligned_alloc(64, n->scratch_bytes * (size_t)threads + 64);
    ck_assert(out && scratch);
    const void *in[2] = {g->nodes[n->in[0]].data, g->nodes[n->in[1]].data};
    tg_plan_op_info_of(n->op)->kernel(n, out, in, scratch);
    free(scratch);
    return out;
}

/* The [N, C, H, W] interior of a [N, C, H + 2 crop, W + 2 crop] value, in place. */
static void crop_planes(const tg_ir_node *n, void *v, int64_t crop)
{
    size_t e = elem_size(n->dtype);
    int64_t h = n->shape[2] - 2 * crop, w = n->shape[3] - 2 * crop;
    char *to = v;
    for (int64_t p = 0; p < n->shape[0] * n->shape[1]; p++)
        for (int64_t y = 0; y < h; y++, to += (size_t)w * e)
            memmove(to, (char *)v + (size_t)((p * n->shape[2] + y + crop) * n->shape[3] + crop) * e,
                    (size_t)w * e);
}

/* Node i (cropped by `crop` on each side) against the eager value: within tolerance, and the
 * same bits for 1, 2 and 3 threads. */
static void check_node(const tg_graph *g, int i, tg_tensor *ref, int64_t crop, const char *what,
                       int c)
{
    const tg_ir_node *n = &g->nodes[i];
    void *one = run_node(g, i, 1);
    for (int threads = 2; threads <= 3; threads++) {
        void *more = run_node(g, i, threads);
        ck_assert(memcmp(one, more, (size_t)n->numel * elem_size(n->dtype)) == 0);
        free(more);
    }
    crop_planes(n, one, crop);
    double err = rel_error(n->dtype, one, tg_data(ref), tg_numel(ref));
    ck_assert_msg(err <= tolerance(n->dtype), "case %d %s %s: relative error %g", c, what,
                  tg_dtype_name(n->dtype), err);
    free(one);
}

static void check_kernels(const conv_case *cs, int c, tg_dtype dt, unsigned flags)
{
    eager_conv e;
    eager_conv_init(&e, cs, dt, 10 + (uint64_t)c);
    tg_graph g;
    build_kernels(&g, &e, cs, flags);
    check_node(&g, FORWARD, e.y, 0, "forward", c);
    check_node(&g, INPUT_GRAD, e.dx, cs->pad - (cs->k - 1 - input_grad_pad(cs)), "input gradient",
               c);
    check_node(&g, WEIGHT_GRAD, e.dw, 0, "weight gradient", c);
    tg_graph_free(&g);
    tg_tape_free(e.tape);
}

/* Each case with the forward's taps gathered both ways: conv_rows.c's kernel and the im2col
 * with a GEMM (TG_CONV_ROWS, read when a node is prepared). */
static void check_case(int c, tg_dtype dt)
{
    const char *modes[] = {"1", "0"};
    for (int m = 0; m < 2; m++) {
        ck_assert_int_eq(setenv("TG_CONV_ROWS", modes[m], 1), 0);
        check_kernels(&cases[c], c, dt, 0);
    }
    unsetenv("TG_CONV_ROWS");
}

START_TEST(kernels_match_eager_f32)
{
    check_case(_i, TG_F32);
}
END_TEST

START_TEST(kernels_match_eager_f64)
{
    check_case(_i, TG_F64);
}
END_TEST

/* Without JIT (libxsmm's generic target) every GEMM is the plain loop, with the same results.
 * Each test runs in its own process, so the target stays switched off in this one only. */
START_TEST(loop_fallback_matches_eager)
{
    libxsmm_init(); /* which would otherwise set the target from the CPU later */
    libxsmm_set_target_arch("generic");
    float alpha = 1, beta = 0;
    ck_assert_ptr_null(libxsmm_smmdispatch_reducebatch_offs(7, 5, 3, NULL, NULL, NULL, &alpha,
                                                            &beta, NULL, NULL));
    check_case(0, TG_F32);
    check_case(2, TG_F64);
    check_case(5, TG_F32);
}
END_TEST

/* kernels/xsmm_copies.c: libxsmm's transposes and copies, and the loops that stand in for
 * them where it has none, put every element where the other puts it (f32 and f64, leading
 * dimensions past the rows), and leave what lies between the rows alone. */
static double element(size_t e, const char *at)
{
    if (e == sizeof(double)) {
        double v;
        memcpy(&v, at, sizeof v);
        return v;
    }
    float v;
    memcpy(&v, at, sizeof v);
    return v;
}

START_TEST(xsmm_copies_match_the_loops)
{
    enum { M = 13, N = 7, LDI = 16, LDO = 15 }; /* n rows of m, ldi apart */
    for (int d = 0; d < 2; d++) {
        size_t e = d ? sizeof(double) : sizeof(float);
        char src[N * LDI * sizeof(double)], dst[2][M * LDO * sizeof(double)];
        for (int i = 0; i < N * LDI; i++) {
            double v = i + 0.5;
            float f = (float)v;
            memcpy(src + (size_t)i * e, e == sizeof f ? (void *)&f : (void *)&v, e);
        }
        libxsmm_xtransfunction t = tg_xsmm_transpose_kernel(e, M, N, LDO);
        ck_assert_ptr_nonnull(t);
        for (int k = 0; k < 2; k++) { /* the JIT, then the loop */
            memset(dst[k], 0, sizeof dst[k]);
            tg_xsmm_transpose(k ? NULL : t, e, src, LDI, dst[k], LDO, M, N);
        }
        for (int i = 0; i < M; i++)
            for (int j = 0; j < LDO; j++)
                for (int k = 0; k < 2; k++)
                    ck_assert(element(e, dst[k] + (size_t)(i * LDO + j) * e) ==
                              (j < N ? element(e, src + (size_t)(j * LDI + i) * e) : 0));
        libxsmm_xmcopyfunction c = tg_xsmm_copy_kernel(e, M, N, LDI, LDO);
        ck_assert_ptr_nonnull(c);
        for (int k = 0; k < 2; k++) {
            memset(dst[k], 0, sizeof dst[k]);
            tg_xsmm_copy(k ? NULL : c, e, src, LDI, dst[k], LDO, M, N);
        }
        for (int j = 0; j < N; j++)
            for (int i = 0; i < LDO; i++)
                for (int k = 0; k < 2; k++)
                    ck_assert(element(e, dst[k] + (size_t)(j * LDO + i) * e) ==
                              (i < M ? element(e, src + (size_t)(j * LDI + i) * e) : 0));
    }
}
END_TEST

/* The comparisons catch a kernel that reads or writes the wrong tap. Such a kernel computes
 * what the right one does with two taps of the weights (forward, input gradient) or of the
 * result (weight gradient) swapped, so that is what is run here, and must fail. */
static void swap_taps(tg_dtype dt, void *w, int64_t outer, int64_t taps, int64_t a, int64_t b)
{
    size_t e = elem_size(dt);
    char tmp[sizeof(double)], *p = w;
    for (int64_t i = 0; i < outer; i++) {
        memcpy(tmp, p + (size_t)(i * taps + a) * e, e);
        memcpy(p + (size_t)(i * taps + a) * e, p + (size_t)(i * taps + b) * e, e);
        memcpy(p + (size_t)(i * taps + b) * e, tmp, e);
    }
}

/* Winograd (kernels/winograd.c), each tile (2x2 to 5x5), for all three: the
 * reference model's kind (32->64 at 6x6); odd sizes, whose last row and column of tiles
 * hang over the output; no padding, on one image (bands of tile rows, 9 output rows: the
 * last band's tiles half outside); padding 2; channels that are no multiple of 8 or 16; a
 * large image cut in three bands of different heights. */
static const conv_case winograd_cases[] = {
    {2, 32, 6, 6, 64, 3, 1},  {3, 16, 7, 9, 20, 3, 1}, {1, 17, 11, 6, 16, 3, 0},
    {2, 19, 5, 8, 33, 3, 2},  {1, 16, 44, 38, 16, 3, 1},
};
#define N_WINOGRAD (sizeof winograd_cases / sizeof *winograd_cases)

START_TEST(winograd_matches_eager)
{
    check_kernels(&winograd_cases[_i], _i, TG_F32, TG_CONV_WINOGRAD);
}
END_TEST

START_TEST(winograd_3x3_matches_eager)
{
    check_kernels(&winograd_cases[_i], _i, TG_F32, TG_CONV_WINOGRAD | TG_CONV_WINOGRAD_3);
}
END_TEST

START_TEST(winograd_4x4_matches_eager)
{
    check_kernels(&winograd_cases[_i], _i, TG_F32, TG_CONV_WINOGRAD | TG_CONV_WINOGRAD_4);
}
END_TEST

START_TEST(winograd_5x5_matches_eager)
{
    check_kernels(&winograd_cases[_i], _i, TG_F32, TG_CONV_WINOGRAD | TG_CONV_WINOGRAD_5);
}
END_TEST

/* Case 0 gathers its taps, case 2 batches over them; then Winograd's, with 2x2 tiles, 4x4,
 * 3x3 and 5x5 (flags). */
START_TEST(planted_wrong_tap_fails)
{
    const conv_case *cs = _i == 0 ? &cases[0] : _i == 1 ? &cases[2] : &winograd_cases[0];
    unsigned flags = _i == 2 ? TG_CONV_WINOGRAD
                     : _i == 3 ? TG_CONV_WINOGRAD | TG_CONV_WINOGRAD_4
                     : _i == 4 ? TG_CONV_WINOGRAD | TG_CONV_WINOGRAD_3
                     : _i == 5 ? TG_CONV_WINOGRAD | TG_CONV_WINOGRAD_5
                               : 0;
    eager_conv e;
    eager_conv_init(&e, cs, TG_F32, 99);
    int64_t taps = cs->k * cs->k, planes = cs->oc * cs->c;
    /* The reference values first: the eager tensors share nothing with the planted weights. */
    size_t wbytes = (size_t)tg_numel(e.w) * sizeof(float);
    float *planted = malloc(wbytes);
    memcpy(planted, tg_data(e.w), wbytes);
    swap_taps(TG_F32, planted, planes, taps, 0, 1);
    tg_graph g;
    build_kernels(&g, &e, cs, flags);
    g.nodes[W].data = planted;
    const int checked[2] = {FORWARD, INPUT_GRAD};
    tg_tensor *refs[2] = {e.y, e.dx};
    for (int k = 0; k < 2; k++) {
        void *out = run_node(&g, checked[k], 1);
        ck_assert(g.nodes[checked[k]].numel == tg_numel(refs[k])); /* nothing cropped */
        double err = rel_error(TG_F32, out, tg_data(refs[k]), g.nodes[checked[k]].numel);
        ck_assert_msg(err > 100 * tolerance(TG_F32), "node %d: error %g", checked[k], err);
        free(out);
    }
    void *dw = run_node(&g, WEIGHT_GRAD, 1);
    swap_taps(TG_F32, dw, planes, taps, 3, 4);
    ck_assert(rel_error(TG_F32, dw, tg_data(e.dw), tg_numel(e.dw)) > 100 * tolerance(TG_F32));
    free(dw);
    free(planted);
    tg_graph_free(&g);
    tg_tape_free(e.tape);
}
END_TEST

START_TEST(prepare_checks_the_node)
{
    eager_conv e;
    eager_conv_init(&e, &cases[0], TG_F32, 5);
    tg_graph g;
    build_kernels(&g, &e, &cases[0], 0);
    tg_ir_node strided = g.nodes[FORWARD];
    strided.attr[2] = 2;
    strided.payload = NULL;
    ck_assert_int_eq(tg_conv_prepare(&g, &strided), TG_ERR_ARG);
    tg_ir_node wrong = g.nodes[WEIGHT_GRAD];
    wrong.shape[1] += 1;
    wrong.payload = NULL;
    ck_assert_int_eq(tg_conv_prepare(&g, &wrong), TG_ERR_SHAPE);
    ck_assert_ptr_nonnull(strstr(tg_last_error(), "conv_wgrad"));
    tg_graph_free(&g);
    tg_tape_free(e.tape);
    /* Winograd's form takes 3x3 f32 convolutions only */
    eager_conv_init(&e, &cases[2], TG_F32, 5); /* 5x5 */
    build_kernels(&g, &e, &cases[2], 0);
    tg_ir_node five = g.nodes[FORWARD];
    five.attr[4] |= TG_CONV_WINOGRAD;
    five.payload = NULL;
    ck_assert_int_eq(tg_conv_prepare(&g, &five), TG_ERR_ARG);
    ck_assert_ptr_nonnull(strstr(tg_last_error(), "Winograd"));
    tg_graph_free(&g);
    tg_tape_free(e.tape);
    eager_conv_init(&e, &winograd_cases[0], TG_F64, 5);
    build_kernels(&g, &e, &winograd_cases[0], 0);
    tg_ir_node f64 = g.nodes[INPUT_GRAD];
    f64.attr[4] |= TG_CONV_WINOGRAD;
    f64.payload = NULL;
    ck_assert_int_eq(tg_conv_prepare(&g, &f64), TG_ERR_ARG);
    tg_graph_free(&g);
    tg_tape_free(e.tape);
}
END_TEST

START_TEST(describe_names_the_convolution)
{
    char buf[128];
    tg_ir_node n = {.op = TG_PLAN_OP_CONV, .ndim = 4, .shape = {128, 64, 14, 14},
                    .attr = {1, 1, 1, 1, 0, 128, 32, 14, 14, 3, 3}};
    tg_conv_describe(&n, buf, sizeof buf);
    ck_assert_str_eq(buf, "conv 3x3 pad 1 32->64 [128,32,14,14]");
    n.attr[4] = TG_CONV_TRANSPOSED_FLIPPED;
    tg_conv_describe(&n, buf, sizeof buf);
    ck_assert_str_eq(buf, "conv transposed+flipped 3x3 pad 1 32->64 [128,32,14,14]");
    n.attr[4] |= TG_CONV_WINOGRAD;
    tg_conv_describe(&n, buf, sizeof buf);
    ck_assert_str_eq(buf, "conv transposed+flipped winograd F(2,3) 3x3 pad 1 32->64 "
                          "[128,32,14,14]");
    n.attr[4] |= TG_CONV_WINOGRAD_3;
    tg_conv_describe(&n, buf, sizeof buf);
    ck_assert_str_eq(buf, "conv transposed+flipped winograd F(3,3) 3x3 pad 1 32->64 "
                          "[128,32,14,14]");
    n.attr[4] = TG_CONV_TRANSPOSED_FLIPPED | TG_CONV_WINOGRAD | TG_CONV_WINOGRAD_4;
    tg_conv_describe(&n, buf, sizeof buf);
    ck_assert_str_eq(buf, "conv transposed+flipped winograd F(4,3) 3x3 pad 1 32->64 "
                          "[128,32,14,14]");
    n.attr[4] = TG_CONV_TRANSPOSED_FLIPPED | TG_CONV_WINOGRAD | TG_CONV_WINOGRAD_5;
    tg_conv_describe(&n, buf, sizeof buf);
    ck_assert_str_eq(buf, "conv transposed+flipped winograd F(5,3) 3x3 pad 1 32->64 "
                          "[128,32,14,14]");
    tg_ir_node w = {.op = TG_PLAN_OP_CONV_WGRAD, .ndim = 4, .shape = {64, 32, 3, 3},
                    .attr = {1, 2, 1, 1, 0, 128, 32, 14, 14}};
    tg_conv_describe(&w, buf, sizeof buf);
    ck_assert_str_eq(buf, "conv_wgrad 3x3 pad 1x2 32->64 [128,32,14,14]");
}
END_TEST

/* ---- the pass on traced graphs ------------------------------------------------------------- */
typedef struct {
    int conv, flipped, wgrad, im2col, col2im, matmul, winograd, winograd_3, winograd_4;
    int winograd_5;
} op_counts;

static op_counts count_ops(const tg_plan *plan)
{
    const tg_graph *g = tg_plan_graph(plan);
    op_counts c = {0};
    for (int i = 0; i < g->n; i++) {
        const tg_ir_node *n = &g->nodes[i];
        c.conv += n->op == TG_PLAN_OP_CONV && !(n->attr[4] & TG_CONV_TRANSPOSED_FLIPPED);
        c.flipped += n->op == TG_PLAN_OP_CONV && (n->attr[4] & TG_CONV_TRANSPOSED_FLIPPED);
        c.wgrad += n->op == TG_PLAN_OP_CONV_WGRAD;
        c.im2col += n->op == TG_OP_IM2COL;
        c.col2im += n->op == TG_OP_COL2IM;
        c.matmul += n->op == TG_OP_MATMUL;
        bool conv = n->op == TG_PLAN_OP_CONV || n->op == TG_PLAN_OP_CONV_WGRAD;
        c.winograd += conv && (n->attr[4] & TG_CONV_WINOGRAD);
        c.winograd_3 += conv && (n->attr[4] & TG_CONV_WINOGRAD_3);
        c.winograd_4 += conv && (n->attr[4] & TG_CONV_WINOGRAD_4);
        c.winograd_5 += conv && (n->attr[4] & TG_CONV_WINOGRAD_5);
    }
    return c;
}

/* A convolution layer's step: y = conv2d(x, w, b) and the gradients of <y, g> for x, w, b. */
static void conv_step(tg_tensor *x, tg_tensor *w, tg_tensor *b, tg_tensor *g, int64_t stride,
                      int64_t pad, tg_tensor **out)
{
    out[0] = tg_conv2d(x, w, b, stride, pad);
    ck_assert_msg(out[0] != NULL, "%s", tg_last_error());
    ck_assert_int_eq(tg_grad(out[0], 3, (tg_tensor *[]){x, w, b}, g, out + 1), 0);
}

/* The step compiled (with `disable` passes off) against the same step run eagerly: every
 * output within tolerance; returns the compiled plan's op counts. */
static op_counts check_compiled_step(const conv_case *cs, int64_t stride, tg_dtype dt,
                                     const char *disable)
{
    tg_tape *tape = tg_tape_new();
    tg_rng rng;
    tg_rng_seed(&rng, 7);
    tg_tensor *w = tg_rand_normal(tape, &rng, dt, 4, SHAPE(cs->oc, cs->c, cs->k, cs->k), 0, 1);
    tg_tensor *b = tg_rand_normal(tape, &rng, dt, 1, SHAPE(cs->oc), 0, 1);
    tg_tensor *x = tg_rand_normal(tape, &rng, dt, 4, SHAPE(cs->n, cs->c, cs->h, cs->w), 0, 1);
    int64_t oh = (cs->h + 2 * cs->pad - cs->k) / stride + 1;
    int64_t ow = (cs->w + 2 * cs->pad - cs->k) / stride + 1;
    tg_tensor *g = tg_rand_normal(tape, &rng, dt, 4, SHAPE(cs->n, cs->oc, oh, ow), 0, 1);
    tg_tensor *eager[4];
    conv_step(x, w, b, g, stride, cs->pad, eager);

    ck_assert_int_eq(tg_tape_trace(tape, true), 0);
    tg_tensor *px = tg_placeholder(tape, "x", dt, 4, tg_shape(x));
    tg_tensor *pg = tg_placeholder(tape, "g", dt, 4, tg_shape(g));
    tg_tensor *traced[4];
    conv_step(px, w, b, pg, stride, cs->pad, traced);
    ck_assert_int_eq(tg_tape_trace(tape, false), 0);
    tg_plan *plan = tg_compile(tape, 4, traced, &(tg_compile_opts){.disable = disable});
    ck_assert_msg(plan != NULL, "%s", tg_last_error());
    ck_assert_int_eq(tg_plan_set_input(plan, "x", tg_data(x)), 0);
    ck_assert_int_eq(tg_plan_set_input(plan, "g", tg_data(g)), 0);
    ck_assert_int_eq(tg_plan_run(plan), 0);
    const char *names[4] = {"y", "dx", "dw", "db"};
    for (int k = 0; k < 4; k++) {
        double err = rel_error(dt, tg_plan_output(plan, k), tg_data(eager[k]), tg_numel(eager[k]));
        ck_assert_msg(err <= tolerance(dt), "%s (%s off): relative error %g", names[k],
                      disable, err);
    }
    op_counts counts = count_ops(plan);
    tg_plan_free(plan);
    tg_tape_free(tape);
    return counts;
}

/* Every case, both dtypes. With the pass alone (simplify off too), a forward CONV, a flipped
 * one for the input gradient and a CONV_WGRAD replace every im2col, col2im and matmul (where
 * the padding is wider than the kernel, the slice that undoes it stays). So they do after
 * simplify, except with 1x1 kernels: simplify makes their im2col a permute, which leaves a
 * plain matmul. Without the pass, no convolution. */
START_TEST(pass_replaces_the_patterns)
{
    const tg_dtype dts[2] = {TG_F32, TG_F64};
    const conv_case *cs = &cases[_i];
    for (int d = 0; d < 2; d++) {
        op_counts alone = check_compiled_step(cs, 1, dts[d], "fuse,simplify");
        ck_assert_msg(alone.conv == 1 && alone.flipped == 1 && alone.wgrad == 1,
                      "case %d: %d forward, %d input-gradient, %d weight-gradient convs", _i,
                      alone.conv, alone.flipped, alone.wgrad);
        ck_assert_int_eq(alone.im2col + alone.col2im + alone.matmul, 0);
        op_counts all = check_compiled_step(cs, 1, dts[d], "fuse");
        ck_assert_int_eq(all.im2col + all.col2im, 0);
        if (cs->k > 1)
            ck_assert(all.conv == 1 && all.flipped == 1 && all.wgrad == 1 && all.matmul == 0);
        op_counts off = check_compiled_step(cs, 1, dts[d], "fuse,lower_conv");
        ck_assert_int_eq(off.conv + off.flipped + off.wgrad, 0);
    }
}
END_TEST

/* The winograd pass (compile/pass_winograd.c) marks the f32 3x3 convolutions with 16
 * channels or more on both sides and 1024 output positions or more: all three of such a
 * step's (the first case has exactly 1024), by default with the tile of the fewest products
 * for their plane (16x16: 4x4's 16 tiles of 36 points against 5x5's 16 of 49 and 3x3's 36 of
 * 25; 21x19: 5x5's 20 of 49 against 4x4's 30 of 36 and 3x3's 49 of 25), and with the tile
 * TG_WINOGRAD_TILE names everywhere, and the steps are still right; with the
 * pass off none, nor in f64, nor with fewer channels (case 6's forward has 16 and 6), nor
 * with fewer positions (winograd_cases[0]: 72). */
START_TEST(winograd_pass_marks_the_convolutions)
{
    const conv_case marked[] = {{4, 16, 16, 16, 16, 3, 1}, {3, 20, 21, 19, 24, 3, 1}};
    const char *tile[] = {NULL, NULL, "2", "3", "4", "5"};
    const int winograd_3[] = {0, 0, 0, 3, 0, 0}, winograd_4[] = {3, 0, 0, 0, 3, 0};
    const int winograd_5[] = {0, 3, 0, 0, 0, 3};
    for (int i = 0; i < 6; i++) {
        if (tile[i])
            ck_assert_int_eq(setenv("TG_WINOGRAD_TILE", tile[i], 1), 0);
        else
            unsetenv("TG_WINOGRAD_TILE");
        op_counts c = check_compiled_step(&marked[i % 2], 1, TG_F32, "fuse");
        ck_assert_int_eq(c.winograd, 3);
        ck_assert_int_eq(c.winograd_3, winograd_3[i]);
        ck_assert_int_eq(c.winograd_4, winograd_4[i]);
        ck_assert_int_eq(c.winograd_5, winograd_5[i]);
    }
    unsetenv("TG_WINOGRAD_TILE");
    ck_assert_int_eq(check_compiled_step(&marked[0], 1, TG_F32, "fuse,winograd").winograd, 0);
    ck_assert_int_eq(check_compiled_step(&marked[0], 1, TG_F64, "fuse").winograd, 0);
    ck_assert_int_eq(check_compiled_step(&cases[6], 1, TG_F32, "fuse").winograd, 0);
    ck_assert_int_eq(check_compiled_step(&winograd_cases[0], 1, TG_F32, "fuse").winograd, 0);
}
END_TEST

/* Stride 2 is not the kernels' kind: the graph stays as it was, and still right. */
START_TEST(pass_leaves_strided_convolutions)
{
    const conv_case cs = {2, 3, 9, 8, 4, 3, 1};
    op_counts on = check_compiled_step(&cs, 2, TG_F64, "fuse");
    ck_assert_int_eq(on.conv + on.flipped + on.wgrad, 0);
    ck_assert_int_eq(on.im2col, 1);
}
END_TEST

/* The pass with DCE off: nothing is dropped, and what was replaced is still right. */
START_TEST(pass_without_dce)
{
    check_compiled_step(&cases[0], 1, TG_F64, "fuse,dce");
}
END_TEST

/* loss = sum(conv2(maxpool(relu(conv1(x))))^2) and its gradients for both weights. */
static void model_step(tg_tensor *x, const tg_conv2d_layer *c1, const tg_conv2d_layer *c2,
                       tg_tensor **out)
{
    tg_tensor *h = tg_max_pool2d(tg_relu(tg_conv2d_layer_forward(c1, x)), 2, 2, 0);
    tg_tensor *y = tg_conv2d_layer_forward(c2, h);
    out[0] = tg_sum(tg_mul(y, y), 0, NULL, false);
    ck_assert_msg(out[0] != NULL, "%s", tg_last_error());
    ck_assert_int_eq(tg_grad(out[0], 2, (tg_tensor *[]){c1->weight, c2->weight}, NULL, out + 1),
                     0);
}

/* The reference model's two blocks at a small batch, the whole pipeline: conv1 (no input
 * gradient: the image is no parameter) -> relu -> max pool -> conv2. Compiled with 2
 * threads, runs with 1 and 2 agree to the bit. */
START_TEST(pass_on_a_model_step)
{
    tg_tape *tape = tg_tape_new();
    tg_rng rng;
    tg_rng_seed(&rng, 11);
    tg_conv2d_layer c1, c2;
    ck_assert_int_eq(tg_conv2d_layer_init(&c1, tape, &rng, TG_F32, 1, 8, 3, 1, 1, true), 0);
    ck_assert_int_eq(tg_conv2d_layer_init(&c2, tape, &rng, TG_F32, 8, 12, 3, 1, 1, true), 0);
    tg_tensor *x = tg_rand_uniform(tape, &rng, TG_F32, 4, SHAPE(4, 1, 28, 28), 0, 1);
    tg_tensor *eager[3], *traced[3];
    model_step(x, &c1, &c2, eager);
    ck_assert_int_eq(tg_set_num_threads(2), 0);
    ck_assert_int_eq(tg_tape_trace(tape, true), 0);
    model_step(tg_placeholder(tape, "x", TG_F32, 4, tg_shape(x)), &c1, &c2, traced);
    ck_assert_int_eq(tg_tape_trace(tape, false), 0);
    tg_plan *plan = tg_compile(tape, 3, traced, NULL);
    ck_assert_msg(plan != NULL, "%s", tg_last_error());
    op_counts c = count_ops(plan);
    ck_assert_msg(c.conv == 2 && c.flipped == 1 && c.wgrad == 2 && c.im2col + c.col2im == 0 &&
                  c.matmul == 0, "%d %d %d %d %d %d", c.conv, c.flipped, c.wgrad, c.im2col,
                  c.col2im, c.matmul);
    ck_assert_int_eq(tg_plan_set_input(plan, "x", tg_data(x)), 0);
    size_t bytes[3] = {sizeof(float), 8 * 9 * sizeof(float), 12 * 8 * 9 * sizeof(float)};
    char *runs[2][3];
    for (int t = 0; t < 2; t++) {
        ck_assert_int_eq(tg_set_num_threads(t + 1), 0);
        ck_assert_int_eq(tg_plan_run(plan), 0);
        for (int k = 0; k < 3; k++) {
            runs[t][k] = malloc(bytes[k]);
            memcpy(runs[t][k], tg_plan_output(plan, k), bytes[k]);
        }
    }
    for (int k = 0; k < 3; k++) {
        double err = rel_error(TG_F32, runs[0][k], tg_data(eager[k]), tg_numel(eager[k]));
        ck_assert_msg(err <= tolerance(TG_F32), "output %d: relative error %g", k, err);
        ck_assert(memcmp(runs[0][k], runs[1][k], bytes[k]) == 0);
        free(runs[0][k]);
        free(runs[1][k]);
    }
    tg_plan_free(plan);
    tg_tape_free(tape);
}
END_TEST

int main(void)
{
    /* every convolution on every thread, however small, so 1 and 2 threads differ */
    setenv("TG_CONV_THREAD_MACS", "0", 1);
    Suite *s = suite_create("conv_lower");
    TCase *kernels = tcase_create("kernels");
    tcase_add_loop_test(kernels, kernels_match_eager_f32, 0, (int)N_CASES);
    tcase_add_loop_test(kernels, kernels_match_eager_f64, 0, (int)N_CASES);
    tcase_add_test(kernels, loop_fallback_matches_eager);
    tcase_add_test(kernels, xsmm_copies_match_the_loops);
    tcase_add_loop_test(kernels, winograd_matches_eager, 0, (int)N_WINOGRAD);
    tcase_add_loop_test(kernels, winograd_4x4_matches_eager, 0, (int)N_WINOGRAD);
    tcase_add_loop_test(kernels, winograd_3x3_matches_eager, 0, (int)N_WINOGRAD);
    tcase_add_loop_test(kernels, winograd_5x5_matches_eager, 0, (int)N_WINOGRAD);
    tcase_add_loop_test(kernels, planted_wrong_tap_fails, 0, 6);
    tcase_add_test(kernels, prepare_checks_the_node);
    tcase_add_test(kernels, describe_names_the_convolution);
    suite_add_tcase(s, kernels);
    TCase *pass = tcase_create("pass");
    tcase_add_loop_test(pass, pass_replaces_the_patterns, 0, (int)N_CASES);
    tcase_add_test(pass, winograd_pass_marks_the_convolutions);
    tcase_add_test(pass, pass_leaves_strided_convolutions);
    tcase_add_test(pass, pass_without_dce);
    tcase_add_test(pass, pass_on_a_model_step);
    suite_add_tcase(s, pass);
    return tg_run_suite(s);
}
