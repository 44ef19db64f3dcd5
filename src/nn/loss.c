/* Cross-entropy over integer class labels, and builders for label tensors. */
#include "internal.h"
#include "tapegrad_nn.h"

#include <math.h>

#define SHAPE_STR(buf, t) tg_shape_str(buf, sizeof buf, (t)->ndim, (t)->shape)

/* -mean_n sum_c onehot[n, c] * log_softmax(logits)[n, c], with onehot = eq(labels [N, 1],
 * arange(C) [1, C]): selecting the label's column by a mask keeps it all in primitives. */
tg_tensor *tg_cross_entropy(tg_tensor *logits, tg_tensor *labels)
{
    tg_tensor *in[2] = {logits, labels};
    if (!tg_check_inputs("cross_entropy", 2, in))
        return NULL;
    char sl[128], sy[128];
    if (logits->ndim != 2 || labels->ndim != 1 || labels->shape[0] != logits->shape[0] ||
        logits->shape[0] == 0 || logits->shape[1] == 0) {
        tg_fail(TG_ERR_SHAPE, "cross_entropy: needs logits [N, C] and labels [N] with N, C >= 1, "
                "got logits %s and labels %s", SHAPE_STR(sl, logits), SHAPE_STR(sy, labels));
        return NULL;
    }
    if (labels->dtype != logits->dtype) {
        tg_fail(TG_ERR_DTYPE, "cross_entropy: labels are %s but logits are %s (labels hold class "
                "indices as numbers of the logits' dtype)", tg_dtype_name(labels->dtype),
                tg_dtype_name(logits->dtype));
        return NULL;
    }
    int64_t n = logits->shape[0], c = logits->shape[1];
    /* A label that is not a class would give a zero row of onehot and a silently wrong loss. */
    for (int64_t i = 0; labels->data && i < n; i++) { /* traced labels are checked by no one */
        double y = tg_get(labels, i);
        if (!(y >= 0 && y < (double)c && y == floor(y))) {
            tg_fail(TG_ERR_ARG, "cross_entropy: label %lld is %g; labels must be integers in "
                    "[0, %lld)", (long long)i, y, (long long)c);
            return NULL;
        }
    }
    tg_tensor *classes = tg_reshape(tg_arange(logits->tape, logits->dtype, c), 2,
                                    (const int64_t[]){1, c});
    tg_tensor *onehot = tg_eq(tg_reshape(labels, 2, (const int64_t[]){n, 1}), classes);
    tg_tensor *picked = tg_sum(tg_mul(onehot, tg_log_softmax(logits, 1)), 0, NULL, false);
    return tg_mul_scalar(picked, -1.0 / (double)n);
}

static tg_tensor *labels_leaf(const char *who, tg_tape *tape, tg_dtype dt, int64_t n,
                              const void *labels)
{
    if (!tape || (n > 0 && !labels)) {
        tg_fail(TG_ERR_NULL, "%s: %s is NULL", who, !tape ? "the tape" : "labels");
        return NULL;
    }
    if (n < 0) {
        tg_fail(TG_ERR_ARG, "%s: n is negative (%lld)", who, (long long)n);
        return NULL;
    }
    return tg_zeros(tape, dt, 1, &n);
}

static void store(tg_tensor *t, int64_t i, double v)
{
    if (t->dtype == TG_F64)
        ((double *)t->data)[i] = v;
    else
        ((float *)t->data)[i] = (float)v;
}

tg_tensor *tg_labels_from_int(tg_tape *tape, tg_dtype dt, int64_t n, const int *labels)
{
    /* Checked before the leaf is made, so a refused call leaves nothing on the tape. */
    for (int64_t i = 0; labels && i < n; i++) {
        if (labels[i] < 0 || (dt == TG_F32 && labels[i] > (1 << 24))) {
            tg_fail(TG_ERR_ARG, "tg_labels_from_int: label %lld is %d; labels must be >= 0%s",
                    (long long)i, labels[i], dt == TG_F32 ? " and <= 2^24 (exact in f32)" : "");
            return NULL;
        }
    }
    tg_tensor *t = labels_leaf("tg_labels_from_int", tape, dt, n, labels);
    for (int64_t i = 0; t && i < n; i++)
        store(t, i, labels[i]);
    return t;
}

tg_tensor *tg_labels_from_u8(tg_tape *tape, tg_dtype dt, int64_t n, const uint8_t *labels)
{
    tg_tensor *t = labels_leaf("tg_labels_from_u8", tape, dt, n, labels);
    for (int64_t i = 0; t && i < n; i++)
        store(t, i, labels[i]);
    return t;
}
