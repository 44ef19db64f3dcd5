/* What the optimizers share: the parameter list they update, their state tensors (on a tape
 * of their own, so no rewind of the model's tape can drop them) and the checked step loop.
 * An optimizer is a per-parameter update function; it loops over numbers, which is fine:
 * it is an update, not a gradient rule. */
#ifndef TG_OPTIM_H
#define TG_OPTIM_H

#include "../core/internal.h"
#include "tapegrad_nn.h"

#define TG_OPTIM_SLOTS 2

/* Updates parameter i from grad g (already checked), with t = its step count, this step
 * included (1 on the first). */
typedef void (*tg_optim_update_fn)(tg_optim *opt, size_t i, const tg_tensor *g, double t);

struct tg_optim {
    const char *name;
    tg_optim_update_fn update;
    tg_tape *tape;    /* owns the state tensors */
    tg_params *state; /* names them */
    size_t n;
    tg_tensor **params;
    char **names;                        /* the parameters' names, for messages */
    tg_tensor **step;                    /* f64 scalars */
    tg_tensor **slot[TG_OPTIM_SLOTS];    /* per-parameter buffers, or NULL when unused */
    double lr;
    tg_sgd_opts sgd;
    tg_adam_opts adam;
    bool decoupled; /* AdamW */
};

/* Makes an optimizer over the trainable entries of params with one buffer per parameter for
 * each slot name ("momentum" -> "optim.momentum.<name>"); slot_names[k] may be NULL. */
tg_optim *tg_optim_create(const char *name, const tg_params *params, double lr,
                          const char *const slot_names[TG_OPTIM_SLOTS],
                          tg_optim_update_fn update);

static inline double tg_optim_load(const tg_tensor *t, int64_t i)
{
    return t->dtype == TG_F64 ? ((const double *)t->data)[i] : (double)((const float *)t->data)[i];
}

static inline void tg_optim_store(tg_tensor *t, int64_t i, double v)
{
    if (t->dtype == TG_F64)
        ((double *)t->data)[i] = v;
    else
        ((float *)t->data)[i] = (float)v;
}

#endif
