/* Fusion: elementwise chains around at most one reduction become one FUSED node, a program
 * (kernels/fused.h) that the generic executor runs tile by tile.
 *
 * Everything follows from which values are materialized (written to memory). Each one that
 * is computed here becomes one kernel, whose program walks down from it through elementwise
 * ops and movement ops until it meets materialized values, which it loads. A value is
 * materialized when
 *   - it is a leaf, a reduction (which ends its kernel), the result of an op fusion leaves
 *     alone (pad, matmul, col2im, plan ops), an input of such an op, an output, or the
 *     value of an update;
 *   - a kernel would read it through a view that repeats its elements (an expand, a
 *     broadcast, overlapping windows): recomputing it at every repeat multiplies its work,
 *     so it is written once first (tinygrad's rule: materialize before an expand);
 *   - several kernels read it, and recomputing it in each would move more memory than
 *     writing it once and reading it back (a reader that loads some of its sources anyway
 *     pays only for the others), or would repeat a long chain; a value a
 *     recomputation reads repeated in the middle of its axes (a pooled value over each
 *     window, in a pool's backward) is gathered point by point by the interpreter, and
 *     counts as its points there (compiled kernels read it once: its own bytes);
 *   - a reshape of the view a kernel has of it cannot be written with strides.
 * Movement ops never cost a pass over memory by themselves: the walk carries an affine map
 * from the kernel's iteration space to the indices of the node it is at, and permute,
 * expand, slice, im2col and reshape only change the map. To keep a reshape's map affine
 * the walk may split an iteration axis ([H] -> [H/2, 2] for 2x2 windows); splitting keeps
 * the order of the points, so the output layout does not change.
 *
 * Decisions are made in rounds: build every kernel, then materialize the values that break
 * a rule (one rule at a time: a value read through an expand topmost first, a costly
 * shared value bottommost first, unless writing a costly value above it makes it cheap;
 * each changes who reads what around it), until a round asks for nothing more. Each
 * kernel then replaces its root by a FUSED node; what only kernels read dies at the
 * pipeline's compaction. */
#include "passes.h"
#include "fuse_internal.h"
#include "plan_ops.h"
#include "../kernels/fused.h"

#include <stdlib.h>
#include <string.h>

#define RECOMPUTE_MAX_OPS 16 /* a value several kernels read is recomputed up to this size */
#define MAX_MEMO 512
#define MAX_REACHED (TG_FUSED_MAX_INSTRS + 1)
/* While a program is built, a value is an instruction's index or LOAD_REF(load): the
 * program's own numbering (loads first) is known only once every load is. */
#define LOAD_REF(l) (TG_FUSED_MAX_INSTRS + (l))

/* Node index a = off[a] + sum_k coef[a][k] * i_k at iteration point i. */
typedef struct {
    int64_t coef[TG_MAX_DIMS][TG_FUSED_MAX_DIMS];
    int64_t off[TG_MAX_DIMS];
} imap;

typedef struct {
    int node;
    imap map;
    int value;
} memo_entry;

typedef struct {
    tg_fused_program *prog; /* NULL: not a kernel */
    int inputs[TG_IR_MAX_IN];
    int n_inputs;
} kernel;

typedef struct {
    tg_graph *g;
    bool native; /* the kernels will be compiled (tg_pass_ctx): gathers cost their bytes */
    bool *mat; /* per node: materialized */
    /* Per node, over the kernels of one round: how many read it (last_kernel counts each
     * once) and whether one reads it through a view that repeats its elements. */
    int *n_kernels, *last_kernel;
    bool *repeated;
    int *stamp; /* scratch marks for walks over the graph */
    int stamp_now;

    /* The kernel being built: its iteration space (axis k covers axis origin[k] of the
     * node at the top of the walk, in steps of scale[k]) and program. */
    int root;
    int ndim;
    int64_t shape[TG_FUSED_MAX_DIMS], scale[TG_FUSED_MAX_DIMS];
    int origin[TG_FUSED_MAX_DIMS];
    uint32_t mask;
    kernel k;
    memo_entry *memo;
    int n_memo;
    int reached[MAX_REACHED]; /* elementwise nodes the walk computed, and how */
    bool reached_repeated[MAX_REACHED];
    int n_reached;
    /* Why a walk failed: an axis to split, or a node to materialize. */
    int split_axis;
    int64_t split_factor;
    int need;
} fuser;

static const tg_ir_node *node(const fuser *f, int v) { return &f->g->nodes[v]; }

static size_t value_bytes(const tg_ir_node *n)
{
    return (size_t)n->numel * (n->dtype == TG_F64 ? sizeof(double) : sizeof(float));
}

static bool is_movement(int op)
{
    return op == TG_OP_RESHAPE || op == TG_OP_DETACH || op == TG_OP_PERMUTE ||
           op == TG_OP_EXPAND || op == TG_OP_SLICE || op == TG_OP_IM2COL;
}

static bool is_reduction(int op) { return op == TG_OP_SUM || op == TG_OP_MAX; }

/* Ops a kernel's walk passes through; everything else is read from memory. */
static bool fusible(int op)
{
    return tg_ir_is_elementwise(op) || is_reduction(op) || is_movement(op);
}

/* Materialized, or a reshape/detach of something that is (the same buffer). */
static bool loadable(const fuser *f, int v)
{
    while (tg_ir_is_view(node(f, v)->op) && !f->mat[v])
        v = node(f, v)->in[0];
    return f->mat[v];
}

/* Materializes v (a reshape or detach is its source's buffer, so the source is); false if
 * it already was. */
static bool mark(fuser *f, int v)
{
    while (tg_ir_is_view(node(f, v)->op))
        v = node(f, v)->in[0];
    bool changed = !f->mat[v];
    f->mat[v] = true;
    return changed;
}

static bool is_kernel_root(const fuser *f, int v)
{
    return f->mat[v] && fusible(node(f, v)->op) && !tg_ir_is_view(node(f, v)->op);
}

/* ---- affine maps -------------------------------------------------------------------------- */
/* The map of an operand broadcast to a node of shape `to` (right-aligned, size-1 axes
 * repeat): an elementwise op's inputs, and expand. */
static void broadcast_map(const imap *m, const tg_ir_node *to, const tg_ir_node *from, imap *out)
{
    memset(out, 0, sizeof *out);
    int lead = to->ndim - from->ndim;
    for (int a = 0; a < from->ndim; a++) {
        if (from->shape[a] == 1)
            continue;
        memcpy(out->coef[a], m->coef[a + lead], sizeof out->coef[a]);
        out->off[a] = m->off[a + lead];
    }
}

