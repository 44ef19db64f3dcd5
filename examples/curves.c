/* Training curves as CSV (for scripts) and SVG (for a person with a browser): loss on the
 * left axis, accuracies on the right, one point per epoch.
 *
 * The SVG is a standalone XML document, which browsers parse strictly: one stray '&' or '<'
 * (say, in the title) and they show an error page instead of the plot, and a "nan" coordinate
 * drops a whole line. So text is escaped, and non-finite values are left out (a line breaks
 * around them). Parts carry ids (axes, series-*, legend) so tests/curves_in_browser.py can
 * find them in the page a browser renders. */
#include "curves.h"

#include <math.h>
#include <stdio.h>
#include <string.h>

enum { WIDTH = 760, HEIGHT = 440, LEFT = 80, RIGHT = 80, TOP = 50, BOTTOM = 70 };
enum { MAX_EPOCH_LABELS = 12 };

static const char *const loss_color = "#c0392b", *const train_color = "#7fb3d5",
                         *const test_color = "#2471a3";

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

static double value_of(const curve_point *p, int which)
{
    return which == 0 ? p->train_loss : which == 1 ? p->train_acc : p->test_acc;
}

/* s as XML character data or attribute text. */
static void put_escaped(FILE *f, const char *s)
{
    for (; *s; s++) {
        unsigned char c = (unsigned char)*s;
        if (c == '&')
            fputs("&amp;", f);
        else if (c == '<')
            fputs("&lt;", f);
        else if (c == '>')
            fputs("&gt;", f);
        else if (c == '"')
            fputs("&quot;", f);
        else if (c < 0x20 && c != '\t' && c != '\n' && c != '\r')
            fputc(' ', f); /* not allowed in XML 1.0 at all */
        else
            fputc(c, f);
    }
}

/* One series: a polyline per run of finite values, and a dot at each finite value. */
static void series(FILE *f, const char *id, const curve_point *p, int n, int which, double lo,
                   double hi, const char *color)
{
    fprintf(f, "<g id=\"%s\" stroke=\"%s\" fill=\"%s\">\n", id, color, color);
    for (int i = 0; i < n;) {
        if (!isfinite(value_of(&p[i], which))) {
            i++;
            continue;
        }
        fprintf(f, "<polyline fill=\"none\" stroke-width=\"2\" points=\"");
        for (; i < n && isfinite(value_of(&p[i], which)); i++)
            fprintf(f, "%.1f,%.1f ", px(i, n), py(value_of(&p[i], which), lo, hi));
        fprintf(f, "\"/>\n");
    }
    for (int i = 0; i < n; i++)
        if (isfinite(value_of(&p[i], which)))
            fprintf(f, "<circle cx=\"%.1f\" cy=\"%.1f\" r=\"3\" stroke=\"none\"/>\n", px(i, n),
                    py(value_of(&p[i], which), lo, hi));
    fprintf(f, "</g>\n");
}

