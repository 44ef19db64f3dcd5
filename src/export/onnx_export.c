/* tg_export_onnx: a traced evaluation graph matched to ONNX operators.
 *
 * The trace becomes the compiler's graph and goes through its early passes (dce, simplify,
 * cse, fold_scale: batch norm's scale is then in the weights; lower_conv and fuse, which make
 * plan-only ops, are left out). Each node is then either
 *   - constant: it does not depend on the input. Its value is computed here with the eager
 *     kernels and becomes an initializer where an ONNX node reads it (weights, biases);
 *   - dynamic: it depends on the input, and is matched, from the output backwards, to ONNX
 *     operators. A match may take a group of primitives:
 *       reshape(matmul(W, reshape(im2col(pad(x)))))    -> Conv (weights W as [Cout, C, kh, kw])
 *       ... followed by adds/subs of per-channel constants -> the Conv's bias
 *       max/sum over the window axis of im2col or of the reshape-permute-reshape that
 *       simplify makes of windows tiling the image       -> MaxPool / AveragePool (a sum
 *                                                           times 1/window: its mean)
 *       where(lt(0, x), x, 0), maximum(x, 0)             -> Relu
 *       matmul(x [N, K], W [K, M]) (+ per-column consts) -> Gemm with its bias
 *       reshape                                          -> Flatten, Reshape or nothing
 *     and single primitives map to their ONNX twins (Add, Mul, Transpose, Exp, ...). Anything
 *     else is an error naming the node.
 *
 * The batch: the first axis of the input is the batch; every dynamic value keeps it first,
 * so the file can give it as the symbolic "N". An ONNX value may have a different shape than
 * its node (a pool's [N, C, 1, H, W] is MaxPool's [N, C, H, W]; same elements, same order):
 * `exact` asks for the node's own shape, reshaping when needed. */
#include "tapegrad_onnx.h"

#include "../compile/pipeline.h"
#include "onnx_proto.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

typedef struct {
    const char *name; /* the ONNX tensor, NULL until emitted */
    int ndim;
    int64_t shape[TG_MAX_DIMS];
    const char *exact; /* the same value in the node's own shape, once asked for */
} onnx_value;

typedef struct {
    tg_graph g;
    onnx_builder *b;
    int input;      /* the placeholder's node */
    int64_t batch;  /* its first axis */
    bool *dyn;      /* depends on the input */
    float **cval;   /* constants' values (NULL for dynamic nodes) */
    bool *owned;    /* cval[i] was allocated here */
    int *uses;
    onnx_value *val;
    struct tg_node *prim; /* what the eager kernels read */
} exporter;

/* ---- messages ---------------------------------------------------------------------------- */
static const char *describe(const exporter *e, int i, char *buf, size_t size)
{
    const tg_ir_node *x = &e->g.nodes[i];
    char shape[160];
    tg_shape_str(shape, sizeof shape, x->ndim, x->shape);
    snprintf(buf, size, "node %%%d (%s %s%s%s%s)", i, tg_ir_op_name(x->op), shape,
             x->label ? ", layer '" : "", x->label ? x->label : "", x->label ? "'" : "");
    return buf;
}

static int unmappable(const exporter *e, int i, const char *why)
{
    char d[256];
    return tg_fail(TG_ERR_ARG, "tg_export_onnx: %s has no ONNX operator: %s", describe(e, i, d,
                   sizeof d), why);
}

static int nomem(void) { return tg_fail(TG_ERR_NOMEM, "tg_export_onnx: out of memory"); }

/* "block1.conv" from the node's layer and what it became. */
static const char *hint(const exporter *e, int i, const char *what, char *buf, size_t size)
{
    const char *label = e->g.nodes[i].label;
    snprintf(buf, size, "%s%s%s", label ? label : "", label ? "." : "", what);
    return buf;
}

/* ---- constants --------------------------------------------------------------------------- */
static const tg_ir_node *node(const exporter *e, int i) { return &e->g.nodes[i]; }
static int in(const exporter *e, int i, int k) { return e->g.nodes[i].in[k]; }
static bool is_op(const exporter *e, int i, int op) { return e->g.nodes[i].op == op; }
static bool single_use(const exporter *e, int i) { return e->uses[i] == 1; }

/* Computes every node that does not depend on the input, in order, with the eager kernels. */
static int compute_constants(exporter *e)
{
    for (int i = 0; i < e->g.n; i++) {
        const tg_ir_node *x = node(e, i);
        struct tg_node *t = &e->prim[i];
        tg_ir_mirror_node(&e->g, i, e->prim);
        if (e->dyn[i])
            continue;
        if (x->leaf == TG_LEAF_CONST || x->leaf == TG_LEAF_BOUND) {
            e->cval[i] = x->data;
            continue;
        }
        if (x->op >= TG_OP_COUNT || !tg_op_table[x->op].kernel)
            return unmappable(e, i, "not a primitive the exporter can compute");
        if (!(e->cval[i] = malloc((size_t)(x->numel ? x->numel : 1) * sizeof(float))))
            return nomem();
        e->owned[i] = true;
        const void *ins[3] = {0};
        for (int k = 0; k < x->n_in && k < 3; k++)
            ins[k] = e->cval[x->in[k]];
        tg_op_table[x->op].kernel(t, e->cval[i], ins);
    }
    return TG_OK;
}

