/* Trains a CNN on MNIST with tapegrad: forward code only, the engine does the rest.
 *
 *   mnist_cnn [--model seed|reference] [--data DIR] [--epochs N] [--batch N] [--lr X] ...
 *
 * By default each step runs a compiled plan: the training step (forward, gradients,
 * optimizer and running-estimate updates) is traced once per batch size, optimized and then
 * run step after step; evaluation likewise. --eager builds and runs the graph op by op
 * every step instead (same model code, same results up to rounding).
 *
 * Under mpirun (mpirun -np N build/examples/mnist_cnn ...) each rank trains on its slice of
 * every global batch and the gradients are all-reduced inside the compiled step; see
 * docs/distributed.md and the "data parallel" section below.
 *
 * The last line printed on success is a key=value summary (test_acc, epoch_s, train_img_s,
 * ...); errors go to stderr with a non-zero exit status. Run with --help for every flag. */
#include <errno.h>
#include <getopt.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "curves.h"
#include "mnist_models.h"
#include "tapegrad_io.h"
#include "tapegrad_onnx.h"
#include "tapegrad_dist.h"

#define MNIST_MEAN 0.1307f
#define MNIST_STD 0.3081f
#define EVAL_BATCH 1000
#define MAX_EPOCHS 1000
#define SEED_EPOCHS 15
#define MAX_PLANS 8

typedef struct {
    const char *data_dir, *save, *load, *curves, *dump_passes;
    model_kind model;
    int epochs;
    int64_t batch;
    double lr;
    int threads;
    uint64_t seed;
    bool eval_only, check_finite, constant_lr, eager;
    int64_t max_steps, save_every;
    int shift; /* augmentation: random translations of up to this many pixels */
    const char *export_onnx; /* --export-onnx FILE */
    bool sync_bn; /* under mpirun: batch norm statistics over every rank's shard */
} options;

static void usage(FILE *out)
{
    fprintf(out,
            "usage: mnist_cnn [options]\n"
            "  --data DIR        MNIST directory (default data/mnist; scripts/fetch_mnist.sh fills it)\n"
            "  --model NAME      reference (default) or seed (the course report's network)\n"
            "  --epochs N        epochs to train in all, counting a loaded run's\n"
            "                    (reference 3, seed 15)\n"
            "  --batch N         batch size (reference 128, seed 100)\n"
            "  --lr X            peak learning rate (reference 0.05, seed 0.1)\n"
            "  --schedule NAME   cosine (default: from lr down to 0 over all epochs) or constant\n"
            "  --shift N         shift training images by up to N pixels (default 2; 0: off)\n"
            "  --threads N       worker threads (default 1)\n"
            "  --seed N          seed for initialization and data order (default 1)\n"
            "  --save FILE       checkpoint after every epoch and at the end\n"
            "  --save-every N    also checkpoint every N steps\n"
            "  --load FILE       start from a checkpoint (parameters, optimizer, data order)\n"
            "  --eval-only       only evaluate on the test set\n"
            "  --max-steps N     stop after N training steps in all\n"
            "  --check-finite    stop at the first op that produces NaN or infinity (runs\n"
            "                    eagerly: the check names the op)\n"
            "  --eager           run every step op by op instead of through compiled plans\n"
            "  --dump-passes DIR write each compiled plan's graph after every pass into DIR\n"
            "  --curves PREFIX   write PREFIX.csv and PREFIX.svg (loss and accuracy per epoch)\n"
            "  --export-onnx FILE  write the evaluation graph as an ONNX model (after training,\n"
            "                    or from --load with --eval-only)\n"
            "  --sync-bn         under mpirun: batch norm over the global batch (SyncBatchNorm);\n"
            "                    default: each rank's own shard (docs/distributed.md)\n"
            "  --help            this text\n");
}

static int parse_count(const char *flag, const char *text, int64_t lo, int64_t *out)
{
    char *end;
    errno = 0;
    long long v = strtoll(text, &end, 10);
    if (errno || *end || end == text || v < lo) {
        fprintf(stderr, "mnist_cnn: %s needs a whole number >= %lld, got '%s'\n", flag,
                (long long)lo, text);
        return -1;
    }
    *out = v;
    return 0;
}

