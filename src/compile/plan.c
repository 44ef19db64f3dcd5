/* Compiled plans: tg_compile (trace -> graph -> passes -> memory plan) and the runner.
 *
 * A plan owns its final graph, one arena for every intermediate value (offsets fixed by the
 * memory plan), and a table of value pointers. Running walks the nodes in order: views take
 * their source's pointer, kernels run on the pointers of their inputs, then the updates copy
 * their values into their targets. Nothing is allocated while running: libxsmm's kernels
 * are dispatched, the fused kernels compiled to machine code (native.h) and OpenMP's
 * threads started when the plan is built. */
#include "arena.h"
#include "native.h"
#include "pipeline.h"
#include "plan_ops.h"
#include "prologue.h"
#include "../kernels/kernels.h"

#include <stdlib.h>
#include <string.h>

#ifdef TG_PLAN_PROFILE
/* A development aid, compiled in only with -DTG_PLAN_PROFILE (meson configure
 * -Dc_args=-DTG_PLAN_PROFILE): every kernel's time is summed over the plan's runs and, when
 * the plan is freed, written to the file named by the environment variable TG_PLAN_PROFILE
 * (appended), one line per kernel, heaviest first. Off, it costs nothing. */
#include <stdio.h>
#include <time.h>
#endif

#ifdef _OPENMP
#include <omp.h>
#endif

struct tg_plan {
    tg_graph g;
    tg_memplan mem;
    char *arena;
    void **value;            /* per node: where its value is during a run */
    struct tg_node *prim;    /* per node: what the eager kernels read (shapes, attributes) */
    int threads;             /* compiled for at most this many */
    char **input_names;      /* every placeholder traced, needed by the plan or not */
    int n_input_names;
    tg_plan_stage stages[TG_MAX_STAGES];
    int n_stages;
    tg_comm *comm;           /* the all-reduce's ranks: the tape's when it was compiled */
    void *native;            /* the fused kernels compiled to machine code (native.h) */
    int n_native;
    const char *native_why;  /* why none were, when that failed */
    int *run_at;             /* per node: the kernel it runs inside (prologue.h), or itself */
    int *prologue_of;        /* per node: the node that runs inside it, or -1 */
    bool *chunked;           /* per node: a prologue that writes chunks (prologue.h) */
    size_t *chunk_at;        /* per node: where in its scratch its prologue's chunks go */
    int n_prologues;
#ifdef TG_PLAN_PROFILE
    double *seconds; /* per node, summed over runs */
    long runs;
#endif
};

#ifdef TG_PLAN_PROFILE
static double now_seconds(void)
{
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (double)t.tv_sec + 1e-9 * (double)t.tv_nsec;
}

static void write_profile(const tg_plan *p)
{
    const char *path = getenv("TG_PLAN_PROFILE");
    FILE *out = path && p->seconds && p->runs > 0 ? fopen(path, "a") : NULL;
    if (!out)
        return;
    double total = 0;
    for (int i = 0; i < p->g.n; i++)
        total += p->seconds[i];
    fprintf(out, "# plan of %d nodes: %ld runs, %.3f ms per run in kernels\n", p->g.n, p->runs,
            1e3 * total / (double)p->runs);
    for (int done = 0; done < p->g.n; done++) { /* heaviest first, by selection */
        int best = -1;
        for (int i = 0; i < p->g.n; i++)
            if (p->seconds[i] >= 0 && (best < 0 || p->seconds[i] > p->seconds[best]))
                best = i;
        if (best < 0 || p->seconds[best] <= 0)
            break;
        char what[256];
        const tg_ir_node *x = &p->g.nodes[best];
        const tg_plan_op_info *info = tg_plan_op_info_of(x->op);
        if (info)
            info->describe(x, what, sizeof what);
        else
            snprintf(what, sizeof what, "%s", tg_ir_op_name(x->op));
        fprintf(out, "%6.2f%% %8.3f ms  %%%-4d %s  [%s]\n", 100 * p->seconds[best] / total,
                1e3 * p->seconds[best] / (double)p->runs, best, what,
                x->label ? x->label : "");
        ((tg_plan *)p)->seconds[best] = -1;
    }
    fclose(out);
}
#endif

