/* Tie counts join their max. A max's gradient shares the incoming gradient among the points
 * equal to the max, so the backward of a max pool holds, next to the forward's
 * M = max_S(x), the count C = sum_S(eq(x, M)). Fused separately, C is a second pass over x
 * (recomputing batch norm and ReLU under a pool) to learn what the forward's pass over the
 * same points could have counted. This step finds such pairs among the FUSED kernels and
 * makes M's kernel count ties as it folds (tg_fused_program.count_ties): its output is then
 * [maxima, counts], C's readers load the counts block, M's kernel readers load the maxima
 * block, and any other reader of M (a convolution) reads the maxima block through a reshape
 * of the joined kernel's output (no copy).
 *
 * A pair is recognized from the programs, not from how the graph was written: C's result is
 * eq(v, L) (either order), L loads M's output broadcast over the reduced axes, both run
 * over the same iteration space with the same reduced axes, and v is computed by C's
 * program exactly as M's program computes the value it reduces (same instructions, same
 * loads of the same nodes through the same views). The counts are then those C computed:
 * the executor counts the points equal to the max as it folds (kernels/fused.c). */
#include "fuse_internal.h"
#include "plan_ops.h"
#include "../kernels/fused.h"

#include <stdlib.h>
#include <string.h>

#define MAX_VALUES (TG_FUSED_MAX_LOADS + TG_FUSED_MAX_INSTRS)

static int value_arity(const tg_fused_program *p, int v)
{
    if (v < p->n_loads || p->instr[v - p->n_loads].op == TG_OP_LEAF)
        return 0;
    return tg_op_table[p->instr[v - p->n_loads].op].arity;
}

/* Memoized structural equality of value a of program p (node x) and value b of q (node y). */
typedef struct {
    const tg_ir_node *x, *y;
    const tg_fused_program *p, *q;
    signed char memo[MAX_VALUES][MAX_VALUES]; /* 0 unknown, 1 equal, -1 different */
} comparison;

static bool same_value(comparison *c, int a, int b)
{
    if (c->memo[a][b])
        return c->memo[a][b] > 0;
    const tg_fused_program *p = c->p, *q = c->q;
    bool same;
    if (a < p->n_loads || b < q->n_loads) {
        same = a < p->n_loads && b < q->n_loads;
        if (same) {
            const tg_fused_load *u = &p->load[a], *v = &q->load[b];
            same = c->x->in[u->input] == c->y->in[v->input] && u->dtype == v->dtype &&
                   u->offset == v->offset &&
                   memcmp(u->stride, v->stride, (size_t)p->ndim * sizeof *u->stride) == 0;
        }
    } else {
        const tg_fused_instr *u = &p->instr[a - p->n_loads], *v = &q->instr[b - q->n_loads];
        same = u->op == v->op && u->dtype == v->dtype &&
               (u->op != TG_OP_LEAF || memcmp(&u->value, &v->value, sizeof u->value) == 0);
        for (int k = 0; same && k < value_arity(p, a); k++)
            same = same_value(c, u->arg[k], v->arg[k]);
    }
    c->memo[a][b] = same ? 1 : -1;
    return same;
}

static const tg_fused_program *reduction(const tg_graph *g, int v, int op)
{
    const tg_ir_node *n = &g->nodes[v];
    if (n->op != TG_PLAN_OP_FUSED || !n->payload)
        return NULL;
    const tg_fused_program *p = n->payload;
    return p->reduce_op == op && p->n_more == 0 && !p->count_ties ? p : NULL;
}

/* The node a kernel's input is, through reshapes (the same memory). */
static int source(const tg_graph *g, int v)
{
    while (g->nodes[v].op == TG_OP_RESHAPE)
        v = g->nodes[v].in[0];
    return v;
}

/* Whether load l of p reads M's output (M's program q) at the kept coordinates of each
 * point: offset 0, stride 0 along the reduced axes, the output's row-major strides along
 * the kept ones. */
static bool loads_result(const tg_fused_program *p, int l, const tg_fused_program *q)
{
    const tg_fused_load *ld = &p->load[l];
    if (ld->offset != 0)
        return false;
    int64_t run = 1;
    for (int k = q->ndim - 1; k >= 0; k--) {
        bool red = (q->reduce_mask >> k) & 1;
        if (q->shape[k] > 1 && ld->stride[k] != (red ? 0 : run))
            return false;
        run *= red ? 1 : q->shape[k];
    }
    return true;
}

