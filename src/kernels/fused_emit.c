/* A fused program as C (compile/native.h): plain loops over its iteration space
 * (tg_fused_loops_of), every value a local of the innermost loop's body. The interpreter
 * (fused.c) runs a tile's values one loop each through buffers in L1; here one loop
 * computes them all per point, in registers, and the compiler schedules the loads of the
 * full-size arrays among the arithmetic, which is what the interpreter's steps could not.
 *
 * The loops: the leading axes are decoded from a unit number (units are what threads
 * share), the innermost axis is the vector loop (`w`, in steps of LANES points, each asking
 * for the contiguous loads' points READ_AHEAD elements on: without that the hardware's
 * prefetcher fell behind, 2.4 ms against 0.95 for batch norm's backward sums at 28x28), the
 * axes between are nested loops. Where the innermost axis is short (a pool's windows,
 * [.., i, a, j, b] with b of 2), the axes before it join the innermost loop up to
 * MERGE_BELOW points (784 at 28x28); a load that does not step through them as one (the
 * pooled value, broadcast over its window) is first copied out for the outer position into
 * a buffer the loop reads contiguously. Its indices computed by division in the loop ran
 * 6x slower than the interpreter's tiles; read through a table of offsets (vector gathers)
 * as fast; copied, twice as fast (pool backward at 28x28: 1.7-1.8 against 3.7 ms).
 * A reduction's unit is one box of outputs, folded whole by one thread in a fixed order,
 * or one fixed chunk of the first axis whose partial sums are added in chunk order after,
 * so its results do not depend on the thread count: the planes of a reduction over small
 * windows (emit_window_reduction: a pool's max and its tie counts, the window's points
 * unrolled in the loop's body), one kept axis with reduced axes outside it walked in memory
 * order by chunks of the first axis (emit_reduction_chunked: batch norm's sums, by chunks
 * of images), else the leading kept axes of [kept, reduced, kept] (emit_reduction_by_unit).
 * The folds of the latter two:
 *   - the innermost axis reduced: runs of at most LANE_RUN points summed in LANES lanes of
 *     the value's dtype (vector registers), the lanes added pairwise in double, the runs
 *     added in double;
 *   - kept axes innermost: each point added in double into its output's accumulator.
 * Each operation rounds as the interpreter's (C11: no contraction into fused multiply-adds,
 * the same libm), so elementwise kernels give the same bits; sums differ by the grouping of
 * their additions. */
#include "fused.h"
#include "../compile/native.h"

#include <math.h>
#include <stdio.h>
#include <string.h>

#define LANES 16
#define LANE_RUN 256   /* points per run: 16 a lane before they meet in double */
/* emit_lane_runs' masked remainder is the last run's alone: every run before it is whole vectors */
_Static_assert(LANE_RUN % LANES == 0, "a run is a whole number of vectors");
#define INNER_MIN 16   /* points of the innermost loop, at least: a vector's */
#define MERGE_BELOW 64 /* the innermost loop takes in outer axes while shorter than this */
#define COPY_MAX 4096  /* points of an innermost loop of merged axes, at most */
#define COPY_BYTES (128 * 1024) /* copies on a thread's stack, at most */
#define UNITS_MIN 64   /* units wanted, for threads to share evenly */
#define MAX_ACC 4096   /* a unit's accumulators, on the stack */
#define READ_AHEAD 2048 /* elements: how far ahead loads ask for their points */
#define CHUNKS 16      /* of a reduction's first axis (emit_reduction_chunked) */

typedef struct {
    const tg_fused_program *p;
    tg_fused_loops x;
    int units_axes; /* axes 0 .. units_axes - 1: decoded from the unit */
    int inner;      /* axes inner .. ndim - 1: the innermost loop, w */
    tg_text *t;
    char acc[32]; /* the unit's accumulators: acc[block][output in the unit] */
    /* Loads that do not step through the innermost loop's merged axes as through one (a
     * pooled value over its window): copied, for each position of the outer loops, into
     * a buffer c<l> that the innermost loop then reads as a contiguous one. */
    bool copied[TG_FUSED_MAX_LOADS];
    /* A window reduction (emit_window_reduction) emits each of its n_window points with
     * the reduced axes at point `window`: the loads shifted by shift[l] elements, their
     * copies c<l>_<window>. */
    int n_window, window;
    int64_t shift[TG_FUSED_MAX_LOADS];
    bool windowed[TG_FUSED_MAX_LOADS]; /* varies over the window: a copy per point */
} emitter;

static const char *ctype(tg_dtype dt) { return dt == TG_F64 ? "double" : "float"; }
static const char *suffix(tg_dtype dt) { return dt == TG_F64 ? "f64" : "f32"; }

static tg_dtype value_dtype(const tg_fused_program *p, int v)
{
    return v < p->n_loads ? p->load[v].dtype : p->instr[v - p->n_loads].dtype;
}

static int64_t extent(const emitter *e, int from, int to)
{
    int64_t n = 1;
    for (int k = from; k < to; k++)
        n *= e->x.shape[k];
    return n;
}

/* Whether an operand steps through the innermost loop's axes as through one. */
static bool as_one(const emitter *e, const int64_t *stride)
{
    for (int k = e->inner; k + 1 < e->x.ndim; k++)
        if (stride[k] != stride[k + 1] * e->x.shape[k + 1])
            return false;
    return true;
}

/* Which loads are copied (see emitter); false where the output or the stored points would
 * need it too, the innermost loop is too short or too long, or the copies would take more
 * than COPY_BYTES of the thread's stack. */
static bool plan_copies(emitter *e)
{
    const tg_fused_program *p = e->p;
    int64_t n = extent(e, e->inner, e->x.ndim), bytes = 0;
    if (n < INNER_MIN || n > COPY_MAX || !as_one(e, e->x.out_stride) ||
        (p->stores && !as_one(e, e->x.store_stride)))
        return false;
    for (int l = 0; l < p->n_loads; l++) {
        e->copied[l] = !as_one(e, e->x.stride[l]);
        int copies = e->n_window > 0 && e->windowed[l] ? e->n_window : 1;
        bytes += e->copied[l] ? copies * n * (p->load[l].dtype == TG_F64 ? 8 : 4) : 0;
    }
    return bytes <= COPY_BYTES;
}

