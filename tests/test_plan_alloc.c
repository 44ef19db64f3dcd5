/* A compiled plan allocates everything when it is built: running it allocates nothing.
 *
 * This program defines malloc and friends itself, so every allocation in the process (the
 * library, libxsmm, OpenMP's runtime) passes through a counter; the suite runs a compiled
 * training step of a small CNN several times and expects the counter not to move. Under
 * AddressSanitizer, which owns malloc itself, the counter is compiled out and the suite
 * checks only that the plan runs. */
#include "testing.h"
#include "tapegrad_nn.h"

#include <stdatomic.h>
#include <string.h>

static atomic_long allocations;
static atomic_bool counting;

#ifdef __SANITIZE_ADDRESS__
#define COUNTING_WORKS false
#else
#define COUNTING_WORKS true
extern void *__libc_malloc(size_t size);
extern void *__libc_calloc(size_t count, size_t size);
extern void *__libc_realloc(void *p, size_t size);
extern void *__libc_memalign(size_t alignment, size_t size);
extern void __libc_free(void *p);

static void count(void)
{
    if (atomic_load(&counting))
        atomic_fetch_add(&allocations, 1);
}

void *malloc(size_t size)
{
    count();
    return __libc_malloc(size);
}

void *calloc(size_t n, size_t size)
{
    count();
    return __libc_calloc(n, size);
}

void *realloc(void *p, size_t size)
{
    count();
    return __libc_realloc(p, size);
}

void *aligned_alloc(size_t alignment, size_t size)
{
    count();
    return __libc_memalign(alignment, size);
}

int posix_memalign(void **out, size_t alignment, size_t size)
{
    count();
    *out = __libc_memalign(alignment, size);
    return *out ? 0 : 12; /* ENOMEM */
}

void free(void *p) { __libc_free(p); }
#endif

/* conv 3x3 -> batch norm (training) -> relu -> max pool -> linear -> cross-entropy, its
 * gradients, an SGD step and the running-estimate updates: one traced training step. */
typedef struct {
    tg_conv2d_layer conv;
    tg_batchnorm_layer bn;
    tg_linear_layer fc;
    tg_params *params;
    tg_optim *opt;
} net;

static void net_init(net *m, tg_tape *tape)
{
    tg_rng rng;
    tg_rng_seed(&rng, 7);
    ck_assert_int_eq(tg_conv2d_layer_init(&m->conv, tape, &rng, TG_F32, 1, 4, 3, 1, 1, false), 0);
    ck_assert_int_eq(tg_batchnorm_layer_init(&m->bn, tape, TG_F32, 4), 0);
    ck_assert_int_eq(tg_linear_layer_init(&m->fc, tape, &rng, TG_F32, 4 * 4 * 4, 10, true), 0);
    m->params = tg_params_new();
    ck_assert_int_eq(tg_conv2d_layer_register(&m->conv, m->params, "conv"), 0);
    ck_assert_int_eq(tg_batchnorm_layer_register(&m->bn, m->params, "bn"), 0);
    ck_assert_int_eq(tg_linear_layer_register(&m->fc, m->params, "fc"), 0);
    m->opt = tg_sgd_new(m->params, &(tg_sgd_opts){.lr = 0.1, .momentum = 0.9, .weight_decay = 1e-4});
    ck_assert_ptr_nonnull(m->opt);
}