/* Offset in n's row-major layout per step along each iteration axis. */
static void linear_strides(const fuser *f, const imap *m, const tg_ir_node *n, int64_t *lin,
                           int64_t *lin0)
{
    int64_t cs[TG_MAX_DIMS];
    tg_contiguous_strides(n->ndim, n->shape, cs);
    *lin0 = 0;
    for (int a = 0; a < n->ndim; a++)
        *lin0 += m->off[a] * cs[a];
    for (int k = 0; k < f->ndim; k++) {
        lin[k] = 0;
        for (int a = 0; a < n->ndim; a++)
            lin[k] += m->coef[a][k] * cs[a];
    }
}

/* Whether no two iteration points reach the same element of n. Sufficient test: sorted by
 * stride, each axis steps past everything the smaller ones reach. */
static bool injective(const fuser *f, const imap *m, const tg_ir_node *n)
{
    int64_t lin[TG_FUSED_MAX_DIMS], lin0, stride[TG_FUSED_MAX_DIMS], extent[TG_FUSED_MAX_DIMS];
    int count = 0;
    linear_strides(f, m, n, lin, &lin0);
    for (int k = 0; k < f->ndim; k++) {
        if (f->shape[k] <= 1)
            continue;
        int j = count++;
        for (; j > 0 && stride[j - 1] > lin[k]; j--) {
            stride[j] = stride[j - 1];
            extent[j] = extent[j - 1];
        }
        stride[j] = lin[k];
        extent[j] = f->shape[k];
    }
    int64_t reach = 0;
    for (int j = 0; j < count; j++) {
        if (stride[j] <= reach)
            return false;
        reach += stride[j] * (extent[j] - 1);
    }
    return true;
}

/* The map through p -> reshape -> n. Row-major order is what a reshape keeps, so each
 * iteration axis's step in n's layout must be a whole step along one axis of p, and the
 * sums must never carry into the next axis. An axis that spans several of p's axes asks to
 * be split (f->split_*); one that cannot be split asks for p to be materialized. */
static int reshape_map(fuser *f, const imap *m, const tg_ir_node *n, int src, imap *out)
{
    const tg_ir_node *p = node(f, src);
    int64_t lin[TG_FUSED_MAX_DIMS], lin0, cs[TG_MAX_DIMS];
    memset(out, 0, sizeof *out);
    if (p->numel == 0)
        return 0;
    linear_strides(f, m, n, lin, &lin0);
    tg_contiguous_strides(p->ndim, p->shape, cs);
    for (int b = 0; b < p->ndim; b++)
        out->off[b] = lin0 / cs[b] % p->shape[b];
    for (int k = 0; k < f->ndim; k++) {
        if (f->shape[k] <= 1 || lin[k] == 0)
            continue;
        int b = p->ndim - 1; /* the innermost axis whose span holds the step */
        while (b >= 0 && (p->shape[b] == 1 || lin[k] >= cs[b] * p->shape[b]))
            b--;
        if (b < 0 || lin[k] % cs[b] != 0)
            goto fail;
        int64_t q = lin[k] / cs[b];
        if (q * (f->shape[k] - 1) >= p->shape[b]) {
            int64_t factor = p->shape[b] / q;
            if (p->shape[b] % q != 0 || f->shape[k] % factor != 0 ||
                f->ndim == TG_FUSED_MAX_DIMS)
                goto fail;
            f->split_axis = k;
            f->split_factor = factor;
            f->need = src; /* should the split be impossible after all */
            return -1;
        }
        out->coef[b][k] = q;
    }
    for (int b = 0; b < p->ndim; b++) {
        int64_t top = out->off[b];
        for (int k = 0; k < f->ndim; k++)
            top += out->coef[b][k] * (f->shape[k] - 1);
        if (top >= p->shape[b])
            goto fail;
    }
    return 0;
fail:
    f->need = src;
    return -1;
}

/* ---- the program ------------------------------------------------------------------------- */
/* A walk that overflows the program's limits materializes the topmost node it computes
 * below the root, which moves that part into a kernel of its own. */
static int overflow(fuser *f)
{
    int pick = -1;
    for (int i = 0; i < f->n_reached; i++)
        if (f->reached[i] != f->root && f->reached[i] > pick)
            pick = f->reached[i];
    f->need = pick >= 0 ? pick : -2;
    return -1;
}

static int emit(fuser *f, int op, tg_dtype dt, const int *args, double value)
{
    tg_fused_program *p = f->k.prog;
    if (p->n_instrs == TG_FUSED_MAX_INSTRS)
        return overflow(f);
    tg_fused_instr *in = &p->instr[p->n_instrs];
    *in = (tg_fused_instr){.op = op, .dtype = dt, .value = value};
    int n_args = op == TG_OP_LEAF ? 0 : tg_op_table[op].arity;
    for (int a = 0; a < n_args; a++)
        in->arg[a] = args[a];
    return p->n_instrs++;
}

static int input_slot(fuser *f, int v)
{
    for (int j = 0; j < f->k.n_inputs; j++)
        if (f->k.inputs[j] == v)
            return j;
    if (f->k.n_inputs == TG_IR_MAX_IN)
        return overflow(f);
    f->k.inputs[f->k.n_inputs] = v;
    return f->k.n_inputs++;
}

/* One instruction per constant and dtype. */
static int constant(fuser *f, tg_dtype dt, double value)
{
    const tg_fused_program *p = f->k.prog;
    for (int i = 0; i < p->n_instrs; i++)
        if (p->instr[i].op == TG_OP_LEAF && p->instr[i].dtype == dt &&
            memcmp(&p->instr[i].value, &value, sizeof value) == 0)
            return i;
    return emit(f, TG_OP_LEAF, dt, NULL, value);
}

static int load(fuser *f, int v, const imap *m)
{
    const tg_ir_node *n = node(f, v);
    double c;
    if (tg_ir_const_value(f->g, v, &c))
        return constant(f, n->dtype, c);
    int slot = input_slot(f, v);
    if (slot < 0)
        return -1;
    tg_fused_load ld = {.input = slot, .dtype = n->dtype};
    int64_t lin[TG_FUSED_MAX_DIMS];
    linear_strides(f, m, n, lin, &ld.offset);
    memcpy(ld.stride, lin, (size_t)f->ndim * sizeof *lin);
    tg_fused_program *p = f->k.prog;
    for (int l = 0; l < p->n_loads; l++)
        if (memcmp(&p->load[l], &ld, sizeof ld) == 0)
            return LOAD_REF(l);
    if (p->n_loads == TG_FUSED_MAX_LOADS)
        return overflow(f);
    p->load[p->n_loads] = ld;
    return LOAD_REF(p->n_loads++);
}

static int value_of(fuser *f, int v, const imap *m);