/* The value of a constant whose elements are all equal. */
static bool const_scalar(const exporter *e, int i, double *v)
{
    if (e->dyn[i] || node(e, i)->numel < 1)
        return false;
    const float *p = e->cval[i];
    for (int64_t k = 1; k < node(e, i)->numel; k++)
        if (p[k] != p[0])
            return false;
    *v = p[0];
    return true;
}

/* The C values of a constant c broadcast against an output of rank out_ndim along `axis`
 * only (every other axis of c is 1; one value for all is fine too), into vals. False when c
 * varies along another axis. */
static bool per_axis(const exporter *e, int c, int out_ndim, int axis, int64_t C, float *vals)
{
    const tg_ir_node *x = node(e, c);
    if (x->ndim > out_ndim || e->dyn[c])
        return false;
    int offset = out_ndim - x->ndim;
    for (int j = 0; j < x->ndim; j++)
        if (x->shape[j] != 1 && !(j + offset == axis && x->shape[j] == C))
            return false;
    for (int64_t k = 0; k < C; k++)
        vals[k] = e->cval[c][x->numel == 1 ? 0 : k];
    return true;
}

/* acc += sign * c, c per-axis as above. */
static bool add_per_axis(const exporter *e, int c, int out_ndim, int axis, int64_t C,
                         float sign, float *acc)
{
    float vals[4096];
    if (C > 4096 || !per_axis(e, c, out_ndim, axis, C, vals))
        return false;
    for (int64_t k = 0; k < C; k++)
        acc[k] += sign * vals[k];
    return true;
}

static const char *constant(exporter *e, int i)
{
    char h[128];
    const tg_ir_node *x = node(e, i);
    return onnx_add_float_init(e->b, hint(e, i, "const", h, sizeof h), x->ndim, x->shape,
                               e->cval[i]);
}

/* ---- values ------------------------------------------------------------------------------ */
static int emit(exporter *e, int i);

static void set_value(exporter *e, int i, const char *name, int ndim, const int64_t *shape)
{
    e->val[i].name = name;
    e->val[i].ndim = ndim;
    memcpy(e->val[i].shape, shape, (size_t)ndim * sizeof *shape);
}

static bool same_shape(int na, const int64_t *a, int nb, const int64_t *b)
{
    return tg_shape_equal(na, a, nb, b);
}

/* `name` (of shape src) reshaped to shape dst; both keep the batch first. */
static const char *reshape_to(exporter *e, int i, const char *name, int sn, const int64_t *src,
                              int dn, const int64_t *dst)
{
    if (same_shape(sn, src, dn, dst))
        return name;
    char h[128];
    if (sn < 1 || dn < 1 || src[0] != e->batch || dst[0] != e->batch) {
        unmappable(e, i, "it moves elements across the batch axis (the input's first axis), "
                   "which the exported graph keeps dynamic");
        return NULL;
    }
    onnx_node *n;
    if (dn == 2) {
        n = onnx_add_node(e->b, "Flatten", hint(e, i, "flatten", h, sizeof h), 1, &name);
        if (n && onnx_attr_int(e->b, n, "axis", 1) != 0)
            n = NULL;
    } else {
        int64_t target[TG_MAX_DIMS];
        target[0] = -1; /* whatever the batch is */
        memcpy(target + 1, dst + 1, (size_t)(dn - 1) * sizeof *dst);
        const char *shape = onnx_add_int64_init(e->b, hint(e, i, "shape", h, sizeof h), dn,
                                                target);
        const char *ins[2] = {name, shape};
        n = shape ? onnx_add_node(e->b, "Reshape", hint(e, i, "reshape", h, sizeof h), 2, ins)
                  : NULL;
    }
    if (!n)
        nomem();
    return n ? onnx_node_output(n) : NULL;
}

/* Node i's value in node i's own shape. */
static const char *exact(exporter *e, int i)
{
    if (emit(e, i) != TG_OK)
        return NULL;
    onnx_value *v = &e->val[i];
    if (!v->exact)
        v->exact = reshape_to(e, i, v->name, v->ndim, v->shape, node(e, i)->ndim,
                              node(e, i)->shape);
    return v->exact;
}

/* Node i as an operand: its exact value when dynamic, an initializer when constant. */
static const char *operand(exporter *e, int i)
{
    if (e->dyn[i])
        return exact(e, i);
    const tg_ir_node *x = node(e, i);
    if (x->ndim > 0 && x->shape[0] == e->batch && e->batch != 1 && x->numel > 1) {
        unmappable(e, i, "a constant with the batch size as its first axis would fix the "
                   "batch of the exported graph");
        return NULL;
    }
    const char *name = constant(e, i);
    if (!name)
        nomem();
    return name;
}

static int emit_node(exporter *e, int i, const char *op, const char *what, int n_in,
                     const char *const *ins, onnx_node **out)
{
    char h[128];
    for (int k = 0; k < n_in; k++)
        if (!ins[k])
            return tg_last_error_code() ? tg_last_error_code() : nomem();
    onnx_node *n = onnx_add_node(e->b, op, hint(e, i, what, h, sizeof h), n_in, ins);
    if (!n)
        return nomem();
    set_value(e, i, onnx_node_output(n), node(e, i)->ndim, node(e, i)->shape);
    if (out)
        *out = n;
    return TG_OK;
}

