/* Adam and AdamW with PyTorch's semantics (torch.optim.Adam / AdamW, amsgrad off): bias
 * correction from the parameter's own step count, eps added after the square root of the
 * bias-corrected second moment. Adam's weight decay is L2 added to the gradient; AdamW's is
 * decoupled and shrinks the parameter before the moment update. */
#include "optim.h"

#include <math.h>

enum { EXP_AVG = 0, EXP_AVG_SQ = 1 };

tg_adam_opts tg_adam_defaults(void)
{
    return (tg_adam_opts){.lr = 1e-3, .beta1 = 0.9, .beta2 = 0.999, .eps = 1e-8,
                          .weight_decay = 0};
}

tg_adam_opts tg_adamw_defaults(void)
{
    tg_adam_opts o = tg_adam_defaults();
    o.weight_decay = 1e-2;
    return o;
}

static void adam_update(tg_optim *opt, size_t i, const tg_tensor *g, double t)
{
    const tg_adam_opts *o = &opt->adam;
    tg_tensor *p = opt->params[i], *m = opt->slot[EXP_AVG][i], *v = opt->slot[EXP_AVG_SQ][i];
    double step_size = opt->lr / (1 - pow(o->beta1, t));
    double correction2_sqrt = sqrt(1 - pow(o->beta2, t));
    for (int64_t e = 0; e < p->numel; e++) {
        double w = tg_optim_load(p, e), grad = tg_optim_load(g, e);
        if (opt->decoupled)
            w *= 1 - opt->lr * o->weight_decay;
        else
            grad += o->weight_decay * w;
        tg_optim_store(m, e, o->beta1 * tg_optim_load(m, e) + (1 - o->beta1) * grad);
        tg_optim_store(v, e, o->beta2 * tg_optim_load(v, e) + (1 - o->beta2) * grad * grad);
        /* The moments as stored: f32 state then steps exactly as it will be restored. */
        double denom = sqrt(tg_optim_load(v, e)) / correction2_sqrt + o->eps;
        tg_optim_store(p, e, w - step_size * tg_optim_load(m, e) / denom);
    }
}

static tg_optim *adam_new(const char *name, bool decoupled, const tg_params *params,
                          const tg_adam_opts *opts)
{
    if (!params || !opts) {
        tg_fail(TG_ERR_NULL, "%s: %s is NULL", name, !params ? "params" : "opts");
        return NULL;
    }
    const tg_adam_opts o = *opts;
    if (!(o.lr >= 0) || !isfinite(o.lr) || !(o.eps >= 0) || !isfinite(o.eps) ||
        !(o.weight_decay >= 0) || !isfinite(o.weight_decay)) {
        tg_fail(TG_ERR_ARG, "%s: lr %g, eps %g and weight_decay %g must be >= 0 and finite",
                name, o.lr, o.eps, o.weight_decay);
        return NULL;
    }
    if (!(o.beta1 >= 0 && o.beta1 < 1) || !(o.beta2 >= 0 && o.beta2 < 1)) {
        tg_fail(TG_ERR_ARG, "%s: betas (%g, %g) must be in [0, 1)", name, o.beta1, o.beta2);
        return NULL;
    }
    const char *const slots[TG_OPTIM_SLOTS] = {"exp_avg", "exp_avg_sq"};
    tg_optim *opt = tg_optim_create(name, params, o.lr, slots, adam_update);
    if (opt) {
        opt->adam = o;
        opt->decoupled = decoupled;
    }
    return opt;
}

tg_optim *tg_adam_new(const tg_params *params, const tg_adam_opts *opts)
{
    return adam_new("adam", false, params, opts);
}

tg_optim *tg_adamw_new(const tg_params *params, const tg_adam_opts *opts)
{
    return adam_new("adamw", true, params, opts);
}