static tg_plan *compile_step(net *m, tg_tape *tape, int64_t batch)
{
    tg_mark mark = tg_tape_mark(tape);
    ck_assert_int_eq(tg_tape_trace(tape, true), 0);
    tg_tensor *x = tg_placeholder(tape, "x", TG_F32, 4, SHAPE(batch, 1, 8, 8));
    tg_tensor *y = tg_placeholder(tape, "y", TG_F32, 1, SHAPE(batch));
    tg_tensor *h = tg_conv2d_layer_forward(&m->conv, x);
    h = tg_max_pool2d(tg_relu(tg_batchnorm_layer_forward(&m->bn, h, true)), 2, 2, 0);
    tg_tensor *loss = tg_cross_entropy(tg_linear_layer_forward(&m->fc, tg_flatten(h, 1)), y);
    size_t n = tg_params_trainable(m->params, NULL, 0);
    tg_tensor *w[8], *g[8];
    ck_assert_uint_le(n, 8);
    tg_params_trainable(m->params, w, n);
    ck_assert_int_eq(tg_grad(loss, (int)n, w, NULL, g), 0);
    ck_assert_int_eq(tg_optim_step(m->opt, g), 0);
    ck_assert_int_eq(tg_tape_trace(tape, false), 0);
    tg_plan *plan = tg_compile(tape, 1, &loss, NULL);
    ck_assert_msg(plan != NULL, "%s", tg_last_error());
    ck_assert_int_eq(tg_tape_rewind(tape, mark), 0);
    return plan;
}

static void run_counted(int threads)
{
    if (tg_set_num_threads(threads) != TG_OK)
        return; /* a build without OpenMP */
    tg_tape *tape = tg_tape_new();
    net m;
    net_init(&m, tape);
    tg_plan *plan = compile_step(&m, tape, 16);
    float x[16 * 64], y[16];
    for (int i = 0; i < 16 * 64; i++)
        x[i] = (float)((i * 37) % 11) / 11.0f - 0.5f;
    for (int i = 0; i < 16; i++)
        y[i] = (float)(i % 10);
    ck_assert_int_eq(tg_plan_set_input(plan, "x", x), 0);
    ck_assert_int_eq(tg_plan_set_input(plan, "y", y), 0);
    double first = 0;
    int failed = 0;
    /* No assertion inside the window: Check allocates when it records one. */
    atomic_store(&allocations, 0);
    atomic_store(&counting, true);
    for (int step = 0; step < 5; step++) {
        failed |= tg_plan_run(plan) != 0;
        if (step == 0)
            first = *(const float *)tg_plan_output(plan, 0);
    }
    atomic_store(&counting, false);
    ck_assert_msg(!failed, "a run failed: %s", tg_last_error());
    ck_assert_msg(!COUNTING_WORKS || atomic_load(&allocations) == 0, "%d threads: %ld allocations in 5 runs",
                  threads, atomic_load(&allocations));
    double last = *(const float *)tg_plan_output(plan, 0);
    ck_assert_msg(last < first, "the loss did not fall: %g -> %g", first, last);
    tg_plan_free(plan);
    tg_optim_free(m.opt);
    tg_params_free(m.params);
    tg_tape_free(tape);
    tg_set_num_threads(1);
}

START_TEST(runs_allocate_nothing) { run_counted(1); }
END_TEST

START_TEST(runs_allocate_nothing_two_threads) { run_counted(2); }
END_TEST

/* The counter works: an eager step allocates (so a zero above means something). */
START_TEST(counter_sees_allocations)
{
    atomic_store(&allocations, 0);
    atomic_store(&counting, true);
    tg_tape *tape = tg_tape_new();
    tg_tensor *t = tg_exp(tg_full(tape, TG_F32, 1, SHAPE(1000), 1.0));
    atomic_store(&counting, false);
    ck_assert_ptr_nonnull(t);
    if (COUNTING_WORKS)
        ck_assert_int_gt(atomic_load(&allocations), 0);
    tg_tape_free(tape);
}
END_TEST

int main(void)
{
    Suite *s = suite_create("plan_alloc");
    TCase *tc = tcase_create("plan_alloc");
    tcase_set_timeout(tc, 120);
    tcase_add_test(tc, counter_sees_allocations);
    tcase_add_test(tc, runs_allocate_nothing);
    tcase_add_test(tc, runs_allocate_nothing_two_threads);
    suite_add_tcase(s, tc);
    return tg_run_suite(s);
}
