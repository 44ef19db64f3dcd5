/** @file tapegrad.h
 * tapegrad: a reverse-mode autodiff tensor engine in C11.
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

/** The major version of tapegrad these headers belong to (tg_version() gives the library's). */
#define TG_VERSION_MAJOR 0
/** The minor version of tapegrad these headers belong to. */
#define TG_VERSION_MINOR 2
/** The patch version of tapegrad these headers belong to. */
#define TG_VERSION_PATCH 0

/** Marks a declaration as part of the public API: the shared library exports what carries it
 * and hides everything else (it is built with -fvisibility=hidden). */
#if defined(__GNUC__) && __GNUC__ >= 4
#define TG_API __attribute__((visibility("default")))
#else
#define TG_API
#endif

/** The most axes a tensor may have. */
#define TG_MAX_DIMS 8

/** Element types. */
typedef enum {
    TG_F32 = 0, /**< float */
    TG_F64 = 1, /**< double */
} tg_dtype;

/** What a failing call returns (negated codes; 0 is success) and tg_last_error_code() gives. */
typedef enum {
    TG_OK = 0,            /**< success */
    TG_ERR_NULL = -1,     /**< a required argument was NULL */
    TG_ERR_SHAPE = -2,    /**< shapes do not fit the op */
    TG_ERR_DTYPE = -3,    /**< dtypes differ or are unknown */
    TG_ERR_AXIS = -4,     /**< an axis is out of range or repeated */
    TG_ERR_ARG = -5,      /**< another argument is out of range */
    TG_ERR_NOMEM = -6,    /**< memory could not be had */
    TG_ERR_TAPE = -7,     /**< tensors from different tapes, or a tape in the wrong state */
    TG_ERR_IO = -8,       /**< a file could not be read or written */
    TG_ERR_FORMAT = -9,   /**< a file's content is malformed */
    TG_ERR_NUMERIC = -10, /**< a NaN or infinity where none may be */
} tg_status;

/** A tape: records every op call as a node, and owns the nodes and their values. */
typedef struct tg_tape tg_tape;
/** A tensor, which is a node of its tape (see the ownership notes above). */
typedef struct tg_node tg_tensor;

/** The library's version, "MAJOR.MINOR.PATCH", as it was built (compare TG_VERSION_*). */
TG_API const char *tg_version(void);

/* ---- errors ---------------------------------------------------------------------------- */
/** The message of the thread's last error; "" when there is none. */
TG_API const char *tg_last_error(void);
/** The code of the thread's last error; TG_OK when there is none. */
TG_API tg_status tg_last_error_code(void);
/** Forgets the thread's last error. */
TG_API void tg_clear_error(void);
/** "f32" or "f64" (a placeholder text for an unknown value, never NULL). */
TG_API const char *tg_dtype_name(tg_dtype dt);

/* ---- tapes ----------------------------------------------------------------------------- */
/** A new, empty tape; NULL when memory ran out. */
TG_API tg_tape *tg_tape_new(void);
/** Frees the tape and every tensor on it; NULL is fine. */
TG_API void tg_tape_free(tg_tape *tape);

/** A mark remembers how far the tape has grown. Rewinding to it drops every node created
 * after it and reuses their memory for what comes next: a training step that builds the
 * same graph each time then runs on the same memory each time (first touches of fresh pages
 * are expensive). Parameters are created before the mark and survive. */
typedef struct {
    size_t nodes; /**< nodes on the tape */
    size_t chunk; /**< the value arena's current chunk */
    size_t used;  /**< bytes used in that chunk */
} tg_mark;
/** Where the tape stands now (see tg_mark). */
TG_API tg_mark tg_tape_mark(const tg_tape *tape);
/** Drops every node created after mark and reuses their memory (see tg_mark). */
TG_API int tg_tape_rewind(tg_tape *tape, tg_mark mark);
/** Nodes on the tape. */
TG_API size_t tg_tape_size(const tg_tape *tape);
/** The label given to nodes created from now on, e.g. the layer building them ("conv1");
 * NULL or "" for none. The tape keeps a copy. */
TG_API int tg_tape_set_scope(tg_tape *tape, const char *scope);
/** The current scope (see tg_tape_set_scope); "" for none. */
TG_API const char *tg_tape_scope(const tg_tape *tape);
/** The numerical guard (like PyTorch's anomaly detection): when on, every op's output is
 * checked for NaN and infinity, and the first op that produces one fails with TG_ERR_NUMERIC
 * and a message naming the op, the node, its shape and its label. Off by default. */