static void copy_name(const emitter *e, int l, int window)
{
    if (e->n_window > 0)
        tg_text_printf(e->t, "c%d_%d", l, e->windowed[l] ? window : 0);
    else
        tg_text_printf(e->t, "c%d", l);
}

static void declare_copies(const emitter *e)
{
    for (int l = 0; l < e->p->n_loads; l++) {
        int copies = e->n_window > 0 && e->windowed[l] ? e->n_window : 1;
        for (int r = 0; e->copied[l] && r < copies; r++) {
            tg_text_printf(e->t, "%s ", ctype(e->p->load[l].dtype));
            copy_name(e, l, r);
            tg_text_printf(e->t, "[%lld];\n", (long long)extent(e, e->inner, e->x.ndim));
        }
    }
}

static bool emit_outer_index(const emitter *e, const int64_t *stride);

/* Whether load l reads one element for the whole innermost loop (batch norm's per-channel
 * mean and scale): read once, h<l>, at the outer loops' position. The compiler cannot do
 * that itself, as y might overlap the input: with AVX2 code it broadcast each such value
 * again for every vector. (No output overlaps such a load: an output is made in place only
 * of an input read at its own points, pass_fuse.c.) */
static bool invariant(const emitter *e, int l)
{
    if (e->copied[l] || (e->n_window > 0 && e->windowed[l]))
        return false;
    for (int k = e->inner; k < e->x.ndim; k++)
        if (e->x.stride[l][k] != 0 && e->x.shape[k] > 1)
            return false;
    return true;
}

static void emit_invariants(const emitter *e)
{
    const tg_fused_program *p = e->p;
    for (int l = 0; l < p->n_loads; l++) {
        if (!invariant(e, l))
            continue;
        tg_text_printf(e->t, "const %s h%d = in%d[", ctype(p->load[l].dtype), l, l);
        if (!emit_outer_index(e, e->x.stride[l]))
            tg_text_printf(e->t, "0");
        tg_text_printf(e->t, "];\n");
    }
}

/* The loops over the merged axes inner .. top - 1 (variables j<k>) that fill the copies. */
static void open_copy_loops(const emitter *e, int top)
{
    for (int k = e->inner; k < top; k++)
        tg_text_printf(e->t, "for (int64_t j%d = 0; j%d < %lldLL; j%d++)\n", k, k,
                       (long long)e->x.shape[k], k);
    tg_text_printf(e->t, "{\n");
}

/* A copy's element for a position of those loops, the axes from top on at 0: row-major. */
static void emit_copy_index(const emitter *e, int top)
{
    if (top == e->inner) {
        tg_text_printf(e->t, "0");
        return;
    }
    for (int k = e->inner + 1; k < top; k++)
        tg_text_printf(e->t, "(");
    tg_text_printf(e->t, "j%d", e->inner);
    for (int k = e->inner + 1; k < top; k++)
        tg_text_printf(e->t, " * %lldLL + j%d)", (long long)e->x.shape[k], k);
    tg_text_printf(e->t, " * %lldLL", (long long)extent(e, top, e->x.ndim));
}

/* Load l's element there, at the current window point. */
static void emit_copy_source(const emitter *e, int l, int top)
{
    bool any = emit_outer_index(e, e->x.stride[l]);
    for (int k = e->inner; k < top; k++) {
        if (e->x.stride[l][k] == 0)
            continue;
        tg_text_printf(e->t, "%sj%d * %lldLL", any ? " + " : "", k,
                       (long long)e->x.stride[l][k]);
        any = true;
    }
    tg_text_printf(e->t, "%s + %lldLL", any ? "" : "0", (long long)e->shift[l]);
}

/* Load l's copy (at the current window point), element by element. */
static void emit_copy(const emitter *e, int l)
{
    copy_name(e, l, e->window);
    tg_text_printf(e->t, "[");
    emit_copy_index(e, e->x.ndim);
    tg_text_printf(e->t, "] = in%d[", l);
    emit_copy_source(e, l, e->x.ndim);
    tg_text_printf(e->t, "];\n");
}

/* A pool's broadcast, [.., a, j, b] with b of 2 read at stride 0 and j contiguously, at
 * least 4 long (the prelude's tg_dup2 steps 4 values at a time): the first axis one call
 * fills, a where a is read at stride 0 too (its rows repeated), else j; -1 for another
 * copy. GCC 12 vectorized the loops over [a, j, b] poorly (3.9 times tg_dup2's time at
 * 28x28 with AVX2 code). */
static int dup2_top(const emitter *e, int l)
{
    const tg_fused_loops *x = &e->x;
    int d = x->ndim;
    if (d - e->inner < 2 || x->shape[d - 1] != 2 || x->stride[l][d - 1] != 0 ||
        x->stride[l][d - 2] != 1 || x->shape[d - 2] < 4)
        return -1;
    return d - 3 >= e->inner && x->stride[l][d - 3] == 0 ? d - 3 : d - 2;
}

/* The copies and the invariant loads for the outer loops' position (outside a window
 * reduction: emit_window_copies), a nest of loops each: GCC 12 vectorized the pool's
 * backward duplicating copies one at a time, and not when two shared a nest. */
static void emit_copies(const emitter *e)
{
    int d = e->x.ndim;
    emit_invariants(e);
    for (int l = 0; l < e->p->n_loads; l++) {
        if (!e->copied[l])
            continue;
        int top = dup2_top(e, l);
        if (top < 0) {
            open_copy_loops(e, d);
            emit_copy(e, l);
            tg_text_printf(e->t, "}\n");
            continue;
        }
        open_copy_loops(e, top);
        tg_text_printf(e->t, "tg_dup2_%s(&in%d[", suffix(e->p->load[l].dtype), l);
        emit_copy_source(e, l, top);
        tg_text_printf(e->t, "], &");
        copy_name(e, l, e->window);
        tg_text_printf(e->t, "[");
        emit_copy_index(e, top);
        tg_text_printf(e->t, "], %lldLL, %lld, %lldLL);\n}\n", (long long)e->x.shape[d - 2],
                       (long long)(top == d - 3 ? e->x.shape[d - 3] : 1),
                       (long long)(2 * e->x.shape[d - 2]));
    }
}

