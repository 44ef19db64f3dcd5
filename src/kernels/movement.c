/* Movement kernels: permute, expand, slice and pad. Each is a strided copy; they differ only
 * in how the source strides are laid over the destination. */
#include "strided.h"

#include <string.h>

typedef struct {
    size_t elem;
    char *out;
    const char *in;
} copy_ctx;

static void copy_row(const tg_strided *p, const int64_t *off, int64_t len, void *c)
{
    const copy_ctx *ctx = c;
    int64_t sy = p->stride[0][p->ndim - 1], sx = p->stride[1][p->ndim - 1];
    if (ctx->elem == sizeof(double)) {
        double *y = (double *)ctx->out + off[0];
        const double *x = (const double *)ctx->in + off[1];
        if (sy == 1 && sx == 1)
            memcpy(y, x, (size_t)len * sizeof *y);
        else
            for (int64_t i = 0; i < len; i++)
                y[i * sy] = x[i * sx];
    } else {
        float *y = (float *)ctx->out + off[0];
        const float *x = (const float *)ctx->in + off[1];
        if (sy == 1 && sx == 1)
            memcpy(y, x, (size_t)len * sizeof *y);
        else
            for (int64_t i = 0; i < len; i++)
                y[i * sy] = x[i * sx];
    }
}

/* Copies a shape-sized block: destination strides dst, source strides src. */
static void strided_copy(size_t elem, int ndim, const int64_t *shape, void *out,
                         const int64_t *dst, const void *in, const int64_t *src)
{
    tg_strided p = {.ndim = ndim, .nops = 2};
    if (ndim == 0) {
        memcpy(out, in, elem);
        return;
    }
    memcpy(p.shape, shape, (size_t)ndim * sizeof *shape);
    memcpy(p.stride[0], dst, (size_t)ndim * sizeof *dst);
    memcpy(p.stride[1], src, (size_t)ndim * sizeof *src);
    tg_strided_collapse(&p);
    copy_ctx ctx = {elem, out, in};
    tg_strided_rows(&p, copy_row, &ctx);
}

static size_t elem_size(tg_dtype dt) { return dt == TG_F64 ? sizeof(double) : sizeof(float); }

void tg_kernel_permute(const struct tg_node *n, void *out, const void *const *in)
{
    int64_t dst[TG_MAX_DIMS], own[TG_MAX_DIMS], src[TG_MAX_DIMS];
    tg_contiguous_strides(n->ndim, n->shape, dst);
    tg_contiguous_strides(n->in[0]->ndim, n->in[0]->shape, own);
    for (int i = 0; i < n->ndim; i++)
        src[i] = own[n->attr[i]];
    strided_copy(elem_size(n->dtype), n->ndim, n->shape, out, dst, in[0], src);
}

void tg_kernel_expand(const struct tg_node *n, void *out, const void *const *in)
{
    int64_t dst[TG_MAX_DIMS], src[TG_MAX_DIMS];
    tg_contiguous_strides(n->ndim, n->shape, dst);
    tg_broadcast_strides(n->in[0]->ndim, n->in[0]->shape, n->ndim, n->shape, src);
    strided_copy(elem_size(n->dtype), n->ndim, n->shape, out, dst, in[0], src);
}

void tg_kernel_slice(const struct tg_node *n, void *out, const void *const *in)
{
    int64_t dst[TG_MAX_DIMS], src[TG_MAX_DIMS];
    size_t elem = elem_size(n->dtype);
    tg_contiguous_strides(n->ndim, n->shape, dst);
    tg_contiguous_strides(n->ndim, n->in[0]->shape, src);
    int64_t start = 0;
    for (int i = 0; i < n->ndim; i++)
        start += n->attr[i] * src[i];
    if (n->numel)
        strided_copy(elem, n->ndim, n->shape, out, dst, (const char *)in[0] + start * elem, src);
}

void tg_kernel_pad(const struct tg_node *n, void *out, const void *const *in)
{
    int64_t dst[TG_MAX_DIMS], src[TG_MAX_DIMS];
    size_t elem = elem_size(n->dtype);
    const struct tg_node *a = n->in[0];
    for (int64_t i = 0; i < n->numel; i++) {
        if (n->dtype == TG_F64)
            ((double *)out)[i] = n->fattr;
        else
            ((float *)out)[i] = (float)n->fattr;
    }
    tg_contiguous_strides(n->ndim, n->shape, dst);
    tg_contiguous_strides(a->ndim, a->shape, src);
    int64_t start = 0;
    for (int i = 0; i < n->ndim; i++)
        start += n->attr[i] * dst[i];
    if (a->numel)
        strided_copy(elem, a->ndim, a->shape, (char *)out + start * elem, dst, in[0], src);
}
