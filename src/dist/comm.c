/* Communicators: the one-rank communicator (always there) and the MPI one (with the `mpi`
 * feature, TG_HAVE_MPI). A communicator does three collectives on raw buffers: sum, broadcast
 * and barrier; the all-reduce primitive (allreduce.c) and plans (compile/plan.c) call them.
 *
 * MPI errors are returned, never fatal: the communicator is a duplicate of MPI_COMM_WORLD
 * with MPI_ERRORS_RETURN, so a failed collective becomes TG_ERR_COMM and MPI's message. */
#include "internal.h"
#include "dist_internal.h"
#include "tapegrad_dist.h"

#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#ifdef TG_HAVE_MPI
#include <mpi.h>
#endif

struct tg_comm {
    int rank, size;
    tg_comm_stats stats;
    int fail_next; /* tg_comm_debug_fail */
#ifdef TG_HAVE_MPI
    bool mpi;       /* false: the one-rank communicator */
    MPI_Comm world; /* our duplicate of MPI_COMM_WORLD */
#endif
};

/* MPI takes int counts: longer buffers go in pieces of this many elements. */
#define MAX_CHUNK ((int64_t)1 << 30)

bool tg_dist_has_mpi(void)
{
#ifdef TG_HAVE_MPI
    return true;
#else
    return false;
#endif
}

tg_comm *tg_comm_single(void)
{
    tg_comm *c = calloc(1, sizeof *c);
    if (!c) {
        tg_fail(TG_ERR_NOMEM, "tg_comm_single: out of memory");
        return NULL;
    }
    c->rank = 0;
    c->size = 1;
    return c;
}

#ifdef TG_HAVE_MPI
/* Communicators made while MPI was started by us: the last one freed finalizes it. */
static int started_by_us_live;
static bool started_by_us;

static int mpi_fail(int code, const char *what)
{
    char text[MPI_MAX_ERROR_STRING];
    int len = 0;
    if (MPI_Error_string(code, text, &len) != MPI_SUCCESS)
        snprintf(text, sizeof text, "MPI error %d", code);
    return tg_fail(TG_ERR_COMM, "%s failed: %s (a rank may have stopped; see the launcher's "
                   "messages)", what, text);
}
#endif

tg_comm *tg_comm_world(int *argc, char ***argv)
{
#ifdef TG_HAVE_MPI
    int initialized = 0, finalized = 0;
    MPI_Initialized(&initialized);
    MPI_Finalized(&finalized);
    if (finalized) {
        tg_fail(TG_ERR_COMM, "tg_comm_world: MPI was already finalized");
        return NULL;
    }
    if (!initialized) {
        /* Only the calling thread talks to MPI; OpenMP's threads never do. */
        int provided;
        if (MPI_Init_thread(argc, argv, MPI_THREAD_FUNNELED, &provided) != MPI_SUCCESS) {
            tg_fail(TG_ERR_COMM, "tg_comm_world: MPI_Init_thread failed");
            return NULL;
        }
        started_by_us = true;
    }
    tg_comm *c = calloc(1, sizeof *c);
    if (!c) {
        tg_fail(TG_ERR_NOMEM, "tg_comm_world: out of memory");
        return NULL;
    }
    int rc = MPI_Comm_dup(MPI_COMM_WORLD, &c->world);
    if (rc == MPI_SUCCESS)
        rc = MPI_Comm_set_errhandler(c->world, MPI_ERRORS_RETURN);
    if (rc == MPI_SUCCESS)
        rc = MPI_Comm_rank(c->world, &c->rank);
    if (rc == MPI_SUCCESS)
        rc = MPI_Comm_size(c->world, &c->size);
    if (rc != MPI_SUCCESS) {
        mpi_fail(rc, "tg_comm_world: duplicating MPI_COMM_WORLD");
        free(c);
        return NULL;
    }
    c->mpi = true;
    if (started_by_us)
        started_by_us_live++;
    return c;
#else
    TG_UNUSED(argc);
    TG_UNUSED(argv);
    return tg_comm_single();
#endif
}

void tg_comm_free(tg_comm *comm)
{
    if (!comm)
        return;
#ifdef TG_HAVE_MPI
    if (comm->mpi) {
        int finalized = 0;
        MPI_Finalized(&finalized);
        if (!finalized) {
            MPI_Comm_free(&comm->world);
            if (started_by_us && --started_by_us_live == 0) {
                MPI_Finalize();
                started_by_us = false;
            }
        }
    }
#endif
    free(comm);
}

