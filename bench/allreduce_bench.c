/* Time of one all-reduce of the reference model's gradient buffer (or any size) between the
 * ranks of an MPI job, without the training around it: what a step's all-reduce costs when no
 * rank waits for a slower one. Every repeat starts after a barrier.
 *
 *   tests/mpi/mpirun.sh -np 2 build/bench/allreduce_bench [FLOATS] [REPEATS]
 *   (default 421867 floats: the reference model's gradients and the loss) */
#include "tapegrad_dist.h"

#include <stdio.h>
#include <stdlib.h>
#include <time.h>
#include "timing.h"

int main(int argc, char **argv)
{
    tg_comm *comm = tg_comm_world(&argc, &argv);
    if (!comm) {
        fprintf(stderr, "allreduce_bench: %s\n", tg_last_error());
        return 1;
    }
    long n = argc > 1 ? atol(argv[1]) : 421867, repeats = argc > 2 ? atol(argv[2]) : 200;
    float *buf = calloc((size_t)n, sizeof *buf);
    double *t = calloc((size_t)repeats, sizeof *t);
    if (!buf || !t || n < 1 || repeats < 1)
        return 1;
    for (long r = 0; r < repeats; r++) {
        tg_comm_barrier(comm);
        double start = bench_now();
        if (tg_comm_allreduce_sum(comm, buf, buf, n, TG_F32) != 0) {
            fprintf(stderr, "allreduce_bench: %s\n", tg_last_error());
            return 1;
        }
        t[r] = bench_now() - start;
    }
    qsort(t, (size_t)repeats, sizeof *t, bench_compare);
    if (tg_comm_rank(comm) == 0)
        printf("ranks=%d floats=%ld bytes=%ld median_ms=%.3f p10_ms=%.3f p90_ms=%.3f "
               "algbw_gb_s=%.2f\n", tg_comm_size(comm), n, n * 4, 1e3 * t[repeats / 2],
               1e3 * t[repeats / 10], 1e3 * t[repeats * 9 / 10],
               (double)n * 4 / t[repeats / 2] / 1e9);
    free(buf);
    free(t);
    tg_comm_free(comm);
    return 0;
}
