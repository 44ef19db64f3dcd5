/* The primitive builders: validate the inputs, append a node, compute it (eager mode).
 * Each one names itself in its errors along with the shapes it was given. */
#include "internal.h"

#include <string.h>

#define SHAPE(buf, t) tg_shape_str(buf, sizeof buf, (t)->ndim, (t)->shape)

static tg_tensor *emit(tg_tensor *n)
{
    if (!n)
        return NULL;
    tg_node_compute(n);
    return tg_node_check_finite(n) == TG_OK ? n : NULL;
}

static bool same_dtype(const char *op, int count, tg_tensor *const *in)
{
    for (int i = 1; i < count; i++) {
        if (in[i]->dtype != in[0]->dtype) {
            tg_fail(TG_ERR_DTYPE, "%s: input %d is %s but input 0 is %s", op, i,
                    tg_dtype_name(in[i]->dtype), tg_dtype_name(in[0]->dtype));
            return false;
        }
    }
    return true;
}

/* ---- elementwise -------------------------------------------------------------------------- */
static tg_tensor *unary(tg_op op, tg_tensor *a)
{
    const char *name = tg_op_name(op);
    if (!tg_check_inputs(name, 1, &a))
        return NULL;
    return emit(tg_node_new(a->tape, op, a->dtype, a->ndim, a->shape, 1, &a));
}

tg_tensor *tg_neg(tg_tensor *a) { return unary(TG_OP_NEG, a); }
tg_tensor *tg_exp(tg_tensor *a) { return unary(TG_OP_EXP, a); }
tg_tensor *tg_log(tg_tensor *a) { return unary(TG_OP_LOG, a); }
tg_tensor *tg_sqrt(tg_tensor *a) { return unary(TG_OP_SQRT, a); }
tg_tensor *tg_recip(tg_tensor *a) { return unary(TG_OP_RECIP, a); }

static tg_tensor *broadcasting(tg_op op, int count, tg_tensor *const *in)
{
    const char *name = tg_op_name(op);
    if (!tg_check_inputs(name, count, in) || !same_dtype(name, count, in))
        return NULL;
    int ndim = in[0]->ndim;
    int64_t shape[TG_MAX_DIMS];
    memcpy(shape, in[0]->shape, sizeof shape);
    for (int i = 1; i < count; i++) {
        if (!tg_broadcast_shapes(ndim, shape, in[i]->ndim, in[i]->shape, &ndim, shape)) {
            char sa[128], sb[128];
            tg_fail(TG_ERR_SHAPE, "%s: shapes %s and %s do not broadcast", name, SHAPE(sa, in[0]),
                    SHAPE(sb, in[i]));
            return NULL;
        }
    }
    return emit(tg_node_new(in[0]->tape, op, in[0]->dtype, ndim, shape, count, in));
}

static tg_tensor *binary(tg_op op, tg_tensor *a, tg_tensor *b)
{
    tg_tensor *in[2] = {a, b};
    return broadcasting(op, 2, in);
}

tg_tensor *tg_add(tg_tensor *a, tg_tensor *b) { return binary(TG_OP_ADD, a, b); }
tg_tensor *tg_sub(tg_tensor *a, tg_tensor *b) { return binary(TG_OP_SUB, a, b); }
tg_tensor *tg_mul(tg_tensor *a, tg_tensor *b) { return binary(TG_OP_MUL, a, b); }
tg_tensor *tg_div(tg_tensor *a, tg_tensor *b) { return binary(TG_OP_DIV, a, b); }
tg_tensor *tg_maximum(tg_tensor *a, tg_tensor *b) { return binary(TG_OP_MAXIMUM, a, b); }
tg_tensor *tg_lt(tg_tensor *a, tg_tensor *b) { return binary(TG_OP_LT, a, b); }
tg_tensor *tg_eq(tg_tensor *a, tg_tensor *b) { return binary(TG_OP_EQ, a, b); }

