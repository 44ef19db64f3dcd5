/* For tests only: make a communicator's next collectives fail as a broken MPI job would, so
 * what tapegrad does with TG_ERR_COMM (a plan that stops before its updates) can be tested
 * without breaking MPI itself. */
#ifndef TG_DIST_INTERNAL_H
#define TG_DIST_INTERNAL_H

#include "tapegrad_dist.h"

/* The next `count` all-reduces on comm fail with TG_ERR_COMM without communicating. */
void tg_comm_debug_fail(tg_comm *comm, int count);

#endif
