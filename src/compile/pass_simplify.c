/* Algebraic simplification and constant folding: a list of small local rewrites, each
 * replacing one node by a cheaper equivalent, applied until none fires.
 *
 *   x + 0, x - 0, x * 1, x / 1, --x, cast to its own dtype, detach  -> x
 *   reshape of reshape, permute of permute, identity reshape/permute/expand/slice/pad -> one or none
 *   sum over axes that an expand broadcast             -> the input times the count
 *   where with a constant condition                    -> the branch it picks
 *   a 0/1 mask (lt, eq) times y                        -> where(mask, y, 0)
 *   im2col / col2im whose windows tile the image       -> reshape and permute (a view, which
 *                                                         fusion reads in place)
 *   a single row times a transposed matrix, a W^T      -> (W a^T)^T, both reshapes (no copy)
 *   an op on small constants only                      -> its value, computed now
 *
 * Detach only matters to tg_grad, which has run by now. The mask rewrite differs from the
 * product only where y is infinite or NaN, where the product's NaN is the one nobody wants
 * (relu's and max's rules mean "no gradient" there). Rewrites never change what a node
 * computes in any other way. */
#include "passes.h"

#include <stdlib.h>
#include <string.h>

#define FOLD_LIMIT 4096 /* constants folded up to this many elements */
#define MAX_ROUNDS 8

typedef int (*rewrite_fn)(tg_graph *g, int i); /* the replacement, or -1 for none */

static tg_ir_node *N(tg_graph *g, int i) { return &g->nodes[i]; }

static bool same_type(tg_graph *g, int a, int b)
{
    return N(g, a)->dtype == N(g, b)->dtype &&
           tg_shape_equal(N(g, a)->ndim, N(g, a)->shape, N(g, b)->ndim, N(g, b)->shape);
}

static bool is_const(tg_graph *g, int i, double value)
{
    double v;
    return tg_ir_const_value(g, i, &v) && v == value;
}

static int add_like(tg_graph *g, int op, int like, int n_in, const int *in)
{
    tg_ir_node *x = N(g, like);
    int64_t shape[TG_MAX_DIMS];
    memcpy(shape, x->shape, sizeof shape);
    return tg_graph_add_op(g, op, x->dtype, x->ndim, shape, n_in, in);
}

static int reshape_to(tg_graph *g, int src, int ndim, const int64_t *shape)
{
    if (tg_shape_equal(N(g, src)->ndim, N(g, src)->shape, ndim, shape))
        return src;
    return tg_graph_add_op(g, TG_OP_RESHAPE, N(g, src)->dtype, ndim, shape, 1, &src);
}

/* x op identity -> x, when x already has the result's shape. */
static int identity_operand(tg_graph *g, int i)
{
    tg_ir_node *x = N(g, i);
    int a = x->in[0], b = x->in[1];
    switch (x->op) {
    case TG_OP_ADD:
        if (is_const(g, b, 0) && same_type(g, a, i))
            return a;
        if (is_const(g, a, 0) && same_type(g, b, i))
            return b;
        return -1;
    case TG_OP_SUB:
        return is_const(g, b, 0) && same_type(g, a, i) ? a : -1;
    case TG_OP_MUL:
        if (is_const(g, b, 1) && same_type(g, a, i))
            return a;
        if (is_const(g, a, 1) && same_type(g, b, i))
            return b;
        return -1;
    case TG_OP_DIV:
        return is_const(g, b, 1) && same_type(g, a, i) ? a : -1;
    case TG_OP_NEG:
        return N(g, a)->op == TG_OP_NEG ? N(g, a)->in[0] : -1;
    case TG_OP_CAST:
    case TG_OP_DETACH:
    case TG_OP_RESHAPE:
    case TG_OP_EXPAND:
        return same_type(g, a, i) ? a : -1;
    case TG_OP_SLICE:
    case TG_OP_PAD:
        return tg_shape_equal(N(g, a)->ndim, N(g, a)->shape, x->ndim, x->shape) ? a : -1;
    case TG_OP_PERMUTE:
        for (int d = 0; d < x->ndim; d++)
            if (x->attr[d] != d)
                return -1;
        return a;
    default:
        return -1;
    }
}