static size_t elem_size(tg_dtype dt) { return dt == TG_F64 ? sizeof(double) : sizeof(float); }

void tg_plan_free(tg_plan *plan)
{
    if (!plan)
        return;
#ifdef TG_PLAN_PROFILE
    write_profile(plan);
    free(plan->seconds);
#endif
    tg_graph_free(&plan->g);
    tg_native_unload(plan->native);
    tg_arena_free(plan->arena, plan->mem.arena_bytes); /* before the plan that sized it */
    tg_memplan_free(&plan->mem);
    free(plan->value);
    free(plan->prim);
    free(plan->run_at);
    free(plan->prologue_of);
    free(plan->chunked);
    free(plan->chunk_at);
    for (int i = 0; i < plan->n_input_names; i++)
        free(plan->input_names[i]);
    free(plan->input_names);
    free(plan);
}

/* The eager kernels read a struct tg_node: give each primitive one that mirrors its IR node. */
static void mirror_nodes(tg_plan *p)
{
    for (int i = 0; i < p->g.n; i++)
        tg_ir_mirror_node(&p->g, i, p->prim);
}

/* Everything a run would otherwise do for the first time: JIT kernels, thread start-up. */
static int prepare_kernels(tg_plan *p)
{
    for (int i = 0; i < p->g.n; i++) {
        tg_ir_node *x = &p->g.nodes[i];
        const tg_plan_op_info *info = tg_plan_op_info_of(x->op);
        int status = TG_OK;
        if (info)
            status = info->prepare(&p->g, x);
        else if (x->op == TG_OP_MATMUL)
            tg_matmul_prepare(&p->prim[i]);
        if (status != TG_OK)
            return tg_fail(status, "compile: preparing %s (node %d) failed: %s",
                           tg_ir_op_name(x->op), i, tg_last_error());
    }
#ifdef _OPENMP
    /* OpenMP allocates its team on the first parallel region (an empty one may be compiled
     * away, hence the store). */
    static volatile int team_size;
    (void)team_size;
    int threads = p->threads;
#pragma omp parallel num_threads(threads)
    team_size = omp_get_num_threads();
#endif
    return TG_OK;
}

/* Remembers the traced placeholders' names before passes may drop unneeded ones, so that
 * giving such an input its data is not an error. */
static int remember_inputs(tg_plan *p)
{
    p->input_names = calloc((size_t)p->g.n + 1, sizeof *p->input_names);
    if (!p->input_names)
        return tg_fail(TG_ERR_NOMEM, "compile: out of memory");
    for (int i = 0; i < p->g.n; i++) {
        if (p->g.nodes[i].leaf != TG_LEAF_INPUT)
            continue;
        size_t len = strlen(p->g.nodes[i].name) + 1;
        char *copy = malloc(len);
        if (!copy)
            return tg_fail(TG_ERR_NOMEM, "compile: out of memory");
        memcpy(copy, p->g.nodes[i].name, len);
        p->input_names[p->n_input_names++] = copy;
    }
    return TG_OK;
}

static int bind_values(tg_plan *p)
{
    for (int i = 0; i < p->g.n; i++) {
        const tg_ir_node *x = &p->g.nodes[i];
        if (x->leaf == TG_LEAF_CONST || x->leaf == TG_LEAF_BOUND)
            p->value[i] = x->data;
        else if (x->leaf == TG_LEAF_INPUT)
            p->value[i] = NULL; /* tg_plan_set_input */
        else if (p->mem.offset[i] != SIZE_MAX)
            p->value[i] = p->arena + p->mem.offset[i];
        else
            p->value[i] = NULL; /* a view of a leaf: resolved at run time */
    }
    return TG_OK;
}

