/* Prologues (compile/prologue.h): batch norm's backward run inside the convolution's weight
 * gradient, chunk by chunk of images. A conv -> batch norm (training) -> ReLU block and its
 * gradients, compiled with every pass and with the prologue switched off: the same bits (the
 * kernel is the same, only when it runs changes), for 3, 2 and 1 threads, on a second run with
 * new inputs (a chunk the prologue skipped would keep the first run's values), and against
 * eager execution within tolerance. Shapes: the reference model's first block (one input
 * channel: no input gradient, the weight gradient the one reader), a block with an input
 * gradient (the gradient at the convolution's output read again after the weight gradient)
 * and an odd batch that is no multiple of the weight gradient's chunks; and blocks whose
 * convolutions the winograd pass takes (16 channels on each side, 1100 output positions),
 * with an input gradient and without. Where the weight gradient is the one reader, the
 * prologue writes chunks into the weight gradient's scratch instead of a full-size buffer
 * (chunked): the tests count those too. */
#include "testing.h"
#include "compile/graph.h"
#include "tapegrad_nn.h"

#include <math.h>
#include <string.h>

typedef struct {
    int64_t n, c, oc, hw;
    bool dx; /* the input gradient too: the gradient at the convolution's output read again */
} block_case;

static const block_case cases[] = {
    {16, 1, 32, 28, false}, /* the reference model's first block, at a smaller batch */
    {7, 5, 20, 9, true},    /* an input gradient too; 7 images */
    {9, 3, 16, 13, true},
    {2, 2, 16, 6, true},    /* two small images: with 3 threads, threads share an image's bands */
    {11, 16, 16, 10, true}, /* Winograd's weight gradient (kernels/winograd.c): chunks of 8, 3 */
    {11, 16, 16, 10, false}, /* the same, chunked */
    {5, 3, 80, 7, false},   /* chunked, with two blocks of output channels (conv.c: 64 each) */
    {6, 5, 20, 9, false},   /* chunked, taps batched over the wide rows (conv.c) */
    {6, 16, 24, 5, false},  /* chunked, channels last (conv.c; too few positions for Winograd) */
};

enum { N_OUT = 5 }; /* y, dw, dgamma, dbeta, dx */

typedef struct {
    tg_tape *tape;
    tg_tensor *out[N_OUT];
    int n_out;
    tg_tensor *x[2], *dy[2]; /* two sets of inputs */
} traced_block;

static void block(tg_tensor *x, tg_tensor *w, tg_tensor *gamma, tg_tensor *beta, tg_tensor *dy,
                  bool need_dx, tg_tensor **out)
{
    tg_tensor *y = tg_relu(tg_batch_norm(tg_conv2d(x, w, NULL, 1, 1), gamma, beta, NULL, NULL,
                                         true, 0.9, 1e-5));
    ck_assert_msg(y != NULL, "%s", tg_last_error());
    out[0] = y;
    tg_tensor *wrt[4] = {w, gamma, beta, x};
    ck_assert_int_eq(tg_grad(y, need_dx ? 4 : 3, wrt, dy, out + 1), 0);
}

static void trace_block(const block_case *bc, traced_block *t, tg_tensor **eager)
{
    t->tape = tg_tape_new();
    tg_rng rng;
    tg_rng_seed(&rng, 5);
    bool need_dx = bc->dx;
    t->n_out = need_dx ? 5 : 4;
    tg_tensor *w = tg_rand_normal(t->tape, &rng, TG_F32, 4, SHAPE(bc->oc, bc->c, 3, 3), 0, 0.5);
    tg_tensor *gamma = tg_rand_uniform(t->tape, &rng, TG_F32, 1, SHAPE(bc->oc), 0.5, 1.5);
    tg_tensor *beta = tg_rand_uniform(t->tape, &rng, TG_F32, 1, SHAPE(bc->oc), -0.5, 0.5);
    for (int s = 0; s < 2; s++) {
        t->x[s] = tg_rand_normal(t->tape, &rng, TG_F32, 4, SHAPE(bc->n, bc->c, bc->hw, bc->hw),
                                 0, 1);
        t->dy[s] = tg_rand_normal(t->tape, &rng, TG_F32, 4,
                                  SHAPE(bc->n, bc->oc, bc->hw, bc->hw), 0, 1);
    }
    block(t->x[1], w, gamma, beta, t->dy[1], need_dx, eager); /* the second run's inputs */
    ck_assert_int_eq(tg_tape_trace(t->tape, true), 0);
    tg_tensor *px = tg_placeholder(t->tape, "x", TG_F32, 4, tg_shape(t->x[0]));
    tg_tensor *pdy = tg_placeholder(t->tape, "dy", TG_F32, 4, tg_shape(t->dy[0]));
    block(px, w, gamma, beta, pdy, need_dx, t->out);
    ck_assert_int_eq(tg_tape_trace(t->tape, false), 0);
}