/* The outer loops' part of an operand's element: the variables i<k>; true if any. */
static bool emit_outer_index(const emitter *e, const int64_t *stride)
{
    bool any = false;
    for (int k = 0; k < e->inner; k++) {
        if (stride[k] == 0 || e->x.shape[k] == 1)
            continue;
        tg_text_printf(e->t, "%si%d * %lldLL", any ? " + " : "", k, (long long)stride[k]);
        any = true;
    }
    return any;
}

/* An operand's element at the loops' position: the outer axes' variables i<k>, the
 * innermost loop's w (the operand must step through the innermost loop's axes as one). */
static void emit_index(const emitter *e, const int64_t *stride)
{
    const tg_fused_loops *x = &e->x;
    bool any = emit_outer_index(e, stride);
    if (e->inner < x->ndim && stride[x->ndim - 1] != 0) {
        tg_text_printf(e->t, "%sw * %lldLL", any ? " + " : "", (long long)stride[x->ndim - 1]);
        any = true;
    }
    if (!any)
        tg_text_printf(e->t, "0");
}

static void emit_constant(tg_text *t, double v, tg_dtype dt)
{
    if (isnan(v))
        tg_text_printf(t, "(%s)NAN", ctype(dt));
    else if (isinf(v))
        tg_text_printf(t, "(%s)%sINFINITY", ctype(dt), v < 0 ? "-" : "");
    else
        tg_text_printf(t, "(%s)%a", ctype(dt), v);
}

static bool emittable(int op)
{
    switch (op) {
    case TG_OP_LEAF: case TG_OP_NEG: case TG_OP_EXP: case TG_OP_LOG: case TG_OP_SQRT:
    case TG_OP_RECIP: case TG_OP_ADD: case TG_OP_SUB: case TG_OP_MUL: case TG_OP_DIV:
    case TG_OP_MAXIMUM: case TG_OP_LT: case TG_OP_EQ: case TG_OP_WHERE: case TG_OP_CAST:
        return true;
    default:
        return false;
    }
}

/* Every value at one point, v<n> in the program's numbering, with the eager kernels'
 * semantics (maximum takes a on ties and NaN in a; where tests cond != 0 and picks by bits,
 * as the interpreter does, so that no load is made conditional: GCC 12 then makes a ReLU's
 * where one AND with the comparison's mask, where a ternary made it compare twice and blend). */
static void emit_values(const emitter *e)
{
    const tg_fused_program *p = e->p;
    tg_text *t = e->t;
    for (int l = 0; l < p->n_loads; l++) {
        if (invariant(e, l)) {
            tg_text_printf(t, "const %s v%d = h%d;\n", ctype(p->load[l].dtype), l, l);
            continue;
        }
        if (e->copied[l]) {
            tg_text_printf(t, "const %s v%d = ", ctype(p->load[l].dtype), l);
            copy_name(e, l, e->window);
            tg_text_printf(t, "[w];\n");
            continue;
        }
        tg_text_printf(t, "const %s v%d = in%d[", ctype(p->load[l].dtype), l, l);
        emit_index(e, e->x.stride[l]);
        if (e->shift[l] != 0)
            tg_text_printf(t, " + %lldLL", (long long)e->shift[l]);
        tg_text_printf(t, "];\n");
    }
    for (int i = 0; i < p->n_instrs; i++) {
        const tg_fused_instr *in = &p->instr[i];
        const char *T = ctype(in->dtype);
        bool f64 = in->dtype == TG_F64;
        int a = in->arg[0], b = in->arg[1], c = in->arg[2];
        tg_text_printf(t, "const %s v%d = ", T, p->n_loads + i);
        switch (in->op) {
        case TG_OP_LEAF: emit_constant(t, in->value, in->dtype); break;
        case TG_OP_NEG: tg_text_printf(t, "-v%d", a); break;
        case TG_OP_EXP: tg_text_printf(t, "%s(v%d)", f64 ? "exp" : "expf", a); break;
        case TG_OP_LOG: tg_text_printf(t, "%s(v%d)", f64 ? "log" : "logf", a); break;
        case TG_OP_SQRT: tg_text_printf(t, "%s(v%d)", f64 ? "sqrt" : "sqrtf", a); break;
        case TG_OP_RECIP: tg_text_printf(t, "(%s)1 / v%d", T, a); break;
        case TG_OP_ADD: tg_text_printf(t, "v%d + v%d", a, b); break;
        case TG_OP_SUB: tg_text_printf(t, "v%d - v%d", a, b); break;
        case TG_OP_MUL: tg_text_printf(t, "v%d * v%d", a, b); break;
        case TG_OP_DIV: tg_text_printf(t, "v%d / v%d", a, b); break;
        case TG_OP_MAXIMUM:
            tg_text_printf(t, "(v%d >= v%d || v%d != v%d) ? v%d : v%d", a, b, a, a, a, b);
            break;
        case TG_OP_LT: tg_text_printf(t, "(%s)(v%d < v%d)", T, a, b); break;
        case TG_OP_EQ: tg_text_printf(t, "(%s)(v%d == v%d)", T, a, b); break;
        case TG_OP_WHERE:
            tg_text_printf(t, "tg_pick_%s(v%d != 0, v%d, v%d)", suffix(in->dtype), a, b, c);
            break;
        default: /* TG_OP_CAST (emittable() admits nothing else) */
            tg_text_printf(t, "(%s)v%d", T, a);
            break;
        }
        tg_text_printf(t, ";\n");
    }
}

static void emit_head(const emitter *e, const char *name)
{
    const tg_fused_program *p = e->p;
    tg_text *t = e->t;
    tg_text_printf(t, "void %s(const char *const *first, char *out, char *stores, char *part, "
                   "int64_t u0, int64_t u1)\n{\n(void)first; (void)stores; (void)part;\n",
                   name);
    for (int l = 0; l < p->n_loads; l++)
        tg_text_printf(t, "const %s *in%d = (const %s *)first[%d];\n", ctype(p->load[l].dtype),
                       l, ctype(p->load[l].dtype), l);
    tg_text_printf(t, "%s *y = (%s *)out;\n", ctype(value_dtype(p, p->result)),
                   ctype(value_dtype(p, p->result)));
    if (p->stores)
        tg_text_printf(t, "%s *st = (%s *)stores;\n", ctype(value_dtype(p, p->store)),
                       ctype(value_dtype(p, p->store)));
    declare_copies(e);
}

