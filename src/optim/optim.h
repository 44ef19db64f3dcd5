/* What the optimizers share: the parameter list they update, their state tensors, the
 * learning rate as a tensor, and the checked step (optim.c). An optimizer's rule (sgd.c,
 * adam.c) is a composition of the public builders, like a layer: it builds the new values of
 * one parameter and its buffers as nodes and never reads a number, so the same code runs
 * eagerly (the nodes compute at once) and while the tape traces (they are recorded and a
 * compiled plan runs them at every step). The frame assigns the new values (tg_assign).
 *
 * The state and the learning rate live on the parameters' tape, because a builder takes
 * inputs from one tape only and the update combines parameters with state. */
#ifndef TG_OPTIM_H
#define TG_OPTIM_H

#include "../core/internal.h"
#include "tapegrad_nn.h"

#define TG_OPTIM_SLOTS 2

/* The new values one step gives a parameter and its buffers; slot[k] stays NULL for a slot
 * the optimizer does not use. */
typedef struct {
    tg_tensor *param;
    tg_tensor *slot[TG_OPTIM_SLOTS];
} tg_optim_values;

/* Builds the update of parameter i from its gradient g (checked: the parameter's shape,
 * dtype and tape). lr is the learning rate and t the parameter's step count with this step
 * included (1 on the first), both f64 scalars on that tape. Returns 0, or the status of the
 * builder that failed. */
typedef int (*tg_optim_rule_fn)(const tg_optim *opt, size_t i, tg_tensor *g, tg_tensor *lr,
                                tg_tensor *t, tg_optim_values *out);

/* A tensor the optimizer reads by pointer, as it was when it was made: a rewind past it
 * frees its node slot and its memory for whatever comes next, which a liveness check alone
 * cannot tell from the tensor (a reused slot looks live). */
typedef struct {
    tg_tensor *tensor;
    void *data;
    const char *label; /* interned on the tape; NULL: not compared (parameters) */
    const char *what;  /* for messages: "parameter 'fc.weight'", "optim.step.fc.weight" */
} tg_optim_held;

struct tg_optim {
    const char *name;
    tg_optim_rule_fn rule;
    tg_tape *tape;     /* the parameters' tape, which holds the state and the learning rate */
    tg_tape *own_tape; /* only without parameters: somewhere to keep the learning rate */
    tg_params *state;  /* names the state tensors */
    size_t n;
    tg_tensor **params;
    char **names;                     /* the parameters' names, for messages */
    tg_tensor **step;                 /* f64 scalars */
    tg_tensor **slot[TG_OPTIM_SLOTS]; /* per-parameter buffers, or NULL when unused */
    tg_tensor *lr;                    /* f64 scalar */
    tg_optim_held *held;              /* parameters, state and the learning rate */
    size_t n_held;
    tg_optim_values *pending; /* one step's new values, per parameter */
    tg_tensor **pending_step;
    tg_sgd_opts sgd;
    tg_adam_opts adam;
    bool decoupled; /* AdamW */
};

/* Makes an optimizer over the trainable entries of params with one buffer per parameter for
 * each slot name ("momentum" -> "optim.momentum.<name>"); slot_names[k] may be NULL. */
tg_optim *tg_optim_create(const char *name, const tg_params *params, double lr,
                          const char *const slot_names[TG_OPTIM_SLOTS], tg_optim_rule_fn rule);

/* A scalar in dtype dt: s itself when it has that dtype, else a cast. Rules compute in the
 * parameter's dtype, as PyTorch does, with hyperparameters rounded to it. */
static inline tg_tensor *tg_optim_as(tg_tensor *s, tg_dtype dt)
{
    return s && s->dtype == dt ? s : tg_cast(s, dt);
}

#endif
