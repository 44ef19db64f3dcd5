/* Writes training curves for tests/curves_in_browser.py through the example's own writer
 * (examples/curves.c): six epochs whose fourth training loss is NaN (a line must break there,
 * not vanish), under a title with every character XML reserves.
 * Usage: curves_fixture PREFIX   (writes PREFIX.csv and PREFIX.svg) */
#include "curves.h"

#include <math.h>
#include <stdio.h>

const char *const fixture_title = "tapegrad: MNIST <reference> & \"friends\" 'n' more";

int main(int argc, char **argv)
{
    if (argc != 2) {
        fprintf(stderr, "usage: curves_fixture PREFIX\n");
        return 2;
    }
    const curve_point points[] = {
        {1, 0.412, 88.50, 96.10, 31.0}, {2, 0.153, 95.20, 97.90, 30.5},
        {3, 0.101, 96.80, 98.40, 30.2}, {4, NAN, 97.40, 98.70, 30.1},
        {5, 0.061, 98.00, 99.00, 30.3}, {6, 0.049, 98.30, 99.20, 30.0},
    };
    if (curves_write(argv[1], fixture_title, points, 6) != 0) {
        perror("curves_fixture");
        return 1;
    }
    printf("%s\n", fixture_title);
    return 0;
}