/* Which kernels run inside others (prologue.h), when on; none when off. A chunked one's
 * chunks go at the end of its kernel's scratch, which grows by them. */
static int plan_prologues(tg_plan *p, bool on)
{
    int n = p->g.n;
    p->run_at = malloc(((size_t)n + 1) * sizeof *p->run_at);
    p->prologue_of = malloc(((size_t)n + 1) * sizeof *p->prologue_of);
    p->chunked = calloc((size_t)n + 1, sizeof *p->chunked);
    p->chunk_at = malloc(((size_t)n + 1) * sizeof *p->chunk_at);
    if (!p->run_at || !p->prologue_of || !p->chunked || !p->chunk_at)
        return tg_fail(TG_ERR_NOMEM, "compile: out of memory");
    for (int i = 0; i < n; i++)
        p->run_at[i] = i;
    if (on)
        p->n_prologues = tg_prologue_plan(&p->g, p->run_at, p->chunked);
    for (int i = 0; i < n; i++) {
        p->prologue_of[i] = -1;
        p->chunk_at[i] = SIZE_MAX;
    }
    for (int i = 0; i < n; i++) {
        if (p->run_at[i] == i)
            continue;
        tg_ir_node *kernel = &p->g.nodes[p->run_at[i]], *x = &p->g.nodes[i];
        p->prologue_of[p->run_at[i]] = i;
        if (!p->chunked[i])
            continue;
        size_t at = (kernel->scratch_bytes + 63) / 64 * 64;
        p->chunk_at[p->run_at[i]] = at;
        kernel->scratch_bytes =
            at + (size_t)tg_conv_wgrad_chunk_images(kernel) * tg_prologue_image_bytes(x);
    }
    return TG_OK;
}

tg_plan *tg_compile(tg_tape *tape, int n_outputs, tg_tensor *const *outputs,
                    const tg_compile_opts *opts)
{
    if (!tape) {
        tg_fail(TG_ERR_NULL, "compile: the tape is NULL");
        return NULL;
    }
    uint32_t disabled;
    if (tg_pipeline_disabled(opts, &disabled) != TG_OK)
        return NULL;
    const char *dump_dir = tg_pipeline_dump_dir(opts);
    tg_plan *p = calloc(1, sizeof *p);
    if (!p) {
        tg_fail(TG_ERR_NOMEM, "compile: out of memory");
        return NULL;
    }
    p->threads = tg_num_threads();
    p->comm = tg_tape_comm(tape);
    if (tg_graph_from_tape(&p->g, tape, n_outputs, outputs) != TG_OK ||
        remember_inputs(p) != TG_OK ||
        tg_pipeline_run(&p->g, disabled, false, dump_dir, p->stages, &p->n_stages) != TG_OK)
        goto fail;
    p->prim = calloc((size_t)p->g.n + 1, sizeof *p->prim);
    p->value = calloc((size_t)p->g.n + 1, sizeof *p->value);
#ifdef TG_PLAN_PROFILE
    p->seconds = calloc((size_t)p->g.n + 1, sizeof *p->seconds);
#endif
    if (!p->prim || !p->value) {
        tg_fail(TG_ERR_NOMEM, "compile: out of memory");
        goto fail;
    }
    mirror_nodes(p);
    if (prepare_kernels(p) != TG_OK)
        goto fail;
    if (!((disabled >> TG_PASS_ID_native) & 1))
        p->native = tg_native_load(&p->g, dump_dir, &p->n_native, &p->native_why);
    if (plan_prologues(p, !((disabled >> TG_PASS_ID_prologue) & 1)) != TG_OK)
        goto fail;
    bool planned = !((disabled >> TG_PASS_ID_memplan) & 1);
    if (tg_memplan_build(&p->g, p->threads, planned, p->run_at, p->chunked, &p->mem) != TG_OK)
        goto fail;
    p->arena = tg_arena_alloc(p->mem.arena_bytes); /* every page touched: no run pays for it */
    if (!p->arena) {
        tg_fail(TG_ERR_NOMEM, "compile: out of memory for a %zu-byte arena",
                p->mem.arena_bytes);
        goto fail;
    }
    bind_values(p);
    if (dump_dir) {
        char note[1024];
        int used = snprintf(note, sizeof note, "# memory plan: arena %.2f MB (%s), a buffer "
                            "each would take %.2f MB\n# native kernels: %d%s%s\n# prologues: %d",
                            (double)p->mem.arena_bytes / 1e6,
                            planned ? "planned" : "switched off: a buffer each",
                            (double)p->mem.unplanned_bytes / 1e6, p->n_native,
                            p->native_why ? ", none compiled: " : "",
                            p->native_why ? p->native_why : "", p->n_prologues);
        for (int i = 0; i < p->g.n && used > 0 && (size_t)used < sizeof note - 32; i++)
            if (p->run_at[i] != i)
                used += snprintf(note + used, sizeof note - (size_t)used, " (%%%d inside %%%d%s)",
                                 i, p->run_at[i], p->chunked[i] ? ", chunked" : "");
        if (used > 0 && (size_t)used < sizeof note - 1)
            snprintf(note + used, sizeof note - (size_t)used, "\n");
        if (tg_pipeline_dump(&p->g, dump_dir, p->n_stages, "memplan", p->mem.offset, note) !=
            TG_OK)
            goto fail;
    }
    return p;
fail:
    tg_plan_free(p);
    return NULL;
}