/* The loop over the thread's units, each decoded into the leading axes' variables. */
static void emit_units(const emitter *e)
{
    tg_text *t = e->t;
    tg_text_printf(t, "for (int64_t u = u0; u < u1; u++) {\n");
    /* the unit's axes, the last fastest */
    if (e->units_axes == 0)
        tg_text_printf(t, "(void)u;\n");
    else if (e->units_axes == 1)
        tg_text_printf(t, "const int64_t i0 = u;\n");
    else {
        tg_text_printf(t, "int64_t rest = u;\n");
        for (int k = e->units_axes - 1; k > 0; k--)
            tg_text_printf(t, "const int64_t i%d = rest %% %lldLL; rest /= %lldLL;\n", k,
                           (long long)e->x.shape[k], (long long)e->x.shape[k]);
        tg_text_printf(t, "const int64_t i0 = rest;\n");
    }
}

static void open_loops(const emitter *e, int from, int to)
{
    for (int k = from; k < to; k++)
        tg_text_printf(e->t, "for (int64_t i%d = 0; i%d < %lldLL; i%d++) {\n", k, k,
                       (long long)e->x.shape[k], k);
}

static void close_loops(const emitter *e, int from, int to)
{
    for (int k = from; k < to; k++)
        tg_text_printf(e->t, "}\n");
}

/* The innermost loop's start, over w. */
static void open_inner(const emitter *e)
{
    tg_text_printf(e->t, "_Pragma(\"omp simd\") for (int64_t w = 0; w < %lldLL; w++) {\n",
                   (long long)extent(e, e->inner, e->x.ndim));
}

/* The innermost loop: the last axis, and axes from `from` on before it while it is shorter
 * than MERGE_BELOW points (a pool's window axes [i, a, j, b]: 784 points at 28x28). */
static int choose_inner(const tg_fused_loops *x, int from)
{
    int inner = x->ndim - 1;
    int64_t n = x->shape[inner];
    while (inner > from && n < MERGE_BELOW && n * x->shape[inner - 1] <= COPY_MAX)
        n *= x->shape[--inner];
    return inner;
}

/* Cuts the innermost axis into [n / c, c], c a divisor of n from 4096 down to 256, so that
 * a long flat kernel has units to share; as it was when none divides. */
static void split_innermost(tg_fused_loops *x, int nops)
{
    int d = x->ndim;
    if (d >= TG_FUSED_MAX_DIMS)
        return;
    int64_t n = x->shape[d - 1], c = 4096;
    while (c >= 256 && n % c != 0)
        c--;
    if (c < 256)
        return;
    x->shape[d - 1] = n / c;
    x->shape[d] = c;
    x->out_stride[d] = x->out_stride[d - 1];
    x->out_stride[d - 1] *= c;
    for (int o = 0; o < nops; o++) {
        x->stride[o][d] = x->stride[o][d - 1];
        x->stride[o][d - 1] *= c;
    }
    x->ndim = d + 1;
}

/* Requests for the points READ_AHEAD elements on of every load that steps through the
 * innermost loop as one contiguous run, at w = `at`: one request per LANES points (a line
 * of floats). */
static void emit_read_ahead(const emitter *e, const char *at)
{
    const tg_fused_program *p = e->p;
    const tg_fused_loops *x = &e->x;
    int d = x->ndim;
    for (int l = 0; l < p->n_loads; l++) {
        if (x->stride[l][d - 1] != 1 || !as_one(e, x->stride[l]))
            continue;
        tg_text_printf(e->t, "{ const int64_t w = %s + %d; __builtin_prefetch(&in%d[", at,
                       READ_AHEAD, l);
        emit_index(e, x->stride[l]);
        tg_text_printf(e->t, "], 0, 2); }\n");
    }
}

/* The points after the vectors of LANES, n % LANES of them, as one more vector of LANES
 * whose other lanes do nothing (the compiler masks their loads and stores): a 14x14 plane's
 * last 4 of 196 points took as long as a quarter of the others, point by point. The
 * points are independent, so each is computed as the loop computes it. Opens the loop and
 * the test of the lane; the caller closes both. */
static void emit_tail_loop(const emitter *e, int64_t n, const char *at)
{
    tg_text_printf(e->t, "_Pragma(\"omp simd\") for (int l = 0; l < %d; l++) {\n"
                   "const int64_t w = %s + l;\nif (l < %d) {\n", LANES, at, (int)(n % LANES));
}

/* An elementwise kernel's point: its values and its result stored. */
static void emit_point(const emitter *e)
{
    emit_values(e);
    tg_text_printf(e->t, "y[");
    emit_index(e, e->x.out_stride);
    tg_text_printf(e->t, "] = v%d;\n", e->p->result);
}

static bool emit_elementwise(emitter *e, const char *name, int64_t *units)
{
    tg_fused_loops *x = &e->x;
    int64_t u = 1;
    for (int k = 0; k < x->ndim - 1; k++)
        u *= x->shape[k];
    if (u < UNITS_MIN / 4 && x->shape[x->ndim - 1] >= 16 * 256)
        split_innermost(x, e->p->n_loads);
    int nu = 0;
    u = 1;
    while (nu < x->ndim - 1 && u < UNITS_MIN)
        u *= x->shape[nu++];
    e->units_axes = nu;
    e->inner = choose_inner(x, nu);
    *units = u;
    if (!plan_copies(e))
        return false;
    emit_head(e, name);
    emit_units(e);
    open_loops(e, nu, e->inner);
    emit_copies(e);
    /* vectors of LANES points, each asking for its loads' points ahead, then the rest */
    int64_t n = extent(e, e->inner, x->ndim);
    tg_text_printf(e->t, "int64_t w0 = 0;\nfor (; w0 + %d <= %lldLL; w0 += %d) {\n", LANES,
                   (long long)n, LANES);
    emit_read_ahead(e, "w0");
    tg_text_printf(e->t, "_Pragma(\"omp simd\") for (int l = 0; l < %d; l++) {\n"
                   "const int64_t w = w0 + l;\n", LANES);
    emit_point(e);
    tg_text_printf(e->t, "}\n}\n");
    if (n % LANES > 0) {
        emit_tail_loop(e, n, "w0");
        emit_point(e);
        tg_text_printf(e->t, "}\n}\n");
    }
    close_loops(e, nu, e->inner);
    tg_text_printf(e->t, "}\n}\n");
    return true;
}

