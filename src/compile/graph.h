/* The compiler's graph: one array of nodes that every pass reads and rewrites.
 *
 * A graph is built from a traced tape (tg_graph_from_tape) and holds its own copy of every
 * node, so the tape can be rewound once a plan is compiled. Nodes refer to their inputs by
 * index; the array is kept in a topological order (inputs before users) at the end of every
 * pass by tg_graph_compact.
 *
 * Node semantics are the tape's: a node whose op is a primitive (op < TG_OP_COUNT) has the
 * same shape, dtype and attribute encoding as the struct tg_node it came from (see
 * core/internal.h), so the eager kernels run it unchanged. Passes may also make plan ops
 * (op >= TG_PLAN_OP_FIRST, listed in plan_ops.def): fused elementwise/reduction programs and
 * lowered convolutions. A plan op keeps what it needs in `payload`, owned by the node.
 *
 * How a pass rewrites: append new nodes with tg_graph_add (they may come after their users
 * for a moment), point every use of an old node at a new one with tg_graph_replace, then
 * call tg_graph_compact, which drops whatever no root needs and restores topological order.
 * tg_graph_add may move the node array: hold indices across it, never pointers.
 *
 * Roots: the outputs the user reads back and the values of recorded updates
 * ("target := value", applied in order after every kernel of a run). */
#ifndef TG_COMPILE_GRAPH_H
#define TG_COMPILE_GRAPH_H

#include "../core/internal.h"

#include <stdio.h>

#define TG_IR_MAX_IN 16

/* Plan ops: kernels that exist only in compiled plans. */
typedef enum {
    TG_PLAN_OP_FIRST = TG_OP_COUNT,
#define TG_PLAN_OP(e, name, kernel, prepare, describe, release) TG_PLAN_OP_##e,
#include "plan_ops.def"
#undef TG_PLAN_OP
    TG_PLAN_OP_END
} tg_plan_op;

/* What a leaf is bound to. */
typedef enum {
    TG_LEAF_NONE = 0, /* not a leaf */
    TG_LEAF_CONST,    /* a constant made while tracing: the graph owns a copy of its value */
    TG_LEAF_BOUND,    /* a value computed before tracing (a parameter, a running estimate,
                         optimizer state, the learning rate): read by pointer at every run,
                         so changes between runs are seen; an update target is one of these */
    TG_LEAF_INPUT,    /* a placeholder: its data pointer is given to the plan before a run */
} tg_leaf_kind;

typedef struct tg_ir_node {
    int op; /* tg_op, or tg_plan_op for plan ops */
    tg_dtype dtype;
    int ndim;
    int64_t shape[TG_MAX_DIMS];
    int64_t numel;
    int n_in;
    int in[TG_IR_MAX_IN];
    /* The primitives' attributes, encoded as in struct tg_node (permute: perm; slice:
     * start; pad: before, after at TG_MAX_DIMS, value in fattr; sum/max: attr[0] = reduced
     * axes bitmask; im2col/col2im: kh, kw, sh, sw). Plan ops may use them as they like. */
    int64_t attr[2 * TG_MAX_DIMS];
    double fattr;
    const char *label; /* the layer or scope that built it; interned by the graph */

    /* Leaves. */
    tg_leaf_kind leaf;
    void *data;        /* CONST: owned copy; BOUND: the traced tensor's buffer (not owned) */
    const char *name;  /* INPUT: the placeholder's name (interned by the graph) */
    size_t tape_id;    /* id of the tape node it came from (for messages and dumps); SIZE_MAX
                          for nodes a pass made */

    /* Plan ops. */
    void *payload;           /* released by the op's release function */
    uint32_t inplace_inputs; /* bit k: the kernel may write its output over input k (same
                                shape and dtype, read elementwise at the same positions before
                                the same position is written); the memory plan decides */
    size_t scratch_bytes;    /* per thread: a run hands the kernel tg_num_threads() blocks of
                                this size, back to back (thread t uses block t); set by
                                prepare. A plan refuses to run with more threads than it was
                                compiled for. */
    const struct tg_prologue *prologue; /* set by the runner for the kernel's run: a kernel
                                           to run inside it (compile/prologue.h), or NULL */
} tg_ir_node;

typedef struct tg_graph {
    tg_ir_node *nodes;
    int n, cap;
    int *outputs; /* nodes whose values the user reads after a run */
    int n_outputs;
    int *update_target, *update_value; /* updates, in recording order */
    int n_updates;
    char **strings; /* interned labels and names */
    size_t n_strings;
    /* Compaction keeps nodes no root needs while this is set: a graph from a tape starts with
     * every traced node (eager execution computes them all), and the DCE pass clears it. */
    bool keep_dead;
} tg_graph;

/* ---- building and rewriting ------------------------------------------------------------- */
void tg_graph_init(tg_graph *g);
void tg_graph_free(tg_graph *g); /* releases payloads and owned constants */