int tg_plan_set_input(tg_plan *plan, const char *name, const void *data)
{
    if (!plan || !name || !data)
        return tg_fail(TG_ERR_NULL, "tg_plan_set_input: %s is NULL",
                       !plan ? "the plan" : !name ? "the name" : "data");
    bool found = false;
    for (int i = 0; i < plan->g.n; i++) {
        if (plan->g.nodes[i].leaf == TG_LEAF_INPUT && strcmp(plan->g.nodes[i].name, name) == 0) {
            plan->value[i] = (void *)data;
            found = true;
        }
    }
    for (int i = 0; i < plan->n_input_names && !found; i++)
        found = strcmp(plan->input_names[i], name) == 0; /* traced, but no longer needed */
    return found ? TG_OK
                 : tg_fail(TG_ERR_ARG, "tg_plan_set_input: the plan has no input '%s'", name);
}

/* The collective: run by the plan itself, as it needs the communicator and can fail. */
static int run_allreduce(tg_plan *p, int i)
{
    const tg_ir_node *x = &p->g.nodes[i];
    if (tg_comm_allreduce_sum(p->comm, p->value[x->in[0]], p->value[i], x->numel, x->dtype) ==
        TG_OK)
        return TG_OK;
    return tg_fail(TG_ERR_COMM, "tg_plan_run: the all-reduce (node %d%s%s) failed; no update "
                   "was applied: %s", i, x->label ? ", in " : "", x->label ? x->label : "",
                   tg_last_error());
}

static void run_kernel(tg_plan *p, int i)
{
    tg_ir_node *x = &p->g.nodes[i];
    const void *ins[TG_IR_MAX_IN];
    for (int k = 0; k < x->n_in; k++)
        ins[k] = p->value[x->in[k]];
    const tg_plan_op_info *info = tg_plan_op_info_of(x->op);
    if (info) {
        void *scratch = p->mem.scratch[i] != SIZE_MAX ? p->arena + p->mem.scratch[i] : NULL;
        tg_prologue pr;
        int from = p->prologue_of[i];
        if (from >= 0) { /* the kernel runs node `from` itself, chunk by chunk */
            const tg_ir_node *y = &p->g.nodes[from];
            pr = (tg_prologue){.node = y, .out = p->chunked[from] ? NULL : p->value[from],
                               .chunk_at = p->chunk_at[i]};
            for (int k = 0; k < y->n_in; k++)
                pr.in[k] = p->value[y->in[k]];
            x->prologue = &pr;
        }
        info->kernel(x, p->value[i], ins, scratch);
        x->prologue = NULL;
    } else {
        tg_op_table[x->op].kernel(&p->prim[i], p->value[i], ins);
    }
}