TG_API int tg_tape_set_check_finite(tg_tape *tape, bool on);
/** Whether the numerical guard is on (see tg_tape_set_check_finite). */
TG_API bool tg_tape_checks_finite(const tg_tape *tape);
/** Bytes reserved for values. */
TG_API size_t tg_tape_bytes(const tg_tape *tape);
/** The node made index-th, in creation order; NULL past the end. */
TG_API tg_tensor *tg_tape_node(const tg_tape *tape, size_t index);

/* ---- threads ------------------------------------------------------------------------------ */
/** Threads the kernels may use (process-wide; 1 by default). Every output element is computed
 * by one thread in a fixed order, so results do not depend on the count. */
TG_API int tg_set_num_threads(int n);
/** The thread count set with tg_set_num_threads. */
TG_API int tg_num_threads(void);

/* ---- tensors: inspection ---------------------------------------------------------------- */
/** The tape t is on. */
TG_API tg_tape *tg_tape_of(const tg_tensor *t);
/** t's element type. */
TG_API tg_dtype tg_dtype_of(const tg_tensor *t);
/** t's number of axes (0 for a scalar). */
TG_API int tg_ndim(const tg_tensor *t);
/** t's sizes, tg_ndim(t) of them (owned by the tape). */
TG_API const int64_t *tg_shape(const tg_tensor *t);
/** The size of one axis; negative axes count from the end; -1 on error. */
TG_API int64_t tg_dim(const tg_tensor *t, int axis);
/** The number of elements (1 for a scalar). */
TG_API int64_t tg_numel(const tg_tensor *t);
/** t's values, row-major and contiguous, in tape memory. */
TG_API void *tg_data(tg_tensor *t);
/** The same as tg_data, read-only. */
TG_API const void *tg_data_const(const tg_tensor *t);
/** One element, by row-major index, as a double; NaN with an error if out of range. */
TG_API double tg_get(const tg_tensor *t, int64_t flat_index);
/** The value of a one-element tensor. */
TG_API double tg_item(const tg_tensor *t);
/** The name of the op that made t ("leaf", "add", ...). */
TG_API const char *tg_op_name_of(const tg_tensor *t);
/** A label (e.g. the layer that built a node) for messages; the tape keeps a copy. Nodes
 * created while a scope is set (tg_tape_set_scope) carry it as their label. */
TG_API int tg_set_label(tg_tensor *t, const char *label);
/** t's label; "" when none. */
TG_API const char *tg_label(const tg_tensor *t);

/* ---- tensors: leaves (inputs, parameters, constants) ------------------------------------- */
/** A leaf of zeros. */
TG_API tg_tensor *tg_zeros(tg_tape *tape, tg_dtype dt, int ndim, const int64_t *shape);
/** A leaf with every element equal to value. */
TG_API tg_tensor *tg_full(tg_tape *tape, tg_dtype dt, int ndim, const int64_t *shape,
                          double value);
/** A leaf of shape [] (a scalar). */
TG_API tg_tensor *tg_scalar(tg_tape *tape, tg_dtype dt, double value);
/** Copies numel elements of dtype dt from data. */
TG_API tg_tensor *tg_from_data(tg_tape *tape, tg_dtype dt, int ndim, const int64_t *shape,
                               const void *data);
/** 0, 1, ..., n-1 */
TG_API tg_tensor *tg_arange(tg_tape *tape, tg_dtype dt, int64_t n);

/* ---- random numbers --------------------------------------------------------------------- */
/** xoshiro256** seeded by splitmix64: the integer stream is the same on every machine. Uniform
 * doubles use the top 53 bits. Normals use the Marsaglia polar method (sqrt and log from libm;
 * identical wherever libm rounds log the same way, as every glibc on x86-64 does). */
typedef struct {
    uint64_t s[4];  /**< the generator's state */
    double spare;   /**< the polar method makes normals in pairs */
    int has_spare;  /**< whether spare holds the second of a pair */
} tg_rng;
/** Seeds the generator (any seed, 0 included). */
TG_API void tg_rng_seed(tg_rng *rng, uint64_t seed);
/** The next 64 random bits. */
TG_API uint64_t tg_rng_next(tg_rng *rng);
/** Uniform in [0, 1). */
TG_API double tg_rng_uniform(tg_rng *rng);
/** Normal with mean 0 and std 1. */
TG_API double tg_rng_normal(tg_rng *rng);
/** Uniform in [0, n), unbiased; n >= 1. */
TG_API uint64_t tg_rng_below(tg_rng *rng, uint64_t n);
/** A leaf drawn uniformly from [lo, hi), in row-major order.
 * A NULL rng gives 0 (NaN for doubles) and an error; nothing here aborts. */
