/* Conveniences built from primitives. None has a gradient rule: the engine differentiates
 * the primitives they expand to. */
#include "internal.h"

tg_tensor *tg_mul_scalar(tg_tensor *a, double s)
{
    if (!tg_check_inputs("mul_scalar", 1, &a))
        return NULL;
    return tg_mul(a, tg_scalar(a->tape, a->dtype, s));
}

tg_tensor *tg_add_scalar(tg_tensor *a, double s)
{
    if (!tg_check_inputs("add_scalar", 1, &a))
        return NULL;
    return tg_add(a, tg_scalar(a->tape, a->dtype, s));
}

tg_tensor *tg_square(tg_tensor *a) { return tg_mul(a, a); }

tg_tensor *tg_gt(tg_tensor *a, tg_tensor *b) { return tg_lt(b, a); }

tg_tensor *tg_mean(tg_tensor *a, int naxes, const int *axes, bool keepdims)
{
    tg_tensor *s = tg_sum(a, naxes, axes, keepdims);
    if (!s)
        return NULL;
    int64_t count = s->numel ? a->numel / s->numel : 0;
    return tg_mul_scalar(s, count ? 1.0 / (double)count : 0.0);
}

tg_tensor *tg_transpose(tg_tensor *a, int axis0, int axis1)
{
    if (!tg_check_inputs("transpose", 1, &a))
        return NULL;
    int i = tg_norm_axis(axis0, a->ndim), j = tg_norm_axis(axis1, a->ndim);
    if (i < 0 || j < 0) {
        tg_fail(TG_ERR_AXIS, "transpose: axes %d and %d for %d dimensions", axis0, axis1,
                a->ndim);
        return NULL;
    }
    int perm[TG_MAX_DIMS];
    for (int k = 0; k < a->ndim; k++)
        perm[k] = k;
    perm[i] = j;
    perm[j] = i;
    return tg_permute(a, perm);
}

tg_tensor *tg_flatten(tg_tensor *a, int start_axis)
{
    if (!tg_check_inputs("flatten", 1, &a))
        return NULL;
    int s = tg_norm_axis(start_axis, a->ndim);
    if (s < 0) {
        tg_fail(TG_ERR_AXIS, "flatten: axis %d for %d dimensions", start_axis, a->ndim);
        return NULL;
    }
    int64_t shape[TG_MAX_DIMS];
    for (int k = 0; k < s; k++)
        shape[k] = a->shape[k];
    shape[s] = -1;
    if (a->numel == 0) { /* -1 cannot be inferred from zero elements */
        shape[s] = 1;
        for (int k = s; k < a->ndim; k++)
            shape[s] *= a->shape[k];
    }
    return tg_reshape(a, s + 1, shape);
}
