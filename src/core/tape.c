/* The tape: nodes in creation order (a topological order for free) and the memory that holds
 * their values. Both are reused after a rewind, so a step that builds the same graph again
 * lands on memory that is already touched. */
#include "internal.h"
#include "../autodiff/vjp.h"
#include "../kernels/kernels.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

#define NODE_BLOCK_BITS 12
#define NODE_BLOCK (1u << NODE_BLOCK_BITS)
#define ARENA_CHUNK_MIN ((size_t)16 << 20)
#define ALIGNMENT 64

typedef struct {
    char *base;
    size_t size;
} arena_chunk;

struct tg_tape {
    /* Nodes live in fixed blocks so a tg_tensor pointer never moves as the tape grows. */
    struct tg_node **blocks;
    size_t n_blocks;
    size_t n_nodes;
    /* Values: a bump allocator over chunks; [chunk, used] is the current position. */
    arena_chunk *chunks;
    size_t n_chunks;
    size_t chunk;
    size_t used;
    /* Recorded side effects (tg_assign), in order; each belongs to the node count at which
     * it was recorded, so a rewind drops the later ones. */
    /* Labels, interned: nodes point at these strings. scope is the label of new nodes. */
    char **strings;
    size_t n_strings;
    const char *scope;
    bool check_finite;
    bool tracing; /* builders record without computing (tg_tape_trace) */
    tg_tensor **update_targets;
    tg_tensor **update_values;
    size_t n_updates;
    size_t cap_updates;
    struct tg_comm *comm; /* the all-reduce's ranks (tg_tape_set_comm); NULL: one rank */
};

const tg_op_info tg_op_table[TG_OP_COUNT] = {
#define TG_OP(e, nm, ar, kern, rule, fl) [TG_OP_##e] = {nm, ar, kern, rule, fl},
#include "ops.def"
#undef TG_OP
};
/* Keeps the count honest: a new primitive also needs a gradcheck case in tests/ and a line in
 * docs/design.md; update this number when both are there. */
_Static_assert(TG_OP_COUNT == 27, "ops.def changed: add gradcheck cases and docs, then update");

const char *tg_op_name(tg_op op)
{
    return (unsigned)op < TG_OP_COUNT ? tg_op_table[op].name : "unknown op";
}

/* Rules planted by tests; the table itself stays read-only. */
static tg_vjp_fn planted_rules[TG_OP_COUNT];

tg_vjp_fn tg_debug_swap_vjp(tg_op op, tg_vjp_fn rule)
{
    tg_vjp_fn old = tg_vjp_of(op);
    planted_rules[op] = rule == tg_op_table[op].vjp ? NULL : rule;
    return old;
}

tg_vjp_fn tg_vjp_of(tg_op op) { return planted_rules[op] ? planted_rules[op] : tg_op_table[op].vjp; }

tg_tape *tg_tape_new(void)
{
    tg_tape *tape = calloc(1, sizeof *tape);
    if (!tape)
        tg_fail(TG_ERR_NOMEM, "tg_tape_new: out of memory");
    return tape;
}

void tg_tape_free(tg_tape *tape)
{
    if (!tape)
        return;
    for (size_t i = 0; i < tape->n_blocks; i++)
        free(tape->blocks[i]);
    for (size_t i = 0; i < tape->n_strings; i++)
        free(tape->strings[i]);
    free(tape->strings);
    free(tape->blocks);
    for (size_t i = 0; i < tape->n_chunks; i++)
        free(tape->chunks[i].base);
    free(tape->chunks);
    free(tape->update_targets);
    free(tape->update_values);
    free(tape);
}

tg_mark tg_tape_mark(const tg_tape *tape)
{
    tg_mark mark = {0, 0, 0};
    if (tape) {
        mark.nodes = tape->n_nodes;
        mark.chunk = tape->chunk;
        mark.used = tape->used;
    }
    return mark;
}

