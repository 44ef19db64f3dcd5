/* Forward values of the primitives: against hand-computed results, against naive loops
 * (matmul at sizes that reach libxsmm's JIT kernels, sliding windows), and f32 against f64. */
#include "testing.h"

#include <libxsmm.h>
#include <math.h>
#include <stdio.h>
#include <string.h>

static void expect_values(tg_tensor *t, const double *want, int64_t n)
{
    ck_assert_ptr_nonnull(t);
    ck_assert_int_eq(tg_numel(t), n);
    for (int64_t i = 0; i < n; i++)
        ck_assert_msg(fabs(tg_get(t, i) - want[i]) < 1e-6, "element %lld: got %g, want %g",
                      (long long)i, tg_get(t, i), want[i]);
}

START_TEST(elementwise_and_broadcasting)
{
    tg_tape *tape = tg_tape_new();
    tg_tensor *a = tg_from_data(tape, TG_F32, 2, SHAPE(2, 3), (const float[]){1, 2, 3, 4, 5, 6});
    tg_tensor *row = tg_from_data(tape, TG_F32, 1, SHAPE(3), (const float[]){10, 20, 30});
    tg_tensor *col = tg_from_data(tape, TG_F32, 2, SHAPE(2, 1), (const float[]){-1, 1});
    expect_values(tg_add(a, row), (const double[]){11, 22, 33, 14, 25, 36}, 6);
    expect_values(tg_sub(a, col), (const double[]){2, 3, 4, 3, 4, 5}, 6);
    expect_values(tg_mul(row, col), (const double[]){-10, -20, -30, 10, 20, 30}, 6);
    expect_values(tg_div(a, tg_scalar(tape, TG_F32, 2)), (const double[]){.5, 1, 1.5, 2, 2.5, 3}, 6);
    expect_values(tg_maximum(a, tg_scalar(tape, TG_F32, 3.5)), (const double[]){3.5, 3.5, 3.5, 4, 5, 6}, 6);
    expect_values(tg_lt(a, tg_scalar(tape, TG_F32, 3)), (const double[]){1, 1, 0, 0, 0, 0}, 6);
    expect_values(tg_eq(a, tg_scalar(tape, TG_F32, 5)), (const double[]){0, 0, 0, 0, 1, 0}, 6);
    expect_values(tg_where(col, a, row), (const double[]){1, 2, 3, 4, 5, 6}, 6);
    expect_values(tg_where(tg_lt(col, tg_scalar(tape, TG_F32, 0)), row, a),
                  (const double[]){10, 20, 30, 4, 5, 6}, 6);
    expect_values(tg_neg(col), (const double[]){1, -1}, 2);
    expect_values(tg_exp(tg_scalar(tape, TG_F32, 0)), (const double[]){1}, 1);
    expect_values(tg_log(row), (const double[]){log(10), log(20), log(30)}, 3);
    expect_values(tg_sqrt(row), (const double[]){sqrt(10), sqrt(20), sqrt(30)}, 3);
    expect_values(tg_recip(row), (const double[]){.1, .05, 1.0 / 30}, 3);
    /* Shapes of broadcasts, including a size-0 axis. */
    tg_tensor *e = tg_zeros(tape, TG_F64, 3, SHAPE(4, 1, 5));
    tg_tensor *f = tg_zeros(tape, TG_F64, 2, SHAPE(3, 1));
    tg_tensor *ef = tg_add(e, f);
    ck_assert_int_eq(tg_ndim(ef), 3);
    ck_assert_int_eq(tg_dim(ef, 0), 4);
    ck_assert_int_eq(tg_dim(ef, 1), 3);
    ck_assert_int_eq(tg_dim(ef, -1), 5);
    tg_tensor *empty = tg_add(tg_zeros(tape, TG_F32, 2, SHAPE(0, 3)), row);
    ck_assert_int_eq(tg_numel(empty), 0);
    /* NaN propagates through max and maximum. */
    tg_tensor *nan = tg_from_data(tape, TG_F64, 1, SHAPE(3), (const double[]){1, NAN, 2});
    ck_assert(isnan(tg_item(tg_max(nan, 0, NULL, false))));
    ck_assert(isnan(tg_get(tg_maximum(nan, tg_scalar(tape, TG_F64, 0)), 1)));
    tg_tape_free(tape);
}
END_TEST

