/* 2-D max and average pooling as compositions: pad -> im2col -> reduce over the window axis.
 * im2col's [N, C, KH, KW, OH, OW] reshapes for free to [N, C, KH*KW, OH, OW], so each pool
 * is one reduction. Max pooling pads with -inf so padding never wins a window; tg_max's rule
 * then splits a window's gradient equally among its tied maxima. Average pooling pads with
 * zeros that count in the divisor, as PyTorch's default count_include_pad = true does. */
#include "internal.h"
#include "tapegrad_nn.h"

#include <math.h>

#define SHAPE_STR(buf, t) tg_shape_str(buf, sizeof buf, (t)->ndim, (t)->shape)

static tg_tensor *pool(const char *name, bool is_max, tg_tensor *x, int64_t kernel,
                       int64_t stride, int64_t padding)
{
    if (!tg_check_inputs(name, 1, &x))
        return NULL;
    char sx[128];
    if (x->ndim != 4) {
        tg_fail(TG_ERR_SHAPE, "%s: needs x [N, C, H, W], got %s", name, SHAPE_STR(sx, x));
        return NULL;
    }
    if (stride == 0)
        stride = kernel;
    /* PyTorch's bound on padding: it keeps every window overlapping the input, so no max is
     * taken over padding alone. */
    if (kernel < 1 || stride < 1 || padding < 0 || padding > kernel / 2) {
        tg_fail(TG_ERR_ARG, "%s: kernel %lld and stride %lld must be >= 1 and padding %lld in "
                "[0, kernel / 2]", name, (long long)kernel, (long long)stride,
                (long long)padding);
        return NULL;
    }
    if (x->shape[2] + 2 * padding < kernel || x->shape[3] + 2 * padding < kernel) {
        tg_fail(TG_ERR_SHAPE, "%s: the %lldx%lld window is larger than the padded input "
                "(x %s, padding %lld)", name, (long long)kernel, (long long)kernel,
                SHAPE_STR(sx, x), (long long)padding);
        return NULL;
    }
    tg_tensor *padded = x;
    if (padding > 0) {
        const int64_t pads[4] = {0, 0, padding, padding};
        padded = tg_pad(x, pads, pads, is_max ? -INFINITY : 0.0);
    }
    tg_tensor *cols = tg_im2col(padded, kernel, kernel, stride, stride);
    if (!cols)
        return NULL;
    tg_tensor *windows = tg_reshape(cols, 5, (const int64_t[]){cols->shape[0], cols->shape[1],
                                                               kernel * kernel, cols->shape[4],
                                                               cols->shape[5]});
    const int axis = 2;
    return is_max ? tg_max(windows, 1, &axis, false) : tg_mean(windows, 1, &axis, false);
}

tg_tensor *tg_max_pool2d(tg_tensor *x, int64_t kernel, int64_t stride, int64_t padding)
{
    return pool("max_pool2d", true, x, kernel, stride, padding);
}

tg_tensor *tg_avg_pool2d(tg_tensor *x, int64_t kernel, int64_t stride, int64_t padding)
{
    return pool("avg_pool2d", false, x, kernel, stride, padding);
}
