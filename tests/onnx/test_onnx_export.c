/* tg_export_onnx misused, and what it makes of layers the MNIST models do not use.
 *
 * The files written here are read back with protobuf-c's generated unpacker (the library's
 * own onnx.pb-c.h) to check the operators and their attributes; tests/onnx/check_onnx.py
 * checks the MNIST models' files with python3-onnx and OpenCV. */
#include "../testing.h"

#include "tapegrad_nn.h"
#include "tapegrad_onnx.h"
#include "onnx.pb-c.h"

#include <math.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>

static char dir[64];
static char path[128];
static tg_tape *tape;
static tg_rng rng;

static void setup(void)
{
    snprintf(dir, sizeof dir, "/tmp/tg_onnx_XXXXXX");
    ck_assert_ptr_nonnull(mkdtemp(dir));
    snprintf(path, sizeof path, "%s/model.onnx", dir);
    tape = tg_tape_new();
    tg_rng_seed(&rng, 7);
}

static void teardown(void)
{
    unlink(path);
    rmdir(dir);
    tg_tape_free(tape);
}

static tg_tensor *param(int ndim, const int64_t *shape)
{
    return tg_rand_normal(tape, &rng, TG_F32, ndim, shape, 0, 1);
}

/* The file's operators, space-separated. */
static void read_ops(char *ops, size_t size, Onnx__ModelProto **out)
{
    FILE *f = fopen(path, "rb");
    ck_assert_ptr_nonnull(f);
    static uint8_t buf[1 << 22];
    size_t len = fread(buf, 1, sizeof buf, f);
    fclose(f);
    Onnx__ModelProto *m = onnx__model_proto__unpack(NULL, len, buf);
    ck_assert_ptr_nonnull(m);
    ops[0] = '\0';
    for (size_t i = 0; i < m->graph->n_node; i++)
        snprintf(ops + strlen(ops), size - strlen(ops), "%s%s", i ? " " : "",
                 m->graph->node[i]->op_type);
    *out = m;
}

static const Onnx__AttributeProto *attr(const Onnx__NodeProto *n, const char *name)
{
    for (size_t i = 0; i < n->n_attribute; i++)
        if (strcmp(n->attribute[i]->name, name) == 0)
            return n->attribute[i];
    return NULL;
}

START_TEST(null_and_wrong_arguments)
{
    tg_tensor *w = param(2, SHAPE(3, 4));
    tg_tape_trace(tape, true);
    tg_tensor *x = tg_placeholder(tape, "x", TG_F32, 2, SHAPE(2, 4));
    tg_tensor *y = tg_linear(x, w, NULL);
    tg_tape_trace(tape, false);
    ck_assert_int_eq(tg_export_onnx(NULL, x, y, path, NULL), TG_ERR_NULL);
    ck_assert_ptr_nonnull(strstr(tg_last_error(), "tape is NULL"));
    ck_assert_int_eq(tg_export_onnx(tape, NULL, y, path, NULL), TG_ERR_NULL);
    ck_assert_ptr_nonnull(strstr(tg_last_error(), "input"));
    ck_assert_int_eq(tg_export_onnx(tape, x, NULL, path, NULL), TG_ERR_NULL);
    ck_assert_ptr_nonnull(strstr(tg_last_error(), "output"));
    ck_assert_int_eq(tg_export_onnx(tape, x, y, NULL, NULL), TG_ERR_NULL);
    ck_assert_ptr_nonnull(strstr(tg_last_error(), "path is NULL"));
    tg_onnx_meta bad[1] = {{"key", NULL}};
    tg_onnx_options opts = {.meta = bad, .n_meta = 1};
    ck_assert_int_eq(tg_export_onnx(tape, x, y, path, &opts), TG_ERR_NULL);
    /* the input must be the placeholder, the output traced */
    ck_assert_int_eq(tg_export_onnx(tape, w, y, path, NULL), TG_ERR_ARG);
    ck_assert_ptr_nonnull(strstr(tg_last_error(), "placeholder"));
    ck_assert_int_eq(tg_export_onnx(tape, x, w, path, NULL), TG_ERR_ARG);
    /* a directory that does not exist */
    ck_assert_int_eq(tg_export_onnx(tape, x, y, "/nonexistent/dir/m.onnx", NULL), TG_ERR_IO);
    ck_assert_ptr_nonnull(strstr(tg_last_error(), "/nonexistent/dir/m.onnx"));
    ck_assert_int_eq(access(path, F_OK), -1);
    /* and then it works */
    ck_assert_int_eq(tg_export_onnx(tape, x, y, path, NULL), 0);
    ck_assert_int_eq(tg_onnx_supported(), true);
}
END_TEST

START_TEST(unmappable_node_is_named)
{
    tg_tape_trace(tape, true);
    tg_tensor *x = tg_placeholder(tape, "x", TG_F32, 4, SHAPE(2, 3, 8, 8));
    tg_tape_set_scope(tape, "crop");
    tg_tensor *y = tg_exp(tg_slice(x, SHAPE(0, 0, 1, 1), SHAPE(2, 3, 7, 7)));
    tg_tape_set_scope(tape, NULL);
    tg_tape_trace(tape, false);
    ck_assert_int_eq(tg_export_onnx(tape, x, y, path, NULL), TG_ERR_ARG);
    const char *msg = tg_last_error();
    ck_assert_msg(strstr(msg, "(slice [2, 3, 6, 6], layer 'crop')") &&
                  strstr(msg, "has no ONNX operator"), "message: %s", msg);
    ck_assert_int_eq(access(path, F_OK), -1); /* nothing written */
}
END_TEST

