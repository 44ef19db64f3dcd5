/* Scale folding: a per-channel scale applied to a matmul's (or a convolution's) output moves
 * into the weights, where it costs a multiply per weight instead of one per activation:
 *
 *   (A B) * s   ->  (A * s_rows) B     s varies along A's rows (a conv's output channels)
 *   (A B) * s   ->  A (B * s_cols)     s varies along B's columns (a linear layer's outputs)
 *   (X ± c) * s ->  X * s ± c * s      first, for c free of inputs (a bias, batch norm's
 *                                      mean), so that the two above can apply
 *
 * In an evaluation plan batch norm normalizes with its running estimates: its scale
 * gamma / sqrt(var + eps) depends on parameters only, and this pass folds it (and the mean)
 * into the preceding convolution or linear layer, as inference engines do. It fires only
 * when s (and m) depend on no input of the plan, which keeps it away from training graphs,
 * whose batch statistics depend on the very product they would scale, and only where the
 * product has no other reader. Rounding differs from the unfolded graph by an ulp or so. */
#include "passes.h"

#include <stdlib.h>
#include <string.h>

typedef struct {
    tg_graph *g;
    bool *varies;  /* depends on an input of the plan */
    int *uses;
} ctx_t;

static tg_ir_node *N(tg_graph *g, int i) { return &g->nodes[i]; }

/* The axes along which node s (broadcast against a tensor of rank nd) has more than one
 * element, as a bitmask of the tensor's axes. */
static uint32_t spread_axes(tg_graph *g, int s, int nd)
{
    uint32_t mask = 0;
    int lead = nd - N(g, s)->ndim;
    for (int d = 0; d < N(g, s)->ndim; d++)
        if (N(g, s)->shape[d] != 1)
            mask |= 1u << (d + lead);
    return mask;
}

/* The matmul under x (x itself, or a reshape of it that keeps the leading [batch, M] axes),
 * and which of x's axes hold the matmul's M and N. -1 when x is no such thing. */
static int matmul_under(tg_graph *g, int x, int *m_axis, uint32_t *n_axes)
{
    int mm = N(g, x)->op == TG_OP_RESHAPE ? N(g, x)->in[0] : x;
    if (N(g, mm)->op != TG_OP_MATMUL)
        return -1;
    int nd = N(g, mm)->ndim, xd = N(g, x)->ndim;
    if (mm == x) {
        *m_axis = nd - 2;
        *n_axes = 1u << (nd - 1);
        return mm;
    }
    /* A reshape that keeps every axis up to M and splits N: [.., M, N] -> [.., M, a, b]. */
    if (xd < nd)
        return -1;
    for (int d = 0; d < nd - 1; d++)
        if (N(g, x)->shape[d] != N(g, mm)->shape[d])
            return -1;
    *m_axis = nd - 2;
    *n_axes = 0;
    for (int d = nd - 1; d < xd; d++)
        *n_axes |= 1u << d;
    return mm;
}

/* operand * s reshaped to operand's rank with s's values along `axis` (of operand). */
static int scaled(tg_graph *g, int operand, int s, int axis)
{
    int nd = N(g, operand)->ndim;
    int64_t shape[TG_MAX_DIMS];
    for (int d = 0; d < nd; d++)
        shape[d] = d == axis ? N(g, operand)->shape[d] : 1;
    int r = tg_graph_add_op(g, TG_OP_RESHAPE, N(g, s)->dtype, nd, shape, 1, &s);
    if (r < 0)
        return -1;
    return tg_graph_add_op(g, TG_OP_MUL, N(g, operand)->dtype, nd, N(g, operand)->shape, 2,
                           (const int[]){operand, r});
}

