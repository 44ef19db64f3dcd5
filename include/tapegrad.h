/* tapegrad: a reverse-mode autodiff tensor engine in C11.
 *
 * The model in one paragraph: a tape (tg_tape) records every op call as a node. A tensor
 * (tg_tensor) *is* a node: its op, inputs, attributes, shape and dtype, plus a pointer to its
 * value. Values are computed at once (eager mode). tg_grad() walks the tape backward and
 * appends the backward pass as ordinary nodes built with the same builders, so gradients are
 * tensors on the tape and can be differentiated again.
 *
 * Ownership, one sentence per object:
 *   - tg_tape:   the caller owns it (tg_tape_new / tg_tape_free); it owns every node and value.
 *   - tg_tensor: owned by its tape; valid until tg_tape_free or a tg_tape_rewind to a mark taken
 *                before it was created. Never free a tensor.
 *   - data:      tg_data() points into tape memory; valid as long as the tensor. Builders copy
 *                what they are given (tg_from_data copies the caller's buffer).
 *   - tg_rng:    a plain value the caller owns; no heap memory.
 *   - errors:    tg_last_error() points to thread-local storage, valid until the next failing
 *                call on the same thread.
 *
 * Errors: a builder returns NULL on a wrong shape, dtype, axis or a NULL argument; functions
 * returning int return 0 on success and a negative tg_status on failure. In both cases
 * tg_last_error() says which op failed and why. The library never aborts or prints on a
 * caller's mistake. A NULL input (say, from an earlier failed builder) gives a new error that
 * quotes the earlier one, so a forward pass can be checked once at the end.
 *
 * Threads: a tape is used by one thread at a time. Different tapes are independent.
 */
#ifndef TAPEGRAD_H
#define TAPEGRAD_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

#define TG_MAX_DIMS 8

typedef enum { TG_F32 = 0, TG_F64 = 1 } tg_dtype;

typedef enum {
    TG_OK = 0,
    TG_ERR_NULL = -1,     /* a required argument was NULL */
    TG_ERR_SHAPE = -2,    /* shapes do not fit the op */
    TG_ERR_DTYPE = -3,    /* dtypes differ or are unknown */
    TG_ERR_AXIS = -4,     /* an axis is out of range or repeated */
    TG_ERR_ARG = -5,      /* another argument is out of range */
    TG_ERR_NOMEM = -6,    /* memory could not be had */
    TG_ERR_TAPE = -7,     /* tensors from different tapes, or a tape in the wrong state */
    TG_ERR_IO = -8,       /* a file could not be read or written */
    TG_ERR_FORMAT = -9,   /* a file's content is malformed */
    TG_ERR_NUMERIC = -10, /* a NaN or infinity where none may be */
} tg_status;

typedef struct tg_tape tg_tape;
typedef struct tg_node tg_tensor;

/* ---- errors ---------------------------------------------------------------------------- */
const char *tg_last_error(void);      /* "" when there is none */
tg_status tg_last_error_code(void);   /* TG_OK when there is none */
void tg_clear_error(void);
const char *tg_dtype_name(tg_dtype dt);

/* ---- tapes ----------------------------------------------------------------------------- */
tg_tape *tg_tape_new(void);
void tg_tape_free(tg_tape *tape); /* NULL is fine */

/* A mark remembers how far the tape has grown. Rewinding to it drops every node created
 * after it and reuses their memory for what comes next: a training step that builds the
 * same graph each time then runs on the same memory each time (first touches of fresh pages
 * are expensive). Parameters are created before the mark and survive. */
typedef struct {
    size_t nodes;
    size_t chunk;
    size_t used;
} tg_mark;
tg_mark tg_tape_mark(const tg_tape *tape);
int tg_tape_rewind(tg_tape *tape, tg_mark mark);
size_t tg_tape_size(const tg_tape *tape);        /* nodes on the tape */
/* The label given to nodes created from now on, e.g. the layer building them ("conv1");
 * NULL or "" for none. The tape keeps a copy. */
int tg_tape_set_scope(tg_tape *tape, const char *scope);
const char *tg_tape_scope(const tg_tape *tape);
/* The numerical guard (like PyTorch's anomaly detection): when on, every op's output is
 * checked for NaN and infinity, and the first op that produces one fails with TG_ERR_NUMERIC
 * and a message naming the op, the node, its shape and its label. Off by default. */
int tg_tape_set_check_finite(tg_tape *tape, bool on);
bool tg_tape_checks_finite(const tg_tape *tape);
size_t tg_tape_bytes(const tg_tape *tape);       /* bytes reserved for values */
tg_tensor *tg_tape_node(const tg_tape *tape, size_t index); /* creation order; NULL past end */

