/* The block with oneDNN 2.6's C API (see onednn_block.h). */
#include "onednn_block.h"

#ifndef HAVE_DNNL

struct onednn_block { int unused; };
onednn_block *onednn_block_new(int n, int c, int oc, int h, int w, bool need_dx, float eps,
                               const float *x, const float *weight, const float *gamma,
                               const float *beta, const float *dy, char *err, size_t err_size)
{
    (void)n, (void)c, (void)oc, (void)h, (void)w, (void)need_dx, (void)eps, (void)x;
    (void)weight, (void)gamma, (void)beta, (void)dy;
    if (err_size)
        err[0] = '\0';
    return NULL;
}
int onednn_block_forward(onednn_block *b) { (void)b; return -1; }
int onednn_block_forward_backward(onednn_block *b) { (void)b; return -1; }
int onednn_block_conv(onednn_block *b, int which) { (void)b, (void)which; return -1; }
int onednn_block_results(onednn_block *b, float *y, float *dx, float *dweight, float *dgamma,
                         float *dbeta)
{
    (void)b, (void)y, (void)dx, (void)dweight, (void)dgamma, (void)dbeta;
    return -1;
}
const char *onednn_block_impls(const onednn_block *b) { (void)b; return ""; }
void onednn_block_free(onednn_block *b) { (void)b; }
bool onednn_available(void) { return false; }

#else

#include <dnnl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

enum { CONV_FWD, BN_FWD, BN_BWD, CONV_BWD_W, CONV_BWD_D, N_PRIMS };

struct onednn_block {
    int n, c, oc, h, w;
    bool need_dx;
    dnnl_engine_t engine;
    dnnl_stream_t stream;
    dnnl_primitive_desc_t pd[N_PRIMS];
    dnnl_primitive_t prim[N_PRIMS];
    /* Memory in oneDNN's layouts. */
    dnnl_memory_t src, weights, conv_dst, bn_dst, mean, variance, scale, shift, workspace;
    dnnl_memory_t diff_bn_dst, diff_conv_dst, diff_scale, diff_shift, diff_weights, diff_src;
    /* What the backward convolutions read, in the layouts they chose: the forward's memory
     * when the layouts agree, else a copy made by a reorder that runs (and is timed) before
     * them at every step, since weights and gradients change at every training step. */
    dnnl_memory_t bwd_w_src, bwd_w_diff_dst, bwd_d_weights, bwd_d_diff_dst;
    struct { dnnl_primitive_t prim; dnnl_memory_t from, to; } reorders[4];
    int n_reorders, before_bwd_d; /* reorders[0 .. before_bwd_d) come before backward weights */
    char impls[320];
};

#define TRY(call, what)                                                                  \
    do {                                                                                 \
        dnnl_status_t st_ = (call);                                                      \
        if (st_ != dnnl_success) {                                                       \
            snprintf(err, err_size, "oneDNN: %s failed (status %d)", what, (int)st_);    \
            goto fail;                                                                   \
        }                                                                                \
    } while (0)

/* dnnl_dims_t is a whole DNNL_MAX_NDIMS array: the API reads it as one, so pass full arrays. */
static dnnl_memory_desc_t plain_md(int ndims, const dnnl_dims_t dims, dnnl_format_tag_t tag)
{
    dnnl_memory_desc_t md;
    dnnl_memory_desc_init_by_tag(&md, ndims, dims, dnnl_f32, tag);
    return md;
}

static dnnl_status_t new_memory(dnnl_memory_t *m, const dnnl_memory_desc_t *md,
                                dnnl_engine_t engine)
{
    return dnnl_memory_create(m, md, engine, DNNL_MEMORY_ALLOCATE);
}

