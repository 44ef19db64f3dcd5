/* bench/mnist_latency: batch-1 evaluation latency of the reference MNIST model
 * (examples/mnist_models.h), as a deployed classifier sees it: one image in, ten logits out.
 * The evaluation forward pass is traced at batch 1 and compiled with every pass (batch norm
 * uses its running estimates, which fold_scale folds into the convolutions' and the linear
 * layer's weights), then run --runs times, each on the next real MNIST test image (random
 * images when the data is missing). Prints median, 10th and 90th percentiles.
 *
 *   mnist_latency [--data DIR] [--threads N] [--runs N] [--eager]
 *
 * --eager times the same forward pass built op by op instead (for comparison). The last line
 * is key=value: latency_us (median), p10_us, p90_us. bench/compare_torch.py runs it against
 * PyTorch's eval mode under torch.no_grad(). The model keeps its initial weights: the time
 * does not depend on their values. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <time.h>

#include "mnist_models.h"
#include "tapegrad_io.h"
#include "timing.h"

#define MNIST_MEAN 0.1307f
#define MNIST_STD 0.3081f
#define IMAGES 100

int main(int argc, char **argv)
{
    const char *data = "data/mnist";
    int threads = 1, runs = 2000;
    int eager = 0;
    for (int i = 1; i < argc; i++) {
        if (!strcmp(argv[i], "--eager"))
            eager = 1;
        else if (i + 1 < argc && !strcmp(argv[i], "--data"))
            data = argv[++i];
        else if (i + 1 < argc && !strcmp(argv[i], "--threads"))
            threads = atoi(argv[++i]);
        else if (i + 1 < argc && !strcmp(argv[i], "--runs"))
            runs = atoi(argv[++i]);
        else {
            fprintf(stderr, "usage: mnist_latency [--data DIR] [--threads N] [--runs N] [--eager]\n");
            return 2;
        }
    }
    if (runs < 1 || runs > 1000000 || tg_set_num_threads(threads) != 0) {
        fprintf(stderr, "mnist_latency: --runs 1..1000000, --threads: %s\n", tg_last_error());
        return 2;
    }

    /* Inputs: the first IMAGES test images, normalized as the example normalizes them. */
    float *images = malloc((size_t)IMAGES * 28 * 28 * sizeof *images);
    if (!images)
        return 1;
    tg_mnist test;
    const char *source = "MNIST test images";
    if (tg_mnist_load(data, "t10k", &test) == 0) {
        int64_t idx[IMAGES];
        for (int i = 0; i < IMAGES; i++)
            idx[i] = i;
        tg_mnist_gather(&test, idx, IMAGES, MNIST_MEAN, MNIST_STD, images, NULL);
        tg_mnist_free(&test);
    } else {
        tg_rng rng;
        tg_rng_seed(&rng, 1);
        for (int i = 0; i < IMAGES * 28 * 28; i++)
            images[i] = (float)tg_rng_normal(&rng);
        source = "random images (no MNIST data found)";
    }

    tg_tape *tape = tg_tape_new();
    tg_rng rng;
    tg_rng_seed(&rng, 1);
    mnist_model model;
    if (!tape || model_init(&model, MODEL_REFERENCE, tape, &rng) != 0) {
        fprintf(stderr, "mnist_latency: %s\n", tg_last_error());
        return 1;
    }
    tg_mark mark = tg_tape_mark(tape);
    tg_plan *plan = NULL;
    if (!eager) {
        tg_tape_trace(tape, true);
        tg_tensor *x = tg_placeholder(tape, "images", TG_F32, 4, (int64_t[]){1, 1, 28, 28});
        tg_tensor *logits = model_forward(&model, x, false);
        tg_tape_trace(tape, false);
        plan = logits ? tg_compile(tape, 1, &logits, NULL) : NULL;
        tg_tape_rewind(tape, mark);
        if (!plan) {
            fprintf(stderr, "mnist_latency: compiling: %s\n", tg_last_error());
            return 1;
        }
        printf("compiled the batch-1 evaluation:");
        tg_plan_stage st;
        for (int i = 0; i < tg_plan_stages(plan, 0, NULL); i++)
            if (tg_plan_stages(plan, i, &st) >= 0 && st.ran)
                printf(" %s %d/%d", st.name, st.nodes, st.kernels);
        printf(" (nodes/kernels); arena %.1f KB\n", (double)tg_plan_arena_bytes(plan) / 1e3);
    }

    double *t = malloc((size_t)runs * sizeof *t);
    if (!t)
        return 1;
    float checksum = 0;
    for (int r = -runs / 10 - 10; r < runs; r++) { /* a tenth of the runs to warm up */
        const float *img = images + (size_t)((r + IMAGES * 1000) % IMAGES) * 28 * 28;
        double t0 = bench_now();
        const float *logits = NULL;
        if (plan) {
            if (tg_plan_set_input(plan, "images", img) == 0 && tg_plan_run(plan) == 0)
                logits = tg_plan_output(plan, 0);
        } else {
            tg_tensor *x = tg_from_data(tape, TG_F32, 4, (int64_t[]){1, 1, 28, 28}, img);
            tg_tensor *l = model_forward(&model, x, false);
            logits = l ? tg_data(l) : NULL;
        }
        double t1 = bench_now();
        if (!logits) {
            fprintf(stderr, "mnist_latency: run failed: %s\n", tg_last_error());
            return 1;
        }
        checksum += logits[0];
        if (!plan)
            tg_tape_rewind(tape, mark);
        if (r >= 0)
            t[r] = t1 - t0;
    }
    qsort(t, (size_t)runs, sizeof *t, bench_compare);
    struct rusage usage;
    getrusage(RUSAGE_SELF, &usage);
    printf("inputs: %s; checksum %g\n", source, (double)checksum);
    printf("framework=tapegrad mode=%s batch=1 threads=%d runs=%d latency_us=%.1f p10_us=%.1f "
           "p90_us=%.1f peak_rss_mb=%.0f\n", plan ? "compiled" : "eager", threads, runs,
           1e6 * t[runs / 2], 1e6 * t[runs / 10], 1e6 * t[runs * 9 / 10],
           (double)usage.ru_maxrss / 1024.0);
    free(t);
    free(images);
    tg_plan_free(plan);
    model_free(&model);
    tg_tape_free(tape);
    return 0;
}