#ifdef TG_HAVE_MPI
static double now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}
#endif

int tg_comm_get_stats(const tg_comm *comm, tg_comm_stats *stats)
{
    if (!comm || !stats)
        return tg_fail(TG_ERR_NULL, "tg_comm_get_stats: %s is NULL", !comm ? "comm" : "stats");
    *stats = comm->stats;
    return TG_OK;
}

void tg_comm_reset_stats(tg_comm *comm)
{
    if (comm)
        comm->stats = (tg_comm_stats){0, 0, 0};
}

int tg_comm_abort(tg_comm *comm, int status)
{
#ifdef TG_HAVE_MPI
    if (comm && comm->mpi && comm->size > 1)
        MPI_Abort(comm->world, status);
#endif
    TG_UNUSED(comm);
    return tg_fail(TG_ERR_ARG, "tg_comm_abort: a one-rank communicator has no job to stop "
                   "(status %d)", status);
}

int tg_comm_rank(const tg_comm *comm) { return comm ? comm->rank : 0; }
int tg_comm_size(const tg_comm *comm) { return comm ? comm->size : 1; }

static size_t elem_size(tg_dtype dt) { return dt == TG_F64 ? sizeof(double) : sizeof(float); }

void tg_comm_debug_fail(tg_comm *comm, int count)
{
    if (comm)
        comm->fail_next = count;
}

int tg_comm_allreduce_sum(tg_comm *comm, const void *send, void *recv, int64_t n, tg_dtype dt)
{
    if (comm && comm->fail_next > 0) {
        comm->fail_next--;
        return tg_fail(TG_ERR_COMM, "allreduce failed: a failure planted by a test");
    }
    if (!send || !recv)
        return tg_fail(TG_ERR_NULL, "allreduce: %s is NULL", !send ? "send" : "recv");
    if (n < 0 || (dt != TG_F32 && dt != TG_F64))
        return tg_fail(TG_ERR_ARG, "allreduce: %lld values of dtype %d", (long long)n, (int)dt);
#ifdef TG_HAVE_MPI
    if (comm && comm->mpi && comm->size > 1) {
        MPI_Datatype type = dt == TG_F64 ? MPI_DOUBLE : MPI_FLOAT;
        size_t elem = elem_size(dt);
        double start = now();
        for (int64_t at = 0; at < n; at += MAX_CHUNK) {
            int count = (int)(n - at < MAX_CHUNK ? n - at : MAX_CHUNK);
            char *out = (char *)recv + (size_t)at * elem;
            const void *in = send == recv ? MPI_IN_PLACE : (const char *)send + (size_t)at * elem;
            int rc = MPI_Allreduce(in, out, count, type, MPI_SUM, comm->world);
            if (rc != MPI_SUCCESS)
                return mpi_fail(rc, "allreduce");
        }
        comm->stats.calls++;
        comm->stats.bytes += n * (int64_t)elem;
        comm->stats.seconds += now() - start;
        return TG_OK;
    }
#endif
    TG_UNUSED(comm);
    if (send != recv)
        memmove(recv, send, (size_t)n * elem_size(dt));
    return TG_OK;
}

int tg_comm_broadcast(tg_comm *comm, void *data, int64_t bytes, int root)
{
    if (!data)
        return tg_fail(TG_ERR_NULL, "broadcast: data is NULL");
    if (bytes < 0 || root < 0 || root >= tg_comm_size(comm))
        return tg_fail(TG_ERR_ARG, "broadcast: %lld bytes from rank %d of %d", (long long)bytes,
                       root, tg_comm_size(comm));
#ifdef TG_HAVE_MPI
    if (comm && comm->mpi && comm->size > 1) {
        for (int64_t at = 0; at < bytes; at += MAX_CHUNK) {
            int count = (int)(bytes - at < MAX_CHUNK ? bytes - at : MAX_CHUNK);
            int rc = MPI_Bcast((char *)data + at, count, MPI_BYTE, root, comm->world);
            if (rc != MPI_SUCCESS)
                return mpi_fail(rc, "broadcast");
        }
    }
#endif
    return TG_OK;
}

int tg_comm_barrier(tg_comm *comm)
{
#ifdef TG_HAVE_MPI
    if (comm && comm->mpi && comm->size > 1) {
        int rc = MPI_Barrier(comm->world);
        if (rc != MPI_SUCCESS)
            return mpi_fail(rc, "barrier");
    }
#endif
    TG_UNUSED(comm);
    return TG_OK;
}