/* Copies between a plain user buffer and memory in any layout, through a reorder. */
static dnnl_status_t reorder(onednn_block *b, dnnl_memory_t from, dnnl_memory_t to)
{
    const dnnl_memory_desc_t *fmd, *tmd;
    dnnl_memory_get_memory_desc(from, &fmd);
    dnnl_memory_get_memory_desc(to, &tmd);
    dnnl_primitive_desc_t pd;
    dnnl_primitive_t p;
    dnnl_status_t st = dnnl_reorder_primitive_desc_create(&pd, fmd, b->engine, tmd, b->engine,
                                                          NULL);
    if (st != dnnl_success)
        return st;
    st = dnnl_primitive_create(&p, pd);
    dnnl_primitive_desc_destroy(pd);
    if (st != dnnl_success)
        return st;
    dnnl_exec_arg_t args[2] = {{DNNL_ARG_FROM, from}, {DNNL_ARG_TO, to}};
    st = dnnl_primitive_execute(p, b->stream, 2, args);
    if (st == dnnl_success)
        st = dnnl_stream_wait(b->stream);
    dnnl_primitive_destroy(p);
    return st;
}

static dnnl_status_t from_user(onednn_block *b, const dnnl_memory_desc_t *user_md,
                               const float *data, dnnl_memory_t to)
{
    dnnl_memory_t user;
    dnnl_status_t st = dnnl_memory_create(&user, user_md, b->engine, (void *)data);
    if (st != dnnl_success)
        return st;
    st = reorder(b, user, to);
    dnnl_memory_destroy(user);
    return st;
}

static dnnl_status_t to_user(onednn_block *b, dnnl_memory_t from, const dnnl_memory_desc_t *user_md,
                             float *data)
{
    dnnl_memory_t user;
    dnnl_status_t st = dnnl_memory_create(&user, user_md, b->engine, data);
    if (st != dnnl_success)
        return st;
    st = reorder(b, from, user);
    dnnl_memory_destroy(user);
    return st;
}

static const char *impl_name(dnnl_primitive_desc_t pd)
{
    const char *s = NULL;
    if (!pd || dnnl_primitive_desc_query(pd, dnnl_query_impl_info_str, 0, &s) != dnnl_success)
        return "-";
    return s;
}

/* Points *use at `have` when its layout is `want`, else at new memory of layout `want` filled
 * from `have` by a reorder appended to b->reorders. */
static dnnl_status_t adapt(onednn_block *b, dnnl_memory_t have, const dnnl_memory_desc_t *want,
                           dnnl_memory_t *use)
{
    const dnnl_memory_desc_t *have_md;
    dnnl_memory_get_memory_desc(have, &have_md);
    if (dnnl_memory_desc_equal(have_md, want)) {
        *use = have;
        return dnnl_success;
    }
    int i = b->n_reorders;
    dnnl_primitive_desc_t pd;
    dnnl_status_t st = new_memory(&b->reorders[i].to, want, b->engine);
    if (st == dnnl_success)
        st = dnnl_reorder_primitive_desc_create(&pd, have_md, b->engine, want, b->engine, NULL);
    if (st == dnnl_success) {
        st = dnnl_primitive_create(&b->reorders[i].prim, pd);
        dnnl_primitive_desc_destroy(pd);
    }
    b->reorders[i].from = have;
    b->n_reorders++;
    *use = b->reorders[i].to;
    return st;
}

