/* Classifies your own digit images with a model trained by mnist_cnn.
 *
 *   mnist_predict --load CHECKPOINT [--show] IMAGE...
 *
 * IMAGE: PNG (through libpng: grayscale, RGB, palette, with or without alpha, 8 or 16 bits)
 * or PGM (binary P5 or ASCII P2, 8 or 16 bits), any size. Each image is made to look like an
 * MNIST digit, as MNIST's were made from scanned forms:
 *   1. gray levels in [0, 1]; a transparent background takes the paper's colour (light when
 *      the opaque ink is dark, dark when it is light);
 *   2. inverted when the background (the mean of the border pixels) is light, so the digit
 *      is light on dark, and stretched so the background is 0 and the strongest ink 1;
 *   3. cropped to the ink (pixels above 10% of the strongest), scaled to fit 20x20 keeping
 *      its aspect ratio (each output pixel the mean of the input area it covers), and placed
 *      in 28x28 so its centre of mass is at the centre;
 *   4. normalized as mnist_cnn normalizes: (pixel - 0.1307) / 0.3081.
 * Prints, per file, the digit and the ten probabilities (softmax of the logits). A file that
 * cannot be read or is not a PNG or PGM image gets an error on stderr; the others are still
 * classified, and the exit status is then 1. --show also prints the 28x28 image the model saw. */
#include <errno.h>
#include <getopt.h>
#include <math.h>
#include <png.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "mnist_models.h"
#include "tapegrad_io.h"

#define MNIST_MEAN 0.1307f
#define MNIST_STD 0.3081f
#define MAX_SIDE 16384                /* refuse larger images rather than allocate gigabytes */
#define MAX_FILE (256L * 1024 * 1024)

typedef struct {
    int w, h;
    float *v; /* w * h gray levels in [0, 1], 0 black */
} image;

/* ---- reading ----------------------------------------------------------------------------- */
static int read_whole(const char *path, unsigned char **buf, long *len, char *err, size_t esz)
{
    FILE *f = fopen(path, "rb");
    if (!f) {
        snprintf(err, esz, "cannot open: %s", strerror(errno));
        return -1;
    }
    long n = -1;
    if (fseek(f, 0, SEEK_END) == 0)
        n = ftell(f);
    if (n < 0 || fseek(f, 0, SEEK_SET) != 0) {
        snprintf(err, esz, "cannot read: %s", errno ? strerror(errno) : "not a regular file");
        fclose(f);
        return -1;
    }
    if (n > MAX_FILE) {
        snprintf(err, esz, "too large for an image (%ld bytes)", n);
        fclose(f);
        return -1;
    }
    *buf = malloc((size_t)n + 1);
    if (!*buf || fread(*buf, 1, (size_t)n, f) != (size_t)n) {
        snprintf(err, esz, "cannot read: %s", *buf ? strerror(errno) : "out of memory");
        free(*buf);
        fclose(f);
        return -1;
    }
    (*buf)[n] = '\0';
    fclose(f);
    *len = n;
    return 0;
}

/* Gray and alpha in [0, 1] -> gray on the paper's colour (see the top of the file). */
static void composite(image *im, const float *alpha)
{
    double ink = 0, weight = 0;
    bool transparent = false;
    for (long i = 0; i < (long)im->w * im->h; i++) {
        transparent |= alpha[i] < 1;
        ink += alpha[i] * im->v[i];
        weight += alpha[i];
    }
    if (!transparent)
        return;
    float paper = weight > 0 && ink / weight < 0.5 ? 1.0f : 0.0f;
    for (long i = 0; i < (long)im->w * im->h; i++)
        im->v[i] = alpha[i] * im->v[i] + (1 - alpha[i]) * paper;
}

static int read_png(const unsigned char *buf, long len, image *im, char *err, size_t esz)
{
    png_image png;
    memset(&png, 0, sizeof png);
    png.version = PNG_IMAGE_VERSION;
    if (!png_image_begin_read_from_memory(&png, buf, (size_t)len)) {
        snprintf(err, esz, "not a readable PNG: %s", png.message);
        return -1;
    }
    if (png.width < 1 || png.height < 1 || png.width > MAX_SIDE || png.height > MAX_SIDE) {
        snprintf(err, esz, "PNG of %ux%u pixels: sides from 1 to %d only", png.width,
                 png.height, MAX_SIDE);
        png_image_free(&png);
        return -1;
    }
    png.format = PNG_FORMAT_GA; /* libpng converts colour, palettes and 16 bits to 8-bit gray */
    unsigned char *ga = malloc(PNG_IMAGE_SIZE(png));
    if (!ga || !png_image_finish_read(&png, NULL, ga, 0, NULL)) {
        snprintf(err, esz, "not a readable PNG: %s", ga ? png.message : "out of memory");
        free(ga);
        png_image_free(&png);
        return -1;
    }
    im->w = (int)png.width;
    im->h = (int)png.height;
    long n = (long)im->w * im->h;
    im->v = malloc((size_t)n * sizeof *im->v);
    float *alpha = malloc((size_t)n * sizeof *alpha);
    if (!im->v || !alpha) {
        snprintf(err, esz, "out of memory");
        free(ga);
        free(alpha);
        return -1;
    }
    for (long i = 0; i < n; i++) {
        im->v[i] = ga[2 * i] / 255.0f;
        alpha[i] = ga[2 * i + 1] / 255.0f;
    }
    composite(im, alpha);
    free(alpha);
    free(ga);
    return 0;
}