/* ---- matchers ---------------------------------------------------------------------------- */
typedef struct {
    int x;              /* the input image batch [N, C, H, W] */
    int64_t kh, kw, sh, sw;
    int64_t pads[4];    /* top, left, bottom, right */
    double pad_value;
} window;

/* A zero-or-more padding of the image axes of w->x, taken into w (when it is w->x's only
 * use): ONNX's operators pad by themselves. */
static bool absorb_pad(const exporter *e, window *w)
{
    int p = w->x;
    if (!is_op(e, p, TG_OP_PAD) || !single_use(e, p) || node(e, p)->ndim != 4)
        return true;
    const int64_t *a = node(e, p)->attr;
    if (a[0] || a[1] || a[TG_MAX_DIMS] || a[TG_MAX_DIMS + 1] || a[2] < 0 || a[3] < 0 ||
        a[TG_MAX_DIMS + 2] < 0 || a[TG_MAX_DIMS + 3] < 0)
        return false;
    w->pads[0] = a[2];
    w->pads[1] = a[3];
    w->pads[2] = a[TG_MAX_DIMS + 2];
    w->pads[3] = a[TG_MAX_DIMS + 3];
    w->pad_value = node(e, p)->fattr;
    w->x = in(e, p, 0);
    return true;
}

/* pad(x) -> im2col, or im2col of x directly: the windows of x. */
static bool match_im2col(const exporter *e, int c, window *w)
{
    if (!is_op(e, c, TG_OP_IM2COL) || !single_use(e, c))
        return false;
    const tg_ir_node *col = node(e, c);
    *w = (window){.x = in(e, c, 0), .kh = col->attr[0], .kw = col->attr[1],
                  .sh = col->attr[2], .sw = col->attr[3]};
    return absorb_pad(e, w) && node(e, w->x)->ndim == 4 && e->dyn[w->x];
}

typedef struct {
    window w;
    int weight; /* constant [Cout, C*kh*kw] */
    int64_t cout;
} conv_match;

/* reshape(matmul(W, reshape(im2col(pad(x))))) with W constant: a convolution. */
static bool match_conv(const exporter *e, int i, conv_match *m)
{
    const tg_ir_node *out = node(e, i);
    if (!is_op(e, i, TG_OP_RESHAPE) || out->ndim != 4)
        return false;
    int mm = in(e, i, 0);
    if (!is_op(e, mm, TG_OP_MATMUL) || !single_use(e, mm) || e->dyn[in(e, mm, 0)] ||
        node(e, in(e, mm, 0))->ndim != 2)
        return false;
    int r = in(e, mm, 1);
    if (!is_op(e, r, TG_OP_RESHAPE) || !single_use(e, r) || node(e, r)->ndim != 3)
        return false;
    if (!match_im2col(e, in(e, r, 0), &m->w) || m->w.pad_value != 0)
        return false;
    const tg_ir_node *col = node(e, in(e, r, 0)), *wt = node(e, in(e, mm, 0));
    /* im2col: [N, C, kh, kw, Ho, Wo]; the weights [Cout, C*kh*kw]; out [N, Cout, Ho, Wo] */
    m->weight = in(e, mm, 0);
    m->cout = wt->shape[0];
    return wt->shape[1] == col->shape[1] * col->shape[2] * col->shape[3] &&
           out->shape[1] == m->cout && out->shape[2] == col->shape[4] &&
           out->shape[3] == col->shape[5];
}

/* matmul(x [N, K], W [K, M]) with W constant. */
static bool match_gemm(const exporter *e, int i)
{
    return is_op(e, i, TG_OP_MATMUL) && e->dyn[in(e, i, 0)] && !e->dyn[in(e, i, 1)] &&
           node(e, in(e, i, 0))->ndim == 2 && node(e, in(e, i, 1))->ndim == 2;
}

/* Max pooling pads with -inf, average pooling with zeros (counted in the divisor). */
static bool pad_fits(const exporter *e, int i, const window *w)
{
    double want = is_op(e, i, TG_OP_MAX) ? -INFINITY : 0.0;
    bool padded = w->pads[0] || w->pads[1] || w->pads[2] || w->pads[3];
    return !padded || w->pad_value == want;
}

/* max or sum over axis 2 of [N, C, kh*kw, Ho, Wo] windows: pooling. */
static bool match_pool(const exporter *e, int i, window *w)
{
    const tg_ir_node *red = node(e, i);
    if ((!is_op(e, i, TG_OP_MAX) && !is_op(e, i, TG_OP_SUM)) || red->attr[0] != (1 << 2) ||
        red->ndim != 5)
        return false;
    int r = in(e, i, 0);
    if (!is_op(e, r, TG_OP_RESHAPE) || !single_use(e, r) || node(e, r)->ndim != 5)
        return false;
    int src = in(e, r, 0);
    const int64_t *ws = node(e, r)->shape;
    if (match_im2col(e, src, w))
        return pad_fits(e, i, w) && ws[2] == w->kh * w->kw;
    /* simplify's form of windows that tile the image: reshape [N, C, Ho, kh, Wo, kw],
     * permute (0, 1, 3, 5, 2, 4), reshape [N, C, kh*kw, Ho, Wo] */
    static const int64_t perm[6] = {0, 1, 3, 5, 2, 4};
    if (!is_op(e, src, TG_OP_PERMUTE) || !single_use(e, src) || node(e, src)->ndim != 6 ||
        memcmp(node(e, src)->attr, perm, sizeof perm) != 0)
        return false;
    int q = in(e, src, 0);
    if (!is_op(e, q, TG_OP_RESHAPE) || !single_use(e, q) || node(e, q)->ndim != 6)
        return false;
    const int64_t *qs = node(e, q)->shape;
    int x = in(e, q, 0);
    const tg_ir_node *xn = node(e, x);
    if (xn->ndim != 4 || !e->dyn[x] || xn->shape[2] != qs[2] * qs[3] ||
        xn->shape[3] != qs[4] * qs[5] || ws[2] != qs[3] * qs[5])
        return false;
    *w = (window){.x = x, .kh = qs[3], .kw = qs[5], .sh = qs[3], .sw = qs[5]};
    return absorb_pad(e, w) && pad_fits(e, i, w);
}

