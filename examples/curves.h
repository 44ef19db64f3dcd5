/* Training curves: loss and accuracy per epoch, written as CSV and as an SVG plot. */
#ifndef CURVES_H
#define CURVES_H

typedef struct {
    int epoch;
    double train_loss; /* mean over the epoch's batches */
    double train_acc;  /* percent, on the training batches as they were seen */
    double test_acc;   /* percent, evaluation mode */
    double seconds;    /* training time of the epoch */
} curve_point;

/* Writes PREFIX.csv and PREFIX.svg (title: UTF-8 text, any characters; non-finite values are
 * left out of the plot); returns 0, or -1 with errno set. */
int curves_write(const char *prefix, const char *title, const curve_point *points, int n);

#endif
