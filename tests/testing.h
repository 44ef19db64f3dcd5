/* Shared helpers for the Check suites: a main that runs one suite, and shape literals. */
#ifndef TG_TESTING_H
#define TG_TESTING_H

#include <check.h>
#include <stdlib.h>

#include "tapegrad.h"

#define SHAPE(...) ((const int64_t[]){__VA_ARGS__})

/* Runs the suite and exits non-zero when anything failed. */
static inline int tg_run_suite(Suite *s)
{
    SRunner *runner = srunner_create(s);
    srunner_run_all(runner, CK_NORMAL);
    int failed = srunner_ntests_failed(runner);
    srunner_free(runner);
    return failed == 0 ? EXIT_SUCCESS : EXIT_FAILURE;
}

/* For suites that compare compiled plans: every fused kernel native however small
 * (compile/native.c), every convolution on every thread however small (kernels/conv.c), so
 * 1 and 2 threads differ, and no pass switched off from outside (each case chooses). */
static inline void tg_test_plans_everywhere(void)
{
    setenv("TG_NATIVE_MIN_POINTS", "0", 1);
    setenv("TG_CONV_THREAD_MACS", "0", 1);
    unsetenv("TG_DISABLE_PASSES");
}

#endif
