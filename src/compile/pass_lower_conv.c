/* Convolution lowering: the compositions that tg_conv2d and the gradients of its primitives
 * leave on the graph become direct convolutions (plan ops CONV and CONV_WGRAD, kernels in
 * kernels/conv.c) that need no im2col buffer. With x [N, C, H, W], w [OC, C, KH, KW],
 * CKK = C*KH*KW, P = OH*OW and pad(x) a zero padding of H and W, the same on both sides (or
 * no pad at all), the patterns are:
 *
 *   forward       matmul(reshape(w) [OC, CKK], reshape(im2col(pad(x))) [N, CKK, P])
 *                 -> reshape(CONV(x, w))
 *   input grad    slice(col2im(reshape(matmul(permute(reshape(w)), g [N, OC, P]))))
 *                 -> CONV(g, w) with TG_CONV_TRANSPOSED_FLIPPED and padding KH-1-ph, whose
 *                 output is the slice's (the input's gradient). Where no slice undoes the pad,
 *                 or the padding exceeds KH-1, the col2im itself becomes such a CONV with
 *                 padding KH-1 (the padded input's gradient) and any slice stays.
 *   weight grad   sum over axis 0 of matmul(g [N, OC, P], permute(reshape(im2col(pad(x)))))
 *                 -> reshape(CONV_WGRAD(g, x)); for N = 1 the matmul alone is the sum.
 *
 * The reshapes are views: chains of them are looked through, and new ones cost nothing. The
 * im2col may be shared by the forward and the weight gradient; the forward's matmul, the
 * im2col and the col2im die and the compaction after the pass drops them. Strides other than
 * 1 (the kernels' only kind) and dtypes other than f32/f64 are left as they are: the pass
 * only ever replaces a node by one that computes the same value. */
#include "passes.h"
#include "plan_ops.h"

#include <string.h>

/* One matched convolution: the image slid over, the weights, and the geometry. */
typedef struct {
    int x, w;
    int64_t n, c, oc, kh, kw, ph, pw, oh, ow;
} conv_site;

static const tg_ir_node *node(const tg_graph *g, int i) { return &g->nodes[i]; }

static bool shape_is(const tg_graph *g, int i, int ndim, const int64_t *shape)
{
    return tg_shape_equal(node(g, i)->ndim, node(g, i)->shape, ndim, shape);
}

static int through_reshapes(const tg_graph *g, int i)
{
    while (node(g, i)->op == TG_OP_RESHAPE)
        i = node(g, i)->in[0];
    return i;
}

/* A node holding i's value in `shape`: i, one of the reshapes it comes through, or a new
 * reshape of i. -1 when out of memory. */
static int as_shape(tg_graph *g, int i, int ndim, const int64_t *shape)
{
    for (int j = i;; j = node(g, j)->in[0]) {
        if (shape_is(g, j, ndim, shape))
            return j;
        if (node(g, j)->op != TG_OP_RESHAPE)
            break;
    }
    return tg_graph_add_op(g, TG_OP_RESHAPE, node(g, i)->dtype, ndim, shape, 1, &i);
}

static bool is_permute(const tg_graph *g, int i, int ndim, const int *perm)
{
    const tg_ir_node *n = node(g, i);
    if (n->op != TG_OP_PERMUTE || n->ndim != ndim)
        return false;
    for (int k = 0; k < ndim; k++)
        if (n->attr[k] != perm[k])
            return false;
    return true;
}

/* `cols` [N, CKK, P] reshaped from a stride-1 im2col of x or of a zero pad of x: fills the
 * site's image and geometry (not w and oc). */
static bool match_columns(const tg_graph *g, int cols, conv_site *s)
{
    const tg_ir_node *col = node(g, through_reshapes(g, cols));
    if (col->op != TG_OP_IM2COL || col->attr[2] != 1 || col->attr[3] != 1 ||
        (col->dtype != TG_F32 && col->dtype != TG_F64))
        return false;
    int x = col->in[0];
    int64_t ph = 0, pw = 0;
    const tg_ir_node *pad = node(g, x);
    if (pad->op == TG_OP_PAD) {
        const int64_t *before = pad->attr, *after = pad->attr + TG_MAX_DIMS;
        if (pad->fattr != 0 || before[0] || before[1] || after[0] || after[1] ||
            before[2] != after[2] || before[3] != after[3])
            return false;
        ph = before[2];
        pw = before[3];
        x = pad->in[0];
    }
    const int64_t *xs = node(g, x)->shape;
    *s = (conv_site){.x = x, .n = xs[0], .c = xs[1], .kh = col->shape[2], .kw = col->shape[3],
                     .ph = ph, .pw = pw, .oh = col->shape[4], .ow = col->shape[5]};
    return shape_is(g, cols, 3, (const int64_t[]){s->n, s->c * s->kh * s->kw, s->oh * s->ow});
}

/* Appends a CONV or CONV_WGRAD of in0 and in1 with padding (ph, pw), labelled like the node
 * it replaces. The attributes after the contract's five are for the dumps: the shape of the
 * image slid over, the kernel size. */