onednn_block *onednn_block_new(int n, int c, int oc, int h, int w, bool need_dx, float eps,
                               const float *x, const float *weight, const float *gamma,
                               const float *beta, const float *dy, char *err, size_t err_size)
{
    onednn_block *b = calloc(1, sizeof *b);
    if (!b) {
        snprintf(err, err_size, "oneDNN: out of memory");
        return NULL;
    }
    *b = (onednn_block){.n = n, .c = c, .oc = oc, .h = h, .w = w, .need_dx = need_dx};
    dnnl_dims_t x_dims = {n, c, h, w}, w_dims = {oc, c, 3, 3}, y_dims = {n, oc, h, w};
    dnnl_dims_t ch_dims = {oc}, strides = {1, 1}, pad = {1, 1};
    dnnl_memory_desc_t x_user = plain_md(4, x_dims, dnnl_nchw);
    dnnl_memory_desc_t w_user = plain_md(4, w_dims, dnnl_oihw);
    dnnl_memory_desc_t y_user = plain_md(4, y_dims, dnnl_nchw);
    dnnl_memory_desc_t ch_md = plain_md(1, ch_dims, dnnl_x);
    dnnl_memory_desc_t x_any = plain_md(4, x_dims, dnnl_format_tag_any);
    dnnl_memory_desc_t w_any = plain_md(4, w_dims, dnnl_format_tag_any);
    dnnl_memory_desc_t y_any = plain_md(4, y_dims, dnnl_format_tag_any);

    TRY(dnnl_engine_create(&b->engine, dnnl_cpu, 0), "engine");
    TRY(dnnl_stream_create(&b->stream, b->engine, dnnl_stream_default_flags), "stream");

    /* Convolution forward: oneDNN picks every layout. */
    dnnl_convolution_desc_t conv;
    TRY(dnnl_convolution_forward_desc_init(&conv, dnnl_forward_training, dnnl_convolution_direct,
                                           &x_any, &w_any, NULL, &y_any, strides, pad, pad),
        "convolution forward descriptor");
    TRY(dnnl_primitive_desc_create(&b->pd[CONV_FWD], &conv, NULL, b->engine, NULL),
        "convolution forward");
    dnnl_memory_desc_t src_md = *dnnl_primitive_desc_query_md(b->pd[CONV_FWD], dnnl_query_src_md, 0);
    dnnl_memory_desc_t wei_md =
        *dnnl_primitive_desc_query_md(b->pd[CONV_FWD], dnnl_query_weights_md, 0);
    dnnl_memory_desc_t dst_md = *dnnl_primitive_desc_query_md(b->pd[CONV_FWD], dnnl_query_dst_md, 0);

    /* Batch norm on the convolution's output layout, scale and shift, ReLU fused. */
    unsigned flags = dnnl_use_scale | dnnl_use_shift | dnnl_fuse_norm_relu;
    dnnl_batch_normalization_desc_t bn;
    TRY(dnnl_batch_normalization_forward_desc_init(&bn, dnnl_forward_training, &dst_md, eps, flags),
        "batch norm forward descriptor");
    TRY(dnnl_primitive_desc_create(&b->pd[BN_FWD], &bn, NULL, b->engine, NULL),
        "batch norm forward");
    dnnl_batch_normalization_desc_t bnb;
    TRY(dnnl_batch_normalization_backward_desc_init(&bnb, dnnl_backward, &dst_md, &dst_md, eps,
                                                    flags),
        "batch norm backward descriptor");
    TRY(dnnl_primitive_desc_create(&b->pd[BN_BWD], &bnb, NULL, b->engine, b->pd[BN_FWD]),
        "batch norm backward");

    /* Convolution backward: oneDNN picks the layouts again (forcing the forward's sends
     * backward data to its reference implementation); where they differ from the forward's,
     * timed reorders convert (see adapt). */
    dnnl_convolution_desc_t convw;
    TRY(dnnl_convolution_backward_weights_desc_init(&convw, dnnl_convolution_direct, &x_any,
                                                    &w_any, NULL, &y_any, strides, pad, pad),
        "convolution backward weights descriptor");
    TRY(dnnl_primitive_desc_create(&b->pd[CONV_BWD_W], &convw, NULL, b->engine, b->pd[CONV_FWD]),
        "convolution backward weights");
    if (need_dx) {
        dnnl_convolution_desc_t convd;
        TRY(dnnl_convolution_backward_data_desc_init(&convd, dnnl_convolution_direct, &x_any,
                                                     &w_any, &y_any, strides, pad, pad),
            "convolution backward data descriptor");
        TRY(dnnl_primitive_desc_create(&b->pd[CONV_BWD_D], &convd, NULL, b->engine,
                                       b->pd[CONV_FWD]),
            "convolution backward data");
    }
    for (int i = 0; i < N_PRIMS; i++)
        if (b->pd[i])
            TRY(dnnl_primitive_create(&b->prim[i], b->pd[i]), "primitive");

    /* Memory. */
    TRY(new_memory(&b->src, &src_md, b->engine), "memory");
    TRY(new_memory(&b->weights, &wei_md, b->engine), "memory");
    TRY(new_memory(&b->conv_dst, &dst_md, b->engine), "memory");
    TRY(new_memory(&b->bn_dst, &dst_md, b->engine), "memory");
    TRY(new_memory(&b->diff_bn_dst, &dst_md, b->engine), "memory");
    TRY(new_memory(&b->diff_conv_dst, &dst_md, b->engine), "memory");
    TRY(new_memory(&b->mean, dnnl_primitive_desc_query_md(b->pd[BN_FWD], dnnl_query_dst_md, 1),
                   b->engine), "memory");
    TRY(new_memory(&b->variance,
                   dnnl_primitive_desc_query_md(b->pd[BN_FWD], dnnl_query_dst_md, 2), b->engine),
        "memory");
    TRY(new_memory(&b->workspace,
                   dnnl_primitive_desc_query_md(b->pd[BN_FWD], dnnl_query_workspace_md, 0),
                   b->engine), "memory");
    TRY(new_memory(&b->scale, &ch_md, b->engine), "memory");
    TRY(new_memory(&b->shift, &ch_md, b->engine), "memory");
    TRY(new_memory(&b->diff_scale, &ch_md, b->engine), "memory");
    TRY(new_memory(&b->diff_shift, &ch_md, b->engine), "memory");
    TRY(new_memory(&b->diff_weights,
                   dnnl_primitive_desc_query_md(b->pd[CONV_BWD_W], dnnl_query_diff_weights_md, 0),
                   b->engine), "memory");
    if (need_dx)
        TRY(new_memory(&b->diff_src,
                       dnnl_primitive_desc_query_md(b->pd[CONV_BWD_D], dnnl_query_diff_src_md, 0),
                       b->engine), "memory");

    TRY(adapt(b, b->src, dnnl_primitive_desc_query_md(b->pd[CONV_BWD_W], dnnl_query_src_md, 0),
              &b->bwd_w_src), "reorder for backward weights");
    TRY(adapt(b, b->diff_conv_dst,
              dnnl_primitive_desc_query_md(b->pd[CONV_BWD_W], dnnl_query_diff_dst_md, 0),
              &b->bwd_w_diff_dst), "reorder for backward weights");
    b->before_bwd_d = b->n_reorders;
    if (need_dx) {
        TRY(adapt(b, b->weights,
                  dnnl_primitive_desc_query_md(b->pd[CONV_BWD_D], dnnl_query_weights_md, 0),
                  &b->bwd_d_weights), "reorder for backward data");
        TRY(adapt(b, b->diff_conv_dst,
                  dnnl_primitive_desc_query_md(b->pd[CONV_BWD_D], dnnl_query_diff_dst_md, 0),
                  &b->bwd_d_diff_dst), "reorder for backward data");
    }

    /* Inputs into oneDNN's layouts, once. */
    TRY(from_user(b, &x_user, x, b->src), "reordering x");
    TRY(from_user(b, &w_user, weight, b->weights), "reordering the weights");
    TRY(from_user(b, &y_user, dy, b->diff_bn_dst), "reordering dy");
    TRY(from_user(b, &ch_md, gamma, b->scale), "copying gamma");
    TRY(from_user(b, &ch_md, beta, b->shift), "copying beta");
    /* The convolution-alone backward runs read a gradient: give it dy's values. */
    TRY(reorder(b, b->diff_bn_dst, b->diff_conv_dst), "copying dy");

    /* The reorders' outputs must hold data before a convolution-alone run reads them. */
    for (int i = 0; i < b->n_reorders; i++)
        TRY(reorder(b, b->reorders[i].from, b->reorders[i].to), "reorder");
    snprintf(b->impls, sizeof b->impls, "conv fwd %s, bwd-w %s, bwd-d %s; bnorm %s / %s; "
             "src %s, dst %s; %d reorder(s) per backward step", impl_name(b->pd[CONV_FWD]),
             impl_name(b->pd[CONV_BWD_W]), impl_name(b->pd[CONV_BWD_D]),
             impl_name(b->pd[BN_FWD]), impl_name(b->pd[BN_BWD]),
             src_md.format_desc.blocking.inner_nblks ? "blocked" : "plain",
             dst_md.format_desc.blocking.inner_nblks ? "blocked" : "plain", b->n_reorders);
    return b;
fail:
    onednn_block_free(b);
    return NULL;
}

