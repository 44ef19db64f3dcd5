/* The memory plan: one arena for every intermediate value of a plan, offsets fixed once.
 *
 * Each value's lifetime runs from the kernel that writes it to the last kernel that reads it
 * (through views: a reshape reads its source's memory), or to the end of the run for outputs
 * and update values. Values whose lifetimes do not overlap may share memory; they are
 * placed greedily, largest first, at the lowest offset that overlaps nothing alive at the
 * same time (as ggml-alloc and TFLite's arena planner do). A kernel that may write over an
 * input (tg_ir_node.inplace_inputs) does so where that input dies at that kernel; the input
 * may be larger (a merged kernel's first block: compile/pass_fuse_stores.c). */
#include "pipeline.h"

#include <stdlib.h>
#include <string.h>

#define ALIGN 64

static size_t round_up(size_t bytes) { return (bytes + ALIGN - 1) / ALIGN * ALIGN; }

typedef struct {
    size_t bytes;
    int first, last;
    size_t offset;
} buffer;

static bool has_buffer(const tg_ir_node *n) { return n->op != TG_OP_LEAF && !tg_ir_is_view(n->op); }

/* Places buffers one by one, biggest first, at the lowest offset free during their lifetime. */
static int place(buffer *b, int count, size_t *total)
{
    int *order = malloc(((size_t)count + 1) * sizeof *order);
    int *placed = malloc(((size_t)count + 1) * sizeof *placed);
    if (!order || !placed) {
        free(order);
        free(placed);
        return TG_ERR_NOMEM;
    }
    for (int i = 0; i < count; i++)
        order[i] = i;
    /* Insertion sort by size, descending (stable, so ties keep schedule order). */
    for (int i = 1; i < count; i++) {
        int v = order[i], j = i;
        for (; j > 0 && b[order[j - 1]].bytes < b[v].bytes; j--)
            order[j] = order[j - 1];
        order[j] = v;
    }
    int n_placed = 0;
    *total = 0;
    for (int i = 0; i < count; i++) {
        buffer *x = &b[order[i]];
        size_t offset = 0;
        /* Move past every placed buffer alive at the same time that overlaps [offset, +bytes);
         * repeat until nothing does. The placed list is short enough for this. */
        for (bool moved = true; moved;) {
            moved = false;
            for (int k = 0; k < n_placed; k++) {
                const buffer *y = &b[placed[k]];
                bool same_time = x->first <= y->last && y->first <= x->last;
                if (same_time && offset < y->offset + y->bytes && y->offset < offset + x->bytes) {
                    offset = y->offset + y->bytes;
                    moved = true;
                }
            }
        }
        x->offset = offset;
        placed[n_placed++] = order[i];
        if (offset + x->bytes > *total)
            *total = offset + x->bytes;
    }
    free(order);
    free(placed);
    return TG_OK;
}

int tg_memplan_build(const tg_graph *g, int threads, bool planned, const int *run_at,
                     const bool *chunked, tg_memplan *plan)
{
    int n = g->n;
    memset(plan, 0, sizeof *plan);
    plan->offset = malloc(((size_t)n + 1) * sizeof *plan->offset);
    plan->scratch = malloc(((size_t)n + 1) * sizeof *plan->scratch);
    int *root = malloc(((size_t)n + 1) * sizeof *root);      /* node whose memory it uses */
    int *buf_of = malloc(((size_t)n + 1) * sizeof *buf_of);  /* buffer index, or -1 */
    buffer *b = calloc(2 * (size_t)n + 1, sizeof *b);        /* values, then scratch */
    int status = TG_OK, count = 0;
    if (!plan->offset || !plan->scratch || !root || !buf_of || !b) {
        status = TG_ERR_NOMEM;
        goto done;
    }
    for (int i = 0; i < n; i++) {
        const tg_ir_node *x = &g->nodes[i];
        root[i] = tg_ir_is_view(x->op) ? root[x->in[0]] : i;
        buf_of[i] = -1;
        if (has_buffer(x) && !(chunked && chunked[i])) {
            size_t elem = x->dtype == TG_F64 ? sizeof(double) : sizeof(float);
            b[count] = (buffer){round_up((size_t)x->numel * elem), i, i, 0};
            buf_of[i] = count++;
        }
    }
    /* Lifetimes: the last reader of a value's memory, or the end for what outlives a run; a
     * prologue reads its inputs when the kernel it runs inside runs. */
    for (int i = 0; i < n; i++)
        for (int k = 0; k < g->nodes[i].n_in; k++) {
            int r = buf_of[root[g->nodes[i].in[k]]], at = run_at ? run_at[i] : i;
            if (r >= 0 && b[r].last < at)
                b[r].last = at;
        }
    for (int i = 0; i < g->n_outputs; i++)
        if (buf_of[root[g->outputs[i]]] >= 0)
            b[buf_of[root[g->outputs[i]]]].last = n;
    for (int i = 0; i < g->n_updates; i++)
        if (buf_of[root[g->update_value[i]]] >= 0)
            b[buf_of[root[g->update_value[i]]]].last = n;
    /* In place: the output takes over the memory of an input that dies here. */
    for (int i = 0; i < n && planned; i++) {
        const tg_ir_node *x = &g->nodes[i];
        for (int k = 0; k < x->n_in && buf_of[i] >= 0; k++) {
            int r = buf_of[root[x->in[k]]];
            if (!((x->inplace_inputs >> k) & 1) || r < 0 || b[r].last != i ||
                b[r].bytes < b[buf_of[i]].bytes)
                continue;
            bool alone = true; /* no other slot reads that memory through another view */
            for (int j = 0; j < x->n_in; j++)
                if (j != k && buf_of[root[x->in[j]]] == r && !((x->inplace_inputs >> j) & 1))
                    alone = false;
            if (!alone)
                continue;
            b[r].last = b[buf_of[i]].last;
            b[buf_of[i]].bytes = 0; /* folded into r */
            for (int v = 0; v < n; v++)
                if (buf_of[v] == buf_of[i])
                    buf_of[v] = r;
            break;
        }
    }
    for (int i = 0; i < n; i++) {
        size_t s = g->nodes[i].scratch_bytes;
        plan->scratch[i] = SIZE_MAX;
        if (s > 0) {
            b[count] = (buffer){round_up(s) * (size_t)threads, i, i, 0};
            plan->scratch[i] = (size_t)count++; /* an index until placed */
        }
    }
    for (int i = 0; i < count; i++)
        plan->unplanned_bytes += b[i].bytes;
    if (planned) {
        status = place(b, count, &plan->arena_bytes);
        if (status != TG_OK)
            goto done;
    } else {
        size_t at = 0;
        for (int i = 0; i < count; i++) {
            b[i].offset = at;
            at += b[i].bytes;
        }
        plan->arena_bytes = at;
    }
    for (int i = 0; i < n; i++) {
        int r = buf_of[root[i]];
        plan->offset[i] = r >= 0 ? b[r].offset : SIZE_MAX;
        if (plan->scratch[i] != SIZE_MAX)
            plan->scratch[i] = b[plan->scratch[i]].offset;
    }
done:
    free(root);
    free(buf_of);
    free(b);
    if (status != TG_OK) {
        tg_memplan_free(plan);
        return tg_fail(status, "compile: out of memory while planning memory");
    }
    return TG_OK;
}

void tg_memplan_free(tg_memplan *plan)
{
    free(plan->offset);
    free(plan->scratch);
    plan->offset = plan->scratch = NULL;
}