/* x * s with x a (reshaped) matmul: the scaled matmul, or -1. */
static int fold_product(ctx_t *c, int x, int s, int like)
{
    tg_graph *g = c->g;
    int m_axis;
    uint32_t n_axes;
    int mm = matmul_under(g, x, &m_axis, &n_axes);
    if (mm < 0 || c->varies[s] || c->uses[mm] != 1 || (mm != x && c->uses[x] != 1) ||
        N(g, s)->numel == 0 || !tg_shape_equal(N(g, like)->ndim, N(g, like)->shape,
                                               N(g, x)->ndim, N(g, x)->shape))
        return -1;
    uint32_t spread = spread_axes(g, s, N(g, x)->ndim);
    int a = N(g, mm)->in[0], b = N(g, mm)->in[1];
    int na = N(g, a)->ndim, nb = N(g, b)->ndim;
    int64_t flat[1];
    if (spread == (1u << m_axis) && N(g, s)->numel == N(g, mm)->shape[N(g, mm)->ndim - 2]) {
        flat[0] = N(g, s)->numel;
        int sv = tg_graph_add_op(g, TG_OP_RESHAPE, N(g, s)->dtype, 1, flat, 1, &s);
        a = sv < 0 ? -1 : scaled(g, a, sv, na - 2);
    } else if (spread && (spread & ~n_axes) == 0 && mm == x &&
               N(g, s)->numel == N(g, mm)->shape[N(g, mm)->ndim - 1]) {
        flat[0] = N(g, s)->numel;
        int sv = tg_graph_add_op(g, TG_OP_RESHAPE, N(g, s)->dtype, 1, flat, 1, &s);
        b = sv < 0 ? -1 : scaled(g, b, sv, nb - 1);
    } else {
        return -1;
    }
    if (a < 0 || b < 0)
        return -1;
    tg_ir_node prod = *N(g, mm);
    prod.in[0] = a;
    prod.in[1] = b;
    prod.tape_id = SIZE_MAX;
    int p = tg_graph_add(g, &prod);
    if (p < 0 || mm == x)
        return p;
    return tg_graph_add_op(g, TG_OP_RESHAPE, N(g, x)->dtype, N(g, x)->ndim, N(g, x)->shape, 1,
                           &p);
}

/* x * s where x is a foldable product, or such a product plus or minus terms that depend
 * on no input (a bias, batch norm's mean): the scaled product plus or minus the scaled
 * terms. `like` gives the result's shape. -1 when x is none of these. */
static int fold_affine(ctx_t *c, int x, int s, int like, int depth)
{
    tg_graph *g = c->g;
    int r = fold_product(c, x, s, like);
    if (r >= 0 || depth == 0)
        return r;
    int op = N(g, x)->op;
    if ((op != TG_OP_SUB && op != TG_OP_ADD) || c->uses[x] != 1)
        return -1;
    int term = N(g, x)->in[1], inner = N(g, x)->in[0];
    if (c->varies[term] || c->varies[s] ||
        !tg_shape_equal(N(g, inner)->ndim, N(g, inner)->shape, N(g, x)->ndim, N(g, x)->shape))
        return -1;
    int scaled_inner = fold_affine(c, inner, s, inner, depth - 1);
    if (scaled_inner < 0)
        return -1;
    int nd;
    int64_t ts[TG_MAX_DIMS], shape[TG_MAX_DIMS];
    if (!tg_broadcast_shapes(N(g, term)->ndim, N(g, term)->shape, N(g, s)->ndim, N(g, s)->shape,
                             &nd, ts))
        return -1;
    int scaled_term = tg_graph_add_op(g, TG_OP_MUL, N(g, x)->dtype, nd, ts, 2,
                                      (const int[]){term, s});
    memcpy(shape, N(g, like)->shape, sizeof shape);
    return scaled_term < 0 ? -1
                           : tg_graph_add_op(g, op, N(g, x)->dtype, N(g, like)->ndim, shape, 2,
                                             (const int[]){scaled_inner, scaled_term});
}

static int fold(ctx_t *c, int i)
{
    tg_ir_node *x = N(c->g, i);
    if (x->op != TG_OP_MUL)
        return -1;
    int r = fold_affine(c, x->in[0], x->in[1], i, 2);
    return r >= 0 ? r : fold_affine(c, x->in[1], x->in[0], i, 2);
}

int tg_pass_fold_scale(tg_graph *g, const tg_pass_ctx *ctx)
{
    TG_UNUSED(ctx);
    ctx_t c = {g, calloc((size_t)g->n + 1, sizeof(bool)), tg_graph_use_counts(g)};
    if (!c.varies || !c.uses) {
        free(c.varies);
        free(c.uses);
        return tg_fail(TG_ERR_NOMEM, "fold_scale: out of memory");
    }
    int end = g->n;
    for (int i = 0; i < end; i++) {
        tg_ir_node *x = N(g, i);
        c.varies[i] = x->leaf == TG_LEAF_INPUT;
        for (int k = 0; k < x->n_in; k++)
            c.varies[i] |= c.varies[x->in[k]];
    }
    for (int i = 0; i < end; i++) {
        if (c.uses[i] == 0)
            continue;
        int with = fold(&c, i);
        if (with >= 0)
            tg_graph_replace(g, i, with);
    }
    free(c.varies);
    free(c.uses);
    return TG_OK;
}
