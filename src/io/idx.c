/* The IDX reader: raw or gzip-compressed files, from memory or a path. The header is trusted
 * for nothing: the dimensions are checked one by one, their product for overflow, and the
 * file must hold exactly the bytes the header announces. A gzip stream is inflated into a
 * buffer that grows with what actually comes out, so a header that claims terabytes costs
 * nothing until the data is really there. */
#include "tapegrad_io.h"

#include "file.h"
#include "internal.h"

#include <limits.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <zlib.h>

#define IDX_UBYTE 0x08

typedef struct {
    int ndim;
    int64_t dims[TG_MAX_DIMS];
    size_t header; /* bytes before the data */
    size_t data;   /* bytes of data: the product of dims */
} idx_header;

static const char *type_name(unsigned code)
{
    switch (code) {
    case 0x08: return "unsigned byte";
    case 0x09: return "signed byte";
    case 0x0B: return "short";
    case 0x0C: return "int";
    case 0x0D: return "float";
    case 0x0E: return "double";
    default: return NULL;
    }
}

static uint32_t be32(const uint8_t *b)
{
    return (uint32_t)b[0] << 24 | (uint32_t)b[1] << 16 | (uint32_t)b[2] << 8 | b[3];
}

/* Returns 0 with *h filled, 1 when more than `have` bytes are needed to see the whole header,
 * or a negative status. */
static int parse_header(const uint8_t *b, size_t have, const char *name, idx_header *h)
{
    if (have >= 2 && (b[0] != 0 || b[1] != 0))
        return tg_fail(TG_ERR_FORMAT, "%s: not an IDX file: the magic number must start with "
                       "two zero bytes, got %02x %02x", name, b[0], b[1]);
    if (have < 4)
        return 1;
    if (b[2] != IDX_UBYTE) {
        const char *known = type_name(b[2]);
        if (known)
            return tg_fail(TG_ERR_FORMAT, "%s: IDX type code 0x%02x (%s) is not supported; "
                           "only 0x08 (unsigned byte) is", name, b[2], known);
        return tg_fail(TG_ERR_FORMAT, "%s: unknown IDX type code 0x%02x (expected 0x08, "
                       "unsigned byte)", name, b[2]);
    }
    int ndim = b[3];
    if (ndim < 1 || ndim > TG_MAX_DIMS)
        return tg_fail(TG_ERR_FORMAT, "%s: IDX file has %d dimensions; 1 to %d are supported",
                       name, ndim, TG_MAX_DIMS);
    size_t header = 4 + 4 * (size_t)ndim;
    if (have < header)
        return 1;
    /* The data must be addressable and its offsets must fit in int64. */
    uint64_t limit = SIZE_MAX < INT64_MAX ? SIZE_MAX : INT64_MAX;
    limit -= header;
    uint64_t product = 1;
    for (int i = 0; i < ndim; i++) {
        uint32_t d = be32(b + 4 + 4 * i);
        if (d == 0)
            return tg_fail(TG_ERR_FORMAT, "%s: IDX dimension %d is 0", name, i);
        h->dims[i] = d;
        if (product > limit / d) {
            char shape[160];
            for (int j = i + 1; j < ndim; j++)
                h->dims[j] = be32(b + 4 + 4 * j);
            return tg_fail(TG_ERR_FORMAT, "%s: IDX dimensions %s hold more bytes than can be "
                           "addressed (the product overflows)", name,
                           tg_shape_str(shape, sizeof shape, ndim, h->dims));
        }
        product *= d;
    }
    h->ndim = ndim;
    h->header = header;
    h->data = (size_t)product;
    return 0;
}

static int length_error(const char *name, const idx_header *h, size_t got, const char *how)
{
    char shape[160];
    return tg_fail(TG_ERR_FORMAT, "%s: expected %zu bytes%s (a %zu-byte header and %s bytes of "
                   "data), got %zu: %s", name, h->header + h->data, how, h->header,
                   tg_shape_str(shape, sizeof shape, h->ndim, h->dims), got,
                   got < h->header + h->data ? "the file is truncated" : "trailing bytes");
}