/* ---- threads ------------------------------------------------------------------------------ */
/* Threads the kernels may use (process-wide; 1 by default). Every output element is computed
 * by one thread in a fixed order, so results do not depend on the count. */
int tg_set_num_threads(int n);
int tg_num_threads(void);

/* ---- tensors: inspection ---------------------------------------------------------------- */
tg_tape *tg_tape_of(const tg_tensor *t);
tg_dtype tg_dtype_of(const tg_tensor *t);
int tg_ndim(const tg_tensor *t);
const int64_t *tg_shape(const tg_tensor *t);
int64_t tg_dim(const tg_tensor *t, int axis); /* negative axes count from the end; -1 on error */
int64_t tg_numel(const tg_tensor *t);
void *tg_data(tg_tensor *t);                  /* row-major, contiguous */
const void *tg_data_const(const tg_tensor *t);
double tg_get(const tg_tensor *t, int64_t flat_index); /* NaN with an error if out of range */
double tg_item(const tg_tensor *t);                     /* the value of a one-element tensor */
const char *tg_op_name_of(const tg_tensor *t);
/* A label (e.g. the layer that built a node) for messages; the tape keeps a copy. Nodes
 * created while a scope is set (tg_tape_set_scope) carry it as their label. */
int tg_set_label(tg_tensor *t, const char *label);
const char *tg_label(const tg_tensor *t); /* "" when none */

/* ---- tensors: leaves (inputs, parameters, constants) ------------------------------------- */
tg_tensor *tg_zeros(tg_tape *tape, tg_dtype dt, int ndim, const int64_t *shape);
tg_tensor *tg_full(tg_tape *tape, tg_dtype dt, int ndim, const int64_t *shape, double value);
tg_tensor *tg_scalar(tg_tape *tape, tg_dtype dt, double value); /* shape [] */
/* Copies numel elements of dtype dt from data. */
tg_tensor *tg_from_data(tg_tape *tape, tg_dtype dt, int ndim, const int64_t *shape,
                        const void *data);
/* 0, 1, ..., n-1 */
tg_tensor *tg_arange(tg_tape *tape, tg_dtype dt, int64_t n);

/* ---- random numbers --------------------------------------------------------------------- */
/* xoshiro256** seeded by splitmix64: the integer stream is the same on every machine. Uniform
 * doubles use the top 53 bits. Normals use the Marsaglia polar method (sqrt and log from libm;
 * identical wherever libm rounds log the same way, as every glibc on x86-64 does). */
typedef struct {
    uint64_t s[4];
    double spare; /* the polar method makes normals in pairs */
    int has_spare;
} tg_rng;
void tg_rng_seed(tg_rng *rng, uint64_t seed);
uint64_t tg_rng_next(tg_rng *rng);
double tg_rng_uniform(tg_rng *rng);                /* [0, 1) */
double tg_rng_normal(tg_rng *rng);                 /* mean 0, std 1 */
uint64_t tg_rng_below(tg_rng *rng, uint64_t n);    /* uniform in [0, n), unbiased; n >= 1 */
/* A NULL rng gives 0 (NaN for doubles) and an error; nothing here aborts. */
tg_tensor *tg_rand_uniform(tg_tape *tape, tg_rng *rng, tg_dtype dt, int ndim,
                           const int64_t *shape, double lo, double hi);
tg_tensor *tg_rand_normal(tg_tape *tape, tg_rng *rng, tg_dtype dt, int ndim,
                          const int64_t *shape, double mean, double std);

/* ---- primitives ------------------------------------------------------------------------- */
/* Elementwise, unary. */
tg_tensor *tg_neg(tg_tensor *a);
tg_tensor *tg_exp(tg_tensor *a);
tg_tensor *tg_log(tg_tensor *a);
tg_tensor *tg_sqrt(tg_tensor *a);
tg_tensor *tg_recip(tg_tensor *a);
/* Elementwise, binary, with NumPy broadcasting; both inputs have the same dtype. */
tg_tensor *tg_add(tg_tensor *a, tg_tensor *b);
tg_tensor *tg_sub(tg_tensor *a, tg_tensor *b);
tg_tensor *tg_mul(tg_tensor *a, tg_tensor *b);
tg_tensor *tg_div(tg_tensor *a, tg_tensor *b);
/* max(a, b); where a == b the whole gradient goes to a. */
tg_tensor *tg_maximum(tg_tensor *a, tg_tensor *b);
/* 1 where the comparison holds, else 0, in the inputs' dtype; no gradient. */
tg_tensor *tg_lt(tg_tensor *a, tg_tensor *b);
tg_tensor *tg_eq(tg_tensor *a, tg_tensor *b);
/* cond != 0 ? a : b, all three broadcast together; no gradient to cond. */
tg_tensor *tg_where(tg_tensor *cond, tg_tensor *a, tg_tensor *b);
/* Reductions over a set of axes (negative axes count from the end; naxes = 0 means every
 * axis). keepdims = false drops the reduced axes (a reshape after the reduction). */