tg_tensor *tg_where(tg_tensor *cond, tg_tensor *a, tg_tensor *b)
{
    tg_tensor *in[3] = {cond, a, b};
    return broadcasting(TG_OP_WHERE, 3, in);
}

tg_tensor *tg_cast(tg_tensor *a, tg_dtype dt)
{
    if (!tg_check_inputs("cast", 1, &a))
        return NULL;
    if (dt != TG_F32 && dt != TG_F64) {
        tg_fail(TG_ERR_DTYPE, "cast: unknown dtype %d", (int)dt);
        return NULL;
    }
    return emit(tg_node_new(a->tape, TG_OP_CAST, dt, a->ndim, a->shape, 1, &a));
}

tg_tensor *tg_detach(tg_tensor *a)
{
    if (!tg_check_inputs("detach", 1, &a))
        return NULL;
    return emit(tg_node_new(a->tape, TG_OP_DETACH, a->dtype, a->ndim, a->shape, 1, &a));
}

/* ---- reductions ----------------------------------------------------------------------------- */
tg_tensor *tg_reduce_mask(tg_op op, tg_tensor *a, uint32_t mask)
{
    if (!tg_check_inputs(tg_op_name(op), 1, &a))
        return NULL;
    int64_t shape[TG_MAX_DIMS];
    for (int i = 0; i < a->ndim; i++)
        shape[i] = (mask >> i) & 1 ? 1 : a->shape[i];
    if (op == TG_OP_MAX) {
        for (int i = 0; i < a->ndim; i++) {
            if (((mask >> i) & 1) && a->shape[i] == 0) {
                tg_fail(TG_ERR_SHAPE, "max: axis %d is empty; a max needs an element", i);
                return NULL;
            }
        }
    }
    tg_tensor *n = tg_node_new(a->tape, op, a->dtype, a->ndim, shape, 1, &a);
    if (n)
        n->attr[0] = mask;
    return emit(n);
}

static tg_tensor *reduce(tg_op op, tg_tensor *a, int naxes, const int *axes, bool keepdims)
{
    const char *name = tg_op_name(op);
    if (!tg_check_inputs(name, 1, &a))
        return NULL;
    if (naxes < 0 || naxes > a->ndim || (naxes > 0 && !axes)) {
        tg_fail(naxes > 0 && !axes ? TG_ERR_NULL : TG_ERR_AXIS,
                "%s: %d axes%s for a tensor of %d dimensions", name, naxes,
                naxes > 0 && !axes ? " but axes is NULL" : "", a->ndim);
        return NULL;
    }
    uint32_t mask = naxes == 0 ? (1u << a->ndim) - 1 : 0;
    for (int i = 0; i < naxes; i++) {
        int ax = tg_norm_axis(axes[i], a->ndim);
        if (ax < 0 || ((mask >> ax) & 1)) {
            char sa[128];
            tg_fail(TG_ERR_AXIS, "%s: axis %d is %s for shape %s", name, axes[i],
                    ax < 0 ? "out of range" : "repeated", SHAPE(sa, a));
            return NULL;
        }
        mask |= 1u << ax;
    }
    tg_tensor *r = tg_reduce_mask(op, a, mask);
    if (!r || keepdims)
        return r;
    int64_t shape[TG_MAX_DIMS];
    int nd = 0;
    for (int i = 0; i < a->ndim; i++)
        if (!((mask >> i) & 1))
            shape[nd++] = a->shape[i];
    return tg_reshape(r, nd, shape);
}

tg_tensor *tg_sum(tg_tensor *a, int naxes, const int *axes, bool keepdims)
{
    return reduce(TG_OP_SUM, a, naxes, axes, keepdims);
}

tg_tensor *tg_max(tg_tensor *a, int naxes, const int *axes, bool keepdims)
{
    return reduce(TG_OP_MAX, a, naxes, axes, keepdims);
}

