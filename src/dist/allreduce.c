/* The all-reduce primitive's builder, and the gradient all-reduce of data-parallel training
 * composed from it.
 *
 * The builder communicates at once in eager mode and records a node while tracing; the plan
 * runner calls the same communicator (compile/plan.c). There is no table kernel (ops.def):
 * the communicator is the tape's, and a collective can fail. */
#include "internal.h"

#include <stdlib.h>

tg_tensor *tg_allreduce_sum(tg_tensor *x)
{
    if (!tg_check_inputs("allreduce_sum", 1, &x))
        return NULL;
    tg_tape *tape = x->tape;
    struct tg_node *n = tg_node_new(tape, TG_OP_ALLREDUCE, x->dtype, x->ndim, x->shape, 1, &x);
    if (!n || !n->data) /* traced: the plan communicates */
        return n;
    if (!x->data) {
        tg_fail(TG_ERR_TAPE, "allreduce_sum: the input has no value (traced) but the tape is "
                "not tracing");
        return NULL;
    }
    if (tg_comm_allreduce_sum(tg_tape_comm(tape), x->data, n->data, x->numel, x->dtype) != TG_OK)
        return NULL;
    return tg_node_check_finite(n) == TG_OK ? n : NULL;
}

/* Concatenation of 1-D tensors from primitives: each part padded with zeros to the total
 * length at its offset, and the padded parts added. Pairs are joined in a balanced tree, so
 * each value is copied about log2(n) times rather than n times. */
static tg_tensor *concat_flat(int n, tg_tensor *const *parts)
{
    if (n == 1)
        return parts[0];
    int half = n / 2;
    tg_tensor *a = concat_flat(half, parts), *b = concat_flat(n - half, parts + half);
    if (!a || !b)
        return NULL;
    int64_t la = tg_numel(a), lb = tg_numel(b);
    return tg_add(tg_pad(a, (int64_t[]){0}, (int64_t[]){lb}, 0.0),
                  tg_pad(b, (int64_t[]){la}, (int64_t[]){0}, 0.0));
}

int tg_allreduce_grads(int n, tg_tensor *const *grads, double scale, tg_tensor **out)
{
    if (n < 0 || (n > 0 && (!grads || !out)))
        return tg_fail(n < 0 ? TG_ERR_ARG : TG_ERR_NULL, "allreduce_grads: %s",
                       n < 0 ? "negative count" : "grads or out is NULL");
    if (n == 0)
        return TG_OK;
    if (!tg_check_inputs("allreduce_grads", n, grads))
        return tg_last_error_code();
    for (int i = 1; i < n; i++)
        if (grads[i]->dtype != grads[0]->dtype)
            return tg_fail(TG_ERR_DTYPE, "allreduce_grads: gradient %d is %s but gradient 0 is "
                           "%s", i, tg_dtype_name(grads[i]->dtype),
                           tg_dtype_name(grads[0]->dtype));
    tg_tensor **flat = calloc((size_t)n, sizeof *flat);
    if (!flat)
        return tg_fail(TG_ERR_NOMEM, "allreduce_grads: out of memory");
    for (int i = 0; i < n; i++)
        flat[i] = tg_reshape(grads[i], 1, (int64_t[]){tg_numel(grads[i])});
    tg_tensor *all = tg_allreduce_sum(concat_flat(n, flat));
    free(flat);
    if (all && scale != 1.0)
        all = tg_mul_scalar(all, scale);
    if (!all)
        return tg_last_error_code();
    int64_t at = 0;
    for (int i = 0; i < n; i++) {
        int64_t len = tg_numel(grads[i]);
        tg_tensor *part = tg_reshape(tg_slice(all, (int64_t[]){at}, (int64_t[]){at + len}),
                                     grads[i]->ndim, grads[i]->shape);
        if (!part)
            return tg_last_error_code();
        out[i] = part;
        at += len;
    }
    return TG_OK;
}
