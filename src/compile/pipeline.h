/* Between tg_compile (plan.c) and the passes: the switches, the pipeline and its dumps, and
 * the memory plan. */
#ifndef TG_COMPILE_PIPELINE_H
#define TG_COMPILE_PIPELINE_H

#include "passes.h"

#define TG_MAX_STAGES (TG_PASS_COUNT + 1)

const char *tg_pass_name(int id);
/* Bit id set for every pass switched off by opts->disable or TG_DISABLE_PASSES. */
int tg_pipeline_disabled(const tg_compile_opts *opts, uint32_t *mask);
const char *tg_pipeline_dump_dir(const tg_compile_opts *opts);
/* Writes dir/NN-name.txt (nothing when dir is NULL). */
int tg_pipeline_dump(const tg_graph *g, const char *dir, int stage, const char *name,
                     const size_t *offsets, const char *note);
/* Runs the passes not disabled, in order, compacting after each; fills stages (the traced
 * graph, then one per pass) and dumps each into dump_dir. layer_forms: see tg_pass_ctx. */
int tg_pipeline_run(tg_graph *g, uint32_t disabled, bool layer_forms, const char *dump_dir,
                    tg_plan_stage *stages, int *n_stages);

/* ---- the memory plan (memplan.c) ---------------------------------------------------------- */
typedef struct {
    size_t *offset;        /* per node: its value's offset in the arena, SIZE_MAX for leaves
                              (views get their source's offset) */
    size_t *scratch;       /* per node: offset of its scratch blocks, SIZE_MAX for none */
    size_t arena_bytes;    /* the arena */
    size_t unplanned_bytes; /* a buffer per value, as eager execution has */
} tg_memplan;

/* Plans the arena for g run in node order by `threads` threads (scratch blocks are per
 * thread), node i inside node run_at[i]'s kernel (a prologue: prologue.h; run_at NULL:
 * each in its turn), with no memory for node i where chunked[i] (a chunked prologue; chunked
 * may be NULL). planned = false gives every value and scratch block its own memory. */
int tg_memplan_build(const tg_graph *g, int threads, bool planned, const int *run_at,
                     const bool *chunked, tg_memplan *plan);
void tg_memplan_free(tg_memplan *plan);

#endif
