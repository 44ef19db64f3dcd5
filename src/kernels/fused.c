/* The generic fused kernel: runs any tg_fused_program (kernels/fused.h) tile by tile.
 *
 * Preparing a program (once, when a plan is built) reorders and merges its iteration axes
 * and decides how every value lives inside a tile:
 *   - the axes are reordered as [kept, reduced, trailing kept] (or left [reduced, kept,
 *     reduced] for a segmented tile, below) so that one output element's reduction is
 *     walked by one thread in one fixed order (results do not depend on the thread count),
 *     and adjacent axes every operand steps through contiguously merge;
 *   - a tile is a box of up to TILE points over the trailing axes (all of the innermost ones
 *     and a chunk of the next), a few KB, so intermediates stay in L1;
 *   - a value is a constant (computed once), a scalar over the tile (a broadcast load, an op
 *     on scalars: computed once per tile), read in place (a load contiguous over the tile),
 *     or a buffer in the thread's scratch (a gathered or broadcast load, an op's result).
 *     The result of a kernel without a reduction is written straight into the output, a
 *     comparison read only as wheres' conditions is computed inside each where's loop,
 *     (a - b) c + d inside one loop (sub_mul_add) when b, c and d are one value per tile,
 *     and an add, subtract or multiply by such a value inside its one reader's loop when
 *     that is an add, subtract or multiply (a chain: (a - b) c with c a buffer too).
 * Where the innermost axes are a plane of a few hundred points and a load is one value per
 * plane, a tile is several planes and that load one value per plane (V_SEGMENT: a segmented
 * tile, choose_tile), so that the tile's bookkeeping is shared by several planes.
 * A tile then runs its steps in order, each one loop over contiguous buffers that the
 * compiler vectorizes (plane by plane where it reads a per-plane value), chosen when the
 * program was prepared. Reductions fold each tile into double accumulators (exact for max;
 * a float run's sum in float lanes first, run_sum_f32) and store them once every tile
 * of an output element is folded; a max may count its ties as it folds (count_ties). Pooling
 * windows are tiled as planes of whole rows of windows ([a, i, j, b], order_windows), and
 * reductions over the batch may visit their tiles image by image with every channel's
 * accumulators live (run_reduction_interleaved). A reduction may also store a value at every
 * point as it folds (tg_fused_program.stores: compile/pass_fuse_stores.c), made straight in
 * the output where a tile's points are contiguous there, scattered back elsewhere. */
#include "fused.h"
#include "fused_transpose.h"
#include "../compile/plan_ops.h"
#include "strided.h"

#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#define TILE 1024 /* points per tile */
#define SEGMENT_MIN 64 /* the planes of a segmented tile (choose_tile): enough points for */
#define SEGMENT_MAX 256 /* a vector loop per plane, few enough for four planes or more */
#define READ_AHEAD 3 /* tiles: how far ahead read_ahead kernels ask for in-place points */
#define MAX_VALUES (TG_FUSED_MAX_LOADS + TG_FUSED_MAX_INSTRS)
#define SIMD _Pragma("omp simd")

tg_fused_program *tg_fused_program_new(void) { return calloc(1, sizeof(tg_fused_program)); }

static size_t elem_size(tg_dtype dt) { return dt == TG_F64 ? sizeof(double) : sizeof(float); }

static int arity(int op) { return op == TG_OP_LEAF ? 0 : tg_op_table[op].arity; }

static tg_dtype value_dtype(const tg_fused_program *p, int v)
{
    return v < p->n_loads ? p->load[v].dtype : p->instr[v - p->n_loads].dtype;
}

/* The blocks of a reduction's output: its result, the values it folds besides, and the
 * counts of a max's ties. */
static int result_blocks(const tg_fused_program *p) { return 1 + p->n_more + p->count_ties; }

static double block_init(const tg_fused_program *p, int block)
{
    if (p->reduce_op == TG_OP_SUM || (p->count_ties && block == 1))
        return 0.0;
    return -INFINITY;
}

/* ---- the loops --------------------------------------------------------------------------- */
/* A value inside one tile: a pointer to its points, packed, a scalar, or one scalar per
 * segment of the tile (V_SEGMENT). */
typedef struct {
    const void *ptr; /* NULL: the value is `scalar`, or seg[] */
    double scalar;
    const double *seg;
} ref;

/* y[0 .. total) from the operands r[] (each a buffer or a scalar), in planes of n points: a
 * segmented step's V_SEGMENT operands are one scalar per plane (seg[g]) and its buffers go
 * on plane after plane, inside one call (a call per plane cost more than a 196-point plane's
 * arithmetic); any other step is one plane. No `restrict`: the output may be an input's
 * memory (an in-place kernel), read and written at the same index in the same iteration,
 * which `omp simd` allows. */
typedef void (*op_fn)(void *y, const ref *const *r, int64_t total, int64_t n);

/* The planes of an op's loop: plane g's points start at o; operand k there as a buffer (NULL
 * when it is a scalar) and as a scalar. */
#define EACH_PLANE for (int64_t o = 0, g = 0; o < total; o += n, g++)
#define AT(T, k) (q##k.ptr ? (const T *)q##k.ptr + o : NULL)
#define SCALAR(T, k) ((T)(segmented && q##k.seg ? q##k.seg[g] : q##k.scalar))
/* The operands as locals, read once: through r the compiler would read them again for
 * every plane, as the stores to y might have changed them. */
#define OPERANDS1 const ref q0 = *r[0]
#define OPERANDS2 const ref q0 = *r[0], q1 = *r[1]
#define OPERANDS3 const ref q0 = *r[0], q1 = *r[1], q2 = *r[2]
#define OPERANDS4 const ref q0 = *r[0], q1 = *r[1], q2 = *r[2], q3 = *r[3]
/* An op's loop over planes, FN_in, and FN, the op_fn: one plane without looking for
 * per-plane scalars (the compiler drops those tests there), or planes with them. */
#define OP_BODY(FN)                                                                             \
    static inline __attribute__((always_inline)) void FN##_in(                                  \
        void *yv, const ref *const *r, int64_t total, int64_t n, bool segmented)
#define OP_ENTRY(FN)                                                                            \
    static void FN(void *yv, const ref *const *r, int64_t total, int64_t n)                     \
    {                                                                                           \
        if (total == n)                                                                         \
            FN##_in(yv, r, n, n, false);                                                        \
        else                                                                                    \
            FN##_in(yv, r, total, n, true);                                                     \
    }