START_TEST(training_mode_is_refused)
{
    tg_tensor *g = param(1, SHAPE(3)), *b = param(1, SHAPE(3));
    tg_tensor *mean = tg_zeros(tape, TG_F32, 1, SHAPE(3));
    tg_tensor *var = tg_full(tape, TG_F32, 1, SHAPE(3), 1);
    tg_tape_trace(tape, true);
    tg_tensor *x = tg_placeholder(tape, "x", TG_F32, 2, SHAPE(4, 3));
    tg_tensor *y = tg_batch_norm(x, g, b, mean, var, true, 0.9, 1e-5);
    tg_tape_trace(tape, false);
    ck_assert_int_eq(tg_export_onnx(tape, x, y, path, NULL), TG_ERR_ARG);
    ck_assert_msg(strstr(tg_last_error(), "training"), "message: %s", tg_last_error());
}
END_TEST

START_TEST(batch_axis_must_stay_first)
{
    tg_tape_trace(tape, true);
    tg_tensor *x = tg_placeholder(tape, "x", TG_F32, 2, SHAPE(2, 6));
    tg_tensor *y = tg_reshape(tg_exp(tg_reshape(x, 2, SHAPE(3, 4))), 2, SHAPE(2, 6));
    tg_tape_trace(tape, false);
    ck_assert_int_eq(tg_export_onnx(tape, x, y, path, NULL), TG_ERR_ARG);
    ck_assert_msg(strstr(tg_last_error(), "batch axis"), "message: %s", tg_last_error());
}
END_TEST

START_TEST(second_input_and_f64_are_refused)
{
    tg_tape_trace(tape, true);
    tg_tensor *x = tg_placeholder(tape, "x", TG_F32, 2, SHAPE(2, 6));
    tg_tensor *z = tg_placeholder(tape, "z", TG_F32, 2, SHAPE(2, 6));
    tg_tensor *y = tg_add(x, z);
    tg_tensor *d = tg_placeholder(tape, "d", TG_F64, 2, SHAPE(2, 6));
    tg_tensor *e = tg_exp(d);
    tg_tape_trace(tape, false);
    ck_assert_int_eq(tg_export_onnx(tape, x, y, path, NULL), TG_ERR_ARG);
    ck_assert_msg(strstr(tg_last_error(), "'z'"), "message: %s", tg_last_error());
    ck_assert_int_eq(tg_export_onnx(tape, d, e, path, NULL), TG_ERR_DTYPE);
}
END_TEST

/* Strided padded convolution with a bias, overlapping padded max pooling, padded average
 * pooling, a linear layer: each becomes one operator with the right attributes. */
START_TEST(layers_become_operators)
{
    tg_tensor *w1 = param(4, SHAPE(4, 2, 3, 3)), *b1 = param(1, SHAPE(4));
    tg_tensor *fw = param(2, SHAPE(5, 4 * 2 * 2)), *fb = param(1, SHAPE(5));
    tg_tape_trace(tape, true);
    tg_tensor *x = tg_placeholder(tape, "img", TG_F32, 4, SHAPE(3, 2, 15, 15));
    tg_tensor *h = tg_relu(tg_conv2d(x, w1, b1, 2, 1));       /* [3, 4, 8, 8] */
    h = tg_max_pool2d(h, 3, 2, 1);                            /* [3, 4, 4, 4] */
    h = tg_avg_pool2d(h, 2, 2, 1);                            /* [3, 4, 3, 3] */
    h = tg_avg_pool2d(h, 2, 1, 0);                            /* [3, 4, 2, 2] */
    tg_tensor *y = tg_linear(tg_flatten(h, 1), fw, fb);
    tg_tape_trace(tape, false);
    ck_assert_msg(tg_export_onnx(tape, x, y, path, NULL) == 0, "%s", tg_last_error());
    char ops[512];
    Onnx__ModelProto *m;
    read_ops(ops, sizeof ops, &m);
    ck_assert_str_eq(ops, "Conv Relu MaxPool Pad AveragePool AveragePool Flatten Gemm");
    Onnx__NodeProto **n = m->graph->node;
    ck_assert_int_eq(n[0]->n_input, 3); /* the bias */
    ck_assert_int_eq(attr(n[0], "strides")->ints[0], 2);
    ck_assert_int_eq(attr(n[0], "pads")->ints[3], 1);
    ck_assert_int_eq(attr(n[2], "kernel_shape")->ints[0], 3);
    ck_assert_int_eq(attr(n[2], "pads")->ints[0], 1);
    ck_assert_int_eq(attr(n[4], "pads")->ints[0], 0); /* padded by the Pad before it */
    ck_assert_int_eq(attr(n[5], "strides")->ints[1], 1);
    ck_assert_str_eq(m->graph->input[0]->name, "img");
    ck_assert_str_eq(m->graph->input[0]->type->tensor_type->shape->dim[0]->dim_param, "N");
    ck_assert_str_eq(m->graph->output[0]->name, "output");
    ck_assert_int_eq(m->opset_import[0]->version, TG_ONNX_OPSET);
    ck_assert_str_eq(m->producer_name, "tapegrad");
    onnx__model_proto__free_unpacked(m, NULL);
}
END_TEST

int main(void)
{
    Suite *s = suite_create("onnx_export");
    TCase *tc = tcase_create("onnx_export");
    tcase_add_checked_fixture(tc, setup, teardown);
    tcase_add_test(tc, null_and_wrong_arguments);
    tcase_add_test(tc, unmappable_node_is_named);
    tcase_add_test(tc, batch_axis_must_stay_first);
    tcase_add_test(tc, training_mode_is_refused);
    tcase_add_test(tc, second_input_and_f64_are_refused);
    tcase_add_test(tc, layers_become_operators);
    suite_add_tcase(s, tc);
    return tg_run_suite(s);
}
