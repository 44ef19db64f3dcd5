/* Stores fused into reductions: an elementwise kernel E whose values a reduction R folds
 * point by point runs inside R. The merged kernel computes E's value at every point, stores
 * it (E's other readers still load it) and folds R's sums from it while it is in a register
 * or in L1. R no longer reads E's values, nor again the inputs the two share, from memory.
 *
 * The case it is for is batch norm's backward: the gradient of its output, dz (a ReLU's and
 * a max pool's gradients spread over the windows), is written once and read by the sums
 * sum(dz) and sum(dz (x - mean)) and by the input gradient's kernel. The sums' kernel read
 * dz and x again, a full pass over two tensors; merged, they fold as dz is made.
 *
 * E and R merge when
 *   - E is a FUSED kernel without a reduction, R a FUSED reduction (with sibling sums or
 *     not, but no tie counts), of the same dtype, every reader of each a FUSED kernel
 *     (their loads are moved to the merged node's blocks); E is no root, while R may be
 *     one (a gradient the user reads): a FUSED copy of its few outputs becomes the root;
 *   - R reads E at the point it is at: offset 0 and the row-major strides of R's own
 *     iteration space, which covers E's elements exactly, so both walk E's elements in the
 *     same order (E's space and R's may split axes differently: the merged space is the
 *     finer of the two);
 *   - R needs E through no other kernel (the merged node would then wait for itself), and
 *     the merged program fits the program limits.
 * The merged node's output is E's values, then R's blocks. R folds in its own order, so
 * results do not change at all. */
#include "passes.h"
#include "fuse_internal.h"
#include "plan_ops.h"
#include "../kernels/fused.h"

#include <stdlib.h>
#include <string.h>

/* A reduction's threads take its outputs: one with a single output (a loss) would run E on
 * one thread, where E ran on all. */
#define MIN_OUTPUTS 2

static const tg_fused_program *program(const tg_graph *g, int v)
{
    const tg_ir_node *n = &g->nodes[v];
    return n->op == TG_PLAN_OP_FUSED ? n->payload : NULL;
}

/* The node whose buffer v is: v itself, or what a chain of reshapes views. */
static int source(const tg_graph *g, int v)
{
    while (g->nodes[v].op == TG_OP_RESHAPE)
        v = g->nodes[v].in[0];
    return v;
}

/* ---- iteration spaces --------------------------------------------------------------------- */
/* A space's axes without the size-1 ones, each with the axis of the program it came from. */
typedef struct {
    int n;
    int64_t size[TG_FUSED_MAX_DIMS];
    int from[TG_FUSED_MAX_DIMS];
} axes;

static void nontrivial(const tg_fused_program *p, axes *a)
{
    a->n = 0;
    for (int k = 0; k < p->ndim; k++)
        if (p->shape[k] != 1) {
            a->size[a->n] = p->shape[k];
            a->from[a->n++] = k;
        }
}

/* The coarsest space both a and b split (row-major, the same points in the same order):
 * its axes end where an axis of either ends. False when there is none within the limits. */
static bool finer_space(const axes *a, const axes *b, int64_t *shape, int *ndim)
{
    int i = a->n - 1, j = b->n - 1, n = 0;
    int64_t rev[2 * TG_FUSED_MAX_DIMS];
    int64_t left_a = i >= 0 ? a->size[i] : 1, left_b = j >= 0 ? b->size[j] : 1;
    while (i >= 0 && j >= 0) {
        int64_t step = left_a < left_b ? left_a : left_b;
        if (left_a % step || left_b % step || n == TG_FUSED_MAX_DIMS)
            return false;
        rev[n++] = step;
        left_a /= step;
        left_b /= step;
        if (left_a == 1 && --i >= 0)
            left_a = a->size[i];
        if (left_b == 1 && --j >= 0)
            left_b = b->size[j];
    }
    if (i >= 0 || j >= 0 || n == 0)
        return false;
    for (int k = 0; k < n; k++)
        shape[k] = rev[n - 1 - k];
    *ndim = n;
    return true;
}

/* Where a program's axes go in the finer space: axis from[k] of a covers fine axes
 * first[k] .. last[k]. */
typedef struct {
    int first[TG_FUSED_MAX_DIMS], last[TG_FUSED_MAX_DIMS];
} refinement;

static void refine(const axes *a, const int64_t *shape, int ndim, refinement *r)
{
    int f = ndim - 1;
    for (int k = a->n - 1; k >= 0; k--) {
        r->last[k] = f;
        for (int64_t left = a->size[k]; left > 1; left /= shape[f--]) {
        }
        r->first[k] = f + 1;
    }
}

/* p's strides (per program axis) over the finer space. */
static void fine_strides(const axes *a, const refinement *r, const int64_t *shape,
                         const int64_t *stride, int64_t *out)
{
    memset(out, 0, (size_t)TG_FUSED_MAX_DIMS * sizeof *out);
    for (int k = 0; k < a->n; k++) {
        int64_t s = stride[a->from[k]];
        for (int f = r->last[k]; f >= r->first[k]; f--) {
            out[f] = s;
            s *= shape[f];
        }
    }
}

