/* Fits a small two-layer network to y = sin(3x) with forward code only: every step records
 * the forward pass on the tape, asks the engine for gradients and takes an SGD step. The
 * tape is rewound after each step, so every step runs on the same memory. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>

#include "tapegrad.h"

#define N 256
#define HIDDEN 32

static int fail(const char *what)
{
    fprintf(stderr, "fit_polynomial: %s: %s\n", what, tg_last_error());
    return 1;
}

int main(int argc, char **argv)
{
    int steps = argc > 1 ? atoi(argv[1]) : 2000;
    tg_tape *tape = tg_tape_new();
    tg_rng rng;
    tg_rng_seed(&rng, 42);

    /* Parameters live before the mark and survive every rewind. */
    tg_tensor *w1 = tg_rand_normal(tape, &rng, TG_F32, 2, (int64_t[]){1, HIDDEN}, 0, 1.0);
    tg_tensor *b1 = tg_zeros(tape, TG_F32, 1, (int64_t[]){HIDDEN});
    tg_tensor *w2 = tg_rand_normal(tape, &rng, TG_F32, 2, (int64_t[]){HIDDEN, 1}, 0, 0.2);
    tg_tensor *b2 = tg_zeros(tape, TG_F32, 1, (int64_t[]){1});
    float xs[N], ys[N];
    for (int i = 0; i < N; i++) {
        xs[i] = -1.0f + 2.0f * (float)i / (N - 1);
        ys[i] = sinf(3.0f * xs[i]);
    }
    tg_tensor *x = tg_from_data(tape, TG_F32, 2, (int64_t[]){N, 1}, xs);
    tg_tensor *y = tg_from_data(tape, TG_F32, 2, (int64_t[]){N, 1}, ys);
    tg_tensor *params[4] = {w1, b1, w2, b2};
    tg_mark mark = tg_tape_mark(tape);
    if (!x || !y || !b2)
        return fail("setup");

    float lr = 0.1f;
    double loss_value = 0;
    for (int step = 0; step <= steps; step++) {
        /* Forward: a tanh-free network, since relu is where(x > 0, x, 0). */
        tg_tensor *h = tg_add(tg_matmul(x, w1), b1);
        h = tg_where(tg_gt(h, tg_scalar(tape, TG_F32, 0)), h, tg_scalar(tape, TG_F32, 0));
        tg_tensor *pred = tg_add(tg_matmul(h, w2), b2);
        tg_tensor *loss = tg_mean(tg_square(tg_sub(pred, y)), 0, NULL, false);
        tg_tensor *grads[4];
        if (!loss || tg_grad(loss, 4, params, NULL, grads) != 0)
            return fail("step");
        loss_value = tg_item(loss);
        for (int p = 0; p < 4; p++) {
            float *w = tg_data(params[p]);
            const float *g = tg_data(grads[p]);
            for (int64_t i = 0; i < tg_numel(params[p]); i++)
                w[i] -= lr * g[i];
        }
        if (step % 500 == 0)
            printf("step %5d  loss %.6f\n", step, loss_value);
        tg_tape_rewind(tape, mark);
    }
    printf("final_loss=%.6f tape_bytes=%zu\n", loss_value, tg_tape_bytes(tape));
    tg_tape_free(tape);
    return loss_value < 0.01 ? 0 : 1;
}