/* The value of node v (not loaded) at the points m maps to. */
static int compute(fuser *f, int v, const imap *m)
{
    const tg_ir_node *n = node(f, v);
    imap sub;
    switch (n->op) {
    case TG_OP_DETACH:
        return value_of(f, n->in[0], m);
    case TG_OP_RESHAPE:
        return reshape_map(f, m, n, n->in[0], &sub) < 0 ? -1 : value_of(f, n->in[0], &sub);
    case TG_OP_EXPAND:
        broadcast_map(m, n, node(f, n->in[0]), &sub);
        return value_of(f, n->in[0], &sub);
    case TG_OP_PERMUTE: /* output axis a is input axis attr[a] */
        memset(&sub, 0, sizeof sub);
        for (int a = 0; a < n->ndim; a++) {
            memcpy(sub.coef[n->attr[a]], m->coef[a], sizeof sub.coef[a]);
            sub.off[n->attr[a]] = m->off[a];
        }
        return value_of(f, n->in[0], &sub);
    case TG_OP_SLICE:
        sub = *m;
        for (int a = 0; a < n->ndim; a++)
            sub.off[a] += n->attr[a];
        return value_of(f, n->in[0], &sub);
    case TG_OP_IM2COL: /* [N, C, KH, KW, OH, OW] -> x[n, c, kh + OH*sh, kw + OW*sw] */
        memset(&sub, 0, sizeof sub);
        for (int a = 0; a < 4; a++) {
            memcpy(sub.coef[a], m->coef[a], sizeof sub.coef[a]);
            sub.off[a] = m->off[a];
        }
        for (int a = 2; a < 4; a++) {
            for (int k = 0; k < f->ndim; k++)
                sub.coef[a][k] += n->attr[a] * m->coef[a + 2][k];
            sub.off[a] += n->attr[a] * m->off[a + 2];
        }
        return value_of(f, n->in[0], &sub);
    default:
        break;
    }
    if (!tg_ir_is_elementwise(n->op)) { /* cannot happen: those are materialized */
        f->need = -2;
        return -1;
    }
    int args[3];
    for (int a = 0; a < n->n_in; a++) {
        broadcast_map(m, n, node(f, n->in[a]), &sub);
        args[a] = value_of(f, n->in[a], &sub);
        if (args[a] < 0)
            return -1;
    }
    if (f->n_reached == MAX_REACHED)
        return overflow(f);
    /* A single value (a step count, a flag) is recomputed once per tile, as a scalar: less
     * than a kernel of its own costs. */
    f->reached[f->n_reached] = v;
    f->reached_repeated[f->n_reached++] = n->numel > 1 && !injective(f, m, n);
    return emit(f, n->op, n->dtype, args, 0);
}

static int value_of(fuser *f, int v, const imap *m)
{
    for (int i = 0; i < f->n_memo; i++)
        if (f->memo[i].node == v && memcmp(&f->memo[i].map, m, sizeof *m) == 0)
            return f->memo[i].value;
    int value = loadable(f, v) ? load(f, v, m) : compute(f, v, m);
    if (value >= 0 && f->n_memo < MAX_MEMO)
        f->memo[f->n_memo++] = (memo_entry){v, *m, value};
    return value;
}

/* ---- one kernel --------------------------------------------------------------------------- */
/* From the walk's references to the program's numbering: loads, then instructions. */
static int number(const tg_fused_program *p, int ref)
{
    return ref >= LOAD_REF(0) ? ref - LOAD_REF(0) : p->n_loads + ref;
}

static void finish_program(fuser *f, bool reduce, int op, int result)
{
    tg_fused_program *p = f->k.prog;
    for (int i = 0; i < p->n_instrs; i++)
        for (int a = 0; p->instr[i].op != TG_OP_LEAF && a < tg_op_table[p->instr[i].op].arity;
             a++)
            p->instr[i].arg[a] = number(p, p->instr[i].arg[a]);
    p->ndim = f->ndim;
    memcpy(p->shape, f->shape, sizeof p->shape);
    p->reduce_op = reduce ? op : TG_OP_LEAF;
    p->reduce_mask = f->mask;
    p->result = number(p, result);
}

static bool split(fuser *f, int k, int64_t factor)
{
    if (f->ndim == TG_FUSED_MAX_DIMS)
        return false;
    for (int j = f->ndim; j > k + 1; j--) {
        f->shape[j] = f->shape[j - 1];
        f->scale[j] = f->scale[j - 1];
        f->origin[j] = f->origin[j - 1];
    }
    f->shape[k + 1] = factor;
    f->scale[k + 1] = f->scale[k];
    f->origin[k + 1] = f->origin[k];
    f->shape[k] /= factor;
    f->scale[k] *= factor;
    uint32_t low = f->mask & ((2u << k) - 1), bit = (f->mask >> k) & 1;
    f->mask = low | bit << (k + 1) | (f->mask >> (k + 1)) << (k + 2);
    f->ndim++;
    return true;
}

/* Builds the program of the kernel rooted at v into f->k: 0, or -1 with f->need set. */
static int build_kernel(fuser *f, int v)
{
    const tg_ir_node *r = node(f, v);
    bool reduce = is_reduction(r->op);
    const tg_ir_node *top = reduce ? node(f, r->in[0]) : r;
    f->root = v;
    f->ndim = top->ndim;
    f->mask = reduce ? (uint32_t)r->attr[0] : 0;
    for (int k = 0; k < top->ndim; k++) {
        f->shape[k] = top->shape[k];
        f->scale[k] = 1;
        f->origin[k] = k;
    }
    for (;;) {
        memset(f->k.prog, 0, sizeof *f->k.prog);
        f->k.n_inputs = f->n_memo = f->n_reached = 0;
        f->split_axis = -1;
        f->need = -1;
        imap id;
        memset(&id, 0, sizeof id);
        for (int k = 0; k < f->ndim; k++)
            id.coef[f->origin[k]][k] = f->scale[k];
        int result = reduce ? value_of(f, r->in[0], &id) : compute(f, v, &id);
        if (result >= 0) {
            finish_program(f, reduce, r->op, result);
            return 0;
        }
        if (f->split_axis < 0 || !split(f, f->split_axis, f->split_factor))
            return -1;
    }
}

/* Counts, for the round, which kernels read each node the walk computed. */
static void record_reach(fuser *f, int root)
{
    for (int i = 0; i < f->n_reached; i++) {
        int v = f->reached[i];
        if (f->last_kernel[v] != root) {
            f->last_kernel[v] = root;
            f->n_kernels[v]++;
        }
        f->repeated[v] |= f->reached_repeated[i];
    }
}