static void fill(tg_idx *out, const idx_header *h, uint8_t *data)
{
    memset(out, 0, sizeof *out);
    out->ndim = h->ndim;
    memcpy(out->dims, h->dims, sizeof h->dims[0] * (size_t)h->ndim);
    out->data = data;
    out->size = h->data;
}

static int parse_raw(const uint8_t *b, size_t len, const char *name, tg_idx *out)
{
    idx_header h;
    int rc = parse_header(b, len, name, &h);
    if (rc < 0)
        return rc;
    if (rc > 0)
        return tg_fail(TG_ERR_FORMAT, "%s: truncated IDX header (%zu bytes)", name, len);
    if (len != h.header + h.data)
        return length_error(name, &h, len, "");
    uint8_t *data = malloc(h.data);
    if (!data)
        return tg_fail(TG_ERR_NOMEM, "%s: cannot allocate %zu bytes", name, h.data);
    memcpy(data, b + h.header, h.data);
    fill(out, &h, data);
    return 0;
}

static int gz_fail(z_stream *zs, uint8_t *buf, int rc)
{
    inflateEnd(zs);
    free(buf);
    return rc;
}

static int parse_gzip(const uint8_t *b, size_t len, const char *name, tg_idx *out)
{
    z_stream zs;
    memset(&zs, 0, sizeof zs);
    if (inflateInit2(&zs, 15 + 16) != Z_OK) /* 16: expect a gzip wrapper */
        return tg_fail(TG_ERR_NOMEM, "%s: cannot start gzip decompression", name);
    size_t consumed = 0; /* input bytes handed to zlib so far */
    uint8_t *buf = NULL;
    size_t cap = 0, have = 0;
    idx_header h;
    bool header_known = false;
    for (;;) {
        if (zs.avail_in == 0 && consumed < len) {
            size_t chunk = len - consumed < UINT_MAX ? len - consumed : UINT_MAX;
            zs.next_in = (Bytef *)(uintptr_t)(b + consumed);
            zs.avail_in = (uInt)chunk;
            consumed += chunk;
        }
        if (have == cap) {
            /* Grow with the output; once the size is known, never past one byte more than it
             * (that byte is how trailing data is noticed). */
            size_t new_cap = cap ? (cap > SIZE_MAX / 2 ? SIZE_MAX : cap * 2) : 4096;
            if (header_known && new_cap > h.header + h.data + 1)
                new_cap = h.header + h.data + 1;
            uint8_t *bigger = realloc(buf, new_cap);
            if (!bigger)
                return gz_fail(&zs, buf, tg_fail(TG_ERR_NOMEM, "%s: cannot allocate %zu bytes "
                                                 "while decompressing", name, new_cap));
            buf = bigger;
            cap = new_cap;
        }
        size_t room = cap - have < UINT_MAX ? cap - have : UINT_MAX;
        zs.next_out = buf + have;
        zs.avail_out = (uInt)room;
        int zrc = inflate(&zs, Z_NO_FLUSH);
        have += room - zs.avail_out;
        if (zrc == Z_DATA_ERROR || zrc == Z_NEED_DICT)
            return gz_fail(&zs, buf, tg_fail(TG_ERR_FORMAT, "%s: corrupt gzip data (%s)", name,
                                             zs.msg ? zs.msg : "bad stream"));
        if (zrc == Z_MEM_ERROR)
            return gz_fail(&zs, buf, tg_fail(TG_ERR_NOMEM, "%s: out of memory in gzip", name));
        if (zrc != Z_OK && zrc != Z_BUF_ERROR && zrc != Z_STREAM_END)
            return gz_fail(&zs, buf, tg_fail(TG_ERR_FORMAT, "%s: gzip error %d", name, zrc));
        if (!header_known) {
            int hrc = parse_header(buf, have, name, &h);
            if (hrc < 0)
                return gz_fail(&zs, buf, hrc);
            header_known = hrc == 0;
        }
        if (header_known && have > h.header + h.data)
            return gz_fail(&zs, buf, tg_fail(TG_ERR_FORMAT, "%s: decompresses to more than the "
                                             "%zu bytes its IDX header announces: trailing bytes",
                                             name, h.header + h.data));
        if (zrc == Z_STREAM_END) {
            size_t left = zs.avail_in + (len - consumed);
            if (left == 0)
                break;
            /* gzip allows several members one after another; anything else is garbage. */
            const uint8_t *next = zs.avail_in ? zs.next_in : b + consumed;
            if (left >= 2 && next[0] == 0x1f && next[1] == 0x8b) {
                inflateReset(&zs);
                continue;
            }
            return gz_fail(&zs, buf, tg_fail(TG_ERR_FORMAT, "%s: %zu bytes of garbage after "
                                             "the gzip stream", name, left));
        }
        if (zrc == Z_BUF_ERROR && zs.avail_in == 0 && consumed == len)
            return gz_fail(&zs, buf, tg_fail(TG_ERR_FORMAT, "%s: the gzip stream is truncated "
                                             "(it ends after %zu decompressed bytes)", name,
                                             have));
    }
    inflateEnd(&zs);
    if (!header_known) {
        free(buf);
        return tg_fail(TG_ERR_FORMAT, "%s: truncated IDX header (%zu bytes after gunzip)", name,
                       have);
    }
    if (have != h.header + h.data) {
        free(buf);
        return length_error(name, &h, have, " after gunzip");
    }
    memmove(buf, buf + h.header, h.data);
    uint8_t *data = realloc(buf, h.data);
    fill(out, &h, data ? data : buf);
    return 0;
}

