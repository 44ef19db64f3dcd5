/* Prologues: an elementwise kernel that feeds a convolution's weight gradient runs inside
 * it, chunk by chunk of images, just before the gradient reads those images (prologue.c).
 *
 * Batch norm's backward writes the gradient at the convolution's output, a full-size
 * array, and the weight gradient reads it back: on its own, the read comes from memory,
 * or from the last level of cache when the array fits there; run a few images at a time
 * inside the weight gradient, the images it has just written are still in the core's own
 * cache. The kernel still writes its whole output, so later readers (the gradient at the
 * convolution's input) find it where the memory plan put it. Decided when the plan is
 * built, after the native kernels are loaded (only a native kernel's units are known to be
 * images in order); switched off like a pass ("prologue" in TG_DISABLE_PASSES). */
#ifndef TG_COMPILE_PROLOGUE_H
#define TG_COMPILE_PROLOGUE_H

#include "graph.h"

/* What a kernel that has a prologue calls, per chunk of images (tg_ir_node.prologue):
 * node's kernel over images first .. first + count - 1, on these inputs and output. */
typedef struct tg_prologue {
    const tg_ir_node *node;
    const void *in[TG_IR_MAX_IN];
    void *out;
} tg_prologue;

/* Runs the prologue's kernel over those images, on the calling thread. */
void tg_prologue_run(const tg_prologue *pr, int64_t first, int64_t count);

/* Chooses the prologues of g: run_at[i] is the node inside whose kernel node i runs, or i
 * for a node that runs in its own turn. The memory plan keeps such a node's inputs until
 * run_at (tg_memplan_build); the runner skips it in its turn. Returns how many. */
int tg_prologue_plan(const tg_graph *g, int *run_at);

#endif