/* ---- rounds -------------------------------------------------------------------------------- */
static void initial_marks(fuser *f)
{
    tg_graph *g = f->g;
    for (int v = 0; v < g->n; v++) {
        const tg_ir_node *n = node(f, v);
        if (n->op == TG_OP_LEAF || is_reduction(n->op) || !fusible(n->op))
            f->mat[v] = true;
        if (n->op != TG_OP_LEAF && !fusible(n->op))
            for (int k = 0; k < n->n_in; k++)
                mark(f, n->in[k]);
    }
    for (int i = 0; i < g->n_outputs; i++)
        mark(f, g->outputs[i]);
    for (int i = 0; i < g->n_updates; i++)
        mark(f, g->update_value[i]);
}

/* Builds every kernel; a kernel that needs a node materialized marks it. Returns the number
 * of nodes marked, or a negative status. */
static int build_all(fuser *f, kernel *kernels)
{
    int marked = 0;
    for (int v = 0; v < f->g->n; v++) {
        f->n_kernels[v] = 0;
        f->last_kernel[v] = -1;
        f->repeated[v] = false;
    }
    for (int v = 0; v < f->g->n; v++) {
        if (!is_kernel_root(f, v))
            continue;
        f->k = kernels[v];
        if (!f->k.prog && !(f->k.prog = tg_fused_program_new()))
            return tg_fail(TG_ERR_NOMEM, "fuse: out of memory");
        int status = build_kernel(f, v);
        kernels[v] = f->k;
        if (status == 0) {
            record_reach(f, v);
        } else if (f->need >= 0 && mark(f, f->need)) {
            marked++;
        } else {
            return tg_fail(TG_ERR_ARG, "fuse: no program fits the kernel of node %d", v);
        }
    }
    return marked;
}

/* Whether operand u of n (an elementwise op's or an expand's) repeats its elements in the
 * middle: an axis of size 1 that n widens, between two axes u keeps (a pooled value over
 * its window: [N, C, 1, H, W] -> [N, C, 4, H, W]). A kernel reads such a view through a
 * gather that fills every point, so it costs what its points do. Repeats on the outside
 * (a bias over the rows) are copies of whole rows, and repeats on the inside (a
 * per-channel scale) are a scalar per tile or runs of one value: those cost what the
 * operand's own bytes do. */
static bool repeats_inside(const tg_ir_node *n, const tg_ir_node *u)
{
    if (u->numel <= 1 || u->numel >= n->numel)
        return false;
    int lead = n->ndim - u->ndim;
    bool kept_before = false, widened_between = false;
    for (int a = 0; a < u->ndim; a++) {
        if (u->shape[a] > 1 && widened_between)
            return true;
        if (u->shape[a] > 1)
            kept_before = true;
        else if (n->shape[a + lead] > 1 && kept_before)
            widened_between = true;
    }
    return false;
}

/* What recomputing v costs against materializing it: the ops it repeats and the bytes of
 * the materialized values it reads, each node counted once. For the interpreter, one read
 * through repeats inside (repeats_inside) counts the bytes of the points it fills, `repeat`
 * times its own: it gathers such a value point by point through an index table. Compiled
 * (f->native), the loop computes each point's index and reads the value's cache lines once,
 * so the value costs its own bytes: batch norm's backward after a max pool then recomputes
 * the gradient at the ReLU's output in its input gradient's kernel (or the weight
 * gradient's prologue) instead of writing it beside its sums and reading it back (the
 * reference model, 1 thread, Zen 5: 6737 -> 7091 images/s, 3 alternating runs).
 * Values stamped `loaded` cost nothing: the kernel reads them anyway. */
static void recompute_cost(fuser *f, int v, size_t repeat, int loaded, int *ops, size_t *bytes)
{
    if (f->stamp[v] == f->stamp_now)
        return;
    bool read_anyway = f->stamp[v] == loaded;
    f->stamp[v] = f->stamp_now;
    double c;
    if (loadable(f, v)) {
        if (!read_anyway && !tg_ir_const_value(f->g, v, &c))
            *bytes += value_bytes(node(f, v)) * repeat;
        return;
    }
    const tg_ir_node *n = node(f, v);
    *ops += tg_ir_is_elementwise(n->op);
    bool broadcasts = tg_ir_is_elementwise(n->op) || n->op == TG_OP_EXPAND;
    for (int k = 0; k < n->n_in; k++) {
        const tg_ir_node *u = node(f, n->in[k]);
        size_t r = repeat;
        if (broadcasts && !f->native && repeats_inside(n, u))
            r *= (size_t)(n->numel / u->numel);
        recompute_cost(f, n->in[k], r, loaded, ops, bytes);
    }
}

/* Stamps what a kernel's walk from u reaches without going through v: the nodes it
 * computes and the materialized values it loads. Sets *reaches_v when it meets v. */
static void stamp_besides(fuser *f, int u, int v, bool *reaches_v)
{
    if (u == v) {
        *reaches_v = true;
        return;
    }
    if (f->stamp[u] == f->stamp_now)
        return;
    f->stamp[u] = f->stamp_now;
    if (loadable(f, u))
        return;
    for (int k = 0; k < node(f, u)->n_in; k++)
        stamp_besides(f, node(f, u)->in[k], v, reaches_v);
}

/* The bytes that the kernels computing v load only for it, summed over those kernels: what
 * they would no longer read if v were materialized. A kernel that loads one of v's sources
 * for its other values anyway (batch norm's input gradient reads x beside the ReLU's
 * gradient, which recomputes its mask from x) pays nothing for that one. Sets *k to how many
 * kernels compute v. */
static size_t recompute_loads(fuser *f, int v, int *k)
{
    size_t total = 0;
    *k = 0;
    for (int r = 0; r < f->g->n; r++) {
        if (!is_kernel_root(f, r))
            continue;
        bool reaches_v = false;
        int loaded = ++f->stamp_now;
        for (int i = 0; i < node(f, r)->n_in; i++)
            stamp_besides(f, node(f, r)->in[i], v, &reaches_v);
        if (!reaches_v)
            continue;
        ++*k;
        int ops = 0;
        f->stamp_now++;
        recompute_cost(f, v, 1, loaded, &ops, &total);
    }
    return total;
}

/* k kernels reading v: recomputing reads its sources in each of them; materializing reads
 * them once, writes v and reads it k times. A single value costs nothing to read either
 * way. `exact`: count what the kernels that compute v now would load only for it (else
 * assume each reads all of v's sources only for it, as k hypothetical readers would). */
static bool costly_when_shared(fuser *f, int v, int k, bool exact)
{
    if (k < 2)
        return false;
    int ops = 0;
    size_t bytes = 0;
    f->stamp_now++;
    recompute_cost(f, v, 1, -1, &ops, &bytes);
    if (ops > RECOMPUTE_MAX_OPS)
        return true;
    if (node(f, v)->numel <= 1)
        return false;
    size_t own = value_bytes(node(f, v)), recomputed = (size_t)k * bytes;
    if (exact)
        recomputed = recompute_loads(f, v, &k);
    return recomputed > bytes + (size_t)(k + 1) * own;
}