/* Skips whitespace and # comments of a PGM header; false at the end of the buffer. */
static bool pgm_skip(const unsigned char *buf, long len, long *pos)
{
    while (*pos < len) {
        if (buf[*pos] == '#')
            while (*pos < len && buf[*pos] != '\n')
                (*pos)++;
        else if (buf[*pos] == ' ' || buf[*pos] == '\t' || buf[*pos] == '\n' || buf[*pos] == '\r')
            (*pos)++;
        else
            return true;
    }
    return false;
}

static bool pgm_number(const unsigned char *buf, long len, long *pos, long max, long *out)
{
    if (!pgm_skip(buf, len, pos) || buf[*pos] < '0' || buf[*pos] > '9')
        return false;
    long v = 0;
    while (*pos < len && buf[*pos] >= '0' && buf[*pos] <= '9') {
        v = v * 10 + (buf[(*pos)++] - '0');
        if (v > max)
            return false;
    }
    *out = v;
    return true;
}

static int read_pgm(const unsigned char *buf, long len, image *im, char *err, size_t esz)
{
    bool ascii = buf[1] == '2';
    long pos = 2, w, h, maxval;
    if (!pgm_number(buf, len, &pos, MAX_SIDE, &w) || !pgm_number(buf, len, &pos, MAX_SIDE, &h) ||
        !pgm_number(buf, len, &pos, 65535, &maxval) || w < 1 || h < 1 || maxval < 1) {
        snprintf(err, esz, "not a valid PGM: its header needs width, height (1 to %d) and a "
                 "maximum value (1 to 65535)", MAX_SIDE);
        return -1;
    }
    int bytes = maxval > 255 ? 2 : 1;
    long n = w * h;
    if (!ascii) {
        pos++; /* the single whitespace after maxval */
        if (len - pos < n * bytes) {
            snprintf(err, esz, "truncated PGM: %ldx%ld pixels need %ld bytes, it has %ld", w, h,
                     n * bytes, len - pos > 0 ? len - pos : 0);
            return -1;
        }
    }
    im->w = (int)w;
    im->h = (int)h;
    if (!(im->v = malloc((size_t)n * sizeof *im->v))) {
        snprintf(err, esz, "out of memory");
        return -1;
    }
    for (long i = 0; i < n; i++) {
        long v;
        if (ascii) {
            if (!pgm_number(buf, len, &pos, maxval, &v)) {
                snprintf(err, esz, "not a valid ASCII PGM: pixel %ld of %ld is missing or "
                         "above the maximum %ld", i + 1, n, maxval);
                return -1;
            }
        } else {
            v = bytes == 2 ? buf[pos + 2 * i] << 8 | buf[pos + 2 * i + 1] : buf[pos + i];
            if (v > maxval) {
                snprintf(err, esz, "not a valid PGM: pixel %ld is %ld, above the maximum %ld",
                         i + 1, v, maxval);
                return -1;
            }
        }
        im->v[i] = (float)v / (float)maxval;
    }
    return 0;
}

static int read_image(const char *path, image *im, char *err, size_t esz)
{
    unsigned char *buf;
    long len;
    if (read_whole(path, &buf, &len, err, esz) != 0)
        return -1;
    static const unsigned char png_magic[8] = {0x89, 'P', 'N', 'G', '\r', '\n', 0x1a, '\n'};
    int status;
    if (len >= 8 && memcmp(buf, png_magic, 8) == 0)
        status = read_png(buf, len, im, err, esz);
    else if (len >= 2 && buf[0] == 'P' && (buf[1] == '2' || buf[1] == '5'))
        status = read_pgm(buf, len, im, err, esz);
    else {
        snprintf(err, esz, "not a PNG or PGM image (PNG, and PGM in its binary P5 and ASCII P2 "
                 "forms, are read)");
        status = -1;
    }
    free(buf);
    return status;
}