#define UNARY(NAME, T, S, EXPR)                                                                 \
    OP_BODY(NAME##_##S)                                                                         \
    {                                                                                           \
        OPERANDS1;                                                                              \
        (void)segmented;                                                                        \
        EACH_PLANE {                                                                            \
            T *y = (T *)yv + o;                                                                 \
            const T *x = AT(T, 0);                                                              \
            SIMD for (int64_t i = 0; i < n; i++) {                                              \
                T u = x[i];                                                                     \
                y[i] = (EXPR);                                                                  \
            }                                                                                   \
        }                                                                                       \
    }                                                                                           \
    OP_ENTRY(NAME##_##S)

/* A NULL operand is its scalar. */
#define BINARY(NAME, T, S, EXPR)                                                                \
    OP_BODY(NAME##_##S)                                                                         \
    {                                                                                           \
        OPERANDS2;                                                                              \
        EACH_PLANE {                                                                            \
            T *y = (T *)yv + o;                                                                 \
            const T *a = AT(T, 0), *b = AT(T, 1);                                               \
            T as = SCALAR(T, 0), bs = SCALAR(T, 1);                                             \
            if (a && b)                                                                         \
                SIMD for (int64_t i = 0; i < n; i++) {                                          \
                    T u = a[i], v = b[i];                                                       \
                    y[i] = (EXPR);                                                              \
                }                                                                               \
            else if (a)                                                                         \
                SIMD for (int64_t i = 0; i < n; i++) {                                          \
                    T u = a[i], v = bs;                                                         \
                    y[i] = (EXPR);                                                              \
                }                                                                               \
            else                                                                                \
                SIMD for (int64_t i = 0; i < n; i++) {                                          \
                    T u = as, v = b[i];                                                         \
                    y[i] = (EXPR);                                                              \
                }                                                                               \
        }                                                                                       \
    }                                                                                           \
    OP_ENTRY(NAME##_##S)

/* k ? u : v by bits, as a blend: written as a choice, GCC 12 loads a buffer's u[i] under
 * the mask of k, merging into whatever its register held the iteration before; that chains
 * every load to the one before it, at memory latency wherever the buffer comes from memory
 * (a ReLU's backward reading dy: a third of a batch norm block's backward). */
#define BIT_PICK(T, U, S)                                                                       \
    static inline T pick_##S(bool k, T u, T v)                                                  \
    {                                                                                           \
        U a, b, m = k ? ~(U)0 : 0;                                                              \
        memcpy(&a, &u, sizeof a);                                                               \
        memcpy(&b, &v, sizeof b);                                                               \
        a = (a & m) | (b & ~m);                                                                 \
        memcpy(&u, &a, sizeof u);                                                               \
        return u;                                                                               \
    }
BIT_PICK(float, uint32_t, f32)
BIT_PICK(double, uint64_t, f64)

/* y = COND ? c : d, with c and d buffers or scalars. */
#define CHOOSE(S, COND)                                                                         \
    do {                                                                                        \
        if (c && d)                                                                             \
            SIMD for (int64_t i = 0; i < n; i++) y[i] = pick_##S((COND), c[i], d[i]);           \
        else if (c)                                                                             \
            SIMD for (int64_t i = 0; i < n; i++) y[i] = pick_##S((COND), c[i], ds);             \
        else if (d)                                                                             \
            SIMD for (int64_t i = 0; i < n; i++) y[i] = pick_##S((COND), cs, d[i]);             \
        else                                                                                    \
            SIMD for (int64_t i = 0; i < n; i++) y[i] = pick_##S((COND), cs, ds);               \
    } while (0)

/* where(k, c, d); a scalar condition just picks a side. */
#define WHERE(T, S)                                                                             \
    OP_BODY(where_##S)                                                                          \
    {                                                                                           \
        OPERANDS3;                                                                              \
        EACH_PLANE {                                                                            \
            T *y = (T *)yv + o;                                                                 \
            const T *k = AT(T, 0), *c = AT(T, 1), *d = AT(T, 2);                                \
            T cs = SCALAR(T, 1), ds = SCALAR(T, 2);                                             \
            if (k)                                                                              \
                CHOOSE(S, k[i] != 0);                                                           \
            else if (SCALAR(T, 0) != 0)                                                         \
                CHOOSE(S, true);                                                                \
            else                                                                                \
                CHOOSE(S, false);                                                               \
        }                                                                                       \
    }                                                                                           \
    OP_ENTRY(where_##S)

/* where(a CMP b, c, d) in one pass: the comparison's 0/1 never stored. */
#define SELECT(NAME, T, S, CMP)                                                                 \
    OP_BODY(NAME##_##S)                                                                         \
    {                                                                                           \
        OPERANDS4;                                                                              \
        EACH_PLANE {                                                                            \
            T *y = (T *)yv + o;                                                                 \
            const T *a = AT(T, 0), *b = AT(T, 1), *c = AT(T, 2), *d = AT(T, 3);                 \
            T as = SCALAR(T, 0), bs = SCALAR(T, 1), cs = SCALAR(T, 2), ds = SCALAR(T, 3);       \
            if (a && b)                                                                         \
                CHOOSE(S, a[i] CMP b[i]);                                                       \
            else if (a)                                                                         \
                CHOOSE(S, a[i] CMP bs);                                                         \
            else                                                                                \
                CHOOSE(S, as CMP b[i]);                                                         \
        }                                                                                       \
    }                                                                                           \
    OP_ENTRY(NAME##_##S)

/* (a - b) c + d with b, c, d one value over the tile: batch norm's normalizing, the
 * commonest chain in the kernels ((a - b) c alone, with c a buffer too, is the chain
 * c * (a - b)). One loop instead of three, rounding after each operation as the separate
 * loops do (no contraction into a fused multiply-add: C11 mode). */
#define SCALED(T, S)                                                                            \
    OP_BODY(sub_mul_add_##S)                                                                    \
    {                                                                                           \
        OPERANDS4;                                                                              \
        EACH_PLANE {                                                                            \
            T *y = (T *)yv + o;                                                                 \
            const T *a = AT(T, 0);                                                              \
            T b = SCALAR(T, 1), c = SCALAR(T, 2), d = SCALAR(T, 3);                             \
            SIMD for (int64_t i = 0; i < n; i++) {                                              \
                T t = a[i] - b;                                                                 \
                t = t * c;                                                                      \
                y[i] = t + d;                                                                   \
            }                                                                                   \
        }                                                                                       \
    }                                                                                           \
    OP_ENTRY(sub_mul_add_##S)

/* A chain: y = u OUTER (a INNER s), an add, subtract or multiply by a value s uniform over
 * the run, computed inside the loop of the add, subtract or multiply that is its one reader
 * (fold_chains): u a buffer or a scalar, a a buffer. Rounded after each operation, as the
 * two loops round (C11 mode: no contraction). Named chain_<outer>_<inner>, where sub is
 * v - t or a - s and bus ("sub backwards") t - v or s - a. */
#define CHAIN(OUTER_NAME, INNER_NAME, T, S, OUTER, INNER)                                       \
    OP_BODY(chain_##OUTER_NAME##_##INNER_NAME##_##S)                                            \
    {                                                                                           \
        OPERANDS3;                                                                              \
        EACH_PLANE {                                                                            \
            T *y = (T *)yv + o;                                                                 \
            const T *u = AT(T, 0), *a = AT(T, 1);                                               \
            T us = SCALAR(T, 0), s = SCALAR(T, 2);                                              \
            if (u)                                                                              \
                SIMD for (int64_t i = 0; i < n; i++) {                                          \
                    T t = (INNER), v = u[i];                                                    \
                    y[i] = (OUTER);                                                             \
                }                                                                               \
            else                                                                                \
                SIMD for (int64_t i = 0; i < n; i++) {                                          \
                    T t = (INNER), v = us;                                                      \
                    y[i] = (OUTER);                                                             \
                }                                                                               \
        }                                                                                       \
    }                                                                                           \
    OP_ENTRY(chain_##OUTER_NAME##_##INNER_NAME##_##S)
#define CHAINS_INTO(OUTER_NAME, T, S, OUTER)                                                    \
    CHAIN(OUTER_NAME, add, T, S, OUTER, a[i] + s)                                               \
    CHAIN(OUTER_NAME, sub, T, S, OUTER, a[i] - s)                                               \
    CHAIN(OUTER_NAME, bus, T, S, OUTER, s - a[i])                                               \
    CHAIN(OUTER_NAME, mul, T, S, OUTER, a[i] * s)
#define CHAINS(T, S)                                                                            \
    CHAINS_INTO(add, T, S, v + t)                                                               \
    CHAINS_INTO(sub, T, S, v - t)                                                               \
    CHAINS_INTO(bus, T, S, t - v)                                                               \
    CHAINS_INTO(mul, T, S, v * t)                                                               \
    static const op_fn chain_##S[4][4] = {                                                      \
        {chain_add_add_##S, chain_add_sub_##S, chain_add_bus_##S, chain_add_mul_##S},           \
        {chain_sub_add_##S, chain_sub_sub_##S, chain_sub_bus_##S, chain_sub_mul_##S},           \
        {chain_bus_add_##S, chain_bus_sub_##S, chain_bus_bus_##S, chain_bus_mul_##S},           \
        {chain_mul_add_##S, chain_mul_sub_##S, chain_mul_bus_##S, chain_mul_mul_##S},           \
    };

#define COPY(T, S)                                                                              \
    static void copy_##S(void *y, const ref *const *r, int64_t total, int64_t n)                \
    {                                                                                           \
        (void)n; /* never segmented: a copy has no scalar operand */                            \
        memmove(y, r[0]->ptr, (size_t)total * sizeof(T));                                       \
    }

#define CAST(FROM, TO, NAME)                                                                    \
    OP_BODY(NAME)                                                                               \
    {                                                                                           \
        OPERANDS1;                                                                              \
        (void)segmented;                                                                        \
        EACH_PLANE {                                                                            \
            TO *y = (TO *)yv + o;                                                               \
            const FROM *x = AT(FROM, 0);                                                        \
            SIMD for (int64_t i = 0; i < n; i++) y[i] = (TO)x[i];                               \
        }                                                                                       \
    }                                                                                           \
    OP_ENTRY(NAME)

/* The eager kernels' semantics, op by op: maximum takes a on ties and NaN in a, where tests
 * cond != 0, comparisons give 1 or 0 in the dtype, recip is 1/x. */
#define OPS(T, S, EXPF, LOGF, SQRTF)                                                            \
    UNARY(neg, T, S, -u)                                                                        \
    UNARY(exp, T, S, EXPF(u))                                                                   \
    UNARY(log, T, S, LOGF(u))                                                                   \
    UNARY(sqrt, T, S, SQRTF(u))                                                                 \
    UNARY(recip, T, S, (T)1 / u)                                                                \
    BINARY(add, T, S, u + v)                                                                    \
    BINARY(sub, T, S, u - v)                                                                    \
    BINARY(mul, T, S, u * v)                                                                    \
    BINARY(div, T, S, u / v)                                                                    \
    BINARY(maximum, T, S, (u >= v || u != u) ? u : v)                                           \
    BINARY(lt, T, S, (T)(u < v))                                                                \
    BINARY(eq, T, S, (T)(u == v))                                                               \
    WHERE(T, S)                                                                                 \
    SELECT(select_lt, T, S, <)                                                                  \
    SELECT(select_eq, T, S, ==)                                                                 \
    SCALED(T, S)                                                                                \
    COPY(T, S)
OPS(float, f32, expf, logf, sqrtf)
OPS(double, f64, exp, log, sqrt)
CHAINS(float, f32)
CHAINS(double, f64)
CAST(float, double, widen)
CAST(double, float, narrow)

#define PICK(name) (dt == TG_F64 ? name##_f64 : name##_f32)

/* The loop of instruction op with result dtype dt (from: its operand's, for a cast); with
 * folded set, the where that also computes its comparison `folded`, or the add that also
 * computes the scaled difference it reads (chains: chain_function). */
static op_fn op_function(int op, tg_dtype dt, tg_dtype from, int folded)
{
    switch (op) {
    case TG_OP_NEG: return PICK(neg);
    case TG_OP_EXP: return PICK(exp);
    case TG_OP_LOG: return PICK(log);
    case TG_OP_SQRT: return PICK(sqrt);
    case TG_OP_RECIP: return PICK(recip);
    case TG_OP_ADD: return folded == TG_OP_MUL ? PICK(sub_mul_add) : PICK(add);
    case TG_OP_SUB: return PICK(sub);
    case TG_OP_MUL: return PICK(mul);
    case TG_OP_DIV: return PICK(div);
    case TG_OP_MAXIMUM: return PICK(maximum);
    case TG_OP_LT: return PICK(lt);
    case TG_OP_EQ: return PICK(eq);
    case TG_OP_WHERE:
        if (folded == TG_OP_LT)
            return PICK(select_lt);
        if (folded == TG_OP_EQ)
            return PICK(select_eq);
        return PICK(where);
    case TG_OP_CAST: return from == dt ? PICK(copy) : dt == TG_F64 ? widen : narrow;
    default: return NULL;
    }
}

static void fill(tg_dtype dt, void *y, double v, int64_t n)
{
    if (dt == TG_F64)
        for (int64_t i = 0; i < n; i++)
            ((double *)y)[i] = v;
    else
        for (int64_t i = 0; i < n; i++)
            ((float *)y)[i] = (float)v;
}

/* ---- tiles ------------------------------------------------------------------------------ */
/* A tile is a box: a chunk of axis `first` and all of every axis after it, so that the
 * innermost axes may be short (a 2x2 window's) and the tile still a few hundred points. Its
 * values are packed row-major in that box. */
typedef struct {
    int64_t pos[TG_FUSED_MAX_DIMS];   /* origin */
    int64_t ext[TG_FUSED_MAX_DIMS];   /* extent along each axis (1 before `first`) */
    int64_t block[TG_FUSED_MAX_DIMS]; /* points per index along each axis */
    int64_t count;
} tile;

/* ---- gathers ------------------------------------------------------------------------------ */
/* Copies n bytes between buffers that do not overlap. The rows a tile gathers are often a
 * few dozen bytes (a 14- or 28-point image row), where a call to memcpy costs more than the
 * copy: from 16 bytes to 256 they go as two or four pieces of a fixed size (which the
 * compiler emits as single vector moves), the last ones overlapping those before instead of
 * a loop and a tail: a 28-point row is two 64-byte moves. */
static inline void copy_row(void *y, const void *x, size_t n)
{
    char *d = y;
    const char *s = x;
    if (n >= 64 && n <= 128) {
        memcpy(d, s, 64);
        memcpy(d + n - 64, s + n - 64, 64);
    } else if (n >= 32 && n < 64) {
        memcpy(d, s, 32);
        memcpy(d + n - 32, s + n - 32, 32);
    } else if (n > 128 && n <= 256) {
        memcpy(d, s, 64);
        memcpy(d + 64, s + 64, 64);
        memcpy(d + n - 128, s + n - 128, 64);
        memcpy(d + n - 64, s + n - 64, 64);
    } else if (n >= 16 && n < 32) {
        memcpy(d, s, 16);
        memcpy(d + n - 16, s + n - 16, 16);
    } else {
        memcpy(d, s, n);
    }
}

/* y[2 i] = y[2 i + 1] = x[i] for i < n: a pool's gradient or max spread back over its 2-wide
 * windows. Rows are short (7 or 14 windows), too short for a vectorized loop's main body, so
 * eight points go at a time as one vector and its two interleavings, the last eight
 * overlapping the ones before. The row goes to `copies` places `pitch` apart: a window's
 * rows repeat it (made once, stored twice for a 2x2 window). */
#define TWICE(T, S)                                                                             \
    typedef T S##x8 __attribute__((vector_size(8 * sizeof(T))));                                \
    typedef T S##x4 __attribute__((vector_size(4 * sizeof(T))));                                \
    static inline void twice_##S(T *y, const T *x, int64_t n, int64_t copies, int64_t pitch)    \
    {                                                                                           \
        if (n >= 4 && n < 8) { /* a 7-window row: four and four, overlapping */                 \
            S##x4 v0, v1;                                                                       \
            memcpy(&v0, x, sizeof v0);                                                          \
            memcpy(&v1, x + n - 4, sizeof v1);                                                  \
            S##x8 d0 = __builtin_shufflevector(v0, v0, 0, 0, 1, 1, 2, 2, 3, 3);                 \
            S##x8 d1 = __builtin_shufflevector(v1, v1, 0, 0, 1, 1, 2, 2, 3, 3);                 \
            for (int64_t c = 0; c < copies; c++) {                                              \
                memcpy(y + c * pitch, &d0, sizeof d0);                                          \
                memcpy(y + c * pitch + 2 * (n - 4), &d1, sizeof d1);                            \
            }                                                                                   \
            return;                                                                             \
        }                                                                                       \
        if (n < 8) {                                                                            \
            for (int64_t c = 0; c < copies; c++)                                                \
                for (int64_t i = 0; i < n; i++)                                                 \
                    y[c * pitch + 2 * i] = y[c * pitch + 2 * i + 1] = x[i];                     \
            return;                                                                             \
        }                                                                                       \
        for (int64_t i = 0;; i += 8) {                                                          \
            if (i + 8 > n)                                                                      \
                i = n - 8;                                                                      \
            S##x8 v, lo, hi;                                                                    \
            memcpy(&v, x + i, sizeof v);                                                        \
            lo = __builtin_shufflevector(v, v, 0, 0, 1, 1, 2, 2, 3, 3);                         \
            hi = __builtin_shufflevector(v, v, 4, 4, 5, 5, 6, 6, 7, 7);                         \
            for (int64_t c = 0; c < copies; c++) {                                              \
                memcpy(y + c * pitch + 2 * i, &lo, sizeof lo);                                  \
                memcpy(y + c * pitch + 2 * i + 8, &hi, sizeof hi);                              \
            }                                                                                   \
            if (i + 8 == n)                                                                     \
                return;                                                                         \
        }                                                                                       \
    }
TWICE(float, f32)
TWICE(double, f64)

/* The two innermost axes of a gathered box, n2 rows of n1 points, packed into y: plain loops
 * with the longer axis inside, and the patterns the kernels meet written so the compiler
 * vectorizes them. */
#define GATHER_PLANE(T, S)                                                                      \
    static inline void gather_plane_##S(T *y, const T *src, int64_t n1, int64_t s1, int64_t n2, \
                                        int64_t s2)                                             \
    {                                                                                           \
        if (n1 >= n2 || s2 == 0) {                                                              \
            for (int64_t a = 0; a < n2; a++) {                                                  \
                T *row = y + a * n1;                                                            \
                if (s1 == 1)                                                                    \
                    copy_row(row, src + a * s2, (size_t)n1 * sizeof *y);                        \
                else if (s1 == 2) /* windows of stride 2: a constant stride vectorizes */       \
                    for (int64_t c = 0; c < n1; c++)                                            \
                        row[c] = src[a * s2 + 2 * c];                                           \
                else                                                                            \
                    for (int64_t c = 0; c < n1; c++)                                            \
                        row[c] = src[a * s2 + c * s1];                                          \
            }                                                                                   \
        } else if (s1 == 0 && n1 == 2 && s2 == 1) { /* each element twice: a pool's backward */ \
            twice_##S(y, src, n2, 1, 0);                                                        \
        } else if (s1 == 0 && n1 == 2) {                                                        \
            for (int64_t a = 0; a < n2; a++)                                                    \
                y[a * 2] = y[a * 2 + 1] = src[a * s2];                                          \
        } else if (s1 == 0) { /* each element n1 times: no multiply by a zero stride */         \
            for (int64_t a = 0; a < n2; a++)                                                    \
                for (int64_t c = 0; c < n1; c++)                                                \
                    y[a * n1 + c] = src[a * s2];                                                \
        } else if (n1 == 2) { /* 2x2 windows: a constant inner count vectorizes */              \
            for (int64_t a = 0; a < n2; a++)                                                    \
                for (int64_t c = 0; c < 2; c++)                                                 \
                    y[a * 2 + c] = src[a * s2 + c * s1];                                        \
        } else {                                                                                \
            for (int64_t c = 0; c < n1; c++)                                                    \
                for (int64_t a = 0; a < n2; a++)                                                \
                    y[a * n1 + c] = src[a * s2 + c * s1];                                       \
        }                                                                                       \
    }

/* A strided view over the box ext[j .. d-1] (d - j >= 2 axes), packed row-major: one plane of
 * the two innermost axes per position of the outer ones, which an odometer walks. An axis
 * the view does not move along (stride 0) is gathered again at each of its positions rather
 * than copied from the first: the rows are short, and a copy of rows just written would
 * wait on store forwarding (the stores narrower than the loads). The exception is a row
 * spread twice (a pooled value over its 2x2 window: [.., a, j, b] with a and b repeating):
 * each vector it makes is stored to every repeat of the row at once. No recursion and no
 * call per row: a pooled tile is 14 or 28 rows of 7 to 28 points. */
#define GATHER(T, S)                                                                            \
    GATHER_PLANE(T, S)                                                                          \
    static void gather_##S(T *y, const T *src, int j, int d, const int64_t *ext,                \
                           const int64_t *stride)                                               \
    {                                                                                           \
        int64_t n1 = ext[d - 1], s1 = stride[d - 1], n2 = ext[d - 2], s2 = stride[d - 2];       \
        int64_t pos[TG_FUSED_MAX_DIMS] = {0}, copies = 1;                                       \
        int top = d - 3; /* the odometer's innermost axis */                                    \
        if (top >= j && stride[top] == 0 && s1 == 0 && n1 == 2 && s2 == 1 && n1 < n2)           \
            copies = ext[top--];                                                                \
        for (;;) {                                                                              \
            if (copies > 1)                                                                     \
                twice_##S(y, src, n2, copies, n1 * n2);                                         \
            else                                                                                \
                gather_plane_##S(y, src, n1, s1, n2, s2);                                       \
            y += n1 * n2 * copies;                                                              \
            int k = top;                                                                        \
            for (; k >= j; k--) {                                                               \
                src += stride[k];                                                               \
                if (++pos[k] < ext[k])                                                          \
                    break;                                                                      \
                src -= stride[k] * ext[k];                                                      \
                pos[k] = 0;                                                                     \
            }                                                                                   \
            if (k < j)                                                                          \
                return;                                                                         \
        }                                                                                       \
    }

/* A piece of a max's points, its max d and the count c of its points equal to d, joins the
 * running (max, count) in (*acc, *cnt): the max as the eager max takes it (a NaN piece wins,
 * a NaN accumulator stays), and each side's count survives only if its max is the result. */
static inline void merge_count(double *acc, double *cnt, double d, double c)
{
    double old = *acc;
    double r = d > old ? d : old;
    r = d != d ? d : r;
    r = old != old ? old : r;
    *cnt = (old == r ? *cnt : 0.0) + (d == r ? c : 0.0);
    *acc = r;
}

/* The sum of a run x[0 .. n), in a fixed order: vectorizable and deterministic.
 * Doubles go in sixteen lanes, enough independent additions in flight to hide their
 * latency. Floats go in 64 float lanes, each summing at most 18 points of a tile (TILE is
 * 1024), four lanes' sums added in float before they meet in double: twice as fast as
 * widening every point to double (that was a sixth of a batch-norm block's backward), and
 * a partial sum's error stays within 20 float roundings. */
/* Sixteen lanes' sum, pairwise in a fixed order. */
static double add_lanes(double *lane)
{
    for (int l = 0; l < 8; l++)
        lane[l] += lane[l + 8];
    return ((lane[0] + lane[1]) + (lane[2] + lane[3])) +
           ((lane[4] + lane[5]) + (lane[6] + lane[7]));
}

static double run_sum_f64(const double *x, int64_t n)
{
    double lane[16] = {0};
    int64_t i = 0;
    for (; i + 16 <= n; i += 16)
        for (int l = 0; l < 16; l++)
            lane[l] += x[i + l];
    double acc = add_lanes(lane);
    for (; i < n; i++)
        acc += x[i];
    return acc;
}

static double run_sum_f32(const float *x, int64_t n)
{
    float lane[64] = {0};
    int64_t i = 0;
    for (; i + 64 <= n; i += 64)
        for (int l = 0; l < 64; l++)
            lane[l] += x[i + l];
    for (; i + 16 <= n; i += 16)
        for (int l = 0; l < 16; l++)
            lane[l] += x[i + l];
    double wide[16];
    for (int l = 0; l < 16; l++)
        wide[l] = (double)((lane[l] + lane[l + 16]) + (lane[l + 32] + lane[l + 48]));
    double acc = add_lanes(wide);
    for (; i < n; i++)
        acc += x[i];
    return acc;
}

/* Folding a tile into its accumulators. The tile is cut into runs over axes fold_axis ..
 * d-1 (all reduced, or all kept, like the innermost axis): a reduced run folds into one
 * accumulator (run_sum, run_max), a kept run into as many consecutive ones. */
#define FOLD(T, S)                                                                              \
    static double run_max_##S(const T *x, int64_t n)                                            \
    {                                                                                           \
        T m = -INFINITY;                                                                        \
        for (int64_t i = 0; i < n; i++)                                                         \
            m = (x[i] > m || x[i] != x[i]) ? x[i] : m;                                          \
        return m;                                                                               \
    }                                                                                           \
    /* J windows side by side, each A rows of B points (a 2x2 pool's [a, j, b], rows J * B      \
     * apart): window j folds into a[j], rows in order. Without branches (random data           \
     * mispredicts every other comparison of a max) and NaN kept as the eager max keeps it:     \
     * a NaN point wins, an accumulator that is NaN stays. */                                   \
    static void fold_windows_##S(int op, double *acc, const T *x, T xs, int64_t A, int64_t J,   \
                                 int64_t B)                                                     \
    {                                                                                           \
        int64_t row = J * B;                                                                    \
        if (!x) {                                                                               \
            for (int64_t j = 0; j < J; j++)                                                     \
                acc[j] = op == TG_OP_SUM ? acc[j] + (double)xs * (double)(A * B)                \
                         : ((double)xs > acc[j] || xs != xs) ? (double)xs : acc[j];             \
        } else if (op == TG_OP_SUM && A == 2 && B == 2) {                                       \
            const T *y = x + row;                                                               \
            SIMD for (int64_t j = 0; j < J; j++) acc[j] +=                                      \
                ((double)x[2 * j] + (double)x[2 * j + 1]) +                                     \
                ((double)y[2 * j] + (double)y[2 * j + 1]);                                      \
        } else if (op == TG_OP_SUM) {                                                           \
            for (int64_t a = 0; a < A; a++)                                                     \
                for (int64_t j = 0; j < J; j++)                                                 \
                    for (int64_t b = 0; b < B; b++)                                             \
                        acc[j] += (double)x[a * row + j * B + b];                               \
        } else if (A == 2 && B == 2) {                                                          \
            const T *y = x + row;                                                               \
            SIMD for (int64_t j = 0; j < J; j++) {                                              \
                T u0 = x[2 * j], u1 = x[2 * j + 1], u2 = y[2 * j], u3 = y[2 * j + 1];           \
                T m = u1 > u0 ? u1 : u0;                                                        \
                m = u2 > m ? u2 : m;                                                            \
                m = u3 > m ? u3 : m;                                                            \
                bool nan = (u0 != u0) | (u1 != u1) | (u2 != u2) | (u3 != u3);                   \
                double d = nan ? (double)(u0 + u1 + u2 + u3) : (double)m, old = acc[j];         \
                double r = d > old ? d : old;                                                   \
                r = nan ? d : r;                                                                \
                acc[j] = old != old ? old : r;                                                  \
            }                                                                                   \
        } else {                                                                                \
            for (int64_t a = 0; a < A; a++)                                                     \
                SIMD for (int64_t j = 0; j < J; j++) {                                          \
                    T m = x[a * row + j * B];                                                   \
                    bool nan = m != m;                                                          \
                    for (int64_t b = 1; b < B; b++) {                                           \
                        T u = x[a * row + j * B + b];                                           \
                        m = u > m ? u : m;                                                      \
                        nan |= u != u;                                                          \
                    }                                                                           \
                    double d = nan ? (double)NAN : (double)m, old = acc[j];                     \
                    double r = d > old ? d : old;                                               \
                    r = nan ? d : r;                                                            \
                    acc[j] = old != old ? old : r;                                              \
                }                                                                               \
        }                                                                                       \
    }                                                                                           \
    /* The same windows for a max that counts its ties (count_ties): each window's max d and    \
     * the count c of its points equal to d merge into (acc[j], cnt[j]) (merge_count).          \
     * A NaN window has count 0: NaN equals nothing. */                                         \
    static void fold_windows_count_##S(double *acc, double *cnt, const T *x, T xs, int64_t A,   \
                                       int64_t J, int64_t B)                                    \
    {                                                                                           \
        int64_t row = J * B;                                                                    \
        if (!x) {                                                                               \
            for (int64_t j = 0; j < J; j++)                                                     \
                merge_count(&acc[j], &cnt[j], xs, xs == xs ? (double)(A * B) : 0.0);            \
        } else if (A == 2 && B == 2) {                                                          \
            /* Windows first, in T alone, then their merges on doubles: two loops that          \
             * vectorize; a chunk of windows at a time. */                                      \
            const T *y = x + row;                                                               \
            T v[64], c[64];                                                                     \
            for (int64_t j0 = 0; j0 < J; j0 += 64) {                                            \
                int64_t n = J - j0 < 64 ? J - j0 : 64;                                          \
                SIMD for (int64_t k = 0; k < n; k++) {                                          \
                    int64_t j = j0 + k;                                                         \
                    T u0 = x[2 * j], u1 = x[2 * j + 1], u2 = y[2 * j], u3 = y[2 * j + 1];       \
                    T m = u1 > u0 ? u1 : u0;                                                    \
                    m = u2 > m ? u2 : m;                                                        \
                    m = u3 > m ? u3 : m;                                                        \
                    c[k] = (u0 == m ? (T)1 : (T)0) + (u1 == m ? (T)1 : (T)0) +                  \
                           (u2 == m ? (T)1 : (T)0) + (u3 == m ? (T)1 : (T)0);                   \
                    T s = u0 + u1 + u2 + u3; /* NaN exactly when some point is */               \
                    v[k] = s != s ? s : m;                                                      \
                }                                                                               \
                SIMD for (int64_t k = 0; k < n; k++)                                            \
                    merge_count(&acc[j0 + k], &cnt[j0 + k], (double)v[k], (double)c[k]);        \
            }                                                                                   \
        } else {                                                                                \
            for (int64_t a = 0; a < A; a++)                                                     \
                for (int64_t j = 0; j < J; j++) {                                               \
                    const T *w = x + a * row + j * B;                                           \
                    T m = w[0];                                                                 \
                    bool nan = m != m;                                                          \
                    for (int64_t b = 1; b < B; b++) {                                           \
                        m = w[b] > m ? w[b] : m;                                                \
                        nan |= w[b] != w[b];                                                    \
                    }                                                                           \
                    double c = 0;                                                               \
                    for (int64_t b = 0; b < B; b++)                                             \
                        c += w[b] == m;                                                         \
                    merge_count(&acc[j], &cnt[j], nan ? (double)NAN : (double)m, nan ? 0.0 : c);\
                }                                                                               \
        }                                                                                       \
    }                                                                                           \
    /* fold_run's max, counting ties: a reduced run is one piece (its max and count), a kept    \
     * run's points are pieces of one point each. */                                            \
    static void fold_run_count_##S(bool reduced, double *a, double *cnt, const T *x, T xs,      \
                                   int64_t n)                                                   \
    {                                                                                           \
        if (reduced && !x) {                                                                    \
            merge_count(a, cnt, xs, xs == xs ? (double)n : 0.0);                                \
        } else if (reduced) {                                                                   \
            T m = (T)run_max_##S(x, n);                                                         \
            double c = 0;                                                                       \
            for (int64_t i = 0; i < n; i++)                                                     \
                c += x[i] == m;                                                                 \
            merge_count(a, cnt, m, c);                                                          \
        } else {                                                                                \
            for (int64_t c = 0; c < n; c++) {                                                   \
                T v = x ? x[c] : xs;                                                            \
                merge_count(&a[c], &cnt[c], v, v == v ? 1.0 : 0.0);                             \
            }                                                                                   \
        }                                                                                       \
    }                                                                                           \
    static void fold_run_##S(int op, bool reduced, double *a, const T *x, T xs, int64_t n)      \
    {                                                                                           \
        if (reduced && op == TG_OP_SUM) {                                                       \
            a[0] += x ? run_sum_##S(x, n) : (double)xs * (double)n;                             \
        } else if (reduced) {                                                                   \
            double part = x ? run_max_##S(x, n) : xs;                                           \
            a[0] = (part > a[0] || part != part) ? part : a[0];                                 \
        } else if (op == TG_OP_SUM && x) {                                                      \
            SIMD for (int64_t c = 0; c < n; c++) a[c] += x[c];                                  \
        } else if (op == TG_OP_SUM) {                                                           \
            SIMD for (int64_t c = 0; c < n; c++) a[c] += xs;                                    \
        } else {                                                                                \
            for (int64_t c = 0; c < n; c++) {                                                   \
                double v = x ? x[c] : xs;                                                       \
                a[c] = (v > a[c] || v != v) ? v : a[c];                                         \
            }                                                                                   \
        }                                                                                       \
    }
GATHER(float, f32)
GATHER(double, f64)
FOLD(float, f32)
FOLD(double, f64)

/* y[i] = src[index[i]]: one loop the compiler may turn into vector gathers. */
#define GATHER_INDEXED(T, S)                                                                    \
    static void gather_indexed_##S(T *restrict y, const T *restrict src,                        \
                                   const int32_t *restrict index, int64_t n)                    \
    {                                                                                           \
        SIMD for (int64_t i = 0; i < n; i++) y[i] = src[index[i]];                              \
    }
GATHER_INDEXED(float, f32)
GATHER_INDEXED(double, f64)

/* ---- the prepared form ------------------------------------------------------------------ */
enum {
    V_CONST,    /* the same in every tile: computed once, when the program is prepared */
    V_SCALAR,   /* one value for the whole tile */
    V_IN_PLACE, /* read where it lies: contiguous over the tile */
    V_SLOT,     /* a buffer in the thread's scratch */
    V_OUT,      /* the kernel's result, written straight into the output */
    V_FOLDED,   /* computed by the step that reads it: a comparison by its where, a
                   difference by its multiply, a scaled difference by its add, an
                   add, subtract or multiply by a uniform value by its reader (a chain) */
    V_SEGMENT,  /* one value per segment of a segmented tile (a channel's mean in a tile of
                   several channels' planes): a scalar to each step, run segment by segment */
};

/* What a tile does to make one value: fill a load, or run fn on the operands. */
typedef struct {
    int value;
    op_fn fn;
    int n_args;
    int arg[4];
    bool segmented; /* an operand is V_SEGMENT: fn runs once per segment */
} step;

struct tg_fused_exec {
    tg_fused_transpose transpose; /* a transposing copy: libxsmm's (fused_transpose.h) */
    int ndim; /* >= 2 */
    int64_t shape[TG_FUSED_MAX_DIMS];
    int64_t stride[TG_FUSED_MAX_LOADS][TG_FUSED_MAX_DIMS];
    /* Per load, the axes up to `first` along which it moves: the only ones a tile's origin
     * depends on (load_at), and its steps along them in bytes. */
    int n_moving[TG_FUSED_MAX_LOADS];
    int moving[TG_FUSED_MAX_LOADS][TG_FUSED_MAX_DIMS];
    int64_t moving_bytes[TG_FUSED_MAX_LOADS][TG_FUSED_MAX_DIMS];
    int64_t out_stride[TG_FUSED_MAX_DIMS]; /* 0 along reduced axes */
    /* A reduction that stores (tg_fused_program.stores): where its points go, and whether a
     * tile's points are contiguous there (the stored value may then be made in place). */
    int64_t store_stride[TG_FUSED_MAX_DIMS];
    bool store_in_place;
    uint32_t reduced;                      /* reduced axes, in this order */
    int first;                             /* the tile: a chunk of axis first, all after it */
    int64_t chunk, capacity;               /* the chunk's length, the most points in a tile */
    /* Segmented tiles: a chunk of several planes (the points after axis first), with loads
     * that are one value per plane (V_SEGMENT; see choose_tile). seg_step: such a load's
     * step from plane to plane in bytes; its values live in scratch from seg_offset on,
     * chunk doubles per V_SEGMENT value (seg_slot[] numbers them). */
    bool segmented;
    int64_t seg_step[TG_FUSED_MAX_LOADS];
    int seg_slot[MAX_VALUES];
    size_t seg_offset;
    int64_t grid[TG_FUSED_MAX_DIMS];       /* tiles along axes 0 .. first */
    int n_kept, n_red;
    int kept[TG_FUSED_MAX_DIMS], red[TG_FUSED_MAX_DIMS]; /* grid axes, outer first */
    int64_t n_units, n_red_tiles; /* a unit: the tiles of one box of outputs */
    /* Folding: accumulators are row-major over the tile's kept axes (acc_stride, 0 along
     * reduced ones); axes fold_axis .. ndim-1 fold as runs. */
    int64_t acc_stride[TG_FUSED_MAX_DIMS];
    int fold_axis;
    /* Windows: the last axis reduced (b, at most 8 long), kept axes before it from
     * window_kept on, and from fold_axis to there reduced ones (a 2x2 pool's tile is
     * [a, i, j, b], order_windows): a run is a windows' planes, [A rows][J windows][B], and
     * folds window by window (fold_windows), J windows side by side, J long enough for
     * vector loops. */
    bool fold_windows;
    int window_kept;
    /* Reductions: the most outputs a unit has, and whether run_reduction_interleaved runs
     * the kernel (the units are nearer in memory than the reduced tiles, and every unit's
     * accumulators fit at once). */
    int64_t unit_outputs;
    bool interleave_units;
    int kind[MAX_VALUES];
    int slot[MAX_VALUES];
    bool chained[MAX_VALUES]; /* V_FOLDED into its reader's loop as a chain (fold_chains) */
    /* Whether in-place loads that read on from tile to tile ask for their points READ_AHEAD
     * tiles ahead: in a reduction, whose fold and bookkeeping between one tile's loads and
     * the next's outlast what the hardware fetches ahead (a sum over (N, H, W) of 28x28
     * planes read memory at 20 GB/s, a plain loop at 44; 34-41 with the requests), and in a
     * kernel of two in-place loads or more (batch norm's input gradient, x and dy read,
     * dx written: 0.67-0.81 of its time at 28x28 and 14x14). Not for one in-place load (a
     * forward apply, x read and y written), which measured 1.2x slower with them. An
     * elementwise kernel that reads ahead asks for its output's lines too (run_elementwise). */
    bool read_ahead;
    /* Per gathered load, NULL or the offset of each point of a full tile from the tile's
     * first element (a partial tile is a prefix): short rows and broadcasts inside the tile
     * (a pooled value over its window) are then one flat loop, not a walk row by row. */
    int32_t *index[TG_FUSED_MAX_LOADS];
    double constant[MAX_VALUES]; /* V_CONST values */
    int n_steps;
    step steps[MAX_VALUES];
    size_t slot_bytes, acc_offset;
};

/* ---- checking a program ------------------------------------------------------------------ */
/* A program is trusted only after this: every operand exists, dtypes agree, and no load can
 * reach outside its input, so a wrong program gives wrong numbers, never a wild read. */
static int check_program(const tg_graph *g, const tg_ir_node *n, const tg_fused_program *p)
{
    if (p->ndim < 0 || p->ndim > TG_FUSED_MAX_DIMS || p->n_loads < 0 ||
        p->n_loads > TG_FUSED_MAX_LOADS || p->n_instrs < 0 || p->n_instrs > TG_FUSED_MAX_INSTRS)
        return tg_fail(TG_ERR_ARG, "fused: a program with %d axes, %d loads, %d instructions",
                       p->ndim, p->n_loads, p->n_instrs);
    bool reduce = p->reduce_op != TG_OP_LEAF;
    if (reduce && p->reduce_op != TG_OP_SUM && p->reduce_op != TG_OP_MAX)
        return tg_fail(TG_ERR_ARG, "fused: reduction op %d", p->reduce_op);
    if ((!reduce && p->reduce_mask) || (p->ndim < 32 && (p->reduce_mask >> p->ndim)))
        return tg_fail(TG_ERR_ARG, "fused: reduced axes %#x for %d axes%s", p->reduce_mask,
                       p->ndim, reduce ? "" : " and no reduction");
    int64_t points = 1, outputs = 1;
    for (int k = 0; k < p->ndim; k++) {
        if (p->shape[k] < 0)
            return tg_fail(TG_ERR_ARG, "fused: negative extent on axis %d", k);
        points *= p->shape[k];
        outputs *= ((p->reduce_mask >> k) & 1) ? 1 : p->shape[k];
    }
    if (p->n_more < 0 || p->n_more > TG_FUSED_MAX_MORE || (p->n_more > 0 && !reduce))
        return tg_fail(TG_ERR_ARG, "fused: %d more results%s", p->n_more,
                       reduce ? "" : " without a reduction");
    for (int r = 0; r < p->n_more; r++)
        if (p->more[r] < 0 || p->more[r] >= p->n_loads + p->n_instrs ||
            value_dtype(p, p->more[r]) != n->dtype)
            return tg_fail(TG_ERR_ARG, "fused: result %d is value %d", r + 1, p->more[r]);
    if (p->count_ties && (p->reduce_op != TG_OP_MAX || p->n_more > 0))
        return tg_fail(TG_ERR_ARG, "fused: tie counts belong to a max with no more results");
    if (p->stores && (!reduce || p->store < 0 || p->store >= p->n_loads + p->n_instrs ||
                      value_dtype(p, p->store) != n->dtype))
        return tg_fail(TG_ERR_ARG, "fused: the stored value is value %d%s", p->store,
                       reduce ? "" : " without a reduction");
    outputs *= 1 + p->n_more + p->count_ties;
    outputs += p->stores ? points : 0;
    if (outputs != n->numel)
        return tg_fail(TG_ERR_ARG, "fused: %lld outputs for a node of %lld elements",
                       (long long)outputs, (long long)n->numel);
    for (int l = 0; l < p->n_loads; l++) {
        const tg_fused_load *ld = &p->load[l];
        if (ld->input < 0 || ld->input >= n->n_in ||
            g->nodes[n->in[ld->input]].dtype != ld->dtype)
            return tg_fail(TG_ERR_ARG, "fused: load %d reads input %d wrongly", l, ld->input);
        int64_t last = ld->offset;
        for (int k = 0; k < p->ndim; k++) {
            if (ld->stride[k] < 0)
                return tg_fail(TG_ERR_ARG, "fused: load %d has a negative stride", l);
            last += ld->stride[k] * (p->shape[k] > 0 ? p->shape[k] - 1 : 0);
        }
        if (points > 0 && (ld->offset < 0 || last >= g->nodes[n->in[ld->input]].numel))
            return tg_fail(TG_ERR_ARG, "fused: load %d reaches outside input %d", l,
                           ld->input);
    }
    for (int i = 0; i < p->n_instrs; i++) {
        const tg_fused_instr *in = &p->instr[i];
        int self = p->n_loads + i;
        if (in->op != TG_OP_LEAF && !tg_ir_is_elementwise(in->op))
            return tg_fail(TG_ERR_ARG, "fused: instruction %d is not elementwise", i);
        for (int a = 0; a < arity(in->op); a++) {
            if (in->arg[a] < 0 || in->arg[a] >= self)
                return tg_fail(TG_ERR_ARG, "fused: instruction %d reads value %d", i,
                               in->arg[a]);
            if (in->op != TG_OP_CAST && value_dtype(p, in->arg[a]) != in->dtype)
                return tg_fail(TG_ERR_ARG, "fused: instruction %d mixes dtypes", i);
        }
    }
    if (p->result < 0 || p->result >= p->n_loads + p->n_instrs ||
        value_dtype(p, p->result) != n->dtype)
        return tg_fail(TG_ERR_ARG, "fused: the result is value %d", p->result);
    return TG_OK;
}

/* ---- axes: reorder, merge, tile ----------------------------------------------------------- */
/* Operand 0 is the output, 1 + l load l, and 1 + n_loads the stored points of a reduction
 * that stores; strides over the program's own axes. */
typedef struct {
    int ndim, nops;
    int64_t shape[TG_FUSED_MAX_DIMS];
    int64_t stride[TG_FUSED_MAX_LOADS + 2][TG_FUSED_MAX_DIMS];
} axes;

static void program_axes(const tg_fused_program *p, axes *x)
{
    x->ndim = p->ndim;
    x->nops = p->n_loads + 1 + p->stores;
    memcpy(x->shape, p->shape, sizeof x->shape);
    int64_t run = 1, points = 1;
    for (int k = p->ndim - 1; k >= 0; k--) {
        bool red = (p->reduce_mask >> k) & 1;
        x->stride[0][k] = red ? 0 : run;
        run *= red ? 1 : p->shape[k];
        x->stride[1 + p->n_loads][k] = points;
        points *= p->shape[k];
    }
    for (int l = 0; l < p->n_loads; l++)
        memcpy(x->stride[1 + l], p->load[l].stride, sizeof x->stride[1 + l]);
}

/* [kept axes before the last reduced one, reduced axes, the kept axes after it]: one
 * output's reduction becomes the middle block, and the innermost axis stays innermost. */
static void reorder(axes *x, uint32_t mask)
{
    int last_red = -1;
    for (int k = 0; k < x->ndim; k++)
        if (((mask >> k) & 1) && x->shape[k] > 1)
            last_red = k;
    int perm[TG_FUSED_MAX_DIMS], n = 0;
    for (int k = 0; k < last_red; k++)
        if (!((mask >> k) & 1))
            perm[n++] = k;
    for (int k = 0; k <= last_red; k++)
        if ((mask >> k) & 1)
            perm[n++] = k;
    for (int k = last_red + 1; k < x->ndim; k++)
        perm[n++] = k;
    axes y = *x;
    for (int k = 0; k < x->ndim; k++) {
        y.shape[k] = x->shape[perm[k]];
        for (int o = 0; o < x->nops; o++)
            y.stride[o][k] = x->stride[o][perm[k]];
    }
    *x = y;
}

/* Drops size-1 axes and merges axis k into k + 1 where every operand (the output among
 * them, whose stride is 0 only along reduced axes) steps through both as through one. */
static void collapse(axes *x)
{
    axes y = *x;
    int out = 0;
    for (int k = 0; k < x->ndim; k++) {
        if (x->shape[k] == 1)
            continue;
        bool merge = out > 0;
        for (int o = 0; o < x->nops && merge; o++)
            merge = y.stride[o][out - 1] == x->stride[o][k] * x->shape[k];
        if (merge) {
            y.shape[out - 1] *= x->shape[k];
            for (int o = 0; o < x->nops; o++)
                y.stride[o][out - 1] = x->stride[o][k];
            continue;
        }
        y.shape[out] = x->shape[k];
        for (int o = 0; o < x->nops; o++)
            y.stride[o][out] = x->stride[o][k];
        out++;
    }
    /* At least two axes (a single point is [1, 1]): the tiling then always has an axis to
     * cut and an innermost one. */
    int pad = out < 2 ? 2 - out : 0;
    for (int k = out - 1; k >= 0; k--) {
        y.shape[k + pad] = y.shape[k];
        for (int o = 0; o < x->nops; o++)
            y.stride[o][k + pad] = y.stride[o][k];
    }
    for (int k = 0; k < pad; k++) {
        y.shape[k] = 1;
        for (int o = 0; o < x->nops; o++)
            y.stride[o][k] = 0;
    }
    y.ndim = out + pad;
    *x = y;
}

/* The axes' shape and each operand's strides, into the arrays of one (an exec, loops). */
static void split_axes(const tg_fused_program *p, const axes *x, int64_t *shape,
                       int64_t *out_stride, int64_t (*stride)[TG_FUSED_MAX_DIMS],
                       int64_t *store_stride)
{
    size_t row = sizeof x->shape;
    memcpy(shape, x->shape, row);
    memcpy(out_stride, x->stride[0], row);
    for (int l = 0; l < p->n_loads; l++)
        memcpy(stride[l], x->stride[1 + l], row);
    if (p->stores)
        memcpy(store_stride, x->stride[1 + p->n_loads], row);
}

void tg_fused_loops_of(const tg_fused_program *p, bool kept_first, tg_fused_loops *out)
{
    axes x;
    program_axes(p, &x);
    if (kept_first && p->reduce_op != TG_OP_LEAF)
        reorder(&x, p->reduce_mask);
    collapse(&x);
    memset(out, 0, sizeof *out);
    out->ndim = x.ndim;
    split_axes(p, &x, out->shape, out->out_stride, out->stride, out->store_stride);
}

/* Whether every reduced axis lies in a trailing block of at most TILE points that also
 * holds kept axes (a pooling window's [a, j, b] of [.., i, a, j, b]): a tile then holds whole
 * windows in the program's own order, so loads stay contiguous and no reorder (which would
 * gather every point through a stride-2 view) is needed. */
static bool windows_in_tile(const axes *x, uint32_t mask)
{
    int first_red = -1;
    for (int k = 0; k < x->ndim && first_red < 0; k++)
        if (((mask >> k) & 1) && x->shape[k] > 1)
            first_red = k;
    if (first_red < 0)
        return false;
    int64_t block = 1;
    bool kept_inside = false;
    for (int k = first_red; k < x->ndim; k++) {
        block *= x->shape[k];
        kept_inside |= !((mask >> k) & 1) && x->shape[k] > 1;
    }
    return kept_inside && block <= TILE;
}

/* Within the window block (from the first reduced axis on), orders the axes as the load
 * that reads most of it steps through memory, outermost first, so that it is read in place
 * ([a, b, i, j] of a pool written as a permute becomes [i, a, j, b]). Kept axes must keep
 * their order (the accumulators are laid out as the output is); otherwise nothing moves. */
static void order_windows(axes *x, uint32_t mask)
{
    int first_red = 0;
    while (!(((mask >> first_red) & 1) && x->shape[first_red] > 1))
        first_red++;
    int ref = -1;
    int64_t best = 1;
    for (int o = 1; o < x->nops; o++) {
        int64_t reach = 1;
        for (int k = first_red; k < x->ndim; k++)
            reach *= x->stride[o][k] != 0 ? x->shape[k] : 1;
        if (reach > best) {
            best = reach;
            ref = o;
        }
    }
    if (ref < 0)
        return;
    int perm[TG_FUSED_MAX_DIMS];
    for (int k = 0; k < x->ndim; k++)
        perm[k] = k;
    for (int k = first_red + 1; k < x->ndim; k++) { /* stable: by stride, descending */
        int v = perm[k], j = k;
        for (; j > first_red && x->stride[ref][perm[j - 1]] < x->stride[ref][v]; j--)
            perm[j] = perm[j - 1];
        perm[j] = v;
    }
    int last_kept = -1;
    for (int k = first_red; k < x->ndim; k++) {
        if ((mask >> perm[k]) & 1)
            continue;
        if (perm[k] < last_kept)
            return;
        last_kept = perm[k];
    }
    /* Then the reduced axes but the innermost go first ([i, a, j, b] -> [a, i, j, b]): the
     * tile is then planes of whole rows of windows, [a][i, j][b], and folds over i and j at
     * once (fold_windows) instead of row by row; the load is copied row by row into it. */
    int planes[TG_FUSED_MAX_DIMS], n = 0, last = x->ndim - 1;
    for (int k = first_red; k < last; k++)
        if ((mask >> perm[k]) & 1)
            planes[n++] = perm[k];
    for (int k = first_red; k < last; k++)
        if (!((mask >> perm[k]) & 1))
            planes[n++] = perm[k];
    planes[n] = perm[last];
    memcpy(perm + first_red, planes, (size_t)(n + 1) * sizeof *perm);
    axes y = *x;
    for (int k = 0; k < x->ndim; k++) {
        y.shape[k] = x->shape[perm[k]];
        for (int o = 0; o < x->nops; o++)
            y.stride[o][k] = x->stride[o][perm[k]];
    }
    *x = y;
}

/* Whether some load is one value over the axes after k but varies along k (a per-channel
 * scale when k is the channels): a tile cut across k would gather it point by point. */
static bool scalar_below(const struct tg_fused_exec *e, int n_loads, int k)
{
    for (int l = 0; l < n_loads; l++) {
        bool below = e->stride[l][k] != 0;
        for (int j = k + 1; j < e->ndim && below; j++)
            below = e->stride[l][j] == 0 || e->shape[j] == 1;
        if (below)
            return true;
    }
    return false;
}

/* Whether some load is contiguous over the axes after k (read in place by a tile of them)
 * but not along k (an image's plane, where k is the batch): a tile cut across k would
 * gather it. */
static bool in_place_below(const struct tg_fused_exec *e, int n_loads, int k)
{
    for (int l = 0; l < n_loads; l++) {
        int64_t run = 1;
        bool contiguous = true;
        for (int j = e->ndim - 1; j > k && contiguous; j--) {
            contiguous = e->shape[j] == 1 || e->stride[l][j] == run;
            run *= e->shape[j];
        }
        if (contiguous && e->stride[l][k] != run)
            return true;
    }
    return false;
}

/* As many whole trailing axes as fit in TILE points, and a chunk of the next one (a long
 * innermost axis is cut into equal chunks). When the whole trailing axes already make a
 * tile of TILE / 8 points or more and a load is one value over them but not along the next
 * axis, the tile stops there: the load stays one value per tile instead of a gather.
 * With `segments`, where the innermost axes are a plane of SEGMENT_MIN .. SEGMENT_MAX points
 * and such a load is one value per plane (batch norm's per-channel values over 14x14
 * planes), the tile is a chunk of planes instead, the load one value per plane (V_SEGMENT):
 * the work of a tile (placing it, its loads' origins, its fold's bookkeeping) is then shared
 * by several planes, where one 196-point plane a tile spent as much on it as on arithmetic.
 * Not where some load would be gathered instead of read in place (in_place_below). */
static void choose_tile(struct tg_fused_exec *e, int n_loads, bool segments)
{
    int d = e->ndim, k = d - 1;
    int64_t inner = 1;
    for (int j = d - 1; segments && j > 0 && inner * e->shape[j] <= SEGMENT_MAX; j--) {
        inner *= e->shape[j];
        if (inner >= SEGMENT_MIN && e->shape[j - 1] > 1 && scalar_below(e, n_loads, j - 1) &&
            !in_place_below(e, n_loads, j - 1)) {
            k = j - 1; /* planes of the axes after k, a chunk of them */
            e->segmented = true;
            break;
        }
    }
    if (!e->segmented)
        inner = 1;
    while (!e->segmented && k > 0 && inner * e->shape[k] <= TILE)
        inner *= e->shape[k--];
    e->first = k;
    if (e->segmented) {
        e->chunk = TILE / inner < e->shape[k] ? TILE / inner : e->shape[k];
    } else if (inner * e->shape[k] <= TILE) {
        e->chunk = e->shape[k];
    } else if (k == d - 1) {
        int64_t pieces = (e->shape[k] + TILE - 1) / TILE;
        e->chunk = (e->shape[k] + pieces - 1) / pieces;
    } else if (inner >= TILE / 8 &&
               (scalar_below(e, n_loads, k) || in_place_below(e, n_loads, k))) {
        e->chunk = 1;
    } else {
        e->chunk = TILE / inner;
    }
    if (e->chunk < 1)
        e->chunk = 1; /* an empty axis: nothing runs */
    e->capacity = e->chunk * inner;
    e->n_kept = e->n_red = 0;
    e->n_units = e->n_red_tiles = 1;
    for (int j = 0; j <= k; j++) {
        e->grid[j] = j == k ? (e->shape[j] + e->chunk - 1) / e->chunk : e->shape[j];
        if ((e->reduced >> j) & 1) {
            e->red[e->n_red++] = j;
            e->n_red_tiles *= e->grid[j];
        } else {
            e->kept[e->n_kept++] = j;
            e->n_units *= e->grid[j];
        }
    }
    int64_t run = 1;
    for (int j = d - 1; j >= k; j--) {
        bool red = (e->reduced >> j) & 1;
        e->acc_stride[j] = red ? 0 : run;
        run *= red ? 1 : (j == k ? e->chunk : e->shape[j]);
    }
    bool last_red = (e->reduced >> (d - 1)) & 1;
    e->fold_axis = d - 1;
    /* Windows: [outer reduced axes..., kept axes..., the innermost reduced one] at the end
     * of the tile (order_windows makes a pool's [a, i, j, b]). */
    int kept_from = d - 1, rows_from;
    while (kept_from - 1 >= k && !((e->reduced >> (kept_from - 1)) & 1))
        kept_from--;
    rows_from = kept_from;
    while (rows_from - 1 >= k && ((e->reduced >> (rows_from - 1)) & 1))
        rows_from--;
    e->fold_windows = last_red && kept_from < d - 1 &&
                      e->shape[d - 1] <= 8; /* longer rows: sixteen lanes (fold_run) */
    if (e->fold_windows) {
        e->window_kept = kept_from;
        e->fold_axis = rows_from;
    }
    while (!e->fold_windows && e->fold_axis > k &&
           (bool)((e->reduced >> (e->fold_axis - 1)) & 1) == last_red)
        e->fold_axis--;
}

/* ---- values in a tile --------------------------------------------------------------------- */
/* One value over the points a step runs on (a segmented step runs per segment). */
static bool uniform(const struct tg_fused_exec *e, int v)
{
    return e->kind[v] == V_SCALAR || e->kind[v] == V_CONST || e->kind[v] == V_SEGMENT;
}

/* Which operand of instruction i, a MUL, is a folded difference; -1 if none. */
static int folded_difference(const tg_fused_program *p, const struct tg_fused_exec *e, int i)
{
    for (int side = 0; side < 2; side++) {
        int v = p->instr[i].arg[side];
        if (v >= p->n_loads && e->kind[v] == V_FOLDED && p->instr[v - p->n_loads].op == TG_OP_SUB)
            return side;
    }
    return -1;
}

/* Which operand of instruction i, a MUL (ADD), is a buffer made by a SUB (a MUL that reads
 * a folded difference) read by nothing else; -1 if none. A difference folds as buffer -
 * uniform, into a product by anything; a product folds into a sum only when its factor and
 * the added value are uniform over the tile. All in the instruction's dtype. */
static int scaled_operand(const tg_fused_program *p, const struct tg_fused_exec *e,
                          const int *uses, int i, int inner_op)
{
    const tg_fused_instr *in = &p->instr[i];
    for (int side = 0; side < 2; side++) {
        int v = in->arg[side], w = v - p->n_loads;
        if (w < 0 || uses[v] != 1 || e->kind[v] != V_SLOT || p->instr[w].op != inner_op ||
            p->instr[w].dtype != in->dtype)
            continue;
        const tg_fused_instr *inner = &p->instr[w];
        if (inner_op == TG_OP_SUB && !uniform(e, inner->arg[1]))
            continue;
        if (inner_op == TG_OP_MUL && (!uniform(e, in->arg[1 - side]) ||
                                      folded_difference(p, e, w) < 0 ||
                                      !uniform(e, inner->arg[1 - folded_difference(p, e, w)])))
            continue;
        return side;
    }
    return -1;
}

/* (a - b) c and then (a - b) c + d become one step each (the chain c * (a - b) and
 * sub_mul_add; see scaled_operand for which operands may be buffers); the inner values are
 * folded.
 * Multiplies first, so that an add sees them. */
static void fold_scaled_differences(const tg_fused_program *p, struct tg_fused_exec *e,
                                    const int *uses)
{
    for (int op = 0; op < 2; op++)
        for (int i = 0; i < p->n_instrs; i++) {
            int target = op == 0 ? TG_OP_MUL : TG_OP_ADD;
            if (p->instr[i].op != target || e->kind[p->n_loads + i] == V_FOLDED)
                continue;
            int side = scaled_operand(p, e, uses, i, op == 0 ? TG_OP_SUB : TG_OP_MUL);
            if (side >= 0)
                e->kind[p->instr[i].arg[side]] = V_FOLDED;
        }
}

static bool arithmetic(int op) { return op == TG_OP_ADD || op == TG_OP_SUB || op == TG_OP_MUL; }

/* Whether instruction i (an add, subtract or multiply) reads a value folded into it. */
static bool reads_folded(const tg_fused_program *p, const struct tg_fused_exec *e, int i)
{
    return e->kind[p->instr[i].arg[0]] == V_FOLDED || e->kind[p->instr[i].arg[1]] == V_FOLDED;
}

/* The side of instruction w (an add, subtract or multiply of a buffer and a uniform value)
 * that is uniform; -1 when w is not such an instruction. */
static int uniform_side(const tg_fused_program *p, const struct tg_fused_exec *e, int w)
{
    const tg_fused_instr *in = &p->instr[w];
    if (!arithmetic(in->op) || reads_folded(p, e, w))
        return -1;
    bool u0 = uniform(e, in->arg[0]), u1 = uniform(e, in->arg[1]);
    return u0 == u1 ? -1 : u0 ? 0 : 1;
}

/* Chains: an add, subtract or multiply of a buffer by a uniform value (x * scale, x + bias,
 * x - mean) whose one reader is an add, subtract or multiply runs inside that reader's loop
 * (the chain_* loops): one step, and one buffer written and read again, fewer. After the
 * scaled differences (whose loops also take a buffer factor), and never a chain of chains:
 * a step stays two operations. */
static void fold_chains(const tg_fused_program *p, struct tg_fused_exec *e, const int *uses)
{
    for (int i = 0; i < p->n_instrs; i++) {
        int k = e->kind[p->n_loads + i];
        if (!arithmetic(p->instr[i].op) || (k != V_SLOT && k != V_OUT) || reads_folded(p, e, i))
            continue;
        for (int side = 0; side < 2; side++) {
            int v = p->instr[i].arg[side], w = v - p->n_loads;
            if (w < 0 || uses[v] != 1 || e->kind[v] != V_SLOT ||
                p->instr[w].dtype != p->instr[i].dtype || uniform_side(p, e, w) < 0)
                continue;
            e->kind[v] = V_FOLDED;
            e->chained[v] = true;
            break;
        }
    }
}

/* Whether strides step through a tile's box as through its own row-major order. */
static bool box_in_place(const struct tg_fused_exec *e, const int64_t *stride)
{
    int64_t run = 1;
    for (int j = e->ndim - 1; j >= e->first; j--) {
        int64_t ext = j == e->first ? e->chunk : e->shape[j];
        if (ext > 1 && stride[j] != run)
            return false;
        run *= ext;
    }
    return true;
}

static void classify(const tg_fused_program *p, struct tg_fused_exec *e)
{
    int uses[MAX_VALUES] = {0};
    for (int l = 0; l < p->n_loads; l++) {
        /* Over the tile's box: all zero strides, or the box's own row-major strides. */
        bool scalar = true, per_plane = e->segmented;
        for (int j = e->ndim - 1; j >= e->first; j--) {
            scalar &= e->stride[l][j] == 0 || (j == e->first ? e->chunk : e->shape[j]) == 1;
            per_plane &= j == e->first || e->stride[l][j] == 0 || e->shape[j] == 1;
        }
        e->kind[l] = scalar      ? V_SCALAR
                     : per_plane ? V_SEGMENT
                     : box_in_place(e, e->stride[l]) ? V_IN_PLACE
                                                     : V_SLOT;
    }
    for (int i = 0; i < p->n_instrs; i++) {
        const tg_fused_instr *in = &p->instr[i];
        int kind = V_CONST;
        for (int a = 0; a < arity(in->op); a++) {
            int k = e->kind[in->arg[a]];
            uses[in->arg[a]]++;
            if (k == V_SCALAR && kind == V_CONST)
                kind = V_SCALAR;
            else if (k == V_SEGMENT && (kind == V_CONST || kind == V_SCALAR))
                kind = V_SEGMENT;
            else if (k != V_CONST && k != V_SCALAR && k != V_SEGMENT)
                kind = V_SLOT;
        }
        e->kind[p->n_loads + i] = kind;
    }
    uses[p->result]++;
    for (int r = 0; r < p->n_more; r++)
        uses[p->more[r]]++;
    if (p->stores)
        uses[p->store]++;
    /* A comparison read only as wheres' conditions is computed inside each where's loop
     * (ReLU's mask is read twice by its backward: its gradient and, where a max pool
     * follows, the pooled value's): a compare again per where instead of a loop that
     * writes the mask. */
    int as_condition[MAX_VALUES] = {0};
    for (int i = 0; i < p->n_instrs; i++)
        if (p->instr[i].op == TG_OP_WHERE)
            as_condition[p->instr[i].arg[0]]++;
    for (int i = 0; i < p->n_instrs; i++) {
        int c = p->instr[i].arg[0];
        if (p->instr[i].op == TG_OP_WHERE && c >= p->n_loads && uses[c] == as_condition[c] &&
            e->kind[c] == V_SLOT &&
            (p->instr[c - p->n_loads].op == TG_OP_LT || p->instr[c - p->n_loads].op == TG_OP_EQ))
            e->kind[c] = V_FOLDED;
    }
    fold_scaled_differences(p, e, uses);
    fold_chains(p, e, uses);
    int in_place = 0;
    for (int l = 0; l < p->n_loads; l++)
        in_place += e->kind[l] == V_IN_PLACE;
    e->read_ahead = p->reduce_op != TG_OP_LEAF || in_place >= 2;
    /* Without a reduction, a result made into a buffer goes to the output directly; so
     * does a stored value, where a tile's points lie contiguous in the output. */
    if (p->reduce_op == TG_OP_LEAF && e->kind[p->result] == V_SLOT)
        e->kind[p->result] = V_OUT;
    if (p->stores && e->store_in_place && e->kind[p->store] == V_SLOT)
        e->kind[p->store] = V_OUT;
}

/* The chain loop y = u OUTER (a INNER s): rows add, sub, bus, mul as OUTER, columns the same
 * as INNER (CHAINS). */
static op_fn chain_function(tg_dtype dt, int outer, int inner)
{
    return dt == TG_F64 ? chain_f64[outer][inner] : chain_f32[outer][inner];
}

/* The step that makes the value of instruction i. */
static step make_step(const tg_fused_program *p, const struct tg_fused_exec *e, int i)
{
    const tg_fused_instr *in = &p->instr[i];
    step s = {.value = p->n_loads + i, .n_args = arity(in->op)};
    memcpy(s.arg, in->arg, sizeof in->arg);
    int folded = 0, side;
    for (side = 0; side < 2 && arithmetic(in->op); side++) {
        int v = in->arg[side];
        if (!e->chained[v])
            continue;
        /* y = u OUTER t, t = a INNER s: the outer's sides matter for a subtract only, the
         * inner's too (v - t or t - v; a - s or s - a). */
        const tg_fused_instr *inner = &p->instr[v - p->n_loads];
        int us = uniform_side(p, e, v - p->n_loads);
        int outer_row = in->op == TG_OP_ADD ? 0 : in->op == TG_OP_MUL ? 3 : side == 1 ? 1 : 2;
        int inner_col = inner->op == TG_OP_ADD ? 0 : inner->op == TG_OP_MUL ? 3 : us == 1 ? 1 : 2;
        s = (step){.value = s.value, .n_args = 3,
                   .arg = {in->arg[1 - side], inner->arg[1 - us], inner->arg[us]}};
        s.fn = chain_function(in->dtype, outer_row, inner_col);
        return s;
    }
    if (in->op == TG_OP_WHERE && e->kind[in->arg[0]] == V_FOLDED) {
        const tg_fused_instr *cmp = &p->instr[in->arg[0] - p->n_loads];
        folded = cmp->op;
        s = (step){.value = s.value, .n_args = 4,
                   .arg = {cmp->arg[0], cmp->arg[1], in->arg[1], in->arg[2]}};
    } else if (in->op == TG_OP_MUL && (side = folded_difference(p, e, i)) >= 0) {
        /* (a - b) c is the chain c * (a - b), whose outer operand may be a buffer too */
        const tg_fused_instr *sub = &p->instr[in->arg[side] - p->n_loads];
        s = (step){.value = s.value, .n_args = 3,
                   .arg = {in->arg[1 - side], sub->arg[0], sub->arg[1]}};
        s.fn = chain_function(in->dtype, 3, 1);
        return s;
    } else if (in->op == TG_OP_ADD) {
        for (side = 0; side < 2 && !folded; side++) {
            int v = in->arg[side], w = v - p->n_loads;
            if (w < 0 || e->kind[v] != V_FOLDED || p->instr[w].op != TG_OP_MUL)
                continue;
            int inner = folded_difference(p, e, w);
            const tg_fused_instr *mul = &p->instr[w], *sub = &p->instr[mul->arg[inner] - p->n_loads];
            folded = TG_OP_MUL;
            s = (step){.value = s.value, .n_args = 4,
                       .arg = {sub->arg[0], sub->arg[1], mul->arg[1 - inner], in->arg[1 - side]}};
        }
    }
    s.fn = in->op == TG_OP_LEAF ? NULL
                                : op_function(in->op, in->dtype, value_dtype(p, in->arg[0]), folded);
    return s;
}

/* The scalar an operand is for segment g (-1: not segmented). */
static double scalar_of(const ref *v, int64_t g)
{
    return v->seg && g >= 0 ? v->seg[g] : v->scalar;
}

/* A step on scalars (those of segment g, for V_SEGMENT operands), through its own loop, so
 * it rounds as the loop does. */
static double scalar_result(const tg_fused_program *p, const step *s, const ref *val, int64_t g)
{
    const tg_fused_instr *in = &p->instr[s->value - p->n_loads];
    if (in->op == TG_OP_LEAF)
        return in->dtype == TG_F32 ? (double)(float)in->value : in->value;
    union {
        float f;
        double d;
    } arg[4], out;
    ref r[4];
    const ref *rp[4];
    for (int a = 0; a < s->n_args; a++) {
        if (value_dtype(p, s->arg[a]) == TG_F64)
            arg[a].d = scalar_of(&val[s->arg[a]], g);
        else
            arg[a].f = (float)scalar_of(&val[s->arg[a]], g);
        r[a] = (ref){&arg[a], 0, NULL};
        rp[a] = &r[a];
    }
    s->fn(&out, rp, 1, 1);
    return in->dtype == TG_F64 ? out.d : out.f;
}

static void compute_constants(const tg_fused_program *p, struct tg_fused_exec *e)
{
    ref val[MAX_VALUES];
    for (int i = 0; i < p->n_instrs; i++) {
        int v = p->n_loads + i;
        if (e->kind[v] != V_CONST)
            continue;
        step s = make_step(p, e, i);
        e->constant[v] = scalar_result(p, &s, val, -1);
        val[v] = (ref){NULL, e->constant[v], NULL};
    }
}

/* The order of a tile's steps (each load just before its first use, so its buffer is
 * short-lived) and a buffer for every value that needs one, reused once it is dead. */
static void schedule(const tg_fused_program *p, struct tg_fused_exec *e)
{
    int n_values = p->n_loads + p->n_instrs, n_ops = 0;
    int last_use[MAX_VALUES], free_slots[MAX_VALUES], n_free = 0, n_slots = 0;
    bool made[MAX_VALUES] = {false};
    step ops[TG_FUSED_MAX_INSTRS];
    for (int i = 0; i < p->n_instrs; i++)
        if (e->kind[p->n_loads + i] != V_CONST && e->kind[p->n_loads + i] != V_FOLDED)
            ops[n_ops++] = make_step(p, e, i);
    for (int v = 0; v < n_values; v++) {
        last_use[v] = -1;
        e->slot[v] = -1;
    }
    for (int i = 0; i < n_ops; i++)
        for (int a = 0; a < ops[i].n_args; a++)
            last_use[ops[i].arg[a]] = ops[i].value;
    last_use[p->result] = n_values; /* alive until stored or folded */
    for (int r = 0; r < p->n_more; r++)
        last_use[p->more[r]] = n_values;
    if (p->stores)
        last_use[p->store] = n_values;
    e->n_steps = 0;
    /* Op i, then (at i == n_ops) the results. */
    int results[2 + TG_FUSED_MAX_MORE] = {p->result}, n_results = 1 + p->n_more;
    for (int r = 0; r < p->n_more; r++)
        results[1 + r] = p->more[r];
    if (p->stores)
        results[n_results++] = p->store;
    for (int i = 0; i <= n_ops; i++) {
        bool end = i == n_ops;
        int n_args = end ? n_results : ops[i].n_args;
        const int *args = end ? results : ops[i].arg;
        for (int a = 0; a < n_args; a++) {
            int v = args[a];
            if (v >= p->n_loads || made[v])
                continue;
            made[v] = true;
            if (e->kind[v] == V_SLOT)
                e->slot[v] = n_free > 0 ? free_slots[--n_free] : n_slots++;
            e->steps[e->n_steps++] = (step){.value = v};
        }
        if (end)
            break;
        int self = ops[i].value;
        if (e->kind[self] == V_SLOT)
            e->slot[self] = n_free > 0 ? free_slots[--n_free] : n_slots++;
        e->steps[e->n_steps++] = ops[i];
        /* Operands die after the result has its own buffer: a cast may not overwrite its
         * narrower input while reading it. */
        for (int a = 0; a < n_args; a++) {
            int v = args[a];
            bool again = false; /* a step may read one value twice */
            for (int b = 0; b < a; b++)
                again |= args[b] == v;
            if (!again && last_use[v] == self && e->slot[v] >= 0)
                free_slots[n_free++] = e->slot[v];
        }
    }
    size_t widest = sizeof(float);
    for (int v = 0; v < n_values; v++)
        if (elem_size(value_dtype(p, v)) > widest)
            widest = sizeof(double);
    size_t tile_bytes = (size_t)e->capacity * widest;
    e->slot_bytes = (tile_bytes + 63) / 64 * 64;
    /* Segment values each keep their own chunk of doubles (a few per program). */
    int n_segs = 0;
    for (int v = 0; v < n_values; v++)
        e->seg_slot[v] = e->kind[v] == V_SEGMENT ? n_segs++ : -1;
    for (int i = 0; i < e->n_steps; i++) {
        step *st = &e->steps[i];
        st->segmented = false;
        for (int a = 0; a < st->n_args && e->kind[st->value] != V_SEGMENT; a++)
            st->segmented |= e->kind[st->arg[a]] == V_SEGMENT;
    }
    e->seg_offset = (size_t)n_slots * e->slot_bytes;
    e->acc_offset = e->seg_offset + ((size_t)n_segs * (size_t)e->chunk * sizeof(double) + 63) /
                                        64 * 64;
}

/* Index tables for the gathered loads whose innermost run is short or strided; none when an
 * offset would not fit. Returns false when out of memory. A contiguous run of 32 bytes or
 * more goes as a row copy (copy_row) instead: a 14x14 pool's tile takes its image rows in
 * the order [a, i], 14 points each, and gathering those point by point (vgatherdps) cost
 * 2.5x the row copies (a pooled batch-1000 block-2 forward, 17.5 -> 7 ms on Zen 5). */
static bool index_gathers(const tg_fused_program *p, struct tg_fused_exec *e)
{
    int d = e->ndim, f = e->first;
    for (int l = 0; l < p->n_loads; l++) {
        if (e->kind[l] != V_SLOT && e->kind[l] != V_OUT)
            continue;
        const int64_t *stride = e->stride[l];
        int64_t run = 0; /* the contiguous points the load's innermost axes make */
        if (stride[d - 1] == 1) {
            run = 1;
            for (int j = d - 1; j >= f && stride[j] == run; j--)
                run *= j == f ? e->chunk : e->shape[j];
        }
        if (stride[d - 1] == 0 || run * (int64_t)elem_size(p->load[l].dtype) >= 32)
            continue;
        int64_t reach = 0;
        for (int j = f; j < d; j++)
            reach += stride[j] * ((j == f ? e->chunk : e->shape[j]) - 1);
        if (reach > INT32_MAX)
            continue;
        int32_t *index = malloc((size_t)e->capacity * sizeof *index);
        if (!index)
            return false;
        int64_t pos[TG_FUSED_MAX_DIMS] = {0}, at = 0;
        for (int64_t i = 0; i < e->capacity; i++) {
            index[i] = (int32_t)at;
            for (int j = d - 1; j >= f; j--) { /* the next point, row-major over the box */
                int64_t ext = j == f ? e->chunk : e->shape[j];
                at += stride[j];
                if (++pos[j] < ext)
                    break;
                at -= stride[j] * ext;
                pos[j] = 0;
            }
        }
        e->index[l] = index;
    }
    return true;
}

static void free_indexes(struct tg_fused_exec *e)
{
    for (int l = 0; l < TG_FUSED_MAX_LOADS; l++) {
        free(e->index[l]);
        e->index[l] = NULL;
    }
}

/* Whether a reduction's tiles are better visited reduced position by reduced position
 * (run_reduction_interleaved): it has several units and several reduced tiles, every
 * unit's accumulators fit in one block of the scratch, and the load read in place steps
 * less far along the units than along the reduced tiles. */
static void choose_interleave(const tg_fused_program *p, struct tg_fused_exec *e)
{
    e->unit_outputs = 1;
    for (int j = e->first; j < e->ndim; j++)
        if (!((e->reduced >> j) & 1))
            e->unit_outputs *= j == e->first ? e->chunk : e->shape[j];
    e->interleave_units = false;
    if (p->reduce_op == TG_OP_LEAF || e->n_kept == 0 || e->n_red == 0 || e->n_units < 2 ||
        e->n_red_tiles < 2 || e->n_units * e->unit_outputs > e->capacity)
        return;
    int kept = e->kept[e->n_kept - 1], red = e->red[e->n_red - 1];
    for (int l = 0; l < p->n_loads; l++) {
        if (e->kind[l] != V_IN_PLACE)
            continue;
        e->interleave_units = e->stride[l][kept] * (kept == e->first ? e->chunk : 1) <
                              e->stride[l][red] * (red == e->first ? e->chunk : 1);
        return;
    }
}

static size_t scratch_need(const tg_fused_program *p, const struct tg_fused_exec *e)
{
    size_t acc = p->reduce_op != TG_OP_LEAF
                     ? (size_t)result_blocks(p) * (size_t)e->capacity * sizeof(double)
                     : 0;
    return (e->acc_offset + acc + 63) / 64 * 64;
}

/* Whether the axes [reduced, kept, reduced...] (collapsed in the program's own order) suit
 * a tile of several planes: planes of the trailing reduced axes, several of the kept one
 * (batch norm's sums over (0, 2, 3): [N, C, H W]; a pool's backward, [N, C, H/2, 2, W/2, 2]),
 * each plane a run folded into its channel's sums, per-channel values one per plane. */
static bool plane_order(const axes *y)
{
    if (y->ndim < 3 || y->stride[0][0] != 0 || y->shape[0] == 1 || y->stride[0][1] == 0)
        return false;
    int64_t plane = 1;
    for (int k = 2; k < y->ndim; k++) {
        if (y->stride[0][k] != 0)
            return false;
        plane *= y->shape[k];
    }
    return plane >= SEGMENT_MIN && plane <= SEGMENT_MAX;
}

/* The iteration space, the tile and every value's kind. With `segments` the tile may be
 * segmented (choose_tile); false when that does not suit the program (a value one per plane
 * would be a result, or a reduction left in plane order would get one plane a tile): lay
 * out again without. */
static bool lay_out(const tg_fused_program *p, struct tg_fused_exec *e, bool segments)
{
    axes x;
    program_axes(p, &x);
    bool reduce = p->reduce_op != TG_OP_LEAF, by_planes = false;
    if (reduce && windows_in_tile(&x, p->reduce_mask)) {
        order_windows(&x, p->reduce_mask);
    } else if (reduce) {
        axes y = x;
        collapse(&y);
        by_planes = segments && plane_order(&y);
        if (!by_planes)
            reorder(&x, p->reduce_mask);
    }
    collapse(&x);
    e->ndim = x.ndim;
    split_axes(p, &x, e->shape, e->out_stride, e->stride, e->store_stride);
    for (int k = 0; k < e->ndim; k++)
        if (reduce && e->out_stride[k] == 0 && e->shape[k] > 1)
            e->reduced |= 1u << k;
    choose_tile(e, p->n_loads, segments);
    if (by_planes && e->chunk == 1) /* one plane per tile: the usual order is better */
        return false;
    for (int l = 0; l < p->n_loads; l++) {
        for (int k = 0; k <= e->first; k++)
            if (e->stride[l][k] != 0 && e->shape[k] > 1) {
                e->moving_bytes[l][e->n_moving[l]] =
                    e->stride[l][k] * (int64_t)elem_size(p->load[l].dtype);
                e->moving[l][e->n_moving[l]++] = k;
            }
        e->seg_step[l] = e->stride[l][e->first] * (int64_t)elem_size(p->load[l].dtype);
    }
    e->store_in_place = p->stores && box_in_place(e, e->store_stride);
    classify(p, e);
    if (!e->segmented)
        return true;
    bool suits = e->kind[p->result] != V_SEGMENT && !(p->stores && e->kind[p->store] == V_SEGMENT);
    for (int r = 0; r < p->n_more; r++)
        suits &= e->kind[p->more[r]] != V_SEGMENT;
    return suits;
}

int tg_fused_prepare(const tg_graph *g, tg_ir_node *n)
{
    tg_fused_program *p = n->payload;
    if (!p)
        return tg_fail(TG_ERR_ARG, "fused: the node has no program");
    int status = check_program(g, n, p);
    if (status != TG_OK)
        return status;
    struct tg_fused_exec *e = p->exec ? p->exec : malloc(sizeof *e);
    if (!e)
        return tg_fail(TG_ERR_NOMEM, "fused: out of memory");
    if (p->exec)
        free_indexes(e);
    memset(e, 0, sizeof *e);
    p->exec = e;
    p->native = NULL; /* compiled for the program as it was (compile/native.c) */
    p->native_combine = NULL;
    p->native_units = 0;

    if (!lay_out(p, e, true)) { /* segmented tiles do not suit this program */
        memset(e, 0, sizeof *e);
        lay_out(p, e, false);
    }
    compute_constants(p, e);
    schedule(p, e);
    choose_interleave(p, e);
    if (!index_gathers(p, e))
        return tg_fail(TG_ERR_NOMEM, "fused: out of memory");
    n->scratch_bytes = scratch_need(p, e);
    tg_fused_transpose_plan(p, &e->transpose);
    return TG_OK;
}

bool tg_fused_transposes(const tg_fused_program *p) { return p->exec && p->exec->transpose.on; }

void tg_fused_release(void *payload)
{
    tg_fused_program *p = payload;
    if (p && p->exec)
        free_indexes(p->exec);
    if (p)
        free(p->exec);
    free(p);
}

/* ---- running -------------------------------------------------------------------------------- */
/* Where load l's points for tile t begin, from `first`, where they begin for the tile at
 * the origin (tg_fused_run). A tile's origin is 0 after axis `first` (place_tile), so only
 * the axes up to it along which the load moves count. */
static const char *load_at(const struct tg_fused_exec *e, int l, const char *const *first,
                           const tile *t)
{
    const char *at = first[l];
    for (int i = 0; i < e->n_moving[l]; i++)
        at += t->pos[e->moving[l][i]] * e->moving_bytes[l][i];
    return at;
}

/* Tile t's box from axis j0 on as a load with these strides sees it: neighbouring axes it
 * steps through as through one ([.., j, b] of a window row, two axes a broadcast repeats)
 * merged, so that gathers copy long rows. Returns the merged box's axis count. */
static int merge_box(const tile *t, int j0, int d, const int64_t *stride, int64_t *ext,
                     int64_t *mstride)
{
    int n = j0;
    for (int k = j0; k < d; k++) {
        if (n > j0 && mstride[n - 1] == stride[k] * t->ext[k]) {
            ext[n - 1] *= t->ext[k];
            mstride[n - 1] = stride[k];
            continue;
        }
        ext[n] = t->ext[k];
        mstride[n] = stride[k];
        n++;
    }
    if (n - j0 < 2) { /* gather walks at least two axes */
        ext[n] = 1;
        mstride[n] = 0;
        n++;
    }
    return n;
}

/* Load l of tile t, from base on, gathered into its buffer; returns the buffer. Apart from
 * run_load, whose other cases (a scalar, a pointer) then need no room for a merged box. */
static __attribute__((noinline)) void *gather_load(const tg_fused_program *p,
                                                   const struct tg_fused_exec *e, int l,
                                                   const char *base, char *scratch, void *out,
                                                   const tile *t)
{
    void *y = e->kind[l] == V_OUT ? out : scratch + (size_t)e->slot[l] * e->slot_bytes;
    if (e->index[l] && p->load[l].dtype == TG_F64)
        gather_indexed_f64(y, (const double *)base, e->index[l], t->count);
    else if (e->index[l])
        gather_indexed_f32(y, (const float *)base, e->index[l], t->count);
    else {
        int64_t ext[TG_FUSED_MAX_DIMS], stride[TG_FUSED_MAX_DIMS];
        int d = merge_box(t, e->first, e->ndim, e->stride[l], ext, stride);
        if (p->load[l].dtype == TG_F64)
            gather_f64(y, (const double *)base, e->first, d, ext, stride);
        else
            gather_f32(y, (const float *)base, e->first, d, ext, stride);
    }
    return y;
}

/* Requests for memory ahead of its use, into L2: [from, from + bytes), one request every
 * `stride` bytes (64 a line; 128 every other one, where the hardware fetches line pairs).
 * Requests never fault, past an array's end too. */
static inline void ask_to_read(const char *from, int64_t bytes, int64_t stride)
{
    for (int64_t b = 0; b < bytes; b += stride)
        __builtin_prefetch(from + b, 0, 2);
}

static inline void ask_to_write(char *from, int64_t bytes)
{
    for (int64_t b = 0; b < bytes; b += 64)
        __builtin_prefetch(from + b, 1, 2);
}

static void run_load(const tg_fused_program *p, const struct tg_fused_exec *e, int l,
                     const char *const *first, char *scratch, void *out, const tile *t,
                     const tile *next, ref *val)
{
    const tg_fused_load *ld = &p->load[l];
    const char *base = load_at(e, l, first, t);
    ref *v = &val[l];
    v->ptr = NULL;
    v->seg = NULL;
    if (e->kind[l] == V_SCALAR) {
        v->scalar = ld->dtype == TG_F64 ? *(const double *)base : *(const float *)base;
    } else if (e->kind[l] == V_SEGMENT) {
        double *seg = (double *)(scratch + e->seg_offset) + (size_t)e->seg_slot[l] * e->chunk;
        for (int64_t g = 0; g < t->ext[e->first]; g++, base += e->seg_step[l])
            seg[g] = ld->dtype == TG_F64 ? *(const double *)base : *(const float *)base;
        v->seg = seg;
        v->scalar = seg[0]; /* a tile of one plane runs its steps as one plane (OP_ENTRY) */
    } else if (e->kind[l] == V_IN_PLACE) {
        v->ptr = base;
        /* Where the next tile does not read on from here (a reduction over the batch jumps
         * a whole image per tile), the hardware's prefetcher has nothing to follow: ask for
         * its points now, so that they arrive while this tile computes (every other line:
         * the hardware fetches line pairs). Where it does read on, the hardware keeps up,
         * and asking as well only fills the queue of outstanding requests. */
        int64_t size = (int64_t)elem_size(ld->dtype);
        const char *ahead = next ? load_at(e, l, first, next) : NULL;
        if (ahead && ahead != base + t->count * size) {
            ask_to_read(ahead, next->count * size, 128);
        } else if (ahead && e->read_ahead) {
            /* Reading on, where the hardware falls behind (read_ahead): ask for the points
             * READ_AHEAD tiles on (prefetches never fault past the end). */
            ask_to_read(base + READ_AHEAD * t->count * size, t->count * size, 64);
        }
    } else {
        v->ptr = gather_load(p, e, l, base, scratch, out, t);
    }
}

static void run_op(const tg_fused_program *p, const struct tg_fused_exec *e, const step *s,
                   char *scratch, void *out, const tile *t, ref *val)
{
    ref *r = &val[s->value];
    int kind = e->kind[s->value];
    r->seg = NULL;
    if (kind == V_SCALAR) {
        r->ptr = NULL;
        r->scalar = scalar_result(p, s, val, -1);
        return;
    }
    if (kind == V_SEGMENT) {
        double *seg =
            (double *)(scratch + e->seg_offset) + (size_t)e->seg_slot[s->value] * e->chunk;
        for (int64_t g = 0; g < t->ext[e->first]; g++)
            seg[g] = scalar_result(p, s, val, g);
        r->ptr = NULL;
        r->seg = seg;
        r->scalar = seg[0];
        return;
    }
    void *y = kind == V_OUT ? out : scratch + (size_t)e->slot[s->value] * e->slot_bytes;
    const ref *args[4];
    for (int a = 0; a < s->n_args; a++)
        args[a] = &val[s->arg[a]];
    s->fn(y, args, t->count, s->segmented ? t->count / t->ext[e->first] : t->count);
    r->ptr = y;
}

static void set_constants(const tg_fused_program *p, const struct tg_fused_exec *e, ref *val)
{
    for (int v = p->n_loads; v < p->n_loads + p->n_instrs; v++)
        if (e->kind[v] == V_CONST)
            val[v] = (ref){NULL, e->constant[v], NULL};
}

/* Every value of tile t. out is where the tile's stored value goes (the result of a kernel
 * without a reduction; a reduction's stored value where the tile is contiguous there): it
 * is stored there unless it was made there. */
static void run_tile(const tg_fused_program *p, const struct tg_fused_exec *e,
                     const char *const *first, char *scratch, void *out, const tile *t,
                     const tile *next, ref *val)
{
    for (int s = 0; s < e->n_steps; s++) {
        const step *st = &e->steps[s];
        if (st->value < p->n_loads)
            run_load(p, e, st->value, first, scratch, out, t, next, val);
        else
            run_op(p, e, st, scratch, out, t, val);
    }
    int stored = p->reduce_op == TG_OP_LEAF ? p->result : p->store;
    if (!out || e->kind[stored] == V_OUT)
        return;
    const ref *r = &val[stored];
    int64_t n = t->count;
    tg_dtype dt = value_dtype(p, stored);
    if (r->ptr)
        memmove(out, r->ptr, (size_t)n * elem_size(dt));
    else
        fill(dt, out, r->scalar, n);
}

/* Grid position of tile `index` over the listed grid axes (the last one fastest). */
static void decode(const struct tg_fused_exec *e, const int *list, int count, int64_t index,
                   int64_t *idx)
{
    for (int j = count - 1; j >= 0; j--) {
        int k = list[j];
        idx[k] = index % e->grid[k];
        index /= e->grid[k];
    }
}

/* The next grid position over the listed axes, as an odometer turns. */
static void advance(const struct tg_fused_exec *e, const int *list, int count, int64_t *idx)
{
    for (int j = count - 1; j >= 0; j--) {
        int k = list[j];
        if (++idx[k] < e->grid[k])
            return;
        idx[k] = 0;
    }
}

static void swap_tiles(tile **a, tile **b)
{
    tile *c = *a;
    *a = *b;
    *b = c;
}

static void place_tile(const struct tg_fused_exec *e, const int64_t *idx, tile *t)
{
    int d = e->ndim, f = e->first;
    for (int j = 0; j < d; j++) {
        t->pos[j] = j < f ? idx[j] : j == f ? idx[j] * e->chunk : 0;
        t->ext[j] = j < f ? 1 : j == f ? e->shape[j] - t->pos[j] : e->shape[j];
        if (j == f && t->ext[j] > e->chunk)
            t->ext[j] = e->chunk;
    }
    t->count = 1;
    for (int j = d - 1; j >= 0; j--) {
        t->block[j] = t->count;
        t->count *= t->ext[j];
    }
}

/* Tile t's origin through `stride` (a tile's origin is 0 after axis `first`). */
static int64_t tile_offset(const struct tg_fused_exec *e, const int64_t *stride, const tile *t)
{
    int64_t at = 0;
    for (int k = 0; k <= e->first; k++)
        at += t->pos[k] * stride[k];
    return at;
}

static int64_t out_offset(const struct tg_fused_exec *e, const tile *t)
{
    return tile_offset(e, e->out_stride, t);
}

static void run_elementwise(const tg_fused_program *p, const struct tg_fused_exec *e,
                            const char *const *first, char *scratch, char *out, int64_t u0,
                            int64_t u1)
{
    tile tiles[2], *t = &tiles[0], *next = &tiles[1]; /* swapped, not copied: a tile is
                                                           hundreds of bytes */
    ref val[MAX_VALUES];
    int64_t idx[TG_FUSED_MAX_DIMS] = {0};
    size_t elem = elem_size(value_dtype(p, p->result));
    set_constants(p, e, val);
    decode(e, e->kept, e->n_kept, u0, idx);
    place_tile(e, idx, next);
    bool write_ahead = e->read_ahead && e->kind[p->result] == V_OUT;
    for (int64_t u = u0; u < u1; u++) {
        swap_tiles(&t, &next);
        bool more = u + 1 < u1;
        if (more) {
            advance(e, e->kept, e->n_kept, idx);
            place_tile(e, idx, next);
        }
        char *y = out + out_offset(e, t) * (int64_t)elem;
        int64_t bytes = t->count * (int64_t)elem;
        /* Where the next tile writes on from here, ask for the lines READ_AHEAD tiles on,
         * to be written: a store that misses waits for its line, and a kernel that reads
         * ahead (read_ahead) otherwise meets its output's misses alone (batch norm's input
         * gradient, conv_bn A and B: 0.80-0.87 of its time). */
        if (write_ahead && more && out + out_offset(e, next) * (int64_t)elem == y + bytes)
            ask_to_write(y + READ_AHEAD * bytes, bytes);
        run_tile(p, e, first, scratch, y, t, more ? next : NULL, val);
    }
}

/* ---- a reduction's stored points ---------------------------------------------------------- */
static int64_t store_offset(const struct tg_fused_exec *e, const tile *t)
{
    return tile_offset(e, e->store_stride, t);
}

/* Where run_tile stores tile t's points: in the output's first block (`points`) when they
 * are contiguous there, else nowhere (scatter_store puts them). */
static void *store_at(const tg_fused_program *p, const struct tg_fused_exec *e, char *points,
                      const tile *t)
{
    if (!points || !e->store_in_place)
        return NULL;
    return points + store_offset(e, t) * (int64_t)elem_size(value_dtype(p, p->store));
}

#define SCATTER_ROW(T)                                                                          \
    static void scatter_row_##T(T *y, int64_t stride, const T *x, T scalar, int64_t n)          \
    {                                                                                           \
        for (int64_t i = 0; i < n; i++)                                                         \
            y[i * stride] = x ? x[i] : scalar;                                                  \
    }
SCATTER_ROW(float)
SCATTER_ROW(double)

/* Tile t's stored value, packed row-major in its box, to its places among `points` where
 * they are not contiguous (a sum over (N, H, W) of small planes tiles a channel's planes of
 * several images, one image apart in the output): row by row of the box as the output sees
 * it. */
static void scatter_store(const tg_fused_program *p, const struct tg_fused_exec *e,
                          char *points, const tile *t, const ref *v)
{
    if (!points || e->store_in_place)
        return;
    tg_dtype dt = value_dtype(p, p->store);
    size_t size = elem_size(dt);
    int64_t ext[TG_FUSED_MAX_DIMS], stride[TG_FUSED_MAX_DIMS], idx[TG_FUSED_MAX_DIMS] = {0};
    int d = merge_box(t, e->first, e->ndim, e->store_stride, ext, stride);
    int64_t row = ext[d - 1], at = store_offset(e, t);
    for (int64_t done = 0; done < t->count; done += row) {
        char *y = points + at * (int64_t)size;
        const char *x = v->ptr ? (const char *)v->ptr + done * (int64_t)size : NULL;
        if (dt == TG_F64)
            scatter_row_double((double *)y, stride[d - 1], (const double *)x, v->scalar, row);
        else
            scatter_row_float((float *)y, stride[d - 1], (const float *)x, (float)v->scalar,
                              row);
        for (int j = d - 2; j >= e->first; j--) { /* the next row */
            at += stride[j];
            if (++idx[j] < ext[j])
                break;
            at -= stride[j] * ext[j];
            idx[j] = 0;
        }
    }
}

/* ---- reductions ---------------------------------------------------------------------------- */
/* Folds tile t's result v (a buffer or a scalar) into acc, run by run. */
static void fold_tile(const tg_fused_program *p, const struct tg_fused_exec *e, const tile *t,
                      double *acc, double *cnt, const ref *v)
{
    int d = e->ndim, fa = e->fold_axis;
    tg_dtype dt = value_dtype(p, p->result);
    bool reduced = (e->reduced >> (d - 1)) & 1, f64 = dt == TG_F64;
    int64_t n = 1, idx[TG_FUSED_MAX_DIMS], at = 0;
    for (int j = e->first; j < fa; j++) /* only these turn (a tile is often one run) */
        idx[j] = 0;
    for (int j = fa; j < d; j++)
        n *= t->ext[j];
    for (int64_t done = 0; done < t->count; done += n) {
        const char *x = v->ptr ? (const char *)v->ptr + done * (int64_t)elem_size(dt) : NULL;
        int64_t rows = 1, wins = 1;
        for (int j = fa; e->fold_windows && j < d - 1; j++)
            *(j < e->window_kept ? &rows : &wins) *= t->ext[j];
        if (cnt && e->fold_windows && f64)
            fold_windows_count_f64(acc + at, cnt + at, (const double *)x, v->scalar, rows,
                                   wins, t->ext[d - 1]);
        else if (cnt && e->fold_windows)
            fold_windows_count_f32(acc + at, cnt + at, (const float *)x, (float)v->scalar, rows,
                                   wins, t->ext[d - 1]);
        else if (cnt && f64)
            fold_run_count_f64(reduced, acc + at, cnt + at, (const double *)x, v->scalar, n);
        else if (cnt)
            fold_run_count_f32(reduced, acc + at, cnt + at, (const float *)x, (float)v->scalar,
                               n);
        else if (e->fold_windows && f64)
            fold_windows_f64(p->reduce_op, acc + at, (const double *)x, v->scalar, rows, wins,
                             t->ext[d - 1]);
        else if (e->fold_windows)
            fold_windows_f32(p->reduce_op, acc + at, (const float *)x, (float)v->scalar, rows,
                             wins, t->ext[d - 1]);
        else if (f64)
            fold_run_f64(p->reduce_op, reduced, acc + at, (const double *)x, v->scalar, n);
        else
            fold_run_f32(p->reduce_op, reduced, acc + at, (const float *)x, (float)v->scalar, n);
        if (done + n >= t->count) /* the last run (often the only one) */
            break;
        for (int j = fa - 1; j >= e->first; j--) { /* the next run's accumulators */
            at += e->acc_stride[j];
            if (++idx[j] < t->ext[j])
                break;
            at -= e->acc_stride[j] * t->ext[j];
            idx[j] = 0;
        }
    }
}

/* The outputs tile t contributes to: its extent along the kept axes. */
static int64_t tile_outputs(const struct tg_fused_exec *e, const tile *t)
{
    int64_t outputs = 1;
    for (int j = e->first; j < e->ndim; j++)
        outputs *= (e->reduced >> j) & 1 ? 1 : t->ext[j];
    return outputs;
}

/* Folds a tile's results into their blocks of accumulators (acc: the first's). */
static void fold_results(const tg_fused_program *p, const struct tg_fused_exec *e,
                         const tile *t, double *acc, const ref *val)
{
    fold_tile(p, e, t, acc, p->count_ties ? acc + e->capacity : NULL, &val[p->result]);
    for (int m = 0; m < p->n_more; m++)
        fold_tile(p, e, t, acc + (1 + m) * e->capacity, NULL, &val[p->more[m]]);
}

/* Sets the first `outputs` accumulators of each block (acc: the first's) to the block's
 * identity: one value per block, so that the loop vectorizes (a pooled tile starts 2 x 196
 * accumulators, about as many as the points it folds per window row). */
static void init_blocks(const tg_fused_program *p, const struct tg_fused_exec *e, double *acc,
                        int64_t outputs)
{
    for (int m = 0; m < result_blocks(p); m++) {
        double v = block_init(p, m), *a = acc + m * e->capacity;
        SIMD for (int64_t i = 0; i < outputs; i++) a[i] = v;
    }
}

/* Stores a unit's `outputs` accumulators of each block (acc: the first's) at `base` of the
 * block's part of the output. */
static void store_results(const tg_fused_program *p, const struct tg_fused_exec *e, void *out,
                          int64_t base, int64_t block_numel, const double *acc, int64_t outputs)
{
    bool f64 = value_dtype(p, p->result) == TG_F64;
    for (int m = 0; m < result_blocks(p); m++) {
        const double *a = acc + m * e->capacity;
        int64_t at = base + m * block_numel;
        if (f64)
            memcpy((double *)out + at, a, (size_t)outputs * sizeof *a);
        else {
            float *y = (float *)out + at;
            SIMD for (int64_t i = 0; i < outputs; i++) y[i] = (float)a[i];
        }
    }
}

/* Each unit is a box of output elements, contiguous in the output; its tiles are folded in
 * one fixed order. */
static void run_reduction(const tg_fused_program *p, const struct tg_fused_exec *e,
                          const char *const *first, char *scratch, void *out, char *points,
                          int64_t block_numel, int64_t u0, int64_t u1)
{
    tile tiles[2], *t = &tiles[0], *next = &tiles[1];
    ref val[MAX_VALUES];
    int64_t idx[TG_FUSED_MAX_DIMS] = {0};
    double *acc = (double *)(scratch + e->acc_offset);
    set_constants(p, e, val);
    decode(e, e->kept, e->n_kept, u0, idx);
    for (int64_t u = u0; u < u1; u++, advance(e, e->kept, e->n_kept, idx)) {
        place_tile(e, idx, t); /* reduced axes at 0: the unit's outputs */
        int64_t outputs = tile_outputs(e, t);
        init_blocks(p, e, acc, outputs);
        int64_t base = out_offset(e, t);
        place_tile(e, idx, next);
        for (int64_t r = 0; r < e->n_red_tiles; r++) {
            swap_tiles(&t, &next);
            advance(e, e->red, e->n_red, idx); /* wraps to 0 after the unit's last tile */
            bool more = r + 1 < e->n_red_tiles;
            if (more)
                place_tile(e, idx, next);
            run_tile(p, e, first, scratch, store_at(p, e, points, t), t, more ? next : NULL, val);
            scatter_store(p, e, points, t, &val[p->store]);
            fold_results(p, e, t, acc, val);
        }
        store_results(p, e, out, base, block_numel, acc, outputs);
    }
}

/* The same folds, in the same order per output, but with the loops turned: every reduced
 * tile position in the outer loop, the thread's units inside it. When the units lie closer
 * together in memory than the reduced tiles (batch norm's sums over (N, H, W): a unit is a
 * channel, a reduced tile an image), the tiles are then visited as memory lies and every
 * unit's accumulators stay live at once (interleave_units says it fits). */
static void run_reduction_interleaved(const tg_fused_program *p, const struct tg_fused_exec *e,
                                      const char *const *first, char *scratch, void *out,
                                      char *points, int64_t block_numel, int64_t u0,
                                      int64_t u1)
{
    tile tiles[2], *t = &tiles[0], *next = &tiles[1];
    ref val[MAX_VALUES];
    /* The next tile's grid position (an odometer: kept axes inside, reduced ones outside)
     * and the first unit's, which the kept axes return to after the last unit. */
    int64_t idx[TG_FUSED_MAX_DIMS] = {0}, first_unit[TG_FUSED_MAX_DIMS] = {0};
    double *acc = (double *)(scratch + e->acc_offset);
    int64_t per_unit = e->unit_outputs, units = u1 - u0;
    set_constants(p, e, val);
    init_blocks(p, e, acc, units * per_unit);
    decode(e, e->kept, e->n_kept, u0, first_unit);
    memcpy(idx, first_unit, sizeof idx);
    place_tile(e, idx, next);
    for (int64_t r = 0; r < e->n_red_tiles; r++) {
        for (int64_t u = 0; u < units; u++) {
            swap_tiles(&t, &next);
            bool more = u + 1 < units || r + 1 < e->n_red_tiles;
            if (more) {
                if (u + 1 < units) {
                    advance(e, e->kept, e->n_kept, idx);
                } else {
                    for (int j = 0; j < e->n_kept; j++)
                        idx[e->kept[j]] = first_unit[e->kept[j]];
                    advance(e, e->red, e->n_red, idx);
                }
                place_tile(e, idx, next);
            }
            run_tile(p, e, first, scratch, store_at(p, e, points, t), t, more ? next : NULL, val);
            scatter_store(p, e, points, t, &val[p->store]);
            fold_results(p, e, t, acc + u * per_unit, val);
        }
    }
    memcpy(idx, first_unit, sizeof idx); /* reduced axes at 0: the units' outputs */
    for (int64_t u = 0; u < units; u++, advance(e, e->kept, e->n_kept, idx)) {
        place_tile(e, idx, t);
        store_results(p, e, out, out_offset(e, t), block_numel, acc + u * per_unit,
                      tile_outputs(e, t));
    }
}

void tg_fused_run(const tg_ir_node *n, void *out, const void *const *in, void *scratch)
{
    const tg_fused_program *p = n->payload;
    const struct tg_fused_exec *e = p->exec;
    bool reduce = p->reduce_op != TG_OP_LEAF;
    int64_t points = 1;
    for (int k = 0; k < e->ndim; k++)
        points *= e->shape[k];
    if (e->transpose.on) {
        tg_fused_transpose_run(&e->transpose, out,
                               (const char *)in[p->load[0].input] +
                                   p->load[0].offset * (int64_t)elem_size(p->load[0].dtype));
        return;
    }
    if (points == 0) { /* nothing to read: a reduction's outputs are its identity */
        if (reduce) /* (a reduction that stores has no points to store) */
            fill(n->dtype, out, p->reduce_op == TG_OP_SUM ? 0.0 : -INFINITY, n->numel);
        return;
    }
    int threads = points >= TG_PARALLEL_MIN ? tg_num_threads() : 1;
    if (!p->native && threads > e->n_units)
        threads = (int)e->n_units;
    size_t block = n->scratch_bytes;
    /* A reduction that stores: its points first, then its blocks. */
    int64_t stored = p->stores ? points : 0, block_numel = (n->numel - stored) / result_blocks(p);
    char *stores = p->stores ? out : NULL;
    char *folds = (char *)out + stored * (int64_t)elem_size(n->dtype);
    const char *first[TG_FUSED_MAX_LOADS]; /* each load's point at the origin tile's origin */
    for (int l = 0; l < p->n_loads; l++)
        first[l] = (const char *)in[p->load[l].input] +
                   p->load[l].offset * (int64_t)elem_size(p->load[l].dtype);
    if (p->native) { /* compiled to machine code (compile/native.c): its own units */
        int64_t units = p->native_units;
        if (threads > units)
            threads = (int)units;
        char *part = p->native_combine ? scratch : NULL; /* compile/native.c sized it */
#pragma omp parallel for num_threads(threads) schedule(static)
        for (int th = 0; th < threads; th++)
            p->native(first, reduce ? folds : out, stores, part, units * th / threads,
                      units * (th + 1) / threads);
        if (p->native_combine)
            p->native_combine(part, folds);
        return;
    }
#pragma omp parallel for num_threads(threads) schedule(static)
    for (int th = 0; th < threads; th++) {
        int64_t u0 = e->n_units * th / threads, u1 = e->n_units * (th + 1) / threads;
        char *mine = (char *)scratch + (size_t)th * block;
        if (reduce && e->interleave_units)
            run_reduction_interleaved(p, e, first, mine, folds, stores, block_numel, u0, u1);
        else if (reduce)
            run_reduction(p, e, first, mine, folds, stores, block_numel, u0, u1);
        else
            run_elementwise(p, e, first, mine, out, u0, u1);
    }
}

void tg_fused_run_units(const tg_ir_node *n, void *out, const void *const *in, int64_t u0,
                        int64_t u1)
{
    const tg_fused_program *p = n->payload;
    const char *first[TG_FUSED_MAX_LOADS];
    for (int l = 0; l < p->n_loads; l++)
        first[l] = (const char *)in[p->load[l].input] +
                   p->load[l].offset * (int64_t)elem_size(p->load[l].dtype);
    p->native(first, out, NULL, NULL, u0, u1);
}

void tg_fused_describe(const tg_ir_node *n, char *buf, size_t size)
{
    const tg_fused_program *p = n->payload;
    size_t used = (size_t)snprintf(buf, size, "fused{");
    const char *sep = "";
    for (int i = 0; p && i < p->n_instrs && used < size; i++) {
        if (p->instr[i].op == TG_OP_LEAF)
            continue;
        used += (size_t)snprintf(buf + used, size - used, "%s%s", sep,
                                 tg_op_name((tg_op)p->instr[i].op));
        sep = " ";
    }
    if (p && p->n_instrs == 0 && used < size)
        used += (size_t)snprintf(buf + used, size - used, "copy");
    if (used < size)
        used += (size_t)snprintf(buf + used, size - used, "}");
    if (p && p->stores && used < size)
        used += (size_t)snprintf(buf + used, size - used, " + store");
    if (p && p->reduce_op != TG_OP_LEAF && used < size) {
        used += (size_t)snprintf(buf + used, size - used, " + %s(",
                                 tg_op_name((tg_op)p->reduce_op));
        sep = "";
        for (int k = 0; k < p->ndim && used < size; k++) {
            if ((p->reduce_mask >> k) & 1) {
                used += (size_t)snprintf(buf + used, size - used, "%s%d", sep, k);
                sep = ",";
            }
        }
        if (used < size)
            used += (size_t)snprintf(buf + used, size - used, ")");
        if (p->n_more > 0 && used < size)
            used += (size_t)snprintf(buf + used, size - used, " of %d values", 1 + p->n_more);
        if (p->count_ties && used < size)
            used += (size_t)snprintf(buf + used, size - used, " with tie counts");
    }
    const struct tg_fused_exec *e = p ? p->exec : NULL;
    if (e && e->segmented && used < size)
        used += (size_t)snprintf(buf + used, size - used, " (%lld planes a tile)",
                                 (long long)e->chunk);
    int chains = 0;
    for (int v = 0; e && v < p->n_loads + p->n_instrs; v++)
        chains += e->chained[v];
    if (chains > 0 && used < size)
        used += (size_t)snprintf(buf + used, size - used, " (%d chained)", chains);
    if (p && p->native && used < size)
        used += (size_t)snprintf(buf + used, size - used, " native");
    if (e && e->transpose.on && used < size)
        used += (size_t)snprintf(buf + used, size - used, " transposed by libxsmm");
    if (p && p->native_combine && used < size) /* a reduction's partial sums per chunk */
        snprintf(buf + used, size - used, " in %lld chunks", (long long)p->native_units);
}