/* Flags the nodes under v (not v) that kernels compute through it. */
static void flag_below(fuser *f, int v, bool *flag)
{
    for (int k = 0; k < node(f, v)->n_in; k++) {
        int u = node(f, v)->in[k];
        if (flag[u] || loadable(f, u))
            continue;
        flag[u] = true;
        flag_below(f, u, flag);
    }
}

/* Whether a candidate lies under v (not v) among the nodes kernels compute through it. */
static bool candidate_below(fuser *f, int v, const bool *candidate)
{
    for (int k = 0; k < node(f, v)->n_in; k++) {
        int u = node(f, v)->in[k];
        if (f->stamp[u] == f->stamp_now || loadable(f, u))
            continue;
        f->stamp[u] = f->stamp_now;
        if (candidate[u] || candidate_below(f, u, candidate))
            return true;
    }
    return false;
}

/* Flags the candidates under u that materializing u would make cheap. Every kernel that
 * computes u computes them through it, so once u is written they are computed by the
 * kernels that read them some other way and by u's own: without this, a chain whose cost
 * is a gather at its bottom (a pooled value repeated over its window) would be written
 * value by value, bottom first, where writing its top once is enough. */
static void relieve_below(fuser *f, int u, const bool *candidate, bool *below, bool *relieved)
{
    memset(below, 0, ((size_t)f->g->n + 1) * sizeof *below);
    flag_below(f, u, below);
    for (int w = 0; w < f->g->n; w++)
        if (below[w] && candidate[w] &&
            !costly_when_shared(f, w, f->n_kernels[w] - f->n_kernels[u] + 1, false))
            relieved[w] = true;
}

/* Materializes the values that break one rule. Repeated reads go topmost first (under a
 * value read through an expand, everything is read through it too, and is fine once it is
 * materialized); shared values go bottommost first (materializing one makes those above it
 * cheaper to recompute), leaving out those a costly value above them relieves. Returns how
 * many, or a negative status. */
static int materialize(fuser *f, bool shared_rule)
{
    int n = f->g->n, marked = 0;
    bool *flags = calloc(4 * ((size_t)n + 1), sizeof *flags);
    if (!flags)
        return tg_fail(TG_ERR_NOMEM, "fuse: out of memory");
    bool *candidate = flags, *skip = flags + n + 1, *below = skip + n + 1,
         *relieved = below + n + 1;
    for (int v = 0; v < n; v++)
        candidate[v] = !f->mat[v] && f->n_kernels[v] > 0 &&
                       (shared_rule ? costly_when_shared(f, v, f->n_kernels[v], true)
                                    : f->repeated[v]);
    if (shared_rule) {
        for (int u = 0; u < n; u++)
            if (candidate[u])
                relieve_below(f, u, candidate, below, relieved);
        for (int v = 0; v < n; v++)
            candidate[v] &= !relieved[v];
    }
    for (int v = 0; v < n; v++) {
        if (!candidate[v])
            continue;
        if (shared_rule) {
            f->stamp_now++;
            skip[v] = candidate_below(f, v, candidate);
        } else {
            flag_below(f, v, skip);
        }
    }
    for (int v = 0; v < n; v++) {
        if (candidate[v] && !skip[v]) {
            f->mat[v] = true;
            marked++;
        }
    }
    free(flags);
    return marked;
}

/* ---- the new nodes -------------------------------------------------------------------------- */
/* Input j may be overwritten by the output when every load of it reads the element the
 * output writes at the same point. */
static uint32_t inplace_inputs(const tg_graph *g, const tg_ir_node *r, const kernel *k)
{
    const tg_fused_program *p = k->prog;
    if (p->reduce_op != TG_OP_LEAF)
        return 0;
    int64_t own[TG_FUSED_MAX_DIMS];
    tg_contiguous_strides(p->ndim, p->shape, own);
    uint32_t bits = 0;
    for (int j = 0; j < k->n_inputs; j++) {
        const tg_ir_node *x = &g->nodes[k->inputs[j]];
        bool same = x->dtype == r->dtype && tg_shape_equal(x->ndim, x->shape, r->ndim, r->shape);
        for (int l = 0; l < p->n_loads && same; l++) {
            const tg_fused_load *ld = &p->load[l];
            if (ld->input != j)
                continue;
            same = ld->offset == 0;
            for (int d = 0; d < p->ndim && same; d++)
                same = p->shape[d] == 1 || ld->stride[d] == own[d];
        }
        bits |= (uint32_t)same << j;
    }
    return bits;
}

static int add_kernels(tg_graph *g, kernel *kernels)
{
    int n = g->n;
    int *fused = malloc(((size_t)n + 1) * sizeof *fused);
    if (!fused)
        return tg_fail(TG_ERR_NOMEM, "fuse: out of memory");
    for (int v = 0; v < n; v++) {
        fused[v] = -1;
        if (!kernels[v].prog)
            continue;
        tg_ir_node proto = g->nodes[v];
        tg_ir_node x = {.op = TG_PLAN_OP_FUSED, .dtype = proto.dtype, .ndim = proto.ndim,
                        .n_in = kernels[v].n_inputs, .label = proto.label,
                        .tape_id = SIZE_MAX, .payload = kernels[v].prog};
        memcpy(x.shape, proto.shape, sizeof x.shape);
        memcpy(x.in, kernels[v].inputs, sizeof x.in);
        x.inplace_inputs = inplace_inputs(g, &proto, &kernels[v]);
        fused[v] = tg_graph_add(g, &x);
        if (fused[v] < 0) {
            free(fused);
            return tg_fail(TG_ERR_NOMEM, "fuse: out of memory");
        }
        kernels[v].prog = NULL; /* the graph owns it now */
    }
    for (int v = 0; v < n; v++)
        if (fused[v] >= 0)
            tg_graph_replace(g, v, fused[v]);
    free(fused);
    return TG_OK;
}

/* ---- sums of linear combinations -------------------------------------------------------- */
static tg_ir_node *GN(tg_graph *g, int i) { return &g->nodes[i]; }

static bool same_shape_type(tg_graph *g, int a, int b)
{
    return GN(g, a)->dtype == GN(g, b)->dtype &&
           tg_shape_equal(GN(g, a)->ndim, GN(g, a)->shape, GN(g, b)->ndim, GN(g, b)->shape);
}

static int add_like(tg_graph *g, int op, int like, int n_in, const int *in)
{
    int64_t shape[TG_MAX_DIMS];
    memcpy(shape, GN(g, like)->shape, sizeof shape);
    return tg_graph_add_op(g, op, GN(g, like)->dtype, GN(g, like)->ndim, shape, n_in, in);
}