/* ---- movement ----------------------------------------------------------------------------------- */
tg_tensor *tg_reshape(tg_tensor *a, int ndim, const int64_t *shape)
{
    if (!tg_check_inputs("reshape", 1, &a))
        return NULL;
    if (ndim < 0 || ndim > TG_MAX_DIMS || (ndim > 0 && !shape)) {
        tg_fail(ndim > 0 && !shape ? TG_ERR_NULL : TG_ERR_SHAPE,
                "reshape: %d dimensions%s (0 to %d allowed)", ndim,
                ndim > 0 && !shape ? " but shape is NULL" : "", TG_MAX_DIMS);
        return NULL;
    }
    int64_t out[TG_MAX_DIMS];
    int infer = -1;
    int64_t known = 1;
    for (int i = 0; i < ndim; i++) {
        out[i] = shape[i];
        if (shape[i] == -1 && infer < 0) {
            infer = i;
        } else if (shape[i] < 0) {
            tg_fail(TG_ERR_SHAPE, "reshape: dimension %d is %lld", i, (long long)shape[i]);
            return NULL;
        } else if (shape[i] != 0 && known > INT64_MAX / shape[i]) {
            tg_fail(TG_ERR_SHAPE, "reshape: the shape has too many elements");
            return NULL;
        } else {
            known *= shape[i];
        }
    }
    if (infer >= 0) {
        if (known == 0 || a->numel % known != 0) {
            char sa[128];
            tg_fail(TG_ERR_SHAPE, "reshape: cannot infer dimension %d from %s", infer,
                    SHAPE(sa, a));
            return NULL;
        }
        out[infer] = a->numel / known;
        known = a->numel;
    }
    if (known != a->numel) {
        char sa[128], sb[128];
        tg_fail(TG_ERR_SHAPE, "reshape: %s has %lld elements, %s has %lld", SHAPE(sa, a),
                (long long)a->numel, tg_shape_str(sb, sizeof sb, ndim, out), (long long)known);
        return NULL;
    }
    return emit(tg_node_new(a->tape, TG_OP_RESHAPE, a->dtype, ndim, out, 1, &a));
}

tg_tensor *tg_permute(tg_tensor *a, const int *perm)
{
    if (!tg_check_inputs("permute", 1, &a))
        return NULL;
    if (!perm && a->ndim > 0) {
        tg_fail(TG_ERR_NULL, "permute: perm is NULL");
        return NULL;
    }
    int64_t shape[TG_MAX_DIMS];
    uint32_t seen = 0;
    for (int i = 0; i < a->ndim; i++) {
        int p = tg_norm_axis(perm[i], a->ndim);
        if (p < 0 || ((seen >> p) & 1)) {
            char sa[128];
            tg_fail(TG_ERR_AXIS, "permute: entry %d (%d) is %s for shape %s", i, perm[i],
                    p < 0 ? "out of range" : "repeated", SHAPE(sa, a));
            return NULL;
        }
        seen |= 1u << p;
        shape[i] = a->shape[p];
    }
    tg_tensor *n = tg_node_new(a->tape, TG_OP_PERMUTE, a->dtype, a->ndim, shape, 1, &a);
    for (int i = 0; n && i < a->ndim; i++)
        n->attr[i] = tg_norm_axis(perm[i], a->ndim);
    return emit(n);
}

