/* The gradient rules, one per differentiable primitive; the op table in ops.def names them.
 * See tg_vjp_fn in core/internal.h for the contract. */
#ifndef TG_VJP_H
#define TG_VJP_H

#include "../core/internal.h"

#define TG_VJP(name) \
    int tg_vjp_##name(const struct tg_node *n, tg_tensor *g, const bool *need, tg_tensor **grads)
TG_VJP(neg);
TG_VJP(exp);
TG_VJP(log);
TG_VJP(sqrt);
TG_VJP(recip);
TG_VJP(add);
TG_VJP(sub);
TG_VJP(mul);
TG_VJP(div);
TG_VJP(maximum);
TG_VJP(where);
TG_VJP(sum);
TG_VJP(max);
TG_VJP(reshape);
TG_VJP(permute);
TG_VJP(expand);
TG_VJP(slice);
TG_VJP(pad);
TG_VJP(matmul);
TG_VJP(im2col);
TG_VJP(col2im);
TG_VJP(cast);
TG_VJP(allreduce_sum);

#endif