/* where(lt(0, x), x, 0) or maximum(x, 0) / maximum(0, x): the ReLU of x. */
static bool match_relu(const exporter *e, int i, int *x)
{
    double v;
    if (is_op(e, i, TG_OP_MAXIMUM)) {
        for (int k = 0; k < 2; k++)
            if (e->dyn[in(e, i, k)] && const_scalar(e, in(e, i, 1 - k), &v) && v == 0) {
                *x = in(e, i, k);
                return true;
            }
        return false;
    }
    if (!is_op(e, i, TG_OP_WHERE))
        return false;
    int cond = in(e, i, 0), a = in(e, i, 1), z = in(e, i, 2);
    return is_op(e, cond, TG_OP_LT) && in(e, cond, 1) == a && e->dyn[a] &&
           const_scalar(e, in(e, cond, 0), &v) && v == 0 && const_scalar(e, z, &v) && v == 0 &&
           (*x = a, true);
}

/* ---- emitting the groups ----------------------------------------------------------------- */
static int emit_pool(exporter *e, int i, const window *w, bool average, double scale_after)
{
    const char *x = exact(e, w->x);
    if (!x)
        return tg_last_error_code();
    char h[128];
    int64_t no_pads[4] = {0}, k[2] = {w->kh, w->kw}, s[2] = {w->sh, w->sw};
    const int64_t *pads = w->pads;
    if (average && (pads[0] || pads[1] || pads[2] || pads[3])) {
        /* Zeros that count in the divisor: an explicit Pad, then an unpadded AveragePool.
         * The same as count_include_pad = 1, which OpenCV 4.6 gets wrong where a window
         * reaches into the padding at the end. */
        const int64_t all[8] = {0, 0, pads[0], pads[1], 0, 0, pads[2], pads[3]};
        const char *ins[2] = {x, onnx_add_int64_init(e->b, hint(e, i, "pads", h, sizeof h), 8,
                                                     all)};
        onnx_node *p = ins[1] ? onnx_add_node(e->b, "Pad", hint(e, i, "pad", h, sizeof h), 2,
                                              ins)
                              : NULL;
        if (!p)
            return nomem();
        x = onnx_node_output(p);
        pads = no_pads;
    }
    onnx_node *n = onnx_add_node(e->b, average ? "AveragePool" : "MaxPool",
                                 hint(e, i, average ? "avgpool" : "maxpool", h, sizeof h), 1, &x);
    if (!n || onnx_attr_ints(e->b, n, "kernel_shape", 2, k) ||
        onnx_attr_ints(e->b, n, "strides", 2, s) || onnx_attr_ints(e->b, n, "pads", 4, pads))
        return nomem();
    const tg_ir_node *xn = node(e, w->x);
    int64_t shape[4] = {xn->shape[0], xn->shape[1],
                        (xn->shape[2] + w->pads[0] + w->pads[2] - w->kh) / w->sh + 1,
                        (xn->shape[3] + w->pads[1] + w->pads[3] - w->kw) / w->sw + 1};
    const char *out = onnx_node_output(n);
    if (scale_after != 1) { /* a sum of the window: its mean times the window's size */
        float s1 = (float)scale_after;
        const char *c = onnx_add_float_init(e->b, hint(e, i, "scale", h, sizeof h), 0, NULL, &s1);
        const char *ins[2] = {out, c};
        onnx_node *m = c ? onnx_add_node(e->b, "Mul", hint(e, i, "mul", h, sizeof h), 2, ins)
                         : NULL;
        if (!m)
            return nomem();
        out = onnx_node_output(m);
    }
    set_value(e, i, out, 4, shape);
    return TG_OK;
}

/* Conv or Gemm at `base`, with bias[] added (NULL: none); the value of node `top`. */
static int emit_conv(exporter *e, int top, const conv_match *m, const float *bias)
{
    const char *x = exact(e, m->w.x);
    if (!x)
        return tg_last_error_code();
    char h[128];
    const tg_ir_node *xn = node(e, m->w.x);
    int64_t wshape[4] = {m->cout, xn->shape[1], m->w.kh, m->w.kw};
    const char *ins[3] = {x, onnx_add_float_init(e->b, hint(e, top, "weight", h, sizeof h), 4,
                                                 wshape, e->cval[m->weight]), NULL};
    int n_in = 2;
    if (bias)
        ins[n_in++] = onnx_add_float_init(e->b, hint(e, top, "bias", h, sizeof h), 1, &m->cout,
                                          bias);
    onnx_node *n;
    int status = emit_node(e, top, "Conv", "conv", n_in, ins, &n);
    int64_t k[2] = {m->w.kh, m->w.kw}, s[2] = {m->w.sh, m->w.sw};
    if (status == TG_OK &&
        (onnx_attr_ints(e->b, n, "kernel_shape", 2, k) ||
         onnx_attr_ints(e->b, n, "strides", 2, s) || onnx_attr_ints(e->b, n, "pads", 4, m->w.pads)))
        status = nomem();
    return status;
}