TG_API tg_tensor *tg_rand_uniform(tg_tape *tape, tg_rng *rng, tg_dtype dt, int ndim,
                                  const int64_t *shape, double lo, double hi);
/** A leaf drawn from a normal distribution, in row-major order (NULL rng: see
 * tg_rand_uniform). */
TG_API tg_tensor *tg_rand_normal(tg_tape *tape, tg_rng *rng, tg_dtype dt, int ndim,
                                 const int64_t *shape, double mean, double std);

/* ---- primitives ------------------------------------------------------------------------- */
/* Elementwise, unary. */
TG_API tg_tensor *tg_neg(tg_tensor *a);   /**< -a, elementwise */
TG_API tg_tensor *tg_exp(tg_tensor *a);   /**< e^a, elementwise */
TG_API tg_tensor *tg_log(tg_tensor *a);   /**< the natural logarithm, elementwise */
TG_API tg_tensor *tg_sqrt(tg_tensor *a);  /**< the square root, elementwise */
TG_API tg_tensor *tg_recip(tg_tensor *a); /**< 1 / a, elementwise */
/** a + b, elementwise, with NumPy broadcasting; both inputs have the same dtype. */
TG_API tg_tensor *tg_add(tg_tensor *a, tg_tensor *b);
/** a - b, elementwise, with NumPy broadcasting; both inputs have the same dtype. */
TG_API tg_tensor *tg_sub(tg_tensor *a, tg_tensor *b);
/** a * b, elementwise, with NumPy broadcasting; both inputs have the same dtype. */
TG_API tg_tensor *tg_mul(tg_tensor *a, tg_tensor *b);
/** a / b, elementwise, with NumPy broadcasting; both inputs have the same dtype. */
TG_API tg_tensor *tg_div(tg_tensor *a, tg_tensor *b);
/** max(a, b); where a == b the whole gradient goes to a. */
TG_API tg_tensor *tg_maximum(tg_tensor *a, tg_tensor *b);
/** a < b: 1 where the comparison holds, else 0, in the inputs' dtype; no gradient. */
TG_API tg_tensor *tg_lt(tg_tensor *a, tg_tensor *b);
/** a == b: 1 where the comparison holds, else 0, in the inputs' dtype; no gradient. */
TG_API tg_tensor *tg_eq(tg_tensor *a, tg_tensor *b);
/** cond != 0 ? a : b, all three broadcast together; no gradient to cond. */
TG_API tg_tensor *tg_where(tg_tensor *cond, tg_tensor *a, tg_tensor *b);
/** The sum over a set of axes. Reductions take a set of axes (negative axes count from the
 * end; naxes = 0 means every axis). keepdims = false drops the reduced axes (a reshape after
 * the reduction). */
TG_API tg_tensor *tg_sum(tg_tensor *a, int naxes, const int *axes, bool keepdims);
/** The max over a set of axes (as tg_sum). Where several elements tie for the max, they share
 * its gradient equally. */
TG_API tg_tensor *tg_max(tg_tensor *a, int naxes, const int *axes, bool keepdims);
/* Movement. */
/** The same elements in a new shape; one -1 is inferred. */
TG_API tg_tensor *tg_reshape(tg_tensor *a, int ndim, const int64_t *shape);
/** Axes reordered: output axis i is a's axis perm[i] (a's ndim entries). */
TG_API tg_tensor *tg_permute(tg_tensor *a, const int *perm);
/** a broadcast to shape, as NumPy's broadcast_to. */
TG_API tg_tensor *tg_expand(tg_tensor *a, int ndim, const int64_t *shape);
/** Keeps [start[i], stop[i]) along every axis (step 1). */
TG_API tg_tensor *tg_slice(tg_tensor *a, const int64_t *start, const int64_t *stop);
/** Adds before[i] and after[i] elements of value along every axis (non-negative). */
TG_API tg_tensor *tg_pad(tg_tensor *a, const int64_t *before, const int64_t *after,
                         double value);
/** Batched matrix product: a [..., M, K] x b [..., K, N] -> [..., M, N]; batch axes broadcast. */
TG_API tg_tensor *tg_matmul(tg_tensor *a, tg_tensor *b);
/** Sliding windows: x [N, C, H, W] -> [N, C, KH, KW, OH, OW] with OH = (H - KH) / SH + 1.
 * No padding (pad first with tg_pad). tg_col2im is its adjoint. */
TG_API tg_tensor *tg_im2col(tg_tensor *x, int64_t kh, int64_t kw, int64_t sh, int64_t sw);
/** The adjoint of tg_im2col: it sums each window entry back to where it came from, and needs
 * H and W because strides may skip the edge. */
