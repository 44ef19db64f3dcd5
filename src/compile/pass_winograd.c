/* Winograd convolutions: marks each CONV and CONV_WGRAD plan node that Winograd's F(r x r,
 * 3x3) should run (TG_CONV_WINOGRAD, with TG_CONV_WINOGRAD_3, _4 or _5 for r = 3 to 5, as
 * tg_winograd_tile says for the output's plane; kernels/winograd.c says how and why): 3x3
 * kernels, stride 1, f32, and at least MIN_CHANNELS input and output channels. The
 * transforms cost a fixed amount per channel and tile, so the fewer multiply-adds only pay
 * where the GEMMs over the channels are long: the reference model's 32->64 convolution,
 * its 64->32 input gradient and its weight gradient, not the first layer's 1->32 (conv.c
 * gathers its taps instead). f64 stays direct: its convolutions are the gradient checks',
 * which want the plain sums. The node computes the same value either way, to rounding
 * (winograd.c). */
#include "passes.h"
#include "plan_ops.h"
#include "../kernels/winograd.h"

#define MIN_CHANNELS 16
/* Output positions (batch times the output plane) below which the direct kernel stays: the
 * weights are transformed at every run (they change at every training step), which costs
 * as much as the GEMMs save at a few images. The reference model's batch-1 evaluation (196
 * positions at conv2) took 165 us with it, 123 without (Zen 5, 1 thread). */
#define MIN_POSITIONS 1024

/* OH and OW of the convolution: the output's for a CONV, the gradient's (the same) for a
 * CONV_WGRAD, from the image slid over (attr[5..8]), its padding and the kernel. */
static void output_plane(const tg_ir_node *n, int64_t *oh, int64_t *ow)
{
    bool wgrad = n->op == TG_PLAN_OP_CONV_WGRAD;
    int64_t kh = wgrad ? n->shape[2] : n->attr[9], kw = wgrad ? n->shape[3] : n->attr[10];
    *oh = n->attr[7] + 2 * n->attr[0] - kh + 1;
    *ow = n->attr[8] + 2 * n->attr[1] - kw + 1;
}

/* N OH OW: the convolution's output positions. */
static int64_t output_positions(const tg_ir_node *n)
{
    int64_t oh, ow;
    output_plane(n, &oh, &ow);
    return n->attr[5] * oh * ow;
}

int tg_pass_winograd(tg_graph *g, const tg_pass_ctx *ctx)
{
    if (ctx->layer_forms) /* an exported graph has no use for it */
        return TG_OK;
    for (int i = 0; i < g->n; i++) {
        tg_ir_node *n = &g->nodes[i];
        /* attr: padding, stride, flags, the image slid over [N, C, H, W], the kernel size */
        bool wgrad = n->op == TG_PLAN_OP_CONV_WGRAD;
        int64_t kh = wgrad ? n->shape[2] : n->attr[9], kw = wgrad ? n->shape[3] : n->attr[10];
        int64_t oc = wgrad ? n->shape[0] : n->shape[1];
        if ((wgrad || n->op == TG_PLAN_OP_CONV) && n->dtype == TG_F32 && n->ndim == 4 &&
            n->attr[2] == 1 && n->attr[3] == 1 && kh == 3 && kw == 3 &&
            n->attr[6] >= MIN_CHANNELS && oc >= MIN_CHANNELS &&
            output_positions(n) >= MIN_POSITIONS) {
            int64_t oh, ow;
            output_plane(n, &oh, &ow);
            n->attr[4] |= TG_CONV_WINOGRAD |
                          tg_conv_winograd_flag(tg_winograd_tile(oh, ow));
        }
    }
    return TG_OK;
}
