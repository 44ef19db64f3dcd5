/** @file tapegrad_dist.h
 * Data-parallel training: communicators and the all-reduce primitive.
 *
 * A communicator (tg_comm) is a group of ranks, one process each, that run the same program
 * on their own shards of the data. tapegrad has one collective primitive,
 * tg_allreduce_sum(): its value on every rank is the element-wise sum of its input over all
 * ranks. It is an ordinary node of the tape: it is differentiated (its gradient is the
 * all-reduce of the incoming gradient, so it is its own adjoint and gradients of gradients
 * work), traced and compiled into a plan like any other op, and it runs over the
 * communicator attached to its tape (tg_tape_set_comm). Without one, or with one rank, it is
 * the identity.
 *
 * Every rank must build and run the same graph: the collectives of a step are matched by
 * their order, so ranks that disagree about the graph deadlock or fail. Compilation is
 * deterministic, so ranks that trace the same code compile the same plan.
 *
 * Backends: Open MPI when tapegrad was built with the `mpi` feature (tg_dist_has_mpi());
 * otherwise only the one-rank communicator exists. MPI errors never abort the process: the
 * communicator returns them (MPI_ERRORS_RETURN) and they become TG_ERR_COMM with MPI's
 * message. A rank that dies is noticed by the MPI launcher (mpirun), which stops the others.
 *
 * Ownership: the caller owns a communicator (tg_comm_free) and must keep it alive as long as
 * any tape it is attached to, and any plan compiled from such a tape, is used.
 * See docs/distributed.md for the design, the commands and measurements.
 */
#ifndef TAPEGRAD_DIST_H
#define TAPEGRAD_DIST_H

#include "tapegrad.h"

#ifdef __cplusplus
extern "C" {
#endif

/** A group of ranks that reduce together (see the file's notes for ownership). */
typedef struct tg_comm tg_comm;

/** What a collective returns when the communicator fails (a rank died, an MPI error): the
 * value of tg_last_error_code() then, with MPI's message in tg_last_error(). */
#define TG_ERR_COMM ((tg_status)-11)

/** True when tapegrad was built with the MPI backend (meson feature `mpi`). */
TG_API bool tg_dist_has_mpi(void);

/** A communicator of one rank (rank 0 of 1): every collective copies. Never fails but for
 * memory (NULL with TG_ERR_NOMEM). */
TG_API tg_comm *tg_comm_single(void);

/** The communicator of every process of an MPI job (a duplicate of MPI_COMM_WORLD with
 * MPI_ERRORS_RETURN set). Initializes MPI if the program has not (argc and argv may then be
 * NULL); the matching finalize happens in tg_comm_free of the last communicator that
 * initialized it. Without the MPI backend this is tg_comm_single(). NULL with the error set
 * when MPI cannot start. */
TG_API tg_comm *tg_comm_world(int *argc, char ***argv);

/** Frees a communicator (NULL is allowed); finalizes MPI if tg_comm_world started it and no
 * other communicator from it is left. */
TG_API void tg_comm_free(tg_comm *comm);

/** This process's rank in comm, from 0; 0 for NULL. */
TG_API int tg_comm_rank(const tg_comm *comm);

/** The number of ranks in comm; 1 for NULL. */
TG_API int tg_comm_size(const tg_comm *comm);

/** Element-wise sum over the ranks of n values of dtype dt: every rank's recv gets the sum of
 * every rank's send. send == recv is allowed (in place). Every rank must call it with the
 * same n and dt. Returns 0, TG_ERR_NULL, TG_ERR_ARG, or TG_ERR_COMM when MPI fails. */
TG_API int tg_comm_allreduce_sum(tg_comm *comm, const void *send, void *recv, int64_t n,
                                 tg_dtype dt);

/** Every rank's buffer gets rank root's n bytes. Returns 0, or TG_ERR_COMM/ARG/NULL. */
TG_API int tg_comm_broadcast(tg_comm *comm, void *data, int64_t bytes, int root);

/** Returns when every rank has called it; 0 or TG_ERR_COMM. */
TG_API int tg_comm_barrier(tg_comm *comm);

/** Stops every rank of comm's job (MPI_Abort with status) and does not return; for a program
 * that cannot go on after a failure on one rank while the others wait in a collective. The
 * library never calls it itself. With one rank it returns TG_ERR_ARG and does nothing. */
TG_API int tg_comm_abort(tg_comm *comm, int status);

/** What a communicator's all-reduces have cost since it was made or last reset (one-rank
 * communicators count nothing: they do not communicate). */
typedef struct {
    int64_t calls;  /**< MPI_Allreduce calls */
    int64_t bytes;  /**< bytes reduced (each rank's buffer, not the traffic) */
    double seconds; /**< wall time inside MPI_Allreduce, waiting for slower ranks included */
} tg_comm_stats;

/** Copies comm's counters into stats; 0 or TG_ERR_NULL. */
TG_API int tg_comm_get_stats(const tg_comm *comm, tg_comm_stats *stats);

/** Zeroes comm's counters (NULL is allowed). */
TG_API void tg_comm_reset_stats(tg_comm *comm);

/** Attaches comm to tape: its all-reduce nodes, eager or compiled, reduce over comm. NULL
 * detaches (the all-reduce is then the identity). A plan keeps the communicator of its tape
 * at the time it was compiled. Returns 0 or TG_ERR_NULL for a NULL tape. */
TG_API int tg_tape_set_comm(tg_tape *tape, tg_comm *comm);

/** The communicator attached to tape, or NULL. */
TG_API tg_comm *tg_tape_comm(const tg_tape *tape);

/** The primitive: the element-wise sum of x over the ranks of x's tape's communicator, same
 * shape and dtype. Its gradient is tg_allreduce_sum of the incoming gradient (the gradient of
 * the sum of every rank's loss). Eagerly it communicates at once; traced, it becomes a node of
 * the plan that is never fused with or moved across other collectives. NULL with the error
 * set (TG_ERR_COMM when the communication fails). */
TG_API tg_tensor *tg_allreduce_sum(tg_tensor *x);

/** The gradients of data-parallel training, averaged over the ranks with ONE all-reduce:
 * every grads[i] is flattened into one buffer (a concatenation), the buffer is all-reduced
 * and multiplied by scale (1/size for the mean of the ranks' mean losses), and out[i] is the
 * slice of it shaped like grads[i]. A composition of primitives, so it traces into one
 * all-reduce node of a plan. All gradients must share a tape and a dtype. Returns 0 or a
 * negative tg_status with out[] unset. */
TG_API int tg_allreduce_grads(int n, tg_tensor *const *grads, double scale, tg_tensor **out);

/** Synchronized batch normalization (PyTorch's SyncBatchNorm): tg_batch_norm (tapegrad_nn.h,
 * same arguments) whose training statistics are those of the global batch, every rank's x
 * together: the per-channel sum and then the sum of squared deviations are all-reduced over
 * x's tape's communicator (two small all-reduces per layer and step, forward and backward).
 * Every rank must pass the same shape. The running estimates then agree on every rank, and
 * R ranks with batch B/R follow one process with batch B to rounding. With one rank it is
 * tg_batch_norm. tg_batchnorm_layer.synchronized selects it for a layer. */
TG_API tg_tensor *tg_batch_norm_sync(tg_tensor *x, tg_tensor *gamma, tg_tensor *beta,
                                     tg_tensor *running_mean, tg_tensor *running_var,
                                     bool training, double retention, double eps);

#ifdef __cplusplus
}
#endif

#endif