static int idx_parse_named(const void *buf, size_t len, const char *name, tg_idx *out)
{
    if (!buf || !out)
        return tg_fail(TG_ERR_NULL, "%s: buffer or output is NULL", name);
    const uint8_t *b = buf;
    if (len >= 2 && b[0] == 0x1f && b[1] == 0x8b)
        return parse_gzip(b, len, name, out);
    return parse_raw(b, len, name, out);
}

int tg_idx_parse(const void *buf, size_t len, tg_idx *out)
{
    return idx_parse_named(buf, len, "tg_idx_parse", out);
}

int tg_idx_load(const char *path, tg_idx *out)
{
    if (!path || !out)
        return tg_fail(TG_ERR_NULL, "tg_idx_load: path or output is NULL");
    uint8_t *buf;
    size_t len;
    int rc = tg_read_file(path, &buf, &len);
    if (rc)
        return rc;
    rc = idx_parse_named(buf, len, path, out);
    free(buf);
    return rc;
}

void tg_idx_free(tg_idx *idx)
{
    if (!idx)
        return;
    free(idx->data);
    memset(idx, 0, sizeof *idx);
}

/* ---- MNIST ------------------------------------------------------------------------------ */

/* DIR/STEM, or DIR/STEM.gz when only that exists; NULL (error set) when neither does. */
static char *find_file(const char *dir, const char *stem)
{
    size_t n = strlen(dir) + strlen(stem) + 8;
    char *path = malloc(n);
    if (!path) {
        tg_fail(TG_ERR_NOMEM, "tg_mnist_load: out of memory");
        return NULL;
    }
    snprintf(path, n, "%s/%s", dir, stem);
    FILE *f = fopen(path, "rb");
    if (!f) {
        snprintf(path, n, "%s/%s.gz", dir, stem);
        f = fopen(path, "rb");
    }
    if (!f) {
        tg_fail(TG_ERR_IO, "tg_mnist_load: neither %s/%s nor %s.gz exists (scripts/fetch_mnist.sh "
                "fetches MNIST)", dir, stem, stem);
        free(path);
        return NULL;
    }
    fclose(f);
    return path;
}

static int load_part(const char *dir, const char *split, const char *kind, tg_idx *out,
                     char **path)
{
    char stem[64];
    snprintf(stem, sizeof stem, "%s-%s", split, kind);
    *path = find_file(dir, stem);
    if (!*path)
        return tg_last_error_code();
    return tg_idx_load(*path, out);
}