tg_tensor *tg_expand(tg_tensor *a, int ndim, const int64_t *shape)
{
    if (!tg_check_inputs("expand", 1, &a))
        return NULL;
    if (ndim < a->ndim || ndim > TG_MAX_DIMS || (ndim > 0 && !shape)) {
        char sa[128];
        tg_fail(ndim > 0 && !shape ? TG_ERR_NULL : TG_ERR_SHAPE,
                "expand: cannot expand %s to %d dimensions", SHAPE(sa, a), ndim);
        return NULL;
    }
    for (int i = 0; i < ndim; i++) {
        int j = i - (ndim - a->ndim);
        if (shape[i] < 0 || (j >= 0 && a->shape[j] != 1 && a->shape[j] != shape[i])) {
            char sa[128], sb[128];
            tg_fail(TG_ERR_SHAPE, "expand: cannot expand %s to %s", SHAPE(sa, a),
                    tg_shape_str(sb, sizeof sb, ndim, shape));
            return NULL;
        }
    }
    return emit(tg_node_new(a->tape, TG_OP_EXPAND, a->dtype, ndim, shape, 1, &a));
}

tg_tensor *tg_slice(tg_tensor *a, const int64_t *start, const int64_t *stop)
{
    if (!tg_check_inputs("slice", 1, &a))
        return NULL;
    if (a->ndim > 0 && (!start || !stop)) {
        tg_fail(TG_ERR_NULL, "slice: %s is NULL", start ? "stop" : "start");
        return NULL;
    }
    int64_t shape[TG_MAX_DIMS];
    for (int i = 0; i < a->ndim; i++) {
        if (start[i] < 0 || stop[i] < start[i] || stop[i] > a->shape[i]) {
            char sa[128];
            tg_fail(TG_ERR_ARG, "slice: [%lld, %lld) is out of range on axis %d of %s",
                    (long long)start[i], (long long)stop[i], i, SHAPE(sa, a));
            return NULL;
        }
        shape[i] = stop[i] - start[i];
    }
    tg_tensor *n = tg_node_new(a->tape, TG_OP_SLICE, a->dtype, a->ndim, shape, 1, &a);
    for (int i = 0; n && i < a->ndim; i++)
        n->attr[i] = start[i];
    return emit(n);
}

tg_tensor *tg_pad(tg_tensor *a, const int64_t *before, const int64_t *after, double value)
{
    if (!tg_check_inputs("pad", 1, &a))
        return NULL;
    if (a->ndim > 0 && (!before || !after)) {
        tg_fail(TG_ERR_NULL, "pad: %s is NULL", before ? "after" : "before");
        return NULL;
    }
    int64_t shape[TG_MAX_DIMS];
    for (int i = 0; i < a->ndim; i++) {
        if (before[i] < 0 || after[i] < 0) {
            tg_fail(TG_ERR_ARG, "pad: negative padding (%lld, %lld) on axis %d",
                    (long long)before[i], (long long)after[i], i);
            return NULL;
        }
        if (before[i] > INT64_MAX - a->shape[i] ||
            after[i] > INT64_MAX - a->shape[i] - before[i]) {
            tg_fail(TG_ERR_ARG, "pad: padding (%lld, %lld) on axis %d is too large",
                    (long long)before[i], (long long)after[i], i);
            return NULL;
        }
        shape[i] = a->shape[i] + before[i] + after[i];
    }
    tg_tensor *n = tg_node_new(a->tape, TG_OP_PAD, a->dtype, a->ndim, shape, 1, &a);
    for (int i = 0; n && i < a->ndim; i++) {
        n->attr[i] = before[i];
        n->attr[TG_MAX_DIMS + i] = after[i];
    }
    if (n)
        n->fattr = value;
    return emit(n);
}