/* The values a reduction folds: its result's, then more[]'s. */
static int folded(const tg_fused_program *p, int b) { return b == 0 ? p->result : p->more[b - 1]; }

static void emit_store_point(const emitter *e)
{
    if (!e->p->stores)
        return;
    tg_text_printf(e->t, "st[");
    emit_index(e, e->x.store_stride);
    tg_text_printf(e->t, "] = v%d;\n", e->p->store);
}

/* A reduction's point: its values, its stored point, and each folded value v<b> added by
 * `fold` (a format taking the block and the value's number). */
static void emit_folded_point(const emitter *e, int blocks, const char *fold)
{
    emit_values(e);
    emit_store_point(e);
    for (int b = 0; b < blocks; b++)
        tg_text_printf(e->t, fold, b, folded(e->p, b));
}

/* The innermost axis reduced: runs of lanes (see the header). */
static void emit_lane_runs(const emitter *e, int blocks)
{
    const tg_fused_program *p = e->p;
    tg_text *t = e->t;
    int64_t n = extent(e, e->inner, e->x.ndim);
    tg_text_printf(t, "for (int64_t r0 = 0; r0 < %lldLL; r0 += %d) {\n", (long long)n, LANE_RUN);
    tg_text_printf(t, "const int64_t rn = %lldLL - r0 < %d ? %lldLL - r0 : %d;\n", (long long)n,
                   LANE_RUN, (long long)n, LANE_RUN);
    /* The lanes as vector values (tg_acc_<T>, the generated file's prelude: one vector of
     * 16 with AVX-512, two of 8 otherwise), each step's points written to an array first
     * and added to them at once: GCC 12 kept a float lane<b>[16] in memory with AVX2 code
     * and reloaded it every step, a store-to-load round trip on the loop's one dependency
     * chain. Each lane adds its points in the same order either way. */
    for (int b = 0; b < blocks; b++)
        tg_text_printf(t, "tg_acc_%s lane%d = {0};\n", suffix(value_dtype(p, folded(p, b))), b);
    tg_text_printf(t, "int64_t r = 0;\nfor (; r + %d <= rn; r += %d) {\n", LANES, LANES);
    emit_read_ahead(e, "r0 + r");
    for (int b = 0; b < blocks; b++)
        tg_text_printf(t, "%s step%d[%d];\n", ctype(value_dtype(p, folded(p, b))), b, LANES);
    tg_text_printf(t, "_Pragma(\"omp simd\") for (int l = 0; l < %d; l++) {\n", LANES);
    tg_text_printf(t, "const int64_t w = r0 + r + l;\n");
    emit_folded_point(e, blocks, "step%d[l] = v%d;\n");
    tg_text_printf(t, "}\n");
    for (int b = 0; b < blocks; b++)
        tg_text_printf(t, "lane%d = tg_acc_add_%s(lane%d, step%d);\n", b,
                       suffix(value_dtype(p, folded(p, b))), b, b);
    tg_text_printf(t, "}\n");
    /* The last run's n % LANES points (runs are multiples of LANES before it): one more
     * step into the first lanes, zeros into the others. Added one by one in double, the
     * last 4 points of a 196-point plane took as long as a quarter of the others. */
    if (n % LANES > 0) {
        tg_text_printf(t, "if (r < rn) {\n");
        for (int b = 0; b < blocks; b++)
            tg_text_printf(t, "%s step%d[%d];\n", ctype(value_dtype(p, folded(p, b))), b,
                           LANES);
        emit_tail_loop(e, n, "r0 + r");
        emit_folded_point(e, blocks, "step%d[l] = v%d;\n");
        tg_text_printf(t, "} else {\n");
        for (int b = 0; b < blocks; b++)
            tg_text_printf(t, "step%d[l] = 0;\n", b);
        tg_text_printf(t, "}\n}\n");
        for (int b = 0; b < blocks; b++)
            tg_text_printf(t, "lane%d = tg_acc_add_%s(lane%d, step%d);\n", b,
                           suffix(value_dtype(p, folded(p, b))), b, b);
        tg_text_printf(t, "}\n");
    }
    for (int b = 0; b < blocks; b++)
        tg_text_printf(t, "double sum%d = tg_lanes_%s(lane%d);\n", b,
                       suffix(value_dtype(p, folded(p, b))), b);
    for (int b = 0; b < blocks; b++)
        tg_text_printf(t, "%s[%d][0] += sum%d;\n", e->acc, b, b);
    tg_text_printf(t, "}\n");
}

/* The accumulator of the point's output inside the unit: row-major over the trailing kept
 * axes from `kept` on (the innermost loop's w enumerates the last ones). */
static void emit_acc_index(const emitter *e, int kept)
{
    for (int k = kept; k < e->inner; k++)
        tg_text_printf(e->t, "i%d * %lldLL + ", k, (long long)extent(e, k + 1, e->x.ndim));
    tg_text_printf(e->t, "w");
}

/* The reduced axes' span in e's loops: first and last. */
static void reduced_span(const emitter *e, int *first_red, int *last_red)
{
    *first_red = *last_red = -1;
    for (int k = 0; k < e->x.ndim; k++) {
        if (e->x.out_stride[k] == 0 && e->x.shape[k] > 1) {
            *last_red = k;
            if (*first_red < 0)
                *first_red = k;
        }
    }
}

static int64_t outputs_per_block(const tg_fused_program *p)
{
    int64_t n = 1;
    for (int k = 0; k < p->ndim; k++)
        if (!((p->reduce_mask >> k) & 1))
            n *= p->shape[k];
    return n;
}

/* The folds and the stores of the unit's outputs, inside loops opened up to axis `from`
 * (the unit's variables set, its accumulators zero); closes what it opens. */
static void emit_folds(emitter *e, int from, int last_red)
{
    const tg_fused_program *p = e->p;
    const tg_fused_loops *x = &e->x;
    tg_text *t = e->t;
    int d = x->ndim, blocks = 1 + p->n_more;
    bool lanes = last_red == d - 1;
    open_loops(e, from, e->inner);
    emit_copies(e);
    if (lanes) {
        emit_lane_runs(e, blocks);
    } else {
        open_inner(e);
        emit_values(e);
        emit_store_point(e);
        for (int b = 0; b < blocks; b++) {
            tg_text_printf(t, "%s[%d][", e->acc, b);
            emit_acc_index(e, last_red + 1);
            tg_text_printf(t, "] += (double)v%d;\n", folded(p, b));
        }
        tg_text_printf(t, "}\n");
    }
    close_loops(e, from, e->inner);
}

