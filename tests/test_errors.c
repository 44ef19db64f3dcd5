/* Wrong shapes, dtypes, axes and NULL arguments: every builder returns NULL (or a negative
 * status) with a message that names the op and the shapes, and nothing crashes. */
#include "testing.h"

#include <string.h>

#define EXPECT_ERROR(call, code, fragment)                                                     \
    do {                                                                                       \
        tg_clear_error();                                                                      \
        ck_assert_msg((call) == NULL, "%s should fail", #call);                                \
        ck_assert_int_eq(tg_last_error_code(), code);                                          \
        ck_assert_msg(strstr(tg_last_error(), fragment) != NULL, "%s: message '%s' lacks '%s'", \
                      #call, tg_last_error(), fragment);                                       \
    } while (0)

#define EXPECT_STATUS(call, code, fragment)                                                    \
    do {                                                                                       \
        tg_clear_error();                                                                      \
        ck_assert_int_eq((call), code);                                                        \
        ck_assert_msg(strstr(tg_last_error(), fragment) != NULL, "%s: message '%s' lacks '%s'", \
                      #call, tg_last_error(), fragment);                                       \
    } while (0)

static tg_tape *tape;
static tg_tensor *a23, *b4, *f64, *img;

static void setup(void)
{
    tape = tg_tape_new();
    a23 = tg_zeros(tape, TG_F32, 2, SHAPE(2, 3));
    b4 = tg_zeros(tape, TG_F32, 1, SHAPE(4));
    f64 = tg_zeros(tape, TG_F64, 2, SHAPE(2, 3));
    img = tg_zeros(tape, TG_F32, 4, SHAPE(1, 1, 4, 4));
}

static void teardown(void) { tg_tape_free(tape); }

START_TEST(shapes_that_do_not_fit)
{
    EXPECT_ERROR(tg_add(a23, b4), TG_ERR_SHAPE, "add: shapes [2, 3] and [4] do not broadcast");
    EXPECT_ERROR(tg_where(a23, a23, b4), TG_ERR_SHAPE, "where");
    EXPECT_ERROR(tg_matmul(a23, a23), TG_ERR_SHAPE, "matmul: shapes [2, 3] and [2, 3]");
    EXPECT_ERROR(tg_matmul(b4, a23), TG_ERR_SHAPE, "2 or more dimensions");
    tg_tensor *batch2 = tg_zeros(tape, TG_F32, 3, SHAPE(2, 3, 3));
    tg_tensor *batch3 = tg_zeros(tape, TG_F32, 3, SHAPE(3, 3, 3));
    EXPECT_ERROR(tg_matmul(batch2, batch3), TG_ERR_SHAPE, "batch axes do not broadcast");
    EXPECT_ERROR(tg_reshape(a23, 2, SHAPE(4, 2)), TG_ERR_SHAPE, "reshape: [2, 3] has 6");
    EXPECT_ERROR(tg_reshape(a23, 2, SHAPE(-1, 4)), TG_ERR_SHAPE, "cannot infer");
    EXPECT_ERROR(tg_reshape(a23, 2, SHAPE(-2, 3)), TG_ERR_SHAPE, "dimension 0 is -2");
    EXPECT_ERROR(tg_reshape(a23, 9, SHAPE(1, 1, 1, 1, 1, 1, 1, 2, 3)), TG_ERR_SHAPE, "9 dimensions");
    EXPECT_ERROR(tg_expand(a23, 2, SHAPE(4, 3)), TG_ERR_SHAPE, "cannot expand [2, 3] to [4, 3]");
    EXPECT_ERROR(tg_expand(a23, 1, SHAPE(3)), TG_ERR_SHAPE, "expand");
    EXPECT_ERROR(tg_slice(a23, SHAPE(0, 2), SHAPE(2, 4)), TG_ERR_ARG, "axis 1 of [2, 3]");
    EXPECT_ERROR(tg_slice(a23, SHAPE(1, 0), SHAPE(0, 3)), TG_ERR_ARG, "slice");
    EXPECT_ERROR(tg_pad(a23, SHAPE(0, -1), SHAPE(0, 0), 0), TG_ERR_ARG, "negative padding");
    EXPECT_ERROR(tg_im2col(a23, 2, 2, 1, 1), TG_ERR_SHAPE, "im2col: needs [N, C, H, W]");
    EXPECT_ERROR(tg_im2col(img, 5, 1, 1, 1), TG_ERR_SHAPE, "H >= 5");
    EXPECT_ERROR(tg_im2col(img, 2, 2, 0, 1), TG_ERR_ARG, "must be positive");
    tg_tensor *cols = tg_im2col(img, 2, 2, 2, 2);
    ck_assert_ptr_nonnull(cols);
    EXPECT_ERROR(tg_col2im(cols, 7, 4, 2, 2), TG_ERR_SHAPE, "does not come from a 7x4");
    EXPECT_ERROR(tg_col2im(img, 4, 4, 1, 1), TG_ERR_SHAPE, "col2im: needs");
    EXPECT_ERROR(tg_zeros(tape, TG_F32, 2, SHAPE(2, -3)), TG_ERR_SHAPE, "negative");
    EXPECT_ERROR(tg_item(a23) == tg_item(a23) ? a23 : NULL, TG_ERR_SHAPE, "6 elements");
    EXPECT_ERROR(tg_max(tg_zeros(tape, TG_F32, 1, SHAPE(0)), 0, NULL, false), TG_ERR_SHAPE,
                 "empty");
}
END_TEST

START_TEST(dtypes_that_differ)
{
    EXPECT_ERROR(tg_mul(a23, f64), TG_ERR_DTYPE, "mul: input 1 is f64 but input 0 is f32");
    EXPECT_ERROR(tg_matmul(tg_transpose(a23, 0, 1), f64), TG_ERR_DTYPE, "matmul");
    EXPECT_ERROR(tg_cast(a23, (tg_dtype)7), TG_ERR_DTYPE, "unknown dtype");
    EXPECT_ERROR(tg_zeros(tape, (tg_dtype)-1, 1, SHAPE(1)), TG_ERR_DTYPE, "tg_zeros");
}
END_TEST

START_TEST(axes_out_of_range)
{
    EXPECT_ERROR(tg_sum(a23, 1, (const int[]){2}, false), TG_ERR_AXIS, "sum: axis 2 is out of range for shape [2, 3]");
    EXPECT_ERROR(tg_max(a23, 1, (const int[]){-3}, false), TG_ERR_AXIS, "max: axis -3");
    EXPECT_ERROR(tg_sum(a23, 2, (const int[]){1, -1}, false), TG_ERR_AXIS, "repeated");
    EXPECT_ERROR(tg_sum(a23, 3, (const int[]){0, 1, 0}, false), TG_ERR_AXIS, "sum: 3 axes");
    EXPECT_ERROR(tg_permute(a23, (const int[]){0, 0}), TG_ERR_AXIS, "permute: entry 1 (0) is repeated");
    EXPECT_ERROR(tg_permute(a23, (const int[]){0, 5}), TG_ERR_AXIS, "out of range");
    EXPECT_ERROR(tg_transpose(a23, 0, 2), TG_ERR_AXIS, "transpose");
    EXPECT_ERROR(tg_flatten(a23, 3), TG_ERR_AXIS, "flatten");
    tg_clear_error();
    ck_assert_int_eq(tg_dim(a23, 2), -1);
    ck_assert_int_eq(tg_last_error_code(), TG_ERR_AXIS);
}
END_TEST

START_TEST(null_arguments)
{
    EXPECT_ERROR(tg_neg(NULL), TG_ERR_NULL, "neg: input 0 is NULL");
    EXPECT_ERROR(tg_add(a23, NULL), TG_ERR_NULL, "add: input 1 is NULL");
    EXPECT_ERROR(tg_where(NULL, a23, a23), TG_ERR_NULL, "where: input 0");
    EXPECT_ERROR(tg_sum(a23, 1, NULL, false), TG_ERR_NULL, "axes is NULL");
    EXPECT_ERROR(tg_reshape(a23, 2, NULL), TG_ERR_NULL, "shape is NULL");
    EXPECT_ERROR(tg_permute(a23, NULL), TG_ERR_NULL, "perm is NULL");
    EXPECT_ERROR(tg_slice(a23, NULL, SHAPE(1, 1)), TG_ERR_NULL, "start is NULL");
    EXPECT_ERROR(tg_pad(a23, SHAPE(0, 0), NULL, 0), TG_ERR_NULL, "after is NULL");
    EXPECT_ERROR(tg_zeros(NULL, TG_F32, 1, SHAPE(1)), TG_ERR_NULL, "tape is NULL");
    EXPECT_ERROR(tg_from_data(tape, TG_F32, 1, SHAPE(1), NULL), TG_ERR_NULL, "data is NULL");
    EXPECT_ERROR(tg_full(tape, TG_F32, 2, NULL, 0), TG_ERR_NULL, "shape is NULL");
    EXPECT_ERROR(tg_rand_normal(tape, NULL, TG_F32, 1, SHAPE(1), 0, 1), TG_ERR_NULL, "rng is NULL");
    EXPECT_ERROR(tg_mean(NULL, 0, NULL, false), TG_ERR_NULL, "NULL");
    EXPECT_ERROR(tg_mul_scalar(NULL, 2), TG_ERR_NULL, "mul_scalar");
    EXPECT_STATUS(tg_grad(NULL, 0, NULL, NULL, NULL), TG_ERR_NULL, "output is NULL");
    EXPECT_STATUS(tg_set_label(a23, NULL), TG_ERR_NULL, "label is NULL");
    EXPECT_STATUS(tg_tape_rewind(NULL, tg_tape_mark(tape)), TG_ERR_NULL, "tape is NULL");
    EXPECT_STATUS(tg_assign(NULL, a23), TG_ERR_NULL, "assign");
    /* Inspection of NULL is harmless. */
    ck_assert_int_eq(tg_ndim(NULL), -1);
    ck_assert_ptr_null(tg_data(NULL));
    ck_assert_str_eq(tg_op_name_of(NULL), "(null)");
    tg_tape_free(NULL);
}
END_TEST

START_TEST(an_earlier_failure_is_quoted)
{
    tg_clear_error();
    tg_tensor *bad = tg_add(a23, b4);
    tg_tensor *y = tg_exp(tg_mul(bad, a23));
    ck_assert_ptr_null(y);
    ck_assert_msg(strstr(tg_last_error(), "exp: input 0 is NULL") == tg_last_error(),
                  "%s", tg_last_error());
    ck_assert_ptr_nonnull(strstr(tg_last_error(), "add: shapes [2, 3] and [4] do not broadcast"));
}
END_TEST

START_TEST(grad_misuse)
{
    tg_tape *other = tg_tape_new();
    tg_tensor *x = tg_zeros(tape, TG_F32, 1, SHAPE(3));
    tg_tensor *y = tg_exp(x), *g[1];
    tg_tensor *elsewhere = tg_zeros(other, TG_F32, 1, SHAPE(3));
    EXPECT_STATUS(tg_grad(y, 1, &x, NULL, g), TG_ERR_SHAPE, "must have one element, it has shape [3]");
    EXPECT_STATUS(tg_grad(y, 1, &elsewhere, NULL, g), TG_ERR_TAPE, "different tape");
    EXPECT_STATUS(tg_grad(y, 1, &x, a23, g), TG_ERR_SHAPE, "grad: the seed is f32 [2, 3] but the output is f32 [3]");
    EXPECT_STATUS(tg_grad(y, 1, (tg_tensor *[]){NULL}, NULL, g), TG_ERR_NULL, "input 0 is NULL");
    EXPECT_ERROR(tg_add(x, elsewhere), TG_ERR_TAPE, "add: input 1 is on a different tape");
    tg_tape_free(other);
}
END_TEST

START_TEST(errors_are_per_thread_and_clearable)
{
    tg_clear_error();
    ck_assert_str_eq(tg_last_error(), "");
    ck_assert_int_eq(tg_last_error_code(), TG_OK);
    ck_assert_ptr_null(tg_neg(NULL));
    ck_assert_str_ne(tg_last_error(), "");
    tg_clear_error();
    ck_assert_str_eq(tg_last_error(), "");
    ck_assert_str_eq(tg_dtype_name(TG_F64), "f64");
}
END_TEST

int main(void)
{
    Suite *s = suite_create("errors");
    TCase *tc = tcase_create("errors");
    tcase_add_checked_fixture(tc, setup, teardown);
    tcase_add_test(tc, shapes_that_do_not_fit);
    tcase_add_test(tc, dtypes_that_differ);
    tcase_add_test(tc, axes_out_of_range);
    tcase_add_test(tc, null_arguments);
    tcase_add_test(tc, an_earlier_failure_is_quoted);
    tcase_add_test(tc, grad_misuse);
    tcase_add_test(tc, errors_are_per_thread_and_clearable);
    suite_add_tcase(s, tc);
    return tg_run_suite(s);
}
