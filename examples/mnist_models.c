/* The two MNIST networks.
 *   seed:      the course report's network: conv 1->4 (3x3, pad 1) -> BN -> ReLU -> avgpool 2
 *              -> conv 4->4 -> BN -> ReLU -> avgpool 2 -> linear 196->10.
 *   reference: conv 1->32 (no bias) -> BN -> ReLU -> maxpool 2 -> conv 32->64 (no bias) -> BN
 *              -> ReLU -> maxpool 2 -> linear 3136->128 (no bias) -> BN -> ReLU -> linear
 *              128->10. */
#include "mnist_models.h"

#include <string.h>

const char *model_name(model_kind kind) { return kind == MODEL_SEED ? "seed" : "reference"; }

int model_from_name(const char *name, model_kind *kind)
{
    if (strcmp(name, "seed") == 0)
        *kind = MODEL_SEED;
    else if (strcmp(name, "reference") == 0)
        *kind = MODEL_REFERENCE;
    else
        return -1;
    return 0;
}

int model_init(mnist_model *m, model_kind kind, tg_tape *tape, tg_rng *rng)
{
    memset(m, 0, sizeof *m);
    m->kind = kind;
    m->params = tg_params_new();
    if (!m->params)
        return -1;
    bool seed = kind == MODEL_SEED;
    int64_t c1 = seed ? 4 : 32, c2 = seed ? 4 : 64;
    int status = 0;
    status |= tg_conv2d_layer_init(&m->conv1, tape, rng, TG_F32, 1, c1, 3, 1, 1, seed);
    status |= tg_batchnorm_layer_init(&m->bn1, tape, TG_F32, c1);
    status |= tg_conv2d_layer_init(&m->conv2, tape, rng, TG_F32, c1, c2, 3, 1, 1, seed);
    status |= tg_batchnorm_layer_init(&m->bn2, tape, TG_F32, c2);
    if (seed) {
        status |= tg_linear_layer_init(&m->fc1, tape, rng, TG_F32, c2 * 7 * 7, 10, true);
    } else {
        status |= tg_linear_layer_init(&m->fc1, tape, rng, TG_F32, c2 * 7 * 7, 128, false);
        status |= tg_batchnorm_layer_init(&m->bn3, tape, TG_F32, 128);
        status |= tg_linear_layer_init(&m->fc2, tape, rng, TG_F32, 128, 10, true);
    }
    if (status)
        return -1;
    status |= tg_conv2d_layer_register(&m->conv1, m->params, "conv1");
    status |= tg_batchnorm_layer_register(&m->bn1, m->params, "bn1");
    status |= tg_conv2d_layer_register(&m->conv2, m->params, "conv2");
    status |= tg_batchnorm_layer_register(&m->bn2, m->params, "bn2");
    status |= tg_linear_layer_register(&m->fc1, m->params, "fc1");
    if (!seed) {
        status |= tg_batchnorm_layer_register(&m->bn3, m->params, "bn3");
        status |= tg_linear_layer_register(&m->fc2, m->params, "fc2");
    }
    return status ? -1 : 0;
}

void model_free(mnist_model *m)
{
    tg_params_free(m->params);
    m->params = NULL;
}

static tg_tensor *conv_block(const mnist_model *m, tg_tape *tape, tg_tensor *x,
                             const tg_conv2d_layer *conv, const tg_batchnorm_layer *bn,
                             const char *name, bool training)
{
    tg_tape_set_scope(tape, name);
    x = tg_relu(tg_batchnorm_layer_forward(bn, tg_conv2d_layer_forward(conv, x), training));
    return m->kind == MODEL_SEED ? tg_avg_pool2d(x, 2, 2, 0) : tg_max_pool2d(x, 2, 2, 0);
}

tg_tensor *model_forward(const mnist_model *m, tg_tensor *x, bool training)
{
    tg_tape *tape = tg_tape_of(x);
    if (!tape)
        return NULL;
    x = conv_block(m, tape, x, &m->conv1, &m->bn1, "block1", training);
    x = conv_block(m, tape, x, &m->conv2, &m->bn2, "block2", training);
    tg_tape_set_scope(tape, "fc1");
    x = tg_linear_layer_forward(&m->fc1, tg_flatten(x, 1));
    if (m->kind == MODEL_REFERENCE) {
        x = tg_relu(tg_batchnorm_layer_forward(&m->bn3, x, training));
        tg_tape_set_scope(tape, "fc2");
        x = tg_linear_layer_forward(&m->fc2, x);
    }
    tg_tape_set_scope(tape, NULL);
    return x;
}
