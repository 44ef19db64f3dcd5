/* Batch normalization over every axis but the channel axis (1), as a composition.
 *
 * Training uses the batch statistics and differentiates through both of them. The mean is
 * deliberately not detached: detaching it is exact for the first derivative only (the terms
 * it drops cancel there but not in the second), and the engine must be right at every order.
 * The running estimates are a side effect recorded with tg_assign from detached statistics,
 * so they never enter the gradient. */
#include "internal.h"
#include "tapegrad_nn.h"
#include "tapegrad_dist.h"

#include <math.h>

#define SHAPE_STR(buf, t) tg_shape_str(buf, sizeof buf, (t)->ndim, (t)->shape)

/* A per-channel vector [C] must be a 1-D tensor of x's dtype and tape. */
static bool check_channel_vector(const char *what, tg_tensor *v, tg_tensor *x, int64_t c)
{
    if (!v)
        return true;
    char sv[128];
    if (v->tape != x->tape) {
        tg_fail(TG_ERR_TAPE, "batch_norm: %s is on a different tape from x", what);
        return false;
    }
    if (v->dtype != x->dtype) {
        tg_fail(TG_ERR_DTYPE, "batch_norm: %s is %s but x is %s", what, tg_dtype_name(v->dtype),
                tg_dtype_name(x->dtype));
        return false;
    }
    if (v->ndim != 1 || v->shape[0] != c) {
        tg_fail(TG_ERR_SHAPE, "batch_norm: %s must be [%lld] (x has %lld channels), got %s",
                what, (long long)c, (long long)c, SHAPE_STR(sv, v));
        return false;
    }
    return true;
}

/* [C] -> [1, C, 1, ...] so it broadcasts against x. */
static tg_tensor *per_channel(tg_tensor *v, int ndim)
{
    int64_t shape[TG_MAX_DIMS];
    for (int i = 0; i < ndim; i++)
        shape[i] = 1;
    shape[1] = v->shape[0];
    return tg_reshape(v, ndim, shape);
}

/* running := retention * running + (1 - retention) * detach(batch), batch being [1, C, 1, ...].
 * retention is what PyTorch calls 1 - momentum. */
static int update_running(tg_tensor *running, tg_tensor *batch, double retention)
{
    tg_tensor *b = tg_reshape(tg_detach(batch), 1, running->shape);
    tg_tensor *value =
        tg_add(tg_mul_scalar(running, retention), tg_mul_scalar(b, 1.0 - retention));
    if (!value)
        return tg_last_error_code();
    return tg_assign(running, value);
}

/* Synchronized statistics (SyncBatchNorm): per-channel sums over this rank's values are
 * all-reduced over the tape's communicator, so every rank normalizes with the statistics of the
 * global batch. Two passes, as the per-rank path: the global mean, then the global sum of
 * squared deviations from it (the one-pass sum of squares loses digits to cancellation). Every
 * rank must hold the same number of values; all of it is composed from primitives, so the
 * engine differentiates it (the all-reduce's gradient is an all-reduce). With one rank it is
 * the per-rank path op for op: sum(x) * (1 / count). */
static void synced_statistics(tg_tensor *x, int naxes, const int *axes, int64_t total,
                              tg_tensor **mean, tg_tensor **centred, tg_tensor **var)
{
    double inv = 1.0 / (double)total;
    *mean = tg_mul_scalar(tg_allreduce_sum(tg_sum(x, naxes, axes, true)), inv);
    *centred = tg_sub(x, *mean);
    *var = tg_mul_scalar(tg_allreduce_sum(tg_sum(tg_square(*centred), naxes, axes, true)), inv);
}

