/* A plan's arena (plan.c): one block for every intermediate value, allocated when the plan
 * is built and freed with it. */
#ifndef TG_COMPILE_ARENA_H
#define TG_COMPILE_ARENA_H

#include <stddef.h>

/* `bytes` (rounded up to a cache line; at least one line), 64-byte aligned, every page
 * touched (zeros), so that no run of the plan takes a page fault; NULL when out of memory. */
char *tg_arena_alloc(size_t bytes);

/* An arena from tg_arena_alloc of the same size (NULL: nothing). */
void tg_arena_free(char *arena, size_t bytes);

#endif