/* ---- making it look like MNIST ----------------------------------------------------------- */
/* Mean of src over the rectangle [x0, x1) x [y0, y1) (fractional edges weighted). */
static float area_mean(const float *src, int sw, int sh, double x0, double x1, double y0, double y1)
{
    double sum = 0, area = 0;
    for (int y = (int)floor(y0); y < (int)ceil(y1) && y < sh; y++) {
        double wy = fmin(y1, y + 1) - fmax(y0, y);
        for (int x = (int)floor(x0); x < (int)ceil(x1) && x < sw; x++) {
            double wx = fmin(x1, x + 1) - fmax(x0, x);
            if (wx > 0 && wy > 0 && x >= 0 && y >= 0) {
                sum += wx * wy * src[(long)y * sw + x];
                area += wx * wy;
            }
        }
    }
    return area > 0 ? (float)(sum / area) : 0;
}

/* The 28x28 MNIST-like image of im (values in [0, 1], ink 1) into out; -1 for a blank image. */
static int to_mnist(const image *im, float out[28 * 28], char *err, size_t esz)
{
    long n = (long)im->w * im->h;
    /* polarity: the border is the background */
    double border = 0;
    long count = 0;
    for (int y = 0; y < im->h; y++)
        for (int x = 0; x < im->w; x++)
            if (y == 0 || x == 0 || y == im->h - 1 || x == im->w - 1) {
                border += im->v[(long)y * im->w + x];
                count++;
            }
    bool invert = border / (double)count > 0.5;
    float *v = malloc((size_t)n * sizeof *v);
    if (!v) {
        snprintf(err, esz, "out of memory");
        return -1;
    }
    float bg = (float)(invert ? 1 - border / (double)count : border / (double)count), top = 0;
    for (long i = 0; i < n; i++) {
        v[i] = invert ? 1 - im->v[i] : im->v[i];
        top = v[i] > top ? v[i] : top;
    }
    if (top - bg < 0.1f) {
        snprintf(err, esz, "no digit found: the image is blank (contrast %.3f)", top - bg);
        free(v);
        return -1;
    }
    int x0 = im->w, y0 = im->h, x1 = -1, y1 = -1;
    for (int y = 0; y < im->h; y++)
        for (int x = 0; x < im->w; x++) {
            float *p = &v[(long)y * im->w + x];
            *p = *p > bg ? (*p - bg) / (top - bg) : 0;
            if (*p > 0.1f) {
                x0 = x < x0 ? x : x0;
                x1 = x > x1 ? x : x1;
                y0 = y < y0 ? y : y0;
                y1 = y > y1 ? y : y1;
            }
        }
    /* crop, fit into 20x20 keeping the aspect ratio */
    int cw = x1 - x0 + 1, ch = y1 - y0 + 1;
    double scale = 20.0 / (cw > ch ? cw : ch);
    int fw = (int)lround(cw * scale), fh = (int)lround(ch * scale);
    fw = fw < 1 ? 1 : fw;
    fh = fh < 1 ? 1 : fh;
    float fitted[20 * 20];
    double mx = 0, my = 0, mass = 0;
    for (int y = 0; y < fh; y++)
        for (int x = 0; x < fw; x++) {
            float p = area_mean(v, im->w, im->h, x0 + x * (double)cw / fw,
                                x0 + (x + 1) * (double)cw / fw, y0 + y * (double)ch / fh,
                                y0 + (y + 1) * (double)ch / fh);
            fitted[y * 20 + x] = p;
            mx += p * (x + 0.5);
            my += p * (y + 0.5);
            mass += p;
        }
    free(v);
    /* centre of mass to the centre of 28x28 */
    int ox = (int)lround(14 - mx / mass), oy = (int)lround(14 - my / mass);
    memset(out, 0, 28 * 28 * sizeof *out);
    for (int y = 0; y < fh; y++)
        for (int x = 0; x < fw; x++) {
            int tx = x + ox, ty = y + oy;
            if (tx >= 0 && tx < 28 && ty >= 0 && ty < 28)
                out[ty * 28 + tx] = fitted[y * 20 + x];
        }
    return 0;
}

