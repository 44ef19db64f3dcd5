/* Parameter initialization with PyTorch's defaults, drawn from a tg_rng so that a seed fixes
 * a model. Initializers write a leaf's values in place: a layer keeps its tensors and can be
 * re-initialized without touching the tape. */
#include "internal.h"
#include "layer_common.h"

#include <math.h>

static int check_leaf(const char *who, const tg_tensor *t)
{
    if (!t)
        return tg_fail(TG_ERR_NULL, "%s: the tensor is NULL", who);
    /* Writing into a computed node would leave it inconsistent with its inputs. */
    if (t->op != TG_OP_LEAF)
        return tg_fail(TG_ERR_ARG, "%s: the tensor is a %s node; only leaves can be "
                       "initialized", who, tg_op_name(t->op));
    return TG_OK;
}

static void store(tg_tensor *t, int64_t i, double v)
{
    if (t->dtype == TG_F64)
        ((double *)t->data)[i] = v;
    else
        ((float *)t->data)[i] = (float)v;
}

int tg_init_uniform(tg_tensor *t, tg_rng *rng, double lo, double hi)
{
    int status = check_leaf("tg_init_uniform", t);
    if (status != TG_OK)
        return status;
    if (!rng)
        return tg_fail(TG_ERR_NULL, "tg_init_uniform: rng is NULL");
    if (!isfinite(lo) || !isfinite(hi) || lo > hi)
        return tg_fail(TG_ERR_ARG, "tg_init_uniform: the interval [%g, %g) is not valid", lo, hi);
    for (int64_t i = 0; i < t->numel; i++)
        store(t, i, lo + (hi - lo) * tg_rng_uniform(rng));
    return TG_OK;
}

int tg_init_constant(tg_tensor *t, double value)
{
    int status = check_leaf("tg_init_constant", t);
    if (status != TG_OK)
        return status;
    for (int64_t i = 0; i < t->numel; i++)
        store(t, i, value);
    return TG_OK;
}

int64_t tg_fan_in(const tg_tensor *weight)
{
    if (!weight) {
        tg_fail(TG_ERR_NULL, "tg_fan_in: the weight is NULL");
        return -1;
    }
    if (weight->ndim < 2) {
        tg_fail(TG_ERR_SHAPE, "tg_fan_in: a weight needs 2 or more axes, this one has %d",
                weight->ndim);
        return -1;
    }
    int64_t fan = 1;
    for (int i = 1; i < weight->ndim; i++)
        fan *= weight->shape[i];
    return fan;
}

/* A weight with no inputs (fan_in 0) gets bound 0, as PyTorch leaves such biases at zero. */
static double inv_sqrt_fan(int64_t fan) { return fan > 0 ? 1.0 / sqrt((double)fan) : 0.0; }

int tg_init_kaiming_uniform(tg_tensor *weight, tg_rng *rng, double a)
{
    int64_t fan = tg_fan_in(weight);
    if (fan < 0)
        return tg_last_error_code();
    if (!isfinite(a))
        return tg_fail(TG_ERR_ARG, "tg_init_kaiming_uniform: a = %g is not finite", a);
    /* Uniform on [-b, b] has std b / sqrt(3); Kaiming asks for std gain / sqrt(fan_in). */
    double gain = sqrt(2.0 / (1.0 + a * a));
    double bound = gain * sqrt(3.0) * inv_sqrt_fan(fan);
    return tg_init_uniform(weight, rng, -bound, bound);
}

int tg_init_default(tg_tensor *weight, tg_tensor *bias, tg_rng *rng)
{
    int64_t fan = tg_fan_in(weight);
    if (fan < 0)
        return tg_last_error_code();
    if (bias && (bias->ndim != 1 || bias->shape[0] != weight->shape[0]))
        return tg_fail(TG_ERR_SHAPE, "tg_init_default: the bias has %lld elements in %d axes "
                       "but the weight has %lld outputs", (long long)bias->numel, bias->ndim,
                       (long long)weight->shape[0]);
    /* Check the bias before the weight is written, so a failure writes nothing. */
    int status = bias ? check_leaf("tg_init_default", bias) : TG_OK;
    if (status != TG_OK)
        return status;
    /* With a = sqrt(5) the Kaiming bound gain * sqrt(3 / fan_in) is exactly 1 / sqrt(fan_in);
     * computing it that way keeps the last bit identical to the bias bound. */
    double bound = inv_sqrt_fan(fan);
    status = tg_init_uniform(weight, rng, -bound, bound);
    if (status == TG_OK && bias)
        status = tg_init_uniform(bias, rng, -bound, bound);
    return status;
}

int tg_nn_weight_and_bias(tg_tape *tape, tg_rng *rng, tg_dtype dt, int ndim,
                          const int64_t *shape, bool bias, tg_tensor **weight,
                          tg_tensor **bias_out)
{
    *weight = *bias_out = NULL;
    tg_tensor *w = tg_zeros(tape, dt, ndim, shape);
    tg_tensor *b = bias ? tg_zeros(tape, dt, 1, shape) : NULL;
    if (!w || (bias && !b))
        return tg_last_error_code();
    int status = tg_init_default(w, b, rng);
    if (status == TG_OK) {
        *weight = w;
        *bias_out = b;
    }
    return status;
}