static int chained_movement(tg_graph *g, int i)
{
    tg_ir_node *x = N(g, i);
    if (x->op != TG_OP_RESHAPE && x->op != TG_OP_PERMUTE)
        return -1;
    int src = x->in[0];
    if (N(g, src)->op != x->op)
        return -1;
    int inner = N(g, src)->in[0];
    if (x->op == TG_OP_RESHAPE)
        return reshape_to(g, inner, x->ndim, x->shape);
    tg_ir_node p = *x; /* permute(permute(v, q), r)[i] = v axis q[r[i]] */
    p.in[0] = inner;
    for (int d = 0; d < x->ndim; d++)
        p.attr[d] = N(g, src)->attr[x->attr[d]];
    p.tape_id = SIZE_MAX;
    return tg_graph_add(g, &p);
}

/* sum(expand(v)) over axes where v had size 1: v times the number of copies. */
static int sum_of_expand(tg_graph *g, int i)
{
    tg_ir_node *x = N(g, i);
    if (x->op != TG_OP_SUM || N(g, x->in[0])->op != TG_OP_EXPAND)
        return -1;
    int e = x->in[0], v = N(g, e)->in[0];
    int nd = x->ndim, lead = nd - N(g, v)->ndim;
    int64_t full[TG_MAX_DIMS];
    double count = 1;
    for (int d = 0; d < nd; d++) {
        full[d] = d < lead ? 1 : N(g, v)->shape[d - lead];
        if ((x->attr[0] >> d) & 1) {
            if (full[d] != 1)
                return -1; /* a real reduction over v's own values */
            count *= (double)N(g, e)->shape[d];
        }
    }
    int vr = reshape_to(g, v, nd, full);
    int c = tg_graph_add_scalar(g, x->dtype, count);
    if (vr < 0 || c < 0)
        return -1;
    int product = tg_graph_add_op(g, TG_OP_MUL, x->dtype, nd, full, 2, (const int[]){vr, c});
    if (product < 0 || tg_shape_equal(nd, full, nd, N(g, i)->shape))
        return product;
    return add_like(g, TG_OP_EXPAND, i, 1, &product);
}

static int constant_condition(tg_graph *g, int i)
{
    tg_ir_node *x = N(g, i);
    double c;
    if (x->op != TG_OP_WHERE || !tg_ir_const_value(g, x->in[0], &c))
        return -1;
    int pick = c != 0 ? x->in[1] : x->in[2];
    if (same_type(g, pick, i))
        return pick;
    int r = pick;
    if (N(g, pick)->ndim < x->ndim) { /* expand needs the rank first */
        int64_t full[TG_MAX_DIMS];
        int lead = x->ndim - N(g, pick)->ndim;
        for (int d = 0; d < x->ndim; d++)
            full[d] = d < lead ? 1 : N(g, pick)->shape[d - lead];
        r = reshape_to(g, pick, x->ndim, full);
    }
    return r < 0 ? -1 : add_like(g, TG_OP_EXPAND, i, 1, &r);
}

static bool is_mask(tg_graph *g, int i)
{
    int op = N(g, i)->op;
    return op == TG_OP_LT || op == TG_OP_EQ;
}

static int mask_product(tg_graph *g, int i)
{
    tg_ir_node *x = N(g, i);
    if (x->op != TG_OP_MUL)
        return -1;
    int m = x->in[0], y = x->in[1];
    if (!is_mask(g, m)) {
        m = x->in[1];
        y = x->in[0];
    }
    if (!is_mask(g, m))
        return -1;
    int zero = tg_graph_add_scalar(g, x->dtype, 0.0);
    return zero < 0 ? -1 : add_like(g, TG_OP_WHERE, i, 3, (const int[]){m, y, zero});
}

/* Windows that tile the image exactly are a reshuffle: im2col is then
 * permute(reshape(x, [N, C, OH, KH, OW, KW]), [0, 1, 3, 5, 2, 4]), col2im its inverse. */
static bool tiling(int64_t h, int64_t w, const int64_t *attr)
{
    return attr[0] == attr[2] && attr[1] == attr[3] && h % attr[0] == 0 && w % attr[1] == 0;
}

