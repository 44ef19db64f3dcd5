/* The two MNIST networks of the example, written as forward code only. */
#ifndef MNIST_MODELS_H
#define MNIST_MODELS_H

#include "tapegrad_nn.h"

typedef enum { MODEL_SEED, MODEL_REFERENCE } model_kind;

typedef struct {
    model_kind kind;
    tg_conv2d_layer conv1, conv2;
    tg_batchnorm_layer bn1, bn2, bn3;
    tg_linear_layer fc1, fc2;
    tg_params *params; /* every parameter and buffer, under PyTorch's state_dict names */
} mnist_model;

const char *model_name(model_kind kind);
int model_from_name(const char *name, model_kind *kind);

/* Creates the parameters on tape (before the training loop's mark). */
int model_init(mnist_model *m, model_kind kind, tg_tape *tape, tg_rng *rng);
void model_free(mnist_model *m);

/* x [N, 1, 28, 28] -> logits [N, 10]. Training mode uses batch statistics and records the
 * running-estimate updates. Each layer's nodes carry its name (for the numerical guard). */
tg_tensor *model_forward(const mnist_model *m, tg_tensor *x, bool training);

#endif
