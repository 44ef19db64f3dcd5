/* tapegrad's own logits for the MNIST test set, for comparing with another runtime's.
 *
 *   onnx_logits CHECKPOINT DATA_DIR OUT
 *
 * Loads a checkpoint of examples/mnist_cnn (its model from the checkpoint's metadata), runs
 * the compiled evaluation plan over the 10,000 test images in batches of 1000 (as the
 * example evaluates), writes the logits to OUT as raw little-endian float32 [10000, 10] and
 * prints `tapegrad_acc=<percent>`. */
#include "mnist_models.h"
#include "tapegrad_io.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define MNIST_MEAN 0.1307f
#define MNIST_STD 0.3081f
#define BATCH 1000

static int fail(const char *what)
{
    fprintf(stderr, "onnx_logits: %s: %s\n", what, tg_last_error());
    return 1;
}

/* The model's parameters and buffers from the checkpoint (the optimizer's state is ignored). */
static int load_model(const char *path, tg_tape *tape, mnist_model *m)
{
    tg_checkpoint *c;
    if (tg_checkpoint_open(path, &c) != 0)
        return fail("opening the checkpoint");
    const char *name = tg_checkpoint_meta(c, "tapegrad.model");
    model_kind kind;
    tg_rng rng;
    tg_rng_seed(&rng, 1);
    if (!name || model_from_name(name, &kind) != 0 || model_init(m, kind, tape, &rng) != 0) {
        tg_checkpoint_free(c);
        fprintf(stderr, "onnx_logits: %s is not a checkpoint of mnist_cnn\n", path);
        return 1;
    }
    size_t n = tg_params_count(m->params);
    tg_ckpt_entry *e = calloc(n, sizeof *e);
    for (size_t i = 0; e && i < n; i++) {
        const tg_param *p = tg_params_get(m->params, i);
        e[i] = (tg_ckpt_entry){.name = p->name, .dtype = tg_dtype_of(p->tensor),
                               .ndim = tg_ndim(p->tensor), .data = tg_data(p->tensor)};
        memcpy(e[i].shape, tg_shape(p->tensor), (size_t)e[i].ndim * sizeof(int64_t));
    }
    int status = e && tg_checkpoint_read(c, e, (int)n) == 0 ? 0 : fail("reading the checkpoint");
    free(e);
    tg_checkpoint_free(c);
    return status;
}

int main(int argc, char **argv)
{
    if (argc != 4) {
        fprintf(stderr, "usage: onnx_logits CHECKPOINT DATA_DIR OUT\n");
        return 2;
    }
    tg_mnist test = {0};
    tg_tape *tape = tg_tape_new();
    mnist_model model = {0};
    if (!tape || tg_mnist_load(argv[2], "t10k", &test) != 0)
        return fail("loading MNIST");
    if (load_model(argv[1], tape, &model) != 0)
        return 1;
    tg_mark mark = tg_tape_mark(tape);
    tg_tape_trace(tape, true);
    tg_tensor *x = tg_placeholder(tape, "images", TG_F32, 4, (int64_t[]){BATCH, 1, 28, 28});
    tg_tensor *logits = model_forward(&model, x, false);
    tg_tape_trace(tape, false);
    tg_plan *plan = logits ? tg_compile(tape, 1, &logits, NULL) : NULL;
    tg_tape_rewind(tape, mark);
    if (!plan)
        return fail("compiling the evaluation");
    FILE *out = fopen(argv[3], "wb");
    float *images = malloc(BATCH * 28 * 28 * sizeof *images), labels[BATCH];
    int64_t indices[BATCH], right = 0;
    if (!out || !images) {
        perror("onnx_logits");
        return 1;
    }
    for (int64_t start = 0; start + BATCH <= test.count; start += BATCH) {
        for (int64_t i = 0; i < BATCH; i++)
            indices[i] = start + i;
        if (tg_mnist_gather(&test, indices, BATCH, MNIST_MEAN, MNIST_STD, images, labels) ||
            tg_plan_set_input(plan, "images", images) || tg_plan_run(plan))
            return fail("evaluating");
        const float *l = tg_plan_output(plan, 0);
        for (int64_t i = 0; i < BATCH; i++) {
            int best = 0;
            for (int k = 1; k < 10; k++)
                best = l[i * 10 + k] > l[i * 10 + best] ? k : best;
            right += best == (int)labels[i];
        }
        if (fwrite(l, sizeof *l, BATCH * 10, out) != BATCH * 10) {
            perror("onnx_logits: writing");
            return 1;
        }
    }
    if (fclose(out) != 0) {
        perror("onnx_logits: writing");
        return 1;
    }
    printf("tapegrad_acc=%.2f\n", 100.0 * (double)right / (double)test.count);
    free(images);
    tg_plan_free(plan);
    model_free(&model);
    tg_tape_free(tape);
    tg_mnist_free(&test);
    return 0;
}