TG_API tg_tensor *tg_col2im(tg_tensor *cols, int64_t h, int64_t w, int64_t sh, int64_t sw);
/** a converted to dtype dt. */
TG_API tg_tensor *tg_cast(tg_tensor *a, tg_dtype dt);
/** The same values with no gradient (a stop-gradient). */
TG_API tg_tensor *tg_detach(tg_tensor *a);

/* ---- compositions (built from primitives; no gradient rules of their own) ----------------- */
/** The mean over a set of axes (as tg_sum). */
TG_API tg_tensor *tg_mean(tg_tensor *a, int naxes, const int *axes, bool keepdims);
/** a * a */
TG_API tg_tensor *tg_square(tg_tensor *a);
/** a + s */
TG_API tg_tensor *tg_add_scalar(tg_tensor *a, double s);
/** a * s */
TG_API tg_tensor *tg_mul_scalar(tg_tensor *a, double s);
/** a > b (as tg_lt). */
TG_API tg_tensor *tg_gt(tg_tensor *a, tg_tensor *b);
/** Swaps two axes. */
TG_API tg_tensor *tg_transpose(tg_tensor *a, int axis0, int axis1);
/** Flattens the axes from start_axis on into one; keeps axes before start_axis. */
TG_API tg_tensor *tg_flatten(tg_tensor *a, int start_axis);

/* ---- recorded side effects ---------------------------------------------------------------- */
/** Records "target := value" on the tape (for example a batch-norm running estimate) and, in
 * eager mode, copies value into target at once. target must be a leaf; value must have its
 * shape and dtype. The update carries no gradient. tg_tape_updates() lists the updates
 * recorded since creation (or the last rewind past them), in order. */
TG_API int tg_assign(tg_tensor *target, tg_tensor *value);
/** The updates recorded with tg_assign, in order: points *targets and *values (either may be
 * NULL) to arrays in tape memory and returns their length. */
TG_API size_t tg_tape_updates(const tg_tape *tape, tg_tensor ***targets, tg_tensor ***values);

/* ---- reverse mode ----------------------------------------------------------------------- */
/** Appends to y's tape the nodes computing the gradient of y with respect to each xs[i] and
 * stores them in grads[i]. seed is the gradient flowing into y (y's shape and dtype); NULL
 * means 1 and then y must have one element. grads[i] is NULL when y does not depend on
 * xs[i] ("no gradient" is never a tensor of zeros). The gradients are ordinary tensors:
 * differentiate them again for higher orders. */
TG_API int tg_grad(tg_tensor *y, int n, tg_tensor *const *xs, tg_tensor *seed,
                   tg_tensor **grads);

/* ---- tracing and compiled plans ------------------------------------------------------------ */
/** Tracing: while a tape traces, the builders (and every composition, tg_grad, the optimizers'
 * steps and tg_assign) record nodes without computing them or allocating their values. Leaves
 * made while tracing (tg_scalar, tg_full, ...) are constants of the trace; tensors made before
 * it (parameters, running estimates, optimizer state, a learning-rate scalar) are read by
 * pointer every time a plan runs, so their current values are used; placeholders are the
 * plan's inputs. A traced tensor has no value: tg_data returns NULL and tg_get fails. */
TG_API int tg_tape_trace(tg_tape *tape, bool on);
/** Whether the tape traces (see tg_tape_trace). */
TG_API bool tg_tape_tracing(const tg_tape *tape);
/** A named input of a trace (the tape must be tracing); its data is given to a plan with
 * tg_plan_set_input. The tape keeps a copy of the name. */
TG_API tg_tensor *tg_placeholder(tg_tape *tape, const char *name, tg_dtype dt, int ndim,
                                 const int64_t *shape);

/** A plan: the traced graph, optimized and specialized to its shapes, with all of its memory
 * allocated when it is built; running it allocates nothing.
 * Ownership: the caller owns a plan (tg_compile / tg_plan_free). The plan owns copies of the
 * traced nodes and constants, so the tape may be rewound past the trace once it is compiled;
 * it reads and updates tensors made before the trace (parameters, state) by pointer: those
 * must outlive the plan. Input pointers given to tg_plan_set_input are read at every run and
 * must stay valid until replaced. Output pointers are valid until the next run or the free. */
typedef struct tg_plan tg_plan;

