/* Shapes: element counts, NumPy broadcasting, strides and axis normalization. */
#include "internal.h"

int64_t tg_shape_numel(int ndim, const int64_t *shape)
{
    int64_t n = 1;
    for (int i = 0; i < ndim; i++)
        n *= shape[i];
    return n;
}

bool tg_shape_equal(int na, const int64_t *a, int nb, const int64_t *b)
{
    if (na != nb)
        return false;
    for (int i = 0; i < na; i++)
        if (a[i] != b[i])
            return false;
    return true;
}

bool tg_broadcast_shapes(int na, const int64_t *a, int nb, const int64_t *b, int *nout,
                         int64_t *out)
{
    int n = na > nb ? na : nb;
    int64_t result[TG_MAX_DIMS]; /* out may alias a or b */
    for (int i = 0; i < n; i++) {
        int ia = i - (n - na), ib = i - (n - nb);
        int64_t da = ia >= 0 ? a[ia] : 1, db = ib >= 0 ? b[ib] : 1;
        if (da != db && da != 1 && db != 1)
            return false;
        result[i] = da == 1 ? db : da;
    }
    for (int i = 0; i < n; i++)
        out[i] = result[i];
    *nout = n;
    return true;
}

void tg_contiguous_strides(int ndim, const int64_t *shape, int64_t *strides)
{
    int64_t s = 1;
    for (int i = ndim - 1; i >= 0; i--) {
        strides[i] = s;
        s *= shape[i];
    }
}

void tg_broadcast_strides(int ndim, const int64_t *shape, int out_ndim, const int64_t *out_shape,
                          int64_t *strides)
{
    int64_t own[TG_MAX_DIMS];
    tg_contiguous_strides(ndim, shape, own);
    for (int i = 0; i < out_ndim; i++) {
        int j = i - (out_ndim - ndim);
        strides[i] = (j < 0 || (shape[j] == 1 && out_shape[i] != 1)) ? 0 : own[j];
    }
}

tg_status tg_check_same_type(const char *op, const char *a_name, const struct tg_node *a,
                             const char *b_name, const struct tg_node *b)
{
    bool same_dtype = a->dtype == b->dtype;
    if (same_dtype && tg_shape_equal(a->ndim, a->shape, b->ndim, b->shape))
        return TG_OK;
    char sa[128], sb[128];
    return tg_fail(same_dtype ? TG_ERR_SHAPE : TG_ERR_DTYPE, "%s: %s is %s %s but %s is %s %s",
                   op, a_name, tg_dtype_name(a->dtype), tg_shape_str(sa, sizeof sa, a->ndim, a->shape),
                   b_name, tg_dtype_name(b->dtype), tg_shape_str(sb, sizeof sb, b->ndim, b->shape));
}

int tg_norm_axis(int axis, int ndim)
{
    if (axis < 0)
        axis += ndim;
    return (axis < 0 || axis >= ndim) ? -1 : axis;
}
