/* The optimizer frame: creation over a parameter list, the state buffers and the learning
 * rate on the parameters' tape, the checked step, and the bookkeeping that notices when a
 * rewind dropped any of them. The update rules live in sgd.c and adam.c. */
#include "optim.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

void tg_optim_free(tg_optim *opt)
{
    if (!opt)
        return;
    /* The state tensors stay on the parameters' tape (a tape frees its nodes all at once). */
    tg_params_free(opt->state);
    tg_tape_free(opt->own_tape);
    free(opt->params);
    free(opt->step);
    for (size_t i = 0; opt->names && i < opt->n; i++)
        free(opt->names[i]);
    free(opt->names);
    for (int k = 0; k < TG_OPTIM_SLOTS; k++)
        free(opt->slot[k]);
    free(opt->held);
    free(opt->pending);
    free(opt->pending_step);
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

/* what must live as long as the optimizer. */
static void hold(tg_optim *opt, tg_tensor *t, bool with_label, const char *what)
{
    opt->held[opt->n_held++] = (tg_optim_held){t, t->data, with_label ? t->label : NULL, what};
}

/* A state tensor, listed in opt->state as "<prefix>.<name>" and labelled so (a dump of a
 * compiled step then says what each leaf is). */
static tg_tensor *state_leaf(tg_optim *opt, tg_tensor *t, const char *prefix, const char *name)
{
    if (!t || tg_params_add(opt->state, prefix, name, t, TG_BUFFER) != TG_OK)
        return NULL;
    const tg_param *entry = tg_params_get(opt->state, tg_params_count(opt->state) - 1);
    if (tg_set_label(t, entry->name) != TG_OK)
        return NULL;
    hold(opt, t, true, entry->name);
    return t;
}

/* The trainable parameters must be usable as update targets on one tape that is not
 * tracing (state made while tracing would be constants of the trace). */
static bool check_params(const char *name, const tg_params *params)
{
    const tg_param *first = NULL;
    for (size_t e = 0; e < tg_params_count(params); e++) {
        const tg_param *p = tg_params_get(params, e);
        if (p->kind != TG_TRAINABLE)
            continue;
        tg_tensor *t = p->tensor;
        char who[192];
        snprintf(who, sizeof who, "%s: parameter '%s'", name, p->name);
        if (!tg_check_inputs(who, 1, &t) || !tg_check_has_value(who, t))
            return false;
        if (t->dtype != TG_F32 && t->dtype != TG_F64) {
            tg_fail(TG_ERR_DTYPE, "%s has an unknown dtype", who);
            return false;
        }
        if (t->traced) {
            tg_fail(TG_ERR_TAPE, "%s was made while tracing: a constant of the trace, which "
                    "a plan cannot update", who);
            return false;
        }
        if (!first) {
            first = p;
        } else if (t->tape != first->tensor->tape) {
            tg_fail(TG_ERR_TAPE, "%s is on a different tape from '%s'; an optimizer's "
                    "parameters must share one tape, which also holds its state", who,
                    first->name);
            return false;
        }
    }
    if (first && tg_tape_tracing(first->tensor->tape)) {
        tg_fail(TG_ERR_TAPE, "%s: the parameters' tape is tracing; create the optimizer "
                "before tracing (its state must exist before the trace)", name);
        return false;
    }
    return true;
}

tg_optim *tg_optim_create(const char *name, const tg_params *params, double lr,
                          const char *const slot_names[TG_OPTIM_SLOTS], tg_optim_rule_fn rule)
{
    if (!check_params(name, params))
        return NULL;
    tg_optim *opt = calloc(1, sizeof *opt);
    if (!opt)
        return fail_create(NULL, name, true);
    opt->name = name;
    opt->rule = rule;
    opt->n = tg_params_trainable(params, NULL, 0);
    opt->state = tg_params_new();
    opt->params = calloc(opt->n + 1, sizeof *opt->params);
    opt->step = calloc(opt->n + 1, sizeof *opt->step);
    opt->names = calloc(opt->n + 1, sizeof *opt->names);
    opt->held = calloc(opt->n * (2 + TG_OPTIM_SLOTS) + 1, sizeof *opt->held);
    opt->pending = calloc(opt->n + 1, sizeof *opt->pending);
    opt->pending_step = calloc(opt->n + 1, sizeof *opt->pending_step);
    if (!opt->state || !opt->params || !opt->step || !opt->names || !opt->held ||
        !opt->pending || !opt->pending_step)
        return fail_create(opt, name, true);
    for (int k = 0; k < TG_OPTIM_SLOTS; k++)
        if (slot_names[k] && !(opt->slot[k] = calloc(opt->n + 1, sizeof *opt->slot[k])))
            return fail_create(opt, name, true);
    tg_params_trainable(params, opt->params, opt->n);
    if (opt->n > 0) {
        opt->tape = opt->params[0]->tape;
    } else if (!(opt->tape = opt->own_tape = tg_tape_new())) {
        return fail_create(opt, name, false);
    }

    size_t i = 0;
    for (size_t e = 0; e < tg_params_count(params); e++) {
        const tg_param *p = tg_params_get(params, e);
        if (p->kind != TG_TRAINABLE)
            continue;
        tg_tensor *t = p->tensor;
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
        hold(opt, t, false, opt->names[i]);
        opt->step[i] = state_leaf(opt, tg_scalar(opt->tape, TG_F64, 0.0), "optim.step", p->name);
        if (!opt->step[i])
            return fail_create(opt, name, false);
        for (int k = 0; k < TG_OPTIM_SLOTS; k++) {
            if (!slot_names[k])
                continue;
            char prefix[64];
            snprintf(prefix, sizeof prefix, "optim.%s", slot_names[k]);
            opt->slot[k][i] = state_leaf(opt, tg_zeros(opt->tape, t->dtype, t->ndim, t->shape),
                                         prefix, p->name);
            if (!opt->slot[k][i])
                return fail_create(opt, name, false);
        }
        i++;
    }
    /* Not state: checkpoints leave it alone (PyTorch keeps it with the hyperparameters). */
    opt->lr = tg_scalar(opt->tape, TG_F64, lr);
    if (!opt->lr || tg_set_label(opt->lr, "optim.lr") != TG_OK)
        return fail_create(opt, name, false);
    hold(opt, opt->lr, true, "the learning rate (optim.lr)");
    return opt;
}

/* TG_ERR_TAPE when a rewind dropped a parameter, a state tensor or the learning rate (the
 * optimizer was made after the mark): using them would read and write memory that now
 * belongs to other nodes. */
static tg_status check_held(const tg_optim *opt, const char *op)
{
    for (size_t h = 0; h < opt->n_held; h++) {
        const tg_optim_held *e = &opt->held[h];
        tg_tensor *t = e->tensor;
        if (!tg_node_is_live(t) || t->op != TG_OP_LEAF || t->traced || t->data != e->data ||
            (e->label && t->label != e->label)) {
            return tg_fail(TG_ERR_TAPE, "%s: %s%s%s was dropped by tg_tape_rewind; create "
                           "the optimizer (and the parameters) before the mark you rewind to",
                           op, e->label ? "" : "parameter '", e->what, e->label ? "" : "'");
        }
    }
    return TG_OK;
}

/* Everything a step needs, checked before anything is built or changed. */
static tg_status check_step(tg_optim *opt, tg_tensor *const *grads, const char *op)
{
    tg_status held = check_held(opt, op);
    if (held != TG_OK)
        return held;
    bool tracing = tg_tape_tracing(opt->tape);
    for (size_t i = 0; i < opt->n; i++) {
        tg_tensor *g = grads[i], *p = opt->params[i];
        if (!g)
            continue;
        char gradient[32], parameter[160], who[224];
        snprintf(gradient, sizeof gradient, "gradient %zu", i);
        snprintf(parameter, sizeof parameter, "its parameter '%s'", opt->names[i]);
        snprintf(who, sizeof who, "%s: %s", op, gradient);
        if (!tg_check_inputs(who, 1, &g))
            return tg_last_error_code();
        if (g->tape != p->tape)
            return tg_fail(TG_ERR_TAPE, "%s is on a different tape from %s", who, parameter);
        tg_status same = tg_check_same_type(op, gradient, g, parameter, p);
        if (same != TG_OK)
            return same;
        /* Eagerly the update is computed now, from the gradient's value. */
        if (!tracing && !tg_check_has_value(who, g))
            return tg_last_error_code();
        double t = *(const double *)opt->step[i]->data;
        if (!(t >= 0 && t < 0x1p53 && t == floor(t)))
            return tg_fail(TG_ERR_NUMERIC, "%s: the step count of '%s' is %g; it must be "
                           "a whole number >= 0 (a bad restore?)", op, opt->names[i], t);
    }
    return TG_OK;
}

/* Builds every new value first and assigns them after, so a builder that fails (out of
 * memory, or the finite check) leaves every parameter and buffer as it was. */
static tg_status build_step(tg_optim *opt, tg_tensor *const *grads)
{
    for (size_t i = 0; i < opt->n; i++) {
        opt->pending[i] = (tg_optim_values){NULL, {NULL}};
        opt->pending_step[i] = NULL;
        if (!grads[i])
            continue;
        tg_tensor *t = tg_add_scalar(opt->step[i], 1.0);
        if (!t)
            return tg_last_error_code();
        int status = opt->rule(opt, i, grads[i], opt->lr, t, &opt->pending[i]);
        if (status != TG_OK)
            return status;
        if (!opt->pending[i].param)
            return tg_last_error_code();
        for (int k = 0; k < TG_OPTIM_SLOTS; k++)
            if (opt->slot[k] && !opt->pending[i].slot[k])
                return tg_last_error_code();
        opt->pending_step[i] = t;
    }
    for (size_t i = 0; i < opt->n; i++) {
        if (!grads[i])
            continue;
        int status = tg_assign(opt->params[i], opt->pending[i].param);
        for (int k = 0; k < TG_OPTIM_SLOTS && status == TG_OK; k++)
            if (opt->slot[k])
                status = tg_assign(opt->slot[k][i], opt->pending[i].slot[k]);
        if (status == TG_OK)
            status = tg_assign(opt->step[i], opt->pending_step[i]);
        if (status != TG_OK)
            return status;
    }
    return TG_OK;
}

int tg_optim_step(tg_optim *opt, tg_tensor *const *grads)
{
    if (!opt || (!grads && opt->n > 0))
        return tg_fail(TG_ERR_NULL, "optim_step: %s is NULL", !opt ? "the optimizer" : "grads");
    char op[64];
    snprintf(op, sizeof op, "%s step", opt->name);
    tg_status status = check_step(opt, grads, op);
    if (status != TG_OK)
        return status;
    /* Eagerly the step's nodes have done their work once their values are assigned: the
     * rewind drops them, so nothing accumulates. Traced, they are the step: a plan built from
     * the trace runs them and applies the assignments at every run. A failure drops what was
     * built either way. */
    tg_mark mark = tg_tape_mark(opt->tape);
    status = build_step(opt, grads);
    if (status != TG_OK || !tg_tape_tracing(opt->tape))
        tg_tape_rewind(opt->tape, mark);
    return status;
}

int tg_optim_set_lr(tg_optim *opt, double lr)
{
    if (!opt)
        return tg_fail(TG_ERR_NULL, "optim_set_lr: the optimizer is NULL");
    if (!(lr >= 0) || !isfinite(lr))
        return tg_fail(TG_ERR_ARG, "%s: lr = %g must be >= 0 and finite", opt->name, lr);
    tg_status held = check_held(opt, "optim_set_lr");
    if (held != TG_OK)
        return held;
    *(double *)opt->lr->data = lr;
    return TG_OK;
}

double tg_optim_lr(const tg_optim *opt)
{
    if (!opt) {
        tg_fail(TG_ERR_NULL, "optim_lr: the optimizer is NULL");
        return NAN;
    }
    if (check_held(opt, "optim_lr") != TG_OK)
        return NAN;
    return *(const double *)opt->lr->data;
}

size_t tg_optim_count(const tg_optim *opt) { return opt ? opt->n : 0; }

tg_params *tg_optim_state(tg_optim *opt) { return opt ? opt->state : NULL; }
