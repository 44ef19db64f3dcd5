/* What the fusion pass's steps share (compile/pass_fuse.c builds the kernels and merges
 * sibling reductions; compile/fuse_ties.c joins a max and the count of its ties). */
#ifndef TG_COMPILE_FUSE_INTERNAL_H
#define TG_COMPILE_FUSE_INTERNAL_H

#include "graph.h"

/* Whether v is an output of the graph, an update's value or an update's target. */
bool tg_fuse_is_root(const tg_graph *g, int v);

/* Whether every reader of v is a FUSED kernel, or a reshape (not a root) read only by FUSED
 * kernels. */
bool tg_fuse_read_by_kernels_only(const tg_graph *g, int v);

/* Whether every reader of v (and of its reshapes) is a FUSED kernel, v and those reshapes
 * being allowed to be roots: tg_fuse_copy_roots then gives each root a FUSED copy that is
 * the root instead, so that every reader is a FUSED kernel (a merged node is no root's
 * shape). Returns 0 or a negative status. */
bool tg_fuse_read_by_kernels_or_roots(const tg_graph *g, int v);
int tg_fuse_copy_roots(tg_graph *g, int v);

/* Whether `a` is among the inputs of b, transitively (the graph is in topological order,
 * so only nodes after a can need it); seen: a zeroed mark per node. */
bool tg_fuse_needs(const tg_graph *g, int b, int a, char *seen);

/* Points every kernel that read `old` (directly or through a reshape) at `merged`, whose
 * output holds old's values from element `block` on. */
void tg_fuse_redirect_readers(tg_graph *g, int old, int merged, int64_t block);

/* A max over windows and the count of the points equal to it (a max's gradient divides by
 * it) become one kernel that folds both (fuse_ties.c). */
int tg_fuse_join_tie_counts(tg_graph *g);

#endif
