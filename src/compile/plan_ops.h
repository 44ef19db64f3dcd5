/* The plan ops' entry points (see plan_ops.def for what each op computes). */
#ifndef TG_COMPILE_PLAN_OPS_H
#define TG_COMPILE_PLAN_OPS_H

#include "graph.h"

/* CONV's and CONV_WGRAD's attr[4] flags: TG_CONV_WINOGRAD (3x3 f32 only) runs it by
 * kernels/winograd.c, with 2x2 output tiles, or 3x3, 4x4 or 5x5 with TG_CONV_WINOGRAD_3,
 * _4 or _5 too. TG_CONV_CHANNEL_SUMS (a CONV, f32; compile/pass_conv_sums.c): the node's
 * output is flat, y's N*OC*OH*OW values (attr[11..14] hold y's shape [N, OC, OH, OW]) and
 * after them [N*OH][OC] partial channel sums, one row per output row of an image: the sum
 * of each channel over a band of y's rows that starts there, zeros where no band starts
 * (kernels/channel_sums.h). */
enum {
    TG_CONV_TRANSPOSED_FLIPPED = 1,
    TG_CONV_WINOGRAD = 2,
    TG_CONV_WINOGRAD_4 = 4,
    TG_CONV_WINOGRAD_3 = 8,
    TG_CONV_WINOGRAD_5 = 16,
    TG_CONV_CHANNEL_SUMS = 32
};

/* The flag that names an output tile's side (2 to 5), and the side the flags name. */
static inline int64_t tg_conv_winograd_flag(int tile)
{
    return tile == 5 ? TG_CONV_WINOGRAD_5 : tile == 4 ? TG_CONV_WINOGRAD_4
                                          : tile == 3 ? TG_CONV_WINOGRAD_3 : 0;
}

static inline int tg_conv_winograd_tile(int64_t flags)
{
    return flags & TG_CONV_WINOGRAD_5 ? 5 : flags & TG_CONV_WINOGRAD_4 ? 4
                                          : flags & TG_CONV_WINOGRAD_3 ? 3 : 2;
}

/* The images a prepared CONV_WGRAD node's kernel takes at a time (its chunks): what a
 * chunked prologue (prologue.h) writes into its scratch at once. */
int64_t tg_conv_wgrad_chunk_images(const tg_ir_node *n);

#define TG_PLAN_OP(e, name, kernel, prepare, describe, release)                                  \
    void kernel(const tg_ir_node *n, void *out, const void *const *in, void *scratch);          \
    int prepare(const tg_graph *g, tg_ir_node *n);                                              \
    void describe(const tg_ir_node *n, char *buf, size_t size);                                 \
    void release(void *payload);
#include "plan_ops.def"
#undef TG_PLAN_OP

#endif
