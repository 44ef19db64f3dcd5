/* Common-subexpression elimination by hash-consing: two nodes with the same op, inputs,
 * attributes, dtype and shape compute the same value, so the later one is replaced by the
 * earlier. Autodiff repeats work (each rule rebuilds what it needs: transposes of the same
 * weight, the same mask, the same reshape), and so do compositions (every tg_mul_scalar makes
 * its own constant). Constants are equal when their bytes are; bound leaves when they read
 * the same memory. Plan ops are never merged (their payload is theirs). */
#include "passes.h"

#include <stdlib.h>
#include <string.h>

#define SMALL_CONST 64 /* constants compared by value up to this many elements */

static size_t value_bytes(const tg_ir_node *n)
{
    return (size_t)n->numel * (n->dtype == TG_F64 ? sizeof(double) : sizeof(float));
}

static uint64_t mix(uint64_t h, uint64_t v)
{
    h ^= v + 0x9E3779B97F4A7C15ull + (h << 6) + (h >> 2);
    return h * 0xBF58476D1CE4E5B9ull;
}

static bool mergeable(const tg_ir_node *n)
{
    if (tg_plan_op_info_of(n->op))
        return false;
    if (n->op == TG_OP_LEAF)
        return n->leaf == TG_LEAF_BOUND || n->leaf == TG_LEAF_INPUT ||
               (n->leaf == TG_LEAF_CONST && n->numel <= SMALL_CONST);
    return true;
}

static uint64_t hash_node(const tg_ir_node *n)
{
    uint64_t h = mix(mix((uint64_t)n->op, (uint64_t)n->dtype), (uint64_t)n->ndim);
    for (int a = 0; a < n->ndim; a++)
        h = mix(h, (uint64_t)n->shape[a]);
    for (int k = 0; k < n->n_in; k++)
        h = mix(h, (uint64_t)n->in[k]);
    for (int a = 0; a < 2 * TG_MAX_DIMS; a++)
        h = mix(h, (uint64_t)n->attr[a]);
    uint64_t f;
    memcpy(&f, &n->fattr, sizeof f);
    h = mix(mix(h, f), (uint64_t)n->leaf);
    if (n->leaf == TG_LEAF_BOUND || n->leaf == TG_LEAF_INPUT)
        h = mix(h, (uint64_t)(uintptr_t)(n->leaf == TG_LEAF_BOUND ? n->data : (void *)n->name));
    if (n->leaf == TG_LEAF_CONST) {
        const unsigned char *b = n->data;
        for (size_t i = 0; i < value_bytes(n); i++)
            h = mix(h, b[i]);
    }
    return h;
}

static bool same(const tg_ir_node *a, const tg_ir_node *b)
{
    if (a->op != b->op || a->dtype != b->dtype || a->ndim != b->ndim || a->n_in != b->n_in ||
        a->leaf != b->leaf || memcmp(&a->fattr, &b->fattr, sizeof a->fattr) != 0 ||
        memcmp(a->shape, b->shape, (size_t)a->ndim * sizeof *a->shape) != 0 ||
        memcmp(a->in, b->in, (size_t)a->n_in * sizeof *a->in) != 0 ||
        memcmp(a->attr, b->attr, sizeof a->attr) != 0)
        return false;
    switch (a->leaf) {
    case TG_LEAF_BOUND: return a->data == b->data;
    case TG_LEAF_INPUT: return a->name == b->name; /* interned */
    case TG_LEAF_CONST: return memcmp(a->data, b->data, value_bytes(a)) == 0;
    default: return true;
    }
}

int tg_pass_cse(tg_graph *g, const tg_pass_ctx *ctx)
{
    TG_UNUSED(ctx);
    size_t size = 1;
    while (size < 2 * (size_t)g->n + 2)
        size *= 2;
    int *table = malloc(size * sizeof *table);
    if (!table)
        return tg_fail(TG_ERR_NOMEM, "cse: out of memory");
    for (size_t i = 0; i < size; i++)
        table[i] = -1;
    /* In topological order, so a node's inputs are already the canonical ones. */
    for (int i = 0; i < g->n; i++) {
        if (!mergeable(&g->nodes[i]))
            continue;
        size_t slot = hash_node(&g->nodes[i]) & (size - 1);
        while (table[slot] >= 0 && !same(&g->nodes[table[slot]], &g->nodes[i]))
            slot = (slot + 1) & (size - 1);
        if (table[slot] < 0)
            table[slot] = i;
        else
            tg_graph_replace(g, i, table[slot]);
    }
    free(table);
    return TG_OK;
}
