/* What the layers holding parameters share: creating a default-initialized weight and
 * optional bias, and registering them under PyTorch's names. Internal to src/nn. */
#ifndef TG_NN_LAYER_COMMON_H
#define TG_NN_LAYER_COMMON_H

#include "tapegrad_nn.h"

/* A weight of the given shape and, if bias, a bias [shape[0]], on tape, initialized as
 * PyTorch's Linear and Conv2d do. On failure *weight and *bias are NULL. */
int tg_nn_weight_and_bias(tg_tape *tape, tg_rng *rng, tg_dtype dt, int ndim,
                          const int64_t *shape, bool bias, tg_tensor **weight,
                          tg_tensor **bias_out);
/* "prefix.weight" and, when bias is not NULL, "prefix.bias", both trainable. */
int tg_nn_register_weight_and_bias(tg_params *params, const char *prefix, tg_tensor *weight,
                                   tg_tensor *bias);

#endif