static tg_plan *compile_block(traced_block *t, const char *disable)
{
    tg_plan *plan = tg_compile(t->tape, t->n_out, t->out, &(tg_compile_opts){.disable = disable});
    ck_assert_msg(plan != NULL, "%s", tg_last_error());
    return plan;
}

/* Runs the plan on input set s and copies its outputs into got[k]. */
static void run_block(traced_block *t, tg_plan *plan, int s, float **got)
{
    ck_assert_int_eq(tg_plan_set_input(plan, "x", tg_data(t->x[s])), 0);
    ck_assert_int_eq(tg_plan_set_input(plan, "dy", tg_data(t->dy[s])), 0);
    ck_assert_int_eq(tg_plan_run(plan), 0);
    for (int k = 0; k < t->n_out; k++) {
        size_t bytes = (size_t)tg_numel(t->out[k]) * sizeof(float);
        got[k] = malloc(bytes);
        memcpy(got[k], tg_plan_output(plan, k), bytes);
    }
}

static double rel_error(const float *a, const float *b, int64_t n)
{
    double num = 0, den = 0;
    for (int64_t i = 0; i < n; i++) {
        num += ((double)a[i] - b[i]) * ((double)a[i] - b[i]);
        den += (double)b[i] * b[i];
    }
    return sqrt(num / (den > 0 ? den : 1));
}

START_TEST(same_bits_as_without)
{
    const block_case *bc = &cases[_i];
    traced_block t;
    tg_tensor *eager[N_OUT];
    trace_block(bc, &t, eager);
    ck_assert_int_eq(tg_set_num_threads(3), 0);
    tg_plan *with = compile_block(&t, NULL), *without = compile_block(&t, "prologue");
    ck_assert_int_eq(tg_plan_prologues(with), 1);
    ck_assert_int_eq(tg_plan_chunked_prologues(with), !bc->dx);
    ck_assert_int_eq(tg_plan_prologues(without), 0);
    for (int threads = 3; threads >= 1; threads--) {
        ck_assert_int_eq(tg_set_num_threads(threads), 0);
        for (int s = 0; s < 2; s++) {
            float *a[N_OUT], *b[N_OUT];
            run_block(&t, with, s, a);
            run_block(&t, without, s, b);
            for (int k = 0; k < t.n_out; k++) {
                int64_t n = tg_numel(t.out[k]);
                ck_assert_msg(memcmp(a[k], b[k], (size_t)n * sizeof(float)) == 0,
                              "case %d, %d threads, run %d: output %d differs with the prologue",
                              _i, threads, s, k);
                if (s == 1) {
                    double err = rel_error(a[k], tg_data(eager[k]), n);
                    ck_assert_msg(err < 1e-4, "case %d: output %d off eager by %g", _i, k, err);
                }
                free(a[k]);
                free(b[k]);
            }
        }
    }
    tg_plan_free(with);
    tg_plan_free(without);
    tg_tape_free(t.tape);
}
END_TEST

int main(void)
{
    tg_test_plans_everywhere(); /* native kernels, and so prologues, at any size */
    Suite *s = suite_create("prologue");
    TCase *tc = tcase_create("prologue");
    tcase_set_timeout(tc, 600);
    tcase_add_loop_test(tc, same_bits_as_without, 0, (int)(sizeof cases / sizeof cases[0]));
    suite_add_tcase(s, tc);
    return tg_run_suite(s);
}
