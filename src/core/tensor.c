/* Tensors as the user sees them: inspection, labels, leaves and random leaves. */
#include "internal.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

static size_t elem_size(tg_dtype dt) { return dt == TG_F64 ? sizeof(double) : sizeof(float); }

tg_tape *tg_tape_of(const tg_tensor *t) { return t ? t->tape : NULL; }
tg_dtype tg_dtype_of(const tg_tensor *t) { return t ? t->dtype : TG_F32; }
int tg_ndim(const tg_tensor *t) { return t ? t->ndim : -1; }
const int64_t *tg_shape(const tg_tensor *t) { return t ? t->shape : NULL; }
int64_t tg_numel(const tg_tensor *t) { return t ? t->numel : -1; }
void *tg_data(tg_tensor *t) { return t ? t->data : NULL; }
const void *tg_data_const(const tg_tensor *t) { return t ? t->data : NULL; }
const char *tg_op_name_of(const tg_tensor *t) { return t ? tg_op_name(t->op) : "(null)"; }
const char *tg_label(const tg_tensor *t) { return t && t->label ? t->label : ""; }

int64_t tg_dim(const tg_tensor *t, int axis)
{
    if (!t) {
        tg_fail(TG_ERR_NULL, "tg_dim: tensor is NULL");
        return -1;
    }
    int a = tg_norm_axis(axis, t->ndim);
    if (a < 0) {
        tg_fail(TG_ERR_AXIS, "tg_dim: axis %d is out of range for %d dimensions", axis, t->ndim);
        return -1;
    }
    return t->shape[a];
}

double tg_get(const tg_tensor *t, int64_t i)
{
    if (!t) {
        tg_fail(TG_ERR_NULL, "tg_get: tensor is NULL");
        return NAN;
    }
    if (!tg_check_has_value("tg_get", t))
        return NAN;
    if (i < 0 || i >= t->numel) {
        tg_fail(TG_ERR_ARG, "tg_get: index %lld is out of range for %lld elements",
                (long long)i, (long long)t->numel);
        return NAN;
    }
    return t->dtype == TG_F64 ? ((const double *)t->data)[i] : ((const float *)t->data)[i];
}

double tg_item(const tg_tensor *t)
{
    if (t && t->numel != 1) {
        tg_fail(TG_ERR_SHAPE, "tg_item: the tensor has %lld elements, not 1",
                (long long)t->numel);
        return NAN;
    }
    return tg_get(t, 0);
}

int tg_set_label(tg_tensor *t, const char *label)
{
    if (!t || !label)
        return tg_fail(TG_ERR_NULL, "tg_set_label: %s is NULL", t ? "label" : "tensor");
    const char *interned = tg_tape_intern(t->tape, label);
    if (!interned)
        return tg_fail(TG_ERR_NOMEM, "tg_set_label: out of memory");
    t->label = interned;
    return TG_OK;
}

/* ---- leaves ----------------------------------------------------------------------------- */
static tg_tensor *new_leaf(const char *who, tg_tape *tape, tg_dtype dt, int ndim,
                           const int64_t *shape)
{
    if (!tape) {
        tg_fail(TG_ERR_NULL, "%s: tape is NULL", who);
        return NULL;
    }
    if (dt != TG_F32 && dt != TG_F64) {
        tg_fail(TG_ERR_DTYPE, "%s: unknown dtype %d", who, (int)dt);
        return NULL;
    }
    if (ndim > 0 && !shape) {
        tg_fail(TG_ERR_NULL, "%s: shape is NULL", who);
        return NULL;
    }
    if (ndim < 0 || ndim > TG_MAX_DIMS) {
        tg_fail(TG_ERR_SHAPE, "%s: %d dimensions (0 to %d allowed)", who, ndim, TG_MAX_DIMS);
        return NULL;
    }
    for (int i = 0; i < ndim; i++) {
        if (shape[i] < 0) {
            tg_fail(TG_ERR_SHAPE, "%s: dimension %d is negative (%lld)", who, i,
                    (long long)shape[i]);
            return NULL;
        }
    }
    return tg_node_new(tape, TG_OP_LEAF, dt, ndim, shape, 0, NULL);
}

static void fill(tg_tensor *t, double value)
{
    if (t->dtype == TG_F64) {
        double *d = t->data;
        for (int64_t i = 0; i < t->numel; i++)
            d[i] = value;
    } else {
        float *d = t->data;
        for (int64_t i = 0; i < t->numel; i++)
            d[i] = (float)value;
    }
}

tg_tensor *tg_full(tg_tape *tape, tg_dtype dt, int ndim, const int64_t *shape, double value)
{
    tg_tensor *t = new_leaf("tg_full", tape, dt, ndim, shape);
    if (t)
        fill(t, value);
    return t;
}

tg_tensor *tg_zeros(tg_tape *tape, tg_dtype dt, int ndim, const int64_t *shape)
{
    tg_tensor *t = new_leaf("tg_zeros", tape, dt, ndim, shape);
    if (t)
        memset(t->data, 0, (size_t)t->numel * elem_size(dt));
    return t;
}

tg_tensor *tg_scalar(tg_tape *tape, tg_dtype dt, double value)
{
    tg_tensor *t = new_leaf("tg_scalar", tape, dt, 0, NULL);
    if (t)
        fill(t, value);
    return t;
}

