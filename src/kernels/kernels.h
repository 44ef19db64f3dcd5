/* Forward kernels, one per family of primitives; the op table in ops.def names them.
 * A kernel reads the node and the input buffers and writes the output buffer; it never
 * allocates and never fails (the builders validated everything). */
#ifndef TG_KERNELS_H
#define TG_KERNELS_H

#include "../core/internal.h"

void tg_kernel_unary(const struct tg_node *n, void *out, const void *const *in);
void tg_kernel_binary(const struct tg_node *n, void *out, const void *const *in);
void tg_kernel_where(const struct tg_node *n, void *out, const void *const *in);
void tg_kernel_reduce(const struct tg_node *n, void *out, const void *const *in);
void tg_kernel_copy(const struct tg_node *n, void *out, const void *const *in);
void tg_kernel_permute(const struct tg_node *n, void *out, const void *const *in);
void tg_kernel_expand(const struct tg_node *n, void *out, const void *const *in);
void tg_kernel_slice(const struct tg_node *n, void *out, const void *const *in);
void tg_kernel_pad(const struct tg_node *n, void *out, const void *const *in);
void tg_kernel_matmul(const struct tg_node *n, void *out, const void *const *in);
/* Dispatches (JIT-compiles) the libxsmm kernels tg_kernel_matmul will use for n, so a
 * compiled plan's first run compiles nothing. */
void tg_matmul_prepare(const struct tg_node *n);
void tg_kernel_im2col(const struct tg_node *n, void *out, const void *const *in);
void tg_kernel_col2im(const struct tg_node *n, void *out, const void *const *in);
void tg_kernel_cast(const struct tg_node *n, void *out, const void *const *in);

#endif