int tg_tape_rewind(tg_tape *tape, tg_mark mark)
{
    if (!tape)
        return tg_fail(TG_ERR_NULL, "tg_tape_rewind: tape is NULL");
    if (mark.nodes > tape->n_nodes || mark.chunk > tape->chunk ||
        (mark.chunk == tape->chunk && mark.used > tape->used))
        return tg_fail(TG_ERR_TAPE, "tg_tape_rewind: the mark (%zu nodes) is ahead of the "
                       "tape (%zu nodes); it belongs to another tape or a dropped part",
                       mark.nodes, tape->n_nodes);
    while (tape->n_updates && tape->update_values[tape->n_updates - 1]->id >= mark.nodes)
        tape->n_updates--;
    tape->n_nodes = mark.nodes;
    tape->chunk = mark.chunk;
    tape->used = mark.used;
    return TG_OK;
}

size_t tg_tape_size(const tg_tape *tape) { return tape ? tape->n_nodes : 0; }

size_t tg_tape_bytes(const tg_tape *tape)
{
    size_t total = 0;
    for (size_t i = 0; tape && i < tape->n_chunks; i++)
        total += tape->chunks[i].size;
    return total;
}

bool tg_node_is_live(const struct tg_node *n)
{
    return n->tape && n->id < n->tape->n_nodes &&
           &n->tape->blocks[n->id >> NODE_BLOCK_BITS][n->id & (NODE_BLOCK - 1)] == n;
}

bool tg_check_inputs(const char *op, int n, tg_tensor *const *in)
{
    for (int i = 0; i < n; i++) {
        if (in[i] == NULL) {
            tg_fail_null_input(op, i);
            return false;
        }
    }
    for (int i = 0; i < n; i++) {
        if (!tg_node_is_live(in[i])) {
            tg_fail(TG_ERR_TAPE, "%s: input %d was dropped by tg_tape_rewind", op, i);
            return false;
        }
    }
    for (int i = 1; i < n; i++) {
        if (in[i]->tape != in[0]->tape) {
            tg_fail(TG_ERR_TAPE, "%s: input %d is on a different tape from input 0", op, i);
            return false;
        }
    }
    return true;
}

tg_tensor *tg_tape_node(const tg_tape *tape, size_t index)
{
    if (!tape || index >= tape->n_nodes)
        return NULL;
    return &tape->blocks[index >> NODE_BLOCK_BITS][index & (NODE_BLOCK - 1)];
}

/* Inserts a fresh chunk right after the current one and makes it current, so that the same
 * sequence of allocations after a rewind finds it again in the same place. */
static bool arena_add_chunk(tg_tape *tape, size_t at_least)
{
    size_t size = at_least > ARENA_CHUNK_MIN ? at_least : ARENA_CHUNK_MIN;
    arena_chunk *chunks = realloc(tape->chunks, (tape->n_chunks + 1) * sizeof *chunks);
    if (!chunks)
        return false;
    tape->chunks = chunks;
    char *base = aligned_alloc(ALIGNMENT, size);
    if (!base)
        return false;
    size_t at = tape->n_chunks ? tape->chunk + 1 : 0;
    memmove(&chunks[at + 1], &chunks[at], (tape->n_chunks - at) * sizeof *chunks);
    chunks[at] = (arena_chunk){base, size};
    tape->n_chunks++;
    tape->chunk = at;
    tape->used = 0;
    return true;
}

void *tg_tape_alloc(tg_tape *tape, size_t bytes)
{
    bytes = bytes ? (bytes + ALIGNMENT - 1) / ALIGNMENT * ALIGNMENT : ALIGNMENT;
    if (bytes > SIZE_MAX / 2)
        return NULL;
    while (!tape->n_chunks || tape->used + bytes > tape->chunks[tape->chunk].size) {
        /* The next chunk, kept from an earlier step, if it fits; else a new one. */
        if (tape->n_chunks && tape->chunk + 1 < tape->n_chunks &&
            tape->chunks[tape->chunk + 1].size >= bytes) {
            tape->chunk++;
            tape->used = 0;
        } else if (!arena_add_chunk(tape, bytes)) {
            return NULL;
        }
    }
    void *p = tape->chunks[tape->chunk].base + tape->used;
    tape->used += bytes;
    return p;
}