START_TEST(reductions_over_axis_sets)
{
    tg_tape *tape = tg_tape_new();
    double data[24];
    for (int i = 0; i < 24; i++)
        data[i] = i;
    tg_tensor *x = tg_from_data(tape, TG_F64, 3, SHAPE(2, 3, 4), data);
    /* Naive references for every subset of axes. */
    for (unsigned mask = 0; mask < 8; mask++) {
        int axes[3], n = 0;
        for (int a = 0; a < 3; a++)
            if (mask >> a & 1)
                axes[n++] = a;
        if (n == 0)
            continue;
        tg_tensor *s = tg_sum(x, n, axes, true), *m = tg_max(x, n, axes, true);
        ck_assert_ptr_nonnull(s);
        for (int i = 0; i < 2; i++)
            for (int j = 0; j < 3; j++)
                for (int k = 0; k < 4; k++) {
                    int oi = mask & 1 ? 0 : i, oj = mask & 2 ? 0 : j, ok = mask & 4 ? 0 : k;
                    double want = 0, best = -INFINITY;
                    for (int a = 0; a < 2; a++)
                        for (int b = 0; b < 3; b++)
                            for (int c = 0; c < 4; c++) {
                                if ((mask & 1 ? 0 : a - i) || (mask & 2 ? 0 : b - j) ||
                                    (mask & 4 ? 0 : c - k))
                                    continue;
                                want += data[a * 12 + b * 4 + c];
                                best = fmax(best, data[a * 12 + b * 4 + c]);
                            }
                    int64_t at = ((int64_t)oi * tg_dim(s, 1) + oj) * tg_dim(s, 2) + ok;
                    ck_assert_double_eq(tg_get(s, at), want);
                    ck_assert_double_eq(tg_get(m, at), best);
                }
    }
    tg_tensor *all = tg_sum(x, 0, NULL, false);
    ck_assert_int_eq(tg_ndim(all), 0);
    ck_assert_double_eq(tg_item(all), 276);
    tg_tensor *mean = tg_mean(x, 1, (const int[]){-1}, false);
    ck_assert_int_eq(tg_ndim(mean), 2);
    ck_assert_double_eq(tg_get(mean, 0), 1.5);
    tg_tape_free(tape);
}
END_TEST

START_TEST(movement)
{
    tg_tape *tape = tg_tape_new();
    tg_tensor *x = tg_from_data(tape, TG_F32, 2, SHAPE(2, 3), (const float[]){0, 1, 2, 3, 4, 5});
    expect_values(tg_transpose(x, 0, 1), (const double[]){0, 3, 1, 4, 2, 5}, 6);
    tg_tensor *r = tg_reshape(x, 2, SHAPE(-1, 2));
    ck_assert_int_eq(tg_dim(r, 0), 3);
    ck_assert_ptr_eq(tg_data(r), tg_data(x)); /* a view: no copy */
    expect_values(tg_expand(tg_slice(x, SHAPE(0, 1), SHAPE(2, 2)), 3, SHAPE(2, 2, 1)),
                  (const double[]){1, 4, 1, 4}, 4);
    expect_values(tg_pad(x, SHAPE(0, 1), SHAPE(1, 0), -1),
                  (const double[]){-1, 0, 1, 2, -1, 3, 4, 5, -1, -1, -1, -1}, 12);
    tg_tensor *p3 = tg_permute(tg_reshape(x, 3, SHAPE(1, 2, 3)), (const int[]){2, 0, 1});
    ck_assert_int_eq(tg_dim(p3, 0), 3);
    expect_values(p3, (const double[]){0, 3, 1, 4, 2, 5}, 6);
    expect_values(tg_flatten(tg_reshape(x, 3, SHAPE(2, 3, 1)), 1), (const double[]){0, 1, 2, 3, 4, 5}, 6);
    /* Six dimensions and more. */
    tg_tensor *six = tg_zeros(tape, TG_F64, 6, SHAPE(1, 2, 1, 3, 1, 2));
    tg_tensor *seven = tg_reshape(six, 7, SHAPE(1, 1, 2, 1, 3, 1, 2));
    ck_assert_ptr_nonnull(tg_permute(seven, (const int[]){6, 5, 4, 3, 2, 1, 0}));
    tg_tape_free(tape);
}
END_TEST

static void naive_matmul(int64_t m, int64_t n, int64_t k, const double *a, const double *b,
                         double *c)
{
    for (int64_t i = 0; i < m; i++)
        for (int64_t j = 0; j < n; j++) {
            double s = 0;
            for (int64_t p = 0; p < k; p++)
                s += a[i * k + p] * b[p * n + j];
            c[i * n + j] = s;
        }
}

