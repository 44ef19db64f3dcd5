/* The all-reduce primitive's builder, and the gradient all-reduce of data-parallel training
 * composed from it.
 *
 * The builder communicates at once in eager mode and records a node while tracing; the plan
 * runner calls the same communicator (compile/plan.c). There is no table kernel (ops.def):
 * the communicator is the tape's, and a collective can fail. */
#include "internal.h"

#include <stdlib.h>
#include <string.h>

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

/* Concatenation of 1-D tensors from primitives (the tape has no concat, and a node has at most
 * three inputs): the buffer so far and the next part are each padded with zeros to their joint
 * length and added. The parts go in by increasing size, so the largest (a fully connected
 * layer's weights: 95% of the reference model's) is copied once, not once per level of a tree;
 * the cost is about twice the buffer. offset[i] receives where part i lands. */
static tg_tensor *concat_flat(int n, tg_tensor *const *parts, int64_t *offset)
{
    int *order = malloc((size_t)n * sizeof *order);
    if (!order) {
        tg_fail(TG_ERR_NOMEM, "allreduce_grads: out of memory");
        return NULL;
    }
    for (int i = 0; i < n; i++) { /* insertion sort by size; ties keep their order */
        int j = i;
        for (; j > 0 && tg_numel(parts[order[j - 1]]) > tg_numel(parts[i]); j--)
            order[j] = order[j - 1];
        order[j] = i;
    }
    tg_tensor *all = parts[order[0]];
    offset[order[0]] = 0;
    for (int k = 1; k < n && all; k++) {
        tg_tensor *next = parts[order[k]];
        int64_t have = tg_numel(all), more = tg_numel(next);
        offset[order[k]] = have;
        all = tg_add(tg_pad(all, (int64_t[]){0}, (int64_t[]){more}, 0.0),
                     tg_pad(next, (int64_t[]){have}, (int64_t[]){0}, 0.0));
    }
    free(order);
    return all;
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
    int64_t *offset = calloc((size_t)n, sizeof *offset);
    if (!flat || !offset) {
        free(flat);
        free(offset);
        return tg_fail(TG_ERR_NOMEM, "allreduce_grads: out of memory");
    }
    for (int i = 0; i < n; i++)
        flat[i] = tg_reshape(grads[i], 1, (int64_t[]){tg_numel(grads[i])});
    tg_tensor *all = tg_allreduce_sum(concat_flat(n, flat, offset));
    free(flat);
    if (all && scale != 1.0)
        all = tg_mul_scalar(all, scale);
    if (!all) {
        free(offset);
        return tg_last_error_code();
    }
    /* Every shape is read before out[] is written: out may be grads itself. */
    tg_tensor **parts = calloc((size_t)n, sizeof *parts);
    for (int i = 0; parts && i < n; i++) {
        int64_t at = offset[i], len = tg_numel(grads[i]);
        parts[i] = tg_reshape(tg_slice(all, (int64_t[]){at}, (int64_t[]){at + len}),
                              grads[i]->ndim, grads[i]->shape);
        if (!parts[i]) {
            free(parts);
            free(offset);
            return tg_last_error_code();
        }
    }
    free(offset);
    if (!parts)
        return tg_fail(TG_ERR_NOMEM, "allreduce_grads: out of memory");
    memcpy(out, parts, (size_t)n * sizeof *out);
    free(parts);
    return TG_OK;
}
