/** @file tapegrad_nn.h
 * tapegrad_nn: layers, PyTorch-default initialization, named parameter lists and optimizers.
 *
 * Every layer is a forward-only composition of the builders in tapegrad.h: none has a
 * gradient rule of its own, so tg_grad differentiates layers to any order. Each layer comes
 * twice: as a function of tensors (tg_conv2d(x, weight, bias, ...)) and as a struct holding
 * its parameters (tg_conv2d_layer) whose forward calls that function.
 *
 * Ownership, one sentence per object:
 *   - layer structs: plain values the caller owns; their tensors belong to the tape they were
 *     created on. Create them before the training loop's tg_tape_mark so that they survive
 *     tg_tape_rewind. There is nothing to free.
 *   - tg_params:     the caller owns it (tg_params_new / tg_params_free); it owns copies of
 *                    the names, never the tensors (those stay with their tapes).
 *   - tg_optim:      the caller owns it (tg_sgd_new / tg_adam_new / tg_adamw_new /
 *                    tg_optim_free); it owns the tg_params listing its state. The state
 *                    tensors and the learning rate are leaves on the parameters' tape, which
 *                    must outlive it; tg_optim_free leaves them there until the tape is freed
 *                    (or rewound past them).
 *
 * Errors follow tapegrad.h: builders return NULL, int functions a negative tg_status, and
 * tg_last_error() says why. Nothing here aborts or prints.
 */
#ifndef TAPEGRAD_NN_H
#define TAPEGRAD_NN_H

#include "tapegrad.h"