/* ---- matmul ------------------------------------------------------------------------------------- */
tg_tensor *tg_matmul(tg_tensor *a, tg_tensor *b)
{
    tg_tensor *in[2] = {a, b};
    if (!tg_check_inputs("matmul", 2, in) || !same_dtype("matmul", 2, in))
        return NULL;
    char sa[128], sb[128];
    if (a->ndim < 2 || b->ndim < 2) {
        tg_fail(TG_ERR_SHAPE, "matmul: both inputs need 2 or more dimensions, got %s and %s",
                SHAPE(sa, a), SHAPE(sb, b));
        return NULL;
    }
    int64_t m = a->shape[a->ndim - 2], k = a->shape[a->ndim - 1];
    int64_t k2 = b->shape[b->ndim - 2], n = b->shape[b->ndim - 1];
    int ndim;
    int64_t shape[TG_MAX_DIMS];
    if (k != k2 ||
        !tg_broadcast_shapes(a->ndim - 2, a->shape, b->ndim - 2, b->shape, &ndim, shape)) {
        tg_fail(TG_ERR_SHAPE, "matmul: shapes %s and %s do not fit (%s)", SHAPE(sa, a),
                SHAPE(sb, b), k != k2 ? "inner dimensions differ" : "batch axes do not broadcast");
        return NULL;
    }
    shape[ndim] = m;
    shape[ndim + 1] = n;
    return emit(tg_node_new(a->tape, TG_OP_MATMUL, a->dtype, ndim + 2, shape, 2, in));
}

/* ---- sliding windows ---------------------------------------------------------------------------- */
static bool window_args(const char *op, int64_t kh, int64_t kw, int64_t sh, int64_t sw)
{
    if (kh < 1 || kw < 1 || sh < 1 || sw < 1) {
        tg_fail(TG_ERR_ARG, "%s: kernel %lldx%lld and stride %lldx%lld must be positive", op,
                (long long)kh, (long long)kw, (long long)sh, (long long)sw);
        return false;
    }
    return true;
}

tg_tensor *tg_im2col(tg_tensor *x, int64_t kh, int64_t kw, int64_t sh, int64_t sw)
{
    if (!tg_check_inputs("im2col", 1, &x) || !window_args("im2col", kh, kw, sh, sw))
        return NULL;
    char sa[128];
    if (x->ndim != 4 || x->shape[2] < kh || x->shape[3] < kw) {
        tg_fail(TG_ERR_SHAPE, "im2col: needs [N, C, H, W] with H >= %lld and W >= %lld, got %s",
                (long long)kh, (long long)kw, SHAPE(sa, x));
        return NULL;
    }
    int64_t shape[6] = {x->shape[0], x->shape[1], kh, kw, (x->shape[2] - kh) / sh + 1,
                        (x->shape[3] - kw) / sw + 1};
    tg_tensor *n = tg_node_new(x->tape, TG_OP_IM2COL, x->dtype, 6, shape, 1, &x);
    if (n) {
        n->attr[0] = kh, n->attr[1] = kw, n->attr[2] = sh, n->attr[3] = sw;
    }
    return emit(n);
}

tg_tensor *tg_col2im(tg_tensor *cols, int64_t h, int64_t w, int64_t sh, int64_t sw)
{
    if (!tg_check_inputs("col2im", 1, &cols))
        return NULL;
    char sa[128];
    if (cols->ndim != 6) {
        tg_fail(TG_ERR_SHAPE, "col2im: needs [N, C, KH, KW, OH, OW], got %s", SHAPE(sa, cols));
        return NULL;
    }
    int64_t kh = cols->shape[2], kw = cols->shape[3];
    if (!window_args("col2im", kh, kw, sh, sw))
        return NULL;
    if (h < kh || w < kw || (h - kh) / sh + 1 != cols->shape[4] ||
        (w - kw) / sw + 1 != cols->shape[5]) {
        tg_fail(TG_ERR_SHAPE, "col2im: %s does not come from a %lldx%lld image with stride "
                "%lldx%lld", SHAPE(sa, cols), (long long)h, (long long)w, (long long)sh,
                (long long)sw);
        return NULL;
    }
    int64_t shape[4] = {cols->shape[0], cols->shape[1], h, w};
    tg_tensor *n = tg_node_new(cols->tape, TG_OP_COL2IM, cols->dtype, 4, shape, 1, &cols);
    if (n) {
        n->attr[0] = kh, n->attr[1] = kw, n->attr[2] = sh, n->attr[3] = sw;
    }
    return emit(n);
}