static int emit_gemm(exporter *e, int top, int mm, const float *bias)
{
    char h[128];
    const tg_ir_node *w = node(e, in(e, mm, 1));
    int64_t k = w->shape[0], cols = w->shape[1], wt_shape[2] = {cols, k};
    /* The weights as [M, K] with transB = 1, the layout of PyTorch's exports, which every
     * reader handles (OpenCV 4.6 refuses a bias with transB = 0). */
    float *wt = malloc((size_t)(k * cols) * sizeof *wt), *zeros = NULL;
    if (!wt || (!bias && !(bias = zeros = calloc((size_t)cols, sizeof *zeros)))) {
        free(wt);
        return nomem();
    }
    const float *src = e->cval[in(e, mm, 1)];
    for (int64_t r = 0; r < k; r++)
        for (int64_t c = 0; c < cols; c++)
            wt[c * k + r] = src[r * cols + c];
    /* C is always given: readers that predate optional C (opset 11) still take the file. */
    const char *ins[3] = {exact(e, in(e, mm, 0)),
                          onnx_add_float_init(e->b, hint(e, top, "weight", h, sizeof h), 2,
                                              wt_shape, wt),
                          onnx_add_float_init(e->b, hint(e, top, "bias", h, sizeof h), 1, &cols,
                                              bias)};
    free(wt);
    free(zeros);
    onnx_node *n;
    int status = emit_node(e, top, "Gemm", "gemm", 3, ins, &n);
    if (status == TG_OK && onnx_attr_int(e->b, n, "transB", 1))
        status = nomem();
    return status;
}

/* A chain of adds and subs of constants on top of a convolution or a matmul against weights:
 * the layer's bias (batch norm's shift, folded). False when node i is no such chain. */
static int try_affine(exporter *e, int i, bool *done)
{
    *done = false;
    int chain[64], n = 0, cur = i;
    float sign[64];
    while ((is_op(e, cur, TG_OP_ADD) || is_op(e, cur, TG_OP_SUB)) && n < 64 &&
           (cur == i || single_use(e, cur))) {
        int a = in(e, cur, 0), b = in(e, cur, 1);
        if (e->dyn[a] && !e->dyn[b]) {
            chain[n] = b;
            sign[n++] = is_op(e, cur, TG_OP_SUB) ? -1.0f : 1.0f;
            cur = a;
        } else if (!e->dyn[a] && e->dyn[b] && is_op(e, cur, TG_OP_ADD)) {
            chain[n] = a;
            sign[n++] = 1.0f;
            cur = b;
        } else {
            break;
        }
    }
    if (n == 0 || !single_use(e, cur) ||
        !same_shape(node(e, cur)->ndim, node(e, cur)->shape, node(e, i)->ndim, node(e, i)->shape))
        return TG_OK;
    conv_match m;
    bool conv = match_conv(e, cur, &m), gemm = !conv && match_gemm(e, cur);
    if (!conv && !gemm)
        return TG_OK;
    int64_t channels = node(e, cur)->shape[1];
    float *bias = calloc((size_t)channels, sizeof *bias);
    if (!bias)
        return nomem();
    bool per_channel = true;
    for (int k = 0; k < n && per_channel; k++)
        per_channel = add_per_axis(e, chain[k], node(e, cur)->ndim, 1, channels, sign[k], bias);
    int status = TG_OK;
    if (per_channel) {
        status = conv ? emit_conv(e, i, &m, bias) : emit_gemm(e, i, cur, bias);
        *done = true;
    }
    free(bias);
    return status;
}

/* A chain of adds, subs, muls and divs by per-channel constants on a value [N, C, ...]
 * (batch norm in evaluation where no convolution or linear layer before it took its scale):
 * y = s x + t per channel, written as BatchNormalization with mean 0, variance 1 and epsilon
 * 0, which every reader runs as that affine map. */
