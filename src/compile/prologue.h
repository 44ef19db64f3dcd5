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
 * node's kernel over images first .. first + count - 1, on these inputs, into its full-size
 * output `out`, or, chunked (out NULL), into the calling thread's scratch of the kernel, at
 * chunk_at. */
typedef struct tg_prologue {
    const tg_ir_node *node;
    const void *in[TG_IR_MAX_IN];
    void *out;
    size_t chunk_at;
} tg_prologue;

/* Chunked: when the kernel it runs inside is the only reader of its output, a prologue
 * writes only the chunk of images that kernel is about to read, into that kernel's scratch
 * (which grows by a chunk), and its output has no memory of its own. The full-size write
 * went out to memory, and the weight gradient read it back from cache: the reference
 * model's first block writes 12.8 MB there at every step. */

/* The bytes of one image of node x's value: a chunk holds whole images. */
size_t tg_prologue_image_bytes(const tg_ir_node *x);

/* Runs the prologue's kernel over those images, on the calling thread, whose block of the
 * kernel's scratch is `mine`; returns where image `first`'s values begin (the next images
 * follow it, each the node's size over the batch). */
const void *tg_prologue_run(const tg_prologue *pr, int64_t first, int64_t count, char *mine);

/* Chooses the prologues of g: run_at[i] is the node inside whose kernel node i runs, or i
 * for a node that runs in its own turn; chunked[i] says whether such a node writes chunks
 * (above). The memory plan keeps a prologue's inputs until run_at and gives a chunked
 * prologue no buffer (tg_memplan_build); the runner skips it in its turn. Returns how many
 * prologues. */
int tg_prologue_plan(const tg_graph *g, int *run_at, bool *chunked);

#endif
