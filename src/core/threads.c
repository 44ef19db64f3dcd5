/* How many threads the kernels may use. The parallel kernels split their work by output
 * element, and every output element is computed by one thread in the same order whatever the
 * count, so results are bit-identical across thread counts. */
#include "internal.h"

#ifdef _OPENMP
#include <omp.h>
#endif

static int thread_count = 1;

int tg_set_num_threads(int n)
{
    if (n < 1 || n > 1024)
        return tg_fail(TG_ERR_ARG, "tg_set_num_threads: %d threads (1 to 1024 allowed)", n);
#ifndef _OPENMP
    if (n > 1)
        return tg_fail(TG_ERR_ARG, "tg_set_num_threads: this build has no OpenMP, so 1 thread");
#endif
    thread_count = n;
    return TG_OK;
}

int tg_num_threads(void) { return thread_count; }