static int windows_as_views(tg_graph *g, int i)
{
    tg_ir_node x = *N(g, i);
    if (x.op == TG_OP_IM2COL) {
        int src = x.in[0];
        const int64_t *s = N(g, src)->shape;
        if (!tiling(s[2], s[3], x.attr))
            return -1;
        int64_t split[6] = {s[0], s[1], x.shape[4], x.attr[0], x.shape[5], x.attr[1]};
        int r = reshape_to(g, src, 6, split);
        tg_ir_node p = {.op = TG_OP_PERMUTE, .dtype = x.dtype, .ndim = 6, .n_in = 1, .in = {r},
                        .attr = {0, 1, 3, 5, 2, 4}, .label = x.label, .tape_id = SIZE_MAX};
        memcpy(p.shape, x.shape, sizeof p.shape);
        return r < 0 ? -1 : tg_graph_add(g, &p);
    }
    if (x.op == TG_OP_COL2IM) {
        int src = x.in[0];
        const int64_t *c = N(g, src)->shape; /* [N, C, KH, KW, OH, OW] */
        if (!tiling(x.shape[2], x.shape[3], x.attr))
            return -1;
        tg_ir_node p = {.op = TG_OP_PERMUTE, .dtype = x.dtype, .ndim = 6, .n_in = 1, .in = {src},
                        .shape = {c[0], c[1], c[4], c[2], c[5], c[3]},
                        .attr = {0, 1, 4, 2, 5, 3}, .label = x.label, .tape_id = SIZE_MAX};
        int q = tg_graph_add(g, &p);
        return q < 0 ? -1 : reshape_to(g, q, 4, x.shape);
    }
    return -1;
}

static bool is_transpose(tg_graph *g, int v)
{
    return N(g, v)->op == TG_OP_PERMUTE && N(g, v)->ndim == 2 && N(g, v)->attr[0] == 1;
}

/* a @ permute(W) with a single row a [1, K] and W [N, K]: the same dot products as W @ a^T,
 * whose operands are already in memory order, and a^T and the [N, 1] result are reshapes.
 * Without this the transposed matrix is copied at every run: a linear layer at batch 1 (the
 * MNIST model's 3136 x 128 weight) moved in full to compute 128 numbers. */
static int row_times_transpose(tg_graph *g, int i)
{
    tg_ir_node *x = N(g, i);
    if (x->op != TG_OP_MATMUL || x->ndim != 2 || x->shape[0] != 1)
        return -1;
    int a = x->in[0], t = x->in[1];
    if (N(g, a)->ndim != 2 || !is_transpose(g, t))
        return -1;
    int w = N(g, t)->in[0];
    int64_t k = N(g, a)->shape[1], n = x->shape[1];
    tg_dtype dt = x->dtype;
    int column = reshape_to(g, a, 2, (const int64_t[]){k, 1});
    if (column < 0)
        return -1;
    int product = tg_graph_add_op(g, TG_OP_MATMUL, dt, 2, (const int64_t[]){n, 1}, 2,
                                  (const int[]){w, column});
    if (product < 0)
        return -1;
    return reshape_to(g, product, 2, (const int64_t[]){1, n});
}

/* v^T: the source of a transpose, or a new transpose of v. */
static int transposed(tg_graph *g, int v)
{
    if (is_transpose(g, v))
        return N(g, v)->in[0];
    const tg_ir_node *x = N(g, v);
    tg_ir_node t = {.op = TG_OP_PERMUTE, .dtype = x->dtype, .ndim = 2, .n_in = 1, .in = {v},
                    .shape = {x->shape[1], x->shape[0]}, .attr = {1, 0}, .label = x->label,
                    .tape_id = SIZE_MAX};
    return tg_graph_add(g, &t);
}

/* (a @ b)^T -> b^T @ a^T when a or b is itself a transpose, and the product is read only
 * through this one: the transposes move from the product to the operands, where one
 * cancels. A linear layer's weight gradient is written x^T @ dy and read transposed by the
 * optimizer; this makes it dy^T @ x, which copies the small dy^T instead of x^T and writes the
 * gradient in the weight's own layout. */
