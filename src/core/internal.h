/* Internal view of tapegrad: the node layout, the tape, the op table and the error state.
 * Everything under src/ and the tests may include this; users include only tapegrad.h. */
#ifndef TG_INTERNAL_H
#define TG_INTERNAL_H

#include "tapegrad.h"
#include "tapegrad_dist.h"

#include <stdarg.h>

/* ---- the op table ------------------------------------------------------------------------ */
typedef enum {
#define TG_OP(e, name, arity, kernel, vjp, flags) TG_OP_##e,
#include "ops.def"
#undef TG_OP
    TG_OP_COUNT
} tg_op;

enum { TG_OPF_VIEW = 1 };

/* A node: what to compute (op, inputs, attributes, shape, dtype) and where its value is.
 * Kernels read the node and the buffers they are handed and never allocate, so an eager tape
 * and a compiled plan can share them. */
struct tg_node {
    tg_tape *tape;
    size_t id; /* position on the tape: creation order is a topological order */
    tg_op op;
    tg_dtype dtype;
    int ndim;
    int n_in;
    int64_t shape[TG_MAX_DIMS];
    int64_t numel;
    struct tg_node *in[3];
    /* Op attributes: permute: perm; slice: start; pad: before then after (at TG_MAX_DIMS),
     * value in fattr; sum/max: attr[0] is the bitmask of reduced axes; im2col/col2im:
     * kh, kw, sh, sw. */
    int64_t attr[2 * TG_MAX_DIMS];
    double fattr;
    void *data;        /* NULL for a node recorded while tracing (and for placeholders) */
    const char *label;
    const char *name;  /* a placeholder's name (interned); NULL otherwise */
    bool traced;       /* made while the tape was tracing: a leaf is then a constant of the
                          trace, any other node has no value */
};

typedef void (*tg_kernel_fn)(const struct tg_node *n, void *out, const void *const *in);
/* A VJP rule: given the node and the gradient g flowing into its output, set grads[i] for
 * each input i with need[i] (leave NULL for "no gradient"). Rules build nodes with the
 * public builders only; they may return a gradient in the output's broadcast shape, and the
 * engine sums it back to the input's shape. Return 0, or negative on a builder failure. */
typedef int (*tg_vjp_fn)(const struct tg_node *n, tg_tensor *g, const bool *need,
                         tg_tensor **grads);

typedef struct {
    const char *name;
    int arity;
    tg_kernel_fn kernel;
    tg_vjp_fn vjp;
    unsigned flags;
} tg_op_info;

extern const tg_op_info tg_op_table[TG_OP_COUNT];
const char *tg_op_name(tg_op op);

/* The rule in force for op: the table's, unless a test planted another. */
tg_vjp_fn tg_vjp_of(tg_op op);
/* Tests swap a rule to show the gradient check catches a wrong one; returns the old rule. */
tg_vjp_fn tg_debug_swap_vjp(tg_op op, tg_vjp_fn rule);

/* ---- errors -------------------------------------------------------------------------------- */
/* Sets the thread's error and returns the code (so callers can `return tg_fail(...)`). */
tg_status tg_fail(tg_status code, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));
/* The error for a NULL input: when an earlier call failed (the usual reason for a NULL), the
 * message quotes the first failure of that chain. */
tg_status tg_fail_null_input(const char *op, int index);
/* 0 when a and b have one dtype and shape; else TG_ERR_DTYPE or TG_ERR_SHAPE with
 * "<op>: <a_name> is <dtype> <shape> but <b_name> is <dtype> <shape>". */
tg_status tg_check_same_type(const char *op, const char *a_name, const struct tg_node *a,
                             const char *b_name, const struct tg_node *b);
/* Formats a shape as "[2, 3, 4]" into buf. */
const char *tg_shape_str(char *buf, size_t size, int ndim, const int64_t *shape);

/* ---- tape internals ------------------------------------------------------------------------- */
/* Appends a node with the given op, inputs and output shape; the value buffer is allocated
 * (or aliased for views) but not computed. Returns NULL with an error set on failure. */
struct tg_node *tg_node_new(tg_tape *tape, tg_op op, tg_dtype dt, int ndim,
                            const int64_t *shape, int n_in, struct tg_node *const *in);
/* Computes a node's value from its inputs' values (eager mode); nothing for a traced node. */
void tg_node_compute(struct tg_node *n);
/* False, with an error naming who asked, for a traced node (it has no value). */
bool tg_check_has_value(const char *who, const struct tg_node *n);
/* With the tape's finite check on: an error naming the node if its value has a NaN or inf. */
int tg_node_check_finite(const struct tg_node *n);
/* The copy of text in a table of strings (*strings, *count), added when it is not there yet:
 * one copy per distinct text. NULL when out of memory. The tape and the compiler's graph
 * both keep their labels this way. */
const char *tg_intern_in(char ***strings, size_t *count, const char *text);
/* A tape-owned copy of text, shared by every node that uses it; NULL when out of memory. */
const char *tg_tape_intern(tg_tape *tape, const char *text);
void *tg_tape_alloc(tg_tape *tape, size_t bytes); /* 64-byte aligned, tape-owned */

/* False for a node dropped by a rewind whose slot has not been reused since. (A slot that
 * was reused holds a new node, and a freed tape cannot be asked: neither is detectable.) */
bool tg_node_is_live(const struct tg_node *n);
/* Checks that inputs are non-NULL, live and share one tape; names the op in the error. */
bool tg_check_inputs(const char *op, int n, tg_tensor *const *in);

/* ---- shapes ------------------------------------------------------------------------------------ */
int64_t tg_shape_numel(int ndim, const int64_t *shape);
bool tg_shape_equal(int na, const int64_t *a, int nb, const int64_t *b);
/* NumPy broadcasting of two shapes; false if they do not broadcast. */
bool tg_broadcast_shapes(int na, const int64_t *a, int nb, const int64_t *b, int *nout,
                         int64_t *out);
/* Row-major strides of shape as seen from an output of rank out_ndim (right-aligned), with
 * 0 for broadcast axes. */
void tg_broadcast_strides(int ndim, const int64_t *shape, int out_ndim, const int64_t *out_shape,
                          int64_t *strides);
void tg_contiguous_strides(int ndim, const int64_t *shape, int64_t *strides);
/* Normalizes a possibly negative axis; -1 if out of range. */
int tg_norm_axis(int axis, int ndim);

/* ---- autodiff helpers --------------------------------------------------------------------------- */
/* Sums g over the axes along which it was broadcast from shape, then reshapes to shape. */
tg_tensor *tg_sum_to_shape(tg_tensor *g, int ndim, const int64_t *shape);
/* Builds the primitive reductions directly with an axis bitmask, keeping dimensions. */
tg_tensor *tg_reduce_mask(tg_op op, tg_tensor *a, uint32_t mask);

#define TG_UNUSED(x) ((void)(x))

#endif