int tg_plan_run(tg_plan *plan)
{
    if (!plan)
        return tg_fail(TG_ERR_NULL, "tg_plan_run: the plan is NULL");
    if (tg_num_threads() > plan->threads)
        return tg_fail(TG_ERR_ARG, "tg_plan_run: %d threads, but the plan was compiled for %d; "
                       "compile it again", tg_num_threads(), plan->threads);
    tg_graph *g = &plan->g;
    for (int i = 0; i < g->n; i++)
        if (g->nodes[i].leaf == TG_LEAF_INPUT && !plan->value[i])
            return tg_fail(TG_ERR_ARG, "tg_plan_run: input '%s' is not set (tg_plan_set_input)",
                           g->nodes[i].name);
    for (int i = 0; i < g->n; i++) {
        const tg_ir_node *x = &g->nodes[i];
        if (x->op == TG_OP_LEAF)
            continue;
        if (tg_ir_is_view(x->op))
            plan->value[i] = plan->value[x->in[0]];
        else if (plan->run_at[i] != i)
            continue; /* a prologue: run by the kernel at run_at[i] */
        else if (x->op == TG_OP_ALLREDUCE) {
            if (run_allreduce(plan, i) != TG_OK)
                return TG_ERR_COMM;
        } else {
#ifdef TG_PLAN_PROFILE
            double t0 = now_seconds();
            run_kernel(plan, i);
            if (plan->seconds)
                plan->seconds[i] += now_seconds() - t0;
#else
            run_kernel(plan, i);
#endif
        }
    }
#ifdef TG_PLAN_PROFILE
    plan->runs++;
#endif
    for (int u = 0; u < g->n_updates; u++) {
        const tg_ir_node *t = &g->nodes[g->update_target[u]];
        memmove(plan->value[g->update_target[u]], plan->value[g->update_value[u]],
                (size_t)t->numel * elem_size(t->dtype));
    }
    return TG_OK;
}

const void *tg_plan_output(const tg_plan *plan, int index)
{
    if (!plan || index < 0 || index >= plan->g.n_outputs) {
        tg_fail(plan ? TG_ERR_ARG : TG_ERR_NULL, "tg_plan_output: %s", plan ? "no such output"
                                                                          : "the plan is NULL");
        return NULL;
    }
    return plan->value[plan->g.outputs[index]];
}

int tg_plan_stages(const tg_plan *plan, int i, tg_plan_stage *info)
{
    if (!plan)
        return tg_fail(TG_ERR_NULL, "tg_plan_stages: the plan is NULL");
    if (info && i >= 0 && i < plan->n_stages)
        *info = plan->stages[i];
    return plan->n_stages;
}

size_t tg_plan_arena_bytes(const tg_plan *plan) { return plan ? plan->mem.arena_bytes : 0; }
size_t tg_plan_unplanned_bytes(const tg_plan *plan) { return plan ? plan->mem.unplanned_bytes : 0; }

/* For tests: the plan's final graph. */
const tg_graph *tg_plan_graph(const tg_plan *plan) { return plan ? &plan->g : NULL; }
int tg_plan_prologues(const tg_plan *plan) { return plan ? plan->n_prologues : 0; }

int tg_plan_chunked_prologues(const tg_plan *plan)
{
    int count = 0;
    for (int i = 0; plan && i < plan->g.n; i++)
        count += plan->run_at[i] != i && plan->chunked[i];
    return count;
}
