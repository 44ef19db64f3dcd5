/* Winograd F(r x r, 3x3) convolutions, r = 2 to 5 (winograd.c): how conv.c hands over a
 * CONV plan node that pass_winograd marked with TG_CONV_WINOGRAD. */
#ifndef TG_KERNELS_WINOGRAD_H
#define TG_KERNELS_WINOGRAD_H

#include "../compile/graph.h"

/* A 3x3, stride-1 f32 convolution as conv.c read it off the node and checked it: x [batch,
 * c, h, w] zero-padded by (ph, pw) into y [batch, oc, oh, ow]; the weights [oc][c][3][3], or
 * with `flipped` [c][oc][3][3] used transposed and rotated (the input gradient's form).
 * `wgrad`: the node is the weight gradient (CONV_WGRAD) of that convolution instead.
 * `channel_sums`: a forward one also writes its bands' channel sums after y
 * (TG_CONV_CHANNEL_SUMS, kernels/channel_sums.h). */
typedef struct {
    int64_t batch, c, h, w, oc, oh, ow, ph, pw;
    bool flipped, wgrad, channel_sums;
    int tile;            /* the output tile's side: 2 to 5 (F(2x2, 3x3) .. F(5x5, 3x3)) */
    int64_t threads_max; /* the threads the work is worth (conv.c's threshold) */
} tg_winograd_shape;

/* The output tile's side the winograd pass asks for, for an oh x ow output: of 2 to 5 (the
 * larger faster, their rounding worse) the one with the fewest products, the smaller on a
 * tie; or the one that TG_WINOGRAD_TILE=2, 3, 4 or 5 in the environment names (winograd.c
 * says why). */
int tg_winograd_tile(int64_t oh, int64_t ow);

/* The images the weight gradient takes at a time (a chunked prologue's chunk). */
int64_t tg_winograd_chunk_images(void);

/* Sets n->payload (one allocation: free() releases it) and n->scratch_bytes (per thread). */
int tg_winograd_prepare(tg_ir_node *n, const tg_winograd_shape *s);

/* y = the convolution of in[0] by in[1]; scratch holds n->scratch_bytes per thread.
 * Bit-identical for any thread count. */
void tg_winograd_run(const tg_ir_node *n, void *y, const void *const *in, void *scratch);

/* dw [oc, c, 3, 3] = the weight gradient for in[0] the gradient at y and in[1] x, summed over
 * the batch; runs the node's prologue (compile/prologue.h) chunk by chunk. Bit-identical for
 * any thread count. */
void tg_winograd_wgrad_run(const tg_ir_node *n, void *dw, const void *const *in,
                           void *scratch);

#endif
