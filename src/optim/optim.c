/* The optimizer frame: creation over a parameter list, the state buffers, the checked step,
 * the learning rate. The update rules live in sgd.c and adam.c. */
#include "optim.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>


void tg_optim_free(tg_optim *opt)
{
    if (!opt)
        return;
    tg_params_free(opt->state);
    tg_tape_free(opt->tape);
    free(opt->params);
    free(opt->step);
    for (size_t i = 0; opt->names && i < opt->n; i++)
        free(opt->names[i]);
    free(opt->names);
    for (int k = 0; k < TG_OPTIM_SLOTS; k++)
        free(opt->slot[k]);
    free(opt);
}

/* Failures of the builders have set their own error already; plain allocations have not. */
static tg_optim *fail_create(tg_optim *opt, const char *name, bool set_nomem)
{
    if (set_nomem)
        tg_fail(TG_ERR_NOMEM, "%s: out of memory", name);
    tg_optim_free(opt);
    return NULL;
}

tg_optim *tg_optim_create(const char *name, const tg_params *params, double lr,
                          const char *const slot_names[TG_OPTIM_SLOTS],
                          tg_optim_update_fn update)
{
    tg_optim *opt = calloc(1, sizeof *opt);
    if (!opt)
        return fail_create(NULL, name, true);
    opt->name = name;
    opt->update = update;
    opt->lr = lr;
    opt->n = tg_params_trainable(params, NULL, 0);
    opt->tape = tg_tape_new();
    opt->state = tg_params_new();
    opt->params = calloc(opt->n + 1, sizeof *opt->params);
    opt->step = calloc(opt->n + 1, sizeof *opt->step);
    opt->names = calloc(opt->n + 1, sizeof *opt->names);
    if (!opt->tape || !opt->state || !opt->params || !opt->step || !opt->names)
        return fail_create(opt, name, true);
    for (int k = 0; k < TG_OPTIM_SLOTS; k++)
        if (slot_names[k] && !(opt->slot[k] = calloc(opt->n + 1, sizeof *opt->slot[k])))
            return fail_create(opt, name, true);
    tg_params_trainable(params, opt->params, opt->n);

    size_t i = 0;
    for (size_t e = 0; e < tg_params_count(params); e++) {
        const tg_param *p = tg_params_get(params, e);
        if (p->kind != TG_TRAINABLE)
            continue;
        tg_tensor *t = p->tensor;
        if (t->dtype != TG_F32 && t->dtype != TG_F64) {
            tg_fail(TG_ERR_DTYPE, "%s: parameter '%s' has an unknown dtype", name, p->name);
            return fail_create(opt, name, false);
        }
        /* Listed twice, a tensor would take two steps per step. */
        for (size_t j = 0; j < i; j++) {
            if (opt->params[j] == t) {
                tg_fail(TG_ERR_ARG, "%s: '%s' and '%s' are the same tensor", name,
                        opt->names[j], p->name);
                return fail_create(opt, name, false);
            }
        }
        if (!(opt->names[i] = malloc(strlen(p->name) + 1)))
            return fail_create(opt, name, true);
        strcpy(opt->names[i], p->name);
        opt->step[i] = tg_scalar(opt->tape, TG_F64, 0.0);
        if (!opt->step[i] ||
            tg_params_add(opt->state, "optim.step", p->name, opt->step[i], TG_BUFFER) != TG_OK)
            return fail_create(opt, name, false);
        for (int k = 0; k < TG_OPTIM_SLOTS; k++) {
            if (!slot_names[k])
                continue;
            char prefix[64];
            snprintf(prefix, sizeof prefix, "optim.%s", slot_names[k]);
            opt->slot[k][i] = tg_zeros(opt->tape, t->dtype, t->ndim, t->shape);
            if (!opt->slot[k][i] ||
                tg_params_add(opt->state, prefix, p->name, opt->slot[k][i], TG_BUFFER) != TG_OK)
                return fail_create(opt, name, false);
        }
        i++;
    }
    return opt;
}

int tg_optim_step(tg_optim *opt, tg_tensor *const *grads)
{
    if (!opt || (!grads && opt->n > 0))
        return tg_fail(TG_ERR_NULL, "optim_step: %s is NULL", !opt ? "the optimizer" : "grads");
    /* Everything is checked first, so a refused step changes nothing. */
    for (size_t i = 0; i < opt->n; i++) {
        const tg_tensor *g = grads[i], *p = opt->params[i];
        if (!g)
            continue;
        char op[64], gradient[32], parameter[160];
        snprintf(op, sizeof op, "%s step", opt->name);
        snprintf(gradient, sizeof gradient, "gradient %zu", i);
        snprintf(parameter, sizeof parameter, "its parameter '%s'", opt->names[i]);
        tg_status same = tg_check_same_type(op, gradient, g, parameter, p);
        if (same != TG_OK)
            return same;
        double t = tg_optim_load(opt->step[i], 0);
        if (!(t >= 0 && t < 0x1p53 && t == floor(t)))
            return tg_fail(TG_ERR_NUMERIC, "%s step: the step count of '%s' is %g; it must be "
                           "a whole number >= 0 (a bad restore?)", opt->name, opt->names[i], t);
    }
    for (size_t i = 0; i < opt->n; i++) {
        if (!grads[i])
            continue;
        double t = tg_optim_load(opt->step[i], 0) + 1;
        opt->update(opt, i, grads[i], t);
        tg_optim_store(opt->step[i], 0, t);
    }
    return TG_OK;
}

int tg_optim_set_lr(tg_optim *opt, double lr)
{
    if (!opt)
        return tg_fail(TG_ERR_NULL, "optim_set_lr: the optimizer is NULL");
    if (!(lr >= 0) || !isfinite(lr))
        return tg_fail(TG_ERR_ARG, "%s: lr = %g must be >= 0 and finite", opt->name, lr);
    opt->lr = lr;
    return TG_OK;
}

double tg_optim_lr(const tg_optim *opt)
{
    if (!opt) {
        tg_fail(TG_ERR_NULL, "optim_lr: the optimizer is NULL");
        return NAN;
    }
    return opt->lr;
}

size_t tg_optim_count(const tg_optim *opt) { return opt ? opt->n : 0; }

tg_params *tg_optim_state(tg_optim *opt) { return opt ? opt->state : NULL; }