int tg_mnist_load(const char *dir, const char *split, tg_mnist *out)
{
    if (!dir || !split || !out)
        return tg_fail(TG_ERR_NULL, "tg_mnist_load: dir, split or output is NULL");
    if (strcmp(split, "train") != 0 && strcmp(split, "t10k") != 0)
        return tg_fail(TG_ERR_ARG, "tg_mnist_load: split must be \"train\" or \"t10k\", got "
                       "\"%.40s\"", split);
    tg_idx images = {0}, labels = {0};
    char *images_path = NULL, *labels_path = NULL;
    char shape[160];
    int rc = load_part(dir, split, "images-idx3-ubyte", &images, &images_path);
    if (rc == 0)
        rc = load_part(dir, split, "labels-idx1-ubyte", &labels, &labels_path);
    if (rc == 0 && (images.ndim != 3 || images.dims[1] != 28 || images.dims[2] != 28))
        rc = tg_fail(TG_ERR_FORMAT, "%s: MNIST images must be N x 28 x 28, got %s", images_path,
                     tg_shape_str(shape, sizeof shape, images.ndim, images.dims));
    if (rc == 0 && labels.ndim != 1)
        rc = tg_fail(TG_ERR_FORMAT, "%s: MNIST labels must have one dimension, got %s",
                     labels_path, tg_shape_str(shape, sizeof shape, labels.ndim, labels.dims));
    if (rc == 0 && images.dims[0] != labels.dims[0])
        rc = tg_fail(TG_ERR_FORMAT, "tg_mnist_load: %s has %lld images but %s has %lld labels",
                     images_path, (long long)images.dims[0], labels_path,
                     (long long)labels.dims[0]);
    for (size_t i = 0; rc == 0 && i < labels.size; i++) {
        if (labels.data[i] > 9)
            rc = tg_fail(TG_ERR_FORMAT, "%s: label %d at index %zu is outside 0..9", labels_path,
                         labels.data[i], i);
    }
    free(images_path);
    free(labels_path);
    if (rc) {
        tg_idx_free(&images);
        tg_idx_free(&labels);
        return rc;
    }
    out->count = images.dims[0];
    out->rows = (int)images.dims[1];
    out->cols = (int)images.dims[2];
    out->images = images.data;
    out->labels = labels.data;
    return 0;
}

void tg_mnist_free(tg_mnist *m)
{
    if (!m)
        return;
    free(m->images);
    free(m->labels);
    memset(m, 0, sizeof *m);
}

int tg_mnist_gather(const tg_mnist *m, const int64_t *indices, int64_t count, float mean,
                    float std, float *images, float *labels)
{
    if (!m || (!indices && count > 0))
        return tg_fail(TG_ERR_NULL, "tg_mnist_gather: dataset or indices is NULL");
    if (count < 0)
        return tg_fail(TG_ERR_ARG, "tg_mnist_gather: count is %lld", (long long)count);
    if (!isfinite(mean) || !isfinite(std) || !(std > 0.0f))
        return tg_fail(TG_ERR_ARG, "tg_mnist_gather: mean %g and std %g must be finite, std > 0",
                       (double)mean, (double)std);
    if ((images && !m->images) || (labels && !m->labels))
        return tg_fail(TG_ERR_NULL, "tg_mnist_gather: the dataset has no %s",
                       images && !m->images ? "images" : "labels");
    if (m->rows < 0 || m->cols < 0)
        return tg_fail(TG_ERR_ARG, "tg_mnist_gather: the dataset has %d x %d images", m->rows,
                       m->cols);
    /* Check every index before writing, so a bad one leaves the buffers as they were. */
    for (int64_t i = 0; i < count; i++) {
        if (indices[i] < 0 || indices[i] >= m->count)
            return tg_fail(TG_ERR_ARG, "tg_mnist_gather: index %lld (at %lld) is outside 0..%lld",
                           (long long)indices[i], (long long)i, (long long)m->count - 1);
    }
    size_t pixels = (size_t)m->rows * (size_t)m->cols;
    /* A pixel has 256 possible values: normalize each once, then look them up. */
    float table[256];
    for (int p = 0; p < 256; p++)
        table[p] = ((float)p / 255.0f - mean) / std;
    for (int64_t i = 0; i < count; i++) {
        const uint8_t *src = m->images + (size_t)indices[i] * pixels;
        if (images) {
            float *dst = images + (size_t)i * pixels;
            for (size_t k = 0; k < pixels; k++)
                dst[k] = table[src[k]];
        }
        if (labels)
            labels[i] = (float)m->labels[indices[i]];
    }
    return 0;
}
