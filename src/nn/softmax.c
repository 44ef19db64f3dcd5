/* log_softmax as a composition that is exact at every order. */
#include "internal.h"
#include "tapegrad_nn.h"

/* x - (m + log(sum(exp(x - m)))) with m = detach(max(x)). m only keeps exp from overflowing:
 * it cancels in the value, so detaching it loses no gradient at any order, and the max's
 * tie-splitting rule never enters the derivative. It is evaluated as (x - m) - log(sum(...)):
 * the same function and gradient, but x - m is exact near the max, whereas m + log(sum)
 * rounds at the scale of |x| (an ulp of 1000 is 1e-13). */
tg_tensor *tg_log_softmax(tg_tensor *x, int axis)
{
    if (!tg_check_inputs("log_softmax", 1, &x))
        return NULL;
    if (tg_norm_axis(axis, x->ndim) < 0) {
        tg_fail(TG_ERR_AXIS, "log_softmax: axis %d is out of range for %d dimensions", axis,
                x->ndim);
        return NULL;
    }
    if (x->shape[tg_norm_axis(axis, x->ndim)] == 0) {
        tg_fail(TG_ERR_SHAPE, "log_softmax: axis %d is empty", axis);
        return NULL;
    }
    tg_tensor *m = tg_detach(tg_max(x, 1, &axis, true));
    tg_tensor *shifted = tg_sub(x, m);
    tg_tensor *sum = tg_sum(tg_exp(shifted), 1, &axis, true);
    return tg_sub(shifted, tg_log(sum));
}