static void check_matmuls(void)
{
    /* Small, odd, sizes of the convolutions in the MNIST models, and sizes that the kernel
     * cuts into panels of B (matmul.c: by columns and by rows, with shorter last panels; in
     * two blocks of columns, 100 x 3136 and 33 x 1100, with a shorter second block; in bands
     * of rows, 70 x 600). */
    static const int64_t sizes[][3] = {{1, 1, 1},        {2, 3, 4},     {7, 5, 3},
                                       {32, 784, 9},     {64, 196, 288}, {128, 10, 128},
                                       {100, 3136, 17},  {33, 1100, 70}, {20, 24, 3100},
                                       {70, 600, 300}};
    tg_tape *tape = tg_tape_new();
    tg_rng rng;
    tg_rng_seed(&rng, 11);
    for (size_t s = 0; s < sizeof sizes / sizeof sizes[0]; s++) {
        int64_t m = sizes[s][0], n = sizes[s][1], k = sizes[s][2];
        for (int dt = 0; dt < 2; dt++) {
            tg_dtype type = dt ? TG_F64 : TG_F32;
            tg_tensor *a = tg_rand_normal(tape, &rng, type, 3, SHAPE(2, m, k), 0, 1);
            tg_tensor *b = tg_rand_normal(tape, &rng, type, 2, SHAPE(k, n), 0, 1);
            tg_tensor *c = tg_matmul(a, b);
            ck_assert_ptr_nonnull(c);
            tg_tensor *a64 = tg_cast(a, TG_F64), *b64 = tg_cast(b, TG_F64);
            double *want = malloc((size_t)(m * n) * sizeof *want);
            for (int batch = 0; batch < 2; batch++) {
                naive_matmul(m, n, k, (const double *)tg_data(a64) + batch * m * k,
                             tg_data(b64), want);
                for (int64_t i = 0; i < m * n; i++) {
                    double got = tg_get(c, batch * m * n + i);
                    double tol = dt ? 1e-10 * (double)k : 1e-4 * sqrt((double)k);
                    ck_assert_msg(fabs(got - want[i]) <= tol, "%lldx%lldx%lld %s: %g vs %g",
                                  (long long)m, (long long)n, (long long)k,
                                  tg_dtype_name(type), got, want[i]);
                }
            }
            free(want);
        }
    }
    tg_tape_free(tape);
}

START_TEST(matmul_matches_naive)
{
    check_matmuls();
}
END_TEST

/* Without JIT (libxsmm's generic target) every product is matmul.c's loop, panels and all:
 * the same sums. Each test runs in its own process, so the target stays off in this one. */
START_TEST(matmul_loop_fallback_matches_naive)
{
    libxsmm_init(); /* which would otherwise set the target from the CPU later */
    libxsmm_set_target_arch("generic");
    float alpha = 1, beta = 0;
    ck_assert_ptr_null(libxsmm_smmdispatch(7, 5, 3, NULL, NULL, NULL, &alpha, &beta, NULL,
                                           NULL));
    check_matmuls();
}
END_TEST

START_TEST(windows_are_adjoint)
{
    tg_tape *tape = tg_tape_new();
    tg_rng rng;
    tg_rng_seed(&rng, 2);
    /* im2col against direct indexing, then <im2col(x), y> = <x, col2im(y)>. */
    int64_t N = 2, C = 3, H = 7, W = 6, KH = 3, KW = 2, SH = 2, SW = 3;
    tg_tensor *x = tg_rand_normal(tape, &rng, TG_F64, 4, SHAPE(N, C, H, W), 0, 1);
    tg_tensor *cols = tg_im2col(x, KH, KW, SH, SW);
    ck_assert_ptr_nonnull(cols);
    int64_t OH = tg_dim(cols, 4), OW = tg_dim(cols, 5);
    ck_assert_int_eq(OH, 3);
    ck_assert_int_eq(OW, 2);
    const double *xd = tg_data(x), *cd = tg_data(cols);
    for (int64_t n = 0; n < N; n++)
        for (int64_t c = 0; c < C; c++)
            for (int64_t i = 0; i < KH; i++)
                for (int64_t j = 0; j < KW; j++)
                    for (int64_t y = 0; y < OH; y++)
                        for (int64_t z = 0; z < OW; z++)
                            ck_assert_double_eq(
                                cd[((((n * C + c) * KH + i) * KW + j) * OH + y) * OW + z],
                                xd[((n * C + c) * H + y * SH + i) * W + z * SW + j]);
    tg_tensor *y = tg_rand_normal(tape, &rng, TG_F64, 6, tg_shape(cols), 0, 1);
    tg_tensor *back = tg_col2im(y, H, W, SH, SW);
    double lhs = tg_item(tg_sum(tg_mul(cols, y), 0, NULL, false));
    double rhs = tg_item(tg_sum(tg_mul(x, back), 0, NULL, false));
    ck_assert_double_eq_tol(lhs, rhs, 1e-10);
    tg_tape_free(tape);
}
END_TEST