tg_tensor *tg_sum(tg_tensor *a, int naxes, const int *axes, bool keepdims);
/* Where several elements tie for the max, they share its gradient equally. */
tg_tensor *tg_max(tg_tensor *a, int naxes, const int *axes, bool keepdims);
/* Movement. */
tg_tensor *tg_reshape(tg_tensor *a, int ndim, const int64_t *shape); /* one -1 is inferred */
tg_tensor *tg_permute(tg_tensor *a, const int *perm);                /* a's ndim entries */
tg_tensor *tg_expand(tg_tensor *a, int ndim, const int64_t *shape);  /* NumPy broadcast_to */
/* Keeps [start[i], stop[i]) along every axis (step 1). */
tg_tensor *tg_slice(tg_tensor *a, const int64_t *start, const int64_t *stop);
/* Adds before[i] and after[i] elements of value along every axis (non-negative). */
tg_tensor *tg_pad(tg_tensor *a, const int64_t *before, const int64_t *after, double value);
/* Batched matrix product: a [..., M, K] x b [..., K, N] -> [..., M, N]; batch axes broadcast. */
tg_tensor *tg_matmul(tg_tensor *a, tg_tensor *b);
/* Sliding windows: x [N, C, H, W] -> [N, C, KH, KW, OH, OW] with OH = (H - KH) / SH + 1.
 * No padding (pad first with tg_pad). tg_col2im is its adjoint: it sums each window entry
 * back to where it came from, and needs H and W because strides may skip the edge. */
tg_tensor *tg_im2col(tg_tensor *x, int64_t kh, int64_t kw, int64_t sh, int64_t sw);
tg_tensor *tg_col2im(tg_tensor *cols, int64_t h, int64_t w, int64_t sh, int64_t sw);
tg_tensor *tg_cast(tg_tensor *a, tg_dtype dt);
/* The same values with no gradient (a stop-gradient). */
tg_tensor *tg_detach(tg_tensor *a);

/* ---- compositions (built from primitives; no gradient rules of their own) ----------------- */
tg_tensor *tg_mean(tg_tensor *a, int naxes, const int *axes, bool keepdims);
tg_tensor *tg_square(tg_tensor *a);
tg_tensor *tg_add_scalar(tg_tensor *a, double s);
tg_tensor *tg_mul_scalar(tg_tensor *a, double s);
tg_tensor *tg_gt(tg_tensor *a, tg_tensor *b);
tg_tensor *tg_transpose(tg_tensor *a, int axis0, int axis1);
tg_tensor *tg_flatten(tg_tensor *a, int start_axis); /* keeps axes before start_axis */

/* ---- recorded side effects ---------------------------------------------------------------- */
/* Records "target := value" on the tape (for example a batch-norm running estimate) and, in
 * eager mode, copies value into target at once. target must be a leaf; value must have its
 * shape and dtype. The update carries no gradient. tg_tape_updates() lists the updates
 * recorded since creation (or the last rewind past them), in order. */
int tg_assign(tg_tensor *target, tg_tensor *value);
size_t tg_tape_updates(const tg_tape *tape, tg_tensor ***targets, tg_tensor ***values);

/* ---- reverse mode ----------------------------------------------------------------------- */
/* Appends to y's tape the nodes computing the gradient of y with respect to each xs[i] and
 * stores them in grads[i]. seed is the gradient flowing into y (y's shape and dtype); NULL
 * means 1 and then y must have one element. grads[i] is NULL when y does not depend on
 * xs[i] ("no gradient" is never a tensor of zeros). The gradients are ordinary tensors:
 * differentiate them again for higher orders. */
int tg_grad(tg_tensor *y, int n, tg_tensor *const *xs, tg_tensor *seed, tg_tensor **grads);

/* ---- tracing and compiled plans ------------------------------------------------------------ */
/* Tracing: while a tape traces, the builders (and every composition, tg_grad, the optimizers'
 * steps and tg_assign) record nodes without computing them or allocating their values. Leaves
 * made while tracing (tg_scalar, tg_full, ...) are constants of the trace; tensors made before
 * it (parameters, running estimates, optimizer state, a learning-rate scalar) are read by
 * pointer every time a plan runs, so their current values are used; placeholders are the
 * plan's inputs. A traced tensor has no value: tg_data returns NULL and tg_get fails. */
