/* A program as a user of the installed library writes it: only the public headers, built with
 * nothing but `pkg-config --cflags --libs tapegrad`. It uses each header: it checks the
 * version, trains a small network (tapegrad_nn.h) on a made-up task, saves it as a checkpoint
 * and loads it into a second copy of the network (tapegrad_io.h), which must then agree with
 * the first. Usage: consumer DIR (a writable directory for the checkpoint). It prints one
 * "consumer: ..." line and exits 0 when everything held. */
#include <tapegrad.h>
#include <tapegrad_io.h>
#include <tapegrad_nn.h>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define N 64 /* examples: x in R^4, label 1 when x0 + x1 > x2 + x3 */
#define STEPS 60

typedef struct {
    tg_linear_layer fc1, fc2;
    tg_batchnorm_layer bn;
    tg_params *params;
} net;

static int net_init(net *m, tg_tape *tape, uint64_t seed)
{
    tg_rng rng;
    tg_rng_seed(&rng, seed);
    m->params = tg_params_new();
    int status = tg_linear_layer_init(&m->fc1, tape, &rng, TG_F32, 4, 16, false);
    status |= tg_batchnorm_layer_init(&m->bn, tape, TG_F32, 16);
    status |= tg_linear_layer_init(&m->fc2, tape, &rng, TG_F32, 16, 2, true);
    status |= tg_linear_layer_register(&m->fc1, m->params, "fc1");
    status |= tg_batchnorm_layer_register(&m->bn, m->params, "bn");
    status |= tg_linear_layer_register(&m->fc2, m->params, "fc2");
    return status;
}

static tg_tensor *net_forward(const net *m, tg_tensor *x, bool training)
{
    tg_tensor *h = tg_linear_layer_forward(&m->fc1, x);
    h = tg_relu(tg_batchnorm_layer_forward(&m->bn, h, training));
    return tg_linear_layer_forward(&m->fc2, h);
}

/* The parameters and buffers of m as checkpoint entries (names from the parameter list). */
static tg_ckpt_entry *entries_of(const net *m, int *n)
{
    *n = (int)tg_params_count(m->params);
    tg_ckpt_entry *e = calloc((size_t)*n, sizeof *e);
    for (int i = 0; e && i < *n; i++) {
        const tg_param *p = tg_params_get(m->params, (size_t)i);
        e[i].name = p->name;
        e[i].dtype = tg_dtype_of(p->tensor);
        e[i].ndim = tg_ndim(p->tensor);
        memcpy(e[i].shape, tg_shape(p->tensor), sizeof(int64_t) * (size_t)e[i].ndim);
        e[i].data = tg_data(p->tensor);
    }
    return e;
}

static int fail(const char *what)
{
    fprintf(stderr, "consumer: %s: %s\n", what, tg_last_error());
    return 1;
}

int main(int argc, char **argv)
{
    if (argc != 2) {
        fprintf(stderr, "usage: consumer DIR\n");
        return 2;
    }
    char built_for[32];
    snprintf(built_for, sizeof built_for, "%d.%d.%d", TG_VERSION_MAJOR, TG_VERSION_MINOR,
             TG_VERSION_PATCH);
    if (strcmp(tg_version(), built_for) != 0) {
        fprintf(stderr, "consumer: headers say %s, library says %s\n", built_for, tg_version());
        return 1;
    }

    float xs[N * 4], ys[N];
    tg_rng data_rng;
    tg_rng_seed(&data_rng, 7);
    for (int i = 0; i < N; i++) {
        for (int j = 0; j < 4; j++)
            xs[i * 4 + j] = (float)tg_rng_normal(&data_rng);
        ys[i] = xs[i * 4] + xs[i * 4 + 1] > xs[i * 4 + 2] + xs[i * 4 + 3] ? 1.0f : 0.0f;
    }

    tg_tape *tape = tg_tape_new();
    net a, b;
    if (!tape || net_init(&a, tape, 1) != 0 || net_init(&b, tape, 2) != 0)
        return fail("creating the networks");
    tg_optim *sgd = tg_sgd_new(a.params, &(tg_sgd_opts){.lr = 0.2, .momentum = 0.9});
    tg_tensor *x = tg_from_data(tape, TG_F32, 2, (int64_t[]){N, 4}, xs);
    tg_tensor *y = tg_from_data(tape, TG_F32, 1, (int64_t[]){N}, ys);
    tg_tensor *weights[8];
    size_t n_weights = tg_params_trainable(a.params, weights, 8);
    if (!sgd || !y || n_weights != 5)
        return fail("setting up training");

    tg_mark mark = tg_tape_mark(tape); /* everything above survives each step */
    double first = 0, last = 0;
    for (int step = 0; step < STEPS; step++) {
        tg_tensor *loss = tg_cross_entropy(net_forward(&a, x, true), y);
        tg_tensor *grads[8];
        if (!loss || tg_grad(loss, (int)n_weights, weights, NULL, grads) != 0 ||
            tg_optim_step(sgd, grads) != 0)
            return fail("training step");
        last = tg_item(loss);
        if (step == 0)
            first = last;
        tg_tape_rewind(tape, mark);
    }

    char path[4096];
    snprintf(path, sizeof path, "%s/net.safetensors", argv[1]);
    int n;
    tg_ckpt_entry *saved = entries_of(&a, &n);
    const char *keys[] = {"steps"}, *values[] = {"60"};
    if (!saved || tg_checkpoint_save(path, saved, n, keys, values, 1) != 0)
        return fail("saving");
    tg_ckpt_entry *loaded = entries_of(&b, &n);
    if (!loaded || tg_checkpoint_load(path, loaded, n) != 0)
        return fail("loading");

    /* In evaluation mode (running estimates) the copy must compute what the original does. */
    tg_tensor *out_a = net_forward(&a, x, false), *out_b = net_forward(&b, x, false);
    if (!out_a || !out_b)
        return fail("evaluation");
    double diff = 0;
    int right = 0;
    for (int i = 0; i < 2 * N; i++) {
        double d = tg_get(out_a, i) - tg_get(out_b, i);
        diff = d > diff ? d : -d > diff ? -d : diff;
        if (i % 2)
            right += (tg_get(out_a, i) > tg_get(out_a, i - 1)) == (ys[i / 2] == 1.0f);
    }
    printf("consumer: version=%s loss=%.4f->%.4f train_acc=%d/%d checkpoint_tensors=%d "
           "copy_diff=%g\n", tg_version(), first, last, right, N, n, diff);
    free(saved);
    free(loaded);
    tg_optim_free(sgd);
    tg_params_free(a.params);
    tg_params_free(b.params);
    tg_tape_free(tape);
    return last < first && diff == 0 && right >= N * 3 / 4 ? 0 : 1;
}