#ifdef __cplusplus
extern "C" {
#endif

/* ---- named parameter lists ------------------------------------------------------------------ */
/** Trainable parameters are what optimizers update; buffers (batch-norm running estimates,
 * optimizer state) are saved and restored by checkpoints but never get a gradient. */
typedef enum {
    TG_TRAINABLE = 0, /**< updated by optimizers */
    TG_BUFFER = 1,    /**< saved and restored, never given a gradient */
} tg_param_kind;

/** One entry of a parameter list. */
typedef struct {
    const char *name;   /**< owned by the list */
    tg_tensor *tensor;  /**< a leaf, owned by its tape */
    tg_param_kind kind; /**< trainable or buffer */
} tg_param;

/** A list of named parameters and buffers, in the order they were added. */
typedef struct tg_params tg_params;

/** A new, empty list; NULL when memory ran out. */
TG_API tg_params *tg_params_new(void);
/** Frees the list; NULL is fine; the tensors are not touched. */
TG_API void tg_params_free(tg_params *params);
/** Adds "prefix.name" (just "name" when prefix is NULL or ""). Names must be unique and
 * non-empty; tensors must be leaves. */
TG_API int tg_params_add(tg_params *params, const char *prefix, const char *name,
                         tg_tensor *tensor, tg_param_kind kind);
/** Adds every entry of src to dst, each name prefixed as in tg_params_add. */
TG_API int tg_params_append(tg_params *dst, const tg_params *src, const char *prefix);
/** Entries in the list. */
TG_API size_t tg_params_count(const tg_params *params);
/** Entry index, in the order added; NULL past the end. */
TG_API const tg_param *tg_params_get(const tg_params *params, size_t index);
/** The tensor named name; NULL if absent. */
TG_API tg_tensor *tg_params_find(const tg_params *params, const char *name);
/** Writes the trainable tensors, in list order, into out[0 .. cap-1] and returns how many
 * trainable entries there are (call with cap 0 to count). This is the order tg_grad's xs
 * and the optimizers' gradient arrays use. */
TG_API size_t tg_params_trainable(const tg_params *params, tg_tensor **out, size_t cap);

/* ---- initialization (PyTorch's defaults) ---------------------------------------------------- */
/** Overwrites a leaf's values in place with draws from U(lo, hi). Initializers draw from rng in
 * row-major order with lo + (hi - lo) * tg_rng_uniform(rng) (the stream tg_rand_uniform
 * uses). */
TG_API int tg_init_uniform(tg_tensor *t, tg_rng *rng, double lo, double hi);
/** Overwrites a leaf's values in place with value. */
TG_API int tg_init_constant(tg_tensor *t, double value);
/** Product of every axis but the first: in for a [out, in] weight, C*KH*KW for [OC, C, KH, KW];
 * -1 with an error for fewer than 2 axes. */
TG_API int64_t tg_fan_in(const tg_tensor *weight);
/** Kaiming-uniform: U(-b, b) with b = gain * sqrt(3 / fan_in), gain = sqrt(2 / (1 + a^2)). */
TG_API int tg_init_kaiming_uniform(tg_tensor *weight, tg_rng *rng, double a);
/** What torch.nn.Linear and Conv2d do on construction: weight Kaiming-uniform with a = sqrt(5),
 * i.e. U(-1/sqrt(fan_in), 1/sqrt(fan_in)), then bias (may be NULL) from the same interval. */
TG_API int tg_init_default(tg_tensor *weight, tg_tensor *bias, tg_rng *rng);

/* ---- layers as functions of tensors --------------------------------------------------------- */
/** x [N, C, H, W], weight [OC, C, KH, KW], bias [OC] or NULL -> [N, OC, OH, OW] with
 * OH = (H + 2 padding - KH) / stride + 1 (floor). Zero padding on both sides. */
TG_API tg_tensor *tg_conv2d(tg_tensor *x, tg_tensor *weight, tg_tensor *bias, int64_t stride,
                            int64_t padding);
/** x [..., in], weight [out, in] (PyTorch's layout), bias [out] or NULL: x W^T + b. */
TG_API tg_tensor *tg_linear(tg_tensor *x, tg_tensor *weight, tg_tensor *bias);
/** Batch normalization over every axis but axis 1 of x [N, C, ...] (so [N, C] is
 * BatchNorm1d and [N, C, H, W] BatchNorm2d). gamma, beta: [C] or NULL (no affine).
 * training: normalize with the batch mean and the biased batch variance (both differentiated,
 * the mean is not detached, so every order is exact); when running_mean and running_var are
 * given, also record (tg_assign) running = retention * running + (1 - retention) * batch,
 * where the running variance takes the *unbiased* batch variance as PyTorch does. Those
 * updates are built from detached statistics and carry no gradient. retention is the share of
 * the old estimate kept, in [0, 1]: **PyTorch's `momentum` is 1 - retention**, so PyTorch's
 * default momentum = 0.1 is retention = 0.9 here (and passing 0.1 here would mean PyTorch's
 * momentum = 0.9). Training needs more than one value per channel.
 * !training: normalize with running_mean and running_var (both required).
 * out = gamma * (x - mean) * recip(sqrt(var + eps)) + beta. */
TG_API tg_tensor *tg_batch_norm(tg_tensor *x, tg_tensor *gamma, tg_tensor *beta,
                                tg_tensor *running_mean, tg_tensor *running_var, bool training,
                                double retention, double eps);
/** Pools over kernel x kernel windows of x [N, C, H, W], taking each window's max; stride 0
 * means stride = kernel; 0 <= padding <= kernel / 2; output sizes are floored as in PyTorch
 * (ceil_mode = false). Padding is -inf; where several elements tie for a window's max they
 * share its gradient equally (PyTorch gives it all to one of them). */
TG_API tg_tensor *tg_max_pool2d(tg_tensor *x, int64_t kernel, int64_t stride, int64_t padding);
/** Pools as tg_max_pool2d, taking each window's mean: padding is zero and counts in the
 * divisor (PyTorch's count_include_pad = true). */
TG_API tg_tensor *tg_avg_pool2d(tg_tensor *x, int64_t kernel, int64_t stride, int64_t padding);
/** where(x > 0, x, 0): the gradient at exactly 0 is 0. */
TG_API tg_tensor *tg_relu(tg_tensor *x);
/** Training: zeroes each element with probability p (mask drawn from rng, one uniform per
 * element in row-major order, kept when u >= p) and scales the rest by 1 / (1 - p); p = 1
 * gives zeros. Not training, or p = 0: x itself, and rng is not used. 0 <= p <= 1. */
TG_API tg_tensor *tg_dropout(tg_tensor *x, double p, bool training, tg_rng *rng);
/** The same with a given mask of 0s and 1s (x's shape and dtype): x * mask / (1 - p). */
TG_API tg_tensor *tg_dropout_mask(tg_tensor *x, tg_tensor *mask, double p);
/** x - (m + log(sum(exp(x - m)))) along axis, with m = detach(max(x)): exact at every order
 * since m cancels (evaluated as (x - m) - log(sum(exp(x - m))), which rounds less). */
TG_API tg_tensor *tg_log_softmax(tg_tensor *x, int axis);
/** logits [N, C], labels [N] holding class indices as numbers of the logits' dtype:
 * -mean_n log_softmax(logits)[n, labels[n]], through onehot = eq(labels, arange(C)).
 * Labels are checked when the loss is built: each must be an integer in [0, C). */
TG_API tg_tensor *tg_cross_entropy(tg_tensor *logits, tg_tensor *labels);
/** Label tensors [n] of dtype dt from integer class indices (a leaf: no gradient needed). */
TG_API tg_tensor *tg_labels_from_int(tg_tape *tape, tg_dtype dt, int64_t n, const int *labels);
/** The same as tg_labels_from_int from bytes (as MNIST's labels come). */
TG_API tg_tensor *tg_labels_from_u8(tg_tape *tape, tg_dtype dt, int64_t n,
                                    const uint8_t *labels);

/* ---- layers holding their parameters -------------------------------------------------------- */
/* `*_init` creates the tensors on tape (the structure is overwritten; on failure it is zeroed
 * and the function returns a negative status); `*_forward` applies the layer; `*_register`
 * adds the tensors to a parameter list under PyTorch's state_dict names ("prefix.weight", ...). */
/** A 2-D convolution with its parameters (see tg_conv2d). */
typedef struct {
    tg_tensor *weight;       /**< [OC, C, K, K], Kaiming-uniform (a = sqrt(5)) */
    tg_tensor *bias;         /**< [OC] or NULL */
    int64_t stride;          /**< as in tg_conv2d */
    int64_t padding;         /**< as in tg_conv2d */
} tg_conv2d_layer;
/** Creates the tensors on tape (the structure is overwritten; on failure it is zeroed and the
 * function returns a negative status), initialized as torch.nn.Conv2d does. */
TG_API int tg_conv2d_layer_init(tg_conv2d_layer *layer, tg_tape *tape, tg_rng *rng,
                                tg_dtype dt, int64_t in_channels, int64_t out_channels,
                                int64_t kernel, int64_t stride, int64_t padding, bool bias);
/** Applies the layer to x. */
TG_API tg_tensor *tg_conv2d_layer_forward(const tg_conv2d_layer *layer, tg_tensor *x);
/** Adds the tensors to a parameter list as "prefix.weight" (and "prefix.bias" if any). */
TG_API int tg_conv2d_layer_register(const tg_conv2d_layer *layer, tg_params *params,
                                    const char *prefix);

/** A fully connected layer with its parameters (see tg_linear). */
typedef struct {
    tg_tensor *weight; /**< [out, in], Kaiming-uniform (a = sqrt(5)) */
    tg_tensor *bias;   /**< [out] or NULL */
} tg_linear_layer;
/** Creates the tensors on tape (as tg_conv2d_layer_init), initialized as torch.nn.Linear
 * does. */
TG_API int tg_linear_layer_init(tg_linear_layer *layer, tg_tape *tape, tg_rng *rng,
                                tg_dtype dt, int64_t in_features, int64_t out_features,
                                bool bias);
/** Applies the layer to x. */
TG_API tg_tensor *tg_linear_layer_forward(const tg_linear_layer *layer, tg_tensor *x);
/** Adds the tensors to a parameter list as "prefix.weight" (and "prefix.bias" if any). */
TG_API int tg_linear_layer_register(const tg_linear_layer *layer, tg_params *params,
                                    const char *prefix);

/** Serves as BatchNorm1d and BatchNorm2d (see tg_batch_norm). Registered as "prefix.weight"
 * (gamma), "prefix.bias" (beta) and the buffers "prefix.running_mean", "prefix.running_var".
 * PyTorch's num_batches_tracked is not kept (it only matters for momentum = None). */
typedef struct {
    tg_tensor *gamma;        /**< [C], ones */
    tg_tensor *beta;         /**< [C], zeros */
    tg_tensor *running_mean; /**< [C], zeros */
    tg_tensor *running_var;  /**< [C], ones */
    /** Share of the running estimates kept at each training step, 0.9; may be changed.
     * PyTorch's momentum is 1 - retention (its default 0.1 is 0.9 here). */
    double retention;
    double eps;              /**< 1e-5; may be changed */
    /** Training statistics over every rank of the tape's communicator (SyncBatchNorm, see
     * tg_batch_norm_sync in tapegrad_dist.h) instead of this rank's batch alone; false. */
    bool synchronized;
} tg_batchnorm_layer;
/** Creates the tensors on tape (as tg_conv2d_layer_init), initialized as
 * torch.nn.BatchNorm2d does, with retention 0.9 and eps 1e-5. */
TG_API int tg_batchnorm_layer_init(tg_batchnorm_layer *layer, tg_tape *tape, tg_dtype dt,
                                   int64_t features);
/** Applies the layer to x, in training or evaluation mode (see tg_batch_norm). */
TG_API tg_tensor *tg_batchnorm_layer_forward(const tg_batchnorm_layer *layer, tg_tensor *x,
                                             bool training);
/** Adds the tensors to a parameter list under PyTorch's names (see tg_batchnorm_layer). */
TG_API int tg_batchnorm_layer_register(const tg_batchnorm_layer *layer, tg_params *params,
                                       const char *prefix);

/* ---- optimizers ----------------------------------------------------------------------------- */
/** An optimizer updates the trainable entries of a tg_params (those present when it is
 * created, in list order, f32 or f64; a tensor may appear only once; all on one tape, or
 * creation fails with TG_ERR_TAPE). tg_optim_step takes grads parallel to them (the order of
 * tg_params_trainable); grads[i] = NULL skips parameter i for that step, as a PyTorch
 * parameter whose .grad is None. Each gradient must have its parameter's shape, dtype and
 * tape; all are checked before anything is updated, so a refused step changes nothing.
 *
 * A step is a composition of the builders, like a layer: the update is computed in the
 * parameter's dtype, as PyTorch computes it (hyperparameters rounded to that dtype; the
 * scalars PyTorch keeps as Python floats, such as Adam's bias corrections, in f64), and
 * the new values are written with tg_assign. Eagerly, tg_optim_step computes and assigns at
 * once and then drops the nodes it built (the tape's size is unchanged). While the tape
 * traces (tg_tape_trace), it records the same nodes and assignments instead: a plan
 * compiled from the trace updates the parameters and the state at every run. Which
 * parameters have a gradient is then fixed by the trace; the step counts are checked when
 * the step is built.
 *
 * The state and the learning rate live on the parameters' tape, so create the optimizer
 * before the tg_tape_mark you rewind to each step, as the parameters, and before tracing
 * (creating it while the tape traces fails with TG_ERR_TAPE). A rewind past them would drop
 * them: tg_optim_step, tg_optim_set_lr and tg_optim_lr then fail with TG_ERR_TAPE.
 *
 * State, exposed by tg_optim_state() as TG_BUFFER entries so a checkpoint can save and
 * restore it exactly (the optimizer reads it back from the tensors at every step); each
 * tensor is also labelled with its name (tg_label), which plan dumps show:
 *   - `optim.step.<name>`:       f64 scalar: steps taken by that parameter (PyTorch keeps one
 *                                per parameter too; it drives Adam's bias correction and
 *                                SGD's first-step rule)
 *   - `optim.momentum.<name>`:   SGD momentum buffer (only when momentum != 0)
 *   - `optim.exp_avg.<name>`:    Adam(W) first moment
 *   - `optim.exp_avg_sq.<name>`: Adam(W) second moment
 *
 * The learning rate is not state (a checkpoint leaves it alone): it is an f64 scalar leaf
 * labelled "optim.lr", set with tg_optim_set_lr between steps. A compiled step reads it at
 * every run, so a schedule needs no recompiling. */
typedef struct tg_optim tg_optim;

/** SGD as torch.optim.SGD: g += weight_decay * p; with momentum, buf = g on a parameter's
 * first step, else buf = momentum * buf + (1 - dampening) * g, and then d = g + momentum *
 * buf (nesterov) or d = buf; without momentum d = g. p -= lr * d. Nesterov needs momentum > 0
 * and dampening 0. Zero fields mean "off", so {.lr = 0.1} is plain SGD. */
typedef struct {
    double lr;           /**< learning rate */
    double momentum;     /**< 0: none */
    double dampening;    /**< 0: none */
    double weight_decay; /**< L2 penalty; 0: none */
    bool nesterov;       /**< Nesterov momentum */
} tg_sgd_opts;

/** Adam as torch.optim.Adam / AdamW (amsgrad = false):
 *   - Adam:  g += weight_decay * p (L2);   AdamW: p *= 1 - lr * weight_decay (decoupled)
 *   - m = beta1 m + (1 - beta1) g;  v = beta2 v + (1 - beta2) g^2;  t = the parameter's step
 *   - p -= lr / (1 - beta1^t) * m / (sqrt(v) / sqrt(1 - beta2^t) + eps)   (eps after the sqrt)
 *
 * with beta^t = exp(t log beta) in f64 (exactly 0 for beta = 0). */
typedef struct {
    double lr;           /**< learning rate */
    double beta1;        /**< decay of the first moment */
    double beta2;        /**< decay of the second moment */
    double eps;          /**< added after the square root */
    double weight_decay; /**< L2 (Adam) or decoupled (AdamW) */
} tg_adam_opts;
/** lr 1e-3, betas (0.9, 0.999), eps 1e-8, no decay */
TG_API tg_adam_opts tg_adam_defaults(void);
/** The same as tg_adam_defaults with weight_decay 1e-2, as PyTorch's AdamW. */
TG_API tg_adam_opts tg_adamw_defaults(void);

/** SGD over the trainable entries of params (see tg_optim and tg_sgd_opts). */
TG_API tg_optim *tg_sgd_new(const tg_params *params, const tg_sgd_opts *opts);
/** Adam over the trainable entries of params (see tg_optim and tg_adam_opts). */
TG_API tg_optim *tg_adam_new(const tg_params *params, const tg_adam_opts *opts);
/** AdamW over the trainable entries of params (see tg_optim and tg_adam_opts). */
TG_API tg_optim *tg_adamw_new(const tg_params *params, const tg_adam_opts *opts);
/** One step with grads parallel to the trainable parameters (see tg_optim). */
TG_API int tg_optim_step(tg_optim *opt, tg_tensor *const *grads);
/** Sets the learning rate: lr >= 0 and finite. */
TG_API int tg_optim_set_lr(tg_optim *opt, double lr);
/** The learning rate; NaN with an error: NULL, or state dropped. */
TG_API double tg_optim_lr(const tg_optim *opt);
/** Parameters updated = length of grads. */
TG_API size_t tg_optim_count(const tg_optim *opt);
/** The optimizer's state as a parameter list, owned by the optimizer. */
TG_API tg_params *tg_optim_state(tg_optim *opt);
/** Frees the optimizer (its tensors stay on the tape); NULL is fine. */
TG_API void tg_optim_free(tg_optim *opt);

#ifdef __cplusplus
}
#endif
#endif
