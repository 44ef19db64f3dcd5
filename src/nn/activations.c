/* Activations: relu and dropout. */
#include "internal.h"
#include "tapegrad_nn.h"

#include <math.h>


/* where(x > 0, x, 0) rather than maximum(x, 0): maximum hands a tie to its first input, which
 * would make relu'(0) = 1; with where the gradient at 0 is 0, as PyTorch's. */
tg_tensor *tg_relu(tg_tensor *x)
{
    if (!tg_check_inputs("relu", 1, &x))
        return NULL;
    tg_tensor *zero = tg_scalar(x->tape, x->dtype, 0.0);
    return tg_where(tg_gt(x, zero), x, zero);
}

static bool check_p(double p)
{
    if (!(p >= 0 && p <= 1)) {
        tg_fail(TG_ERR_ARG, "dropout: p = %g must be in [0, 1]", p);
        return false;
    }
    return true;
}

tg_tensor *tg_dropout_mask(tg_tensor *x, tg_tensor *mask, double p)
{
    tg_tensor *in[2] = {x, mask};
    if (!tg_check_inputs("dropout", 2, in) || !check_p(p))
        return NULL;
    if (tg_check_same_type("dropout", "the mask", mask, "x", x) != TG_OK)
        return NULL;
    for (int64_t i = 0; mask->data && i < mask->numel; i++) { /* a traced mask: unchecked */
        double m = tg_get(mask, i);
        if (m != 0 && m != 1) {
            tg_fail(TG_ERR_ARG, "dropout: mask element %lld is %g; a mask holds 0s and 1s",
                    (long long)i, m);
            return NULL;
        }
    }
    /* p = 1 drops everything; scaling by 0 keeps the result finite (zeros, as PyTorch). */
    double scale = p < 1 ? 1.0 / (1.0 - p) : 0.0;
    return tg_mul(x, tg_mul_scalar(mask, scale));
}

tg_tensor *tg_dropout(tg_tensor *x, double p, bool training, tg_rng *rng)
{
    if (!tg_check_inputs("dropout", 1, &x) || !check_p(p))
        return NULL;
    if (!training || p == 0)
        return x;
    if (!rng) {
        tg_fail(TG_ERR_NULL, "dropout: training needs an rng for the mask");
        return NULL;
    }
    if (tg_tape_tracing(x->tape)) {
        /* A mask drawn now would be a constant of the plan: the same every step. */
        tg_fail(TG_ERR_TAPE, "dropout: a traced step needs its mask as an input: use "
                "tg_dropout_mask with a placeholder");
        return NULL;
    }
    tg_tensor *mask = tg_zeros(x->tape, x->dtype, x->ndim, x->shape);
    if (!mask)
        return NULL;
    for (int64_t i = 0; i < mask->numel; i++) {
        bool keep = tg_rng_uniform(rng) >= p;
        if (x->dtype == TG_F64)
            ((double *)mask->data)[i] = keep;
        else
            ((float *)mask->data)[i] = keep;
    }
    return tg_dropout_mask(x, mask, p);
}
