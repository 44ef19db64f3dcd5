/* Compiled plans against eager execution: tracing, the runner, updates, inputs, errors. */
#include "testing.h"
#include "compile/graph.h"

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

int main(void)
{
    Suite *s = suite_create("compile");
    TCase *tc = tcase_create("compile");
    tcase_set_timeout(tc, 120);
    tcase_add_test(tc, compiled_matches_eager);
    suite_add_tcase(s, tc);
    return tg_run_suite(s);
}