static int run(onednn_block *b, int which)
{
    dnnl_exec_arg_t args[12];
    int k = 0;
#define ARG(a, m) (args[k++] = (dnnl_exec_arg_t){(a), (m)})
    switch (which) {
    case CONV_FWD:
        ARG(DNNL_ARG_SRC, b->src), ARG(DNNL_ARG_WEIGHTS, b->weights);
        ARG(DNNL_ARG_DST, b->conv_dst);
        break;
    case BN_FWD:
        ARG(DNNL_ARG_SRC, b->conv_dst), ARG(DNNL_ARG_DST, b->bn_dst);
        ARG(DNNL_ARG_MEAN, b->mean), ARG(DNNL_ARG_VARIANCE, b->variance);
        ARG(DNNL_ARG_SCALE, b->scale), ARG(DNNL_ARG_SHIFT, b->shift);
        ARG(DNNL_ARG_WORKSPACE, b->workspace);
        break;
    case BN_BWD:
        ARG(DNNL_ARG_SRC, b->conv_dst), ARG(DNNL_ARG_DIFF_DST, b->diff_bn_dst);
        ARG(DNNL_ARG_MEAN, b->mean), ARG(DNNL_ARG_VARIANCE, b->variance);
        ARG(DNNL_ARG_SCALE, b->scale), ARG(DNNL_ARG_SHIFT, b->shift);
        ARG(DNNL_ARG_WORKSPACE, b->workspace);
        ARG(DNNL_ARG_DIFF_SRC, b->diff_conv_dst);
        ARG(DNNL_ARG_DIFF_SCALE, b->diff_scale), ARG(DNNL_ARG_DIFF_SHIFT, b->diff_shift);
        break;
    case CONV_BWD_W:
        ARG(DNNL_ARG_SRC, b->bwd_w_src), ARG(DNNL_ARG_DIFF_DST, b->bwd_w_diff_dst);
        ARG(DNNL_ARG_DIFF_WEIGHTS, b->diff_weights);
        break;
    case CONV_BWD_D:
        ARG(DNNL_ARG_DIFF_DST, b->bwd_d_diff_dst), ARG(DNNL_ARG_WEIGHTS, b->bwd_d_weights);
        ARG(DNNL_ARG_DIFF_SRC, b->diff_src);
        break;
    default: return -1;
    }
#undef ARG
    if (!b->prim[which] || dnnl_primitive_execute(b->prim[which], b->stream, k, args) != dnnl_success)
        return -1;
    return 0;
}