static tg_tensor *batch_norm(tg_tensor *x, tg_tensor *gamma, tg_tensor *beta,
                             tg_tensor *running_mean, tg_tensor *running_var, bool training,
                             double retention, double eps, bool synchronized)
{
    if (!tg_check_inputs("batch_norm", 1, &x))
        return NULL;
    char sx[128];
    if (x->ndim < 2) {
        tg_fail(TG_ERR_SHAPE, "batch_norm: x must be [N, C, ...], got %s", SHAPE_STR(sx, x));
        return NULL;
    }
    int64_t c = x->shape[1];
    if (!check_channel_vector("gamma", gamma, x, c) || !check_channel_vector("beta", beta, x, c) ||
        !check_channel_vector("running_mean", running_mean, x, c) ||
        !check_channel_vector("running_var", running_var, x, c))
        return NULL;
    if (!(eps > 0) || !isfinite(eps) || !(retention >= 0 && retention <= 1)) {
        tg_fail(TG_ERR_ARG, "batch_norm: eps %g must be > 0 and retention %g in [0, 1] (PyTorch's "
                "momentum m is retention 1 - m)", eps, retention);
        return NULL;
    }
    if ((running_mean == NULL) != (running_var == NULL)) {
        tg_fail(TG_ERR_NULL, "batch_norm: running_mean and running_var go together; %s is NULL",
                running_mean ? "running_var" : "running_mean");
        return NULL;
    }
    if (running_mean && (running_mean->op != TG_OP_LEAF || running_var->op != TG_OP_LEAF)) {
        tg_fail(TG_ERR_ARG, "batch_norm: the running estimates must be leaves (they are "
                "updated in place)");
        return NULL;
    }
    int64_t count = c ? x->numel / c : 0; /* values per channel */
    if (synchronized && training) /* over every rank */
        count *= tg_comm_size(tg_tape_comm(x->tape));
    if (training && count < 2) {
        tg_fail(TG_ERR_SHAPE, "batch_norm: training needs more than one value per channel, x is "
                "%s", SHAPE_STR(sx, x));
        return NULL;
    }
    if (!training && !running_mean) {
        tg_fail(TG_ERR_NULL, "batch_norm: evaluation needs running_mean and running_var");
        return NULL;
    }

    int axes[TG_MAX_DIMS], naxes = 0;
    for (int i = 0; i < x->ndim; i++)
        if (i != 1)
            axes[naxes++] = i;
    tg_tensor *mean, *var, *centred;
    if (training && synchronized) {
        synced_statistics(x, naxes, axes, count, &mean, &centred, &var);
    } else if (training) {
        mean = tg_mean(x, naxes, axes, true);
        centred = tg_sub(x, mean);
        var = tg_mean(tg_square(centred), naxes, axes, true); /* biased, as normalization uses */
    } else {
        mean = per_channel(running_mean, x->ndim);
        centred = tg_sub(x, mean);
        var = per_channel(running_var, x->ndim);
    }
    /* gamma joins the per-channel scale before it meets x: one full-size product, not two. */
    tg_tensor *scale = tg_recip(tg_sqrt(tg_add_scalar(var, eps)));
    if (gamma)
        scale = tg_mul(scale, per_channel(gamma, x->ndim));
    tg_tensor *y = tg_mul(centred, scale);
    if (beta)
        y = tg_add(y, per_channel(beta, x->ndim));
    if (!y)
        return NULL;
    if (training && running_mean) {
        /* The running variance estimates the population variance: unbiased, n / (n - 1). */
        tg_tensor *unbiased = tg_mul_scalar(var, (double)count / (double)(count - 1));
        if (update_running(running_mean, mean, retention) != TG_OK ||
            update_running(running_var, unbiased, retention) != TG_OK)
            return NULL;
    }
    return y;
}

tg_tensor *tg_batch_norm(tg_tensor *x, tg_tensor *gamma, tg_tensor *beta,
                         tg_tensor *running_mean, tg_tensor *running_var, bool training,
                         double retention, double eps)
{
    return batch_norm(x, gamma, beta, running_mean, running_var, training, retention, eps, false);
}

tg_tensor *tg_batch_norm_sync(tg_tensor *x, tg_tensor *gamma, tg_tensor *beta,
                              tg_tensor *running_mean, tg_tensor *running_var, bool training,
                              double retention, double eps)
{
    return batch_norm(x, gamma, beta, running_mean, running_var, training, retention, eps, true);
}

int tg_batchnorm_layer_init(tg_batchnorm_layer *layer, tg_tape *tape, tg_dtype dt,
                            int64_t features)
{
    if (layer) /* zeroed on every failure, NULL arguments included */
        *layer = (tg_batchnorm_layer){0};
    if (!layer || !tape)
        return tg_fail(TG_ERR_NULL, "batchnorm_layer_init: %s is NULL",
                       !layer ? "the layer" : "the tape");
    if (features < 1)
        return tg_fail(TG_ERR_ARG, "batchnorm_layer_init: %lld features; needs >= 1",
                       (long long)features);
    tg_tensor *gamma = tg_full(tape, dt, 1, &features, 1.0);
    tg_tensor *beta = tg_zeros(tape, dt, 1, &features);
    tg_tensor *mean = tg_zeros(tape, dt, 1, &features);
    tg_tensor *var = tg_full(tape, dt, 1, &features, 1.0);
    if (!gamma || !beta || !mean || !var)
        return tg_last_error_code();
    *layer = (tg_batchnorm_layer){gamma, beta, mean, var, 0.9, 1e-5, false};
    return TG_OK;
}

tg_tensor *tg_batchnorm_layer_forward(const tg_batchnorm_layer *layer, tg_tensor *x,
                                      bool training)
{
    if (!layer) {
        tg_fail(TG_ERR_NULL, "batchnorm_layer_forward: the layer is NULL");
        return NULL;
    }
    return batch_norm(x, layer->gamma, layer->beta, layer->running_mean, layer->running_var,
                      training, layer->retention, layer->eps, layer->synchronized);
}

int tg_batchnorm_layer_register(const tg_batchnorm_layer *layer, tg_params *params,
                                const char *prefix)
{
    if (!layer)
        return tg_fail(TG_ERR_NULL, "batchnorm_layer_register: the layer is NULL");
    int status = TG_OK;
    if (layer->gamma)
        status = tg_params_add(params, prefix, "weight", layer->gamma, TG_TRAINABLE);
    if (status == TG_OK && layer->beta)
        status = tg_params_add(params, prefix, "bias", layer->beta, TG_TRAINABLE);
    if (status == TG_OK)
        status = tg_params_add(params, prefix, "running_mean", layer->running_mean, TG_BUFFER);
    if (status == TG_OK)
        status = tg_params_add(params, prefix, "running_var", layer->running_var, TG_BUFFER);
    return status;
}