/* with_value: allocate (or alias, for views) the value buffer. */
static struct tg_node *node_new(tg_tape *tape, tg_op op, tg_dtype dt, int ndim,
                                const int64_t *shape, int n_in, struct tg_node *const *in,
                                bool with_value)
{
    if (ndim < 0 || ndim > TG_MAX_DIMS) {
        tg_fail(TG_ERR_SHAPE, "%s: %d dimensions (at most %d)", tg_op_name(op), ndim,
                TG_MAX_DIMS);
        return NULL;
    }
    int64_t numel = 1;
    for (int i = 0; i < ndim; i++) {
        if (shape[i] < 0) {
            tg_fail(TG_ERR_SHAPE, "%s: dimension %d is negative (%lld)", tg_op_name(op), i,
                    (long long)shape[i]);
            return NULL;
        }
        if (shape[i] && numel > INT64_MAX / 8 / shape[i]) {
            tg_fail(TG_ERR_SHAPE, "%s: the shape has too many elements", tg_op_name(op));
            return NULL;
        }
        numel *= shape[i];
    }
    if (tape->n_nodes == tape->n_blocks * NODE_BLOCK) {
        struct tg_node **blocks = realloc(tape->blocks, (tape->n_blocks + 1) * sizeof *blocks);
        if (!blocks)
            goto nomem;
        tape->blocks = blocks;
        blocks[tape->n_blocks] = calloc(NODE_BLOCK, sizeof(struct tg_node));
        if (!blocks[tape->n_blocks])
            goto nomem;
        tape->n_blocks++;
    }
    size_t id = tape->n_nodes;
    struct tg_node *n = &tape->blocks[id >> NODE_BLOCK_BITS][id & (NODE_BLOCK - 1)];
    memset(n, 0, sizeof *n);
    n->tape = tape;
    n->id = id;
    n->op = op;
    n->dtype = dt;
    n->ndim = ndim;
    if (ndim > 0)
        memcpy(n->shape, shape, (size_t)ndim * sizeof *shape);
    n->numel = numel;
    n->label = tape->scope;
    n->n_in = n_in;
    for (int i = 0; i < n_in; i++)
        n->in[i] = in[i];
    n->traced = tape->tracing;
    if (!with_value) {
        n->data = NULL; /* a plan gives it memory when it is compiled */
    } else if (tg_op_table[op].flags & TG_OPF_VIEW) {
        n->data = in[0]->data;
    } else {
        size_t elem = dt == TG_F64 ? sizeof(double) : sizeof(float);
        n->data = tg_tape_alloc(tape, (size_t)numel * elem);
        if (!n->data)
            goto nomem;
    }
    tape->n_nodes++;
    return n;
nomem:
    tg_fail(TG_ERR_NOMEM, "%s: out of memory", tg_op_name(op));
    return NULL;
}

struct tg_node *tg_node_new(tg_tape *tape, tg_op op, tg_dtype dt, int ndim,
                            const int64_t *shape, int n_in, struct tg_node *const *in)
{
    /* While tracing, leaves are constants of the trace and keep their value. */
    return node_new(tape, op, dt, ndim, shape, n_in, in, !tape->tracing || op == TG_OP_LEAF);
}

void tg_node_compute(struct tg_node *n)
{
    const tg_op_info *info = &tg_op_table[n->op];
    if (!info->kernel || (info->flags & TG_OPF_VIEW) || !n->data)
        return;
    const void *ins[3] = {NULL, NULL, NULL};
    for (int i = 0; i < n->n_in; i++)
        ins[i] = n->in[i]->data;
    info->kernel(n, n->data, ins);
}