static int transpose_of_product(tg_graph *g, int i)
{
    tg_ir_node *x = N(g, i);
    if (!is_transpose(g, i) || N(g, x->in[0])->op != TG_OP_MATMUL || N(g, x->in[0])->ndim != 2)
        return -1;
    int m = x->in[0], a = N(g, m)->in[0], b = N(g, m)->in[1];
    if (!is_transpose(g, a) && !is_transpose(g, b))
        return -1;
    int *uses = tg_graph_use_counts(g);
    bool alone = uses && uses[m] == 1;
    free(uses);
    if (!alone)
        return -1;
    int64_t rows = x->shape[0], cols = x->shape[1];
    tg_dtype dt = x->dtype;
    int tb = transposed(g, b);
    int ta = tb < 0 ? -1 : transposed(g, a);
    if (ta < 0)
        return -1;
    return tg_graph_add_op(g, TG_OP_MATMUL, dt, 2, (const int64_t[]){rows, cols}, 2,
                           (const int[]){tb, ta});
}

/* An op whose inputs are all constants: run its kernel now. */
static int fold_constants(tg_graph *g, int i)
{
    tg_ir_node *x = N(g, i);
    if (x->op == TG_OP_LEAF || x->op >= TG_OP_COUNT || x->numel > FOLD_LIMIT ||
        !tg_op_table[x->op].kernel)
        return -1;
    struct tg_node ins[3], node = {.op = (tg_op)x->op, .dtype = x->dtype, .ndim = x->ndim,
                                   .numel = x->numel, .fattr = x->fattr, .n_in = x->n_in};
    const void *data[3];
    for (int k = 0; k < x->n_in; k++) {
        tg_ir_node *in = N(g, x->in[k]);
        if (in->leaf != TG_LEAF_CONST || in->numel > FOLD_LIMIT)
            return -1;
        ins[k] = (struct tg_node){.op = TG_OP_LEAF, .dtype = in->dtype, .ndim = in->ndim,
                                  .numel = in->numel};
        memcpy(ins[k].shape, in->shape, sizeof ins[k].shape);
        node.in[k] = &ins[k];
        data[k] = in->data;
    }
    memcpy(node.shape, x->shape, sizeof node.shape);
    memcpy(node.attr, x->attr, sizeof node.attr);
    size_t bytes = (size_t)x->numel * (x->dtype == TG_F64 ? sizeof(double) : sizeof(float));
    void *value = malloc(bytes ? bytes : 1);
    if (!value)
        return -1;
    tg_op_table[x->op].kernel(&node, value, data);
    tg_ir_node c = {.op = TG_OP_LEAF, .dtype = x->dtype, .ndim = x->ndim, .leaf = TG_LEAF_CONST,
                    .data = value, .label = x->label, .tape_id = SIZE_MAX};
    memcpy(c.shape, x->shape, sizeof c.shape);
    int r = tg_graph_add(g, &c);
    if (r < 0)
        free(value);
    return r;
}

static const rewrite_fn rewrites[] = {
    identity_operand, chained_movement, sum_of_expand, constant_condition,
    mask_product,     windows_as_views, row_times_transpose, transpose_of_product,
    fold_constants,
};

int tg_pass_simplify(tg_graph *g, const tg_pass_ctx *ctx)
{
    for (int round = 0; round < MAX_ROUNDS; round++) {
        bool changed = false;
        int end = g->n; /* nodes appended this round wait for the next */
        int *uses = tg_graph_use_counts(g);
        if (!uses)
            return tg_fail(TG_ERR_NOMEM, "simplify: out of memory");
        for (int i = 0; i < end; i++) {
            /* Unused nodes (kept only while DCE is off) are not worth rewriting. */
            if (N(g, i)->op == TG_OP_LEAF || uses[i] == 0)
                continue;
            for (size_t r = 0; r < sizeof rewrites / sizeof *rewrites; r++) {
                /* ONNX export reads the graph as layers: keep x W^T a Gemm. */
                if (ctx->layer_forms && rewrites[r] == row_times_transpose)
                    continue;
                int with = rewrites[r](g, i);
                if (with >= 0 && with != i) {
                    tg_graph_replace(g, i, with);
                    changed = true;
                    break;
                }
            }
        }
        free(uses);
        if (!changed)
            break;
        int status = tg_graph_compact(g);
        if (status != TG_OK)
            return status;
    }
    return TG_OK;
}
