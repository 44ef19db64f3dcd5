/* The conv 3x3 -> batch norm (training) -> ReLU block written by hand with oneDNN's primitives:
 * what a library of hand-fused kernels does with the block. Convolution forward, backward
 * data and backward weights with the layouts oneDNN picks itself (format_tag any), and batch
 * normalization forward training and backward with scale and shift and the ReLU fused
 * (dnnl_fuse_norm_relu). Inputs are reordered into oneDNN's layouts once, when the block is
 * made; results are reordered back to NCHW only when asked for (outside any timing).
 *
 * Threads: oneDNN (Debian's build) runs on OpenMP and sizes its work for the threads OpenMP
 * gives when a primitive is made: call omp_set_num_threads before onednn_block_new and keep
 * it while the block runs. Without oneDNN (HAVE_DNNL undefined) every function fails and
 * onednn_available() is false. */
#ifndef BENCH_ONEDNN_BLOCK_H
#define BENCH_ONEDNN_BLOCK_H

#include <stdbool.h>
#include <stddef.h>

typedef struct onednn_block onednn_block;

/* Block shape and data: x [n, c, h, w], weight [oc, c, 3, 3], gamma and beta [oc], dy (the
 * gradient flowing into the ReLU's output) [n, oc, h, w]; all copied. need_dx: compute the
 * input gradient too. NULL on failure, with a message in err. */
onednn_block *onednn_block_new(int n, int c, int oc, int h, int w, bool need_dx, float eps,
                               const float *x, const float *weight, const float *gamma,
                               const float *beta, const float *dy, char *err, size_t err_size);
/* Forward: convolution, then batch norm with batch statistics and the ReLU. */
int onednn_block_forward(onednn_block *b);
/* Forward, then batch norm + ReLU backward, convolution backward weights (and data). */
int onednn_block_forward_backward(onednn_block *b);
/* The convolution alone: 0 forward, 1 backward data, 2 backward weights. */
int onednn_block_conv(onednn_block *b, int which);
/* The last results in plain layouts: y [n, oc, h, w], dx (if need_dx; else may be NULL),
 * dweight [oc, c, 3, 3], dgamma and dbeta [oc]. */
int onednn_block_results(onednn_block *b, float *y, float *dx, float *dweight, float *dgamma,
                         float *dbeta);
/* The implementations oneDNN chose, e.g. "conv jit:avx512_core, bnorm jit:avx512_core". */
const char *onednn_block_impls(const onednn_block *b);
void onednn_block_free(onednn_block *b);
bool onednn_available(void);

#endif