/* Copies every traced node of tape (and what they read) as a graph whose roots are outputs
 * and the updates recorded while tracing; keep_dead is set. Nodes computed while tracing become ops; placeholders become INPUT
 * leaves; leaves made while tracing become CONST; anything computed before tracing becomes a
 * BOUND leaf read by pointer. Returns 0 or a negative tg_status with the error set. */
int tg_graph_from_tape(tg_graph *g, tg_tape *tape, int n_outputs, tg_tensor *const *outputs);

/* Appends a copy of *proto (its n, in, shape, ...) and returns its index; numel is
 * recomputed from the shape; a payload passes to the graph. -1 when out of memory. */
int tg_graph_add(tg_graph *g, const tg_ir_node *proto);
/* Shorthand: a node of op with these inputs and shape, no attributes, label of in[0]. */
int tg_graph_add_op(tg_graph *g, int op, tg_dtype dt, int ndim, const int64_t *shape, int n_in,
                    const int *in);
/* A CONST scalar (shape []) of dtype dt. */
int tg_graph_add_scalar(tg_graph *g, tg_dtype dt, double value);
/* Every use of node `old` (as an input, an output or an update value) now reads `with`. */
void tg_graph_replace(tg_graph *g, int old, int with);
/* Drops nodes no root needs (unless keep_dead) and restores a topological order that keeps the current order
 * where it already is one. Returns 0, or TG_ERR_NOMEM / TG_ERR_ARG (a cycle). */
int tg_graph_compact(tg_graph *g);
/* users[i] = how many input slots (plus outputs and update values) read node i. The caller
 * frees the array. NULL when out of memory. */
int *tg_graph_use_counts(const tg_graph *g);
const char *tg_graph_intern(tg_graph *g, const char *text);

/* ---- facts about nodes -------------------------------------------------------------------- */
bool tg_ir_is_elementwise(int op); /* unary, binary, where, cast */
bool tg_ir_is_view(int op);        /* reshape, detach: the output is the input's buffer */
const char *tg_ir_op_name(int op);
/* Value of a CONST scalar-like node (all elements equal); false if not such a node. */
bool tg_ir_const_value(const tg_graph *g, int i, double *value);

/* ---- dumps -------------------------------------------------------------------------------- */
/* One line per node: index, op (or the plan op's description), inputs, dtype, shape,
 * label; leaves say what they are bound to. `offsets`, when not NULL, gives each node's
 * arena offset (SIZE_MAX: none) for the memory plan's dump. */
void tg_graph_dump(const tg_graph *g, FILE *out, const size_t *offsets);
/* Nodes and kernels (nodes that run code: not leaves, not views). */
void tg_graph_count(const tg_graph *g, int *nodes, int *kernels);

/* The eager kernels read a struct tg_node: fills prim[i] to mirror IR node i, its inputs
 * pointing at their mirrors in prim (one struct per IR node). Plan ops get no inputs. */
void tg_ir_mirror_node(const tg_graph *g, int i, struct tg_node *prim);

/* ---- plan ops ------------------------------------------------------------------------------ */
/* Runs plan op n: out is its output buffer, in[k] the buffer of input k, scratch
 * tg_num_threads() blocks of n->scratch_bytes (each 64-byte aligned) it may use for the
 * duration of the call. Must not allocate. Results must not depend on the thread count. */
typedef void (*tg_plan_kernel_fn)(const tg_ir_node *n, void *out, const void *const *in,
                                  void *scratch);
/* Called once when a plan is built: JIT dispatch, scratch size. 0 or a negative tg_status. */
typedef int (*tg_plan_prepare_fn)(const tg_graph *g, tg_ir_node *n);
/* A short text for dumps, e.g. "fused{sub mul where} + sum(0,2,3)". */
typedef void (*tg_plan_describe_fn)(const tg_ir_node *n, char *buf, size_t size);
typedef void (*tg_plan_release_fn)(void *payload);

typedef struct {
    const char *name;
    tg_plan_kernel_fn kernel;
    tg_plan_prepare_fn prepare;
    tg_plan_describe_fn describe;
    tg_plan_release_fn release;
} tg_plan_op_info;

/* A compiled plan's final graph (for tests and tools). */
const tg_graph *tg_plan_graph(const tg_plan *plan);
/* For tests: how many kernels of the plan run inside others (compile/prologue.h). */
int tg_plan_prologues(const tg_plan *plan);
/* How many of them write chunks into their kernel's scratch, with no buffer of their own. */
int tg_plan_chunked_prologues(const tg_plan *plan);

extern const tg_plan_op_info tg_plan_op_table[TG_PLAN_OP_END - TG_PLAN_OP_FIRST];
const tg_plan_op_info *tg_plan_op_info_of(int op); /* NULL for primitives */

#endif