static int parse_options(int argc, char **argv, options *o)
{
    enum { O_DATA = 1, O_MODEL, O_EPOCHS, O_BATCH, O_LR, O_THREADS, O_SEED, O_SAVE, O_LOAD,
           O_EVAL, O_CURVES, O_HELP, O_MAX_STEPS, O_SAVE_EVERY, O_FINITE, O_SCHEDULE, O_SHIFT,
           O_EAGER, O_DUMP, O_EXPORT_ONNX, O_SYNC_BN };
    static const struct option longs[] = {
        {"data", required_argument, 0, O_DATA},       {"model", required_argument, 0, O_MODEL},
        {"epochs", required_argument, 0, O_EPOCHS},   {"batch", required_argument, 0, O_BATCH},
        {"lr", required_argument, 0, O_LR},           {"threads", required_argument, 0, O_THREADS},
        {"seed", required_argument, 0, O_SEED},       {"save", required_argument, 0, O_SAVE},
        {"load", required_argument, 0, O_LOAD},       {"eval-only", no_argument, 0, O_EVAL},
        {"curves", required_argument, 0, O_CURVES},   {"help", no_argument, 0, O_HELP},
        {"max-steps", required_argument, 0, O_MAX_STEPS},
        {"save-every", required_argument, 0, O_SAVE_EVERY},
        {"check-finite", no_argument, 0, O_FINITE},
        {"schedule", required_argument, 0, O_SCHEDULE},
        {"shift", required_argument, 0, O_SHIFT},     {"eager", no_argument, 0, O_EAGER},
        {"dump-passes", required_argument, 0, O_DUMP},
        {"export-onnx", required_argument, 0, O_EXPORT_ONNX},
        {"sync-bn", no_argument, 0, O_SYNC_BN}, {0, 0, 0, 0}};
    *o = (options){.data_dir = "data/mnist", .model = MODEL_REFERENCE, .epochs = -1,
                   .batch = 0, .lr = 0, .threads = 1, .seed = 1, .shift = 2};
    int64_t v;
    int opt;
    while ((opt = getopt_long(argc, argv, "h", longs, NULL)) != -1) {
        switch (opt) {
        case O_DATA: o->data_dir = optarg; break;
        case O_MODEL:
            if (model_from_name(optarg, &o->model) != 0) {
                fprintf(stderr, "mnist_cnn: --model takes seed or reference, not '%s'\n", optarg);
                return -1;
            }
            break;
        case O_EPOCHS:
            if (parse_count("--epochs", optarg, 0, &v) || v > MAX_EPOCHS)
                return -1;
            o->epochs = (int)v;
            break;
        case O_BATCH:
            if (parse_count("--batch", optarg, 1, &o->batch))
                return -1;
            break;
        case O_LR: {
            char *end;
            o->lr = strtod(optarg, &end);
            if (*end || end == optarg || !(o->lr > 0) || !isfinite(o->lr)) {
                fprintf(stderr, "mnist_cnn: --lr needs a positive number, got '%s'\n", optarg);
                return -1;
            }
            break;
        }
        case O_THREADS:
            if (parse_count("--threads", optarg, 1, &v) || v > 256)
                return -1;
            o->threads = (int)v;
            break;
        case O_SEED:
            if (parse_count("--seed", optarg, 0, &v))
                return -1;
            o->seed = (uint64_t)v;
            break;
        case O_SAVE: o->save = optarg; break;
        case O_LOAD: o->load = optarg; break;
        case O_EVAL: o->eval_only = true; break;
        case O_CURVES: o->curves = optarg; break;
        case O_MAX_STEPS:
            if (parse_count("--max-steps", optarg, 0, &o->max_steps))
                return -1;
            break;
        case O_SAVE_EVERY:
            if (parse_count("--save-every", optarg, 1, &o->save_every))
                return -1;
            break;
        case O_FINITE: o->check_finite = true; break;
        case O_EAGER: o->eager = true; break;
        case O_DUMP: o->dump_passes = optarg; break;
        case O_EXPORT_ONNX: o->export_onnx = optarg; break;
        case O_SYNC_BN: o->sync_bn = true; break;
        case O_SHIFT:
            if (parse_count("--shift", optarg, 0, &v) || v > 8)
                return -1;
            o->shift = (int)v;
            break;
        case O_SCHEDULE:
            if (strcmp(optarg, "cosine") != 0 && strcmp(optarg, "constant") != 0) {
                fprintf(stderr, "mnist_cnn: --schedule takes cosine or constant, not '%s'\n",
                        optarg);
                return -1;
            }
            o->constant_lr = strcmp(optarg, "constant") == 0;
            break;
        case 'h':
        case O_HELP: usage(stdout); exit(0);
        default: usage(stderr); return -1;
        }
    }
    if (optind < argc) {
        fprintf(stderr, "mnist_cnn: unexpected argument '%s'\n", argv[optind]);
        return -1;
    }
    if (o->epochs < 0)
        o->epochs = o->model == MODEL_SEED ? SEED_EPOCHS : 3;
    if (!o->batch)
        o->batch = o->model == MODEL_SEED ? 100 : 128;
    if (!o->lr)
        o->lr = o->model == MODEL_SEED ? 0.1 : 0.05;
    if (o->check_finite)
        o->eager = true;
    return 0;
}

static double now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

/* ---- the run's state ------------------------------------------------------------------------ */
typedef struct {
    int64_t batch;
    bool training;
    tg_plan *plan;
} compiled_step;

typedef struct {
    options opt;
    tg_tape *tape;
    tg_mark mark;
    mnist_model model;
    tg_optim *optim;
    tg_batches *batches;
    tg_mnist train, test;
    int64_t step;  /* training steps taken, across resumes */
    /* Compiled plans, one per (batch size, training or evaluation), made when first needed. */
    compiled_step plans[MAX_PLANS];
    int n_plans;
    tg_tensor **trainable; /* the model's trainable parameters, and room for their gradients */
    tg_tensor **grads;
    size_t n_trainable;
    float *images; /* a batch of inputs, normalized */
    float *labels;
    /* Data parallel (under mpirun): this process's rank among `ranks`; each takes its slice
     * of every global batch. One rank without MPI. */
    tg_comm *comm;
    int rank, ranks;
    int64_t shard_first; /* the current batch's first image on this rank, for the shifts */
} run;

static int fail(const char *what)
{
    fprintf(stderr, "mnist_cnn: %s: %s\n", what, tg_last_error());
    return -1;
}