/* sum_R(u) shaped like the sum i (keeping its dims): the node that already computes it
 * (beta's gradient is sum(g)), or a new one. */
static int sum_like(tg_graph *g, int i, int u)
{
    for (int v = 0; v < g->n; v++)
        if (GN(g, v)->op == TG_OP_SUM && GN(g, v)->in[0] == u && v != i &&
            GN(g, v)->attr[0] == GN(g, i)->attr[0] && same_shape_type(g, v, i))
            return v;
    int r = add_like(g, TG_OP_SUM, i, 1, &u);
    if (r >= 0)
        GN(g, r)->attr[0] = GN(g, i)->attr[0];
    return r;
}

/* k, or the value an expand of k broadcasts, when it is one value along every reduced axis
 * of the sum i: its shape then broadcasts to the sum's. -1 otherwise. */
static int constant_along(tg_graph *g, int i, int k)
{
    if (GN(g, k)->op == TG_OP_EXPAND)
        k = GN(g, k)->in[0];
    const tg_ir_node *x = GN(g, i), *c = GN(g, k);
    int lead = x->ndim - c->ndim;
    if (lead < 0)
        return -1;
    for (int d = 0; d < c->ndim; d++) {
        bool reduced = (x->attr[0] >> (d + lead)) & 1;
        if (c->shape[d] != 1 && (reduced || c->shape[d] != x->shape[d + lead]))
            return -1;
    }
    return k;
}

/* A sum of a linear combination -> the combination of sums:
 *   sum(-u) -> -sum(u); sum(u +- v) -> sum(u) +- sum(v) (u, v of the full shape);
 *   sum(u * k) -> sum(u) * k (k one value along the reduced axes: a per-channel scale).
 * Batch norm's backward sums sum(-(g * s + 2 c * (x - mean))) this way become s * sum(g)
 * + 2 c * sum(x - mean): sums that CSE finds computed already (sum(g) is beta's gradient)
 * or that fusion folds in the same pass as a sibling (sum((x - mean)^2)), instead of one
 * more pass over g and x. This reassociates the sum (as the fused kernels' tiles do). It
 * runs here, before kernels are chosen, rather than in simplify: it pays only with fusion
 * (the sibling sums fold in one pass) and with the sums it finds already computed. */
static int sum_of_linear(tg_graph *g, int i)
{
    tg_ir_node *x = GN(g, i);
    if (x->op != TG_OP_SUM || GN(g, x->in[0])->ndim != x->ndim)
        return -1;
    int e = x->in[0];
    const tg_ir_node *t = GN(g, e);
    if (t->op == TG_OP_NEG) {
        int s = sum_like(g, i, t->in[0]);
        return s < 0 ? -1 : add_like(g, TG_OP_NEG, i, 1, &s);
    }
    if (t->op == TG_OP_ADD || t->op == TG_OP_SUB) {
        int u = t->in[0], v = t->in[1];
        if (!same_shape_type(g, u, e) || !same_shape_type(g, v, e))
            return -1;
        int su = sum_like(g, i, u), sv = sum_like(g, i, v);
        return su < 0 || sv < 0 ? -1 : add_like(g, GN(g, e)->op, i, 2, (const int[]){su, sv});
    }
    if (t->op == TG_OP_MUL) {
        for (int side = 0; side < 2; side++) {
            int u = t->in[side], k = constant_along(g, i, t->in[1 - side]);
            if (k < 0 || !same_shape_type(g, u, e))
                continue;
            int su = sum_like(g, i, u);
            return su < 0 ? -1 : add_like(g, TG_OP_MUL, i, 2, (const int[]){su, k});
        }
    }
    return -1;
}


/* Rewrites every live sum of a linear combination, level by level, then drops what died. */
static int distribute_sums(tg_graph *g)
{
    if (g->keep_dead) /* dead nodes would be built as kernels */
        return TG_OK;
    for (int round = 0; round < 8; round++) {
        bool changed = false;
        int end = g->n;
        int *uses = tg_graph_use_counts(g);
        if (!uses)
            return tg_fail(TG_ERR_NOMEM, "fuse: out of memory");
        for (int i = 0; i < end; i++) {
            if (uses[i] == 0 || GN(g, i)->op != TG_OP_SUM)
                continue;
            int with = sum_of_linear(g, i);
            if (with >= 0 && with != i) {
                tg_graph_replace(g, i, with);
                changed = true;
            }
        }
        free(uses);
        int status = changed ? tg_graph_compact(g) : TG_OK;
        if (status != TG_OK || !changed)
            return status;
    }
    return TG_OK;
}

/* ---- sibling reductions: one pass over the data for several sums ------------------------- */
/* Two reductions over the same iteration space and axes, neither needing the other (batch
 * norm's backward: sum(g) for beta and sum(g * (x - mean)) for gamma), become one kernel
 * that folds both values (tg_fused_program.more): the data they share is read once. The
 * merged node's output holds the results one block after another; every kernel that read
 * one of them (directly or through a reshape) now loads its block of the merged node. Only
 * FUSED reductions whose every reader is a FUSED kernel are merged: the fusible-op lists
 * decide, and any other op (a plan op this pass does not know) keeps its inputs as they
 * are. */
#define MAX_SIBLINGS (1 + TG_FUSED_MAX_MORE)

static bool is_fused_reduction(const tg_graph *g, int v)
{
    const tg_ir_node *n = &g->nodes[v];
    if (n->op != TG_PLAN_OP_FUSED || !n->payload)
        return false;
    const tg_fused_program *p = n->payload;
    return p->reduce_op != TG_OP_LEAF && p->n_more == 0;
}

bool tg_fuse_is_root(const tg_graph *g, int v)
{
    for (int i = 0; i < g->n_outputs; i++)
        if (g->outputs[i] == v)
            return true;
    for (int i = 0; i < g->n_updates; i++)
        if (g->update_value[i] == v || g->update_target[i] == v)
            return true;
    return false;
}

/* Whether every reader of v, and of a reshape of it, is a FUSED kernel; and, unless
 * roots_allowed, v and those reshapes are no roots. */
static bool read_by_kernels(const tg_graph *g, int v, bool roots_allowed)
{
    if (!roots_allowed && tg_fuse_is_root(g, v))
        return false;
    for (int u = 0; u < g->n; u++) {
        const tg_ir_node *n = &g->nodes[u];
        for (int k = 0; k < n->n_in; k++) {
            if (n->in[k] != v)
                continue;
            if (n->op == TG_OP_RESHAPE && !read_by_kernels(g, u, roots_allowed))
                return false;
            if (n->op != TG_OP_RESHAPE && n->op != TG_PLAN_OP_FUSED)
                return false;
        }
    }
    return true;
}