static int write_svg(const char *path, const char *title, const curve_point *p, int n)
{
    FILE *f = fopen(path, "w");
    if (!f)
        return -1;
    double loss_hi = 0, acc_lo = 100;
    for (int i = 0; i < n; i++) {
        if (isfinite(p[i].train_loss))
            loss_hi = fmax(loss_hi, p[i].train_loss);
        for (int which = 1; which <= 2; which++)
            if (isfinite(value_of(&p[i], which)))
                acc_lo = fmin(acc_lo, value_of(&p[i], which));
    }
    loss_hi = loss_hi > 0 ? loss_hi * 1.1 : 1;
    acc_lo = acc_lo >= 100 ? 99 : floor(acc_lo > 0.5 ? acc_lo - 0.5 : 0);
    int plot_h = HEIGHT - TOP - BOTTOM, mid_y = TOP + plot_h / 2;

    fprintf(f, "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n");
    fprintf(f, "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"%d\" height=\"%d\" "
               "viewBox=\"0 0 %d %d\" font-family=\"sans-serif\" font-size=\"12\">\n",
            WIDTH, HEIGHT, WIDTH, HEIGHT);
    fputs("<title>", f);
    put_escaped(f, title);
    fputs("</title>\n", f);
    fprintf(f, "<rect width=\"100%%\" height=\"100%%\" fill=\"white\"/>\n");
    fprintf(f, "<text id=\"title\" x=\"%d\" y=\"28\" font-size=\"16\" text-anchor=\"middle\">",
            WIDTH / 2);
    put_escaped(f, title);
    fputs("</text>\n", f);

    fprintf(f, "<g id=\"axes\">\n");
    for (int k = 0; k <= 4; k++) { /* gridlines with both axes' labels */
        double t = k / 4.0, y = TOP + plot_h * (1 - t);
        fprintf(f, "<line x1=\"%d\" x2=\"%d\" y1=\"%.1f\" y2=\"%.1f\" stroke=\"#eee\"/>\n", LEFT,
                WIDTH - RIGHT, y, y);
        fprintf(f, "<text x=\"%d\" y=\"%.1f\" text-anchor=\"end\" fill=\"%s\">%.3f</text>\n",
                LEFT - 6, y + 4, loss_color, loss_hi * t);
        fprintf(f, "<text x=\"%d\" y=\"%.1f\" fill=\"%s\">%.2f%%</text>\n", WIDTH - RIGHT + 6,
                y + 4, test_color, acc_lo + (100 - acc_lo) * t);
    }
    fprintf(f, "<rect x=\"%d\" y=\"%d\" width=\"%d\" height=\"%d\" fill=\"none\" "
               "stroke=\"#888\"/>\n", LEFT, TOP, WIDTH - LEFT - RIGHT, plot_h);
    int every = n > MAX_EPOCH_LABELS ? (n + MAX_EPOCH_LABELS - 1) / MAX_EPOCH_LABELS : 1;
    for (int i = 0; i < n; i++)
        if (i % every == 0 || i == n - 1)
            fprintf(f, "<text x=\"%.1f\" y=\"%d\" text-anchor=\"middle\">%d</text>\n", px(i, n),
                    HEIGHT - BOTTOM + 18, p[i].epoch);
    fprintf(f, "<text x=\"%d\" y=\"%d\" text-anchor=\"middle\">epoch</text>\n", WIDTH / 2,
            HEIGHT - BOTTOM + 36);
    fprintf(f, "<text x=\"22\" y=\"%d\" text-anchor=\"middle\" fill=\"%s\" "
               "transform=\"rotate(-90 22 %d)\">training loss</text>\n", mid_y, loss_color, mid_y);
    fprintf(f, "<text x=\"%d\" y=\"%d\" text-anchor=\"middle\" fill=\"%s\" "
               "transform=\"rotate(90 %d %d)\">accuracy (%%)</text>\n", WIDTH - 18, mid_y,
            test_color, WIDTH - 18, mid_y);
    fprintf(f, "</g>\n");

    series(f, "series-train-loss", p, n, 0, 0, loss_hi, loss_color);
    series(f, "series-train-acc", p, n, 1, acc_lo, 100, train_color);
    series(f, "series-test-acc", p, n, 2, acc_lo, 100, test_color);

    fprintf(f, "<g id=\"legend\">\n");
    fprintf(f, "<text x=\"%d\" y=\"%d\" fill=\"%s\">&#9632; training loss (left)</text>\n", LEFT,
            HEIGHT - 8, loss_color);
    fprintf(f, "<text x=\"%d\" y=\"%d\" fill=\"%s\">&#9632; training accuracy</text>\n",
            LEFT + 200, HEIGHT - 8, train_color);
    fprintf(f, "<text x=\"%d\" y=\"%d\" fill=\"%s\">&#9632; test accuracy (right)</text>\n",
            LEFT + 360, HEIGHT - 8, test_color);
    fprintf(f, "</g>\n</svg>\n");
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