/** Options of tg_compile; zeroed fields mean the defaults. */
typedef struct {
    /** Passes to switch off, comma-separated ("cse,fuse"; "all" for every pass, "memplan" for
     * the memory plan, "native" for fused kernels compiled to machine code by the system's C
     * compiler when the plan is built: interpreted instead; "winograd" for 3x3 convolutions
     * by Winograd's F(r x r, 3x3), r = 2 to 5, the tile of the fewest products for the
     * plane, forward and for the input and weight gradients, whose values differ from the
     * direct kernels' by rounding, up to about ten times as much (TG_WINOGRAD_TILE=2 to 5 in
     * the environment takes that tile everywhere); "conv_sums" for batch norm's mean summed
     * by the convolution as it writes its output, in another order);
     * TG_DISABLE_PASSES in the environment adds to it. NULL: none. */
    const char *disable;
    /** A directory to write each pass's graph into (NN-name.txt, before and after), and the
     * memory plan; TG_DUMP_PASSES in the environment sets it too. NULL: no dumps. */
    const char *dump_dir;
} tg_compile_opts;

/** Compiles what outputs need, plus every tg_assign recorded while tracing (applied in
 * order at the end of each run), into a plan. opts may be NULL. NULL with an error on
 * failure (an output that was not traced, a dump directory that cannot be written). */
TG_API tg_plan *tg_compile(tg_tape *tape, int n_outputs, tg_tensor *const *outputs,
                           const tg_compile_opts *opts);
/** Gives the placeholder `name` its data (dtype and shape as traced, row-major). */
TG_API int tg_plan_set_input(tg_plan *plan, const char *name, const void *data);
/** Runs every kernel, then the updates. Fails without running when an input is not set or
 * when more threads are asked for than the plan was compiled with. */
TG_API int tg_plan_run(tg_plan *plan);
/** Output i of the last run (shape and dtype of the traced output); NULL on error. */
TG_API const void *tg_plan_output(const tg_plan *plan, int index);
/** Frees the plan; NULL is fine. */
TG_API void tg_plan_free(tg_plan *plan);

/** What compiling did at one stage (see tg_plan_stages). */
typedef struct {
    const char *name; /**< "traced" for stage 0, else the pass ("dce", ...) */
    bool ran;         /**< false when the pass was switched off */
    int nodes;        /**< nodes left after the stage */
    int kernels;      /**< kernels left after the stage */
} tg_plan_stage;
/** What compiling did: for stage 0 (the traced graph) and each pass after it, its name
 * ("traced", "dce", ...), whether it ran, and the nodes and kernels left. Returns the
 * number of stages; fills *info for stage i when i is in range. */
TG_API int tg_plan_stages(const tg_plan *plan, int i, tg_plan_stage *info);
/** Bytes of the plan's arena (intermediate values). */
TG_API size_t tg_plan_arena_bytes(const tg_plan *plan);
/** What the plan's intermediate values would take with a buffer each, as eager execution
 * gives them. */
TG_API size_t tg_plan_unplanned_bytes(const tg_plan *plan);

/* ---- gradient verification -------------------------------------------------------------- */
/** The function under test builds its output from n f64 leaves on a tape gradcheck owns.
 * Anything else it needs (constants, labels) comes through ctx and is built on that tape. */
typedef tg_tensor *(*tg_fn)(tg_tape *tape, int n, tg_tensor *const *inputs, void *ctx);

/** Options of tg_gradcheck; zeroed fields mean the defaults. */
typedef struct {
    double eps;           /**< finite-difference step; 1e-6 when 0 */
    double tol;           /**< pass when every error <= tol; 1e-6 when 0 */
    int64_t full_limit;   /**< full Jacobian when inputs x outputs <= this; 4096 when 0 */
    int directions;       /**< random directions for `<u, J^T v>` vs `<J u, v>`; 3 when 0 */
    bool second_order;    /**< also check the gradient of the gradient */
    uint64_t seed;        /**< for the random directions */
} tg_gradcheck_opts;

/** What tg_gradcheck found. */
typedef struct {
    /** max |analytic - numeric| / max(1, |numeric|) over J; -1 if skipped */
    double jacobian_err;
    double direction_err; /**< same measure for `<u, J^T v>` vs `<J u, v>` */
    double second_err;    /**< same measure for the second-order check; -1 if not asked */
    double max_err;       /**< the largest of the above */
    bool passed;          /**< every error within tol */
    char message[256];    /**< where the largest error was */
} tg_gradcheck_result;

/** Checks f's gradients against finite differences, in double precision.
 * inputs are 1 to 8 f64 tensors (on any tape) that give the shapes and the point to check
 * at; they are copied. Returns 0 when the check ran (see result->passed), negative on error. */
TG_API int tg_gradcheck(tg_fn f, void *ctx, int n, tg_tensor *const *inputs,
                        const tg_gradcheck_opts *opts, tg_gradcheck_result *result);

#ifdef __cplusplus
}
#endif
#endif