static int run_reorders(onednn_block *b, int from, int to)
{
    for (int i = from; i < to; i++) {
        dnnl_exec_arg_t args[2] = {{DNNL_ARG_FROM, b->reorders[i].from},
                                   {DNNL_ARG_TO, b->reorders[i].to}};
        if (dnnl_primitive_execute(b->reorders[i].prim, b->stream, 2, args) != dnnl_success)
            return -1;
    }
    return 0;
}

static int wait(onednn_block *b) { return dnnl_stream_wait(b->stream) == dnnl_success ? 0 : -1; }

int onednn_block_forward(onednn_block *b)
{
    if (!b || run(b, CONV_FWD) || run(b, BN_FWD))
        return -1;
    return wait(b);
}

int onednn_block_forward_backward(onednn_block *b)
{
    if (!b || run(b, CONV_FWD) || run(b, BN_FWD) || run(b, BN_BWD) ||
        run_reorders(b, 0, b->before_bwd_d) || run(b, CONV_BWD_W) ||
        (b->need_dx && (run_reorders(b, b->before_bwd_d, b->n_reorders) || run(b, CONV_BWD_D))))
        return -1;
    return wait(b);
}

int onednn_block_conv(onednn_block *b, int which)
{
    static const int prims[3] = {CONV_FWD, CONV_BWD_D, CONV_BWD_W};
    if (!b || which < 0 || which > 2)
        return -1;
    if ((which == 1 && run_reorders(b, b->before_bwd_d, b->n_reorders)) ||
        (which == 2 && run_reorders(b, 0, b->before_bwd_d)) || run(b, prims[which]))
        return -1;
    return wait(b);
}