static int add_conv(tg_graph *g, int op, int in0, int in1, unsigned flags, int64_t ph,
                    int64_t pw, const int64_t *out_shape, int replaced)
{
    bool wgrad = op == TG_PLAN_OP_CONV_WGRAD;
    const tg_ir_node *image = node(g, wgrad ? in1 : in0);
    const int64_t *kernel = wgrad ? out_shape : node(g, in1)->shape;
    tg_ir_node n = {.op = op, .dtype = image->dtype, .ndim = 4, .n_in = 2, .in = {in0, in1},
                    .attr = {ph, pw, 1, 1, flags, image->shape[0], image->shape[1],
                             image->shape[2], image->shape[3], kernel[2], kernel[3]},
                    .label = node(g, replaced)->label, .tape_id = SIZE_MAX};
    memcpy(n.shape, out_shape, 4 * sizeof *out_shape);
    return tg_graph_add(g, &n);
}

/* Points the users of `old` at `value` seen in old's shape. */
static int replace_with(tg_graph *g, int old, int value)
{
    if (value < 0)
        return TG_ERR_NOMEM;
    int64_t shape[TG_MAX_DIMS];
    int ndim = node(g, old)->ndim;
    memcpy(shape, node(g, old)->shape, sizeof shape);
    int r = as_shape(g, value, ndim, shape);
    if (r < 0)
        return TG_ERR_NOMEM;
    tg_graph_replace(g, old, r);
    return TG_OK;
}

/* ---- the three patterns ------------------------------------------------------------------- */
/* matmul(w2 [OC, CKK], cols [N, CKK, P]) */
static int lower_forward(tg_graph *g, int mm)
{
    conv_site s;
    const tg_ir_node *m = node(g, mm);
    if (m->op != TG_OP_MATMUL || !match_columns(g, m->in[1], &s))
        return TG_OK;
    int w2 = m->in[0];
    s.oc = node(g, w2)->shape[0];
    if (!shape_is(g, w2, 2, (const int64_t[]){s.oc, s.c * s.kh * s.kw}) ||
        node(g, w2)->dtype != m->dtype || node(g, s.x)->dtype != m->dtype)
        return TG_OK;
    s.w = as_shape(g, w2, 4, (const int64_t[]){s.oc, s.c, s.kh, s.kw});
    if (s.w < 0)
        return TG_ERR_NOMEM;
    return replace_with(g, mm, add_conv(g, TG_PLAN_OP_CONV, s.x, s.w, 0, s.ph, s.pw,
                                        (const int64_t[]){s.n, s.oc, s.oh, s.ow}, mm));
}

/* col2im(reshape(matmul(permute(w2), g3))): the weights and the upstream gradient, in the
 * shapes a flipped CONV reads. */
static bool match_input_grad(tg_graph *g, int c2i, int *w, int *grad)
{
    const tg_ir_node *c = node(g, c2i);
    if (c->op != TG_OP_COL2IM || c->attr[2] != 1 || c->attr[3] != 1 ||
        (c->dtype != TG_F32 && c->dtype != TG_F64))
        return false;
    int cols = c->in[0];
    const tg_ir_node *m = node(g, through_reshapes(g, cols));
    const int64_t *cs = node(g, cols)->shape; /* [N, C, KH, KW, OH, OW] */
    int64_t ckk = cs[1] * cs[2] * cs[3], p = cs[4] * cs[5];
    int64_t hp = cs[4] + cs[2] - 1, wp = cs[5] + cs[3] - 1; /* stride 1 */
    if (node(g, cols)->ndim != 6 || cs[2] != c->attr[0] || cs[3] != c->attr[1] ||
        !shape_is(g, c2i, 4, (const int64_t[]){cs[0], cs[1], hp, wp}) ||
        m->op != TG_OP_MATMUL || !is_permute(g, m->in[0], 2, (const int[]){1, 0}) ||
        m->dtype != c->dtype)
        return false;
    int w2 = node(g, m->in[0])->in[0], g3 = m->in[1];
    int64_t oc = node(g, w2)->shape[0];
    if (!shape_is(g, w2, 2, (const int64_t[]){oc, ckk}) ||
        !shape_is(g, g3, 3, (const int64_t[]){cs[0], oc, p}))
        return false;
    *w = as_shape(g, w2, 4, (const int64_t[]){oc, cs[1], cs[2], cs[3]});
    *grad = *w < 0 ? -1 : as_shape(g, g3, 4, (const int64_t[]){cs[0], oc, cs[4], cs[5]});
    return true;
}

/* The input gradient of the padded image (the col2im) with a CONV of padding KH-1. */
static int lower_input_grad(tg_graph *g, int c2i)
{
    int w, grad;
    if (!match_input_grad(g, c2i, &w, &grad))
        return TG_OK;
    if (grad < 0)
        return TG_ERR_NOMEM;
    int64_t shape[4];
    memcpy(shape, node(g, c2i)->shape, sizeof shape);
    const int64_t *ws = node(g, w)->shape;
    return replace_with(g, c2i, add_conv(g, TG_PLAN_OP_CONV, grad, w, TG_CONV_TRANSPOSED_FLIPPED,
                                         ws[2] - 1, ws[3] - 1, shape, c2i));
}

