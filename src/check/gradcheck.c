/* Gradient verification, in double precision, as a public API:
 *   1. the full Jacobian from central differences against the one from the VJP, row by row
 *      (for small problems);
 *   2. random directions: <u, J^T v> from the VJP against <J u, v> from central differences;
 *   3. second order: h(x, v) = <grad_x <f(x), v>, w> is itself differentiated by the engine
 *      and compared, in a random direction of (x, v), with central differences of h.
 * Every error is |analytic - numeric| / max(1, |numeric|). */
#include "../core/internal.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define MAX_INPUTS 8

typedef struct {
    tg_fn f;
    void *ctx;
    int n;
    tg_tape *tape;
    tg_mark mark;
    int ndim[MAX_INPUTS];
    int64_t shape[MAX_INPUTS][TG_MAX_DIMS];
    int64_t size[MAX_INPUTS];
    double *x[MAX_INPUTS]; /* the point, perturbed in place and restored */
    int out_ndim;
    int64_t out_shape[TG_MAX_DIMS];
    int64_t out_size;
} checker;

/* Builds f on a clean tape at the current point; leaves[i] receive the input leaves. */
static tg_tensor *build(checker *c, tg_tensor **leaves)
{
    tg_tape_rewind(c->tape, c->mark);
    for (int i = 0; i < c->n; i++) {
        leaves[i] = tg_from_data(c->tape, TG_F64, c->ndim[i], c->shape[i], c->x[i]);
        if (!leaves[i])
            return NULL;
    }
    tg_tensor *y = c->f(c->tape, c->n, leaves, c->ctx);
    if (!y) {
        tg_fail(tg_last_error_code() ? tg_last_error_code() : TG_ERR_ARG,
                "gradcheck: the function returned NULL: %s", tg_last_error());
        return NULL;
    }
    if (y->tape != c->tape || y->dtype != TG_F64) {
        tg_fail(TG_ERR_DTYPE, "gradcheck: the function must return an f64 tensor on the tape "
                "it is given");
        return NULL;
    }
    return y;
}

static double dot(const double *a, const double *b, int64_t n)
{
    double s = 0;
    for (int64_t i = 0; i < n; i++)
        s += a[i] * b[i];
    return s;
}

static double rel_err(double analytic, double numeric)
{
    double d = fabs(analytic - numeric) / fmax(1.0, fabs(numeric));
    return isnan(d) ? INFINITY : d;
}

/* <f(x), v> at the current point; NaN with an error set on failure. */
static double project(checker *c, const double *v)
{
    tg_tensor *leaves[MAX_INPUTS];
    tg_tensor *y = build(c, leaves);
    if (!y)
        return NAN;
    return dot(tg_data(y), v, c->out_size);
}

/* J^T v at the current point into jtv[i] (zeros where there is no gradient). */
static int vjp(checker *c, const double *v, double **jtv)
{
    tg_tensor *leaves[MAX_INPUTS], *grads[MAX_INPUTS];
    tg_tensor *y = build(c, leaves);
    if (!y)
        return tg_last_error_code();
    tg_tensor *seed = tg_from_data(c->tape, TG_F64, c->out_ndim, c->out_shape, v);
    if (!seed || tg_grad(y, c->n, leaves, seed, grads) != TG_OK)
        return tg_last_error_code();
    for (int i = 0; i < c->n; i++) {
        if (grads[i])
            memcpy(jtv[i], tg_data(grads[i]), (size_t)c->size[i] * sizeof(double));
        else
            memset(jtv[i], 0, (size_t)c->size[i] * sizeof(double));
    }
    return TG_OK;
}

static void note(tg_gradcheck_result *r, double err, double *worst, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));
static void note(tg_gradcheck_result *r, double err, double *worst, const char *fmt, ...)
{
    if (err > *worst)
        *worst = err;
    if (err >= r->max_err) {
        r->max_err = err;
        va_list args;
        va_start(args, fmt);
        vsnprintf(r->message, sizeof r->message, fmt, args);
        va_end(args);
    }
}

