/* 2-D convolution as a composition: pad -> im2col -> one batched matmul -> reshape (+ bias).
 * The im2col layout [N, C, KH, KW, OH, OW] reshapes for free to [N, C*KH*KW, OH*OW], so the
 * weight [OC, C, KH, KW] seen as [OC, C*KH*KW] multiplies every image at once (its batch axis
 * broadcasts; the engine sums the weight's gradient over the batch). No gradient rule here:
 * the backward is the primitives' own (matmul, col2im, slice). */
#include "internal.h"
#include "layer_common.h"

#include <stddef.h>

#define SHAPE_STR(buf, t) tg_shape_str(buf, sizeof buf, (t)->ndim, (t)->shape)

tg_tensor *tg_conv2d(tg_tensor *x, tg_tensor *weight, tg_tensor *bias, int64_t stride,
                     int64_t padding)
{
    tg_tensor *in[2] = {x, weight};
    if (!tg_check_inputs("conv2d", 2, in))
        return NULL;
    char sx[128], sw[128];
    if (x->ndim != 4 || weight->ndim != 4 || x->shape[1] != weight->shape[1]) {
        tg_fail(TG_ERR_SHAPE, "conv2d: needs x [N, C, H, W] and weight [OC, C, KH, KW], got "
                "x %s and weight %s", SHAPE_STR(sx, x), SHAPE_STR(sw, weight));
        return NULL;
    }
    if (stride < 1 || padding < 0 || padding > INT64_MAX / 4) {
        tg_fail(TG_ERR_ARG, "conv2d: stride %lld must be >= 1 and padding %lld in 0 .. 2^61",
                (long long)stride, (long long)padding);
        return NULL;
    }
    int64_t oc = weight->shape[0], kh = weight->shape[2], kw = weight->shape[3];
    if (x->shape[2] + 2 * padding < kh || x->shape[3] + 2 * padding < kw) {
        tg_fail(TG_ERR_SHAPE, "conv2d: the %lldx%lld kernel is larger than the padded input "
                "(x %s, padding %lld)", (long long)kh, (long long)kw, SHAPE_STR(sx, x),
                (long long)padding);
        return NULL;
    }
    if (bias && (bias->ndim != 1 || bias->shape[0] != oc)) {
        char sb[128];
        tg_fail(TG_ERR_SHAPE, "conv2d: the bias must be [%lld], got %s", (long long)oc,
                SHAPE_STR(sb, bias));
        return NULL;
    }
    if (weight->dtype != x->dtype || (bias && bias->dtype != x->dtype)) {
        tg_fail(TG_ERR_DTYPE, "conv2d: x is %s but the weight is %s%s%s", tg_dtype_name(x->dtype),
                tg_dtype_name(weight->dtype), bias ? " and the bias " : "",
                bias ? tg_dtype_name(bias->dtype) : "");
        return NULL;
    }

    int64_t n = x->shape[0], c = x->shape[1];
    tg_tensor *padded = x;
    if (padding > 0) {
        const int64_t pads[4] = {0, 0, padding, padding};
        padded = tg_pad(x, pads, pads, 0.0);
    }
    tg_tensor *cols = tg_im2col(padded, kh, kw, stride, stride);
    if (!cols)
        return NULL;
    int64_t oh = cols->shape[4], ow = cols->shape[5];
    tg_tensor *cols3 = tg_reshape(cols, 3, (const int64_t[]){n, c * kh * kw, oh * ow});
    tg_tensor *w2 = tg_reshape(weight, 2, (const int64_t[]){oc, c * kh * kw});
    tg_tensor *y = tg_reshape(tg_matmul(w2, cols3), 4, (const int64_t[]){n, oc, oh, ow});
    if (bias)
        y = tg_add(y, tg_reshape(bias, 4, (const int64_t[]){1, oc, 1, 1}));
    return y;
}

int tg_conv2d_layer_init(tg_conv2d_layer *layer, tg_tape *tape, tg_rng *rng, tg_dtype dt,
                         int64_t in_channels, int64_t out_channels, int64_t kernel,
                         int64_t stride, int64_t padding, bool bias)
{
    if (layer) /* zeroed on every failure, NULL arguments included */
        *layer = (tg_conv2d_layer){0};
    if (!layer || !tape || !rng)
        return tg_fail(TG_ERR_NULL, "conv2d_layer_init: %s is NULL",
                       !layer ? "the layer" : !tape ? "the tape" : "rng");
    if (in_channels < 1 || out_channels < 1 || kernel < 1 || stride < 1 || padding < 0)
        return tg_fail(TG_ERR_ARG, "conv2d_layer_init: channels %lld -> %lld, kernel %lld and "
                       "stride %lld must be >= 1, padding %lld >= 0", (long long)in_channels,
                       (long long)out_channels, (long long)kernel, (long long)stride,
                       (long long)padding);
    tg_tensor *w, *b;
    int status = tg_nn_weight_and_bias(
        tape, rng, dt, 4, (const int64_t[]){out_channels, in_channels, kernel, kernel}, bias, &w,
        &b);
    if (status != TG_OK)
        return status;
    *layer = (tg_conv2d_layer){w, b, stride, padding};
    return TG_OK;
}

tg_tensor *tg_conv2d_layer_forward(const tg_conv2d_layer *layer, tg_tensor *x)
{
    if (!layer) {
        tg_fail(TG_ERR_NULL, "conv2d_layer_forward: the layer is NULL");
        return NULL;
    }
    return tg_conv2d(x, layer->weight, layer->bias, layer->stride, layer->padding);
}

int tg_conv2d_layer_register(const tg_conv2d_layer *layer, tg_params *params,
                             const char *prefix)
{
    if (!layer)
        return tg_fail(TG_ERR_NULL, "conv2d_layer_register: the layer is NULL");
    return tg_nn_register_weight_and_bias(params, prefix, layer->weight, layer->bias);
}