/* Predicted classes of logits [n, 10] compared with labels; returns the number right. */
static int64_t count_correct(const float *l, const float *labels, int64_t n)
{
    int64_t right = 0;
    for (int64_t i = 0; i < n; i++) {
        int best = 0;
        for (int c = 1; c < 10; c++)
            if (l[i * 10 + c] > l[i * 10 + best])
                best = c;
        right += best == (int)labels[i];
    }
    return right;
}

static tg_tensor *input_batch(run *r, int64_t n)
{
    return tg_from_data(r->tape, TG_F32, 4, (int64_t[]){n, 1, 28, 28}, r->images);
}

/* ---- data parallel (MPI) ---------------------------------------------------------------------
 * Under mpirun every rank runs this same program: same model (initialized from the same seed
 * and then broadcast from rank 0), same global data order (tg_batches from the seed), and takes
 * its contiguous slice of every global batch. The compiled step all-reduces the gradients (and
 * the loss) in one buffer before the optimizer, so every rank applies the same update. Rank 0
 * alone prints and writes checkpoints; every rank reads one. See docs/distributed.md. */

/* Launched by mpirun (Open MPI, or a PMI/PMIx launcher)? A plain run never starts MPI. */
static bool dist_launched(void)
{
    return getenv("OMPI_COMM_WORLD_SIZE") || getenv("PMIX_RANK") || getenv("PMI_RANK");
}

static int dist_start(run *r, int *argc, char ***argv)
{
    r->comm = dist_launched() ? tg_comm_world(argc, argv) : tg_comm_single();
    if (!r->comm) {
        fprintf(stderr, "mnist_cnn: starting MPI: %s\n", tg_last_error());
        return -1;
    }
    r->rank = tg_comm_rank(r->comm);
    r->ranks = tg_comm_size(r->comm);
    if (dist_launched() && !tg_dist_has_mpi()) {
        fprintf(stderr, "mnist_cnn: started by mpirun, but tapegrad was built without MPI "
                "(meson setup -Dmpi=enabled); every process would train alone\n");
        return -1;
    }
    if (r->rank != 0 && !freopen("/dev/null", "w", stdout)) /* rank 0 speaks for the job */
        return -1;
    return 0;
}

/* After a failure on one rank the others may wait in a collective for ever: stop the job. */
static void dist_stop_on_failure(run *r)
{
    if (r->ranks > 1) {
        fprintf(stderr, "mnist_cnn: rank %d of %d failed; stopping every rank\n", r->rank,
                r->ranks);
        fflush(stderr);
        tg_comm_abort(r->comm, 1);
    }
}

static int dist_setup(run *r)
{
    if (r->opt.batch % r->ranks != 0) {
        fprintf(stderr, "mnist_cnn: the global batch (%lld) must be a multiple of the number "
                "of ranks (%d)\n", (long long)r->opt.batch, r->ranks);
        return -1;
    }
    if (tg_tape_set_comm(r->tape, r->comm) != 0)
        return fail("attaching the communicator");
    tg_batchnorm_layer *bn[3] = {&r->model.bn1, &r->model.bn2, &r->model.bn3};
    for (int i = 0; i < 3; i++)
        bn[i]->synchronized = r->opt.sync_bn && r->ranks > 1;
    if (r->ranks == 1)
        return 0;
    /* Every rank starts from rank 0's state (they agree anyway, being made from one seed). */
    const tg_params *lists[2] = {r->model.params, tg_optim_state(r->optim)};
    for (int l = 0; l < 2; l++)
        for (size_t i = 0; i < tg_params_count(lists[l]); i++) {
            tg_tensor *t = tg_params_get(lists[l], i)->tensor;
            int64_t bytes = tg_numel(t) * (tg_dtype_of(t) == TG_F64 ? 8 : 4);
            if (tg_comm_broadcast(r->comm, tg_data(t), bytes, 0) != 0)
                return fail("broadcasting the model");
        }
    return 0;
}

/* The gradients (and the loss, which rides along) summed over the ranks in one all-reduce and
 * divided by their number: each rank's loss is the mean over its shard, so this is the
 * gradient of the global batch's mean loss. Nothing to do on one rank. */
static int dist_reduce_gradients(run *r, tg_tensor **loss)
{
    if (r->ranks == 1)
        return 0;
    size_t n = r->n_trainable;
    tg_tensor **all = calloc(n + 1, sizeof *all);
    if (!all)
        return -1;
    memcpy(all, r->grads, n * sizeof *all);
    all[n] = tg_detach(*loss);
    int status = tg_allreduce_grads((int)n + 1, all, 1.0 / r->ranks, all);
    if (status == 0) {
        memcpy(r->grads, all, n * sizeof *all);
        *loss = all[n];
    }
    free(all);
    return status;
}

/* This rank's slice of a global batch of n: returns its size and moves *indices to it. */
static int64_t dist_shard(run *r, const int64_t **indices, int64_t n)
{
    int64_t local = n / r->ranks;
    r->shard_first = r->rank * local;
    *indices += r->shard_first;
    return local;
}

/* Sums a count over the ranks (the last rank's share of an evaluation, correct answers). */
static int64_t dist_sum(run *r, int64_t value)
{
    double v = (double)value;
    if (r->ranks > 1 && tg_comm_allreduce_sum(r->comm, &v, &v, 1, TG_F64) != 0) {
        fail("summing over the ranks");
        dist_stop_on_failure(r);
    }
    return (int64_t)v;
}