static int check_jacobian(checker *c, double eps, tg_gradcheck_result *r)
{
    int64_t total = 0;
    for (int i = 0; i < c->n; i++)
        total += c->size[i];
    double *numeric = calloc((size_t)(total * c->out_size) + 1, sizeof *numeric);
    double *v = calloc((size_t)c->out_size + 1, sizeof *v);
    double *rows[MAX_INPUTS] = {0};
    int status = numeric && v ? TG_OK : tg_fail(TG_ERR_NOMEM, "gradcheck: out of memory");
    for (int i = 0; i < c->n && status == TG_OK; i++)
        if (!(rows[i] = calloc((size_t)c->size[i] + 1, sizeof(double))))
            status = tg_fail(TG_ERR_NOMEM, "gradcheck: out of memory");
    /* Column j of J from central differences: numeric[o * total + j]. */
    int64_t col = 0;
    tg_tensor *leaves[MAX_INPUTS];
    for (int i = 0; i < c->n && status == TG_OK; i++) {
        for (int64_t e = 0; e < c->size[i] && status == TG_OK; e++, col++) {
            double keep = c->x[i][e];
            c->x[i][e] = keep + eps;
            tg_tensor *yp = build(c, leaves);
            double *plus = yp ? malloc((size_t)c->out_size * sizeof *plus + 1) : NULL;
            if (plus)
                memcpy(plus, tg_data(yp), (size_t)c->out_size * sizeof *plus);
            c->x[i][e] = keep - eps;
            tg_tensor *ym = plus ? build(c, leaves) : NULL;
            c->x[i][e] = keep;
            if (!ym) {
                free(plus);
                status = tg_last_error_code() ? tg_last_error_code() : TG_ERR_NOMEM;
                break;
            }
            const double *minus = tg_data(ym);
            for (int64_t o = 0; o < c->out_size; o++)
                numeric[o * total + col] = (plus[o] - minus[o]) / (2 * eps);
            free(plus);
        }
    }
    /* Row o of J from the VJP with a one-hot seed. */
    for (int64_t o = 0; o < c->out_size && status == TG_OK; o++) {
        memset(v, 0, (size_t)c->out_size * sizeof *v);
        v[o] = 1;
        status = vjp(c, v, rows);
        col = 0;
        for (int i = 0; i < c->n && status == TG_OK; i++)
            for (int64_t e = 0; e < c->size[i]; e++, col++)
                note(r, rel_err(rows[i][e], numeric[o * total + col]), &r->jacobian_err,
                     "jacobian: output %lld, input %d element %lld: analytic %.10g, numeric %.10g",
                     (long long)o, i, (long long)e, rows[i][e], numeric[o * total + col]);
    }
    for (int i = 0; i < c->n; i++)
        free(rows[i]);
    free(numeric);
    free(v);
    return status;
}

static void random_fill(tg_rng *rng, double *a, int64_t n)
{
    for (int64_t i = 0; i < n; i++)
        a[i] = tg_rng_normal(rng);
}

static int check_direction(checker *c, double eps, tg_rng *rng, tg_gradcheck_result *r, int k)
{
    double *v = malloc((size_t)c->out_size * sizeof *v + 1);
    double *u[MAX_INPUTS] = {0}, *jtv[MAX_INPUTS] = {0};
    int status = v ? TG_OK : tg_fail(TG_ERR_NOMEM, "gradcheck: out of memory");
    for (int i = 0; i < c->n && status == TG_OK; i++) {
        u[i] = malloc((size_t)c->size[i] * sizeof(double) + 1);
        jtv[i] = malloc((size_t)c->size[i] * sizeof(double) + 1);
        if (!u[i] || !jtv[i])
            status = tg_fail(TG_ERR_NOMEM, "gradcheck: out of memory");
    }
    if (status == TG_OK) {
        random_fill(rng, v, c->out_size);
        for (int i = 0; i < c->n; i++)
            random_fill(rng, u[i], c->size[i]);
        status = vjp(c, v, jtv);
    }
    if (status == TG_OK) {
        double analytic = 0;
        for (int i = 0; i < c->n; i++)
            analytic += dot(u[i], jtv[i], c->size[i]);
        double f[2];
        for (int side = 0; side < 2; side++) {
            double step = side ? -eps : eps;
            for (int i = 0; i < c->n; i++)
                for (int64_t e = 0; e < c->size[i]; e++)
                    c->x[i][e] += step * u[i][e];
            f[side] = project(c, v);
            for (int i = 0; i < c->n; i++)
                for (int64_t e = 0; e < c->size[i]; e++)
                    c->x[i][e] -= step * u[i][e];
        }
        if (isnan(f[0]) && tg_last_error_code() != TG_OK)
            status = tg_last_error_code();
        double numeric = (f[0] - f[1]) / (2 * eps);
        note(r, rel_err(analytic, numeric), &r->direction_err,
             "direction %d: <u, J^T v> = %.10g, <J u, v> = %.10g", k, analytic, numeric);
    }
    for (int i = 0; i < c->n; i++) {
        free(u[i]);
        free(jtv[i]);
    }
    free(v);
    return status;
}