/* ---- the model --------------------------------------------------------------------------- */
static int load_model(const char *path, tg_tape *tape, mnist_model *m)
{
    tg_checkpoint *c;
    if (tg_checkpoint_open(path, &c) != 0) {
        fprintf(stderr, "mnist_predict: %s\n", tg_last_error());
        return -1;
    }
    const char *name = tg_checkpoint_meta(c, "tapegrad.model");
    model_kind kind;
    tg_rng rng;
    tg_rng_seed(&rng, 1);
    if (!name || model_from_name(name, &kind) != 0) {
        fprintf(stderr, "mnist_predict: %s is not a checkpoint of mnist_cnn (no "
                "tapegrad.model)\n", path);
        tg_checkpoint_free(c);
        return -1;
    }
    int status = model_init(m, kind, tape, &rng);
    size_t n = tg_params_count(m->params);
    tg_ckpt_entry *e = status == 0 ? calloc(n, sizeof *e) : NULL;
    for (size_t i = 0; e && i < n; i++) {
        const tg_param *p = tg_params_get(m->params, i);
        e[i] = (tg_ckpt_entry){.name = p->name, .dtype = tg_dtype_of(p->tensor),
                               .ndim = tg_ndim(p->tensor), .data = tg_data(p->tensor)};
        memcpy(e[i].shape, tg_shape(p->tensor), (size_t)e[i].ndim * sizeof(int64_t));
    }
    if (!e || tg_checkpoint_read(c, e, (int)n) != 0) {
        fprintf(stderr, "mnist_predict: %s: %s\n", path, tg_last_error());
        status = -1;
    }
    free(e);
    tg_checkpoint_free(c);
    return status;
}

static int classify(const mnist_model *m, tg_tape *tape, const float pixels[28 * 28],
                    double probs[10])
{
    float x[28 * 28];
    for (int i = 0; i < 28 * 28; i++)
        x[i] = (pixels[i] - MNIST_MEAN) / MNIST_STD;
    tg_mark mark = tg_tape_mark(tape);
    tg_tensor *logits =
        model_forward(m, tg_from_data(tape, TG_F32, 4, (int64_t[]){1, 1, 28, 28}, x), false);
    if (!logits) {
        tg_tape_rewind(tape, mark);
        return -1;
    }
    double top = -INFINITY, sum = 0;
    for (int k = 0; k < 10; k++)
        top = fmax(top, tg_get(logits, k));
    for (int k = 0; k < 10; k++)
        sum += probs[k] = exp(tg_get(logits, k) - top);
    int best = 0;
    for (int k = 0; k < 10; k++) {
        probs[k] /= sum;
        best = probs[k] > probs[best] ? k : best;
    }
    tg_tape_rewind(tape, mark);
    return best;
}

static void usage(FILE *out)
{
    fprintf(out, "usage: mnist_predict --load CHECKPOINT [--show] IMAGE...\n"
                 "  --load FILE  a checkpoint written by mnist_cnn --save (either model)\n"
                 "  --show       also print the 28x28 image the model sees\n"
                 "  IMAGE        PNG or PGM (P5/P2) files of one digit each, any size and "
                 "polarity\n");
}

int main(int argc, char **argv)
{
    static const struct option longs[] = {{"load", required_argument, 0, 'l'},
                                          {"show", no_argument, 0, 's'},
                                          {"help", no_argument, 0, 'h'},
                                          {0, 0, 0, 0}};
    const char *load = NULL;
    bool show = false;
    int opt;
    while ((opt = getopt_long(argc, argv, "h", longs, NULL)) != -1) {
        if (opt == 'l')
            load = optarg;
        else if (opt == 's')
            show = true;
        else if (opt == 'h') {
            usage(stdout);
            return 0;
        } else {
            usage(stderr);
            return 2;
        }
    }
    if (!load || optind == argc) {
        fprintf(stderr, "mnist_predict: %s\n", !load ? "--load CHECKPOINT is required"
                                                     : "no image files given");
        usage(stderr);
        return 2;
    }
    tg_tape *tape = tg_tape_new();
    mnist_model model = {0};
    if (!tape || load_model(load, tape, &model) != 0) {
        model_free(&model);
        tg_tape_free(tape);
        return 1;
    }
    int failures = 0;
    for (int f = optind; f < argc; f++) {
        image im = {0};
        float pixels[28 * 28];
        double probs[10];
        char err[256];
        int digit = -1;
        if (read_image(argv[f], &im, err, sizeof err) == 0 &&
            to_mnist(&im, pixels, err, sizeof err) == 0 &&
            (digit = classify(&model, tape, pixels, probs)) < 0)
            snprintf(err, sizeof err, "%s", tg_last_error());
        free(im.v);
        if (digit < 0) {
            fprintf(stderr, "mnist_predict: %s: %s\n", argv[f], err);
            failures++;
            continue;
        }
        printf("%s: %d  probabilities", argv[f], digit);
        for (int k = 0; k < 10; k++)
            printf(" %d:%.4f", k, probs[k]);
        printf("\n");
        for (int y = 0; show && y < 28; y++) {
            for (int x = 0; x < 28; x++)
                putchar(" .:-=+*#%@"[(int)(pixels[y * 28 + x] * 9.99f)]);
            putchar('\n');
        }
    }
    fflush(stdout);
    model_free(&model);
    tg_tape_free(tape);
    return failures ? 1 : 0;
}