/* The unit's outputs: its kept axes inside, the reduced ones at 0. */
static void emit_results(emitter *e, int last_red)
{
    const tg_fused_program *p = e->p;
    const tg_fused_loops *x = &e->x;
    tg_text *t = e->t;
    int d = x->ndim, blocks = 1 + p->n_more;
    int64_t block_numel = outputs_per_block(p);
    bool lanes = last_red == d - 1;
    if (lanes) {
        for (int b = 0; b < blocks; b++) {
            /* the innermost loop's axes are reduced: out_stride 0 there, so no w */
            tg_text_printf(t, "y[%lldLL + ", (long long)(b * block_numel));
            emit_index(e, x->out_stride);
            tg_text_printf(t, "] = (%s)%s[%d][0];\n", ctype(value_dtype(p, p->result)), e->acc,
                           b);
        }
    } else {
        open_loops(e, last_red + 1, e->inner);
        tg_text_printf(t, "for (int64_t w = 0; w < %lldLL; w++) {\n",
                       (long long)extent(e, e->inner, d));
        for (int b = 0; b < blocks; b++) {
            tg_text_printf(t, "y[%lldLL + ", (long long)(b * block_numel));
            emit_index(e, x->out_stride);
            tg_text_printf(t, "] = (%s)%s[%d][", ctype(value_dtype(p, p->result)), e->acc, b);
            emit_acc_index(e, last_red + 1);
            tg_text_printf(t, "];\n");
        }
        tg_text_printf(t, "}\n");
        close_loops(e, last_red + 1, e->inner);
    }
}

/* Units as the leading kept axes, each folded whole before the next ([kept, reduced, kept]
 * axes). */
static bool emit_reduction_by_unit(emitter *e, const char *name, int64_t *units)
{
    int first_red, last_red, d = e->x.ndim, blocks = 1 + e->p->n_more;
    reduced_span(e, &first_red, &last_red);
    int64_t kept_inside = extent(e, last_red + 1, d);
    if (first_red < 0 || kept_inside * blocks > MAX_ACC)
        return false;
    e->units_axes = first_red;
    *units = extent(e, 0, first_red);
    e->inner = choose_inner(&e->x, last_red == d - 1 ? first_red : last_red + 1);
    snprintf(e->acc, sizeof e->acc, "acc");
    if (!plan_copies(e))
        return false;
    emit_head(e, name);
    emit_units(e);
    tg_text_printf(e->t, "double acc[%d][%lld];\nmemset(acc, 0, sizeof acc);\n", blocks,
                   (long long)kept_inside);
    emit_folds(e, first_red, last_red);
    emit_results(e, last_red);
    tg_text_printf(e->t, "}\n}\n");
    return true;
}

/* The one kept axis before the last reduced one, with the first axis reduced (batch norm's
 * channels in [N, C, H, W]); -1 where the axes are not of that form. */
static int kept_axis_inside(const emitter *e, int first_red, int last_red)
{
    int unit_axis = -1;
    if (first_red != 0)
        return -1;
    for (int k = 0; k < last_red; k++) {
        if (e->x.out_stride[k] == 0 || e->x.shape[k] == 1)
            continue;
        if (unit_axis >= 0)
            return -1;
        unit_axis = k;
    }
    return unit_axis;
}

/* Units as fixed chunks of the first axis, reduced, with one kept axis inside it: a unit
 * is one chunk (batch norm's: a run of images), walked in memory order (image by image,
 * every channel's sums live: channel by channel would jump an image's size from plane to
 * plane), every output's partial sum over it into part[chunk]; then `name`_combine adds
 * the chunks' partial sums in chunk order. Threads read what the kernels before them
 * wrote, image by image as those split the batch, where units of channels (this form's
 * predecessor) had each thread read every image: with the two vCPUs on separate caches a read of the other's half ran at 0.6 of
 * the speed and a write over it at 0.4 (what forced the 2-thread forward's apply, writing
 * over lines the sums had shared, to 0.67 ms against 0.25 on one thread). The chunks are
 * fixed, so results still do not depend on the thread count. */
static bool emit_reduction_chunked(emitter *e, const char *name, tg_fused_emitted *made)
{
    int first_red, last_red, d = e->x.ndim, blocks = 1 + e->p->n_more;
    reduced_span(e, &first_red, &last_red);
    int unit_axis = kept_axis_inside(e, first_red, last_red);
    int64_t kept_inside = extent(e, last_red + 1, d), n = e->x.shape[0];
    if (unit_axis < 1 || n < 2)
        return false;
    int64_t kept = e->x.shape[unit_axis], chunks = n < CHUNKS ? n : CHUNKS;
    int64_t per_chunk = kept * blocks * kept_inside;
    if (per_chunk > MAX_ACC)
        return false;
    e->units_axes = 0;
    made->units = chunks;
    made->part_bytes = (size_t)(chunks * per_chunk) * sizeof(double);
    e->inner = choose_inner(&e->x, last_red == d - 1 ? unit_axis + 1 : last_red + 1);
    snprintf(e->acc, sizeof e->acc, "acc[i%d]", unit_axis);
    if (!plan_copies(e))
        return false;
    tg_text *t = e->t;
    emit_head(e, name);
    tg_text_printf(t, "double acc[%lld][%d][%lld];\n", (long long)kept, blocks,
                   (long long)kept_inside);
    tg_text_printf(t, "for (int64_t u = u0; u < u1; u++) {\nmemset(acc, 0, sizeof acc);\n"
                   "for (int64_t i0 = u * %lldLL / %lldLL; i0 < (u + 1) * %lldLL / %lldLL; "
                   "i0++) {\n", (long long)n, (long long)chunks, (long long)n,
                   (long long)chunks);
    open_loops(e, 1, unit_axis);
    tg_text_printf(t, "for (int64_t i%d = 0; i%d < %lldLL; i%d++) {\n", unit_axis, unit_axis,
                   (long long)kept, unit_axis);
    emit_folds(e, unit_axis + 1, last_red);
    tg_text_printf(t, "}\n");
    close_loops(e, 1, unit_axis);
    tg_text_printf(t, "}\nmemcpy(part + (size_t)u * sizeof acc, acc, sizeof acc);\n}\n}\n");
    /* the combine: chunk by chunk, in order */
    tg_text_printf(t, "void %s_combine(const char *part, char *out)\n{\n", name);
    tg_text_printf(t, "%s *y = (%s *)out;\n", ctype(value_dtype(e->p, e->p->result)),
                   ctype(value_dtype(e->p, e->p->result)));
    tg_text_printf(t, "double acc[%lld][%d][%lld];\nmemset(acc, 0, sizeof acc);\n"
                   "for (int64_t c = 0; c < %lldLL; c++) {\n"
                   "const double *q = (const double *)part + c * %lldLL;\n"
                   "for (int64_t j = 0; j < %lldLL; j++)\n((double *)acc)[j] += q[j];\n}\n",
                   (long long)kept, blocks, (long long)kept_inside, (long long)chunks,
                   (long long)per_chunk, (long long)per_chunk);
    tg_text_printf(t, "for (int64_t i%d = 0; i%d < %lldLL; i%d++) {\n", unit_axis, unit_axis,
                   (long long)kept, unit_axis);
    emit_results(e, last_red);
    tg_text_printf(t, "}\n}\n");
    return true;
}