/* h(x, v) = <grad_x <f(x), v>, w>, built on the tape; also returns its leaves. */
static tg_tensor *second_order_h(checker *c, const double *v, double **w, tg_tensor **leaves,
                                 tg_tensor **seed)
{
    tg_tensor *grads[MAX_INPUTS];
    tg_tensor *y = build(c, leaves);
    if (!y)
        return NULL;
    *seed = tg_from_data(c->tape, TG_F64, c->out_ndim, c->out_shape, v);
    if (!*seed || tg_grad(y, c->n, leaves, *seed, grads) != TG_OK)
        return NULL;
    tg_tensor *h = tg_scalar(c->tape, TG_F64, 0.0);
    for (int i = 0; i < c->n && h; i++) {
        if (!grads[i])
            continue;
        tg_tensor *wi = tg_from_data(c->tape, TG_F64, c->ndim[i], c->shape[i], w[i]);
        h = tg_add(h, tg_sum(tg_mul(grads[i], wi), 0, NULL, false));
    }
    return h;
}

static int check_second_order(checker *c, double eps, tg_rng *rng, tg_gradcheck_result *r)
{
    int status = TG_OK;
    double *v = malloc((size_t)c->out_size * sizeof *v + 1);
    double *s = malloc((size_t)c->out_size * sizeof *s + 1);
    double *w[MAX_INPUTS] = {0}, *u[MAX_INPUTS] = {0};
    if (!v || !s)
        status = tg_fail(TG_ERR_NOMEM, "gradcheck: out of memory");
    for (int i = 0; i < c->n && status == TG_OK; i++) {
        w[i] = malloc((size_t)c->size[i] * sizeof(double) + 1);
        u[i] = malloc((size_t)c->size[i] * sizeof(double) + 1);
        if (!w[i] || !u[i])
            status = tg_fail(TG_ERR_NOMEM, "gradcheck: out of memory");
    }
    if (status == TG_OK) {
        random_fill(rng, v, c->out_size);
        random_fill(rng, s, c->out_size);
        for (int i = 0; i < c->n; i++) {
            random_fill(rng, w[i], c->size[i]);
            random_fill(rng, u[i], c->size[i]);
        }
        /* Analytic: the gradient of h with respect to the inputs and the seed. */
        tg_tensor *leaves[MAX_INPUTS + 1], *grads[MAX_INPUTS + 1], *seed;
        tg_tensor *h = second_order_h(c, v, w, leaves, &seed);
        leaves[c->n] = seed;
        if (!h || tg_grad(h, c->n + 1, leaves, NULL, grads) != TG_OK) {
            status = tg_last_error_code();
        } else {
            double analytic = 0;
            for (int i = 0; i < c->n; i++)
                if (grads[i])
                    analytic += dot(u[i], tg_data(grads[i]), c->size[i]);
            if (grads[c->n])
                analytic += dot(s, tg_data(grads[c->n]), c->out_size);
            /* Numeric: central differences of h along (u, s). */
            double f[2];
            for (int side = 0; side < 2 && status == TG_OK; side++) {
                double step = side ? -eps : eps;
                for (int i = 0; i < c->n; i++)
                    for (int64_t e = 0; e < c->size[i]; e++)
                        c->x[i][e] += step * u[i][e];
                for (int64_t o = 0; o < c->out_size; o++)
                    v[o] += step * s[o];
                tg_tensor *hs = second_order_h(c, v, w, leaves, &seed);
                f[side] = hs ? tg_item(hs) : NAN;
                if (!hs)
                    status = tg_last_error_code();
                for (int i = 0; i < c->n; i++)
                    for (int64_t e = 0; e < c->size[i]; e++)
                        c->x[i][e] -= step * u[i][e];
                for (int64_t o = 0; o < c->out_size; o++)
                    v[o] -= step * s[o];
            }
            if (status == TG_OK) {
                double numeric = (f[0] - f[1]) / (2 * eps);
                note(r, rel_err(analytic, numeric), &r->second_err,
                     "second order: analytic %.10g, numeric %.10g", analytic, numeric);
            }
        }
    }
    for (int i = 0; i < c->n; i++) {
        free(w[i]);
        free(u[i]);
    }
    free(v);
    free(s);
    return status;
}