/* Whether load l of R reads its input at the point it is at, row-major over R's space. */
static bool reads_in_order(const tg_fused_program *p, const tg_fused_load *ld)
{
    if (ld->offset != 0)
        return false;
    int64_t run = 1;
    for (int k = p->ndim - 1; k >= 0; k--) {
        if (p->shape[k] != 1 && ld->stride[k] != run)
            return false;
        run *= p->shape[k];
    }
    return true;
}

/* ---- merging ------------------------------------------------------------------------------ */
typedef struct {
    tg_fused_program *p; /* the merged program, being built */
    int inputs[TG_IR_MAX_IN], n_inputs;
} merged;

static int input_slot(merged *m, int node)
{
    for (int s = 0; s < m->n_inputs; s++)
        if (m->inputs[s] == node)
            return s;
    if (m->n_inputs == TG_IR_MAX_IN)
        return -1;
    m->inputs[m->n_inputs] = node;
    return m->n_inputs++;
}

/* Adds a load (shared ones once); its value, or -1 past a limit. */
static int add_load(merged *m, const tg_fused_load *ld)
{
    tg_fused_program *p = m->p;
    for (int l = 0; l < p->n_loads; l++)
        if (memcmp(&p->load[l], ld, sizeof *ld) == 0)
            return l;
    if (p->n_loads == TG_FUSED_MAX_LOADS)
        return -1;
    p->load[p->n_loads] = *ld;
    return p->n_loads++;
}

/* Adds program q's loads (of node y, over the finer space) to m; load_of[l] is load l's
 * value, or -1 where reads_e[l] (R's loads of E: the caller points them at E's value).
 * False past a limit. */
static bool add_loads(merged *m, const tg_graph *g, const tg_fused_program *q, int y,
                      const axes *a, const refinement *r, const bool *reads_e, int *load_of)
{
    for (int l = 0; l < q->n_loads; l++) {
        load_of[l] = -1;
        if (reads_e && reads_e[l])
            continue;
        tg_fused_load ld = q->load[l];
        ld.input = input_slot(m, g->nodes[y].in[q->load[l].input]);
        fine_strides(a, r, m->p->shape, q->load[l].stride, ld.stride);
        load_of[l] = ld.input < 0 ? -1 : add_load(m, &ld);
        if (load_of[l] < 0)
            return false;
    }
    return true;
}

/* Value v of program q once merged: loads through load_of, instructions from `base` on. */
static int moved(const tg_fused_program *q, const int *load_of, int base, int v)
{
    return v < q->n_loads ? load_of[v] : base + v - q->n_loads;
}

/* The program of E's kernel inside R's, or NULL (no merge: a limit, or no finer space). */
static tg_fused_program *merge_programs(const tg_graph *g, int e, int r, const bool *reads_e,
                                        merged *m)
{
    const tg_fused_program *pe = program(g, e), *pr = program(g, r);
    axes ae, ar;
    nontrivial(pe, &ae);
    nontrivial(pr, &ar);
    tg_fused_program *p = tg_fused_program_new();
    if (!p)
        return NULL;
    m->p = p;
    m->n_inputs = 0;
    refinement re, rr;
    int le[TG_FUSED_MAX_LOADS], lr[TG_FUSED_MAX_LOADS];
    if (!finer_space(&ae, &ar, p->shape, &p->ndim))
        goto fail;
    refine(&ae, p->shape, p->ndim, &re);
    refine(&ar, p->shape, p->ndim, &rr);
    for (int k = 0; k < ar.n; k++)
        if ((pr->reduce_mask >> ar.from[k]) & 1)
            for (int f = rr.first[k]; f <= rr.last[k]; f++)
                p->reduce_mask |= 1u << f;
    if (!add_loads(m, g, pe, e, &ae, &re, NULL, le) ||
        !add_loads(m, g, pr, r, &ar, &rr, reads_e, lr) ||
        pe->n_instrs + pr->n_instrs > TG_FUSED_MAX_INSTRS)
        goto fail;
    int base_e = p->n_loads, base_r = p->n_loads + pe->n_instrs;
    int stored = moved(pe, le, base_e, pe->result);
    for (int l = 0; l < pr->n_loads; l++)
        if (reads_e[l])
            lr[l] = stored;
    for (int i = 0; i < pe->n_instrs; i++) {
        tg_fused_instr in = pe->instr[i];
        for (int a = 0; in.op != TG_OP_LEAF && a < tg_op_table[in.op].arity; a++)
            in.arg[a] = moved(pe, le, base_e, in.arg[a]);
        p->instr[p->n_instrs++] = in;
    }
    for (int i = 0; i < pr->n_instrs; i++) {
        tg_fused_instr in = pr->instr[i];
        for (int a = 0; in.op != TG_OP_LEAF && a < tg_op_table[in.op].arity; a++)
            in.arg[a] = moved(pr, lr, base_r, in.arg[a]);
        p->instr[p->n_instrs++] = in;
    }
    p->reduce_op = pr->reduce_op;
    p->result = moved(pr, lr, base_r, pr->result);
    p->n_more = pr->n_more;
    for (int k = 0; k < pr->n_more; k++)
        p->more[k] = moved(pr, lr, base_r, pr->more[k]);
    p->stores = true;
    p->store = stored;
    return p;
fail:
    free(p);
    return NULL;
}