/* A slice that undoes the forward's pad, of such a col2im: the input's own gradient, with a
 * CONV of padding KH-1-ph. */
static int lower_unpadded_input_grad(tg_graph *g, int sl)
{
    const tg_ir_node *s = node(g, sl);
    if (s->op != TG_OP_SLICE || s->ndim != 4 || node(g, s->in[0])->op != TG_OP_COL2IM)
        return TG_OK;
    const tg_ir_node *c = node(g, s->in[0]);
    int64_t ph = s->attr[2], pw = s->attr[3], kh = c->attr[0], kw = c->attr[1], shape[4];
    memcpy(shape, s->shape, sizeof shape);
    int w, grad;
    if (s->attr[0] || s->attr[1] || ph > kh - 1 || pw > kw - 1 ||
        !shape_is(g, sl, 4, (const int64_t[]){c->shape[0], c->shape[1], c->shape[2] - 2 * ph,
                                              c->shape[3] - 2 * pw}) ||
        !match_input_grad(g, s->in[0], &w, &grad))
        return TG_OK;
    if (grad < 0)
        return TG_ERR_NOMEM;
    return replace_with(g, sl, add_conv(g, TG_PLAN_OP_CONV, grad, w, TG_CONV_TRANSPOSED_FLIPPED,
                                        kh - 1 - ph, kw - 1 - pw, shape, sl));
}

/* matmul(g3 [N, OC, P], permute(cols) [N, P, CKK]): the weight gradient of each image. */
static bool weight_grads(const tg_graph *g, int mm, conv_site *s, int *g3)
{
    const tg_ir_node *m = node(g, mm);
    if (m->op != TG_OP_MATMUL || !is_permute(g, m->in[1], 3, (const int[]){0, 2, 1}) ||
        !match_columns(g, node(g, m->in[1])->in[0], s))
        return false;
    *g3 = m->in[0];
    s->oc = node(g, *g3)->shape[1];
    return m->dtype == node(g, s->x)->dtype &&
           shape_is(g, *g3, 3, (const int64_t[]){s->n, s->oc, s->oh * s->ow});
}

/* The sum of weight_grads over the batch: sum over axis 0 (keepdims), or for N = 1 the
 * matmul itself. */
static int lower_weight_grad(tg_graph *g, int i)
{
    const tg_ir_node *n = node(g, i);
    int mm = n->op == TG_OP_SUM && n->attr[0] == 1 ? n->in[0] : i;
    conv_site s;
    int g3;
    if (!weight_grads(g, mm, &s, &g3) || (mm == i && s.n != 1))
        return TG_OK;
    int grad = as_shape(g, g3, 4, (const int64_t[]){s.n, s.oc, s.oh, s.ow});
    if (grad < 0)
        return TG_ERR_NOMEM;
    return replace_with(g, i, add_conv(g, TG_PLAN_OP_CONV_WGRAD, grad, s.x, 0, s.ph, s.pw,
                                       (const int64_t[]){s.oc, s.c, s.kh, s.kw}, i));
}

/* The convolution's users read it through a reshape to the matmul's shape and the layer's
 * reshape back: such a chain that ends in the convolution's own shape is the convolution. */
static void skip_round_trip(tg_graph *g, int i)
{
    int base = through_reshapes(g, i), op = node(g, base)->op;
    if (base != i && (op == TG_PLAN_OP_CONV || op == TG_PLAN_OP_CONV_WGRAD) &&
        shape_is(g, i, node(g, base)->ndim, node(g, base)->shape))
        tg_graph_replace(g, i, base);
}

/* Two rounds: first the forward, the weight gradient and the input gradient where a slice
 * undoes the pad; then, after a compaction has dropped what the first round made dead, the
 * col2ims that are still read (their slice was not the pad's, or there is none), the
 * single-image weight gradients whose sum an earlier pass removed, and the reshapes there
 * and back around the new convolutions. */
int tg_pass_lower_conv(tg_graph *g, const tg_pass_ctx *ctx)
{
    TG_UNUSED(ctx);
    int status = TG_OK;
    for (int i = 0, n = g->n; i < n && status == TG_OK; i++) {
        int op = node(g, i)->op;
        status = op == TG_OP_MATMUL ? lower_forward(g, i)
                 : op == TG_OP_SUM  ? lower_weight_grad(g, i)
                 : op == TG_OP_SLICE ? lower_unpadded_input_grad(g, i)
                                     : TG_OK;
    }
    if (status == TG_OK)
        status = tg_graph_compact(g);
    for (int i = 0, n = g->n; i < n && status == TG_OK; i++) {
        int op = node(g, i)->op;
        status = op == TG_OP_COL2IM   ? lower_input_grad(g, i)
                 : op == TG_OP_MATMUL ? lower_weight_grad(g, i)
                                      : TG_OK;
    }
    for (int i = 0, n = g->n; i < n && status == TG_OK; i++)
        if (node(g, i)->op == TG_OP_RESHAPE)
            skip_round_trip(g, i);
    return status == TG_ERR_NOMEM ? tg_fail(status, "lower_conv: out of memory") : status;
}
