/* The program of a fused kernel: what the fusion pass (compile/pass_fuse.c) writes into a
 * FUSED node's payload and the generic executor (kernels/fused.c) runs.
 *
 * A program computes one value at every point of an iteration space: it loads elements of
 * the node's inputs through affine views, combines them with elementwise instructions and
 * either stores the result (the node's output, contiguous in the iteration space's
 * row-major order) or reduces it over some axes (the output is the iteration space with
 * those axes of size 1, again contiguous). The iteration space may be finer than the
 * output's shape (the pass splits axes so that reshapes of views stay affine); splitting
 * an axis never changes the row-major order, so the output layout is the same.
 *
 * Values are numbered loads first (0 .. n_loads - 1), then instructions (n_loads + i is
 * the result of instr[i]); an instruction reads only values numbered below its own. */
#ifndef TG_KERNELS_FUSED_H
#define TG_KERNELS_FUSED_H

#include "../compile/graph.h"

#define TG_FUSED_MAX_DIMS 16    /* iteration axes */
#define TG_FUSED_MAX_LOADS 32   /* loads (an input may be read through several views) */
#define TG_FUSED_MAX_INSTRS 128
#define TG_FUSED_MAX_MORE 3     /* results a reduction folds besides its first */

/* Element `offset + sum_k i_k * stride[k]` of input `input`, at iteration point i. */
typedef struct {
    int input;      /* slot in the node's inputs */
    tg_dtype dtype; /* the input's dtype */
    int64_t offset;
    int64_t stride[TG_FUSED_MAX_DIMS]; /* in elements; 0 along axes the view broadcasts */
} tg_fused_load;

/* op is an elementwise primitive (neg ... cast) with the eager kernel's semantics, or
 * TG_OP_LEAF for the constant `value`. The result has dtype `dtype` (a cast's target); the
 * operands are arg[0 .. arity - 1]. */
typedef struct {
    int op;
    tg_dtype dtype;
    int arg[3];
    double value;
} tg_fused_instr;

struct tg_fused_exec; /* how kernels/fused.c runs the program: made by tg_fused_prepare */

/* A program compiled to machine code (compile/native.c, from kernels/fused_emit.c's C):
 * iteration units u0 .. u1 - 1 of native_units, `first` each load's element at the origin,
 * `out` the output (a reduction's blocks, after the stored points), `stores` a reduction's
 * stored points (NULL without), `part` the partial sums of a reduction over chunks of its
 * first axis (NULL for the others). A unit is whole outputs, or one chunk's partial sums
 * that the combine function then adds in chunk order, into `out`; either way results do
 * not depend on how units are shared among threads. */
typedef void (*tg_fused_native_fn)(const char *const *first, char *out, char *stores,
                                   char *part, int64_t u0, int64_t u1);
typedef void (*tg_fused_native_combine_fn)(const char *part, char *out);

typedef struct {
    int ndim;
    int64_t shape[TG_FUSED_MAX_DIMS]; /* the iteration space */
    int reduce_op;                    /* TG_OP_SUM, TG_OP_MAX, or TG_OP_LEAF for none */
    uint32_t reduce_mask;             /* the iteration axes reduced */
    int n_loads;
    tg_fused_load load[TG_FUSED_MAX_LOADS];
    int n_instrs;
    tg_fused_instr instr[TG_FUSED_MAX_INSTRS];
    int result; /* the value stored or reduced */
    /* A reduction may fold more values over the same axes, one pass over its loads for
     * them all (the fusion pass merges sibling reductions: batch norm's sum(g) and
     * sum(g * x)): the node's output is n_more + 1 blocks, result's first, then more[i]'s. */
    int n_more;
    int more[TG_FUSED_MAX_MORE];
    /* A max (n_more 0) may also count, per output, the points equal to it: the denominator
     * of a max's gradient, which ties share (sum(eq(x, max(x)))). The output is then two
     * blocks, the maxima's and the counts'. The counts are folded along with the maxima (a
     * piece's count survives only where its max is the running max), so they need not
     * wait for the final max; where the max is NaN the count is 0, as eq makes it. */
    bool count_ties;
    /* A reduction may also store a value at every point of its iteration space, row-major
     * (compile/pass_fuse_stores.c: an elementwise kernel that it reads, merged into it): the
     * node's output is then that block of points first, the reduction's blocks after it. */
    bool stores;
    int store;
    struct tg_fused_exec *exec;
    /* Set by compile/native.c when the program runs as machine code (the interpreter,
     * kernels/fused.c, otherwise); the code belongs to the plan, which unloads it. */
    tg_fused_native_fn native;
    tg_fused_native_combine_fn native_combine; /* NULL: units are whole outputs */
    int64_t native_units;
} tg_fused_program;

/* The iteration space as plain loops walk it: in the program's order, or with kept_first a
 * reduction's axes ordered [kept, reduced, kept] (one output's points in the middle);
 * size-1 axes dropped and axes every operand
 * steps through as one merged (at least 2 axes). Strides in elements, per load, for the
 * output (0 along reduced axes; row-major over the kept ones) and for a reduction's stored
 * points (row-major over all). */
typedef struct {
    int ndim;
    int64_t shape[TG_FUSED_MAX_DIMS];
    int64_t out_stride[TG_FUSED_MAX_DIMS];
    int64_t store_stride[TG_FUSED_MAX_DIMS];
    int64_t stride[TG_FUSED_MAX_LOADS][TG_FUSED_MAX_DIMS];
} tg_fused_loops;
void tg_fused_loops_of(const tg_fused_program *p, bool kept_first, tg_fused_loops *out);

/* Whether the prepared program runs as libxsmm's transposes (kernels/fused_transpose.h):
 * then it is neither interpreted nor compiled to machine code. */
bool tg_fused_transposes(const tg_fused_program *p);

/* A native elementwise program's units u0 .. u1 - 1, on the calling thread (a prologue:
 * compile/prologue.h). */
void tg_fused_run_units(const tg_ir_node *n, void *out, const void *const *in, int64_t u0,
                        int64_t u1);

/* What tg_fused_emit made: the units (see native_units), and the bytes of partial sums the
 * function needs at `part` (0: none, and no combine function). */
typedef struct {
    int64_t units;
    size_t part_bytes;
} tg_fused_emitted;

/* Appends to text (compile/native.h) a C function `name` with tg_fused_native_fn's
 * signature that computes p, and where made->part_bytes > 0 a function `name`_combine with
 * tg_fused_native_combine_fn's; false, with nothing appended, for a program it does not
 * emit (a max, tie counts), which the interpreter keeps. */
struct tg_text;
bool tg_fused_emit(const tg_fused_program *p, const char *name, struct tg_text *text,
                   tg_fused_emitted *made);

/* A zeroed program for a FUSED node's payload (tg_fused_release frees it); NULL when out of
 * memory. */
tg_fused_program *tg_fused_program_new(void);

#endif