/* One window's points folded (a max, with its ties counted, or sums), the values u<b>_<r>
 * made: the max as the eager max keeps NaN (a NaN point wins; its count is 0). */
static void emit_window_fold(const emitter *e, int64_t block_numel)
{
    const tg_fused_program *p = e->p;
    tg_text *t = e->t;
    const char *T = ctype(value_dtype(p, p->result));
    int blocks = 1 + p->n_more;
    if (p->reduce_op == TG_OP_SUM) {
        for (int b = 0; b < blocks; b++) {
            tg_text_printf(t, "{ double s = 0;\n");
            for (int r = 0; r < e->n_window; r++)
                tg_text_printf(t, "s += (double)u%d_%d;\n", b, r);
            tg_text_printf(t, "y[%lldLL + ", (long long)(b * block_numel));
            emit_index(e, e->x.out_stride);
            tg_text_printf(t, "] = (%s)s; }\n", T);
        }
        return;
    }
    /* The NaN flag in T (GCC 12 vectorizes no loop that mixes it as an int with floats), from
     * the points two at a time: one unordered comparison for a pair where a test of each
     * point against itself took three instructions a point with AVX2 code. */
    tg_text_printf(t, "{ %s best = u0_0, nan = (%s)(0", T, T);
    for (int r = 0; r < e->n_window; r += 2)
        tg_text_printf(t, " | __builtin_isunordered(u0_%d, u0_%d)", r,
                       r + 1 < e->n_window ? r + 1 : r);
    tg_text_printf(t, ");\n");
    for (int r = 1; r < e->n_window; r++)
        tg_text_printf(t, "best = u0_%d > best ? u0_%d : best;\n", r, r);
    tg_text_printf(t, "y[");
    emit_index(e, e->x.out_stride);
    tg_text_printf(t, "] = nan != 0 ? (%s)NAN : best;\n", T);
    if (p->count_ties) {
        tg_text_printf(t, "%s count = 0;\n", T);
        for (int r = 0; r < e->n_window; r++)
            tg_text_printf(t, "count += u0_%d == best ? (%s)1 : (%s)0;\n", r, T, T);
        tg_text_printf(t, "y[%lldLL + ", (long long)block_numel);
        emit_index(e, e->x.out_stride);
        tg_text_printf(t, "] = nan != 0 ? (%s)0 : count;\n", T);
    }
    tg_text_printf(t, "}\n");
}

/* Window point r: the loads' shifts for the reduced axes' position (the last fastest). */
static void set_window_point(emitter *e, const tg_fused_loops *full, int block_start, int r)
{
    int64_t rest = r;
    for (int l = 0; l < e->p->n_loads; l++)
        e->shift[l] = 0;
    for (int k = full->ndim - 1; k >= block_start; k--) {
        if (full->out_stride[k] != 0 || full->shape[k] == 1)
            continue;
        int64_t at = rest % full->shape[k];
        rest /= full->shape[k];
        for (int l = 0; l < e->p->n_loads; l++)
            e->shift[l] += at * full->stride[l][k];
    }
    e->window = r;
}

/* A window reduction's copies and invariant loads. A load that varies over the window and
 * steps 2 along the innermost axis, at least 4 long, whose points pair up one element
 * apart (a pool's [.., i, a, j, b] with b of 2): each pair split by one call of the
 * prelude's tg_unzip2 per position of the outer loops. GCC 12 read each point's elements
 * on their own, shuffling out every other one: 46% of max pool's forward kernel with AVX2
 * code. Other loads: their points' copies filled in one nest of loops. */
static void emit_window_copies(emitter *e, const tg_fused_loops *full, int block_start)
{
    const tg_fused_loops *x = &e->x;
    int d = x->ndim, n = e->n_window, partner[16];
    set_window_point(e, full, block_start, 0);
    emit_invariants(e);
    for (int l = 0; l < e->p->n_loads; l++) {
        if (!e->copied[l])
            continue;
        int64_t shift[16];
        bool paired = e->windowed[l] && x->stride[l][d - 1] == 2 && x->shape[d - 1] >= 4;
        for (int r = 0; r < n; r++) {
            set_window_point(e, full, block_start, r);
            shift[r] = e->shift[l];
            partner[r] = -1;
        }
        for (int r = 0; paired && r < n; r++) {
            for (int q = 0; q < n && partner[r] < 0; q++)
                if (shift[q] == shift[r] + 1 && partner[q] < 0 && q != r)
                    partner[r] = q, partner[q] = r;
            paired = partner[r] >= 0;
        }
        open_copy_loops(e, paired ? d - 1 : d);
        for (int r = 0; r < (e->windowed[l] ? n : 1); r++) {
            set_window_point(e, full, block_start, r);
            if (!paired) {
                emit_copy(e, l);
                continue;
            }
            if (shift[partner[r]] < shift[r])
                continue; /* r is the odd point of its pair */
            tg_text_printf(e->t, "tg_unzip2_%s(&in%d[", suffix(e->p->load[l].dtype), l);
            emit_copy_source(e, l, d - 1);
            const int points[2] = {r, partner[r]}; /* the even, the odd */
            for (int k = 0; k < 2; k++) {
                tg_text_printf(e->t, "], &");
                copy_name(e, l, points[k]);
                tg_text_printf(e->t, "[");
                emit_copy_index(e, d - 1);
            }
            tg_text_printf(e->t, "], %lldLL);\n", (long long)x->shape[d - 1]);
        }
        tg_text_printf(e->t, "}\n");
    }
}