/* Index of the first NaN (or, with infinities, the first NaN or inf) in n's value; -1. */
static int64_t first_nonfinite(const struct tg_node *n, bool infinities, double *value)
{
    for (int64_t i = 0; i < n->numel; i++) {
        double v = n->dtype == TG_F64 ? ((const double *)n->data)[i]
                                      : ((const float *)n->data)[i];
        if (isnan(v) || (infinities && isinf(v))) {
            *value = v;
            return i;
        }
    }
    return -1;
}

/* A NaN is always reported. An infinity is reported where this node made it: not when an
 * input already held one (a max-pool pads with -inf and moves it through im2col on purpose),
 * nor when it is a pad's fill value. */
int tg_node_check_finite(const struct tg_node *n)
{
    if (!n->tape->check_finite || !n->data)
        return TG_OK;
    bool infinities = !(n->op == TG_OP_PAD && isinf(n->fattr));
    double value = 0, ignored;
    for (int i = 0; i < n->n_in && infinities; i++)
        infinities = first_nonfinite(n->in[i], true, &ignored) < 0;
    int64_t bad = first_nonfinite(n, infinities, &value);
    if (bad < 0)
        return TG_OK;
    char shape[128];
    return tg_fail(TG_ERR_NUMERIC, "%s produced %s at element %lld (node %zu, %s %s%s%s%s)",
                   tg_op_name(n->op), isnan(value) ? "nan" : "inf", (long long)bad, n->id,
                   tg_dtype_name(n->dtype), tg_shape_str(shape, sizeof shape, n->ndim, n->shape),
                   n->label ? ", in '" : "", n->label ? n->label : "", n->label ? "'" : "");
}

const char *tg_intern_in(char ***strings, size_t *count, const char *text)
{
    for (size_t i = 0; i < *count; i++)
        if (strcmp((*strings)[i], text) == 0)
            return (*strings)[i];
    char **grown = realloc(*strings, (*count + 1) * sizeof *grown);
    if (!grown)
        return NULL;
    *strings = grown;
    size_t len = strlen(text) + 1;
    char *copy = malloc(len);
    if (!copy)
        return NULL;
    memcpy(copy, text, len);
    grown[(*count)++] = copy;
    return copy;
}

const char *tg_tape_intern(tg_tape *tape, const char *text)
{
    return tg_intern_in(&tape->strings, &tape->n_strings, text);
}

int tg_tape_set_scope(tg_tape *tape, const char *scope)
{
    if (!tape)
        return tg_fail(TG_ERR_NULL, "tg_tape_set_scope: tape is NULL");
    if (!scope || !scope[0]) {
        tape->scope = NULL;
        return TG_OK;
    }
    const char *interned = tg_tape_intern(tape, scope);
    if (!interned)
        return tg_fail(TG_ERR_NOMEM, "tg_tape_set_scope: out of memory");
    tape->scope = interned;
    return TG_OK;
}

const char *tg_tape_scope(const tg_tape *tape) { return tape && tape->scope ? tape->scope : ""; }

int tg_tape_set_check_finite(tg_tape *tape, bool on)
{
    if (!tape)
        return tg_fail(TG_ERR_NULL, "tg_tape_set_check_finite: tape is NULL");
    tape->check_finite = on;
    return TG_OK;
}

