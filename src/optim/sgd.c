/* Stochastic gradient descent with PyTorch's semantics (torch.optim.SGD): L2 weight decay
 * added to the gradient, momentum whose buffer starts as the first gradient (not as zero
 * times momentum plus the gradient, which would differ once dampening is used), and Nesterov
 * momentum. */
#include "optim.h"

#include <math.h>

enum { MOMENTUM = 0 };

static void sgd_update(tg_optim *opt, size_t i, const tg_tensor *g, double t)
{
    const tg_sgd_opts *o = &opt->sgd;
    tg_tensor *p = opt->params[i];
    tg_tensor *buf = opt->slot[MOMENTUM] ? opt->slot[MOMENTUM][i] : NULL;
    for (int64_t e = 0; e < p->numel; e++) {
        double w = tg_optim_load(p, e);
        double d = tg_optim_load(g, e) + o->weight_decay * w;
        if (buf) {
            double b = t == 1 ? d : o->momentum * tg_optim_load(buf, e) + (1 - o->dampening) * d;
            tg_optim_store(buf, e, b);
            /* Step with the buffer as stored, so f32 state and step stay consistent. */
            b = tg_optim_load(buf, e);
            d = o->nesterov ? d + o->momentum * b : b;
        }
        tg_optim_store(p, e, w - opt->lr * d);
    }
}

tg_optim *tg_sgd_new(const tg_params *params, const tg_sgd_opts *opts)
{
    if (!params || !opts) {
        tg_fail(TG_ERR_NULL, "sgd: %s is NULL", !params ? "params" : "opts");
        return NULL;
    }
    const tg_sgd_opts o = *opts;
    if (!(o.lr >= 0) || !isfinite(o.lr) || !(o.momentum >= 0) || !isfinite(o.momentum) ||
        !(o.weight_decay >= 0) || !isfinite(o.weight_decay) || !isfinite(o.dampening)) {
        tg_fail(TG_ERR_ARG, "sgd: lr %g, momentum %g and weight_decay %g must be >= 0 and "
                "finite, dampening %g finite", o.lr, o.momentum, o.weight_decay, o.dampening);
        return NULL;
    }
    if (o.nesterov && (o.momentum <= 0 || o.dampening != 0)) {
        tg_fail(TG_ERR_ARG, "sgd: Nesterov momentum needs momentum > 0 (got %g) and dampening 0 "
                "(got %g)", o.momentum, o.dampening);
        return NULL;
    }
    /* Without momentum there is no buffer at all, as in PyTorch's state. */
    const char *const slots[TG_OPTIM_SLOTS] = {o.momentum != 0 ? "momentum" : NULL, NULL};
    tg_optim *opt = tg_optim_create("sgd", params, o.lr, slots, sgd_update);
    if (opt)
        opt->sgd = o;
    return opt;
}
