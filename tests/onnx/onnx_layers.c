/* A model of the layers the MNIST models do not use, exported for OpenCV to run.
 *
 *   onnx_layers DIR
 *
 * Writes DIR/layers.onnx (strided padded convolution with a bias, ReLU, overlapping padded
 * max pooling, padded and overlapping average pooling, batch norm in evaluation, linear),
 * DIR/x.f32 (a random input [5, 2, 15, 15]) and DIR/y.f32 (tapegrad's output [5, 6], eager).
 * tests/onnx/check_layers.py compares. */
#include "tapegrad_nn.h"
#include "tapegrad_onnx.h"

#include <stdio.h>
#include <string.h>

#define N 5

static tg_tensor *forward(tg_tensor *x, tg_tensor *const *p)
{
    tg_tensor *h = tg_relu(tg_conv2d(x, p[0], p[1], 2, 1));  /* [N, 4, 8, 8] */
    h = tg_max_pool2d(h, 3, 2, 1);                           /* [N, 4, 4, 4] */
    h = tg_batch_norm(h, p[2], p[3], p[4], p[5], false, 0.9, 1e-5);
    h = tg_avg_pool2d(h, 2, 2, 1);                           /* [N, 4, 3, 3] */
    h = tg_avg_pool2d(h, 2, 1, 0);                           /* [N, 4, 2, 2] */
    return tg_linear(tg_flatten(h, 1), p[6], p[7]);         /* [N, 6] */
}

static int save(const char *dir, const char *name, tg_tensor *t)
{
    char path[1024];
    snprintf(path, sizeof path, "%s/%s", dir, name);
    FILE *f = fopen(path, "wb");
    size_t n = (size_t)tg_numel(t);
    int ok = f && fwrite(tg_data(t), sizeof(float), n, f) == n;
    return (f && fclose(f) == 0 && ok) ? 0 : -1;
}

int main(int argc, char **argv)
{
    if (argc != 2) {
        fprintf(stderr, "usage: onnx_layers DIR\n");
        return 2;
    }
    tg_tape *tape = tg_tape_new();
    tg_rng rng;
    tg_rng_seed(&rng, 11);
    const int64_t shapes[8][4] = {{4, 2, 3, 3}, {4}, {4}, {4}, {4}, {4}, {6, 16}, {6}};
    const int ndims[8] = {4, 1, 1, 1, 1, 1, 2, 1};
    tg_tensor *p[8];
    for (int i = 0; i < 8; i++)
        p[i] = tg_rand_normal(tape, &rng, TG_F32, ndims[i], shapes[i], 0, 0.5);
    p[5] = tg_rand_uniform(tape, &rng, TG_F32, 1, shapes[5], 0.5, 2); /* running variance */
    tg_tensor *x = tg_rand_normal(tape, &rng, TG_F32, 4, (int64_t[]){N, 2, 15, 15}, 0, 1);
    tg_tensor *y = forward(x, p);
    char path[1024];
    snprintf(path, sizeof path, "%s/layers.onnx", argv[1]);
    tg_tape_trace(tape, true);
    tg_tensor *xp = tg_placeholder(tape, "x", TG_F32, 4, (int64_t[]){2, 2, 15, 15});
    tg_tensor *yp = forward(xp, p);
    tg_tape_trace(tape, false);
    if (!y || tg_export_onnx(tape, xp, yp, path, NULL) != 0 || save(argv[1], "x.f32", x) ||
        save(argv[1], "y.f32", y)) {
        fprintf(stderr, "onnx_layers: %s\n", tg_last_error());
        return 1;
    }
    tg_tape_free(tape);
    return 0;
}
