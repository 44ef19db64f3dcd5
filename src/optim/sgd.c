/* Stochastic gradient descent with PyTorch's semantics (torch.optim.SGD): L2 weight decay
 * added to the gradient, momentum whose buffer starts as the first gradient (not as zero
 * times momentum plus the gradient, which would differ once dampening is used), and Nesterov
 * momentum. The update is a composition of builders in the parameter's dtype, as PyTorch
 * computes it (hyperparameters rounded to that dtype). */
#include "optim.h"

#include <math.h>

enum { MOMENTUM = 0 };

static int sgd_rule(const tg_optim *opt, size_t i, tg_tensor *g, tg_tensor *lr, tg_tensor *t,
                    tg_optim_values *out)
{
    const tg_sgd_opts *o = &opt->sgd;
    tg_tensor *p = opt->params[i];
    tg_tensor *d = g;
    if (o->weight_decay != 0)
        d = tg_add(d, tg_mul_scalar(p, o->weight_decay));
    if (o->momentum != 0) {
        /* On the parameter's first step the buffer is d itself: where, not arithmetic, so
         * the count decides in the graph and a traced step needs no branch. */
        tg_tensor *kept = tg_mul_scalar(opt->slot[MOMENTUM][i], o->momentum);
        tg_tensor *fresh = o->dampening != 0 ? tg_mul_scalar(d, 1 - o->dampening) : d;
        tg_tensor *first = tg_optim_as(tg_eq(t, tg_scalar(p->tape, TG_F64, 1.0)), p->dtype);
        tg_tensor *buf = tg_where(first, d, tg_add(kept, fresh));
        out->slot[MOMENTUM] = buf;
        d = o->nesterov ? tg_add(d, tg_mul_scalar(buf, o->momentum)) : buf;
    }
    out->param = tg_sub(p, tg_mul(tg_optim_as(lr, p->dtype), d));
    return out->param ? TG_OK : tg_last_error_code();
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
    tg_optim *opt = tg_optim_create("sgd", params, o.lr, slots, sgd_rule);
    if (opt)
        opt->sgd = o;
    return opt;
}
