/* Kill-during-save: a writer SIGKILLed at a random moment while it saves over a checkpoint
 * must leave a file that loads intact and is exactly the old checkpoint or exactly the new one,
 * never a mix and never an error. The killed writers' temporary files must not pile up. */
#include "testing.h"
#include "scratch.h"

#include "tapegrad_io.h"

#include <dirent.h>
#include <signal.h>
#include <stdio.h>
#include <string.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#define TRIALS 200
#define BUDGET_SECONDS 40.0 /* stop early rather than run long on a slow disk */
#define BIG (1 << 20)       /* floats in checkpoint B: 4 MB, so a save takes a while */
#define SMALL 1000

static char tmpdir[256], path[512];
static float small_a[SMALL], small_b[SMALL];
static float *big_b;

static double now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

static void save_a(void)
{
    const char *k[] = {"which"}, *v[] = {"A"};
    tg_ckpt_entry e = {"w", TG_F32, 1, {SMALL}, small_a};
    int rc = tg_checkpoint_save(path, &e, 1, k, v, 1);
    ck_assert_msg(rc == 0, "%s", tg_last_error());
}

static int save_b(void)
{
    const char *k[] = {"which"}, *v[] = {"B"};
    tg_ckpt_entry e[2] = {{"w", TG_F32, 1, {SMALL}, small_b},
                          {"big", TG_F32, 2, {1024, 1024}, big_b}};
    return tg_checkpoint_save(path, e, 2, k, v, 1);
}

/* Files in the directory other than the checkpoint itself. */
static int stray_files(void) { return scratch_count(tmpdir, "model.safetensors"); }

/* 'A' or 'B' when the file is exactly one of them; fails the test otherwise. */
static char check_intact(void)
{
    tg_checkpoint *c;
    int rc = tg_checkpoint_open(path, &c);
    ck_assert_msg(rc == 0, "the checkpoint does not load after a kill: %s", tg_last_error());
    const char *which = tg_checkpoint_meta(c, "which");
    ck_assert_ptr_nonnull(which);
    tg_ckpt_entry w;
    ck_assert_int_eq(tg_checkpoint_tensor(c, tg_checkpoint_find(c, "w"), &w), 0);
    char result = which[0];
    if (result == 'A') {
        ck_assert_int_eq(tg_checkpoint_count(c), 1);
        ck_assert_mem_eq(w.data, small_a, sizeof small_a);
    } else {
        ck_assert_str_eq(which, "B");
        ck_assert_int_eq(tg_checkpoint_count(c), 2);
        ck_assert_mem_eq(w.data, small_b, sizeof small_b);
        tg_ckpt_entry big;
        ck_assert_int_eq(tg_checkpoint_tensor(c, tg_checkpoint_find(c, "big"), &big), 0);
        ck_assert_mem_eq(big.data, big_b, BIG * sizeof(float));
    }
    tg_checkpoint_free(c);
    return result;
}

START_TEST(checkpoint_kill_during_save)
{
    scratch_make(tmpdir, sizeof tmpdir, "tg_kill");
    snprintf(path, sizeof path, "%s/model.safetensors", tmpdir);
    for (int i = 0; i < SMALL; i++) {
        small_a[i] = (float)i;
        small_b[i] = -(float)i - 0.5f;
    }
    big_b = malloc(BIG * sizeof(float));
    ck_assert_ptr_nonnull(big_b);
    for (int i = 0; i < BIG; i++)
        big_b[i] = (float)(i % 9973) * 0.25f;

    /* How long does one save of B take here? Kills land anywhere in up to two of them. */
    double t0 = now();
    ck_assert_int_eq(save_b(), 0);
    double save_seconds = now() - t0;
    uint64_t max_delay_us = (uint64_t)(2e6 * save_seconds) + 100;

    tg_rng rng;
    tg_rng_seed(&rng, 20240601);
    int outcomes[2] = {0, 0}, strays_after_kill = 0, trials = 0;
    double start = now();
    for (; trials < TRIALS && now() - start < BUDGET_SECONDS; trials++) {
        save_a();
        /* Saving also removed whatever the previous killed writer left behind. */
        ck_assert_int_eq(stray_files(), 0);
        ck_assert_int_eq(check_intact(), 'A');
        pid_t child = fork();
        ck_assert_int_ge(child, 0);
        if (child == 0) {
            for (;;)
                if (save_b() != 0)
                    _exit(3);
        }
        uint64_t delay_us = tg_rng_below(&rng, max_delay_us);
        struct timespec delay = {(time_t)(delay_us / 1000000), (long)(delay_us % 1000000) * 1000};
        nanosleep(&delay, NULL);
        kill(child, SIGKILL);
        int status;
        ck_assert_int_eq(waitpid(child, &status, 0), child);
        ck_assert_msg(WIFSIGNALED(status), "the writer stopped on its own (exit %d)",
                      WIFEXITED(status) ? WEXITSTATUS(status) : -1);
        char got = check_intact();
        outcomes[got == 'B']++;
        strays_after_kill += stray_files() > 0;
    }
    printf("checkpoint_kill: %d trials in %.1f s (one save of B: %.1f ms): old checkpoint A %d, "
           "complete new checkpoint B %d, mixed or unreadable 0; a killed writer left a "
           "temporary file in %d trials, all removed by the next save\n",
           trials, now() - start, 1e3 * save_seconds, outcomes[0], outcomes[1],
           strays_after_kill);
    fflush(stdout);
    ck_assert_int_ge(trials, 20);
    /* Kills landed both before and after a rename, so both sides were really exercised. */
    ck_assert_int_gt(outcomes[0], 0);
    ck_assert_int_gt(outcomes[1], 0);

    save_a();
    ck_assert_int_eq(stray_files(), 0);
    scratch_remove(tmpdir);
    free(big_b);
}
END_TEST

int main(void)
{
    Suite *s = suite_create("checkpoint_kill");
    TCase *tc = tcase_create("checkpoint_kill");
    tcase_set_timeout(tc, 300);
    tcase_add_test(tc, checkpoint_kill_during_save);
    suite_add_tcase(s, tc);
    return tg_run_suite(s);
}