int tg_tape_trace(tg_tape *tape, bool on);
bool tg_tape_tracing(const tg_tape *tape);
/* A named input of a trace (the tape must be tracing); its data is given to a plan with
 * tg_plan_set_input. The tape keeps a copy of the name. */
tg_tensor *tg_placeholder(tg_tape *tape, const char *name, tg_dtype dt, int ndim,
                          const int64_t *shape);

/* A plan: the traced graph, optimized and specialized to its shapes, with all of its memory
 * allocated when it is built; running it allocates nothing.
 * Ownership: the caller owns a plan (tg_compile / tg_plan_free). The plan owns copies of the
 * traced nodes and constants, so the tape may be rewound past the trace once it is compiled;
 * it reads and updates tensors made before the trace (parameters, state) by pointer: those
 * must outlive the plan. Input pointers given to tg_plan_set_input are read at every run and
 * must stay valid until replaced. Output pointers are valid until the next run or the free. */
typedef struct tg_plan tg_plan;

typedef struct {
    /* Passes to switch off, comma-separated ("cse,fuse"; "all" for every pass, "memplan" for
     * the memory plan); TG_DISABLE_PASSES in the environment adds to it. NULL: none. */
    const char *disable;
    /* A directory to write each pass's graph into (NN-name.txt, before and after), and the
     * memory plan; TG_DUMP_PASSES in the environment sets it too. NULL: no dumps. */
    const char *dump_dir;
} tg_compile_opts;

/* Compiles what outputs need, plus every tg_assign recorded while tracing (applied in
 * order at the end of each run), into a plan. opts may be NULL. NULL with an error on
 * failure (an output that was not traced, a dump directory that cannot be written). */
tg_plan *tg_compile(tg_tape *tape, int n_outputs, tg_tensor *const *outputs,
                    const tg_compile_opts *opts);
/* Gives the placeholder `name` its data (dtype and shape as traced, row-major). */
int tg_plan_set_input(tg_plan *plan, const char *name, const void *data);
/* Runs every kernel, then the updates. Fails without running when an input is not set or
 * when more threads are asked for than the plan was compiled with. */
int tg_plan_run(tg_plan *plan);
/* Output i of the last run (shape and dtype of the traced output); NULL on error. */
const void *tg_plan_output(const tg_plan *plan, int index);
void tg_plan_free(tg_plan *plan); /* NULL is fine */

/* What compiling did: for stage 0 (the traced graph) and each pass after it, its name
 * ("traced", "dce", ...), whether it ran, and the nodes and kernels left. Returns the
 * number of stages; fills *info for stage i when i is in range. */
typedef struct {
    const char *name;
    bool ran;
    int nodes, kernels;
} tg_plan_stage;
int tg_plan_stages(const tg_plan *plan, int i, tg_plan_stage *info);
/* Bytes of the plan's arena (intermediate values) and what the same values would take
 * with a buffer each, as eager execution gives them. */
size_t tg_plan_arena_bytes(const tg_plan *plan);
size_t tg_plan_unplanned_bytes(const tg_plan *plan);

/* ---- gradient verification -------------------------------------------------------------- */
/* The function under test builds its output from n f64 leaves on a tape gradcheck owns.
 * Anything else it needs (constants, labels) comes through ctx and is built on that tape. */
typedef tg_tensor *(*tg_fn)(tg_tape *tape, int n, tg_tensor *const *inputs, void *ctx);

typedef struct {
    double eps;           /* finite-difference step; 1e-6 when 0 */
    double tol;           /* pass when every error <= tol; 1e-6 when 0 */
    int64_t full_limit;   /* full Jacobian when inputs x outputs <= this; 4096 when 0 */
    int directions;       /* random directions for <u, J^T v> vs <J u, v>; 3 when 0 */
    bool second_order;    /* also check the gradient of the gradient */
    uint64_t seed;        /* for the random directions */
} tg_gradcheck_opts;

typedef struct {
    double jacobian_err;  /* max |analytic - numeric| / max(1, |numeric|) over J; -1 if skipped */
    double direction_err; /* same measure for <u, J^T v> vs <J u, v> */
    double second_err;    /* same measure for the second-order check; -1 if not asked */
    double max_err;       /* the largest of the above */
    bool passed;
    char message[256];    /* where the largest error was */
} tg_gradcheck_result;

/* inputs are 1 to 8 f64 tensors (on any tape) that give the shapes and the point to check
 * at; they are copied. Returns 0 when the check ran (see result->passed), negative on error. */
int tg_gradcheck(tg_fn f, void *ctx, int n, tg_tensor *const *inputs,
                 const tg_gradcheck_opts *opts, tg_gradcheck_result *result);

#ifdef __cplusplus
}
#endif
#endif
