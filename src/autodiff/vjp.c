/* One gradient rule per differentiable primitive, written with the public builders only, so
 * the backward pass is itself on the tape and can be differentiated again. No rule loops over
 * numbers. Rules may return a gradient in the output's (broadcast) shape; the engine sums it
 * back to each input's shape. A builder failure surfaces as a NULL, which the engine turns
 * into an error. */
#include "vjp.h"

#define IN(i) (n->in[i])
#define SELF ((tg_tensor *)n) /* the node's own output, reused where the rule needs it */

static tg_tensor *zero_like(tg_tensor *g) { return tg_scalar(tg_tape_of(g), g->dtype, 0.0); }

TG_VJP(neg)
{
    TG_UNUSED(need);
    TG_UNUSED(n);
    grads[0] = tg_neg(g);
    return 0;
}

TG_VJP(exp) /* d exp(a) = exp(a) da */
{
    TG_UNUSED(need);
    grads[0] = tg_mul(g, SELF);
    return 0;
}

TG_VJP(log)
{
    TG_UNUSED(need);
    grads[0] = tg_div(g, IN(0));
    return 0;
}

TG_VJP(sqrt) /* d sqrt(a) = da / (2 sqrt(a)) */
{
    TG_UNUSED(need);
    grads[0] = tg_div(g, tg_mul_scalar(SELF, 2.0));
    return 0;
}

TG_VJP(recip) /* d (1/a) = -(1/a)^2 da */
{
    TG_UNUSED(need);
    grads[0] = tg_neg(tg_mul(g, tg_mul(SELF, SELF)));
    return 0;
}

TG_VJP(add)
{
    TG_UNUSED(n);
    grads[0] = need[0] ? g : NULL;
    grads[1] = need[1] ? g : NULL;
    return 0;
}

TG_VJP(sub)
{
    TG_UNUSED(n);
    grads[0] = need[0] ? g : NULL;
    grads[1] = need[1] ? tg_neg(g) : NULL;
    return 0;
}

TG_VJP(mul)
{
    grads[0] = need[0] ? tg_mul(g, IN(1)) : NULL;
    grads[1] = need[1] ? tg_mul(g, IN(0)) : NULL;
    return 0;
}

TG_VJP(div) /* a/b: da / b and -(a/b) db / b */
{
    grads[0] = need[0] ? tg_div(g, IN(1)) : NULL;
    grads[1] = need[1] ? tg_neg(tg_div(tg_mul(g, SELF), IN(1))) : NULL;
    return 0;
}

TG_VJP(maximum) /* ties go to a, matching the forward's choice of a when a >= b */
{
    tg_tensor *b_wins = tg_lt(IN(0), IN(1));
    tg_tensor *zero = zero_like(g);
    grads[0] = need[0] ? tg_where(b_wins, zero, g) : NULL;
    grads[1] = need[1] ? tg_where(b_wins, g, zero) : NULL;
    return 0;
}

TG_VJP(where) /* no gradient to the condition */
{
    tg_tensor *zero = zero_like(g);
    grads[1] = need[1] ? tg_where(IN(0), g, zero) : NULL;
    grads[2] = need[2] ? tg_where(IN(0), zero, g) : NULL;
    return 0;
}

TG_VJP(sum)
{
    TG_UNUSED(need);
    grads[0] = tg_expand(g, IN(0)->ndim, IN(0)->shape);
    return 0;
}

TG_VJP(max) /* the elements equal to the max share its gradient equally */
{
    TG_UNUSED(need);
    tg_tensor *is_max = tg_eq(IN(0), SELF);
    tg_tensor *count = tg_reduce_mask(TG_OP_SUM, is_max, (uint32_t)n->attr[0]);
    grads[0] = tg_mul(is_max, tg_div(g, count));
    return 0;
}

TG_VJP(reshape)
{
    TG_UNUSED(need);
    grads[0] = tg_reshape(g, IN(0)->ndim, IN(0)->shape);
    return 0;
}

TG_VJP(permute)
{
    TG_UNUSED(need);
    int inverse[TG_MAX_DIMS];
    for (int i = 0; i < n->ndim; i++)
        inverse[n->attr[i]] = i;
    grads[0] = tg_permute(g, inverse);
    return 0;
}

TG_VJP(expand)
{
    TG_UNUSED(need);
    grads[0] = tg_sum_to_shape(g, IN(0)->ndim, IN(0)->shape);
    return 0;
}

TG_VJP(slice) /* slice and pad are a transpose pair */
{
    TG_UNUSED(need);
    int64_t after[TG_MAX_DIMS];
    for (int i = 0; i < n->ndim; i++)
        after[i] = IN(0)->shape[i] - n->attr[i] - n->shape[i];
    grads[0] = tg_pad(g, n->attr, after, 0.0);
    return 0;
}

TG_VJP(pad)
{
    TG_UNUSED(need);
    int64_t stop[TG_MAX_DIMS];
    for (int i = 0; i < n->ndim; i++)
        stop[i] = n->attr[i] + IN(0)->shape[i];
    grads[0] = tg_slice(g, n->attr, stop);
    return 0;
}

TG_VJP(matmul) /* C = A B: dA = dC B^T, dB = A^T dC (batch axes summed by the engine) */
{
    grads[0] = need[0] ? tg_matmul(g, tg_transpose(IN(1), -1, -2)) : NULL;
    grads[1] = need[1] ? tg_matmul(tg_transpose(IN(0), -1, -2), g) : NULL;
    return 0;
}

TG_VJP(im2col) /* im2col and col2im are a transpose pair */
{
    TG_UNUSED(need);
    grads[0] = tg_col2im(g, IN(0)->shape[2], IN(0)->shape[3], n->attr[2], n->attr[3]);
    return 0;
}

TG_VJP(col2im)
{
    TG_UNUSED(need);
    grads[0] = tg_im2col(g, n->attr[0], n->attr[1], n->attr[2], n->attr[3]);
    return 0;
}

TG_VJP(cast)
{
    TG_UNUSED(need);
    grads[0] = tg_cast(g, IN(0)->dtype);
    return 0;
}

/* y = sum over ranks of x, and the loss is the sum of every rank's loss: each rank's x reaches
 * every rank's y, so dL/dx = sum over ranks of dL/dy, the same all-reduce (its own adjoint). */
TG_VJP(allreduce_sum)
{
    TG_UNUSED(need);
    TG_UNUSED(n);
    grads[0] = tg_allreduce_sum(g);
    return 0;
}