/* The max kernel whose ties count c counts, or -1. */
static int counted_max(const tg_graph *g, int c, comparison *cmp)
{
    const tg_fused_program *p = reduction(g, c, TG_OP_SUM);
    if (!p || p->result < p->n_loads || p->instr[p->result - p->n_loads].op != TG_OP_EQ)
        return -1;
    const tg_fused_instr *eq = &p->instr[p->result - p->n_loads];
    for (int side = 0; side < 2; side++) {
        int l = eq->arg[side], v = eq->arg[1 - side];
        if (l >= p->n_loads)
            continue;
        int m = source(g, g->nodes[c].in[p->load[l].input]);
        const tg_fused_program *q = reduction(g, m, TG_OP_MAX);
        if (!q || g->nodes[m].dtype != g->nodes[c].dtype || q->ndim != p->ndim ||
            q->reduce_mask != p->reduce_mask ||
            memcmp(q->shape, p->shape, (size_t)p->ndim * sizeof *p->shape) != 0 ||
            !loads_result(p, l, q))
            continue;
        memset(cmp->memo, 0, sizeof cmp->memo);
        cmp->x = &g->nodes[c];
        cmp->y = &g->nodes[m];
        cmp->p = p;
        cmp->q = q;
        if (same_value(cmp, v, q->result))
            return m;
    }
    return -1;
}

/* The first elements of `from` (its maxima block), shaped like node `like`: a reshape that
 * reads a prefix of its source, which only the plan has (kernels and the memory plan see a
 * view's memory as its source's, from the start); no copy is made. */
static int view_of_block(tg_graph *g, int from, int like)
{
    const tg_ir_node *l = &g->nodes[like];
    tg_ir_node x = {.op = TG_OP_RESHAPE, .dtype = l->dtype, .ndim = l->ndim, .n_in = 1,
                    .in = {from}, .label = l->label, .tape_id = SIZE_MAX};
    memcpy(x.shape, l->shape, sizeof x.shape);
    return tg_graph_add(g, &x);
}

/* Makes max kernel m count its ties and gives its readers and count kernel c's readers
 * their blocks of the joined kernel. */
static int join(tg_graph *g, int m, int c)
{
    tg_fused_program *p = tg_fused_program_new();
    if (!p)
        return tg_fail(TG_ERR_NOMEM, "fuse: out of memory");
    *p = *(const tg_fused_program *)g->nodes[m].payload;
    p->exec = NULL;
    p->count_ties = true;
    const tg_ir_node *max = &g->nodes[m];
    tg_ir_node x = {.op = TG_PLAN_OP_FUSED, .dtype = max->dtype, .ndim = 1,
                    .shape = {2 * max->numel}, .n_in = max->n_in, .label = max->label,
                    .tape_id = SIZE_MAX, .payload = p};
    memcpy(x.in, max->in, sizeof x.in);
    int joined = tg_graph_add(g, &x);
    if (joined < 0) {
        tg_fused_release(p);
        return tg_fail(TG_ERR_NOMEM, "fuse: out of memory");
    }
    int view = -1;
    int64_t numel = g->nodes[m].numel;
    for (int u = 0; u < g->n; u++) {
        tg_ir_node *n = &g->nodes[u];
        for (int k = 0; k < n->n_in; k++) {
            if (n->in[k] != m || u == joined || u == view)
                continue;
            if (n->op == TG_PLAN_OP_FUSED) { /* the maxima are block 0: loads unchanged */
                n->in[k] = joined;
                n->inplace_inputs &= ~(1u << k);
                continue;
            }
            if (view < 0 && (view = view_of_block(g, joined, m)) < 0)
                return tg_fail(TG_ERR_NOMEM, "fuse: out of memory");
            n = &g->nodes[u]; /* adding the view may have moved the array */
            n->in[k] = view;
        }
    }
    tg_fuse_redirect_readers(g, c, joined, numel);
    return TG_OK;
}

int tg_fuse_join_tie_counts(tg_graph *g)
{
    int status = tg_graph_compact(g);
    if (status != TG_OK || g->keep_dead) /* dead nodes would count as readers */
        return status;
    comparison *cmp = malloc(sizeof *cmp);
    bool *taken = calloc((size_t)g->n + 1, sizeof *taken);
    if (!cmp || !taken) {
        free(cmp);
        free(taken);
        return tg_fail(TG_ERR_NOMEM, "fuse: out of memory");
    }
    int n = g->n; /* the nodes join appends are copies and joined kernels: not candidates */
    for (int c = 0; c < n && status == TG_OK; c++) {
        if (!tg_fuse_read_by_kernels_only(g, c))
            continue;
        int m = counted_max(g, c, cmp);
        if (m < 0 || taken[m] || tg_fuse_is_root(g, m))
            continue;
        taken[m] = true;
        status = join(g, m, c);
    }
    free(cmp);
    free(taken);
    return status;
}
