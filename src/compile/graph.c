/* The compiler's graph: building it from a traced tape, appending and redirecting nodes,
 * compaction back to a topological order, and the facts passes ask about nodes. */
#include "graph.h"
#include "plan_ops.h"

#include <stdlib.h>
#include <string.h>

const tg_plan_op_info tg_plan_op_table[TG_PLAN_OP_END - TG_PLAN_OP_FIRST] = {
#define TG_PLAN_OP(e, nm, kernel, prepare, describe, release)                                   \
    [TG_PLAN_OP_##e - TG_PLAN_OP_FIRST] = {nm, kernel, prepare, describe, release},
#include "plan_ops.def"
#undef TG_PLAN_OP
};

const tg_plan_op_info *tg_plan_op_info_of(int op)
{
    return op >= TG_PLAN_OP_FIRST && op < TG_PLAN_OP_END ? &tg_plan_op_table[op - TG_PLAN_OP_FIRST]
                                                          : NULL;
}

const char *tg_ir_op_name(int op)
{
    const tg_plan_op_info *info = tg_plan_op_info_of(op);
    return info ? info->name : tg_op_name((tg_op)op);
}

bool tg_ir_is_elementwise(int op)
{
    switch (op) {
    case TG_OP_NEG: case TG_OP_EXP: case TG_OP_LOG: case TG_OP_SQRT: case TG_OP_RECIP:
    case TG_OP_ADD: case TG_OP_SUB: case TG_OP_MUL: case TG_OP_DIV: case TG_OP_MAXIMUM:
    case TG_OP_LT: case TG_OP_EQ: case TG_OP_WHERE: case TG_OP_CAST:
        return true;
    default:
        return false;
    }
}

bool tg_ir_is_view(int op) { return op == TG_OP_RESHAPE || op == TG_OP_DETACH; }

static size_t elem_size(tg_dtype dt) { return dt == TG_F64 ? sizeof(double) : sizeof(float); }

bool tg_ir_const_value(const tg_graph *g, int i, double *value)
{
    const tg_ir_node *n = &g->nodes[i];
    while (tg_ir_is_view(n->op) || n->op == TG_OP_EXPAND)
        n = &g->nodes[n->in[0]];
    if (n->leaf != TG_LEAF_CONST || n->numel < 1)
        return false;
    double first = n->dtype == TG_F64 ? ((const double *)n->data)[0]
                                      : ((const float *)n->data)[0];
    for (int64_t k = 1; k < n->numel; k++) {
        double v = n->dtype == TG_F64 ? ((const double *)n->data)[k]
                                      : ((const float *)n->data)[k];
        if (memcmp(&v, &first, sizeof v) != 0)
            return false;
    }
    *value = first;
    return true;
}

/* ---- lifetime ------------------------------------------------------------------------------ */
void tg_graph_init(tg_graph *g) { memset(g, 0, sizeof *g); }

static void release_node(tg_ir_node *n)
{
    const tg_plan_op_info *info = tg_plan_op_info_of(n->op);
    if (info && n->payload)
        info->release(n->payload);
    n->payload = NULL;
    if (n->leaf == TG_LEAF_CONST)
        free(n->data);
    n->data = NULL;
}

void tg_graph_free(tg_graph *g)
{
    if (!g)
        return;
    for (int i = 0; i < g->n; i++)
        release_node(&g->nodes[i]);
    for (size_t i = 0; i < g->n_strings; i++)
        free(g->strings[i]);
    free(g->strings);
    free(g->nodes);
    free(g->outputs);
    free(g->update_target);
    free(g->update_value);
    tg_graph_init(g);
}

const char *tg_graph_intern(tg_graph *g, const char *text)
{
    return text ? tg_intern_in(&g->strings, &g->n_strings, text) : NULL;
}

/* ---- appending and redirecting --------------------------------------------------------------- */
int tg_graph_add(tg_graph *g, const tg_ir_node *proto)
{
    if (g->n == g->cap) {
        int cap = g->cap ? 2 * g->cap : 256;
        tg_ir_node *nodes = realloc(g->nodes, (size_t)cap * sizeof *nodes);
        if (!nodes)
            return -1;
        g->nodes = nodes;
        g->cap = cap;
    }
    tg_ir_node *n = &g->nodes[g->n];
    *n = *proto;
    n->numel = tg_shape_numel(n->ndim, n->shape);
    return g->n++;
}

int tg_graph_add_op(tg_graph *g, int op, tg_dtype dt, int ndim, const int64_t *shape, int n_in,
                    const int *in)
{
    tg_ir_node n = {.op = op, .dtype = dt, .ndim = ndim, .n_in = n_in, .tape_id = SIZE_MAX};
    if (ndim > 0)
        memcpy(n.shape, shape, (size_t)ndim * sizeof *shape);
    for (int k = 0; k < n_in; k++)
        n.in[k] = in[k];
    if (n_in > 0)
        n.label = g->nodes[in[0]].label;
    return tg_graph_add(g, &n);
}

int tg_graph_add_scalar(tg_graph *g, tg_dtype dt, double value)
{
    void *data = malloc(sizeof(double));
    if (!data)
        return -1;
    if (dt == TG_F64)
        *(double *)data = value;
    else
        *(float *)data = (float)value;
    tg_ir_node n = {.op = TG_OP_LEAF, .dtype = dt, .leaf = TG_LEAF_CONST, .data = data,
                    .tape_id = SIZE_MAX};
    int i = tg_graph_add(g, &n);
    if (i < 0)
        free(data);
    return i;
}

void tg_graph_replace(tg_graph *g, int old, int with)
{
    if (old == with)
        return;
    for (int i = 0; i < g->n; i++)
        for (int k = 0; k < g->nodes[i].n_in; k++)
            if (g->nodes[i].in[k] == old && i != with)
                g->nodes[i].in[k] = with;
    for (int i = 0; i < g->n_outputs; i++)
        if (g->outputs[i] == old)
            g->outputs[i] = with;
    for (int i = 0; i < g->n_updates; i++)
        if (g->update_value[i] == old)
            g->update_value[i] = with;
}

int *tg_graph_use_counts(const tg_graph *g)
{
    int *uses = calloc((size_t)g->n + 1, sizeof *uses);
    if (!uses)
        return NULL;
    for (int i = 0; i < g->n; i++)
        for (int k = 0; k < g->nodes[i].n_in; k++)
            uses[g->nodes[i].in[k]]++;
    for (int i = 0; i < g->n_outputs; i++)
        uses[g->outputs[i]]++;
    for (int i = 0; i < g->n_updates; i++) {
        uses[g->update_value[i]]++;
        uses[g->update_target[i]]++;
    }
    return uses;
}

/* ---- compaction ------------------------------------------------------------------------------ */
/* Depth-first from the roots, emitting a node after its inputs (iterative, so deep graphs
 * are fine); where the index order of the nodes kept already is topological, it stays. */
int tg_graph_compact(tg_graph *g)
{
    int n = g->n;
    int *state = calloc((size_t)n + 1, sizeof *state); /* 0 new, 1 open, 2 placed */
    int *order = malloc(((size_t)n + 1) * sizeof *order);
    int *stack = malloc(((size_t)n + 1) * sizeof *stack);
    int *next_in = calloc((size_t)n + 1, sizeof *next_in);
    int *map = malloc(((size_t)n + 1) * sizeof *map);
    bool *root = calloc((size_t)n + 1, sizeof *root);
    int status = TG_OK, placed = 0;
    if (!state || !order || !stack || !next_in || !map || !root) {
        status = TG_ERR_NOMEM;
        goto done;
    }
    for (int i = 0; i < g->n_outputs; i++)
        root[g->outputs[i]] = true;
    for (int i = 0; i < g->n_updates; i++)
        root[g->update_value[i]] = root[g->update_target[i]] = true;
    for (int i = 0; i < n && g->keep_dead; i++)
        root[i] = true;
    for (int r = 0; r < n && status == TG_OK; r++) {
        if (!root[r] || state[r])
            continue;
        int top = 0;
        stack[top++] = r;
        state[r] = 1;
        while (top > 0) {
            int v = stack[top - 1];
            if (next_in[v] < g->nodes[v].n_in) {
                int u = g->nodes[v].in[next_in[v]++];
                if (state[u] == 1) {
                    status = TG_ERR_ARG; /* a cycle: a pass made a mistake */
                    break;
                }
                if (state[u] == 0) {
                    state[u] = 1;
                    stack[top++] = u;
                }
                continue;
            }
            state[v] = 2;
            order[placed++] = v;
            top--;
        }
    }
    if (status != TG_OK)
        goto done;
    /* Where index order already is topological, keep it (dumps stay in tracing order). */
    bool in_order = true;
    for (int v = 0; v < n && in_order; v++)
        for (int k = 0; state[v] == 2 && k < g->nodes[v].n_in && in_order; k++)
            in_order = g->nodes[v].in[k] < v;
    if (in_order)
        for (int v = 0, i = 0; v < n; v++)
            if (state[v] == 2)
                order[i++] = v;
    for (int i = 0; i < n; i++)
        map[i] = -1;
    for (int i = 0; i < placed; i++)
        map[order[i]] = i;
    tg_ir_node *nodes = malloc(((size_t)placed + 1) * sizeof *nodes);
    if (!nodes) {
        status = TG_ERR_NOMEM;
        goto done;
    }
    for (int i = 0; i < placed; i++) {
        nodes[i] = g->nodes[order[i]];
        for (int k = 0; k < nodes[i].n_in; k++)
            nodes[i].in[k] = map[nodes[i].in[k]];
    }
    for (int i = 0; i < n; i++)
        if (map[i] < 0)
            release_node(&g->nodes[i]);
    for (int i = 0; i < g->n_outputs; i++)
        g->outputs[i] = map[g->outputs[i]];
    for (int i = 0; i < g->n_updates; i++) {
        g->update_value[i] = map[g->update_value[i]];
        g->update_target[i] = map[g->update_target[i]];
    }
    free(g->nodes);
    g->nodes = nodes;
    g->n = g->cap = placed;
done:
    free(state);
    free(order);
    free(stack);
    free(next_in);
    free(map);
    free(root);
    return status == TG_OK ? TG_OK : tg_fail(status, "compile: %s while compacting the graph",
                                             status == TG_ERR_NOMEM ? "out of memory" : "a cycle");
}

/* ---- from a traced tape ---------------------------------------------------------------------- */
static int copy_node(tg_graph *g, const struct tg_node *t, const int *map)
{
    tg_ir_node n = {.op = t->op, .dtype = t->dtype, .ndim = t->ndim, .n_in = t->n_in,
                    .fattr = t->fattr, .tape_id = t->id};
    memcpy(n.shape, t->shape, sizeof n.shape);
    memcpy(n.attr, t->attr, sizeof n.attr);
    n.label = t->label ? tg_graph_intern(g, t->label) : NULL;
    if (!t->traced) {
        /* Computed before tracing: read by pointer at every run. */
        n.op = TG_OP_LEAF;
        n.n_in = 0;
        n.leaf = TG_LEAF_BOUND;
        n.data = t->data;
    } else if (t->op == TG_OP_LEAF && t->name) {
        n.leaf = TG_LEAF_INPUT;
        n.name = tg_graph_intern(g, t->name);
        if (!n.name)
            return -1;
    } else if (t->op == TG_OP_LEAF) {
        size_t bytes = (size_t)t->numel * elem_size(t->dtype);
        n.leaf = TG_LEAF_CONST;
        n.data = malloc(bytes ? bytes : 1);
        if (!n.data)
            return -1;
        memcpy(n.data, t->data, bytes);
    } else {
        for (int k = 0; k < t->n_in; k++)
            n.in[k] = map[t->in[k]->id];
    }
    int i = tg_graph_add(g, &n);
    if (i < 0 && n.leaf == TG_LEAF_CONST)
        free(n.data);
    return i;
}

int tg_graph_from_tape(tg_graph *g, tg_tape *tape, int n_outputs, tg_tensor *const *outputs)
{
    tg_graph_init(g);
    if (n_outputs < 0 || (n_outputs > 0 && !outputs))
        return tg_fail(TG_ERR_ARG, "compile: %d outputs%s", n_outputs,
                       n_outputs > 0 ? " but outputs is NULL" : "");
    for (int i = 0; i < n_outputs; i++) {
        if (!outputs[i])
            return tg_fail_null_input("compile", i);
        if (!tg_node_is_live(outputs[i]) || outputs[i]->tape != tape)
            return tg_fail(TG_ERR_TAPE, "compile: output %d is not on this tape (or was dropped "
                           "by a rewind)", i);
    }
    tg_tensor **targets, **values;
    size_t n_all_updates = tg_tape_updates(tape, &targets, &values);
    size_t count = tg_tape_size(tape);
    bool *needed = calloc(count + 1, sizeof *needed);
    int *map = malloc((count + 1) * sizeof *map);
    int status = TG_OK;
    if (!needed || !map) {
        status = tg_fail(TG_ERR_NOMEM, "compile: out of memory");
        goto done;
    }
    for (int i = 0; i < n_outputs; i++)
        needed[outputs[i]->id] = true;
    for (size_t id = 0; id < count; id++) /* all that eager execution would compute */
        needed[id] |= tg_tape_node(tape, id)->traced;
    for (size_t u = 0; u < n_all_updates; u++) {
        if (!values[u]->traced)
            continue;
        if (targets[u]->traced)
            return free(needed), free(map),
                   tg_fail(TG_ERR_ARG, "compile: update %zu assigns to a tensor made while "
                           "tracing; targets must exist before the trace", u);
        needed[values[u]->id] = needed[targets[u]->id] = true;
    }
    for (size_t id = count; id-- > 0;) {
        const struct tg_node *t = tg_tape_node(tape, id);
        if (needed[id] && t->traced)
            for (int k = 0; k < t->n_in; k++)
                needed[t->in[k]->id] = true;
    }
    for (size_t id = 0; id < count && status == TG_OK; id++) {
        map[id] = -1;
        if (!needed[id])
            continue;
        map[id] = copy_node(g, tg_tape_node(tape, id), map);
        if (map[id] < 0)
            status = tg_fail(TG_ERR_NOMEM, "compile: out of memory");
    }
    if (status != TG_OK)
        goto done;
    g->outputs = malloc(((size_t)n_outputs + 1) * sizeof *g->outputs);
    g->update_target = malloc((n_all_updates + 1) * sizeof *g->update_target);
    g->update_value = malloc((n_all_updates + 1) * sizeof *g->update_value);
    if (!g->outputs || !g->update_target || !g->update_value) {
        status = tg_fail(TG_ERR_NOMEM, "compile: out of memory");
        goto done;
    }
    g->keep_dead = true;
    for (int i = 0; i < n_outputs; i++)
        g->outputs[g->n_outputs++] = map[outputs[i]->id];
    for (size_t u = 0; u < n_all_updates; u++) {
        if (!values[u]->traced)
            continue;
        g->update_target[g->n_updates] = map[targets[u]->id];
        g->update_value[g->n_updates++] = map[values[u]->id];
    }
done:
    free(needed);
    free(map);
    if (status != TG_OK)
        tg_graph_free(g);
    return status;
}

/* ---- dumps ----------------------------------------------------------------------------------- */
void tg_graph_count(const tg_graph *g, int *nodes, int *kernels)
{
    int k = 0;
    for (int i = 0; i < g->n; i++)
        k += g->nodes[i].op != TG_OP_LEAF && !tg_ir_is_view(g->nodes[i].op);
    *nodes = g->n;
    *kernels = k;
}

static void describe(const tg_ir_node *n, char *buf, size_t size)
{
    const tg_plan_op_info *info = tg_plan_op_info_of(n->op);
    if (info) {
        info->describe(n, buf, size);
        return;
    }
    size_t used = (size_t)snprintf(buf, size, "%s", tg_op_name((tg_op)n->op));
    if ((n->op == TG_OP_SUM || n->op == TG_OP_MAX) && used < size) {
        used += (size_t)snprintf(buf + used, size - used, "(");
        const char *sep = "";
        for (int a = 0; a < TG_MAX_DIMS && used < size; a++) {
            if ((n->attr[0] >> a) & 1) {
                used += (size_t)snprintf(buf + used, size - used, "%s%d", sep, a);
                sep = ",";
            }
        }
        if (used < size)
            snprintf(buf + used, size - used, ")");
    } else if (n->op == TG_OP_PERMUTE && used < size) {
        used += (size_t)snprintf(buf + used, size - used, "(");
        for (int a = 0; a < n->ndim && used < size; a++)
            used += (size_t)snprintf(buf + used, size - used, "%s%lld", a ? "," : "",
                                     (long long)n->attr[a]);
        if (used < size)
            snprintf(buf + used, size - used, ")");
    } else if ((n->op == TG_OP_IM2COL || n->op == TG_OP_COL2IM) && used < size) {
        snprintf(buf + used, size - used, "(%lldx%lld /%lldx%lld)", (long long)n->attr[0],
                 (long long)n->attr[1], (long long)n->attr[2], (long long)n->attr[3]);
    }
}

void tg_graph_dump(const tg_graph *g, FILE *out, const size_t *offsets)
{
    int nodes, kernels;
    tg_graph_count(g, &nodes, &kernels);
    fprintf(out, "# %d nodes, %d kernels; %d outputs, %d updates\n", nodes, kernels,
            g->n_outputs, g->n_updates);
    for (int i = 0; i < g->n; i++) {
        const tg_ir_node *n = &g->nodes[i];
        char what[512], shape[128];
        tg_shape_str(shape, sizeof shape, n->ndim, n->shape);
        if (n->op == TG_OP_LEAF) {
            if (n->leaf == TG_LEAF_INPUT)
                snprintf(what, sizeof what, "input '%s'", n->name);
            else if (n->leaf == TG_LEAF_BOUND)
                snprintf(what, sizeof what, "bound (tape node %zu)", n->tape_id);
            else if (n->numel == 1)
                snprintf(what, sizeof what, "const %g",
                         n->dtype == TG_F64 ? *(double *)n->data : *(float *)n->data);
            else
                snprintf(what, sizeof what, "const");
        } else {
            describe(n, what, sizeof what);
        }
        fprintf(out, "%%%-4d = %s", i, what);
        for (int k = 0; k < n->n_in; k++)
            fprintf(out, "%s%%%d", k ? ", " : " (", n->in[k]);
        fprintf(out, "%s  %s %s", n->n_in ? ")" : "", tg_dtype_name(n->dtype), shape);
        if (n->label)
            fprintf(out, "  [%s]", n->label);
        if (offsets && offsets[i] != SIZE_MAX)
            fprintf(out, "  @%#zx %.2f MB", offsets[i],
                    (double)n->numel * (double)elem_size(n->dtype) / 1e6);
        if (n->inplace_inputs)
            fprintf(out, "  (may write in place)");
        fprintf(out, "\n");
    }
    for (int i = 0; i < g->n_outputs; i++)
        fprintf(out, "output %d = %%%d\n", i, g->outputs[i]);
    for (int i = 0; i < g->n_updates; i++)
        fprintf(out, "update %%%d := %%%d\n", g->update_target[i], g->update_value[i]);
}

void tg_ir_mirror_node(const tg_graph *g, int i, struct tg_node *prim)
{
    const tg_ir_node *x = &g->nodes[i];
    struct tg_node *t = &prim[i];
    memset(t, 0, sizeof *t);
    t->id = (size_t)i;
    t->op = x->op < TG_OP_COUNT ? (tg_op)x->op : TG_OP_LEAF;
    t->dtype = x->dtype;
    t->ndim = x->ndim;
    memcpy(t->shape, x->shape, sizeof t->shape);
    t->numel = x->numel;
    memcpy(t->attr, x->attr, sizeof t->attr);
    t->fattr = x->fattr;
    t->label = x->label;
    t->n_in = x->op < TG_OP_COUNT ? x->n_in : 0;
    for (int k = 0; k < t->n_in && k < 3; k++)
        t->in[k] = &prim[x->in[k]];
}