int tg_gradcheck(tg_fn f, void *ctx, int n, tg_tensor *const *inputs,
                 const tg_gradcheck_opts *opts, tg_gradcheck_result *result)
{
    if (!f || !result || (n > 0 && !inputs))
        return tg_fail(TG_ERR_NULL, "gradcheck: %s is NULL",
                       !f ? "the function" : !result ? "result" : "inputs");
    if (n < 1 || n > MAX_INPUTS)
        return tg_fail(TG_ERR_ARG, "gradcheck: %d inputs (1 to %d allowed)", n, MAX_INPUTS);
    for (int i = 0; i < n; i++) {
        if (!inputs[i])
            return tg_fail(TG_ERR_NULL, "gradcheck: input %d is NULL", i);
        if (inputs[i]->dtype != TG_F64)
            return tg_fail(TG_ERR_DTYPE, "gradcheck: input %d is %s; checks run in f64", i,
                           tg_dtype_name(inputs[i]->dtype));
    }
    tg_gradcheck_opts o = opts ? *opts : (tg_gradcheck_opts){0};
    double eps = o.eps > 0 ? o.eps : 1e-6;
    double tol = o.tol > 0 ? o.tol : 1e-6;
    int64_t full_limit = o.full_limit > 0 ? o.full_limit : 4096;
    int directions = o.directions > 0 ? o.directions : 3;
    memset(result, 0, sizeof *result);
    result->jacobian_err = -1;
    result->second_err = -1;

    checker c = {.f = f, .ctx = ctx, .n = n};
    int status = TG_OK;
    c.tape = tg_tape_new();
    if (!c.tape)
        return tg_last_error_code();
    c.mark = tg_tape_mark(c.tape);
    int64_t total = 0;
    for (int i = 0; i < n && status == TG_OK; i++) {
        c.ndim[i] = inputs[i]->ndim;
        memcpy(c.shape[i], inputs[i]->shape, sizeof c.shape[i]);
        c.size[i] = inputs[i]->numel;
        total += c.size[i];
        c.x[i] = malloc((size_t)c.size[i] * sizeof(double) + 1);
        if (!c.x[i])
            status = tg_fail(TG_ERR_NOMEM, "gradcheck: out of memory");
        else
            memcpy(c.x[i], inputs[i]->data, (size_t)c.size[i] * sizeof(double));
    }
    if (status == TG_OK) {
        tg_tensor *leaves[MAX_INPUTS];
        tg_tensor *y = build(&c, leaves);
        if (!y) {
            status = tg_last_error_code();
        } else {
            c.out_ndim = y->ndim;
            memcpy(c.out_shape, y->shape, sizeof c.out_shape);
            c.out_size = y->numel;
        }
    }
    tg_rng rng;
    tg_rng_seed(&rng, o.seed ? o.seed : 0x7a9e6ad);
    if (status == TG_OK && total * c.out_size <= full_limit) {
        result->jacobian_err = 0;
        status = check_jacobian(&c, eps, result);
    }
    for (int k = 0; k < directions && status == TG_OK; k++)
        status = check_direction(&c, eps, &rng, result, k);
    if (status == TG_OK && o.second_order) {
        result->second_err = 0;
        status = check_second_order(&c, eps, &rng, result);
    }
    result->passed = status == TG_OK && result->max_err <= tol;
    for (int i = 0; i < n; i++)
        free(c.x[i]);
    tg_tape_free(c.tape);
    return status;
}
