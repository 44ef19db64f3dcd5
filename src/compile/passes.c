/* The pass pipeline: which passes run (the switches), in what order (passes.def), and the
 * dump of the graph after each one. */
#include "passes.h"
#include "pipeline.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>

typedef int (*pass_fn)(tg_graph *g, const tg_pass_ctx *ctx);

static const struct {
    const char *name;
    const char *doc;
    pass_fn run;
} passes[TG_PASS_COUNT] = {
#define TG_PASS(nm, d) [TG_PASS_ID_##nm] = {#nm, d, tg_pass_##nm},
#include "passes.def"
#undef TG_PASS
};

const char *tg_pass_name(int id)
{
    if (id == TG_PASS_ID_memplan)
        return "memplan";
    if (id == TG_PASS_ID_native)
        return "native";
    if (id == TG_PASS_ID_prologue)
        return "prologue";
    return id >= 0 && id < TG_PASS_COUNT ? passes[id].name : "?";
}

/* Adds the names in a comma-separated list to *mask; "all" means every pass. */
static int parse_disable(const char *list, uint32_t *mask)
{
    while (list && *list) {
        size_t len = strcspn(list, ",");
        bool found = false;
        for (int id = 0; id <= TG_PASS_ID_prologue; id++) {
            const char *name = tg_pass_name(id);
            if (strlen(name) == len && strncmp(name, list, len) == 0) {
                *mask |= 1u << id;
                found = true;
            }
        }
        if (len == 3 && strncmp(list, "all", 3) == 0) {
            *mask = ~0u;
            found = true;
        }
        if (!found && len > 0)
            return tg_fail(TG_ERR_ARG, "compile: no pass is called '%.*s' (passes: dce, "
                           "simplify, cse, fold_scale, lower_conv, winograd, fuse, fuse_stores, "
                           "conv_sums, memplan, native, prologue, all)",
                           (int)len, list);
        list += len;
        if (*list == ',')
            list++;
    }
    return TG_OK;
}

int tg_pipeline_disabled(const tg_compile_opts *opts, uint32_t *mask)
{
    *mask = 0;
    int status = parse_disable(opts ? opts->disable : NULL, mask);
    if (status == TG_OK)
        status = parse_disable(getenv("TG_DISABLE_PASSES"), mask);
    return status;
}

const char *tg_pipeline_dump_dir(const tg_compile_opts *opts)
{
    if (opts && opts->dump_dir)
        return opts->dump_dir;
    const char *env = getenv("TG_DUMP_PASSES");
    return env && env[0] ? env : NULL;
}

int tg_pipeline_dump(const tg_graph *g, const char *dir, int stage, const char *name,
                     const size_t *offsets, const char *note)
{
    if (!dir)
        return TG_OK;
    char path[4096];
    snprintf(path, sizeof path, "%s/%02d-%s.txt", dir, stage, name);
    FILE *f = fopen(path, "w");
    if (!f)
        return tg_fail(TG_ERR_IO, "compile: cannot write the dump %s: %s", path,
                       strerror(errno));
    if (note)
        fprintf(f, "%s", note);
    tg_graph_dump(g, f, offsets);
    if (fclose(f) != 0)
        return tg_fail(TG_ERR_IO, "compile: writing %s failed", path);
    return TG_OK;
}

int tg_pipeline_run(tg_graph *g, uint32_t disabled, bool layer_forms, const char *dump_dir,
                    tg_plan_stage *stages, int *n_stages)
{
    const tg_pass_ctx ctx = {.training = g->n_updates > 0, .layer_forms = layer_forms,
                             .native = !((disabled >> TG_PASS_ID_native) & 1)};
    int count = 0;
    stages[count].name = "traced";
    stages[count].ran = true;
    tg_graph_count(g, &stages[count].nodes, &stages[count].kernels);
    int status = tg_pipeline_dump(g, dump_dir, count, "traced", NULL, NULL);
    count++;
    for (int id = 0; id < TG_PASS_COUNT && status == TG_OK; id++) {
        bool on = !((disabled >> id) & 1);
        if (on) {
            tg_clear_error();
            status = passes[id].run(g, &ctx);
            if (status == TG_OK)
                status = tg_graph_compact(g);
            if (status != TG_OK) {
                status = tg_fail(status, "compile: pass %s failed: %s", passes[id].name,
                                 tg_last_error());
                break;
            }
        }
        stages[count].name = passes[id].name;
        stages[count].ran = on;
        tg_graph_count(g, &stages[count].nodes, &stages[count].kernels);
        char note[256];
        snprintf(note, sizeof note, "# after pass '%s' (%s)%s\n", passes[id].name,
                 passes[id].doc, on ? "" : ": switched off, the graph is unchanged");
        status = tg_pipeline_dump(g, dump_dir, count, passes[id].name, NULL, note);
        count++;
    }
    *n_stages = count;
    return status;
}
