/* The arena in 2 MB pages where Linux gives them on request (transparent huge pages in their
 * "madvise" mode, as Debian's and this project's machines have them): the first step of a
 * training run took its page faults 4 KB at a time, about 25 000 for the reference model's
 * arenas, and a step's kernels walk 13 MB tensors a 4 KB translation at a time. Elsewhere,
 * or when the mapping fails, plain aligned_alloc. */
#define _DEFAULT_SOURCE /* MAP_ANONYMOUS, madvise */
#include "arena.h"

#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#if defined(__linux__)
#include <sys/mman.h>
#endif

#if defined(__linux__) && defined(MADV_HUGEPAGE)
#define HUGE_PAGE ((size_t)2 << 20)
/* Arenas below this stay in malloc's hands: a huge page would mostly be padding. */
#define HUGE_MIN ((size_t)8 << 20)

static size_t mapped_bytes(size_t bytes) { return (bytes + HUGE_PAGE - 1) / HUGE_PAGE * HUGE_PAGE; }

/* A mapping of `bytes` (a multiple of HUGE_PAGE) starting on a huge page: a mapping one page
 * longer, its unaligned head and tail unmapped. */
static char *map_aligned(size_t bytes)
{
    char *raw = mmap(NULL, bytes + HUGE_PAGE, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS,
                     -1, 0);
    if (raw == MAP_FAILED)
        return NULL;
    size_t head = (HUGE_PAGE - (uintptr_t)raw % HUGE_PAGE) % HUGE_PAGE; /* < HUGE_PAGE */
    if (head > 0)
        munmap(raw, head);
    munmap(raw + head + bytes, HUGE_PAGE - head);
    return raw + head;
}
#endif

char *tg_arena_alloc(size_t bytes)
{
    size_t lines = bytes ? (bytes + 63) / 64 * 64 : 64;
    char *arena = NULL;
#if defined(__linux__) && defined(MADV_HUGEPAGE)
    if (lines >= HUGE_MIN && (arena = map_aligned(mapped_bytes(lines))) != NULL) {
        madvise(arena, mapped_bytes(lines), MADV_HUGEPAGE); /* a hint: 4 KB pages if refused */
        memset(arena, 0, lines);
        return arena;
    }
#endif
    arena = aligned_alloc(64, lines);
    if (arena)
        memset(arena, 0, lines);
    return arena;
}

void tg_arena_free(char *arena, size_t bytes)
{
    if (!arena)
        return;
#if defined(__linux__) && defined(MADV_HUGEPAGE)
    size_t lines = bytes ? (bytes + 63) / 64 * 64 : 64;
    if (lines >= HUGE_MIN) {
        munmap(arena, mapped_bytes(lines));
        return;
    }
#endif
    (void)bytes;
    free(arena);
}