/* With per-rank batch norm each rank's running estimates saw only its shards: average them
 * before evaluating or saving, so every rank evaluates, and rank 0 saves, one model. (They
 * only serve evaluation: the training trajectory does not depend on them.) Synchronized batch
 * norm keeps them equal already. */
static int dist_average_buffers(run *r)
{
    if (r->ranks == 1 || r->opt.sync_bn)
        return 0;
    for (size_t i = 0; i < tg_params_count(r->model.params); i++) {
        const tg_param *p = tg_params_get(r->model.params, i);
        if (p->kind == TG_TRAINABLE)
            continue;
        float *v = tg_data(p->tensor);
        if (tg_comm_allreduce_sum(r->comm, v, v, tg_numel(p->tensor), TG_F32) != 0)
            return fail("averaging the running estimates");
        for (int64_t k = 0; k < tg_numel(p->tensor); k++)
            v[k] /= (float)r->ranks;
    }
    return 0;
}

/* The all-reduce's share of training time so far, printed with the summary. */
static void dist_report(run *r, double train_seconds)
{
    if (r->ranks == 1)
        return;
    tg_comm_stats st = {0, 0, 0};
    tg_comm_get_stats(r->comm, &st);
    printf("ranks=%d sync_bn=%d allreduce_calls=%lld allreduce_mb=%.1f allreduce_s=%.2f "
           "allreduce_share=%.3f\n", r->ranks, r->opt.sync_bn, (long long)st.calls,
           (double)st.bytes / 1e6, st.seconds, train_seconds > 0 ? st.seconds / train_seconds : 0);
}

/* ---- compiled plans ------------------------------------------------------------------------ */
/* Traces one step for batch size n and compiles it: training (outputs loss and logits; the
 * optimizer's and batch norm's updates ride along) or evaluation (outputs logits). The model
 * code is the same forward code the eager path runs. */
static tg_plan *compile_step(run *r, int64_t n, bool training)
{
    tg_tape *tape = r->tape;
    tg_tape_trace(tape, true);
    tg_tensor *x = tg_placeholder(tape, "images", TG_F32, 4, (int64_t[]){n, 1, 28, 28});
    tg_tensor *logits = model_forward(&r->model, x, training), *outputs[2] = {logits, NULL};
    int n_outputs = 1;
    if (training) {
        tg_tensor *labels = tg_placeholder(tape, "labels", TG_F32, 1, (int64_t[]){n});
        tg_tensor *loss = tg_cross_entropy(logits, labels);
        if (!loss || tg_grad(loss, (int)r->n_trainable, r->trainable, NULL, r->grads) != 0 ||
            dist_reduce_gradients(r, &loss) != 0 || tg_optim_step(r->optim, r->grads) != 0)
            logits = NULL;
        outputs[0] = loss;
        outputs[1] = logits;
        n_outputs = 2;
    }
    tg_tape_trace(tape, false);
    tg_plan *plan = NULL;
    if (logits) {
        char dir[1024];
        tg_compile_opts opts = {0};
        if (r->opt.dump_passes) {
            snprintf(dir, sizeof dir, "%s/%s-batch%lld", r->opt.dump_passes,
                     training ? "train" : "eval", (long long)n);
            mkdir(r->opt.dump_passes, 0777);
            mkdir(dir, 0777);
            opts.dump_dir = dir;
        }
        plan = tg_compile(tape, n_outputs, outputs, &opts);
    }
    if (plan) { /* what the passes did, once per plan */
        printf("compiled the %s step for batch %lld:", training ? "training" : "evaluation",
               (long long)n);
        tg_plan_stage st;
        for (int i = 0; i < tg_plan_stages(plan, 0, NULL); i++) {
            tg_plan_stages(plan, i, &st);
            if (st.ran)
                printf(" %s %d/%d", st.name, st.nodes, st.kernels);
        }
        printf(" (nodes/kernels); arena %.1f MB, %.1f MB with a buffer per value\n",
               (double)tg_plan_arena_bytes(plan) / 1e6, (double)tg_plan_unplanned_bytes(plan) / 1e6);
    }
    tg_tape_rewind(tape, r->mark);
    return plan;
}

static tg_plan *plan_for(run *r, int64_t n, bool training)
{
    for (int i = 0; i < r->n_plans; i++)
        if (r->plans[i].batch == n && r->plans[i].training == training)
            return r->plans[i].plan;
    if (r->n_plans == MAX_PLANS) { /* not expected: a run has at most four shapes */
        tg_plan_free(r->plans[0].plan);
        memmove(&r->plans[0], &r->plans[1], (MAX_PLANS - 1) * sizeof r->plans[0]);
        r->n_plans--;
    }
    tg_plan *plan = compile_step(r, n, training);
    if (plan)
        r->plans[r->n_plans++] = (compiled_step){n, training, plan};
    return plan;
}

/* Logits of the n images in r->images (the plan's or the tape's memory), NULL on failure. */
static const float *eval_logits(run *r, int64_t n)
{
    if (r->opt.eager) {
        tg_tensor *logits = model_forward(&r->model, input_batch(r, n), false);
        return logits ? tg_data(logits) : NULL;
    }
    tg_plan *plan = plan_for(r, n, false);
    if (!plan || tg_plan_set_input(plan, "images", r->images) != 0 || tg_plan_run(plan) != 0)
        return NULL;
    return tg_plan_output(plan, 0);
}