static int try_channel_affine(exporter *e, int i, bool *done)
{
    *done = false;
    const tg_ir_node *top = node(e, i);
    if (top->ndim < 2 || top->shape[1] > 4096)
        return TG_OK;
    int64_t C = top->shape[1];
    int chain[64], n = 0, cur = i;
    while (n < 64 && (cur == i || single_use(e, cur)) &&
           (is_op(e, cur, TG_OP_ADD) || is_op(e, cur, TG_OP_SUB) || is_op(e, cur, TG_OP_MUL) ||
            is_op(e, cur, TG_OP_DIV))) {
        int a = in(e, cur, 0), b = in(e, cur, 1);
        float vals[4096];
        int d = e->dyn[a] && !e->dyn[b] ? a : !e->dyn[a] && e->dyn[b] ? b : -1;
        if (d < 0 || (is_op(e, cur, TG_OP_DIV) && d != a) ||
            !per_axis(e, d == a ? b : a, top->ndim, 1, C, vals) ||
            !same_shape(node(e, d)->ndim, node(e, d)->shape, top->ndim, top->shape))
            break;
        chain[n++] = cur;
        cur = d;
    }
    if (n == 0)
        return TG_OK;
    float *sc = malloc((size_t)C * sizeof *sc), *sh = calloc((size_t)C, sizeof *sh);
    float *zeros = calloc((size_t)C, sizeof *zeros), *ones = malloc((size_t)C * sizeof *ones);
    float vals[4096];
    if (!sc || !sh || !zeros || !ones) {
        free(sc), free(sh), free(zeros), free(ones);
        return nomem();
    }
    for (int64_t k = 0; k < C; k++)
        sc[k] = ones[k] = 1;
    for (int j = n - 1; j >= 0; j--) { /* from the bottom of the chain up */
        int op = node(e, chain[j])->op, a = in(e, chain[j], 0), b = in(e, chain[j], 1);
        bool x_first = e->dyn[a];
        per_axis(e, x_first ? b : a, top->ndim, 1, C, vals);
        for (int64_t k = 0; k < C; k++) {
            float v = vals[k];
            if (op == TG_OP_ADD)
                sh[k] += v;
            else if (op == TG_OP_SUB && x_first)
                sh[k] -= v;
            else if (op == TG_OP_SUB) /* v - (s x + t) */
                sc[k] = -sc[k], sh[k] = v - sh[k];
            else if (op == TG_OP_MUL)
                sc[k] *= v, sh[k] *= v;
            else
                sc[k] /= v, sh[k] /= v;
        }
    }
    char h[128];
    const char *ins[5] = {exact(e, cur),
                          onnx_add_float_init(e->b, hint(e, i, "scale", h, sizeof h), 1, &C, sc),
                          onnx_add_float_init(e->b, hint(e, i, "shift", h, sizeof h), 1, &C, sh),
                          onnx_add_float_init(e->b, hint(e, i, "mean", h, sizeof h), 1, &C, zeros),
                          onnx_add_float_init(e->b, hint(e, i, "var", h, sizeof h), 1, &C, ones)};
    free(sc), free(sh), free(zeros), free(ones);
    onnx_node *bn;
    int status = emit_node(e, i, "BatchNormalization", "batchnorm", 5, ins, &bn);
    if (status == TG_OK && onnx_attr_float(e->b, bn, "epsilon", 0))
        status = nomem();
    *done = true;
    return status;
}

static int emit_binary(exporter *e, int i, const char *op)
{
    const char *ins[2] = {operand(e, in(e, i, 0)), operand(e, in(e, i, 1))};
    char what[32];
    snprintf(what, sizeof what, "%s", op);
    for (char *c = what; *c; c++)
        *c = (char)(*c >= 'A' && *c <= 'Z' ? *c - 'A' + 'a' : *c);
    return emit_node(e, i, op, what, 2, ins, NULL);
}

static int emit_unary(exporter *e, int i, const char *op, const char *what)
{
    const char *x = exact(e, in(e, i, 0));
    return emit_node(e, i, op, what, 1, &x, NULL);
}

static int emit_reshape(exporter *e, int i)
{
    conv_match m;
    if (match_conv(e, i, &m))
        return emit_conv(e, i, &m, NULL);
    int src = in(e, i, 0);
    int status = emit(e, src);
    if (status != TG_OK)
        return status;
    const onnx_value *v = &e->val[src];
    const char *name = reshape_to(e, i, v->name, v->ndim, v->shape, node(e, i)->ndim,
                                  node(e, i)->shape);
    if (!name)
        return tg_last_error_code();
    set_value(e, i, name, node(e, i)->ndim, node(e, i)->shape);
    return TG_OK;
}

/* mul(pool_sum, 1/window) (maybe through the reshape that drops the window axis): the
 * average pool. */
static bool match_average(const exporter *e, int i, window *w)
{
    double s;
    int a = in(e, i, 0), c = in(e, i, 1);
    if (!e->dyn[a]) {
        int t = a;
        a = c;
        c = t;
    }
    if (!e->dyn[a] || !const_scalar(e, c, &s) || node(e, c)->ndim > node(e, i)->ndim)
        return false;
    int p = a;
    if (is_op(e, p, TG_OP_RESHAPE) && single_use(e, p))
        p = in(e, p, 0);
    if (!is_op(e, p, TG_OP_SUM) || !single_use(e, p) || !match_pool(e, p, w))
        return false;
    double window_size = (double)(w->kh * w->kw);
    return fabs(s * window_size - 1) < 1e-6;
}

