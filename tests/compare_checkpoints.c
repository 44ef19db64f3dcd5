/* compare_checkpoints A B TOL: every tensor of A is in B with its dtype and shape, and
 * max |a - b| <= TOL * max(1, max |a|) tensor by tensor. Prints the worst tensor; exits 1
 * when a tensor differs more, 2 on a usage or file error. Used by example_tests.sh to compare
 * a compiled run with an eager one. */
#include "tapegrad_io.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static double element(const tg_ckpt_entry *e, int64_t i)
{
    return e->dtype == TG_F64 ? ((const double *)e->data)[i] : ((const float *)e->data)[i];
}

int main(int argc, char **argv)
{
    if (argc != 4) {
        fprintf(stderr, "usage: compare_checkpoints A B TOL\n");
        return 2;
    }
    tg_checkpoint *a, *b;
    if (tg_checkpoint_open(argv[1], &a) != 0 || tg_checkpoint_open(argv[2], &b) != 0) {
        fprintf(stderr, "compare_checkpoints: %s\n", tg_last_error());
        return 2;
    }
    double tol = strtod(argv[3], NULL), worst = 0;
    const char *worst_name = "(none)";
    int status = 0;
    for (int i = 0; i < tg_checkpoint_count(a) && status == 0; i++) {
        tg_ckpt_entry ea, eb;
        tg_checkpoint_tensor(a, i, &ea);
        int j = tg_checkpoint_find(b, ea.name);
        if (j < 0 || tg_checkpoint_tensor(b, j, &eb) != 0 || ea.dtype != eb.dtype ||
            ea.ndim != eb.ndim || memcmp(ea.shape, eb.shape, sizeof ea.shape) != 0) {
            fprintf(stderr, "compare_checkpoints: %s is missing from %s or has another type\n",
                    ea.name, argv[2]);
            status = 2;
            break;
        }
        int64_t n = 1;
        for (int d = 0; d < ea.ndim; d++)
            n *= ea.shape[d];
        double scale = 1, diff = 0;
        for (int64_t k = 0; k < n; k++) {
            scale = fmax(scale, fabs(element(&ea, k)));
            diff = fmax(diff, fabs(element(&ea, k) - element(&eb, k)));
        }
        if (diff / scale > worst) {
            worst = diff / scale;
            worst_name = ea.name;
        }
    }
    printf("compare_checkpoints: %d tensors, largest relative difference %.3g (%s), tolerance %g\n",
           tg_checkpoint_count(a), worst, worst_name, tol);
    tg_checkpoint_free(a);
    tg_checkpoint_free(b);
    return status ? status : worst <= tol ? 0 : 1;
}