static int evaluate(run *r, double *accuracy)
{
    int64_t right = 0, indices[EVAL_BATCH];
    if (dist_average_buffers(r) != 0)
        return -1;
    for (int64_t start = 0; start < r->test.count; start += EVAL_BATCH) {
        if ((start / EVAL_BATCH) % r->ranks != r->rank) /* the ranks share the test set */
            continue;
        int64_t n = r->test.count - start < EVAL_BATCH ? r->test.count - start : EVAL_BATCH;
        for (int64_t i = 0; i < n; i++)
            indices[i] = start + i;
        if (tg_mnist_gather(&r->test, indices, n, MNIST_MEAN, MNIST_STD, r->images, r->labels))
            return fail("evaluation data");
        const float *logits = eval_logits(r, n);
        if (!logits)
            return fail("evaluation forward pass");
        right += count_correct(logits, r->labels, n);
        tg_tape_rewind(r->tape, r->mark);
    }
    right = dist_sum(r, right);
    *accuracy = 100.0 * (double)right / (double)r->test.count;
    return 0;
}

/* ---- checkpoints ------------------------------------------------------------------------------ */
/* Every parameter, buffer and optimizer state tensor, as checkpoint entries. */
static tg_ckpt_entry *checkpoint_entries(run *r, int *count)
{
    const tg_params *lists[2] = {r->model.params, tg_optim_state(r->optim)};
    size_t total = tg_params_count(lists[0]) + tg_params_count(lists[1]);
    tg_ckpt_entry *e = calloc(total ? total : 1, sizeof *e);
    if (!e)
        return NULL;
    int k = 0;
    for (int l = 0; l < 2; l++) {
        for (size_t i = 0; i < tg_params_count(lists[l]); i++) {
            const tg_param *p = tg_params_get(lists[l], i);
            e[k].name = p->name;
            e[k].dtype = tg_dtype_of(p->tensor);
            e[k].ndim = tg_ndim(p->tensor);
            memcpy(e[k].shape, tg_shape(p->tensor), (size_t)e[k].ndim * sizeof(int64_t));
            e[k].data = tg_data(p->tensor);
            k++;
        }
    }
    *count = k;
    return e;
}

static int save_checkpoint(run *r)
{
    if (dist_average_buffers(r) != 0)
        return -1;
    if (r->rank != 0) /* rank 0 writes for the job */
        return 0;
    int n;
    tg_ckpt_entry *entries = checkpoint_entries(r, &n);
    if (!entries) {
        fprintf(stderr, "mnist_cnn: out of memory\n");
        return -1;
    }
    tg_batches_state state;
    char batches[512], step[32], seed[32];
    tg_batches_get_state(r->batches, &state);
    tg_batches_state_to_string(&state, batches, sizeof batches);
    snprintf(step, sizeof step, "%lld", (long long)r->step);
    snprintf(seed, sizeof seed, "%llu", (unsigned long long)r->opt.seed);
    const char *keys[] = {"tapegrad.model", "tapegrad.step", "tapegrad.seed", "tapegrad.batches"};
    const char *values[] = {model_name(r->opt.model), step, seed, batches};
    int status = tg_checkpoint_save(r->opt.save, entries, n, keys, values, 4);
    free(entries);
    return status ? fail("saving the checkpoint") : 0;
}

static int load_checkpoint(run *r)
{
    tg_checkpoint *c;
    if (tg_checkpoint_open(r->opt.load, &c) != 0)
        return fail("loading the checkpoint");
    int status = -1;
    const char *model = tg_checkpoint_meta(c, "tapegrad.model");
    const char *step = tg_checkpoint_meta(c, "tapegrad.step");
    const char *batches = tg_checkpoint_meta(c, "tapegrad.batches");
    tg_batches_state state;
    int n = 0;
    tg_ckpt_entry *entries = NULL;
    if (!model || !step || !batches) {
        fprintf(stderr, "mnist_cnn: %s is not a checkpoint of this example (no tapegrad.model, "
                "tapegrad.step or tapegrad.batches)\n", r->opt.load);
    } else if (strcmp(model, model_name(r->opt.model)) != 0) {
        fprintf(stderr, "mnist_cnn: %s holds the '%s' model, not '%s' (use --model %s)\n",
                r->opt.load, model, model_name(r->opt.model), model);
    } else if (!r->opt.eval_only && (tg_batches_state_from_string(batches, &state) != 0 ||
                                     tg_batches_set_state(r->batches, &state) != 0)) {
        fail("the checkpoint's data order does not fit this run (is --batch the same?)");
    } else if (!(entries = checkpoint_entries(r, &n))) {
        fprintf(stderr, "mnist_cnn: out of memory\n");
    } else if (tg_checkpoint_read(c, entries, n) != 0) {
        fail("the checkpoint does not fit the model");
    } else {
        r->step = strtoll(step, NULL, 10);
        status = 0;
    }
    free(entries);
    tg_checkpoint_free(c);
    return status;
}

