/* The conv_sums pass (compile/pass_conv_sums.c): a convolution's output summed per channel
 * (batch norm's mean) is summed by the convolution as it writes its bands. Against eager
 * execution and against the plan with the pass off, on every kind of forward kernel
 * (kernels/conv.c: taps gathered by im2col or by conv_rows.c's shifted rows, channels last,
 * wide rows; kernels/winograd.c), with images cut into several bands, readers of the
 * output that are fused kernels and one that is not (a second convolution), and 1, 2 and 3
 * threads to the bit. */
#include "testing.h"
#include "compile/graph.h"
#include "compile/plan_ops.h"
#include "tapegrad_nn.h"

#include <math.h>
#include <string.h>

typedef struct {
    int64_t n, c, h, w, oc;
    const char *rows; /* TG_CONV_ROWS: conv_rows.c's kernel for gathered taps, or not */
    const char *what;
} sums_case;

/* N = 1 or 2 on tall images: bands of several rows (conv.c wants 4 tasks at least), so the
 * partial sums hold zero rows between the bands' first ones. */
static const sums_case cases[] = {
    {2, 1, 28, 28, 32, "0", "taps gathered, im2col"},
    {2, 1, 28, 28, 32, "1", "taps gathered, conv_rows.c"},
    {1, 3, 30, 9, 7, "0", "taps gathered (K = 27), 4 bands"},
    {1, 3, 30, 9, 7, "1", "conv_rows.c, 4 bands"},
    {2, 8, 9, 7, 24, "0", "channels last"},
    {1, 8, 21, 6, 20, "0", "channels last, bands, 20 channels (no multiple of 8)"},
    {2, 5, 8, 7, 6, "0", "wide rows"},
    {4, 16, 16, 16, 16, "0", "Winograd"},
    {1, 16, 40, 36, 19, "0", "Winograd, bands, 19 channels"},
};
#define N_CASES (sizeof cases / sizeof *cases)

/* y = conv(x); the step's outputs: y's channel means, the sum of squares about them (a
 * fused reader of y besides the mean), and a second convolution of y (a reader that is not
 * fused: it reads y through a view). */
static void step(tg_tensor *x, tg_tensor *w, tg_tensor *w2, tg_tensor **out)
{
    tg_tensor *y = tg_conv2d(x, w, NULL, 1, 1);
    ck_assert_msg(y != NULL, "%s", tg_last_error());
    const int axes[3] = {0, 2, 3};
    out[0] = tg_mean(y, 3, axes, true);
    tg_tensor *d = tg_sub(y, out[0]);
    out[1] = tg_sum(tg_mul(d, d), 3, axes, false);
    out[2] = tg_conv2d(y, w2, NULL, 1, 1);
    for (int k = 0; k < 3; k++)
        ck_assert_msg(out[k] != NULL, "%s", tg_last_error());
}

static double rel_error(const float *a, const float *ref, int64_t n)
{
    double err = 0, scale = 0;
    for (int64_t i = 0; i < n; i++) {
        err = fmax(err, fabs((double)a[i] - (double)ref[i]));
        scale = fmax(scale, fabs((double)ref[i]));
    }
    return err / (scale > 0 ? scale : 1);
}

/* The CONV nodes with their channel sums in the plan. */
static int joined_convs(const tg_plan *plan)
{
    const tg_graph *g = tg_plan_graph(plan);
    int count = 0;
    for (int i = 0; i < g->n; i++)
        count += g->nodes[i].op == TG_PLAN_OP_CONV &&
                 (g->nodes[i].attr[4] & TG_CONV_CHANNEL_SUMS);
    return count;
}