static int emit(exporter *e, int i)
{
    if (e->val[i].name)
        return TG_OK;
    const tg_ir_node *x = node(e, i);
    if (!e->dyn[i]) {
        const char *name = operand(e, i);
        if (!name)
            return tg_last_error_code();
        set_value(e, i, name, x->ndim, x->shape);
        return TG_OK;
    }
    if (x->leaf == TG_LEAF_INPUT) {
        set_value(e, i, x->name, x->ndim, x->shape);
        return TG_OK;
    }
    window w;
    int a;
    bool done;
    int status;
    switch (x->op) {
    case TG_OP_RESHAPE: return emit_reshape(e, i);
    case TG_OP_DETACH:
        if ((status = emit(e, in(e, i, 0))) != TG_OK)
            return status;
        e->val[i] = e->val[in(e, i, 0)];
        return TG_OK;
    case TG_OP_ADD:
    case TG_OP_SUB:
        if ((status = try_affine(e, i, &done)) != TG_OK || done)
            return status;
        if ((status = try_channel_affine(e, i, &done)) != TG_OK || done)
            return status;
        return emit_binary(e, i, x->op == TG_OP_ADD ? "Add" : "Sub");
    case TG_OP_MUL:
        if (match_average(e, i, &w))
            return emit_pool(e, i, &w, true, 1);
        if ((status = try_channel_affine(e, i, &done)) != TG_OK || done)
            return status;
        return emit_binary(e, i, "Mul");
    case TG_OP_DIV:
        if ((status = try_channel_affine(e, i, &done)) != TG_OK || done)
            return status;
        return emit_binary(e, i, "Div");
    case TG_OP_MAXIMUM:
        if (match_relu(e, i, &a)) {
            const char *v = exact(e, a);
            return emit_node(e, i, "Relu", "relu", 1, &v, NULL);
        }
        return emit_binary(e, i, "Max");
    case TG_OP_WHERE:
        if (match_relu(e, i, &a)) {
            const char *v = exact(e, a);
            return emit_node(e, i, "Relu", "relu", 1, &v, NULL);
        }
        return unmappable(e, i, "only where(0 < x, x, 0), the ReLU, is exported");
    case TG_OP_MAX:
    case TG_OP_SUM:
        if (match_pool(e, i, &w)) {
            bool sum = x->op == TG_OP_SUM;
            return emit_pool(e, i, &w, sum, sum ? (double)(w.kh * w.kw) : 1);
        }
        return unmappable(e, i, "only reductions over pooling windows are exported");
    case TG_OP_MATMUL:
        if (match_gemm(e, i))
            return emit_gemm(e, i, i, NULL);
        if (e->dyn[in(e, i, 0)] && e->dyn[in(e, i, 1)])
            return emit_binary(e, i, "MatMul");
        return unmappable(e, i, "a matmul against constants is exported as Gemm (x [N, K] "
                          "times weights [K, M]) or as part of a convolution only");
    case TG_OP_PERMUTE: {
        int64_t perm[TG_MAX_DIMS];
        memcpy(perm, x->attr, (size_t)x->ndim * sizeof *perm);
        if (perm[0] != 0)
            return unmappable(e, i, "it moves the batch axis");
        onnx_node *n;
        const char *v = exact(e, in(e, i, 0));
        if ((status = emit_node(e, i, "Transpose", "transpose", 1, &v, &n)) != TG_OK)
            return status;
        return onnx_attr_ints(e->b, n, "perm", x->ndim, perm) ? nomem() : TG_OK;
    }
    case TG_OP_NEG: return emit_unary(e, i, "Neg", "neg");
    case TG_OP_EXP: return emit_unary(e, i, "Exp", "exp");
    case TG_OP_LOG: return emit_unary(e, i, "Log", "log");
    case TG_OP_SQRT: return emit_unary(e, i, "Sqrt", "sqrt");
    case TG_OP_RECIP: return emit_unary(e, i, "Reciprocal", "recip");
    default:
        return unmappable(e, i, "no ONNX operator or group of primitives it belongs to "
                          "matches");
    }
}

/* ---- the entry point --------------------------------------------------------------------- */
static void exporter_free(exporter *e)
{
    if (e->owned)
        for (int i = 0; i < e->g.n; i++)
            if (e->owned[i])
                free(e->cval[i]);
    free(e->dyn);
    free(e->cval);
    free(e->owned);
    free(e->uses);
    free(e->val);
    free(e->prim);
    onnx_builder_free(e->b);
    tg_graph_free(&e->g);
}

static int check_args(tg_tape *tape, tg_tensor *input, tg_tensor *output, const char *path)
{
    if (!tape)
        return tg_fail(TG_ERR_NULL, "tg_export_onnx: tape is NULL");
    if (!input)
        return tg_fail_null_input("tg_export_onnx (input)", 0);
    if (!output)
        return tg_fail_null_input("tg_export_onnx (output)", 1);
    if (!path)
        return tg_fail(TG_ERR_NULL, "tg_export_onnx: path is NULL");
    if (!tg_check_inputs("tg_export_onnx", 2, (tg_tensor *[]){input, output}))
        return tg_last_error_code();
    if (input->tape != tape)
        return tg_fail(TG_ERR_TAPE, "tg_export_onnx: input is not on the given tape");
    if (input->op != TG_OP_LEAF || !input->traced || !input->name)
        return tg_fail(TG_ERR_ARG, "tg_export_onnx: input must be a placeholder "
                       "(tg_placeholder, made while the tape traced the forward pass)");
    if (!output->traced || output->data)
        return tg_fail(TG_ERR_ARG, "tg_export_onnx: output must be a traced node (trace the "
                       "forward pass with tg_tape_trace first)");
    if (input->ndim < 1)
        return tg_fail(TG_ERR_SHAPE, "tg_export_onnx: input needs a batch axis (it is a "
                       "scalar)");
    if (output->ndim < 1 || output->shape[0] != input->shape[0])
        return tg_fail(TG_ERR_SHAPE, "tg_export_onnx: the output's first axis must be the "
                       "input's batch (%lld)", (long long)input->shape[0]);
    return TG_OK;
}

