/* Native kernels: a plan's fused programs emitted as C (kernels/fused_emit.c), compiled by
 * the system's C compiler into a shared object when the plan is built, and loaded
 * (native.c). Switched off like a pass ("native" in TG_DISABLE_PASSES); where no compiler
 * runs, or a program is not one the emitter writes, the interpreter (kernels/fused.c) runs
 * it, with the same results up to the order of a sum's additions. */
#ifndef TG_COMPILE_NATIVE_H
#define TG_COMPILE_NATIVE_H

#include "graph.h"

#include <stdarg.h>
#include <stdbool.h>
#include <stddef.h>

/* A growing string; after a failed allocation it stays as it was and `failed` is set. */
typedef struct tg_text {
    char *s;
    size_t len, cap;
    bool failed;
} tg_text;

void tg_text_printf(tg_text *t, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
void tg_text_free(tg_text *t);

/* The shared object of g's native kernels, loaded, with each FUSED node the emitter writes
 * pointed at its function (tg_fused_program.native). Returns the handle for
 * tg_native_unload, or NULL where nothing was compiled (no such node, no compiler, a
 * failed compile: the interpreter runs them all; *why then says why, when it was not the
 * first). *count: the kernels made native. With dump_dir, the C is written there too
 * (native.c). Never fails the plan. */
void *tg_native_load(tg_graph *g, const char *dump_dir, int *count, const char **why);
void tg_native_unload(void *handle);

#endif
