/* Adam and AdamW with PyTorch's semantics (torch.optim.Adam / AdamW, amsgrad off): bias
 * correction from the parameter's own step count, eps added after the square root of the
 * bias-corrected second moment. Adam's weight decay is L2 added to the gradient; AdamW's is
 * decoupled and shrinks the parameter before the moment update. The update is a composition
 * of builders in the parameter's dtype, as PyTorch computes it. */
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

/* 1 - beta^t for the f64 step count t, with beta^t = exp(t log beta) (no power builder is
 * needed); NULL means exactly 1, which beta = 0 gives for every t >= 1 (log 0 would put an
 * infinity on the tape, which the finite check rejects). */
static tg_tensor *bias_correction(tg_tensor *t, double beta)
{
    if (beta == 0)
        return NULL;
    tg_tensor *power = tg_exp(tg_mul_scalar(t, log(beta)));
    return tg_sub(tg_scalar(t->tape, TG_F64, 1.0), power);
}

static int adam_rule(const tg_optim *opt, size_t i, tg_tensor *g, tg_tensor *lr, tg_tensor *t,
                     tg_optim_values *out)
{
    const tg_adam_opts *o = &opt->adam;
    tg_tensor *p = opt->params[i];
    tg_dtype dt = p->dtype;
    if (o->weight_decay != 0) {
        if (opt->decoupled) /* 1 - lr wd in f64, as PyTorch's Python float */
            p = tg_mul(p, tg_optim_as(tg_sub(tg_scalar(p->tape, TG_F64, 1.0),
                                             tg_mul_scalar(lr, o->weight_decay)), dt));
        else
            g = tg_add(g, tg_mul_scalar(p, o->weight_decay));
    }
    tg_tensor *m = tg_add(tg_mul_scalar(opt->slot[EXP_AVG][i], o->beta1),
                          tg_mul_scalar(g, 1 - o->beta1));
    tg_tensor *v = tg_add(tg_mul_scalar(opt->slot[EXP_AVG_SQ][i], o->beta2),
                          tg_mul(tg_mul_scalar(g, 1 - o->beta2), g));
    /* The scalars in f64 (PyTorch's step_size and bias_correction2_sqrt are Python floats),
     * then rounded to the parameter's dtype where they meet tensors. */
    tg_tensor *correction1 = bias_correction(t, o->beta1);
    tg_tensor *correction2 = bias_correction(t, o->beta2);
    tg_tensor *step_size = correction1 ? tg_div(lr, correction1) : lr;
    tg_tensor *denom = tg_sqrt(v);
    if (correction2)
        denom = tg_div(denom, tg_optim_as(tg_sqrt(correction2), dt));
    denom = tg_add_scalar(denom, o->eps); /* eps after the square root */
    out->slot[EXP_AVG] = m;
    out->slot[EXP_AVG_SQ] = v;
    out->param = tg_sub(p, tg_mul(tg_optim_as(step_size, dt), tg_div(m, denom)));
    return out->param ? TG_OK : tg_last_error_code();
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
    tg_optim *opt = tg_optim_create(name, params, o.lr, slots, adam_rule);
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
