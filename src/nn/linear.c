/* Fully connected layer: y = x W^T + b with W stored [out, in] as PyTorch stores it, so
 * weights and checkpoints carry over unchanged. */
#include "internal.h"
#include "layer_common.h"

#define SHAPE_STR(buf, t) tg_shape_str(buf, sizeof buf, (t)->ndim, (t)->shape)

tg_tensor *tg_linear(tg_tensor *x, tg_tensor *weight, tg_tensor *bias)
{
    tg_tensor *in[2] = {x, weight};
    if (!tg_check_inputs("linear", 2, in))
        return NULL;
    char sx[128], sw[128];
    if (x->ndim < 2 || weight->ndim != 2 || x->shape[x->ndim - 1] != weight->shape[1]) {
        tg_fail(TG_ERR_SHAPE, "linear: needs x [..., in] (2 or more axes) and weight [out, in], "
                "got x %s and weight %s", SHAPE_STR(sx, x), SHAPE_STR(sw, weight));
        return NULL;
    }
    int64_t out = weight->shape[0];
    if (bias && (bias->ndim != 1 || bias->shape[0] != out)) {
        char sb[128];
        tg_fail(TG_ERR_SHAPE, "linear: the bias must be [%lld], got %s", (long long)out,
                SHAPE_STR(sb, bias));
        return NULL;
    }
    if (weight->dtype != x->dtype || (bias && bias->dtype != x->dtype)) {
        tg_fail(TG_ERR_DTYPE, "linear: x is %s but the weight is %s%s%s", tg_dtype_name(x->dtype),
                tg_dtype_name(weight->dtype), bias ? " and the bias " : "",
                bias ? tg_dtype_name(bias->dtype) : "");
        return NULL;
    }
    tg_tensor *y = tg_matmul(x, tg_transpose(weight, 0, 1));
    return bias ? tg_add(y, bias) : y;
}

int tg_linear_layer_init(tg_linear_layer *layer, tg_tape *tape, tg_rng *rng, tg_dtype dt,
                         int64_t in_features, int64_t out_features, bool bias)
{
    if (layer) /* zeroed on every failure, NULL arguments included */
        *layer = (tg_linear_layer){0};
    if (!layer || !tape || !rng)
        return tg_fail(TG_ERR_NULL, "linear_layer_init: %s is NULL",
                       !layer ? "the layer" : !tape ? "the tape" : "rng");
    if (in_features < 1 || out_features < 1)
        return tg_fail(TG_ERR_ARG, "linear_layer_init: features %lld -> %lld must be >= 1",
                       (long long)in_features, (long long)out_features);
    tg_tensor *w, *b;
    int status = tg_nn_weight_and_bias(tape, rng, dt, 2,
                                       (const int64_t[]){out_features, in_features}, bias, &w, &b);
    if (status != TG_OK)
        return status;
    *layer = (tg_linear_layer){w, b};
    return TG_OK;
}

tg_tensor *tg_linear_layer_forward(const tg_linear_layer *layer, tg_tensor *x)
{
    if (!layer) {
        tg_fail(TG_ERR_NULL, "linear_layer_forward: the layer is NULL");
        return NULL;
    }
    return tg_linear(x, layer->weight, layer->bias);
}

int tg_linear_layer_register(const tg_linear_layer *layer, tg_params *params,
                             const char *prefix)
{
    if (!layer)
        return tg_fail(TG_ERR_NULL, "linear_layer_register: the layer is NULL");
    return tg_nn_register_weight_and_bias(params, prefix, layer->weight, layer->bias);
}
