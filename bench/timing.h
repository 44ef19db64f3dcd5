/* What every benchmark here times with: a monotonic clock and sorting of samples (medians and
 * percentiles come from the sorted array). Header-only: each benchmark is one program. */
#ifndef TG_BENCH_TIMING_H
#define TG_BENCH_TIMING_H

#include <time.h>

static inline double bench_now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

/* qsort comparator for doubles, ascending. */
static inline int bench_compare(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

#endif