bool tg_tape_checks_finite(const tg_tape *tape) { return tape && tape->check_finite; }
int tg_assign(tg_tensor *target, tg_tensor *value)
{
    tg_tensor *in[2] = {target, value};
    if (!tg_check_inputs("assign", 2, in))
        return tg_last_error_code();
    if (target->op != TG_OP_LEAF)
        return tg_fail(TG_ERR_ARG, "assign: the target must be a leaf, not a %s node",
                       tg_op_name(target->op));
    tg_status same = tg_check_same_type("assign", "the value", value, "the target", target);
    if (same != TG_OK)
        return same;
    tg_tape *tape = target->tape;
    if (tape->n_updates == tape->cap_updates) {
        size_t cap = tape->cap_updates ? 2 * tape->cap_updates : 16;
        tg_tensor **t = realloc(tape->update_targets, cap * sizeof *t);
        if (t)
            tape->update_targets = t;
        tg_tensor **v = realloc(tape->update_values, cap * sizeof *v);
        if (v)
            tape->update_values = v;
        if (!t || !v)
            return tg_fail(TG_ERR_NOMEM, "assign: out of memory");
        tape->cap_updates = cap;
    }
    tape->update_targets[tape->n_updates] = target;
    tape->update_values[tape->n_updates] = value;
    tape->n_updates++;
    if (tape->tracing || !value->data) /* a plan applies it when it runs */
        return TG_OK;
    size_t elem = value->dtype == TG_F64 ? sizeof(double) : sizeof(float);
    memmove(target->data, value->data, (size_t)value->numel * elem);
    return TG_OK;
}

size_t tg_tape_updates(const tg_tape *tape, tg_tensor ***targets, tg_tensor ***values)
{
    if (!tape)
        return 0;
    if (targets)
        *targets = tape->update_targets;
    if (values)
        *values = tape->update_values;
    return tape->n_updates;
}


/* ---- the communicator of the all-reduce (tapegrad_dist.h) ---------------------------------- */
int tg_tape_set_comm(tg_tape *tape, struct tg_comm *comm)
{
    if (!tape)
        return tg_fail(TG_ERR_NULL, "tg_tape_set_comm: tape is NULL");
    tape->comm = comm;
    return TG_OK;
}

struct tg_comm *tg_tape_comm(const tg_tape *tape) { return tape ? tape->comm : NULL; }

/* ---- tracing ---------------------------------------------------------------------------- */
int tg_tape_trace(tg_tape *tape, bool on)
{
    if (!tape)
        return tg_fail(TG_ERR_NULL, "tg_tape_trace: tape is NULL");
    tape->tracing = on;
    return TG_OK;
}

bool tg_tape_tracing(const tg_tape *tape) { return tape && tape->tracing; }

bool tg_check_has_value(const char *who, const struct tg_node *n)
{
    if (n->data)
        return true;
    tg_fail(TG_ERR_TAPE, "%s: node %zu (%s%s%s) was traced and has no value; a compiled plan "
            "computes it", who, n->id, n->name ? "placeholder '" : tg_op_name(n->op),
            n->name ? n->name : "", n->name ? "'" : "");
    return false;
}

tg_tensor *tg_placeholder(tg_tape *tape, const char *name, tg_dtype dt, int ndim,
                          const int64_t *shape)
{
    if (!tape || !name || (ndim > 0 && !shape)) {
        tg_fail(TG_ERR_NULL, "tg_placeholder: %s is NULL",
                !tape ? "the tape" : !name ? "the name" : "shape");
        return NULL;
    }
    if (!tape->tracing) {
        tg_fail(TG_ERR_TAPE, "tg_placeholder: the tape is not tracing (call tg_tape_trace)");
        return NULL;
    }
    if (!name[0]) {
        tg_fail(TG_ERR_ARG, "tg_placeholder: the name is empty");
        return NULL;
    }
    if (dt != TG_F32 && dt != TG_F64) {
        tg_fail(TG_ERR_DTYPE, "tg_placeholder: unknown dtype %d", (int)dt);
        return NULL;
    }
    for (int i = 0; i < ndim && ndim <= TG_MAX_DIMS; i++) {
        if (shape[i] < 0) {
            tg_fail(TG_ERR_SHAPE, "tg_placeholder: dimension %d is negative (%lld)", i,
                    (long long)shape[i]);
            return NULL;
        }
    }
    const char *interned = tg_tape_intern(tape, name);
    if (!interned) {
        tg_fail(TG_ERR_NOMEM, "tg_placeholder: out of memory");
        return NULL;
    }
    struct tg_node *n = node_new(tape, TG_OP_LEAF, dt, ndim, shape, 0, NULL, false);
    if (n)
        n->name = interned;
    return n;
}