/* ---- progress ---------------------------------------------------------------------------------- */
static void progress(const run *r, int epoch, int64_t done, int64_t total, double loss,
                     double img_s, bool tty)
{
    /* Time left in the whole run (evaluations aside), not just this epoch. */
    int64_t last = (int64_t)r->opt.epochs * total;
    if (r->opt.max_steps && r->opt.max_steps < last)
        last = r->opt.max_steps;
    int64_t steps_left = last > r->step ? last - r->step : 0;
    double left = img_s > 0 ? (double)(steps_left * r->opt.batch) / img_s : 0;
    if (tty) {
        char bar[31];
        int filled = total ? (int)(30 * done / total) : 30;
        for (int i = 0; i < 30; i++)
            bar[i] = i < filled ? '=' : i == filled ? '>' : ' ';
        bar[30] = '\0';
        fprintf(stderr, "\repoch %d [%s] %3d%% loss %.4f %6.0f img/s %4.0fs left ", epoch, bar,
                total ? (int)(100 * done / total) : 100, loss, img_s, left);
        fflush(stderr);
    } else {
        printf("epoch %d step %lld/%lld loss %.4f %.0f img/s %.0fs left\n", epoch,
               (long long)done, (long long)total, loss, img_s, left);
        fflush(stdout);
    }
}

/* ---- training ---------------------------------------------------------------------------------- */
typedef struct {
    double loss_sum;
    int64_t batches, images, right;
    double seconds;
} epoch_stats;

/* The learning rate of the coming step: a function of the step alone, so a resumed run
 * follows the same schedule. Cosine: from lr down to 0 at the end of the last epoch. */
static double learning_rate(const run *r)
{
    if (r->opt.constant_lr)
        return r->opt.lr;
    double total = (double)r->opt.epochs * (double)tg_batches_count(r->batches);
    double progress = total > 0 ? (double)r->step / total : 1;
    return 0.5 * r->opt.lr * (1 + cos(3.14159265358979323846 * (progress < 1 ? progress : 1)));
}

/* Moves each image by up to r->opt.shift pixels in x and y, filling with the background.
 * The shifts come from a generator seeded by (seed, step) alone, so a resumed run draws the
 * same ones without saving any state. */
static void shift_images(const run *r, int64_t n)
{
    if (!r->opt.shift)
        return;
    tg_rng rng;
    tg_rng_seed(&rng, r->opt.seed * 0x9E3779B97F4A7C15ull ^ (uint64_t)r->step);
    const float background = -MNIST_MEAN / MNIST_STD;
    float copy[28 * 28];
    uint64_t span = 2 * (uint64_t)r->opt.shift + 1;
    for (int64_t i = 0; i < 2 * r->shard_first; i++) /* the draws of the ranks before this one */
        tg_rng_below(&rng, span);
    for (int64_t i = 0; i < n; i++) {
        float *img = r->images + i * 28 * 28;
        int dy = (int)tg_rng_below(&rng, span) - r->opt.shift;
        int dx = (int)tg_rng_below(&rng, span) - r->opt.shift;
        memcpy(copy, img, sizeof copy);
        for (int y = 0; y < 28; y++)
            for (int x = 0; x < 28; x++) {
                int sy = y - dy, sx = x - dx;
                img[y * 28 + x] = sy >= 0 && sy < 28 && sx >= 0 && sx < 28 ? copy[sy * 28 + sx]
                                                                             : background;
            }
    }
}

/* One step, eagerly: build the graph, differentiate it, update; the loss and logits. */
static tg_tensor *eager_step(run *r, int64_t n, tg_tensor **logits)
{
    tg_tensor *labels = tg_from_data(r->tape, TG_F32, 1, (int64_t[]){n}, r->labels);
    *logits = model_forward(&r->model, input_batch(r, n), true);
    tg_tensor *loss = tg_cross_entropy(*logits, labels);
    if (!loss || tg_grad(loss, (int)r->n_trainable, r->trainable, NULL, r->grads) != 0 ||
        dist_reduce_gradients(r, &loss) != 0 || tg_optim_step(r->optim, r->grads) != 0)
        return NULL;
    return loss;
}

/* One step: forward, loss, gradients, optimizer. Returns the loss, NaN on failure. */
static double train_step(run *r, const int64_t *indices, int64_t n, int64_t *right)
{
    n = dist_shard(r, &indices, n);
    if (tg_mnist_gather(&r->train, indices, n, MNIST_MEAN, MNIST_STD, r->images, r->labels)) {
        fail("training data");
        return NAN;
    }
    shift_images(r, n);
    double value = NAN;
    const float *logits = NULL;
    if (tg_optim_set_lr(r->optim, learning_rate(r)) != 0) {
        fail("learning rate");
        return NAN;
    }
    if (r->opt.eager) {
        tg_tensor *logits_t, *loss = eager_step(r, n, &logits_t);
        if (loss) {
            value = tg_item(loss);
            logits = tg_data(logits_t);
        }
    } else {
        tg_plan *plan = plan_for(r, n, true);
        if (plan && tg_plan_set_input(plan, "images", r->images) == 0 &&
            tg_plan_set_input(plan, "labels", r->labels) == 0 && tg_plan_run(plan) == 0) {
            value = *(const float *)tg_plan_output(plan, 0);
            logits = tg_plan_output(plan, 1);
        }
    }
    if (!logits) {
        fprintf(stderr, "mnist_cnn: training step %lld failed; the last checkpoint saved, if "
                "any, is untouched: %s\n", (long long)r->step + 1, tg_last_error());
        tg_tape_rewind(r->tape, r->mark);
        return NAN;
    }
    if (!isfinite(value)) {
        fprintf(stderr, "mnist_cnn: the loss is %g at step %lld; stopping (rerun with "
                "--check-finite to find the op that made it)\n", value, (long long)r->step + 1);
        tg_tape_rewind(r->tape, r->mark);
        return NAN;
    }
    *right += count_correct(logits, r->labels, n);
    tg_tape_rewind(r->tape, r->mark);
    return value;
}

