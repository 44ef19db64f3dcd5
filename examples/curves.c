/* Training curves as CSV (for scripts) and SVG (for a person with a browser): loss on the
 * left axis, accuracies on the right, one point per epoch. */
#include "curves.h"

#include <math.h>
#include <stdio.h>
#include <string.h>

enum { WIDTH = 720, HEIGHT = 420, LEFT = 70, RIGHT = 70, TOP = 50, BOTTOM = 60 };

static double px(int i, int n)
{
    double span = WIDTH - LEFT - RIGHT;
    return LEFT + (n > 1 ? span * i / (n - 1) : span / 2);
}

static double py(double v, double lo, double hi)
{
    double t = hi > lo ? (v - lo) / (hi - lo) : 0.5;
    return TOP + (HEIGHT - TOP - BOTTOM) * (1 - t);
}

static void polyline(FILE *f, const curve_point *p, int n, int which, double lo, double hi,
                     const char *color)
{
    fprintf(f, "<polyline fill=\"none\" stroke=\"%s\" stroke-width=\"2\" points=\"", color);
    for (int i = 0; i < n; i++) {
        double v = which == 0 ? p[i].train_loss : which == 1 ? p[i].train_acc : p[i].test_acc;
        fprintf(f, "%.1f,%.1f ", px(i, n), py(v, lo, hi));
    }
    fprintf(f, "\"/>\n");
    for (int i = 0; i < n; i++) {
        double v = which == 0 ? p[i].train_loss : which == 1 ? p[i].train_acc : p[i].test_acc;
        fprintf(f, "<circle cx=\"%.1f\" cy=\"%.1f\" r=\"3\" fill=\"%s\"/>\n", px(i, n),
                py(v, lo, hi), color);
    }
}

static int write_svg(const char *path, const char *title, const curve_point *p, int n)
{
    FILE *f = fopen(path, "w");
    if (!f)
        return -1;
    double loss_hi = 0, acc_lo = 100;
    for (int i = 0; i < n; i++) {
        loss_hi = fmax(loss_hi, p[i].train_loss);
        acc_lo = fmin(acc_lo, fmin(p[i].train_acc, p[i].test_acc));
    }
    loss_hi = loss_hi > 0 ? loss_hi * 1.1 : 1;
    acc_lo = floor(acc_lo > 0 ? acc_lo - 0.5 : 0);
    fprintf(f, "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"%d\" height=\"%d\" "
               "font-family=\"sans-serif\" font-size=\"12\">\n", WIDTH, HEIGHT);
    fprintf(f, "<rect width=\"100%%\" height=\"100%%\" fill=\"white\"/>\n");
    fprintf(f, "<text x=\"%d\" y=\"28\" font-size=\"16\" text-anchor=\"middle\">%s</text>\n",
            WIDTH / 2, title);
    fprintf(f, "<rect x=\"%d\" y=\"%d\" width=\"%d\" height=\"%d\" fill=\"none\" "
               "stroke=\"#888\"/>\n", LEFT, TOP, WIDTH - LEFT - RIGHT, HEIGHT - TOP - BOTTOM);
    for (int k = 0; k <= 4; k++) { /* gridlines with both axes' labels */
        double t = k / 4.0, y = TOP + (HEIGHT - TOP - BOTTOM) * (1 - t);
        fprintf(f, "<line x1=\"%d\" x2=\"%d\" y1=\"%.1f\" y2=\"%.1f\" stroke=\"#eee\"/>\n",
                LEFT, WIDTH - RIGHT, y, y);
        fprintf(f, "<text x=\"%d\" y=\"%.1f\" text-anchor=\"end\" fill=\"#c0392b\">%.3f</text>\n",
                LEFT - 6, y + 4, loss_hi * t);
        fprintf(f, "<text x=\"%d\" y=\"%.1f\" fill=\"#2471a3\">%.2f%%</text>\n", WIDTH - RIGHT + 6,
                y + 4, acc_lo + (100 - acc_lo) * t);
    }
    for (int i = 0; i < n; i++)
        fprintf(f, "<text x=\"%.1f\" y=\"%d\" text-anchor=\"middle\">%d</text>\n", px(i, n),
                HEIGHT - BOTTOM + 18, p[i].epoch);
    fprintf(f, "<text x=\"%d\" y=\"%d\" text-anchor=\"middle\">epoch</text>\n", WIDTH / 2,
            HEIGHT - 18);
    polyline(f, p, n, 0, 0, loss_hi, "#c0392b");
    polyline(f, p, n, 1, acc_lo, 100, "#7fb3d5");
    polyline(f, p, n, 2, acc_lo, 100, "#2471a3");
    fprintf(f, "<text x=\"%d\" y=\"%d\" fill=\"#c0392b\">&#9632; training loss (left)</text>\n",
            LEFT, HEIGHT - 4);
    fprintf(f, "<text x=\"%d\" y=\"%d\" fill=\"#7fb3d5\">&#9632; training accuracy</text>\n",
            LEFT + 190, HEIGHT - 4);
    fprintf(f, "<text x=\"%d\" y=\"%d\" fill=\"#2471a3\">&#9632; test accuracy (right)</text>\n",
            LEFT + 340, HEIGHT - 4);
    fprintf(f, "</svg>\n");
    return fclose(f) == 0 ? 0 : -1;
}

int curves_write(const char *prefix, const char *title, const curve_point *points, int n)
{
    char path[4096];
    snprintf(path, sizeof path, "%s.csv", prefix);
    FILE *f = fopen(path, "w");
    if (!f)
        return -1;
    fprintf(f, "epoch,train_loss,train_acc,test_acc,seconds\n");
    for (int i = 0; i < n; i++)
        fprintf(f, "%d,%.6f,%.4f,%.4f,%.3f\n", points[i].epoch, points[i].train_loss,
                points[i].train_acc, points[i].test_acc, points[i].seconds);
    if (fclose(f) != 0)
        return -1;
    snprintf(path, sizeof path, "%s.svg", prefix);
    return write_svg(path, title, points, n);
}