/* Every window point's values, into u<b>_<r>. */
static void emit_window_points(emitter *e, const tg_fused_loops *full, int block_start)
{
    const tg_fused_program *p = e->p;
    tg_text *t = e->t;
    int blocks = 1 + p->n_more;
    for (int r = 0; r < e->n_window; r++) {
        set_window_point(e, full, block_start, r);
        tg_text_printf(t, "{\n");
        emit_values(e);
        for (int b = 0; b < blocks; b++)
            tg_text_printf(t, "u%d_%d = v%d;\n", b, r, folded(p, b));
        tg_text_printf(t, "}\n");
    }
}

/* A reduction over small windows of planes (a pool's [.., a, b, i, j] or [.., i, a, j, b]
 * over a and b): one output per point of the plane's kept axes (i, j), which are the
 * vector loop; each window point's values made in the loop's body (the window's points
 * unrolled) and folded there. Loads that do not step through the plane's kept axes as one
 * (the full-size input, stepping 2 along j) are copied for the unit, per window point
 * where they vary over the window (emit_window_copies). */
static bool emit_window_reduction(emitter *e, const char *name, int64_t *units)
{
    const tg_fused_program *p = e->p;
    tg_fused_loops full = e->x;
    int d = full.ndim, first_red, last_red;
    reduced_span(e, &first_red, &last_red);
    int64_t window = 1;
    for (int k = 0; k < d; k++)
        window *= full.out_stride[k] == 0 ? full.shape[k] : 1;
    if (first_red < 0 || window > 16 || p->stores)
        return false;
    /* The plane: the kept axes after the reduced ones, where the reduced axes are one block
     * ([.., a, b, i, j]); else from the kept axis before the first reduced one. Units:
     * the axes before the plane and the window. */
    int block = first_red;
    bool inside = false; /* a kept axis between reduced ones ([.., i, a, j, b]) */
    for (int k = first_red; k < last_red; k++)
        inside |= full.out_stride[k] != 0 && full.shape[k] > 1;
    if (inside || last_red == d - 1)
        block = first_red - 1;
    if (block < 0)
        return false;
    for (int l = 0; l < p->n_loads; l++)
        for (int k = block; k < d; k++)
            e->windowed[l] |= full.out_stride[k] == 0 && full.shape[k] > 1 &&
                              full.stride[l][k] != 0;
    tg_fused_loops kept = {0};
    for (int k = 0; k < d; k++) {
        if (k >= block && full.out_stride[k] == 0 && full.shape[k] > 1)
            continue;
        int j = kept.ndim++;
        kept.shape[j] = full.shape[k];
        kept.out_stride[j] = full.out_stride[k];
        for (int l = 0; l < p->n_loads; l++)
            kept.stride[l][j] = full.stride[l][k];
    }
    e->x = kept;
    e->units_axes = block;
    e->inner = block;
    e->n_window = (int)window;
    *units = extent(e, 0, block);
    if (!plan_copies(e))
        return false;
    int64_t n = extent(e, block, kept.ndim), block_numel = outputs_per_block(p);
    int blocks = 1 + p->n_more;
    emit_head(e, name);
    emit_units(e);
    emit_window_copies(e, &full, block);
    for (int pass = 0; pass < 2; pass++) { /* vectors of LANES points, then the rest */
        if (pass == 0)
            tg_text_printf(e->t, "int64_t w0 = 0;\nfor (; w0 + %d <= %lldLL; w0 += %d) {\n"
                           "_Pragma(\"omp simd\") for (int l = 0; l < %d; l++) {\n"
                           "const int64_t w = w0 + l;\n", LANES, (long long)n, LANES, LANES);
        else /* point by point: a masked vector of a window's points was no faster */
            tg_text_printf(e->t, "for (; w0 < %lldLL; w0++) {\nconst int64_t w = w0;\n",
                           (long long)n);
        for (int b = 0; b < blocks; b++) {
            tg_text_printf(e->t, "%s", ctype(value_dtype(p, folded(p, b))));
            for (int r = 0; r < e->n_window; r++)
                tg_text_printf(e->t, "%s u%d_%d", r ? "," : "", b, r);
            tg_text_printf(e->t, ";\n");
        }
        emit_window_points(e, &full, block);
        emit_window_fold(e, block_numel);
        tg_text_printf(e->t, pass == 0 ? "}\n}\n" : "}\n");
    }
    tg_text_printf(e->t, "}\n}\n");
    return true;
}

bool tg_fused_emit(const tg_fused_program *p, const char *name, tg_text *text,
                   tg_fused_emitted *made)
{
    *made = (tg_fused_emitted){0};
    int64_t *units = &made->units;
    if (p->reduce_op != TG_OP_LEAF && p->reduce_op != TG_OP_SUM && p->reduce_op != TG_OP_MAX)
        return false;
    for (int i = 0; i < p->n_instrs; i++)
        if (!emittable(p->instr[i].op))
            return false;
    emitter e = {.p = p, .t = text};
    size_t mark = text->len;
    bool ok = true;
    tg_fused_loops_of(p, false, &e.x);
    if (p->reduce_op == TG_OP_LEAF) {
        ok = emit_elementwise(&e, name, units);
    } else if (emit_window_reduction(&e, name, units)) {
        ok = true;
    } else if (p->reduce_op == TG_OP_MAX) {
        ok = false;
    } else {
        text->len = mark;
        e = (emitter){.p = p, .t = text};
        tg_fused_loops_of(p, false, &e.x);
        ok = emit_reduction_chunked(&e, name, made);
        if (!ok) {
            text->len = mark;
            *made = (tg_fused_emitted){0};
            e = (emitter){.p = p, .t = text};
            tg_fused_loops_of(p, true, &e.x);
            ok = emit_reduction_by_unit(&e, name, units);
        }
    }
    if (!ok && text->s) {
        text->len = mark;
        text->s[mark] = '\0';
    }
    return ok && !text->failed;
}