static int train(run *r, curve_point *curve, int *n_points, double *train_seconds,
                 int64_t *train_images, double *last_loss)
{
    bool tty = isatty(STDERR_FILENO);
    int64_t per_epoch = tg_batches_count(r->batches);
    int status = 0;
    while (status == 0 && tg_batches_epoch(r->batches) < r->opt.epochs &&
           (!r->opt.max_steps || r->step < r->opt.max_steps)) {
        int epoch = (int)tg_batches_epoch(r->batches) + 1;
        epoch_stats s = {0};
        double start = now(), last_report = start;
        const int64_t *indices;
        int64_t n, done = per_epoch; /* a resumed epoch starts part-way */
        tg_batches_state state;
        tg_batches_get_state(r->batches, &state);
        done = state.position / r->opt.batch;
        while ((n = tg_batches_next(r->batches, &indices)) > 0) {
            double loss = train_step(r, indices, n, &s.right);
            if (isnan(loss)) {
                status = -1;
                break;
            }
            r->step++;
            done++;
            s.loss_sum += loss;
            s.batches++;
            s.images += n;
            *last_loss = loss;
            double t = now();
            if ((tty && t - last_report > 0.2) || (!tty && s.batches % 100 == 0)) {
                progress(r, epoch, done, per_epoch, s.loss_sum / (double)s.batches,
                         (double)s.images / (t - start), tty);
                last_report = t;
            }
            if (r->opt.save && r->opt.save_every && r->step % r->opt.save_every == 0 &&
                save_checkpoint(r) != 0)
                status = -1;
            if (status || (r->opt.max_steps && r->step >= r->opt.max_steps))
                break;
        }
        if (tty)
            fprintf(stderr, "\n");
        s.seconds = now() - start;
        s.right = dist_sum(r, s.right);
        *train_seconds += s.seconds;
        *train_images += s.images;
        if (status)
            break;
        double test_acc;
        if (evaluate(r, &test_acc) != 0) {
            status = -1;
            break;
        }
        double loss = s.batches ? s.loss_sum / (double)s.batches : 0;
        double train_acc = s.images ? 100.0 * (double)s.right / (double)s.images : 0;
        printf("epoch %d: loss %.4f train_acc %.2f%% test_acc %.2f%% (%.1f s, %.0f img/s)\n",
               epoch, loss, train_acc, test_acc, s.seconds, (double)s.images / s.seconds);
        fflush(stdout);
        if (*n_points < MAX_EPOCHS)
            curve[(*n_points)++] = (curve_point){epoch, loss, train_acc, test_acc, s.seconds};
        if (r->opt.save && save_checkpoint(r) != 0)
            status = -1;
    }
    return status;
}

static int setup(run *r)
{
    char what[64];
    if (tg_mnist_load(r->opt.data_dir, "t10k", &r->test) != 0 ||
        (!r->opt.eval_only && tg_mnist_load(r->opt.data_dir, "train", &r->train) != 0)) {
        fprintf(stderr, "mnist_cnn: %s\n(fetch the data with scripts/fetch_mnist.sh %s)\n",
                tg_last_error(), r->opt.data_dir);
        return -1;
    }
    r->tape = tg_tape_new();
    tg_rng rng;
    tg_rng_seed(&rng, r->opt.seed);
    snprintf(what, sizeof what, "creating the %s model", model_name(r->opt.model));
    if (!r->tape || model_init(&r->model, r->opt.model, r->tape, &rng) != 0)
        return fail(what);
    tg_sgd_opts sgd = {.lr = r->opt.lr, .momentum = 0.9,
                       .weight_decay = r->opt.model == MODEL_SEED ? 1e-4 : 0};
    r->optim = tg_sgd_new(r->model.params, &sgd);
    r->n_trainable = tg_params_trainable(r->model.params, NULL, 0);
    r->trainable = calloc(r->n_trainable + 1, sizeof *r->trainable);
    r->grads = calloc(r->n_trainable + 1, sizeof *r->grads);
    if (!r->trainable || !r->grads) {
        fprintf(stderr, "mnist_cnn: out of memory\n");
        return -1;
    }
    tg_params_trainable(r->model.params, r->trainable, r->n_trainable);
    int64_t n_train = r->opt.eval_only ? r->opt.batch : r->train.count;
    r->batches = tg_batches_new(n_train, r->opt.batch, r->opt.seed, true);
    if (!r->optim || !r->batches)
        return fail("setting up training");
    int64_t biggest = r->opt.batch > EVAL_BATCH ? r->opt.batch : EVAL_BATCH;
    r->images = malloc((size_t)biggest * 28 * 28 * sizeof *r->images);
    r->labels = malloc((size_t)biggest * sizeof *r->labels);
    if (!r->images || !r->labels) {
        fprintf(stderr, "mnist_cnn: out of memory\n");
        return -1;
    }
    if (r->opt.check_finite)
        tg_tape_set_check_finite(r->tape, true);
    if (r->opt.threads > 1 && tg_set_num_threads(r->opt.threads) != 0)
        return fail("--threads");
    if (r->opt.load && load_checkpoint(r) != 0)
        return -1;
    r->mark = tg_tape_mark(r->tape);
    return 0;
}

