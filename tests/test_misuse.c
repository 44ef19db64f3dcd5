/* Misuse of every public function: NULL for each pointer argument, wrong dtypes and shapes,
 * out-of-range axes, indices and sizes, mismatched parameter lists and tensors dropped by a
 * rewind. Each failing call returns its documented failure value (NULL, negative, NaN, a
 * sentinel), sets an error code and a non-empty message, and nothing crashes. Functions
 * documented as accepting NULL do exactly what their header says.
 *
 * every_public_function_is_exercised reads the public headers (from $TG_INCLUDE_DIR) and
 * checks that each declared function is in the table `exercised` below, so a new public
 * function without a misuse test fails this suite. */
#include "testing.h"
#include "scratch.h"

#include "tapegrad_io.h"
#include "tapegrad_nn.h"

#include <math.h>
#include <stdio.h>
#include <string.h>

/* ---- expectations ------------------------------------------------------------------------- */
#define ANY_ERROR 1 /* any TG_ERR_* code (never a real tg_status) */

static void check_error_set(const char *call, int code, int line)
{
    tg_status got = tg_last_error_code();
    const char *msg = tg_last_error();
    ck_assert_msg(got != TG_OK, "line %d: %s failed without an error code", line, call);
    ck_assert_msg(msg != NULL && msg[0] != '\0', "line %d: %s failed with an empty message",
                  line, call);
    if (code != ANY_ERROR)
        ck_assert_msg(got == (tg_status)code, "line %d: %s gave code %d, expected %d ('%s')",
                      line, call, (int)got, code, msg);
}