static int prepare(exporter *e, tg_tape *tape, tg_tensor *input, tg_tensor *output,
                   const tg_onnx_options *opts)
{
    int status = tg_graph_from_tape(&e->g, tape, 1, &output);
    if (status != TG_OK)
        return status;
    if (e->g.n_updates > 0)
        return tg_fail(TG_ERR_ARG, "tg_export_onnx: the trace records %d update(s) (tg_assign: "
                       "an optimizer step, or batch norm in training mode); trace the "
                       "evaluation forward pass alone (training = false)", e->g.n_updates);
    tg_plan_stage stages[TG_MAX_STAGES];
    int n_stages;
    uint32_t off = (1u << TG_PASS_ID_lower_conv) | (1u << TG_PASS_ID_fuse);
    if ((status = tg_pipeline_run(&e->g, off, true, opts ? opts->dump_dir : NULL, stages,
                                  &n_stages)) != TG_OK)
        return status;
    size_t n = (size_t)e->g.n;
    e->dyn = calloc(n, sizeof *e->dyn);
    e->cval = calloc(n, sizeof *e->cval);
    e->owned = calloc(n, sizeof *e->owned);
    e->val = calloc(n, sizeof *e->val);
    e->prim = calloc(n, sizeof *e->prim);
    e->uses = tg_graph_use_counts(&e->g);
    e->b = onnx_builder_new(opts && opts->graph_name ? opts->graph_name : "tapegrad");
    if (!e->dyn || !e->cval || !e->owned || !e->val || !e->prim || !e->uses || !e->b)
        return nomem();
    e->input = -1;
    e->batch = input->shape[0];
    for (int i = 0; i < e->g.n; i++) {
        const tg_ir_node *x = node(e, i);
        char d[256];
        if (x->dtype != TG_F32)
            return tg_fail(TG_ERR_DTYPE, "tg_export_onnx: %s is %s; only float32 graphs are "
                           "exported", describe(e, i, d, sizeof d), tg_dtype_name(x->dtype));
        if (x->leaf == TG_LEAF_INPUT) {
            if (x->tape_id != input->id)
                return tg_fail(TG_ERR_ARG, "tg_export_onnx: the output also depends on the "
                               "placeholder '%s'; only one input (the given one) is exported",
                               x->name);
            e->input = i;
            e->dyn[i] = true;
        }
        for (int k = 0; k < x->n_in && !e->dyn[i]; k++)
            e->dyn[i] = e->dyn[x->in[k]];
    }
    if (e->input < 0)
        return tg_fail(TG_ERR_ARG, "tg_export_onnx: the output does not depend on the input "
                       "'%s'", input->name);
    return compute_constants(e);
}

int tg_export_onnx(tg_tape *tape, tg_tensor *input, tg_tensor *output, const char *path,
                   const tg_onnx_options *opts)
{
    int status = check_args(tape, input, output, path);
    if (status != TG_OK)
        return status;
    for (int k = 0; opts && k < opts->n_meta; k++)
        if (!opts->meta || !opts->meta[k].key || !opts->meta[k].value)
            return tg_fail(TG_ERR_NULL, "tg_export_onnx: metadata entry %d has a NULL key or "
                           "value", k);
    exporter e = {0};
    tg_graph_init(&e.g);
    status = prepare(&e, tape, input, output, opts);
    int out = status == TG_OK ? e.g.outputs[0] : -1;
    const char *result = status == TG_OK ? exact(&e, out) : NULL;
    if (status == TG_OK && !result)
        status = tg_last_error_code() ? tg_last_error_code() : TG_ERR_NOMEM;
    const char *out_name = opts && opts->output_name ? opts->output_name : "output";
    const tg_ir_node *on = status == TG_OK ? node(&e, out) : NULL;
    if (status == TG_OK) {
        /* The output is a node's output (renamed) unless the model is the identity. */
        if (!e.dyn[out] || out == e.input) {
            onnx_node *id = onnx_add_node(e.b, "Identity", out_name, 1, &result);
            status = id ? TG_OK : nomem();
        } else if (onnx_rename(e.b, result, out_name) != 0) {
            status = nomem();
        }
    }
    char text[512], shape[160];
    if (status == TG_OK) {
        const tg_ir_node *x = node(&e, e.input);
        tg_shape_str(shape, sizeof shape, x->ndim - 1, x->shape + 1);
        snprintf(text, sizeof text, "%s: float32 [N, %s", x->name, shape + 1);
        if (onnx_add_graph_io(e.b, 0, x->name, x->ndim, x->shape, "N") ||
            onnx_add_graph_io(e.b, 1, out_name, on->ndim, on->shape, "N") ||
            onnx_add_meta(e.b, "tapegrad.input", text) ||
            (opts && opts->doc && onnx_set_doc(e.b, opts->doc)))
            status = nomem();
        for (int k = 0; status == TG_OK && opts && k < opts->n_meta; k++)
            if (onnx_add_meta(e.b, opts->meta[k].key, opts->meta[k].value))
                status = nomem();
    }
    if (status == TG_OK)
        status = onnx_write(e.b, TG_ONNX_OPSET, path);
    exporter_free(&e);
    return status;
}

bool tg_onnx_supported(void) { return true; }