/* Whether E can merge into R; reads_e[l]: R's load l reads E (directly or through
 * reshapes). */
static bool mergeable(const tg_graph *g, int e, int r, bool *reads_e, char *seen)
{
    const tg_fused_program *pe = program(g, e), *pr = program(g, r);
    const tg_ir_node *ne = &g->nodes[e], *nr = &g->nodes[r];
    if (!pe || pe->reduce_op != TG_OP_LEAF || pe->stores || ne->dtype != nr->dtype ||
        !tg_fuse_read_by_kernels_only(g, e))
        return false;
    int64_t points = 1;
    for (int k = 0; k < pr->ndim; k++)
        points *= pr->shape[k];
    if (points != ne->numel || points == 0) /* (an empty space has no axes to match) */
        return false;
    bool any = false;
    for (int l = 0; l < pr->n_loads; l++) {
        reads_e[l] = source(g, nr->in[pr->load[l].input]) == e;
        if (reads_e[l] && !reads_in_order(pr, &pr->load[l]))
            return false;
        any |= reads_e[l];
    }
    for (int k = 0; any && k < nr->n_in; k++) {
        if (source(g, nr->in[k]) == e)
            continue;
        memset(seen, 0, (size_t)g->n + 1);
        if (tg_fuse_needs(g, nr->in[k], e, seen))
            return false;
    }
    return any;
}

/* Whether R may take a store at all: a FUSED reduction without tie counts or a store,
 * read by kernels (or a root), with at least MIN_OUTPUTS outputs per block. */
static bool reduction_takes_store(const tg_graph *g, int r)
{
    const tg_fused_program *p = program(g, r);
    if (!p || p->reduce_op == TG_OP_LEAF || p->count_ties || p->stores ||
        !tg_fuse_read_by_kernels_or_roots(g, r))
        return false;
    return g->nodes[r].numel / (1 + p->n_more) >= MIN_OUTPUTS;
}

int tg_pass_fuse_stores(tg_graph *g, const tg_pass_ctx *ctx)
{
    TG_UNUSED(ctx);
    int status = tg_graph_compact(g);
    if (status != TG_OK || g->keep_dead) /* dead nodes would count as readers */
        return status;
    /* Merged nodes are appended (at most n / 2 of them) with copies of roots (at most one
     * per node), and readers redirected to them lead the searches there: `seen` and
     * `taken` cover them too. */
    int n = g->n;
    char *seen = malloc(3 * (size_t)n + 3);
    bool *taken = calloc(3 * (size_t)n + 3, sizeof *taken);
    if (!seen || !taken) {
        status = tg_fail(TG_ERR_NOMEM, "fuse_stores: out of memory");
        goto done;
    }
    bool changed = false;
    for (int r = 0; r < n; r++) {
        if (taken[r] || !reduction_takes_store(g, r))
            continue;
        const tg_ir_node *nr = &g->nodes[r];
        for (int k = 0; k < nr->n_in; k++) {
            int e = source(g, g->nodes[r].in[k]);
            bool reads_e[TG_FUSED_MAX_LOADS];
            if (taken[e] || !mergeable(g, e, r, reads_e, seen))
                continue;
            merged m;
            tg_fused_program *p = merge_programs(g, e, r, reads_e, &m);
            if (!p)
                continue;
            tg_ir_node x = {.op = TG_PLAN_OP_FUSED, .dtype = g->nodes[r].dtype, .ndim = 1,
                            .shape = {g->nodes[e].numel + g->nodes[r].numel},
                            .n_in = m.n_inputs, .label = g->nodes[e].label,
                            .tape_id = SIZE_MAX, .payload = p};
            memcpy(x.in, m.inputs, sizeof x.in);
            int64_t e_numel = g->nodes[e].numel;
            int at = tg_graph_add(g, &x);
            if (at < 0) {
                tg_fused_release(p);
                status = tg_fail(TG_ERR_NOMEM, "fuse_stores: out of memory");
                goto done;
            }
            taken[e] = taken[r] = true;
            status = tg_fuse_copy_roots(g, r); /* (a gradient the user reads) */
            if (status != TG_OK)
                goto done;
            tg_fuse_redirect_readers(g, r, at, e_numel);
            tg_fuse_redirect_readers(g, e, at, 0);
            changed = true;
            break;
        }
    }
    if (changed)
        status = tg_graph_compact(g);
done:
    free(seen);
    free(taken);
    return status;
}