static void teardown(run *r)
{
    for (int i = 0; i < r->n_plans; i++)
        tg_plan_free(r->plans[i].plan);
    free(r->trainable);
    free(r->grads);
    free(r->images);
    free(r->labels);
    tg_batches_free(r->batches);
    tg_optim_free(r->optim);
    model_free(&r->model);
    tg_tape_free(r->tape);
    tg_mnist_free(&r->train);
    tg_mnist_free(&r->test);
}

/* --export-onnx: the evaluation forward, traced for a batch of 2 (the file's batch axis is
 * symbolic), written as ONNX with the input's normalization in its metadata. */
static int export_onnx(run *r)
{
    char mean[32], std[32], doc[256];
    snprintf(mean, sizeof mean, "%g", (double)MNIST_MEAN);
    snprintf(std, sizeof std, "%g", (double)MNIST_STD);
    snprintf(doc, sizeof doc, "tapegrad MNIST %s model. Input images: float32 [N, 1, 28, 28], "
             "pixel = (byte / 255 - %s) / %s, white digit on black as in MNIST. Output: logits "
             "[N, 10] (softmax for probabilities).", model_name(r->opt.model), mean, std);
    const tg_onnx_meta meta[] = {{"tapegrad.model", model_name(r->opt.model)},
                                 {"tapegrad.normalize_mean", mean},
                                 {"tapegrad.normalize_std", std}};
    tg_onnx_options opts = {.output_name = "logits", .graph_name = "mnist", .doc = doc,
                            .meta = meta, .n_meta = 3};
    tg_tape_trace(r->tape, true);
    tg_tensor *x = tg_placeholder(r->tape, "images", TG_F32, 4, (int64_t[]){2, 1, 28, 28});
    tg_tensor *logits = model_forward(&r->model, x, false);
    tg_tape_trace(r->tape, false);
    int status = tg_export_onnx(r->tape, x, logits, r->opt.export_onnx, &opts);
    tg_tape_rewind(r->tape, r->mark);
    if (status != 0)
        return fail("--export-onnx");
    printf("exported the %s model to %s (ONNX opset %d)\n", model_name(r->opt.model),
           r->opt.export_onnx, TG_ONNX_OPSET);
    return 0;
}

static int64_t count_parameters(const tg_params *params)
{
    int64_t total = 0;
    for (size_t i = 0; i < tg_params_count(params); i++)
        if (tg_params_get(params, i)->kind == TG_TRAINABLE)
            total += tg_numel(tg_params_get(params, i)->tensor);
    return total;
}

int main(int argc, char **argv)
{
    run r = {0};
    if (parse_options(argc, argv, &r.opt) != 0)
        return 2;
    int status = dist_start(&r, &argc, &argv);
    if (status == 0)
        status = setup(&r);
    if (status == 0)
        status = dist_setup(&r);
    curve_point *curve = calloc(MAX_EPOCHS, sizeof *curve);
    int n_points = 0;
    double train_seconds = 0, last_loss = NAN, test_acc = 0;
    int64_t train_images = 0;
    if (status == 0 && !curve) {
        fprintf(stderr, "mnist_cnn: out of memory\n");
        status = -1;
    }
    if (status == 0 && !r.opt.eval_only) {
        printf("training the %s model: %lld parameters, batch %lld, lr %g, %d epoch(s), "
               "%d thread(s)\n", model_name(r.opt.model),
               (long long)count_parameters(r.model.params), (long long)r.opt.batch,
               r.opt.lr, r.opt.epochs, r.opt.threads);
        status = train(&r, curve, &n_points, &train_seconds, &train_images, &last_loss);
    }
    if (status == 0)
        status = evaluate(&r, &test_acc);
    if (status == 0 && r.opt.export_onnx && r.rank == 0) /* rank 0 writes for the job */
        status = export_onnx(&r);
    if (status == 0 && r.opt.curves && n_points > 0) {
        char title[128];
        snprintf(title, sizeof title, "tapegrad: MNIST, %s model", model_name(r.opt.model));
        if (curves_write(r.opt.curves, title, curve, n_points) != 0) {
            fprintf(stderr, "mnist_cnn: writing %s.csv/.svg: %s\n", r.opt.curves,
                    strerror(errno));
            status = -1;
        }
    }
    if (status == 0)
        dist_report(&r, train_seconds);
    if (status == 0) {
        double epoch_s = n_points ? train_seconds / n_points : train_seconds;
        /* final_loss is the last training batch's; an evaluation-only run has none. */
        char loss[48] = "";
        if (!isnan(last_loss))
            snprintf(loss, sizeof loss, " final_loss=%.4f", last_loss);
        struct rusage usage;
        getrusage(RUSAGE_SELF, &usage);
        printf("model=%s mode=%s steps=%lld epochs=%d batch=%lld threads=%d%s test_acc=%.2f "
               "epoch_s=%.2f train_img_s=%.0f peak_rss_mb=%.0f\n", model_name(r.opt.model),
               r.opt.eager ? "eager" : "compiled", (long long)r.step,
               (int)tg_batches_epoch(r.batches), (long long)r.opt.batch, r.opt.threads, loss,
               test_acc, epoch_s, train_seconds > 0 ? (double)train_images / train_seconds : 0.0,
               (double)usage.ru_maxrss / 1024.0);
    }
    free(curve);
    if (status != 0)
        dist_stop_on_failure(&r);
    teardown(&r);
    tg_comm_free(r.comm);
    return status == 0 ? 0 : 1;
}