bool tg_fuse_read_by_kernels_only(const tg_graph *g, int v) { return read_by_kernels(g, v, false); }

bool tg_fuse_read_by_kernels_or_roots(const tg_graph *g, int v)
{
    return read_by_kernels(g, v, true);
}

/* A FUSED copy of root v that becomes the root in its place (v is then read by kernels
 * only, and may merge); the copy's index, or a negative status. */
static int copy_root(tg_graph *g, int v)
{
    tg_fused_program *p = tg_fused_program_new();
    if (!p)
        return tg_fail(TG_ERR_NOMEM, "fuse: out of memory");
    const tg_ir_node *n = &g->nodes[v];
    p->ndim = n->ndim;
    p->reduce_op = TG_OP_LEAF;
    p->n_loads = 1;
    p->load[0] = (tg_fused_load){.input = 0, .dtype = n->dtype};
    int64_t run = 1;
    for (int k = n->ndim - 1; k >= 0; k--) {
        p->shape[k] = n->shape[k];
        p->load[0].stride[k] = run;
        run *= n->shape[k];
    }
    tg_ir_node c = {.op = TG_PLAN_OP_FUSED, .dtype = n->dtype, .ndim = n->ndim, .n_in = 1,
                    .in = {v}, .label = n->label, .tape_id = SIZE_MAX, .payload = p};
    memcpy(c.shape, n->shape, sizeof c.shape);
    int at = tg_graph_add(g, &c);
    if (at < 0) {
        tg_fused_release(p);
        return tg_fail(TG_ERR_NOMEM, "fuse: out of memory");
    }
    for (int i = 0; i < g->n_outputs; i++)
        if (g->outputs[i] == v)
            g->outputs[i] = at;
    for (int i = 0; i < g->n_updates; i++)
        if (g->update_value[i] == v)
            g->update_value[i] = at;
    return at;
}

int tg_fuse_copy_roots(tg_graph *g, int v)
{
    if (tg_fuse_is_root(g, v)) {
        int status = copy_root(g, v);
        if (status < 0)
            return status;
    }
    for (int u = 0; u < g->n; u++)
        for (int k = 0; k < g->nodes[u].n_in; k++)
            if (g->nodes[u].in[k] == v && g->nodes[u].op == TG_OP_RESHAPE) {
                int status = tg_fuse_copy_roots(g, u);
                if (status < 0)
                    return status;
            }
    return TG_OK;
}

bool tg_fuse_needs(const tg_graph *g, int b, int a, char *seen)
{
    if (b == a)
        return true;
    if (b < a || seen[b])
        return false;
    seen[b] = 1;
    for (int k = 0; k < g->nodes[b].n_in; k++)
        if (tg_fuse_needs(g, g->nodes[b].in[k], a, seen))
            return true;
    return false;
}

static bool same_space(const tg_ir_node *x, const tg_ir_node *y)
{
    const tg_fused_program *p = x->payload, *q = y->payload;
    return x->dtype == y->dtype && x->numel == y->numel && p->ndim == q->ndim &&
           p->reduce_op == q->reduce_op && p->reduce_mask == q->reduce_mask &&
           memcmp(p->shape, q->shape, (size_t)p->ndim * sizeof *p->shape) == 0;
}

/* Whether two instructions of one program compute the same value: the same op and dtype on
 * the same operands, or a constant of the same bits. */
static bool same_instr(const tg_fused_instr *a, const tg_fused_instr *b)
{
    if (a->op != b->op || a->dtype != b->dtype)
        return false;
    if (a->op == TG_OP_LEAF)
        return memcmp(&a->value, &b->value, sizeof a->value) == 0;
    for (int k = 0; k < tg_op_table[a->op].arity; k++)
        if (a->arg[k] != b->arg[k])
            return false;
    return true;
}

/* Appends q's program (node y) to p's (node x's inputs in inputs[0 .. *n_inputs)): its
 * inputs, loads (shared ones once) and instructions; q's result becomes p's next one.
 * False when a limit would be passed (p is then unusable). */
static bool append_program(tg_fused_program *p, int *inputs, int *n_inputs,
                           const tg_fused_program *q, const tg_ir_node *y)
{
    int load_of[TG_FUSED_MAX_LOADS], added = 0, n_loads = p->n_loads;
    tg_fused_load extra[TG_FUSED_MAX_LOADS];
    for (int l = 0; l < q->n_loads; l++) {
        tg_fused_load ld = q->load[l];
        int slot = 0;
        while (slot < *n_inputs && inputs[slot] != y->in[ld.input])
            slot++;
        if (slot == *n_inputs) {
            if (*n_inputs == TG_IR_MAX_IN)
                return false;
            inputs[(*n_inputs)++] = y->in[ld.input];
        }
        ld.input = slot;
        load_of[l] = -1;
        for (int k = 0; k < p->n_loads && load_of[l] < 0; k++)
            if (memcmp(&p->load[k], &ld, sizeof ld) == 0)
                load_of[l] = k;
        for (int k = 0; k < added && load_of[l] < 0; k++)
            if (memcmp(&extra[k], &ld, sizeof ld) == 0)
                load_of[l] = n_loads + k;
        if (load_of[l] < 0) {
            if (n_loads + added == TG_FUSED_MAX_LOADS)
                return false;
            extra[added] = ld;
            load_of[l] = n_loads + added++;
        }
    }
    if (p->n_instrs + q->n_instrs > TG_FUSED_MAX_INSTRS || p->n_more == TG_FUSED_MAX_MORE)
        return false;
    /* p's instructions move up by the loads added; q's follow them. */
    int shift = added;
    for (int i = 0; i < p->n_instrs; i++)
        for (int a = 0; p->instr[i].op != TG_OP_LEAF && a < tg_op_table[p->instr[i].op].arity; a++)
            if (p->instr[i].arg[a] >= n_loads)
                p->instr[i].arg[a] += shift;
    if (p->result >= n_loads)
        p->result += shift;
    for (int m = 0; m < p->n_more; m++)
        if (p->more[m] >= n_loads)
            p->more[m] += shift;
    for (int k = 0; k < added; k++)
        p->load[n_loads + k] = extra[k];
    p->n_loads = n_loads + added;
    /* q's instructions that p already has (siblings recompute the same values: batch norm's
     * sums both recompute the ReLU's gradient) are not repeated. */
    int value_of[TG_FUSED_MAX_LOADS + TG_FUSED_MAX_INSTRS];
    memcpy(value_of, load_of, (size_t)q->n_loads * sizeof *load_of);
    for (int i = 0; i < q->n_instrs; i++) {
        tg_fused_instr in = q->instr[i];
        for (int a = 0; in.op != TG_OP_LEAF && a < tg_op_table[in.op].arity; a++)
            in.arg[a] = value_of[in.arg[a]];
        int same = 0;
        while (same < p->n_instrs && !same_instr(&p->instr[same], &in))
            same++;
        if (same == p->n_instrs)
            p->instr[p->n_instrs++] = in;
        value_of[q->n_loads + i] = p->n_loads + same;
    }
    p->more[p->n_more++] = value_of[q->result];
    return true;
}