/* Every kernel has an f32 and an f64 path: they must agree. */
START_TEST(f32_matches_f64)
{
    tg_tape *tape = tg_tape_new();
    tg_rng rng;
    tg_rng_seed(&rng, 9);
    tg_tensor *a64 = tg_rand_uniform(tape, &rng, TG_F64, 4, SHAPE(2, 3, 4, 5), 0.5, 2);
    tg_tensor *b64 = tg_rand_uniform(tape, &rng, TG_F64, 2, SHAPE(4, 1), 0.5, 2);
    tg_tensor *a32 = tg_cast(a64, TG_F32), *b32 = tg_cast(b64, TG_F32);
    tg_tensor *(*unary[])(tg_tensor *) = {tg_neg, tg_exp, tg_log, tg_sqrt, tg_recip};
    tg_tensor *(*binary[])(tg_tensor *, tg_tensor *) = {tg_add, tg_sub, tg_mul, tg_div,
                                                         tg_maximum, tg_lt, tg_eq, tg_matmul};
    tg_tensor *pairs[64][2];
    int n = 0;
    for (size_t i = 0; i < sizeof unary / sizeof *unary; i++) {
        pairs[n][0] = unary[i](a32);
        pairs[n++][1] = unary[i](a64);
    }
    for (size_t i = 0; i < sizeof binary / sizeof *binary; i++) {
        tg_tensor *rhs32 = binary[i] == tg_matmul ? tg_reshape(b32, 2, SHAPE(1, 4)) : b32;
        tg_tensor *rhs64 = binary[i] == tg_matmul ? tg_reshape(b64, 2, SHAPE(1, 4)) : b64;
        rhs32 = binary[i] == tg_matmul ? tg_expand(rhs32, 2, SHAPE(5, 4)) : rhs32;
        rhs64 = binary[i] == tg_matmul ? tg_expand(rhs64, 2, SHAPE(5, 4)) : rhs64;
        pairs[n][0] = binary[i](a32, rhs32);
        pairs[n++][1] = binary[i](a64, rhs64);
    }
    const int axes[2] = {0, 2};
    pairs[n][0] = tg_sum(a32, 2, axes, false), pairs[n++][1] = tg_sum(a64, 2, axes, false);
    pairs[n][0] = tg_max(a32, 2, axes, true), pairs[n++][1] = tg_max(a64, 2, axes, true);
    pairs[n][0] = tg_where(tg_lt(a32, b32), a32, b32);
    pairs[n++][1] = tg_where(tg_lt(a64, b64), a64, b64);
    const int perm[4] = {3, 1, 0, 2};
    pairs[n][0] = tg_permute(a32, perm), pairs[n++][1] = tg_permute(a64, perm);
    pairs[n][0] = tg_expand(b32, 3, SHAPE(2, 4, 3)), pairs[n++][1] = tg_expand(b64, 3, SHAPE(2, 4, 3));
    pairs[n][0] = tg_slice(a32, SHAPE(1, 0, 1, 2), SHAPE(2, 3, 3, 5));
    pairs[n++][1] = tg_slice(a64, SHAPE(1, 0, 1, 2), SHAPE(2, 3, 3, 5));
    pairs[n][0] = tg_pad(a32, SHAPE(0, 1, 0, 2), SHAPE(1, 0, 2, 0), 3);
    pairs[n++][1] = tg_pad(a64, SHAPE(0, 1, 0, 2), SHAPE(1, 0, 2, 0), 3);
    pairs[n][0] = tg_im2col(a32, 2, 3, 1, 2), pairs[n++][1] = tg_im2col(a64, 2, 3, 1, 2);
    pairs[n][0] = tg_col2im(pairs[n - 1][0], 4, 5, 1, 2);
    pairs[n][1] = tg_col2im(pairs[n - 1][1], 4, 5, 1, 2);
    n++;
    for (int p = 0; p < n; p++) {
        ck_assert_msg(pairs[p][0] != NULL, "pair %d: %s", p, tg_last_error());
        ck_assert_ptr_nonnull(pairs[p][1]);
        ck_assert_int_eq(tg_dtype_of(pairs[p][0]), TG_F32);
        ck_assert_int_eq(tg_numel(pairs[p][0]), tg_numel(pairs[p][1]));
        for (int64_t i = 0; i < tg_numel(pairs[p][0]); i++) {
            double u = tg_get(pairs[p][0], i), v = tg_get(pairs[p][1], i);
            ck_assert_msg(fabs(u - v) <= 1e-5 * fmax(1, fabs(v)), "%s element %lld: %g vs %g",
                          tg_op_name_of(pairs[p][1]), (long long)i, u, v);
        }
    }
    tg_tape_free(tape);
}
END_TEST

int main(void)
{
    Suite *s = suite_create("primitives");
    TCase *tc = tcase_create("forward");
    tcase_add_test(tc, elementwise_and_broadcasting);
    tcase_add_test(tc, reductions_over_axis_sets);
    tcase_add_test(tc, movement);
    tcase_add_test(tc, matmul_matches_naive);
    tcase_add_test(tc, matmul_loop_fallback_matches_naive);
    tcase_add_test(tc, windows_are_adjoint);
    tcase_add_test(tc, f32_matches_f64);
    suite_add_tcase(s, tc);
    return tg_run_suite(s);
}