START_TEST(sums_match_eager_and_the_plan_without)
{
    const sums_case *cs = &cases[_i];
    ck_assert_int_eq(setenv("TG_CONV_ROWS", cs->rows, 1), 0);
    tg_tape *tape = tg_tape_new();
    tg_rng rng;
    tg_rng_seed(&rng, 17);
    tg_tensor *w = tg_rand_normal(tape, &rng, TG_F32, 4, SHAPE(cs->oc, cs->c, 3, 3), 0, 1);
    tg_tensor *w2 = tg_rand_normal(tape, &rng, TG_F32, 4, SHAPE(3, cs->oc, 3, 3), 0, 1);
    /* a mean far from zero, as after a ReLU: the sums must not lose it */
    tg_tensor *x = tg_rand_normal(tape, &rng, TG_F32, 4, SHAPE(cs->n, cs->c, cs->h, cs->w), 1,
                                  1);
    tg_tensor *eager[3];
    step(x, w, w2, eager);
    ck_assert_int_eq(tg_tape_trace(tape, true), 0);
    tg_tensor *px = tg_placeholder(tape, "x", TG_F32, 4, tg_shape(x));
    tg_tensor *traced[3];
    step(px, w, w2, traced);
    ck_assert_int_eq(tg_tape_trace(tape, false), 0);
    const char *names[3] = {"mean", "squares", "second conv"};
    float *first[3] = {NULL, NULL, NULL};
    for (int config = 0; config < 4; config++) { /* off; on with 1, 2, 3 threads */
        bool on = config > 0;
        ck_assert_int_eq(tg_set_num_threads(on ? config : 1), 0);
        tg_plan *plan = tg_compile(tape, 3, traced,
                                   &(tg_compile_opts){.disable = on ? NULL : "conv_sums"});
        ck_assert_msg(plan != NULL, "%s", tg_last_error());
        ck_assert_int_eq(joined_convs(plan), on ? 1 : 0);
        ck_assert_int_eq(tg_plan_set_input(plan, "x", tg_data(x)), 0);
        ck_assert_int_eq(tg_plan_run(plan), 0);
        for (int k = 0; k < 3; k++) {
            const float *got = tg_plan_output(plan, k);
            int64_t n = tg_numel(eager[k]);
            double err = rel_error(got, tg_data(eager[k]), n);
            ck_assert_msg(err <= 2e-5, "%s, %s (pass %s, %d threads): relative error %g",
                          cs->what, names[k], on ? "on" : "off", config, err);
            if (config == 1) {
                first[k] = malloc((size_t)n * sizeof(float));
                memcpy(first[k], got, (size_t)n * sizeof(float));
            } else if (config > 1) {
                ck_assert_msg(memcmp(first[k], got, (size_t)n * sizeof(float)) == 0,
                              "%s, %s: %d threads differ from 1", cs->what, names[k], config);
            }
        }
        tg_plan_free(plan);
    }
    for (int k = 0; k < 3; k++)
        free(first[k]);
    ck_assert_int_eq(tg_set_num_threads(1), 0);
    tg_tape_free(tape);
    unsetenv("TG_CONV_ROWS");
}
END_TEST

/* Not taken: in f64, a sum over other axes, a convolution's output that is an output of the
 * plan itself; and the pass leaves nothing when switched off (above). */
START_TEST(other_sums_are_left)
{
    tg_tape *tape = tg_tape_new();
    tg_rng rng;
    tg_rng_seed(&rng, 5);
    for (int kind = 0; kind < 3; kind++) {
        tg_dtype dt = kind == 0 ? TG_F64 : TG_F32;
        tg_tensor *w = tg_rand_normal(tape, &rng, dt, 4, SHAPE(8, 2, 3, 3), 0, 1);
        ck_assert_int_eq(tg_tape_trace(tape, true), 0);
        tg_tensor *px = tg_placeholder(tape, "x", dt, 4, SHAPE(2, 2, 9, 9));
        tg_tensor *y = tg_conv2d(px, w, NULL, 1, 1);
        const int per_channel[3] = {0, 2, 3}, per_image[3] = {1, 2, 3};
        tg_tensor *outs[2] = {tg_sum(y, 3, kind == 1 ? per_image : per_channel, false), y};
        ck_assert_int_eq(tg_tape_trace(tape, false), 0);
        tg_plan *plan = tg_compile(tape, kind == 2 ? 2 : 1, outs, NULL);
        ck_assert_msg(plan != NULL, "%s", tg_last_error());
        ck_assert_int_eq(joined_convs(plan), 0);
        tg_plan_free(plan);
    }
    tg_tape_free(tape);
}
END_TEST

int main(void)
{
    tg_test_plans_everywhere(); /* native kernels, and every thread on a convolution */
    Suite *s = suite_create("conv_sums");
    TCase *tc = tcase_create("conv_sums");
    tcase_set_timeout(tc, 600);
    tcase_add_loop_test(tc, sums_match_eager_and_the_plan_without, 0, (int)N_CASES);
    tcase_add_test(tc, other_sums_are_left);
    suite_add_tcase(s, tc);
    return tg_run_suite(s);
}