int onednn_block_results(onednn_block *b, float *y, float *dx, float *dweight, float *dgamma,
                         float *dbeta)
{
    if (!b)
        return -1;
    dnnl_dims_t x_dims = {b->n, b->c, b->h, b->w}, w_dims = {b->oc, b->c, 3, 3};
    dnnl_dims_t y_dims = {b->n, b->oc, b->h, b->w}, ch_dims = {b->oc};
    dnnl_memory_desc_t x_user = plain_md(4, x_dims, dnnl_nchw);
    dnnl_memory_desc_t w_user = plain_md(4, w_dims, dnnl_oihw);
    dnnl_memory_desc_t y_user = plain_md(4, y_dims, dnnl_nchw);
    dnnl_memory_desc_t ch_md = plain_md(1, ch_dims, dnnl_x);
    if (to_user(b, b->bn_dst, &y_user, y) || to_user(b, b->diff_weights, &w_user, dweight) ||
        to_user(b, b->diff_scale, &ch_md, dgamma) || to_user(b, b->diff_shift, &ch_md, dbeta))
        return -1;
    if (b->need_dx && dx && to_user(b, b->diff_src, &x_user, dx))
        return -1;
    return 0;
}

const char *onednn_block_impls(const onednn_block *b) { return b ? b->impls : ""; }

void onednn_block_free(onednn_block *b)
{
    if (!b)
        return;
    for (int i = 0; i < N_PRIMS; i++) {
        if (b->prim[i])
            dnnl_primitive_destroy(b->prim[i]);
        if (b->pd[i])
            dnnl_primitive_desc_destroy(b->pd[i]);
    }
    dnnl_memory_t *mems[] = {&b->src, &b->weights, &b->conv_dst, &b->bn_dst, &b->mean,
                             &b->variance, &b->scale, &b->shift, &b->workspace, &b->diff_bn_dst,
                             &b->diff_conv_dst, &b->diff_scale, &b->diff_shift, &b->diff_weights,
                             &b->diff_src};
    for (size_t i = 0; i < sizeof mems / sizeof *mems; i++)
        if (*mems[i])
            dnnl_memory_destroy(*mems[i]);
    for (int i = 0; i < b->n_reorders; i++) {
        if (b->reorders[i].prim)
            dnnl_primitive_destroy(b->reorders[i].prim);
        if (b->reorders[i].to)
            dnnl_memory_destroy(b->reorders[i].to);
    }
    if (b->stream)
        dnnl_stream_destroy(b->stream);
    if (b->engine)
        dnnl_engine_destroy(b->engine);
    free(b);
}

bool onednn_available(void) { return true; }

#endif