/* Points every kernel that read `old` (directly or through a reshape) at block `block` of
 * `merged`. */
void tg_fuse_redirect_readers(tg_graph *g, int old, int merged, int64_t block)
{
    for (int u = 0; u < g->n; u++) {
        tg_ir_node *n = &g->nodes[u];
        for (int k = 0; k < n->n_in; k++) {
            if (n->in[k] != old)
                continue;
            if (n->op == TG_OP_RESHAPE) {
                tg_fuse_redirect_readers(g, u, merged, block);
                continue;
            }
            tg_fused_program *p = n->payload;
            n->in[k] = merged;
            /* The merged node is not old's shape, but a kernel that wrote over old may write
             * over the merged node's first block: its output is old's size, so it overwrites
             * that block and nothing after it. */
            if (block != 0)
                n->inplace_inputs &= ~(1u << k);
            for (int l = 0; l < p->n_loads; l++)
                if (p->load[l].input == k)
                    p->load[l].offset += block;
        }
    }
}

static int merge_siblings(tg_graph *g)
{
    int status = tg_graph_compact(g);
    if (status != TG_OK || g->keep_dead) /* dead nodes would count as readers */
        return status;
    int n = g->n;
    /* Merged nodes are appended (at most n / 2 of them) with copies of roots (at most one
     * per node), and readers already redirected to them lead the search for dependencies
     * there: `seen` covers them too. */
    char *seen = malloc(3 * (size_t)n + 3);
    bool *taken = calloc((size_t)n + 1, sizeof *taken);
    if (!seen || !taken) {
        free(seen);
        free(taken);
        return tg_fail(TG_ERR_NOMEM, "fuse: out of memory");
    }
    for (int a = 0; a < n && status == TG_OK; a++) {
        if (taken[a] || !is_fused_reduction(g, a) || !tg_fuse_read_by_kernels_or_roots(g, a))
            continue;
        int group[MAX_SIBLINGS] = {a}, count = 1;
        tg_fused_program *p = tg_fused_program_new();
        if (!p) {
            status = tg_fail(TG_ERR_NOMEM, "fuse: out of memory");
            break;
        }
        *p = *(const tg_fused_program *)g->nodes[a].payload;
        p->exec = NULL;
        int inputs[TG_IR_MAX_IN], n_inputs = g->nodes[a].n_in;
        memcpy(inputs, g->nodes[a].in, sizeof inputs);
        for (int b = a + 1; b < n && count < MAX_SIBLINGS; b++) {
            if (taken[b] || !is_fused_reduction(g, b) || !same_space(&g->nodes[a], &g->nodes[b]) ||
                !tg_fuse_read_by_kernels_or_roots(g, b))
                continue;
            bool independent = true;
            for (int i = 0; i < count && independent; i++) {
                memset(seen, 0, (size_t)g->n + 1);
                independent = !tg_fuse_needs(g, b, group[i], seen);
            }
            tg_fused_program trial = *p;
            int trial_inputs[TG_IR_MAX_IN], trial_n = n_inputs;
            memcpy(trial_inputs, inputs, sizeof inputs);
            if (!independent || !append_program(&trial, trial_inputs, &trial_n,
                                                g->nodes[b].payload, &g->nodes[b]))
                continue;
            *p = trial;
            memcpy(inputs, trial_inputs, sizeof inputs);
            n_inputs = trial_n;
            group[count++] = b;
        }
        if (count == 1) {
            free(p);
            continue;
        }
        const tg_ir_node *first = &g->nodes[a];
        tg_ir_node x = {.op = TG_PLAN_OP_FUSED, .dtype = first->dtype, .ndim = 1,
                        .shape = {count * first->numel}, .n_in = n_inputs,
                        .label = first->label, .tape_id = SIZE_MAX, .payload = p};
        memcpy(x.in, inputs, sizeof x.in);
        int merged = tg_graph_add(g, &x);
        if (merged < 0) {
            tg_fused_release(p);
            status = tg_fail(TG_ERR_NOMEM, "fuse: out of memory");
            break;
        }
        for (int i = 0; i < count && status == TG_OK; i++) {
            taken[group[i]] = true;
            status = tg_fuse_copy_roots(g, group[i]);
            tg_fuse_redirect_readers(g, group[i], merged, i * g->nodes[group[i]].numel);
        }
    }
    free(seen);
    free(taken);
    return status;
}

int tg_pass_fuse(tg_graph *g, const tg_pass_ctx *ctx)
{
    int distributed = distribute_sums(g);
    if (distributed != TG_OK)
        return distributed;
    size_t n = (size_t)g->n + 1;
    fuser f = {.g = g, .native = ctx && ctx->native};
    f.mat = calloc(n, sizeof *f.mat);
    f.repeated = calloc(n, sizeof *f.repeated);
    f.n_kernels = calloc(n, sizeof *f.n_kernels);
    f.last_kernel = calloc(n, sizeof *f.last_kernel);
    f.stamp = calloc(n, sizeof *f.stamp);
    f.memo = malloc(MAX_MEMO * sizeof *f.memo);
    kernel *kernels = calloc(n, sizeof *kernels);
    int status = TG_OK;
    if (!f.mat || !f.repeated || !f.n_kernels || !f.last_kernel || !f.stamp || !f.memo ||
        !kernels) {
        status = tg_fail(TG_ERR_NOMEM, "fuse: out of memory");
        goto done;
    }
    initial_marks(&f);
    /* Every round marks at least one more node, so this ends. */
    for (;;) {
        int marked = build_all(&f, kernels);
        if (marked == 0)
            marked = materialize(&f, false);
        if (marked == 0)
            marked = materialize(&f, true);
        if (marked < 0) {
            status = marked;
            goto done;
        }
        if (marked == 0)
            break;
    }
    status = add_kernels(g, kernels);
    if (status == TG_OK)
        status = tg_fuse_join_tie_counts(g);
    if (status == TG_OK)
        status = merge_siblings(g);
done:
    for (size_t v = 0; kernels && v < n; v++)
        tg_fused_release(kernels[v].prog);
    free(kernels);
    free(f.mat);
    free(f.repeated);
    free(f.n_kernels);
    free(f.last_kernel);
    free(f.stamp);
    free(f.memo);
    return status;
}