tg_tensor *tg_from_data(tg_tape *tape, tg_dtype dt, int ndim, const int64_t *shape,
                        const void *data)
{
    if (!data) {
        tg_fail(TG_ERR_NULL, "tg_from_data: data is NULL");
        return NULL;
    }
    tg_tensor *t = new_leaf("tg_from_data", tape, dt, ndim, shape);
    if (t)
        memcpy(t->data, data, (size_t)t->numel * elem_size(dt));
    return t;
}

tg_tensor *tg_arange(tg_tape *tape, tg_dtype dt, int64_t n)
{
    if (n < 0) {
        tg_fail(TG_ERR_ARG, "tg_arange: n is negative (%lld)", (long long)n);
        return NULL;
    }
    tg_tensor *t = new_leaf("tg_arange", tape, dt, 1, &n);
    for (int64_t i = 0; t && i < n; i++) {
        if (dt == TG_F64)
            ((double *)t->data)[i] = (double)i;
        else
            ((float *)t->data)[i] = (float)i;
    }
    return t;
}

/* ---- random numbers ----------------------------------------------------------------------- */
static uint64_t splitmix64(uint64_t *x)
{
    uint64_t z = (*x += 0x9E3779B97F4A7C15ull);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
}

void tg_rng_seed(tg_rng *rng, uint64_t seed)
{
    if (!rng) {
        tg_fail(TG_ERR_NULL, "tg_rng_seed: rng is NULL");
        return;
    }
    for (int i = 0; i < 4; i++)
        rng->s[i] = splitmix64(&seed);
    rng->has_spare = 0;
    rng->spare = 0;
}

static uint64_t rotl(uint64_t x, int k) { return (x << k) | (x >> (64 - k)); }

uint64_t tg_rng_next(tg_rng *rng)
{
    if (!rng) {
        tg_fail(TG_ERR_NULL, "tg_rng_next: rng is NULL");
        return 0;
    }
    uint64_t *s = rng->s;
    uint64_t result = rotl(s[1] * 5, 7) * 9;
    uint64_t t = s[1] << 17;
    s[2] ^= s[0];
    s[3] ^= s[1];
    s[1] ^= s[2];
    s[0] ^= s[3];
    s[2] ^= t;
    s[3] = rotl(s[3], 45);
    return result;
}

double tg_rng_uniform(tg_rng *rng)
{
    if (!rng) {
        tg_fail(TG_ERR_NULL, "tg_rng_uniform: rng is NULL");
        return NAN;
    }
    return (double)(tg_rng_next(rng) >> 11) * 0x1.0p-53;
}

uint64_t tg_rng_below(tg_rng *rng, uint64_t n)
{
    if (n == 0 || !rng) {
        tg_fail(rng ? TG_ERR_ARG : TG_ERR_NULL, "tg_rng_below: %s", rng ? "n is 0" : "rng is NULL");
        return 0;
    }
    /* Rejection keeps every value equally likely. */
    uint64_t limit = UINT64_MAX - UINT64_MAX % n;
    uint64_t x;
    do
        x = tg_rng_next(rng);
    while (x >= limit);
    return x % n;
}

double tg_rng_normal(tg_rng *rng)
{
    if (!rng) {
        tg_fail(TG_ERR_NULL, "tg_rng_normal: rng is NULL");
        return NAN;
    }
    if (rng->has_spare) {
        rng->has_spare = 0;
        return rng->spare;
    }
    double u, v, s;
    do {
        u = 2.0 * tg_rng_uniform(rng) - 1.0;
        v = 2.0 * tg_rng_uniform(rng) - 1.0;
        s = u * u + v * v;
    } while (s >= 1.0 || s == 0.0);
    double f = sqrt(-2.0 * log(s) / s);
    rng->spare = v * f;
    rng->has_spare = 1;
    return u * f;
}

static tg_tensor *random_leaf(const char *who, tg_tape *tape, tg_rng *rng, tg_dtype dt,
                              int ndim, const int64_t *shape, bool normal, double p, double q)
{
    if (!rng) {
        tg_fail(TG_ERR_NULL, "%s: rng is NULL", who);
        return NULL;
    }
    tg_tensor *t = new_leaf(who, tape, dt, ndim, shape);
    for (int64_t i = 0; t && i < t->numel; i++) {
        double x = normal ? p + q * tg_rng_normal(rng) : p + (q - p) * tg_rng_uniform(rng);
        if (dt == TG_F64)
            ((double *)t->data)[i] = x;
        else
            ((float *)t->data)[i] = (float)x;
    }
    return t;
}

tg_tensor *tg_rand_uniform(tg_tape *tape, tg_rng *rng, tg_dtype dt, int ndim,
                           const int64_t *shape, double lo, double hi)
{
    return random_leaf("tg_rand_uniform", tape, rng, dt, ndim, shape, false, lo, hi);
}

tg_tensor *tg_rand_normal(tg_tape *tape, tg_rng *rng, tg_dtype dt, int ndim,
                          const int64_t *shape, double mean, double std)
{
    return random_leaf("tg_rand_normal", tape, rng, dt, ndim, shape, true, mean, std);
}