/* A pointer-returning call that must fail with NULL. */
#define FAILS_NULL(call, code)                                                                \
    do {                                                                                      \
        tg_clear_error();                                                                     \
        const void *r_ = (call);                                                              \
        ck_assert_msg(r_ == NULL, "line %d: %s should return NULL", __LINE__, #call);         \
        check_error_set(#call, code, __LINE__);                                               \
    } while (0)

/* An integer-returning call that must fail with a negative value. */
#define FAILS_NEG(call, code)                                                                 \
    do {                                                                                      \
        tg_clear_error();                                                                     \
        long long r_ = (long long)(call);                                                     \
        ck_assert_msg(r_ < 0, "line %d: %s returned %lld, expected < 0", __LINE__, #call, r_); \
        check_error_set(#call, code, __LINE__);                                               \
    } while (0)

/* An integer-returning call that must fail with exactly value (e.g. -1, or 0 for a size). */
#define FAILS_WITH(call, value, code)                                                         \
    do {                                                                                      \
        tg_clear_error();                                                                     \
        long long r_ = (long long)(call);                                                     \
        ck_assert_msg(r_ == (long long)(value), "line %d: %s returned %lld, expected %lld",   \
                      __LINE__, #call, r_, (long long)(value));                               \
        check_error_set(#call, code, __LINE__);                                               \
    } while (0)

/* A double-returning call that must fail with NaN. */
#define FAILS_NAN(call, code)                                                                 \
    do {                                                                                      \
        tg_clear_error();                                                                     \
        double r_ = (call);                                                                   \
        ck_assert_msg(isnan(r_), "line %d: %s returned %g, expected NaN", __LINE__, #call, r_); \
        check_error_set(#call, code, __LINE__);                                               \
    } while (0)

/* A call that must succeed (for the documented NULL-is-fine cases and for setup). */
#define SUCCEEDS(call)                                                                        \
    do {                                                                                      \
        tg_clear_error();                                                                     \
        long long r_ = (long long)(call);                                                     \
        ck_assert_msg(r_ >= 0, "line %d: %s failed: %s", __LINE__, #call, tg_last_error());   \
        ck_assert_int_eq(tg_last_error_code(), TG_OK);                                        \
    } while (0)

/* The error message names the fragment. */
#define MESSAGE_HAS(fragment)                                                                 \
    ck_assert_msg(strstr(tg_last_error(), fragment) != NULL, "line %d: '%s' lacks '%s'",      \
                  __LINE__, tg_last_error(), fragment)

/* ---- fixture ------------------------------------------------------------------------------ */
static tg_tape *tape;
/* f32 [2, 3], f64 [2, 3], f32 [4], f32 [] and f32 [1, 1, 4, 4], all ones (the scalar is 2) */
static tg_tensor *f32_23, *f64_23, *f32_4, *f32_s, *img;

static void setup(void)
{
    tape = tg_tape_new();
    f32_23 = tg_full(tape, TG_F32, 2, SHAPE(2, 3), 1.0);
    f64_23 = tg_full(tape, TG_F64, 2, SHAPE(2, 3), 1.0);
    f32_4 = tg_full(tape, TG_F32, 1, SHAPE(4), 1.0);
    f32_s = tg_scalar(tape, TG_F32, 2.0);
    img = tg_full(tape, TG_F32, 4, SHAPE(1, 1, 4, 4), 1.0);
    ck_assert_ptr_nonnull(img);
}

static void teardown(void) { tg_tape_free(tape); }

/* ---- errors ------------------------------------------------------------------------------- */
START_TEST(errors_state)
{
    tg_clear_error();
    ck_assert_str_eq(tg_last_error(), "");
    ck_assert_int_eq(tg_last_error_code(), TG_OK);
    FAILS_NULL(tg_neg(NULL), TG_ERR_NULL);
    tg_clear_error();
    ck_assert_str_eq(tg_last_error(), "");
    ck_assert_int_eq(tg_last_error_code(), TG_OK);
    ck_assert_str_eq(tg_dtype_name(TG_F32), "f32");
    /* The library's version is the one the headers name. */
    char version[32];
    snprintf(version, sizeof version, "%d.%d.%d", TG_VERSION_MAJOR, TG_VERSION_MINOR,
             TG_VERSION_PATCH);
    ck_assert_str_eq(tg_version(), version);
    /* An unknown dtype has a name too (never NULL). */
    ck_assert_ptr_nonnull(tg_dtype_name((tg_dtype)7));
    ck_assert_ptr_nonnull(tg_dtype_name((tg_dtype)-1));
}
END_TEST

/* ---- tapes -------------------------------------------------------------------------------- */
START_TEST(tape_misuse)
{
    tg_tape_free(NULL); /* documented as fine */
    tg_tape *t = tg_tape_new();
    ck_assert_ptr_nonnull(t);

    /* Queries of a NULL tape are harmless, like the tensor inspection helpers: they answer
     * as for an empty tape. */
    tg_mark m = tg_tape_mark(NULL);
    ck_assert(m.nodes == 0 && m.chunk == 0 && m.used == 0);
    ck_assert_uint_eq(tg_tape_size(NULL), 0);
    ck_assert_uint_eq(tg_tape_bytes(NULL), 0);
    ck_assert_str_eq(tg_tape_scope(NULL), "");
    ck_assert(!tg_tape_checks_finite(NULL));

    FAILS_NEG(tg_tape_rewind(NULL, tg_tape_mark(t)), TG_ERR_NULL);
    /* A mark from a bigger tape is past this tape's end. */
    tg_mark far = tg_tape_mark(tape);
    FAILS_NEG(tg_tape_rewind(t, far), TG_ERR_TAPE);
    tg_mark bogus = {.nodes = 0, .chunk = 99, .used = 0};
    FAILS_NEG(tg_tape_rewind(t, bogus), ANY_ERROR);

    FAILS_NEG(tg_tape_set_scope(NULL, "x"), TG_ERR_NULL);
    SUCCEEDS(tg_tape_set_scope(t, NULL)); /* NULL means none */
    ck_assert_str_eq(tg_tape_scope(t), "");
    FAILS_NEG(tg_tape_set_check_finite(NULL, true), TG_ERR_NULL);
    /* No node: NULL (documented for past the end; a NULL tape has none either). */
    ck_assert_ptr_null(tg_tape_node(NULL, 0));
    ck_assert_ptr_null(tg_tape_node(t, 0));
    ck_assert_ptr_null(tg_tape_node(tape, (size_t)-1));
    tg_tape_free(t);
}
END_TEST

/* ---- threads ------------------------------------------------------------------------------ */
START_TEST(threads_misuse)
{
    int before = tg_num_threads();
    ck_assert_int_ge(before, 1);
    FAILS_NEG(tg_set_num_threads(0), TG_ERR_ARG);
    FAILS_NEG(tg_set_num_threads(-3), TG_ERR_ARG);
    FAILS_NEG(tg_set_num_threads(1 << 30), TG_ERR_ARG);
    ck_assert_int_eq(tg_num_threads(), before);
}
END_TEST

/* ---- inspection --------------------------------------------------------------------------- */
START_TEST(inspection_misuse)
{
    /* Inspecting NULL is harmless (tg_ndim(NULL) is -1, tg_data(NULL) is NULL, and the
     * others follow suit) so a forward pass can be checked once at the end. */
    ck_assert_int_eq(tg_ndim(NULL), -1);
    ck_assert_ptr_null(tg_data(NULL));
    ck_assert_ptr_null(tg_tape_of(NULL));
    ck_assert_ptr_null(tg_shape(NULL));
    ck_assert_ptr_null(tg_data_const(NULL));
    ck_assert_int_eq(tg_numel(NULL), -1);
    ck_assert_str_eq(tg_op_name_of(NULL), "(null)");
    ck_assert_str_eq(tg_label(NULL), "");
    tg_dtype dt = tg_dtype_of(NULL);
    ck_assert(dt == TG_F32 || dt == TG_F64);
    /* tg_dim reports its -1 as an error, NULL tensor or axis out of range. */
    FAILS_WITH(tg_dim(NULL, 0), -1, TG_ERR_NULL);
    FAILS_WITH(tg_dim(f32_23, 2), -1, TG_ERR_AXIS);
    FAILS_WITH(tg_dim(f32_23, -3), -1, TG_ERR_AXIS);
    FAILS_WITH(tg_dim(f32_s, 0), -1, TG_ERR_AXIS);
    FAILS_NAN(tg_get(NULL, 0), TG_ERR_NULL);
    FAILS_NAN(tg_get(f32_23, -1), TG_ERR_ARG);
    FAILS_NAN(tg_get(f32_23, 6), TG_ERR_ARG);
    FAILS_NAN(tg_get(f32_23, INT64_MIN), TG_ERR_ARG);
    FAILS_NAN(tg_item(NULL), TG_ERR_NULL);
    FAILS_NAN(tg_item(f32_23), TG_ERR_SHAPE);
    FAILS_NEG(tg_set_label(NULL, "x"), TG_ERR_NULL);
    FAILS_NEG(tg_set_label(f32_23, NULL), TG_ERR_NULL);
    ck_assert_str_eq(tg_label(f32_23), "");
}
END_TEST

/* ---- leaves ------------------------------------------------------------------------------- */
START_TEST(leaves_misuse)
{
    const float one[6] = {1, 1, 1, 1, 1, 1};
    /* NULL pointers, one at a time. */
    FAILS_NULL(tg_zeros(NULL, TG_F32, 1, SHAPE(2)), TG_ERR_NULL);
    FAILS_NULL(tg_zeros(tape, TG_F32, 1, NULL), TG_ERR_NULL);
    FAILS_NULL(tg_full(NULL, TG_F32, 1, SHAPE(2), 0), TG_ERR_NULL);
    FAILS_NULL(tg_full(tape, TG_F32, 1, NULL, 0), TG_ERR_NULL);
    FAILS_NULL(tg_scalar(NULL, TG_F32, 1), TG_ERR_NULL);
    FAILS_NULL(tg_from_data(NULL, TG_F32, 1, SHAPE(2), one), TG_ERR_NULL);
    FAILS_NULL(tg_from_data(tape, TG_F32, 1, NULL, one), TG_ERR_NULL);
    FAILS_NULL(tg_from_data(tape, TG_F32, 1, SHAPE(2), NULL), TG_ERR_NULL);
    FAILS_NULL(tg_arange(NULL, TG_F32, 3), TG_ERR_NULL);
    /* Unknown dtypes. */
    FAILS_NULL(tg_zeros(tape, (tg_dtype)2, 1, SHAPE(2)), TG_ERR_DTYPE);
    FAILS_NULL(tg_full(tape, (tg_dtype)-1, 1, SHAPE(2), 0), TG_ERR_DTYPE);
    FAILS_NULL(tg_scalar(tape, (tg_dtype)9, 1), TG_ERR_DTYPE);
    FAILS_NULL(tg_from_data(tape, (tg_dtype)5, 1, SHAPE(2), one), TG_ERR_DTYPE);
    FAILS_NULL(tg_arange(tape, (tg_dtype)3, 3), TG_ERR_DTYPE);
    /* Ranks and sizes out of range. */
    FAILS_NULL(tg_zeros(tape, TG_F32, -1, SHAPE(2)), ANY_ERROR);
    FAILS_NULL(tg_zeros(tape, TG_F32, TG_MAX_DIMS + 1, SHAPE(1, 1, 1, 1, 1, 1, 1, 1, 1)),
               TG_ERR_SHAPE);
    FAILS_NULL(tg_full(tape, TG_F32, 2, SHAPE(2, -1), 0), TG_ERR_SHAPE);
    FAILS_NULL(tg_from_data(tape, TG_F32, 1, SHAPE(-6), one), TG_ERR_SHAPE);
    FAILS_NULL(tg_zeros(tape, TG_F32, 3, SHAPE(INT64_MAX, INT64_MAX, 4)), ANY_ERROR);
    FAILS_NULL(tg_arange(tape, TG_F32, -1), ANY_ERROR);
    FAILS_NULL(tg_arange(tape, TG_F64, INT64_MIN), ANY_ERROR);
}
END_TEST

/* ---- random numbers ----------------------------------------------------------------------- */
START_TEST(rng_misuse)
{
    tg_rng rng;
    tg_rng_seed(&rng, 1);
    tg_clear_error();
    tg_rng_seed(NULL, 1); /* nothing to seed: an error, no crash */
    check_error_set("tg_rng_seed(NULL, 1)", TG_ERR_NULL, __LINE__);
    FAILS_WITH(tg_rng_next(NULL), 0, TG_ERR_NULL);
    FAILS_NAN(tg_rng_uniform(NULL), TG_ERR_NULL);
    FAILS_NAN(tg_rng_normal(NULL), TG_ERR_NULL);
    FAILS_WITH(tg_rng_below(NULL, 5), 0, TG_ERR_NULL);
    FAILS_WITH(tg_rng_below(&rng, 0), 0, TG_ERR_ARG);

    FAILS_NULL(tg_rand_uniform(NULL, &rng, TG_F32, 1, SHAPE(2), 0, 1), TG_ERR_NULL);
    FAILS_NULL(tg_rand_uniform(tape, NULL, TG_F32, 1, SHAPE(2), 0, 1), TG_ERR_NULL);
    FAILS_NULL(tg_rand_uniform(tape, &rng, TG_F32, 1, NULL, 0, 1), TG_ERR_NULL);
    FAILS_NULL(tg_rand_uniform(tape, &rng, (tg_dtype)4, 1, SHAPE(2), 0, 1), TG_ERR_DTYPE);
    FAILS_NULL(tg_rand_uniform(tape, &rng, TG_F32, 1, SHAPE(-2), 0, 1), TG_ERR_SHAPE);
    FAILS_NULL(tg_rand_normal(NULL, &rng, TG_F32, 1, SHAPE(2), 0, 1), TG_ERR_NULL);
    FAILS_NULL(tg_rand_normal(tape, NULL, TG_F32, 1, SHAPE(2), 0, 1), TG_ERR_NULL);
    FAILS_NULL(tg_rand_normal(tape, &rng, TG_F32, 1, NULL, 0, 1), TG_ERR_NULL);
    FAILS_NULL(tg_rand_normal(tape, &rng, (tg_dtype)4, 1, SHAPE(2), 0, 1), TG_ERR_DTYPE);
    FAILS_NULL(tg_rand_normal(tape, &rng, TG_F64, 2, SHAPE(2, -2), 0, 1), TG_ERR_SHAPE);
}
END_TEST

/* ---- primitives --------------------------------------------------------------------------- */
typedef tg_tensor *(*unary_fn)(tg_tensor *);
typedef tg_tensor *(*binary_fn)(tg_tensor *, tg_tensor *);

START_TEST(unary_misuse)
{
    static const unary_fn fns[] = {tg_neg, tg_exp, tg_log, tg_sqrt, tg_recip, tg_detach,
                                   tg_square, tg_relu};
    for (size_t i = 0; i < sizeof fns / sizeof fns[0]; i++) {
        FAILS_NULL(fns[i](NULL), TG_ERR_NULL);
        MESSAGE_HAS("NULL");
    }
    FAILS_NULL(tg_add_scalar(NULL, 1), TG_ERR_NULL);
    FAILS_NULL(tg_mul_scalar(NULL, 2), TG_ERR_NULL);
    FAILS_NULL(tg_cast(NULL, TG_F64), TG_ERR_NULL);
    FAILS_NULL(tg_cast(f32_23, (tg_dtype)2), TG_ERR_DTYPE);
    FAILS_NULL(tg_cast(f32_23, (tg_dtype)-1), TG_ERR_DTYPE);
}
END_TEST

START_TEST(binary_misuse)
{
    static const binary_fn fns[] = {tg_add, tg_sub, tg_mul, tg_div, tg_maximum,
                                    tg_lt,  tg_eq,  tg_gt,  tg_matmul};
    tg_tape *other = tg_tape_new();
    tg_tensor *elsewhere = tg_full(other, TG_F32, 2, SHAPE(2, 3), 1);
    tg_tensor *f32_32 = tg_full(tape, TG_F32, 2, SHAPE(3, 2), 1);
    for (size_t i = 0; i < sizeof fns / sizeof fns[0]; i++) {
        bool mm = fns[i] == tg_matmul;
        FAILS_NULL(fns[i](NULL, f32_23), TG_ERR_NULL);
        FAILS_NULL(fns[i](f32_23, NULL), TG_ERR_NULL);
        FAILS_NULL(fns[i](NULL, NULL), TG_ERR_NULL);
        FAILS_NULL(fns[i](f32_23, mm ? tg_transpose(f64_23, 0, 1) : f64_23), TG_ERR_DTYPE);
        FAILS_NULL(fns[i](f64_23, mm ? f32_32 : f32_23), TG_ERR_DTYPE);
        FAILS_NULL(fns[i](f32_23, mm ? f32_23 : f32_4), TG_ERR_SHAPE);
        FAILS_NULL(fns[i](mm ? f32_32 : f32_23, elsewhere), TG_ERR_TAPE);
        FAILS_NULL(fns[i](elsewhere, mm ? f32_32 : f32_23), TG_ERR_TAPE);
    }
    /* matmul needs two axes on both sides. */
    FAILS_NULL(tg_matmul(f32_4, f32_4), TG_ERR_SHAPE);
    FAILS_NULL(tg_matmul(f32_s, f32_23), TG_ERR_SHAPE);

    /* where: each of the three NULL, dtypes mixed, shapes that do not broadcast, tapes. */
    FAILS_NULL(tg_where(NULL, f32_23, f32_23), TG_ERR_NULL);
    FAILS_NULL(tg_where(f32_23, NULL, f32_23), TG_ERR_NULL);
    FAILS_NULL(tg_where(f32_23, f32_23, NULL), TG_ERR_NULL);
    FAILS_NULL(tg_where(f32_23, f32_23, f64_23), TG_ERR_DTYPE);
    FAILS_NULL(tg_where(f32_23, f64_23, f32_23), TG_ERR_DTYPE);
    FAILS_NULL(tg_where(f32_4, f32_23, f32_23), TG_ERR_SHAPE);
    FAILS_NULL(tg_where(f32_23, f32_23, f32_4), TG_ERR_SHAPE);
    FAILS_NULL(tg_where(elsewhere, f32_23, f32_23), TG_ERR_TAPE);
    tg_tape_free(other);
}
END_TEST

typedef tg_tensor *(*reduce_fn)(tg_tensor *, int, const int *, bool);

START_TEST(reduction_misuse)
{
    static const reduce_fn fns[] = {tg_sum, tg_max, tg_mean};
    for (size_t i = 0; i < sizeof fns / sizeof fns[0]; i++) {
        FAILS_NULL(fns[i](NULL, 0, NULL, false), TG_ERR_NULL);
        FAILS_NULL(fns[i](f32_23, 1, NULL, false), TG_ERR_NULL);
        FAILS_NULL(fns[i](f32_23, 1, (const int[]){2}, true), TG_ERR_AXIS);
        FAILS_NULL(fns[i](f32_23, 1, (const int[]){-3}, false), TG_ERR_AXIS);
        FAILS_NULL(fns[i](f32_23, 1, (const int[]){INT32_MIN}, false), TG_ERR_AXIS);
        FAILS_NULL(fns[i](f32_23, 2, (const int[]){0, -2}, false), TG_ERR_AXIS);
        FAILS_NULL(fns[i](f32_23, 3, (const int[]){0, 1, 2}, false), TG_ERR_AXIS);
        FAILS_NULL(fns[i](f32_23, -1, (const int[]){0}, false), ANY_ERROR);
        FAILS_NULL(fns[i](f32_s, 1, (const int[]){0}, false), TG_ERR_AXIS);
    }
    FAILS_NULL(tg_max(tg_zeros(tape, TG_F32, 2, SHAPE(0, 3)), 1, (const int[]){0}, false),
               TG_ERR_SHAPE);
}
END_TEST

START_TEST(movement_misuse)
{
    /* reshape */
    FAILS_NULL(tg_reshape(NULL, 1, SHAPE(6)), TG_ERR_NULL);
    FAILS_NULL(tg_reshape(f32_23, 1, NULL), TG_ERR_NULL);
    FAILS_NULL(tg_reshape(f32_23, 1, SHAPE(5)), TG_ERR_SHAPE);
    FAILS_NULL(tg_reshape(f32_23, 2, SHAPE(-1, -1)), TG_ERR_SHAPE);
    FAILS_NULL(tg_reshape(f32_23, 2, SHAPE(-1, 0)), TG_ERR_SHAPE);
    FAILS_NULL(tg_reshape(f32_23, -1, SHAPE(6)), ANY_ERROR);
    FAILS_NULL(tg_reshape(f32_23, TG_MAX_DIMS + 1, SHAPE(1, 1, 1, 1, 1, 1, 1, 2, 3)), TG_ERR_SHAPE);
    FAILS_NULL(tg_reshape(f32_23, 2, SHAPE(INT64_MAX, 2)), TG_ERR_SHAPE);
    /* permute */
    FAILS_NULL(tg_permute(NULL, (const int[]){1, 0}), TG_ERR_NULL);
    FAILS_NULL(tg_permute(f32_23, NULL), TG_ERR_NULL);
    FAILS_NULL(tg_permute(f32_23, (const int[]){1, 1}), TG_ERR_AXIS);
    FAILS_NULL(tg_permute(f32_23, (const int[]){0, 2}), TG_ERR_AXIS);
    FAILS_NULL(tg_permute(f32_23, (const int[]){-3, 0}), TG_ERR_AXIS);
    /* expand */
    FAILS_NULL(tg_expand(NULL, 2, SHAPE(2, 3)), TG_ERR_NULL);
    FAILS_NULL(tg_expand(f32_23, 2, NULL), TG_ERR_NULL);
    FAILS_NULL(tg_expand(f32_23, 2, SHAPE(3, 3)), TG_ERR_SHAPE);
    FAILS_NULL(tg_expand(f32_23, 1, SHAPE(3)), TG_ERR_SHAPE);
    FAILS_NULL(tg_expand(f32_23, -1, SHAPE(3)), ANY_ERROR);
    FAILS_NULL(tg_expand(f32_23, 2, SHAPE(-2, 3)), TG_ERR_SHAPE);
    FAILS_NULL(tg_expand(f32_23, TG_MAX_DIMS + 1, SHAPE(1, 1, 1, 1, 1, 1, 1, 2, 3)), TG_ERR_SHAPE);
    FAILS_NULL(tg_expand(tg_zeros(tape, TG_F32, 2, SHAPE(1, 1)), 2, SHAPE(INT64_MAX, INT64_MAX)),
               TG_ERR_SHAPE);
    /* slice */
    FAILS_NULL(tg_slice(NULL, SHAPE(0, 0), SHAPE(1, 1)), TG_ERR_NULL);
    FAILS_NULL(tg_slice(f32_23, NULL, SHAPE(1, 1)), TG_ERR_NULL);
    FAILS_NULL(tg_slice(f32_23, SHAPE(0, 0), NULL), TG_ERR_NULL);
    FAILS_NULL(tg_slice(f32_23, SHAPE(-1, 0), SHAPE(1, 1)), TG_ERR_ARG);
    FAILS_NULL(tg_slice(f32_23, SHAPE(0, 0), SHAPE(3, 1)), TG_ERR_ARG);
    FAILS_NULL(tg_slice(f32_23, SHAPE(2, 0), SHAPE(1, 1)), TG_ERR_ARG);
    FAILS_NULL(tg_slice(f32_23, SHAPE(0, 0), SHAPE(INT64_MAX, 1)), TG_ERR_ARG);
    FAILS_NULL(tg_slice(f32_23, SHAPE(INT64_MIN, 0), SHAPE(1, 1)), TG_ERR_ARG);
    /* pad */
    FAILS_NULL(tg_pad(NULL, SHAPE(0, 0), SHAPE(0, 0), 0), TG_ERR_NULL);
    FAILS_NULL(tg_pad(f32_23, NULL, SHAPE(0, 0), 0), TG_ERR_NULL);
    FAILS_NULL(tg_pad(f32_23, SHAPE(0, 0), NULL, 0), TG_ERR_NULL);
    FAILS_NULL(tg_pad(f32_23, SHAPE(-1, 0), SHAPE(0, 0), 0), TG_ERR_ARG);
    FAILS_NULL(tg_pad(f32_23, SHAPE(0, 0), SHAPE(0, -5), 0), TG_ERR_ARG);
    FAILS_NULL(tg_pad(f32_23, SHAPE(0, INT64_MAX), SHAPE(0, INT64_MAX), 0), ANY_ERROR);
    /* transpose, flatten */
    FAILS_NULL(tg_transpose(NULL, 0, 1), TG_ERR_NULL);
    FAILS_NULL(tg_transpose(f32_23, 0, 2), TG_ERR_AXIS);
    FAILS_NULL(tg_transpose(f32_23, -3, 0), TG_ERR_AXIS);
    FAILS_NULL(tg_flatten(NULL, 0), TG_ERR_NULL);
    FAILS_NULL(tg_flatten(f32_23, 3), TG_ERR_AXIS);
    FAILS_NULL(tg_flatten(f32_23, -4), TG_ERR_AXIS);
}
END_TEST

START_TEST(window_misuse)
{
    FAILS_NULL(tg_im2col(NULL, 2, 2, 1, 1), TG_ERR_NULL);
    FAILS_NULL(tg_im2col(f32_23, 2, 2, 1, 1), TG_ERR_SHAPE);
    FAILS_NULL(tg_im2col(img, 5, 2, 1, 1), TG_ERR_SHAPE);
    FAILS_NULL(tg_im2col(img, 2, 5, 1, 1), TG_ERR_SHAPE);
    FAILS_NULL(tg_im2col(img, 0, 2, 1, 1), TG_ERR_ARG);
    FAILS_NULL(tg_im2col(img, 2, -1, 1, 1), TG_ERR_ARG);
    FAILS_NULL(tg_im2col(img, 2, 2, 0, 1), TG_ERR_ARG);
    FAILS_NULL(tg_im2col(img, 2, 2, 1, -2), TG_ERR_ARG);
    tg_tensor *cols = tg_im2col(img, 2, 2, 2, 2);
    ck_assert_ptr_nonnull(cols);
    FAILS_NULL(tg_col2im(NULL, 4, 4, 2, 2), TG_ERR_NULL);
    FAILS_NULL(tg_col2im(img, 4, 4, 2, 2), TG_ERR_SHAPE);
    FAILS_NULL(tg_col2im(cols, 9, 4, 2, 2), TG_ERR_SHAPE);
    FAILS_NULL(tg_col2im(cols, -4, 4, 2, 2), ANY_ERROR);
    FAILS_NULL(tg_col2im(cols, 4, 0, 2, 2), ANY_ERROR);
    FAILS_NULL(tg_col2im(cols, 4, 4, 0, 2), TG_ERR_ARG);
    FAILS_NULL(tg_col2im(cols, 4, 4, 2, -1), TG_ERR_ARG);
    /* Sizes near the int64 limit are refused, not wrapped. */
    FAILS_NULL(tg_col2im(cols, INT64_MAX, 4, 2, 2), ANY_ERROR);
    FAILS_NULL(tg_col2im(cols, 4, 4, INT64_MAX, 2), ANY_ERROR);
    FAILS_NULL(tg_im2col(img, INT64_MAX, 2, 1, 1), TG_ERR_SHAPE);
    ck_assert_ptr_nonnull(tg_im2col(img, 2, 2, INT64_MAX, INT64_MAX)); /* one window */
}
END_TEST

/* ---- recorded side effects ---------------------------------------------------------------- */
START_TEST(assign_misuse)
{
    tg_tensor *target = tg_full(tape, TG_F32, 2, SHAPE(2, 3), 5);
    tg_tensor *value = tg_full(tape, TG_F32, 2, SHAPE(2, 3), 7);
    tg_tape *other = tg_tape_new();
    tg_tensor *elsewhere = tg_full(other, TG_F32, 2, SHAPE(2, 3), 9);
    FAILS_NEG(tg_assign(NULL, value), TG_ERR_NULL);
    FAILS_NEG(tg_assign(target, NULL), TG_ERR_NULL);
    FAILS_NEG(tg_assign(target, f64_23), TG_ERR_DTYPE);
    FAILS_NEG(tg_assign(target, f32_4), TG_ERR_SHAPE);
    FAILS_NEG(tg_assign(target, elsewhere), TG_ERR_TAPE);
    FAILS_NEG(tg_assign(tg_exp(target), value), ANY_ERROR); /* not a leaf */
    FAILS_NEG(tg_assign(tg_reshape(target, 1, SHAPE(6)), tg_reshape(value, 1, SHAPE(6))),
              ANY_ERROR); /* a view is not a leaf either */
    ck_assert_double_eq(tg_get(target, 0), 5); /* untouched by the failures */
    /* Nothing was recorded; a NULL tape has no updates; the outputs may be NULL. */
    tg_tensor **targets = NULL, **values = NULL;
    ck_assert_uint_eq(tg_tape_updates(tape, &targets, &values), 0);
    ck_assert_uint_eq(tg_tape_updates(NULL, &targets, &values), 0);
    SUCCEEDS(tg_assign(target, value));
    ck_assert_uint_eq(tg_tape_updates(tape, NULL, NULL), 1);
    ck_assert_uint_eq(tg_tape_updates(tape, &targets, NULL), 1);
    ck_assert_ptr_eq(targets[0], target);
    tg_tape_free(other);
}
END_TEST

/* ---- reverse mode ------------------------------------------------------------------------- */
START_TEST(grad_misuse)
{
    tg_tensor *x = tg_full(tape, TG_F64, 1, SHAPE(3), 2);
    tg_tensor *y = tg_sum(tg_square(x), 0, NULL, false);
    tg_tensor *v = tg_exp(x);
    tg_tensor *g[2] = {NULL, NULL};
    tg_tape *other = tg_tape_new();
    tg_tensor *elsewhere = tg_full(other, TG_F64, 1, SHAPE(3), 1);
    tg_tensor *xs[2] = {x, x};
    FAILS_NEG(tg_grad(NULL, 1, &x, NULL, g), TG_ERR_NULL);
    FAILS_NEG(tg_grad(y, 1, NULL, NULL, g), TG_ERR_NULL);
    FAILS_NEG(tg_grad(y, 1, &x, NULL, NULL), TG_ERR_NULL);
    FAILS_NEG(tg_grad(y, 1, (tg_tensor *[]){NULL}, NULL, g), TG_ERR_NULL);
    FAILS_NEG(tg_grad(y, -1, xs, NULL, g), TG_ERR_ARG);
    FAILS_NEG(tg_grad(v, 1, &x, NULL, g), TG_ERR_SHAPE);                     /* no seed */
    FAILS_NEG(tg_grad(v, 1, &x, f64_23, g), TG_ERR_SHAPE);                   /* seed shape */
    FAILS_NEG(tg_grad(v, 1, &x, tg_full(tape, TG_F32, 1, SHAPE(3), 1), g), TG_ERR_DTYPE);
    FAILS_NEG(tg_grad(y, 1, &elsewhere, NULL, g), TG_ERR_TAPE);
    FAILS_NEG(tg_grad(v, 1, &x, elsewhere, g), TG_ERR_TAPE);
    ck_assert_ptr_null(g[0]); /* failures leave grads alone */
    tg_tape_free(other);
}
END_TEST

static tg_tensor *sum_of_squares(tg_tape *t, int n, tg_tensor *const *in, void *ctx)
{
    (void)t, (void)n, (void)ctx;
    return tg_sum(tg_square(in[0]), 0, NULL, false);
}

static tg_tensor *returns_null(tg_tape *t, int n, tg_tensor *const *in, void *ctx)
{
    (void)t, (void)n, (void)in, (void)ctx;
    return NULL;
}

/* Builds its output on the tape passed in ctx instead of gradcheck's. */
static tg_tensor *wrong_tape(tg_tape *t, int n, tg_tensor *const *in, void *ctx)
{
    (void)t, (void)n, (void)in;
    return tg_scalar((tg_tape *)ctx, TG_F64, 1);
}

static tg_tensor *returns_f32(tg_tape *t, int n, tg_tensor *const *in, void *ctx)
{
    (void)t, (void)n, (void)ctx;
    return tg_cast(tg_sum(in[0], 0, NULL, false), TG_F32);
}

START_TEST(gradcheck_misuse)
{
    tg_tensor *x = tg_full(tape, TG_F64, 1, SHAPE(3), 0.5);
    tg_tensor *x32 = tg_full(tape, TG_F32, 1, SHAPE(3), 0.5);
    tg_gradcheck_result r;
    memset(&r, 0x5a, sizeof r);
    FAILS_NEG(tg_gradcheck(NULL, NULL, 1, &x, NULL, &r), TG_ERR_NULL);
    FAILS_NEG(tg_gradcheck(sum_of_squares, NULL, 1, NULL, NULL, &r), TG_ERR_NULL);
    FAILS_NEG(tg_gradcheck(sum_of_squares, NULL, 1, &x, NULL, NULL), TG_ERR_NULL);
    FAILS_NEG(tg_gradcheck(sum_of_squares, NULL, 1, (tg_tensor *[]){NULL}, NULL, &r), TG_ERR_NULL);
    FAILS_NEG(tg_gradcheck(sum_of_squares, NULL, 0, &x, NULL, &r), TG_ERR_ARG);
    FAILS_NEG(tg_gradcheck(sum_of_squares, NULL, -2, &x, NULL, &r), TG_ERR_ARG);
    FAILS_NEG(tg_gradcheck(sum_of_squares, NULL, 1, &x32, NULL, &r), TG_ERR_DTYPE);
    FAILS_NEG(tg_gradcheck(returns_null, NULL, 1, &x, NULL, &r), ANY_ERROR);
    FAILS_NEG(tg_gradcheck(wrong_tape, tape, 1, &x, NULL, &r), ANY_ERROR);
    FAILS_NEG(tg_gradcheck(returns_f32, NULL, 1, &x, NULL, &r), ANY_ERROR);
    /* opts may be NULL (defaults), and then the check runs. */
    SUCCEEDS(tg_gradcheck(sum_of_squares, NULL, 1, &x, NULL, &r));
    ck_assert(r.passed);
}
END_TEST

/* ---- tensors dropped by a rewind ---------------------------------------------------------- */
#define DROPPED(call)                                                                         \
    do {                                                                                      \
        tg_clear_error();                                                                     \
        ck_assert_msg((call) == NULL, "line %d: %s should fail", __LINE__, #call);            \
        check_error_set(#call, TG_ERR_TAPE, __LINE__);                                        \
        MESSAGE_HAS("was dropped by tg_tape_rewind");                                         \
    } while (0)

#define DROPPED_STATUS(call)                                                                  \
    do {                                                                                      \
        tg_clear_error();                                                                     \
        ck_assert_msg((call) < 0, "line %d: %s should fail", __LINE__, #call);                \
        check_error_set(#call, TG_ERR_TAPE, __LINE__);                                        \
        MESSAGE_HAS("was dropped by tg_tape_rewind");                                         \
    } while (0)

START_TEST(use_after_rewind)
{
    tg_tensor *x = tg_full(tape, TG_F64, 1, SHAPE(3), 2); /* before the mark: survive */
    tg_tensor *y = tg_sum(tg_square(x), 0, NULL, false);
    tg_tensor *v = tg_exp(x);
    tg_mark mark = tg_tape_mark(tape);
    tg_tensor *gone = tg_exp(x);
    tg_tensor *gone_leaf = tg_full(tape, TG_F64, 1, SHAPE(3), 1);
    tg_tensor *gone_y = tg_sum(gone, 0, NULL, false);
    ck_assert_ptr_nonnull(gone_y);
    SUCCEEDS(tg_tape_rewind(tape, mark));
    /* Nothing is built below (every call fails), so the dropped slots are not reused and
     * each use is detected. */
    DROPPED(tg_neg(gone));
    DROPPED(tg_sqrt(gone_leaf));
    DROPPED(tg_add(x, gone));
    DROPPED(tg_mul(gone_leaf, x));
    DROPPED(tg_where(gone, x, x));
    DROPPED(tg_sum(gone, 0, NULL, false));
    DROPPED(tg_reshape(gone, 1, SHAPE(3)));
    DROPPED(tg_matmul(x, gone));
    tg_tensor *g[1] = {NULL};
    DROPPED_STATUS(tg_grad(gone_y, 1, &x, NULL, g));     /* the output */
    DROPPED_STATUS(tg_grad(y, 1, &gone_leaf, NULL, g));  /* an input */
    DROPPED_STATUS(tg_grad(v, 1, &x, gone, g));          /* the seed */
    DROPPED_STATUS(tg_assign(gone_leaf, x));
    ck_assert_uint_eq(tg_tape_size(tape), mark.nodes);
}
END_TEST

/* ---- named parameter lists ---------------------------------------------------------------- */
START_TEST(params_misuse)
{
    tg_params_free(NULL); /* documented as fine */
    tg_params *p = tg_params_new();
    ck_assert_ptr_nonnull(p);
    tg_tensor *w = tg_full(tape, TG_F32, 2, SHAPE(2, 3), 1);
    FAILS_NEG(tg_params_add(NULL, NULL, "w", w, TG_TRAINABLE), TG_ERR_NULL);
    FAILS_NEG(tg_params_add(p, NULL, NULL, w, TG_TRAINABLE), TG_ERR_NULL);
    FAILS_NEG(tg_params_add(p, NULL, "w", NULL, TG_TRAINABLE), TG_ERR_NULL);
    FAILS_NEG(tg_params_add(p, NULL, "", w, TG_TRAINABLE), TG_ERR_ARG);
    FAILS_NEG(tg_params_add(p, "", "", w, TG_TRAINABLE), TG_ERR_ARG);
    FAILS_NEG(tg_params_add(p, NULL, "w", tg_exp(w), TG_TRAINABLE), TG_ERR_ARG); /* not a leaf */
    FAILS_NEG(tg_params_add(p, NULL, "w", w, (tg_param_kind)7), TG_ERR_ARG);
    FAILS_NEG(tg_params_add(p, NULL, "w", w, (tg_param_kind)-1), TG_ERR_ARG);
    ck_assert_uint_eq(tg_params_count(p), 0);
    SUCCEEDS(tg_params_add(p, "layer", "w", w, TG_TRAINABLE));
    FAILS_NEG(tg_params_add(p, NULL, "layer.w", w, TG_BUFFER), TG_ERR_ARG); /* name taken */
    FAILS_NEG(tg_params_add(p, "layer", "w", f32_4, TG_BUFFER), TG_ERR_ARG);
    ck_assert_uint_eq(tg_params_count(p), 1);

    /* append: NULL either side, a clash leaves dst as it was, and a list appended to itself
     * is either doubled under the new prefix or refused, never a crash. */
    tg_params *q = tg_params_new();
    FAILS_NEG(tg_params_append(NULL, p, NULL), TG_ERR_NULL);
    FAILS_NEG(tg_params_append(q, NULL, NULL), TG_ERR_NULL);
    SUCCEEDS(tg_params_add(q, NULL, "other", f32_4, TG_BUFFER));
    SUCCEEDS(tg_params_add(q, NULL, "layer.w", f32_23, TG_TRAINABLE));
    FAILS_NEG(tg_params_append(p, q, NULL), TG_ERR_ARG);
    ck_assert_uint_eq(tg_params_count(p), 1);
    ck_assert_ptr_null(tg_params_find(p, "other"));
    FAILS_NEG(tg_params_append(p, p, NULL), TG_ERR_ARG); /* every name clashes with itself */
    ck_assert_uint_eq(tg_params_count(p), 1);
    tg_clear_error();
    int self = tg_params_append(p, p, "copy");
    ck_assert(self == TG_OK || self < 0);
    ck_assert_uint_eq(tg_params_count(p), self == TG_OK ? 2 : 1);

    /* Queries: NULL lists and names answer "nothing" (documented NULL past the end / absent). */
    ck_assert_uint_eq(tg_params_count(NULL), 0);
    ck_assert_ptr_null(tg_params_get(NULL, 0));
    ck_assert_ptr_null(tg_params_get(p, 99));
    ck_assert_ptr_null(tg_params_get(p, (size_t)-1));
    ck_assert_ptr_null(tg_params_find(NULL, "layer.w"));
    ck_assert_ptr_null(tg_params_find(p, NULL));
    ck_assert_ptr_null(tg_params_find(p, "nope"));
    tg_tensor *out[1] = {NULL};
    ck_assert_uint_eq(tg_params_trainable(NULL, out, 1), 0);
    ck_assert_uint_eq(tg_params_trainable(p, NULL, 0), tg_params_count(p));
    /* A NULL out with a capacity: counts, writes nothing, never crashes. */
    tg_clear_error();
    size_t counted = tg_params_trainable(p, NULL, 4);
    ck_assert_uint_eq(counted, tg_params_count(p));
    tg_params_free(q);
    tg_params_free(p);
}
END_TEST

/* ---- initialization ----------------------------------------------------------------------- */
START_TEST(init_misuse)
{
    tg_rng rng;
    tg_rng_seed(&rng, 3);
    tg_tensor *w = tg_full(tape, TG_F32, 2, SHAPE(4, 3), 7);
    tg_tensor *b = tg_full(tape, TG_F32, 1, SHAPE(4), 7);
    tg_tensor *node = tg_exp(w);
    FAILS_NEG(tg_init_uniform(NULL, &rng, 0, 1), TG_ERR_NULL);
    FAILS_NEG(tg_init_uniform(w, NULL, 0, 1), TG_ERR_NULL);
    FAILS_NEG(tg_init_uniform(node, &rng, 0, 1), TG_ERR_ARG);
    FAILS_NEG(tg_init_uniform(w, &rng, 1, 0), TG_ERR_ARG);
    FAILS_NEG(tg_init_uniform(w, &rng, NAN, 1), TG_ERR_ARG);
    FAILS_NEG(tg_init_uniform(w, &rng, 0, INFINITY), TG_ERR_ARG);
    FAILS_NEG(tg_init_constant(NULL, 1), TG_ERR_NULL);
    FAILS_NEG(tg_init_constant(node, 1), TG_ERR_ARG);
    FAILS_WITH(tg_fan_in(NULL), -1, TG_ERR_NULL);
    FAILS_WITH(tg_fan_in(b), -1, TG_ERR_SHAPE);
    FAILS_WITH(tg_fan_in(f32_s), -1, TG_ERR_SHAPE);
    FAILS_NEG(tg_init_kaiming_uniform(NULL, &rng, 0), TG_ERR_NULL);
    FAILS_NEG(tg_init_kaiming_uniform(w, NULL, 0), TG_ERR_NULL);
    FAILS_NEG(tg_init_kaiming_uniform(b, &rng, 0), TG_ERR_SHAPE);
    FAILS_NEG(tg_init_kaiming_uniform(node, &rng, 0), TG_ERR_ARG);
    FAILS_NEG(tg_init_default(NULL, b, &rng), TG_ERR_NULL);
    FAILS_NEG(tg_init_default(w, b, NULL), TG_ERR_NULL);
    FAILS_NEG(tg_init_default(b, NULL, &rng), TG_ERR_SHAPE);
    FAILS_NEG(tg_init_default(w, tg_exp(b), &rng), TG_ERR_ARG); /* bias not a leaf */
    FAILS_NEG(tg_init_default(w, f32_23, &rng), TG_ERR_SHAPE);
    /* Nothing was overwritten by the failures. */
    for (int64_t i = 0; i < 12; i++)
        ck_assert_double_eq(tg_get(w, i), 7);
    for (int64_t i = 0; i < 4; i++)
        ck_assert_double_eq(tg_get(b, i), 7);
}
END_TEST

/* ---- layers as functions ------------------------------------------------------------------ */
START_TEST(conv_linear_misuse)
{
    tg_tensor *x = tg_full(tape, TG_F32, 4, SHAPE(2, 3, 5, 5), 1);
    tg_tensor *w = tg_full(tape, TG_F32, 4, SHAPE(4, 3, 3, 3), 1);
    tg_tensor *b = tg_full(tape, TG_F32, 1, SHAPE(4), 1);
    tg_tensor *w64 = tg_full(tape, TG_F64, 4, SHAPE(4, 3, 3, 3), 1);
    FAILS_NULL(tg_conv2d(NULL, w, b, 1, 0), TG_ERR_NULL);
    FAILS_NULL(tg_conv2d(x, NULL, b, 1, 0), TG_ERR_NULL);
    FAILS_NULL(tg_conv2d(x, w64, NULL, 1, 0), TG_ERR_DTYPE);
    FAILS_NULL(tg_conv2d(x, w, tg_zeros(tape, TG_F64, 1, SHAPE(4)), 1, 0), TG_ERR_DTYPE);
    FAILS_NULL(tg_conv2d(f32_23, w, b, 1, 0), TG_ERR_SHAPE);
    FAILS_NULL(tg_conv2d(x, f32_23, b, 1, 0), TG_ERR_SHAPE);
    FAILS_NULL(tg_conv2d(x, tg_zeros(tape, TG_F32, 4, SHAPE(4, 2, 3, 3)), b, 1, 0), TG_ERR_SHAPE);
    FAILS_NULL(tg_conv2d(x, w, f32_23, 1, 0), TG_ERR_SHAPE);
    FAILS_NULL(tg_conv2d(x, w, tg_zeros(tape, TG_F32, 1, SHAPE(3)), 1, 0), TG_ERR_SHAPE);
    FAILS_NULL(tg_conv2d(x, tg_zeros(tape, TG_F32, 4, SHAPE(4, 3, 7, 7)), b, 1, 0), TG_ERR_SHAPE);
    FAILS_NULL(tg_conv2d(x, w, b, 0, 0), TG_ERR_ARG);
    FAILS_NULL(tg_conv2d(x, w, b, -1, 0), TG_ERR_ARG);
    FAILS_NULL(tg_conv2d(x, w, b, 1, -1), TG_ERR_ARG);
    FAILS_NULL(tg_conv2d(x, w, b, 1, INT64_MAX), ANY_ERROR);

    tg_tensor *lw = tg_full(tape, TG_F32, 2, SHAPE(4, 3), 1);
    FAILS_NULL(tg_linear(NULL, lw, b), TG_ERR_NULL);
    FAILS_NULL(tg_linear(f32_23, NULL, b), TG_ERR_NULL);
    FAILS_NULL(tg_linear(f64_23, lw, b), TG_ERR_DTYPE);
    FAILS_NULL(tg_linear(f32_23, lw, tg_zeros(tape, TG_F64, 1, SHAPE(4))), TG_ERR_DTYPE);
    FAILS_NULL(tg_linear(f32_4, lw, b), TG_ERR_SHAPE);
    FAILS_NULL(tg_linear(f32_23, b, NULL), TG_ERR_SHAPE);
    FAILS_NULL(tg_linear(f32_23, lw, f32_23), TG_ERR_SHAPE);
    FAILS_NULL(tg_linear(f32_23, lw, tg_zeros(tape, TG_F32, 1, SHAPE(3))), TG_ERR_SHAPE);
}
END_TEST

START_TEST(batch_norm_misuse)
{
    tg_tensor *x = tg_full(tape, TG_F32, 2, SHAPE(4, 3), 1);
    tg_tensor *c3 = tg_full(tape, TG_F32, 1, SHAPE(3), 1);
    tg_tensor *c4 = tg_full(tape, TG_F32, 1, SHAPE(4), 1);
    tg_tensor *c3_64 = tg_full(tape, TG_F64, 1, SHAPE(3), 1);
    tg_tensor *rm = tg_full(tape, TG_F32, 1, SHAPE(3), 0.5);
    tg_tensor *rv = tg_full(tape, TG_F32, 1, SHAPE(3), 2);
    FAILS_NULL(tg_batch_norm(NULL, c3, c3, rm, rv, true, 0.9, 1e-5), TG_ERR_NULL);
    FAILS_NULL(tg_batch_norm(x, c3, c3, NULL, rv, false, 0.9, 1e-5), TG_ERR_NULL);
    FAILS_NULL(tg_batch_norm(x, c3, c3, rm, NULL, false, 0.9, 1e-5), TG_ERR_NULL);
    FAILS_NULL(tg_batch_norm(x, c4, c3, rm, rv, true, 0.9, 1e-5), TG_ERR_SHAPE);
    FAILS_NULL(tg_batch_norm(x, c3, c4, rm, rv, true, 0.9, 1e-5), TG_ERR_SHAPE);
    FAILS_NULL(tg_batch_norm(x, c3, c3, c4, rv, true, 0.9, 1e-5), TG_ERR_SHAPE);
    FAILS_NULL(tg_batch_norm(x, c3, c3, rm, c4, false, 0.9, 1e-5), TG_ERR_SHAPE);
    FAILS_NULL(tg_batch_norm(x, c3_64, c3, rm, rv, true, 0.9, 1e-5), TG_ERR_DTYPE);
    FAILS_NULL(tg_batch_norm(x, c3, c3, c3_64, rv, true, 0.9, 1e-5), TG_ERR_DTYPE);
    FAILS_NULL(tg_batch_norm(c3, NULL, NULL, NULL, NULL, true, 0.9, 1e-5), TG_ERR_SHAPE);
    FAILS_NULL(tg_batch_norm(tg_zeros(tape, TG_F32, 2, SHAPE(1, 3)), NULL, NULL, NULL, NULL,
                             true, 0.9, 1e-5), ANY_ERROR); /* one value per channel */
    FAILS_NULL(tg_batch_norm(x, c3, c3, rm, rv, true, 1.5, 1e-5), TG_ERR_ARG);
    FAILS_NULL(tg_batch_norm(x, c3, c3, rm, rv, true, NAN, 1e-5), TG_ERR_ARG);
    FAILS_NULL(tg_batch_norm(x, c3, c3, rm, rv, true, 0.9, -1), TG_ERR_ARG);
    FAILS_NULL(tg_batch_norm(x, c3, c3, rm, rv, true, 0.9, NAN), TG_ERR_ARG);
    /* The running estimates were not touched and nothing was recorded. */
    ck_assert_double_eq(tg_get(rm, 0), 0.5);
    ck_assert_double_eq(tg_get(rv, 2), 2);
    ck_assert_uint_eq(tg_tape_updates(tape, NULL, NULL), 0);
}
END_TEST

typedef tg_tensor *(*pool_fn)(tg_tensor *, int64_t, int64_t, int64_t);

START_TEST(pool_dropout_softmax_misuse)
{
    static const pool_fn pools[] = {tg_max_pool2d, tg_avg_pool2d};
    for (size_t i = 0; i < 2; i++) {
        FAILS_NULL(pools[i](NULL, 2, 0, 0), TG_ERR_NULL);
        FAILS_NULL(pools[i](f32_23, 2, 0, 0), TG_ERR_SHAPE);
        FAILS_NULL(pools[i](img, 0, 0, 0), TG_ERR_ARG);
        FAILS_NULL(pools[i](img, -2, 0, 0), TG_ERR_ARG);
        FAILS_NULL(pools[i](img, 2, -1, 0), TG_ERR_ARG);
        FAILS_NULL(pools[i](img, 2, 0, -1), TG_ERR_ARG);
        FAILS_NULL(pools[i](img, 2, 0, 2), TG_ERR_ARG); /* more than kernel / 2 */
        FAILS_NULL(pools[i](img, 5, 0, 0), TG_ERR_SHAPE);
        FAILS_NULL(pools[i](img, INT64_MAX, 0, 0), ANY_ERROR);
        ck_assert_ptr_nonnull(pools[i](img, 2, INT64_MAX, 0)); /* a huge stride: one window */
        FAILS_NULL(pools[i](img, 4, 0, INT64_MAX), TG_ERR_ARG);
    }

    tg_rng rng;
    tg_rng_seed(&rng, 5);
    FAILS_NULL(tg_dropout(NULL, 0.5, true, &rng), TG_ERR_NULL);
    FAILS_NULL(tg_dropout(f32_23, 0.5, true, NULL), TG_ERR_NULL);
    FAILS_NULL(tg_dropout(f32_23, -0.1, true, &rng), TG_ERR_ARG);
    FAILS_NULL(tg_dropout(f32_23, 1.1, true, &rng), TG_ERR_ARG);
    FAILS_NULL(tg_dropout(f32_23, NAN, true, &rng), TG_ERR_ARG);
    /* Not training: x itself, rng unused (so NULL is fine). */
    tg_clear_error();
    ck_assert_ptr_eq(tg_dropout(f32_23, 0.5, false, NULL), f32_23);
    tg_tensor *mask = tg_full(tape, TG_F32, 2, SHAPE(2, 3), 1);
    FAILS_NULL(tg_dropout_mask(NULL, mask, 0.5), TG_ERR_NULL);
    FAILS_NULL(tg_dropout_mask(f32_23, NULL, 0.5), TG_ERR_NULL);
    FAILS_NULL(tg_dropout_mask(f32_23, f64_23, 0.5), TG_ERR_DTYPE);
    FAILS_NULL(tg_dropout_mask(f32_23, f32_4, 0.5), TG_ERR_SHAPE);
    FAILS_NULL(tg_dropout_mask(f32_23, mask, -1), TG_ERR_ARG);
    FAILS_NULL(tg_dropout_mask(f32_23, mask, 2), TG_ERR_ARG);
    FAILS_NULL(tg_dropout_mask(f32_23, mask, NAN), TG_ERR_ARG);

    FAILS_NULL(tg_log_softmax(NULL, 0), TG_ERR_NULL);
    FAILS_NULL(tg_log_softmax(f32_23, 2), TG_ERR_AXIS);
    FAILS_NULL(tg_log_softmax(f32_23, -3), TG_ERR_AXIS);
    FAILS_NULL(tg_log_softmax(f32_s, 0), TG_ERR_AXIS);
}
END_TEST

START_TEST(cross_entropy_misuse)
{
    tg_tensor *logits = tg_full(tape, TG_F32, 2, SHAPE(2, 3), 0);
    tg_tensor *labels = tg_labels_from_int(tape, TG_F32, 2, (const int[]){0, 2});
    ck_assert_ptr_nonnull(labels);
    FAILS_NULL(tg_cross_entropy(NULL, labels), TG_ERR_NULL);
    FAILS_NULL(tg_cross_entropy(logits, NULL), TG_ERR_NULL);
    FAILS_NULL(tg_cross_entropy(f64_23, labels), TG_ERR_DTYPE);
    FAILS_NULL(tg_cross_entropy(f32_4, labels), TG_ERR_SHAPE);
    FAILS_NULL(tg_cross_entropy(logits, f32_4), TG_ERR_SHAPE);
    FAILS_NULL(tg_cross_entropy(logits, f32_23), TG_ERR_SHAPE);
    FAILS_NULL(tg_cross_entropy(logits, tg_labels_from_int(tape, TG_F32, 2, (const int[]){0, 3})),
               TG_ERR_ARG);
    FAILS_NULL(tg_cross_entropy(logits, tg_from_data(tape, TG_F32, 1, SHAPE(2),
                                                     (const float[]){-1, 0})),
               TG_ERR_ARG);
    FAILS_NULL(tg_cross_entropy(logits, tg_from_data(tape, TG_F32, 1, SHAPE(2),
                                                     (const float[]){0.5f, 1})),
               TG_ERR_ARG);
    FAILS_NULL(tg_cross_entropy(logits, tg_from_data(tape, TG_F32, 1, SHAPE(2),
                                                     (const float[]){NAN, 1})),
               TG_ERR_ARG);

    const int ints[2] = {1, 2};
    const uint8_t bytes[2] = {1, 2};
    FAILS_NULL(tg_labels_from_int(NULL, TG_F32, 2, ints), TG_ERR_NULL);
    FAILS_NULL(tg_labels_from_int(tape, TG_F32, 2, NULL), TG_ERR_NULL);
    FAILS_NULL(tg_labels_from_int(tape, (tg_dtype)3, 2, ints), TG_ERR_DTYPE);
    FAILS_NULL(tg_labels_from_int(tape, TG_F32, -1, ints), ANY_ERROR);
    FAILS_NULL(tg_labels_from_int(tape, TG_F32, 2, (const int[]){0, -1}), TG_ERR_ARG);
    FAILS_NULL(tg_labels_from_int(tape, TG_F32, 1, (const int[]){(1 << 24) + 1}), TG_ERR_ARG);
    FAILS_NULL(tg_labels_from_u8(NULL, TG_F32, 2, bytes), TG_ERR_NULL);
    FAILS_NULL(tg_labels_from_u8(tape, TG_F64, 2, NULL), TG_ERR_NULL);
    FAILS_NULL(tg_labels_from_u8(tape, (tg_dtype)-4, 2, bytes), TG_ERR_DTYPE);
    FAILS_NULL(tg_labels_from_u8(tape, TG_F64, -5, bytes), ANY_ERROR);
}
END_TEST

/* ---- layers holding their parameters ------------------------------------------------------ */
static bool all_zero(const void *p, size_t size)
{
    const unsigned char *c = p;
    for (size_t i = 0; i < size; i++)
        if (c[i])
            return false;
    return true;
}

START_TEST(layer_structs_misuse)
{
    tg_rng rng;
    tg_rng_seed(&rng, 7);
    tg_params *p = tg_params_new();
    tg_tensor *x4 = tg_full(tape, TG_F32, 4, SHAPE(2, 3, 5, 5), 1);

    /* conv2d layer */
    tg_conv2d_layer conv, zero_conv;
    memset(&zero_conv, 0, sizeof zero_conv);
    FAILS_NEG(tg_conv2d_layer_init(NULL, tape, &rng, TG_F32, 3, 4, 3, 1, 0, true), TG_ERR_NULL);
#define CONV_INIT_FAILS(code, ...)                                                            \
    do {                                                                                      \
        memset(&conv, 0xab, sizeof conv);                                                     \
        FAILS_NEG(tg_conv2d_layer_init(&conv, __VA_ARGS__), code);                            \
        ck_assert(all_zero(&conv, sizeof conv));                                              \
    } while (0)
    CONV_INIT_FAILS(TG_ERR_NULL, NULL, &rng, TG_F32, 3, 4, 3, 1, 0, true);
    CONV_INIT_FAILS(TG_ERR_NULL, tape, NULL, TG_F32, 3, 4, 3, 1, 0, true);
    CONV_INIT_FAILS(TG_ERR_DTYPE, tape, &rng, (tg_dtype)2, 3, 4, 3, 1, 0, true);
    CONV_INIT_FAILS(TG_ERR_ARG, tape, &rng, TG_F32, 0, 4, 3, 1, 0, true);
    CONV_INIT_FAILS(TG_ERR_ARG, tape, &rng, TG_F32, 3, -4, 3, 1, 0, true);
    CONV_INIT_FAILS(TG_ERR_ARG, tape, &rng, TG_F32, 3, 4, 0, 1, 0, true);
    CONV_INIT_FAILS(TG_ERR_ARG, tape, &rng, TG_F32, 3, 4, 3, 0, 0, true);
    CONV_INIT_FAILS(TG_ERR_ARG, tape, &rng, TG_F32, 3, 4, 3, 1, -1, true);
    CONV_INIT_FAILS(ANY_ERROR, tape, &rng, TG_F32, INT64_MAX, INT64_MAX, 3, 1, 0, true);
    SUCCEEDS(tg_conv2d_layer_init(&conv, tape, &rng, TG_F32, 3, 4, 3, 1, 0, true));
    FAILS_NULL(tg_conv2d_layer_forward(NULL, x4), TG_ERR_NULL);
    FAILS_NULL(tg_conv2d_layer_forward(&conv, NULL), TG_ERR_NULL);
    FAILS_NULL(tg_conv2d_layer_forward(&zero_conv, x4), TG_ERR_NULL);
    FAILS_NULL(tg_conv2d_layer_forward(&conv, f32_23), TG_ERR_SHAPE);
    FAILS_NULL(tg_conv2d_layer_forward(&conv, tg_cast(x4, TG_F64)), TG_ERR_DTYPE);
    FAILS_NEG(tg_conv2d_layer_register(NULL, p, "conv"), TG_ERR_NULL);
    FAILS_NEG(tg_conv2d_layer_register(&conv, NULL, "conv"), TG_ERR_NULL);
    FAILS_NEG(tg_conv2d_layer_register(&zero_conv, p, "conv"), TG_ERR_NULL);
    SUCCEEDS(tg_conv2d_layer_register(&conv, p, "conv"));
    FAILS_NEG(tg_conv2d_layer_register(&conv, p, "conv"), TG_ERR_ARG); /* names taken */
    ck_assert_uint_eq(tg_params_count(p), 2);

    /* linear layer */
    tg_linear_layer lin, zero_lin;
    memset(&zero_lin, 0, sizeof zero_lin);
    FAILS_NEG(tg_linear_layer_init(NULL, tape, &rng, TG_F32, 3, 2, true), TG_ERR_NULL);
#define LINEAR_INIT_FAILS(code, ...)                                                          \
    do {                                                                                      \
        memset(&lin, 0xab, sizeof lin);                                                       \
        FAILS_NEG(tg_linear_layer_init(&lin, __VA_ARGS__), code);                             \
        ck_assert(all_zero(&lin, sizeof lin));                                                \
    } while (0)
    LINEAR_INIT_FAILS(TG_ERR_NULL, NULL, &rng, TG_F32, 3, 2, true);
    LINEAR_INIT_FAILS(TG_ERR_NULL, tape, NULL, TG_F32, 3, 2, true);
    LINEAR_INIT_FAILS(TG_ERR_DTYPE, tape, &rng, (tg_dtype)9, 3, 2, true);
    LINEAR_INIT_FAILS(TG_ERR_ARG, tape, &rng, TG_F32, 0, 2, true);
    LINEAR_INIT_FAILS(TG_ERR_ARG, tape, &rng, TG_F32, 3, -2, false);
    LINEAR_INIT_FAILS(ANY_ERROR, tape, &rng, TG_F32, INT64_MAX, INT64_MAX, false);
    SUCCEEDS(tg_linear_layer_init(&lin, tape, &rng, TG_F32, 3, 2, true));
    FAILS_NULL(tg_linear_layer_forward(NULL, f32_23), TG_ERR_NULL);
    FAILS_NULL(tg_linear_layer_forward(&lin, NULL), TG_ERR_NULL);
    FAILS_NULL(tg_linear_layer_forward(&zero_lin, f32_23), TG_ERR_NULL);
    FAILS_NULL(tg_linear_layer_forward(&lin, f32_4), TG_ERR_SHAPE);
    FAILS_NULL(tg_linear_layer_forward(&lin, f64_23), TG_ERR_DTYPE);
    FAILS_NEG(tg_linear_layer_register(NULL, p, "fc"), TG_ERR_NULL);
    FAILS_NEG(tg_linear_layer_register(&lin, NULL, "fc"), TG_ERR_NULL);
    FAILS_NEG(tg_linear_layer_register(&zero_lin, p, "fc"), TG_ERR_NULL);
    SUCCEEDS(tg_linear_layer_register(&lin, p, "fc"));
    FAILS_NEG(tg_linear_layer_register(&lin, p, "fc"), TG_ERR_ARG);
    ck_assert_uint_eq(tg_params_count(p), 4);

    /* batch-norm layer */
    tg_batchnorm_layer bn, zero_bn;
    memset(&zero_bn, 0, sizeof zero_bn);
    zero_bn.retention = 0.9, zero_bn.eps = 1e-5; /* valid numbers, no tensors */
    FAILS_NEG(tg_batchnorm_layer_init(NULL, tape, TG_F32, 3), TG_ERR_NULL);
#define BN_INIT_FAILS(code, ...)                                                              \
    do {                                                                                      \
        memset(&bn, 0xab, sizeof bn);                                                         \
        FAILS_NEG(tg_batchnorm_layer_init(&bn, __VA_ARGS__), code);                           \
        ck_assert(all_zero(&bn, sizeof bn));                                                  \
    } while (0)
    BN_INIT_FAILS(TG_ERR_NULL, NULL, TG_F32, 3);
    BN_INIT_FAILS(TG_ERR_DTYPE, tape, (tg_dtype)2, 3);
    BN_INIT_FAILS(TG_ERR_ARG, tape, TG_F32, 0);
    BN_INIT_FAILS(TG_ERR_ARG, tape, TG_F32, -3);
    BN_INIT_FAILS(ANY_ERROR, tape, TG_F32, INT64_MAX);
    SUCCEEDS(tg_batchnorm_layer_init(&bn, tape, TG_F32, 3));
    FAILS_NULL(tg_batchnorm_layer_forward(NULL, x4, true), TG_ERR_NULL);
    FAILS_NULL(tg_batchnorm_layer_forward(&bn, NULL, true), TG_ERR_NULL);
    FAILS_NULL(tg_batchnorm_layer_forward(&zero_bn, x4, false), TG_ERR_NULL);
    FAILS_NULL(tg_batchnorm_layer_forward(&bn, f32_4, true), TG_ERR_SHAPE);
    FAILS_NULL(tg_batchnorm_layer_forward(&bn, tg_cast(x4, TG_F64), true), TG_ERR_DTYPE);
    FAILS_NEG(tg_batchnorm_layer_register(NULL, p, "bn"), TG_ERR_NULL);
    FAILS_NEG(tg_batchnorm_layer_register(&bn, NULL, "bn"), TG_ERR_NULL);
    FAILS_NEG(tg_batchnorm_layer_register(&zero_bn, p, "bn"), TG_ERR_NULL);
    SUCCEEDS(tg_batchnorm_layer_register(&bn, p, "bn"));
    FAILS_NEG(tg_batchnorm_layer_register(&bn, p, "bn"), TG_ERR_ARG);
    ck_assert_uint_eq(tg_params_count(p), 8);
    tg_params_free(p);
}
END_TEST

/* ---- optimizers --------------------------------------------------------------------------- */
START_TEST(optim_new_misuse)
{
    tg_adam_opts adam = tg_adam_defaults(), adamw = tg_adamw_defaults();
    ck_assert_double_eq(adam.lr, 1e-3);
    ck_assert_double_eq(adamw.weight_decay, 1e-2);
    tg_params *p = tg_params_new();
    tg_tensor *w = tg_full(tape, TG_F32, 2, SHAPE(2, 3), 1);
    SUCCEEDS(tg_params_add(p, NULL, "w", w, TG_TRAINABLE));
    const tg_sgd_opts sgd = {.lr = 0.1};

    FAILS_NULL(tg_sgd_new(NULL, &sgd), TG_ERR_NULL);
    FAILS_NULL(tg_sgd_new(p, NULL), TG_ERR_NULL);
    FAILS_NULL(tg_sgd_new(p, &(tg_sgd_opts){.lr = -0.1}), TG_ERR_ARG);
    FAILS_NULL(tg_sgd_new(p, &(tg_sgd_opts){.lr = NAN}), TG_ERR_ARG);
    FAILS_NULL(tg_sgd_new(p, &(tg_sgd_opts){.lr = 0.1, .momentum = -1}), TG_ERR_ARG);
    FAILS_NULL(tg_sgd_new(p, &(tg_sgd_opts){.lr = 0.1, .weight_decay = -1}), TG_ERR_ARG);
    FAILS_NULL(tg_sgd_new(p, &(tg_sgd_opts){.lr = 0.1, .nesterov = true}), TG_ERR_ARG);
    FAILS_NULL(tg_sgd_new(p, &(tg_sgd_opts){.lr = 0.1, .momentum = 0.9, .dampening = 0.1,
                                            .nesterov = true}),
               TG_ERR_ARG);
    typedef tg_optim *(*adam_new_fn)(const tg_params *, const tg_adam_opts *);
    static const adam_new_fn adams[] = {tg_adam_new, tg_adamw_new};
    for (size_t i = 0; i < 2; i++) {
        tg_adam_opts o = i ? adamw : adam;
        FAILS_NULL(adams[i](NULL, &o), TG_ERR_NULL);
        FAILS_NULL(adams[i](p, NULL), TG_ERR_NULL);
        tg_adam_opts bad = o;
        bad.lr = -1;
        FAILS_NULL(adams[i](p, &bad), TG_ERR_ARG);
        bad = o;
        bad.beta1 = 1;
        FAILS_NULL(adams[i](p, &bad), TG_ERR_ARG);
        bad = o;
        bad.beta2 = -0.5;
        FAILS_NULL(adams[i](p, &bad), TG_ERR_ARG);
        bad = o;
        bad.eps = -1e-8;
        FAILS_NULL(adams[i](p, &bad), TG_ERR_ARG);
        bad = o;
        bad.weight_decay = NAN;
        FAILS_NULL(adams[i](p, &bad), TG_ERR_ARG);
    }
    /* A tensor listed twice. */
    SUCCEEDS(tg_params_add(p, NULL, "w_again", w, TG_TRAINABLE));
    FAILS_NULL(tg_sgd_new(p, &sgd), TG_ERR_ARG);
    FAILS_NULL(tg_adam_new(p, &adam), TG_ERR_ARG);
    tg_params_free(p);

    /* The accessors on NULL. */
    tg_optim_free(NULL); /* documented as fine */
    FAILS_NAN(tg_optim_lr(NULL), TG_ERR_NULL);
    FAILS_NEG(tg_optim_set_lr(NULL, 0.1), TG_ERR_NULL);
    ck_assert_uint_eq(tg_optim_count(NULL), 0);
    ck_assert_ptr_null(tg_optim_state(NULL));
}
END_TEST

START_TEST(optim_step_misuse)
{
    tg_params *p = tg_params_new();
    tg_tensor *w = tg_full(tape, TG_F32, 2, SHAPE(2, 3), 1);
    tg_tensor *b = tg_full(tape, TG_F64, 1, SHAPE(4), 1);
    SUCCEEDS(tg_params_add(p, NULL, "w", w, TG_TRAINABLE));
    SUCCEEDS(tg_params_add(p, NULL, "b", b, TG_TRAINABLE));
    tg_tensor *gw = tg_full(tape, TG_F32, 2, SHAPE(2, 3), 0.5);
    tg_tensor *gb = tg_full(tape, TG_F64, 1, SHAPE(4), 0.5);
    tg_optim *opts[3] = {
        tg_sgd_new(p, &(tg_sgd_opts){.lr = 0.1, .momentum = 0.9}),
        tg_adam_new(p, &(tg_adam_opts){.lr = 0.1, .beta1 = 0.9, .beta2 = 0.99, .eps = 1e-8}),
        tg_adamw_new(p, &(tg_adam_opts){.lr = 0.1, .beta1 = 0.9, .beta2 = 0.99, .eps = 1e-8,
                                        .weight_decay = 0.1}),
    };
    for (int k = 0; k < 3; k++) {
        tg_optim *o = opts[k];
        ck_assert_ptr_nonnull(o);
        ck_assert_uint_eq(tg_optim_count(o), 2);
        tg_params *state = tg_optim_state(o);
        ck_assert_ptr_nonnull(state);
        size_t nstate = tg_params_count(state);
        FAILS_NEG(tg_optim_step(NULL, (tg_tensor *[]){gw, gb}), TG_ERR_NULL);
        FAILS_NEG(tg_optim_step(o, NULL), TG_ERR_NULL);
        /* The second gradient is wrong: the first parameter must not move either. A gradient
         * of another dtype is TG_ERR_DTYPE, of another shape TG_ERR_SHAPE. */
        FAILS_NEG(tg_optim_step(o, (tg_tensor *[]){gw, f32_4}), TG_ERR_DTYPE);
        FAILS_NEG(tg_optim_step(o, (tg_tensor *[]){gw, tg_cast(gb, TG_F32)}), TG_ERR_DTYPE);
        MESSAGE_HAS("is f32 [4] but its parameter 'b' is f64 [4]");
        FAILS_NEG(tg_optim_step(o, (tg_tensor *[]){gw, tg_full(tape, TG_F64, 1, SHAPE(5), 1)}),
                  TG_ERR_SHAPE);
        FAILS_NEG(tg_optim_step(o, (tg_tensor *[]){f64_23, gb}), TG_ERR_DTYPE);
        FAILS_NEG(tg_optim_step(o, (tg_tensor *[]){tg_reshape(gw, 2, SHAPE(3, 2)), gb}),
                  TG_ERR_SHAPE);
        FAILS_NEG(tg_optim_step(o, (tg_tensor *[]){gb, gw}), ANY_ERROR); /* swapped */
        for (int64_t i = 0; i < 6; i++)
            ck_assert_double_eq(tg_get(w, i), 1);
        for (int64_t i = 0; i < 4; i++)
            ck_assert_double_eq(tg_get(b, i), 1);
        /* No state moved either: every step counter is still 0. */
        for (size_t i = 0; i < nstate; i++) {
            const tg_param *e = tg_params_get(state, i);
            if (strncmp(e->name, "optim.step.", 11) == 0)
                ck_assert_double_eq(tg_item(e->tensor), 0);
        }
        FAILS_NEG(tg_optim_set_lr(o, -0.1), TG_ERR_ARG);
        FAILS_NEG(tg_optim_set_lr(o, NAN), TG_ERR_ARG);
        FAILS_NEG(tg_optim_set_lr(o, INFINITY), TG_ERR_ARG);
        ck_assert_double_eq(tg_optim_lr(o), 0.1);
        /* NULL gradients skip their parameters (documented). */
        SUCCEEDS(tg_optim_step(o, (tg_tensor *[]){NULL, NULL}));
        ck_assert_double_eq(tg_get(w, 0), 1);
        tg_optim_free(o);
    }
    tg_params_free(p);
}
END_TEST

/* ---- I/O: IDX files and MNIST ------------------------------------------------------------- */
/* A caller's output struct must stay untouched by a failed call: fill it with a pattern and
 * compare afterwards. */
#define POISON(x) memset(&(x), 0xab, sizeof(x))
static bool poisoned(const void *p, size_t size)
{
    const unsigned char *c = p;
    for (size_t i = 0; i < size; i++)
        if (c[i] != 0xab)
            return false;
    return true;
}
#define UNTOUCHED(x)                                                                          \
    ck_assert_msg(poisoned(&(x), sizeof(x)), "line %d: %s was written", __LINE__, #x)

static void write_file(const char *path, const void *data, size_t len)
{
    FILE *f = fopen(path, "wb");
    ck_assert_ptr_nonnull(f);
    ck_assert_uint_eq(fwrite(data, 1, len, f), len);
    fclose(f);
}

START_TEST(idx_misuse)
{
    /* A valid 1-d IDX array of 3 bytes: magic 00 00 08 01, dim 3, data. */
    static const uint8_t good[] = {0, 0, 8, 1, 0, 0, 0, 3, 7, 8, 9};
    tg_idx out;
    POISON(out);
    FAILS_NEG(tg_idx_parse(NULL, sizeof good, &out), TG_ERR_NULL);
    UNTOUCHED(out);
    FAILS_NEG(tg_idx_parse(good, sizeof good, NULL), TG_ERR_NULL);
    FAILS_NEG(tg_idx_parse(good, 0, &out), TG_ERR_FORMAT);
    FAILS_NEG(tg_idx_parse(good, 3, &out), TG_ERR_FORMAT);
    FAILS_NEG(tg_idx_parse(good, sizeof good - 1, &out), TG_ERR_FORMAT); /* short data */
    static const uint8_t longer[] = {0, 0, 8, 1, 0, 0, 0, 3, 7, 8, 9, 10};
    FAILS_NEG(tg_idx_parse(longer, sizeof longer, &out), TG_ERR_FORMAT);
    static const uint8_t bad_magic[] = {1, 0, 8, 1, 0, 0, 0, 3, 7, 8, 9};
    FAILS_NEG(tg_idx_parse(bad_magic, sizeof bad_magic, &out), TG_ERR_FORMAT);
    static const uint8_t floats[] = {0, 0, 0x0d, 1, 0, 0, 0, 1, 0, 0, 0, 0};
    FAILS_NEG(tg_idx_parse(floats, sizeof floats, &out), TG_ERR_FORMAT);
    static const uint8_t no_dims[] = {0, 0, 8, 0, 5};
    FAILS_NEG(tg_idx_parse(no_dims, sizeof no_dims, &out), ANY_ERROR);
    static const uint8_t many_dims[] = {0, 0, 8, 200, 0, 0, 0, 1};
    FAILS_NEG(tg_idx_parse(many_dims, sizeof many_dims, &out), TG_ERR_FORMAT);
    static const uint8_t huge[] = {0,    0,    8,    3,    0xff, 0xff, 0xff, 0xff, 0xff, 0xff,
                                   0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 1,    2};
    FAILS_NEG(tg_idx_parse(huge, sizeof huge, &out), TG_ERR_FORMAT);
    static const uint8_t bad_gzip[] = {0x1f, 0x8b, 8, 0, 0, 0, 0, 0, 0, 3, 1, 2, 3, 4};
    FAILS_NEG(tg_idx_parse(bad_gzip, sizeof bad_gzip, &out), TG_ERR_FORMAT);
    UNTOUCHED(out);

    FAILS_NEG(tg_idx_load(NULL, &out), TG_ERR_NULL);
    char dir[512], path[1024];
    scratch_make(dir, sizeof dir, "tg_misuse_idx");
    snprintf(path, sizeof path, "%s/good.idx", dir);
    write_file(path, good, sizeof good);
    FAILS_NEG(tg_idx_load(path, NULL), TG_ERR_NULL);
    FAILS_NEG(tg_idx_load(dir, &out), TG_ERR_IO); /* a directory */
    snprintf(path, sizeof path, "%s/missing.idx", dir);
    FAILS_NEG(tg_idx_load(path, &out), TG_ERR_IO);
    MESSAGE_HAS("missing.idx");
    snprintf(path, sizeof path, "%s/bad.idx", dir);
    write_file(path, bad_magic, sizeof bad_magic);
    FAILS_NEG(tg_idx_load(path, &out), TG_ERR_FORMAT);
    UNTOUCHED(out);

    tg_idx_free(NULL); /* documented as fine */
    tg_idx empty = {0};
    tg_idx_free(&empty);
    SUCCEEDS(tg_idx_parse(good, sizeof good, &out));
    tg_idx_free(&out);
    ck_assert_ptr_null(out.data); /* left empty */
    ck_assert_uint_eq(out.size, 0);
    tg_idx_free(&out); /* twice is harmless */
    scratch_remove(dir);
}
END_TEST

START_TEST(mnist_misuse)
{
    tg_mnist m;
    POISON(m);
    char dir[512];
    scratch_make(dir, sizeof dir, "tg_misuse_mnist");
    FAILS_NEG(tg_mnist_load(NULL, "train", &m), TG_ERR_NULL);
    FAILS_NEG(tg_mnist_load(dir, NULL, &m), TG_ERR_NULL);
    FAILS_NEG(tg_mnist_load(dir, "train", NULL), TG_ERR_NULL);
    FAILS_NEG(tg_mnist_load(dir, "valid", &m), TG_ERR_ARG);
    FAILS_NEG(tg_mnist_load(dir, "../train", &m), TG_ERR_ARG);
    FAILS_NEG(tg_mnist_load(dir, "train", &m), TG_ERR_IO); /* no files there */
    UNTOUCHED(m);
    tg_mnist_free(NULL); /* documented as fine */
    scratch_remove(dir);

    /* gather from a small hand-made set: 3 examples of 2 x 2 pixels. */
    uint8_t images[12] = {0, 255, 0, 255, 10, 20, 30, 40, 1, 2, 3, 4};
    uint8_t labels[3] = {1, 7, 9};
    tg_mnist set = {.count = 3, .rows = 2, .cols = 2, .images = images, .labels = labels};
    float img_out[8], lab_out[2];
    POISON(img_out);
    POISON(lab_out);
    const int64_t idx[2] = {0, 2};
    FAILS_NEG(tg_mnist_gather(NULL, idx, 2, 0, 1, img_out, lab_out), TG_ERR_NULL);
    FAILS_NEG(tg_mnist_gather(&set, NULL, 2, 0, 1, img_out, lab_out), TG_ERR_NULL);
    FAILS_NEG(tg_mnist_gather(&set, idx, -1, 0, 1, img_out, lab_out), TG_ERR_ARG);
    FAILS_NEG(tg_mnist_gather(&set, (const int64_t[]){0, 3}, 2, 0, 1, img_out, lab_out),
              TG_ERR_ARG);
    FAILS_NEG(tg_mnist_gather(&set, (const int64_t[]){0, -1}, 2, 0, 1, img_out, lab_out),
              TG_ERR_ARG);
    FAILS_NEG(tg_mnist_gather(&set, idx, 2, 0, 0, img_out, lab_out), TG_ERR_ARG);
    FAILS_NEG(tg_mnist_gather(&set, idx, 2, 0, NAN, img_out, lab_out), TG_ERR_ARG);
    FAILS_NEG(tg_mnist_gather(&set, idx, 2, NAN, 1, img_out, lab_out), TG_ERR_ARG);
    tg_mnist broken = set;
    broken.images = NULL;
    FAILS_NEG(tg_mnist_gather(&broken, idx, 2, 0, 1, img_out, lab_out), TG_ERR_NULL);
    broken = set;
    broken.labels = NULL;
    FAILS_NEG(tg_mnist_gather(&broken, idx, 2, 0, 1, img_out, lab_out), TG_ERR_NULL);
    broken = set;
    broken.rows = -2;
    FAILS_NEG(tg_mnist_gather(&broken, idx, 2, 0, 1, img_out, lab_out), TG_ERR_ARG);
    UNTOUCHED(img_out);
    UNTOUCHED(lab_out);
    /* Either output may be NULL (documented). */
    SUCCEEDS(tg_mnist_gather(&set, idx, 2, 0, 1, NULL, lab_out));
    ck_assert_float_eq(lab_out[1], 9);
    SUCCEEDS(tg_mnist_gather(&set, idx, 2, 0, 1, img_out, NULL));
    SUCCEEDS(tg_mnist_gather(&set, NULL, 0, 0, 1, NULL, NULL));
}
END_TEST

/* ---- I/O: batches ------------------------------------------------------------------------- */
START_TEST(batches_misuse)
{
    FAILS_NULL(tg_batches_new(-1, 4, 1, false), TG_ERR_ARG);
    FAILS_NULL(tg_batches_new(10, 0, 1, false), TG_ERR_ARG);
    FAILS_NULL(tg_batches_new(10, -4, 1, true), TG_ERR_ARG);
    tg_batches_free(NULL); /* documented as fine */

    tg_batches *b = tg_batches_new(10, 4, 1, false);
    tg_batches *ref = tg_batches_new(10, 4, 1, false);
    ck_assert_ptr_nonnull(b);
    const int64_t *idx = NULL;
    FAILS_NEG(tg_batches_next(NULL, &idx), TG_ERR_NULL);
    FAILS_NEG(tg_batches_next(b, NULL), TG_ERR_NULL);
    FAILS_NEG(tg_batches_epoch(NULL), TG_ERR_NULL);
    FAILS_NEG(tg_batches_count(NULL), TG_ERR_NULL);

    tg_batches_state st;
    POISON(st);
    FAILS_NEG(tg_batches_get_state(NULL, &st), TG_ERR_NULL);
    UNTOUCHED(st);
    FAILS_NEG(tg_batches_get_state(b, NULL), TG_ERR_NULL);
    SUCCEEDS(tg_batches_get_state(b, &st));
    FAILS_NEG(tg_batches_set_state(NULL, &st), TG_ERR_NULL);
    FAILS_NEG(tg_batches_set_state(b, NULL), TG_ERR_NULL);

    /* States from iterators over another n, batch size or drop_last; fields out of range. */
    tg_batches *other_n = tg_batches_new(11, 4, 1, false);
    tg_batches *other_bs = tg_batches_new(10, 5, 1, false);
    tg_batches *other_drop = tg_batches_new(10, 4, 1, true);
    tg_batches_state s2;
    SUCCEEDS(tg_batches_get_state(other_n, &s2));
    FAILS_NEG(tg_batches_set_state(b, &s2), TG_ERR_ARG);
    SUCCEEDS(tg_batches_get_state(other_bs, &s2));
    FAILS_NEG(tg_batches_set_state(b, &s2), TG_ERR_ARG);
    SUCCEEDS(tg_batches_get_state(other_drop, &s2));
    FAILS_NEG(tg_batches_set_state(b, &s2), TG_ERR_ARG);
    s2 = st;
    s2.position = 11;
    FAILS_NEG(tg_batches_set_state(b, &s2), TG_ERR_ARG);
    s2 = st;
    s2.position = -1;
    FAILS_NEG(tg_batches_set_state(b, &s2), TG_ERR_ARG);
    s2 = st;
    s2.epoch = -1;
    FAILS_NEG(tg_batches_set_state(b, &s2), TG_ERR_ARG);
    s2 = st;
    s2.drop_last = 7;
    FAILS_NEG(tg_batches_set_state(b, &s2), TG_ERR_ARG);
    s2 = st;
    memset(s2.rng, 0, sizeof s2.rng); /* xoshiro's one forbidden state */
    FAILS_NEG(tg_batches_set_state(b, &s2), TG_ERR_ARG);
    /* b still serves what an untouched iterator serves. */
    const int64_t *want = NULL;
    for (int k = 0; k < 5; k++) {
        int64_t n = tg_batches_next(b, &idx), nw = tg_batches_next(ref, &want);
        ck_assert_int_eq(n, nw);
        for (int64_t i = 0; i < n; i++)
            ck_assert_int_eq(idx[i], want[i]);
    }

    /* to_string / from_string. */
    char buf[256];
    FAILS_NEG(tg_batches_state_to_string(NULL, buf, sizeof buf), TG_ERR_NULL);
    FAILS_NEG(tg_batches_state_to_string(&st, NULL, 16), TG_ERR_NULL);
    tg_clear_error();
    int need = tg_batches_state_to_string(&st, NULL, 0); /* like snprintf */
    ck_assert_int_gt(need, 0);
    ck_assert_int_eq(tg_batches_state_to_string(&st, buf, sizeof buf), need);
    char small[4];
    POISON(small);
    ck_assert_int_eq(tg_batches_state_to_string(&st, small, sizeof small), need);
    ck_assert_int_eq(small[sizeof small - 1], '\0');

    tg_batches_state parsed;
    POISON(parsed);
    FAILS_NEG(tg_batches_state_from_string(NULL, &parsed), TG_ERR_NULL);
    FAILS_NEG(tg_batches_state_from_string(buf, NULL), TG_ERR_NULL);
    FAILS_NEG(tg_batches_state_from_string("", &parsed), TG_ERR_FORMAT);
    FAILS_NEG(tg_batches_state_from_string("garbage", &parsed), TG_ERR_FORMAT);
    char cut[300];
    snprintf(cut, sizeof cut, "%.*s", need / 2, buf);
    FAILS_NEG(tg_batches_state_from_string(cut, &parsed), TG_ERR_FORMAT);
    snprintf(cut, sizeof cut, "%s junk", buf);
    FAILS_NEG(tg_batches_state_from_string(cut, &parsed), TG_ERR_FORMAT);
    UNTOUCHED(parsed);
    SUCCEEDS(tg_batches_state_from_string(buf, &parsed));
    ck_assert_int_eq(parsed.n, 10);

    tg_batches_free(other_n);
    tg_batches_free(other_bs);
    tg_batches_free(other_drop);
    tg_batches_free(ref);
    tg_batches_free(b);
}
END_TEST

/* ---- I/O: checkpoints --------------------------------------------------------------------- */
static float ck_a[6] = {1, 2, 3, 4, 5, 6};
static double ck_b[4] = {-1, -2, -3, -4};

static tg_ckpt_entry entry(const char *name, tg_dtype dt, int ndim, const int64_t *shape,
                           void *data)
{
    tg_ckpt_entry e = {.name = name, .dtype = dt, .ndim = ndim, .data = data};
    for (int i = 0; i < ndim && i < TG_MAX_DIMS; i++)
        e.shape[i] = shape[i];
    return e;
}

START_TEST(checkpoint_save_misuse)
{
    char dir[512], path[1024];
    scratch_make(dir, sizeof dir, "tg_misuse_save");
    snprintf(path, sizeof path, "%s/model.safetensors", dir);
    tg_ckpt_entry good[2] = {entry("a", TG_F32, 2, SHAPE(2, 3), ck_a),
                             entry("b", TG_F64, 1, SHAPE(4), ck_b)};
    const char *keys[1] = {"step"}, *values[1] = {"3"};

    FAILS_NEG(tg_checkpoint_save(NULL, good, 2, keys, values, 1), TG_ERR_NULL);
    FAILS_NEG(tg_checkpoint_save(path, NULL, 2, keys, values, 1), TG_ERR_NULL);
    FAILS_NEG(tg_checkpoint_save(path, good, -1, keys, values, 1), TG_ERR_ARG);
    FAILS_NEG(tg_checkpoint_save(path, good, 2, NULL, values, 1), TG_ERR_NULL);
    FAILS_NEG(tg_checkpoint_save(path, good, 2, keys, NULL, 1), TG_ERR_NULL);
    FAILS_NEG(tg_checkpoint_save(path, good, 2, keys, values, -1), TG_ERR_ARG);
    FAILS_NEG(tg_checkpoint_save(path, good, 2, (const char *[]){NULL}, values, 1), TG_ERR_NULL);
    FAILS_NEG(tg_checkpoint_save(path, good, 2, keys, (const char *[]){NULL}, 1), TG_ERR_NULL);
    FAILS_NEG(tg_checkpoint_save(path, good, 2, (const char *[]){TG_CKPT_CRC_KEY}, values, 1),
              TG_ERR_ARG);
    FAILS_NEG(tg_checkpoint_save(path, good, 2, (const char *[]){"k", "k"},
                                 (const char *[]){"1", "2"}, 2),
              TG_ERR_ARG);
    FAILS_NEG(tg_checkpoint_save(path, good, 2, keys, (const char *[]){"\xff\xfe"}, 1),
              TG_ERR_ARG);

    /* One bad entry at a time. */
    struct {
        tg_ckpt_entry e;
        int code;
    } bad[] = {
        {entry(NULL, TG_F32, 1, SHAPE(4), ck_a), ANY_ERROR},
        {entry("", TG_F32, 1, SHAPE(4), ck_a), TG_ERR_ARG},
        {entry("__metadata__", TG_F32, 1, SHAPE(4), ck_a), TG_ERR_ARG},
        {entry("a", TG_F32, 1, SHAPE(4), ck_a), TG_ERR_ARG}, /* clashes with good[0] */
        {entry("bad\xc3", TG_F32, 1, SHAPE(4), ck_a), TG_ERR_ARG},
        {entry("c", TG_F32, 1, SHAPE(4), NULL), TG_ERR_NULL},
        {entry("c", (tg_dtype)2, 1, SHAPE(4), ck_a), TG_ERR_DTYPE},
        {entry("c", TG_F32, -1, SHAPE(4), ck_a), TG_ERR_SHAPE},
        {entry("c", TG_F32, TG_MAX_DIMS + 1, SHAPE(1, 1, 1, 1, 1, 1, 1, 1), ck_a), TG_ERR_SHAPE},
        {entry("c", TG_F32, 1, SHAPE(-4), ck_a), TG_ERR_SHAPE},
        {entry("c", TG_F32, 3, SHAPE(INT64_MAX, INT64_MAX, 2), ck_a), TG_ERR_SHAPE},
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        tg_ckpt_entry list[2] = {good[0], bad[i].e};
        FAILS_NEG(tg_checkpoint_save(path, list, 2, keys, values, 1), bad[i].code);
    }
    /* Nothing was written, not even a temporary file. */
    ck_assert_int_eq(scratch_count(dir, NULL), 0);
    snprintf(path, sizeof path, "%s/no/such/dir/model.safetensors", dir);
    FAILS_NEG(tg_checkpoint_save(path, good, 2, keys, values, 1), TG_ERR_IO);
    FAILS_NEG(tg_checkpoint_save(dir, good, 2, keys, values, 1), TG_ERR_IO); /* a directory */
    ck_assert_int_eq(scratch_count(dir, NULL), 0);
    scratch_remove(dir);
}
END_TEST

/* Reads the whole file into a malloc'ed buffer. */
static uint8_t *slurp(const char *path, size_t *len)
{
    FILE *f = fopen(path, "rb");
    ck_assert_ptr_nonnull(f);
    fseek(f, 0, SEEK_END);
    long size = ftell(f);
    fseek(f, 0, SEEK_SET);
    uint8_t *buf = malloc((size_t)size);
    ck_assert_ptr_nonnull(buf);
    ck_assert_uint_eq(fread(buf, 1, (size_t)size, f), (size_t)size);
    fclose(f);
    *len = (size_t)size;
    return buf;
}

START_TEST(checkpoint_read_misuse)
{
    char dir[512], path[1024], missing[1100];
    scratch_make(dir, sizeof dir, "tg_misuse_read");
    snprintf(path, sizeof path, "%s/model.safetensors", dir);
    snprintf(missing, sizeof missing, "%s/missing.safetensors", dir);
    tg_ckpt_entry good[2] = {entry("a", TG_F32, 2, SHAPE(2, 3), ck_a),
                             entry("b", TG_F64, 1, SHAPE(4), ck_b)};
    const char *keys[1] = {"step"}, *values[1] = {"3"};
    SUCCEEDS(tg_checkpoint_save(path, good, 2, keys, values, 1));

    /* load and read share their rules: a missing name, another dtype or shape anywhere in
     * the list leaves every buffer untouched. */
    float a_buf[6];
    double b_buf[4];
    tg_checkpoint *c = NULL;
    SUCCEEDS(tg_checkpoint_open(path, &c));
    ck_assert_ptr_nonnull(c);
    struct {
        tg_ckpt_entry e;
        int code;
    } bad[] = {
        {entry("nope", TG_F64, 1, SHAPE(4), b_buf), ANY_ERROR},
        {entry("b", TG_F32, 1, SHAPE(4), b_buf), TG_ERR_DTYPE},
        {entry("b", TG_F64, 1, SHAPE(5), b_buf), TG_ERR_SHAPE},
        {entry("b", TG_F64, 2, SHAPE(2, 2), b_buf), TG_ERR_SHAPE},
        {entry("b", TG_F64, 1, SHAPE(4), NULL), TG_ERR_NULL},
        {entry(NULL, TG_F64, 1, SHAPE(4), b_buf), ANY_ERROR},
        {entry("b", (tg_dtype)3, 1, SHAPE(4), b_buf), TG_ERR_DTYPE},
        {entry("b", TG_F64, -1, SHAPE(4), b_buf), TG_ERR_SHAPE},
        {entry("b", TG_F64, TG_MAX_DIMS + 1, SHAPE(4, 1, 1, 1, 1, 1, 1, 1), b_buf), TG_ERR_SHAPE},
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        tg_ckpt_entry list[2] = {entry("a", TG_F32, 2, SHAPE(2, 3), a_buf), bad[i].e};
        POISON(a_buf);
        POISON(b_buf);
        FAILS_NEG(tg_checkpoint_load(path, list, 2), bad[i].code);
        UNTOUCHED(a_buf);
        UNTOUCHED(b_buf);
        FAILS_NEG(tg_checkpoint_read(c, list, 2), bad[i].code);
        UNTOUCHED(a_buf);
        UNTOUCHED(b_buf);
    }
    tg_ckpt_entry one = entry("a", TG_F32, 2, SHAPE(2, 3), a_buf);
    POISON(a_buf);
    FAILS_NEG(tg_checkpoint_load(NULL, &one, 1), TG_ERR_NULL);
    FAILS_NEG(tg_checkpoint_load(path, NULL, 1), TG_ERR_NULL);
    FAILS_NEG(tg_checkpoint_load(path, &one, -1), TG_ERR_ARG);
    FAILS_NEG(tg_checkpoint_load(missing, &one, 1), TG_ERR_IO);
    FAILS_NEG(tg_checkpoint_load(dir, &one, 1), TG_ERR_IO);
    FAILS_NEG(tg_checkpoint_read(NULL, &one, 1), TG_ERR_NULL);
    FAILS_NEG(tg_checkpoint_read(c, NULL, 1), TG_ERR_NULL);
    FAILS_NEG(tg_checkpoint_read(c, &one, -1), TG_ERR_ARG);
    UNTOUCHED(a_buf);

    /* open and parse: NULLs, missing files, and malformed content leave *out alone. */
    tg_checkpoint *untouched = (tg_checkpoint *)(uintptr_t)0x1234;
    tg_checkpoint *out = untouched;
    FAILS_NEG(tg_checkpoint_open(NULL, &out), TG_ERR_NULL);
    FAILS_NEG(tg_checkpoint_open(path, NULL), TG_ERR_NULL);
    FAILS_NEG(tg_checkpoint_open(missing, &out), TG_ERR_IO);
    FAILS_NEG(tg_checkpoint_open(dir, &out), TG_ERR_IO);
    size_t len;
    uint8_t *bytes = slurp(path, &len);
    FAILS_NEG(tg_checkpoint_parse(NULL, len, &out), TG_ERR_NULL);
    FAILS_NEG(tg_checkpoint_parse(bytes, len, NULL), TG_ERR_NULL);
    FAILS_NEG(tg_checkpoint_parse(bytes, 0, &out), TG_ERR_FORMAT);
    FAILS_NEG(tg_checkpoint_parse(bytes, 7, &out), TG_ERR_FORMAT);
    FAILS_NEG(tg_checkpoint_parse(bytes, len - 1, &out), TG_ERR_FORMAT);
    bytes[len - 1] ^= 0x40; /* the CRC catches a flipped data bit */
    FAILS_NEG(tg_checkpoint_parse(bytes, len, &out), TG_ERR_FORMAT);
    bytes[len - 1] ^= 0x40;
    uint8_t saved = bytes[0];
    bytes[0] = 0xff; /* a header length past the end */
    FAILS_NEG(tg_checkpoint_parse(bytes, len, &out), TG_ERR_FORMAT);
    bytes[0] = saved;
    bytes[8] = '['; /* not an object */
    FAILS_NEG(tg_checkpoint_parse(bytes, len, &out), TG_ERR_FORMAT);
    ck_assert_ptr_eq(out, untouched);
    free(bytes);

    /* Inspection: NULL checkpoints, indices out of range, NULL outputs. */
    FAILS_NEG(tg_checkpoint_count(NULL), TG_ERR_NULL);
    ck_assert_int_eq(tg_checkpoint_count(c), 2);
    tg_ckpt_entry e;
    POISON(e);
    FAILS_NEG(tg_checkpoint_tensor(NULL, 0, &e), TG_ERR_NULL);
    FAILS_NEG(tg_checkpoint_tensor(c, 0, NULL), TG_ERR_NULL);
    FAILS_NEG(tg_checkpoint_tensor(c, -1, &e), TG_ERR_ARG);
    FAILS_NEG(tg_checkpoint_tensor(c, 2, &e), TG_ERR_ARG);
    UNTOUCHED(e);
    /* find answers -1 (documented) for an absent name, and for a NULL checkpoint or name. */
    ck_assert_int_eq(tg_checkpoint_find(NULL, "a"), -1);
    ck_assert_int_eq(tg_checkpoint_find(c, NULL), -1);
    ck_assert_int_eq(tg_checkpoint_find(c, "nope"), -1);
    ck_assert_int_eq(tg_checkpoint_find(c, "b"), 1);
    FAILS_NEG(tg_checkpoint_meta_count(NULL), TG_ERR_NULL);
    int nmeta = tg_checkpoint_meta_count(c);
    ck_assert_int_ge(nmeta, 1);
    const char *key = "k", *value = "v";
    FAILS_NEG(tg_checkpoint_meta_at(NULL, 0, &key, &value), TG_ERR_NULL);
    FAILS_NEG(tg_checkpoint_meta_at(c, -1, &key, &value), TG_ERR_ARG);
    FAILS_NEG(tg_checkpoint_meta_at(c, nmeta, &key, &value), TG_ERR_ARG);
    ck_assert_str_eq(key, "k");
    ck_assert_str_eq(value, "v");
    /* Either output of meta_at may be NULL, or both: never a crash. */
    tg_clear_error();
    int r1 = tg_checkpoint_meta_at(c, 0, NULL, &value);
    int r2 = tg_checkpoint_meta_at(c, 0, &key, NULL);
    ck_assert(r1 == 0 || (r1 < 0 && tg_last_error()[0]));
    ck_assert(r2 == 0 || (r2 < 0 && tg_last_error()[0]));
    /* meta answers NULL (documented) for an absent key, and for a NULL checkpoint or key. */
    ck_assert_ptr_null(tg_checkpoint_meta(NULL, "step"));
    ck_assert_ptr_null(tg_checkpoint_meta(c, NULL));
    ck_assert_ptr_null(tg_checkpoint_meta(c, "absent"));
    ck_assert_str_eq(tg_checkpoint_meta(c, "step"), "3");

    tg_checkpoint_free(NULL); /* documented as fine */
    tg_checkpoint_free(c);
    scratch_remove(dir);
}
END_TEST


/* ---- tracing and plans ---------------------------------------------------------------------- */
START_TEST(compile_misuse)
{
    ck_assert(!tg_tape_tracing(NULL));
    FAILS_NEG(tg_tape_trace(NULL, true), TG_ERR_NULL);
    tg_tape *t = tg_tape_new();
    /* Placeholders exist only while tracing. */
    FAILS_NULL(tg_placeholder(t, "x", TG_F32, 1, SHAPE(3)), TG_ERR_TAPE);
    SUCCEEDS(tg_tape_trace(t, true));
    ck_assert(tg_tape_tracing(t));
    FAILS_NULL(tg_placeholder(NULL, "x", TG_F32, 1, SHAPE(3)), TG_ERR_NULL);
    FAILS_NULL(tg_placeholder(t, NULL, TG_F32, 1, SHAPE(3)), TG_ERR_NULL);
    FAILS_NULL(tg_placeholder(t, "x", TG_F32, 1, NULL), TG_ERR_NULL);
    FAILS_NULL(tg_placeholder(t, "", TG_F32, 1, SHAPE(3)), TG_ERR_ARG);
    FAILS_NULL(tg_placeholder(t, "x", (tg_dtype)7, 1, SHAPE(3)), TG_ERR_DTYPE);
    FAILS_NULL(tg_placeholder(t, "x", TG_F32, 1, SHAPE(-2)), TG_ERR_SHAPE);
    FAILS_NULL(tg_placeholder(t, "x", TG_F32, TG_MAX_DIMS + 1, SHAPE(1, 1, 1, 1, 1, 1, 1, 1, 1)),
               TG_ERR_SHAPE);
    tg_tensor *x = tg_placeholder(t, "x", TG_F32, 1, SHAPE(3));
    ck_assert_ptr_nonnull(x);
    tg_tensor *y = tg_exp(x);
    /* A traced tensor has no value. */
    ck_assert_ptr_null(tg_data(y));
    FAILS_NAN(tg_get(y, 0), TG_ERR_TAPE);
    FAILS_NAN(tg_item(tg_sum(y, 0, NULL, false)), TG_ERR_TAPE);
    tg_rng rng;
    tg_rng_seed(&rng, 1);
    FAILS_NULL(tg_dropout(y, 0.5, true, &rng), TG_ERR_TAPE); /* its mask would be a constant */
    SUCCEEDS(tg_tape_trace(t, false));

    FAILS_NULL(tg_compile(NULL, 1, &y, NULL), TG_ERR_NULL);
    FAILS_NULL(tg_compile(t, 1, NULL, NULL), TG_ERR_ARG);
    FAILS_NULL(tg_compile(t, -1, &y, NULL), TG_ERR_ARG);
    tg_tensor *none = NULL;
    FAILS_NULL(tg_compile(t, 1, &none, NULL), TG_ERR_NULL);
    tg_tensor *foreign = tg_scalar(tape, TG_F32, 1.0);
    FAILS_NULL(tg_compile(t, 1, &foreign, NULL), TG_ERR_TAPE);
    FAILS_NULL(tg_compile(t, 1, &y, &(tg_compile_opts){.disable = "cse,nosuchpass"}), TG_ERR_ARG);
    FAILS_NULL(tg_compile(t, 1, &y, &(tg_compile_opts){.dump_dir = "/nonexistent/dir"}),
               TG_ERR_IO);

    tg_plan *plan = tg_compile(t, 1, &y, NULL);
    ck_assert_msg(plan != NULL, "%s", tg_last_error());
    FAILS_NEG(tg_plan_run(NULL), TG_ERR_NULL);
    FAILS_NEG(tg_plan_run(plan), TG_ERR_ARG); /* input 'x' is not set */
    float data[3] = {0, 1, 2};
    FAILS_NEG(tg_plan_set_input(NULL, "x", data), TG_ERR_NULL);
    FAILS_NEG(tg_plan_set_input(plan, NULL, data), TG_ERR_NULL);
    FAILS_NEG(tg_plan_set_input(plan, "x", NULL), TG_ERR_NULL);
    FAILS_NEG(tg_plan_set_input(plan, "nosuch", data), TG_ERR_ARG);
    SUCCEEDS(tg_plan_set_input(plan, "x", data));
    if (tg_set_num_threads(2) == TG_OK) { /* more threads than the plan was compiled for */
        FAILS_NEG(tg_plan_run(plan), TG_ERR_ARG);
        tg_set_num_threads(1);
    }
    SUCCEEDS(tg_plan_run(plan));
    FAILS_NULL(tg_plan_output(NULL, 0), TG_ERR_NULL);
    FAILS_NULL(tg_plan_output(plan, 1), TG_ERR_ARG);
    FAILS_NULL(tg_plan_output(plan, -1), TG_ERR_ARG);
    ck_assert_float_eq_tol(((const float *)tg_plan_output(plan, 0))[1], expf(1), 1e-6);
    FAILS_NEG(tg_plan_stages(NULL, 0, NULL), TG_ERR_NULL);
    ck_assert_int_gt(tg_plan_stages(plan, 99, NULL), 1); /* out of range: just the count */
    ck_assert_uint_eq(tg_plan_arena_bytes(NULL), 0);
    ck_assert_uint_eq(tg_plan_unplanned_bytes(NULL), 0);
    ck_assert_uint_gt(tg_plan_unplanned_bytes(plan), 0);
    ck_assert_uint_le(tg_plan_arena_bytes(plan), tg_plan_unplanned_bytes(plan));
    tg_plan_free(plan);
    tg_plan_free(NULL); /* documented as fine */
    tg_tape_free(t);
}
END_TEST

/* ---- coverage ----------------------------------------------------------------------------- */
/* Every public function this file calls. Keep it honest: list a name only when a test above
 * calls it. */
static const char *const exercised[] = {
    /* version, errors */
    "tg_version", "tg_last_error", "tg_last_error_code", "tg_clear_error", "tg_dtype_name",
    /* tapes */
    "tg_tape_new", "tg_tape_free", "tg_tape_mark", "tg_tape_rewind", "tg_tape_size",
    "tg_tape_set_scope", "tg_tape_scope", "tg_tape_set_check_finite", "tg_tape_checks_finite",
    "tg_tape_bytes", "tg_tape_node",
    /* threads */
    "tg_set_num_threads", "tg_num_threads",
    /* inspection */
    "tg_tape_of", "tg_dtype_of", "tg_ndim", "tg_shape", "tg_dim", "tg_numel", "tg_data",
    "tg_data_const", "tg_get", "tg_item", "tg_op_name_of", "tg_set_label", "tg_label",
    /* leaves */
    "tg_zeros", "tg_full", "tg_scalar", "tg_from_data", "tg_arange",
    /* random numbers */
    "tg_rng_seed", "tg_rng_next", "tg_rng_uniform", "tg_rng_normal", "tg_rng_below",
    "tg_rand_uniform", "tg_rand_normal",
    /* primitives and compositions */
    "tg_neg", "tg_exp", "tg_log", "tg_sqrt", "tg_recip", "tg_add", "tg_sub", "tg_mul", "tg_div",
    "tg_maximum", "tg_lt", "tg_eq", "tg_where", "tg_sum", "tg_max", "tg_reshape", "tg_permute",
    "tg_expand", "tg_slice", "tg_pad", "tg_matmul", "tg_im2col", "tg_col2im", "tg_cast",
    "tg_detach", "tg_mean", "tg_square", "tg_add_scalar", "tg_mul_scalar", "tg_gt",
    "tg_transpose", "tg_flatten",
    /* side effects, reverse mode, gradient check */
    "tg_assign", "tg_tape_updates", "tg_grad", "tg_gradcheck",
    /* tracing and plans */
    "tg_tape_trace", "tg_tape_tracing", "tg_placeholder", "tg_compile", "tg_plan_set_input",
    "tg_plan_run", "tg_plan_output", "tg_plan_free", "tg_plan_stages", "tg_plan_arena_bytes",
    "tg_plan_unplanned_bytes",
    /* parameter lists, initialization */
    "tg_params_new", "tg_params_free", "tg_params_add", "tg_params_append", "tg_params_count",
    "tg_params_get", "tg_params_find", "tg_params_trainable", "tg_init_uniform",
    "tg_init_constant", "tg_fan_in", "tg_init_kaiming_uniform", "tg_init_default",
    /* layers as functions */
    "tg_conv2d", "tg_linear", "tg_batch_norm", "tg_max_pool2d", "tg_avg_pool2d", "tg_relu",
    "tg_dropout", "tg_dropout_mask", "tg_log_softmax", "tg_cross_entropy", "tg_labels_from_int",
    "tg_labels_from_u8",
    /* layer structs */
    "tg_conv2d_layer_init", "tg_conv2d_layer_forward", "tg_conv2d_layer_register",
    "tg_linear_layer_init", "tg_linear_layer_forward", "tg_linear_layer_register",
    "tg_batchnorm_layer_init", "tg_batchnorm_layer_forward", "tg_batchnorm_layer_register",
    /* optimizers */
    "tg_adam_defaults", "tg_adamw_defaults", "tg_sgd_new", "tg_adam_new", "tg_adamw_new",
    "tg_optim_step", "tg_optim_set_lr", "tg_optim_lr", "tg_optim_count", "tg_optim_state",
    "tg_optim_free",
    /* IDX, MNIST, batches */
    "tg_idx_parse", "tg_idx_load", "tg_idx_free", "tg_mnist_load", "tg_mnist_free",
    "tg_mnist_gather", "tg_batches_new", "tg_batches_free", "tg_batches_next",
    "tg_batches_epoch", "tg_batches_count", "tg_batches_get_state", "tg_batches_set_state",
    "tg_batches_state_to_string", "tg_batches_state_from_string",
    /* checkpoints */
    "tg_checkpoint_save", "tg_checkpoint_load", "tg_checkpoint_parse", "tg_checkpoint_open",
    "tg_checkpoint_free", "tg_checkpoint_count", "tg_checkpoint_tensor", "tg_checkpoint_find",
    "tg_checkpoint_read", "tg_checkpoint_meta_count", "tg_checkpoint_meta_at",
    "tg_checkpoint_meta",
};

static bool is_exercised(const char *name)
{
    for (size_t i = 0; i < sizeof exercised / sizeof exercised[0]; i++)
        if (strcmp(exercised[i], name) == 0)
            return true;
    return false;
}

/* Collects the names of functions declared in one header into missing (those not in the
 * table); returns how many declarations it saw. A declaration is a line that starts with a
 * type and has "tg_name(" on it; typedef lines and comment lines are skipped. */
static int scan_header(const char *path, char *missing, size_t cap)
{
    FILE *f = fopen(path, "r");
    ck_assert_msg(f != NULL, "cannot open %s", path);
    char line[1024];
    int seen = 0;
    bool in_comment = false;
    while (fgets(line, sizeof line, f)) {
        const char *p = line;
        if (in_comment) {
            if (strstr(p, "*/"))
                in_comment = false;
            continue;
        }
        if (strncmp(p, "/*", 2) == 0) {
            in_comment = strstr(p + 2, "*/") == NULL;
            continue;
        }
        /* A declaration starts at column 0 with an identifier (not a preprocessor line, not
         * a continuation, not a comment) and is not a typedef. */
        if (!(p[0] == '_' || (p[0] >= 'a' && p[0] <= 'z') || (p[0] >= 'A' && p[0] <= 'Z')))
            continue;
        if (strncmp(p, "typedef", 7) == 0 || strncmp(p, "//", 2) == 0)
            continue;
        /* The first "tg_name(" on the line whose name is preceded by a space or '*'. */
        const char *paren = strchr(p, '(');
        if (!paren)
            continue;
        const char *start = paren;
        while (start > p && (start[-1] == '_' || (start[-1] >= 'a' && start[-1] <= 'z') ||
                             (start[-1] >= 'A' && start[-1] <= 'Z') ||
                             (start[-1] >= '0' && start[-1] <= '9')))
            start--;
        if (start == p || strncmp(start, "tg_", 3) != 0 || (start[-1] != ' ' && start[-1] != '*'))
            continue;
        char name[128];
        size_t len = (size_t)(paren - start);
        ck_assert_uint_lt(len, sizeof name);
        memcpy(name, start, len);
        name[len] = '\0';
        seen++;
        if (!is_exercised(name) && strlen(missing) + len + 2 < cap) {
            strcat(missing, " ");
            strcat(missing, name);
        }
    }
    fclose(f);
    return seen;
}

START_TEST(every_public_function_is_exercised)
{
    const char *dir = getenv("TG_INCLUDE_DIR");
    ck_assert_msg(dir != NULL && *dir, "TG_INCLUDE_DIR is not set");
    static const char *const headers[] = {"tapegrad.h", "tapegrad_nn.h", "tapegrad_io.h"};
    char missing[8192] = "";
    int total = 0;
    for (size_t i = 0; i < 3; i++) {
        char path[2048];
        snprintf(path, sizeof path, "%s/%s", dir, headers[i]);
        int seen = scan_header(path, missing, sizeof missing);
        ck_assert_msg(seen > 10, "%s: only %d declarations found", path, seen);
        total += seen;
    }
    ck_assert_msg(missing[0] == '\0', "public functions with no misuse test (of %d):%s", total,
                  missing);
}
END_TEST

int main(void)
{
    Suite *s = suite_create("misuse");
    TCase *tc = tcase_create("misuse");
    tcase_add_checked_fixture(tc, setup, teardown);
    tcase_add_test(tc, errors_state);
    tcase_add_test(tc, tape_misuse);
    tcase_add_test(tc, threads_misuse);
    tcase_add_test(tc, inspection_misuse);
    tcase_add_test(tc, leaves_misuse);
    tcase_add_test(tc, rng_misuse);
    tcase_add_test(tc, unary_misuse);
    tcase_add_test(tc, binary_misuse);
    tcase_add_test(tc, reduction_misuse);
    tcase_add_test(tc, movement_misuse);
    tcase_add_test(tc, window_misuse);
    tcase_add_test(tc, assign_misuse);
    tcase_add_test(tc, grad_misuse);
    tcase_add_test(tc, gradcheck_misuse);
    tcase_add_test(tc, use_after_rewind);
    tcase_add_test(tc, params_misuse);
    tcase_add_test(tc, init_misuse);
    tcase_add_test(tc, conv_linear_misuse);
    tcase_add_test(tc, batch_norm_misuse);
    tcase_add_test(tc, pool_dropout_softmax_misuse);
    tcase_add_test(tc, cross_entropy_misuse);
    tcase_add_test(tc, layer_structs_misuse);
    tcase_add_test(tc, optim_new_misuse);
    tcase_add_test(tc, optim_step_misuse);
    tcase_add_test(tc, idx_misuse);
    tcase_add_test(tc, mnist_misuse);
    tcase_add_test(tc, batches_misuse);
    tcase_add_test(tc, checkpoint_save_misuse);
    tcase_add_test(tc, checkpoint_read_misuse);
    tcase_add_test(tc, compile_misuse);
    tcase_add_test(tc, every_public_function_is_exercised);
    suite_add_tcase(s, tc);
    return tg_run_suite(s);
}
