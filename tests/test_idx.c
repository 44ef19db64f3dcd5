/* The IDX reader (raw and gzip, from memory and from files) and the MNIST loader, on files the
 * tests write themselves; plus the real MNIST when TG_MNIST_DIR points at it. */
#include "testing.h"
#include "scratch.h"

#include "tapegrad_io.h"

#include <dirent.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>
#include <zlib.h>

/* ---- helpers --------------------------------------------------------------------------------- */

typedef struct {
    uint8_t *data;
    size_t len;
} bytes;

static void bytes_free(bytes *b)
{
    free(b->data);
    b->data = NULL;
    b->len = 0;
}

/* An IDX file: magic (type, ndim), big-endian dims, then the data (a pattern unless given). */
static bytes make_idx(uint8_t type, int ndim, const uint32_t *dims, size_t data_len,
                      const uint8_t *data)
{
    bytes b;
    b.len = 4 + 4 * (size_t)ndim + data_len;
    b.data = malloc(b.len);
    ck_assert_ptr_nonnull(b.data);
    b.data[0] = 0, b.data[1] = 0, b.data[2] = type, b.data[3] = (uint8_t)ndim;
    for (int i = 0; i < ndim; i++)
        for (int k = 0; k < 4; k++)
            b.data[4 + 4 * i + k] = (uint8_t)(dims[i] >> (24 - 8 * k));
    for (size_t i = 0; i < data_len; i++)
        b.data[4 + 4 * (size_t)ndim + i] = data ? data[i] : (uint8_t)(i * 7 + 3);
    return b;
}

static bytes gzip_bytes(const uint8_t *src, size_t len)
{
    z_stream zs;
    memset(&zs, 0, sizeof zs);
    ck_assert_int_eq(deflateInit2(&zs, 9, Z_DEFLATED, 15 + 16, 8, Z_DEFAULT_STRATEGY), Z_OK);
    bytes out;
    out.len = deflateBound(&zs, (uLong)len) + 32;
    out.data = malloc(out.len);
    zs.next_in = (Bytef *)(uintptr_t)src;
    zs.avail_in = (uInt)len;
    zs.next_out = out.data;
    zs.avail_out = (uInt)out.len;
    ck_assert_int_eq(deflate(&zs, Z_FINISH), Z_STREAM_END);
    out.len = zs.total_out;
    deflateEnd(&zs);
    return out;
}

static char tmpdir[256];

static void make_tmpdir(void) { scratch_make(tmpdir, sizeof tmpdir, "tg_idx"); }

static void remove_tmpdir(void) { scratch_remove(tmpdir); }

static const char *write_file(const char *name, const uint8_t *data, size_t len)
{
    static char path[600];
    snprintf(path, sizeof path, "%s/%s", tmpdir, name);
    FILE *f = fopen(path, "wb");
    ck_assert_ptr_nonnull(f);
    ck_assert_uint_eq(fwrite(data, 1, len, f), len);
    fclose(f);
    return path;
}

/* Parses b expecting failure with code and a message containing every needle; the output
 * struct must come back untouched. */
static void expect_parse_error(const bytes *b, tg_status code, const char *needle1,
                               const char *needle2)
{
    tg_idx out;
    memset(&out, 0xAB, sizeof out);
    tg_idx before = out;
    tg_clear_error();
    int rc = tg_idx_parse(b->data, b->len, &out);
    ck_assert_int_eq(rc, code);
    ck_assert_int_eq(tg_last_error_code(), code);
    const char *msg = tg_last_error();
    ck_assert_msg(strstr(msg, needle1), "message \"%s\" lacks \"%s\"", msg, needle1);
    if (needle2)
        ck_assert_msg(strstr(msg, needle2), "message \"%s\" lacks \"%s\"", msg, needle2);
    ck_assert_mem_eq(&out, &before, sizeof out);
}

static const uint32_t dims234[] = {2, 3, 4};

/* ---- IDX: good files ----------------------------------------------------------------------- */

static void check_234(const tg_idx *idx)
{
    ck_assert_int_eq(idx->ndim, 3);
    ck_assert_int_eq(idx->dims[0], 2);
    ck_assert_int_eq(idx->dims[1], 3);
    ck_assert_int_eq(idx->dims[2], 4);
    ck_assert_uint_eq(idx->size, 24);
    for (size_t i = 0; i < 24; i++)
        ck_assert_uint_eq(idx->data[i], (uint8_t)(i * 7 + 3));
}

START_TEST(idx_raw_from_memory_and_file)
{
    bytes b = make_idx(0x08, 3, dims234, 24, NULL);
    tg_idx idx;
    ck_assert_int_eq(tg_idx_parse(b.data, b.len, &idx), 0);
    check_234(&idx);
    tg_idx_free(&idx);
    ck_assert_ptr_null(idx.data);
    tg_idx_free(&idx); /* twice is harmless */
    tg_idx_free(NULL);

    make_tmpdir();
    const char *path = write_file("raw-idx3-ubyte", b.data, b.len);
    ck_assert_int_eq(tg_idx_load(path, &idx), 0);
    check_234(&idx);
    tg_idx_free(&idx);
    remove_tmpdir();
    bytes_free(&b);
}
END_TEST

START_TEST(idx_gzip_detected_by_magic_not_name)
{
    bytes raw = make_idx(0x08, 3, dims234, 24, NULL);
    bytes gz = gzip_bytes(raw.data, raw.len);
    tg_idx idx;
    ck_assert_int_eq(tg_idx_parse(gz.data, gz.len, &idx), 0);
    check_234(&idx);
    tg_idx_free(&idx);

    make_tmpdir();
    /* A gzip file without .gz, and a raw file with .gz: the bytes decide. */
    ck_assert_int_eq(tg_idx_load(write_file("plain-name", gz.data, gz.len), &idx), 0);
    check_234(&idx);
    tg_idx_free(&idx);
    ck_assert_int_eq(tg_idx_load(write_file("raw.gz", raw.data, raw.len), &idx), 0);
    check_234(&idx);
    tg_idx_free(&idx);
    remove_tmpdir();
    bytes_free(&raw);
    bytes_free(&gz);
}
END_TEST

START_TEST(idx_gzip_large_and_multi_member)
{
    /* Big enough to need several output buffer growths. */
    uint32_t dims[] = {50, 100, 100};
    bytes raw = make_idx(0x08, 3, dims, 500000, NULL);
    bytes gz = gzip_bytes(raw.data, raw.len);
    tg_idx idx;
    ck_assert_int_eq(tg_idx_parse(gz.data, gz.len, &idx), 0);
    ck_assert_uint_eq(idx.size, 500000);
    ck_assert_mem_eq(idx.data, raw.data + 16, 500000);
    tg_idx_free(&idx);
    /* Two gzip members one after the other decompress to their concatenation. */
    bytes a = gzip_bytes(raw.data, 1000), b = gzip_bytes(raw.data + 1000, raw.len - 1000);
    bytes both = {malloc(a.len + b.len), a.len + b.len};
    memcpy(both.data, a.data, a.len);
    memcpy(both.data + a.len, b.data, b.len);
    ck_assert_int_eq(tg_idx_parse(both.data, both.len, &idx), 0);
    ck_assert_mem_eq(idx.data, raw.data + 16, 500000);
    tg_idx_free(&idx);
    bytes_free(&a);
    bytes_free(&b);
    bytes_free(&both);
    bytes_free(&raw);
    bytes_free(&gz);
}
END_TEST

/* ---- IDX: malformed files -------------------------------------------------------------------- */

START_TEST(idx_wrong_magic)
{
    bytes b = make_idx(0x08, 3, dims234, 24, NULL);
    b.data[1] = 0x01;
    expect_parse_error(&b, TG_ERR_FORMAT, "not an IDX file", "two zero bytes");
    bytes_free(&b);
    bytes text = {(uint8_t *)strdup("hello world"), 11};
    expect_parse_error(&text, TG_ERR_FORMAT, "not an IDX file", NULL);
    bytes_free(&text);
}
END_TEST

START_TEST(idx_wrong_type_code)
{
    bytes b = make_idx(0x0D, 3, dims234, 24 * 4, NULL);
    expect_parse_error(&b, TG_ERR_FORMAT, "type code 0x0d (float) is not supported", "0x08");
    bytes_free(&b);
    b = make_idx(0x42, 3, dims234, 24, NULL);
    expect_parse_error(&b, TG_ERR_FORMAT, "unknown IDX type code 0x42", NULL);
    bytes_free(&b);
}
END_TEST

START_TEST(idx_truncated_and_trailing)
{
    bytes b = make_idx(0x08, 3, dims234, 24, NULL);
    b.len--;
    expect_parse_error(&b, TG_ERR_FORMAT, "expected 40 bytes", "got 39: the file is truncated");
    b.len = 10; /* inside the dimensions */
    expect_parse_error(&b, TG_ERR_FORMAT, "truncated IDX header", NULL);
    b.len = 0;
    expect_parse_error(&b, TG_ERR_FORMAT, "truncated IDX header", NULL);
    bytes_free(&b);
    b = make_idx(0x08, 3, dims234, 25, NULL);
    expect_parse_error(&b, TG_ERR_FORMAT, "expected 40 bytes", "got 41: trailing bytes");
    bytes_free(&b);
}
END_TEST

START_TEST(idx_dims_overflow)
{
    const uint32_t huge[] = {0xFFFFFFFF, 0xFFFFFFFF, 0xFFFFFFFF, 0xFFFFFFFF};
    bytes b = make_idx(0x08, 4, huge, 0, NULL);
    expect_parse_error(&b, TG_ERR_FORMAT, "overflows", "4294967295");
    bytes_free(&b);
    /* 2^32 * 2^31 = 2^63: one past what int64 offsets allow. */
    const uint32_t edge[] = {0x80000000u, 0xFFFFFFFF, 2};
    b = make_idx(0x08, 3, edge, 0, NULL);
    expect_parse_error(&b, TG_ERR_FORMAT, "overflows", NULL);
    bytes_free(&b);
    /* Large but representable: reported as a length mismatch, not allocated. */
    const uint32_t big[] = {0xFFFFFFFF, 0xFFFF};
    b = make_idx(0x08, 2, big, 0, NULL);
    expect_parse_error(&b, TG_ERR_FORMAT, "the file is truncated", NULL);
    bytes_free(&b);
}
END_TEST

START_TEST(idx_zero_and_too_many_dims)
{
    bytes b = make_idx(0x08, 0, NULL, 4, NULL);
    expect_parse_error(&b, TG_ERR_FORMAT, "has 0 dimensions", "1 to 8");
    bytes_free(&b);
    const uint32_t nine[] = {1, 1, 1, 1, 1, 1, 1, 1, 1};
    b = make_idx(0x08, 9, nine, 1, NULL);
    expect_parse_error(&b, TG_ERR_FORMAT, "has 9 dimensions", NULL);
    bytes_free(&b);
    const uint32_t zero[] = {3, 0, 2};
    b = make_idx(0x08, 3, zero, 0, NULL);
    expect_parse_error(&b, TG_ERR_FORMAT, "dimension 1 is 0", NULL);
    bytes_free(&b);
}
END_TEST

START_TEST(idx_gzip_corrupt)
{
    bytes raw = make_idx(0x08, 3, dims234, 24, NULL);
    bytes gz = gzip_bytes(raw.data, raw.len);
    /* The CRC-32 in the gzip trailer no longer matches. */
    gz.data[gz.len - 8] ^= 0xFF;
    expect_parse_error(&gz, TG_ERR_FORMAT, "corrupt gzip data", "incorrect data check");
    gz.data[gz.len - 8] ^= 0xFF;
    /* An unknown compression method in the gzip header. */
    gz.data[2] = 9;
    expect_parse_error(&gz, TG_ERR_FORMAT, "corrupt gzip data", NULL);
    bytes_free(&gz);
    bytes_free(&raw);
}
END_TEST

START_TEST(idx_gzip_truncated_and_trailing)
{
    bytes raw = make_idx(0x08, 3, dims234, 24, NULL);
    bytes gz = gzip_bytes(raw.data, raw.len);
    size_t full = gz.len;
    gz.len = full - 5;
    expect_parse_error(&gz, TG_ERR_FORMAT, "gzip stream is truncated", NULL);
    gz.len = 2; /* the magic alone */
    expect_parse_error(&gz, TG_ERR_FORMAT, "truncated", NULL);
    gz.len = full;
    uint8_t *longer = realloc(gz.data, full + 3);
    ck_assert_ptr_nonnull(longer);
    gz.data = longer;
    memcpy(gz.data + full, "xyz", 3);
    gz.len = full + 3;
    expect_parse_error(&gz, TG_ERR_FORMAT, "3 bytes of garbage after the gzip stream", NULL);
    bytes_free(&gz);
    /* Well-formed gzip whose content is one byte longer, or shorter, than its IDX header says. */
    bytes more = make_idx(0x08, 3, dims234, 25, NULL);
    gz = gzip_bytes(more.data, more.len);
    expect_parse_error(&gz, TG_ERR_FORMAT, "more than the 40 bytes", "trailing bytes");
    bytes_free(&gz);
    gz = gzip_bytes(more.data, 39);
    expect_parse_error(&gz, TG_ERR_FORMAT, "got 39", "after gunzip");
    bytes_free(&gz);
    bytes_free(&more);
    bytes_free(&raw);
}
END_TEST

START_TEST(idx_null_and_missing_file)
{
    tg_idx idx;
    uint8_t byte = 0;
    ck_assert_int_eq(tg_idx_parse(NULL, 4, &idx), TG_ERR_NULL);
    ck_assert_int_eq(tg_idx_parse(&byte, 1, NULL), TG_ERR_NULL);
    ck_assert_int_eq(tg_idx_load(NULL, &idx), TG_ERR_NULL);
    ck_assert_int_eq(tg_idx_load("/nonexistent/dir/file-idx1-ubyte", &idx), TG_ERR_IO);
    ck_assert_ptr_nonnull(strstr(tg_last_error(), "/nonexistent/dir/file-idx1-ubyte"));
    ck_assert_int_eq(tg_idx_load("/", &idx), TG_ERR_IO);
    ck_assert_ptr_nonnull(strstr(tg_last_error(), "not a regular file"));
}
END_TEST

START_TEST(idx_load_names_the_file)
{
    make_tmpdir();
    bytes b = make_idx(0x08, 3, dims234, 23, NULL);
    const char *path = write_file("short-idx3-ubyte", b.data, b.len);
    char copy[600];
    snprintf(copy, sizeof copy, "%s", path);
    tg_idx idx;
    ck_assert_int_eq(tg_idx_load(copy, &idx), TG_ERR_FORMAT);
    ck_assert_ptr_nonnull(strstr(tg_last_error(), copy));
    bytes_free(&b);
    remove_tmpdir();
}
END_TEST

/* ---- MNIST ----------------------------------------------------------------------------------- */

/* A fake MNIST split: n images of 28 x 28 whose pixels are (example + k) % 256, and labels. */
static void write_fake_mnist(const char *split, int n, const uint8_t *labels, bool gz_images,
                             bool gz_labels, int rows)
{
    uint32_t idims[] = {(uint32_t)n, (uint32_t)rows, 28};
    size_t pixels = (size_t)n * (size_t)rows * 28;
    uint8_t *px = malloc(pixels);
    for (size_t i = 0; i < pixels; i++)
        px[i] = (uint8_t)(i / ((size_t)rows * 28) + i % 7);
    bytes images = make_idx(0x08, 3, idims, pixels, px);
    uint32_t ldims[] = {(uint32_t)n};
    bytes lab = make_idx(0x08, 1, ldims, (size_t)n, labels);
    char name[128];
    if (gz_images) {
        bytes z = gzip_bytes(images.data, images.len);
        snprintf(name, sizeof name, "%s-images-idx3-ubyte.gz", split);
        write_file(name, z.data, z.len);
        bytes_free(&z);
    } else {
        snprintf(name, sizeof name, "%s-images-idx3-ubyte", split);
        write_file(name, images.data, images.len);
    }
    if (gz_labels) {
        bytes z = gzip_bytes(lab.data, lab.len);
        snprintf(name, sizeof name, "%s-labels-idx1-ubyte.gz", split);
        write_file(name, z.data, z.len);
        bytes_free(&z);
    } else {
        snprintf(name, sizeof name, "%s-labels-idx1-ubyte", split);
        write_file(name, lab.data, lab.len);
    }
    free(px);
    bytes_free(&images);
    bytes_free(&lab);
}

static const uint8_t five_labels[] = {3, 0, 9, 1, 4};

START_TEST(idx_mnist_load_fake)
{
    make_tmpdir();
    write_fake_mnist("train", 5, five_labels, false, true, 28);
    write_fake_mnist("t10k", 5, five_labels, true, false, 28);
    tg_mnist m;
    ck_assert_int_eq(tg_mnist_load(tmpdir, "train", &m), 0);
    ck_assert_int_eq(m.count, 5);
    ck_assert_int_eq(m.rows, 28);
    ck_assert_int_eq(m.cols, 28);
    ck_assert_mem_eq(m.labels, five_labels, 5);
    ck_assert_uint_eq(m.images[2 * 784 + 3], (uint8_t)(2 + 3 % 7));
    tg_mnist_free(&m);
    tg_mnist_free(&m);
    tg_mnist_free(NULL);
    ck_assert_int_eq(tg_mnist_load(tmpdir, "t10k", &m), 0);
    ck_assert_int_eq(m.count, 5);
    tg_mnist_free(&m);
    remove_tmpdir();
}
END_TEST

START_TEST(idx_mnist_gather)
{
    make_tmpdir();
    write_fake_mnist("train", 5, five_labels, false, false, 28);
    tg_mnist m;
    ck_assert_int_eq(tg_mnist_load(tmpdir, "train", &m), 0);
    const int64_t pick[] = {4, 0, 4};
    float images[3 * 784], labels[3];
    ck_assert_int_eq(tg_mnist_gather(&m, pick, 3, 0.5f, 0.25f, images, labels), 0);
    for (int i = 0; i < 3; i++) {
        ck_assert_float_eq(labels[i], (float)five_labels[pick[i]]);
        for (int k = 0; k < 784; k++) {
            float want = ((float)m.images[pick[i] * 784 + k] / 255.0f - 0.5f) / 0.25f;
            ck_assert_float_eq_tol(images[i * 784 + k], want, 1e-6f);
        }
    }
    /* Bad arguments leave the buffers alone. */
    float before[3 * 784];
    memcpy(before, images, sizeof before);
    const int64_t bad[] = {1, 5};
    ck_assert_int_eq(tg_mnist_gather(&m, bad, 2, 0.5f, 0.25f, images, labels), TG_ERR_ARG);
    ck_assert_ptr_nonnull(strstr(tg_last_error(), "index 5"));
    ck_assert_int_eq(tg_mnist_gather(&m, pick, 2, 0.5f, 0.0f, images, labels), TG_ERR_ARG);
    ck_assert_int_eq(tg_mnist_gather(NULL, pick, 2, 0.5f, 1.0f, images, labels), TG_ERR_NULL);
    ck_assert_int_eq(tg_mnist_gather(&m, NULL, 2, 0.5f, 1.0f, images, labels), TG_ERR_NULL);
    ck_assert_mem_eq(images, before, sizeof before);
    /* Labels only. */
    ck_assert_int_eq(tg_mnist_gather(&m, pick, 3, 0.0f, 1.0f, NULL, labels), 0);
    tg_mnist_free(&m);
    remove_tmpdir();
}
END_TEST

static void expect_mnist_error(const char *split, tg_status code, const char *needle1,
                               const char *needle2)
{
    tg_mnist m;
    memset(&m, 0x5A, sizeof m);
    tg_mnist before = m;
    ck_assert_int_eq(tg_mnist_load(tmpdir, split, &m), code);
    const char *msg = tg_last_error();
    ck_assert_msg(strstr(msg, needle1), "message \"%s\" lacks \"%s\"", msg, needle1);
    if (needle2)
        ck_assert_msg(strstr(msg, needle2), "message \"%s\" lacks \"%s\"", msg, needle2);
    ck_assert_mem_eq(&m, &before, sizeof m);
}

START_TEST(idx_mnist_errors)
{
    make_tmpdir();
    expect_mnist_error("train", TG_ERR_IO, "train-images-idx3-ubyte", "fetch_mnist");
    expect_mnist_error("valid", TG_ERR_ARG, "\"train\" or \"t10k\"", NULL);
    /* Counts that disagree. */
    write_fake_mnist("train", 5, five_labels, false, false, 28);
    uint32_t four[] = {4};
    bytes lab = make_idx(0x08, 1, four, 4, five_labels);
    write_file("train-labels-idx1-ubyte", lab.data, lab.len);
    bytes_free(&lab);
    expect_mnist_error("train", TG_ERR_FORMAT, "has 5 images but", "has 4 labels");
    /* A label outside 0..9. */
    const uint8_t bad_labels[] = {1, 2, 3, 12, 4};
    write_fake_mnist("train", 5, bad_labels, false, false, 28);
    expect_mnist_error("train", TG_ERR_FORMAT, "train-labels-idx1-ubyte: label 12 at index 3",
                       NULL);
    /* Images that are not 28 x 28. */
    write_fake_mnist("t10k", 5, five_labels, false, false, 27);
    expect_mnist_error("t10k", TG_ERR_FORMAT, "t10k-images-idx3-ubyte: MNIST images must be N x "
                       "28 x 28, got [5, 27, 28]", NULL);
    /* A corrupt gz labels file is named. */
    write_fake_mnist("t10k", 5, five_labels, false, false, 28);
    char path[600];
    snprintf(path, sizeof path, "%s/t10k-labels-idx1-ubyte", tmpdir);
    unlink(path);
    const uint8_t junk[] = {0x1f, 0x8b, 0x08, 0x00, 0x01, 0x02};
    write_file("t10k-labels-idx1-ubyte.gz", junk, sizeof junk);
    expect_mnist_error("t10k", TG_ERR_FORMAT, "t10k-labels-idx1-ubyte.gz", NULL);
    ck_assert_int_eq(tg_mnist_load(NULL, "train", NULL), TG_ERR_NULL);
    remove_tmpdir();
}
END_TEST

START_TEST(idx_mnist_real_if_present)
{
    const char *dir = getenv("TG_MNIST_DIR");
    char probe[1024];
    snprintf(probe, sizeof probe, "%s/train-labels-idx1-ubyte", dir ? dir : "");
    if (!dir || access(probe, R_OK) != 0) {
        printf("idx_mnist_real_if_present: skipped (no MNIST at %s; run scripts/fetch_mnist.sh)\n",
               dir ? dir : "TG_MNIST_DIR unset");
        return;
    }
    tg_mnist m;
    ck_assert_msg(tg_mnist_load(dir, "train", &m) == 0, "%s", tg_last_error());
    ck_assert_int_eq(m.count, 60000);
    ck_assert_int_eq(m.labels[0], 5); /* the well-known first training digit */
    int64_t histogram[10] = {0};
    for (int64_t i = 0; i < m.count; i++)
        histogram[m.labels[i]]++;
    for (int c = 0; c < 10; c++)
        ck_assert_int_gt(histogram[c], 5000);
    tg_mnist_free(&m);
    ck_assert_msg(tg_mnist_load(dir, "t10k", &m) == 0, "%s", tg_last_error());
    ck_assert_int_eq(m.count, 10000);
    ck_assert_int_eq(m.labels[0], 7);
    tg_mnist_free(&m);
}
END_TEST

int main(void)
{
    Suite *s = suite_create("idx");
    TCase *tc = tcase_create("idx");
    tcase_add_test(tc, idx_raw_from_memory_and_file);
    tcase_add_test(tc, idx_gzip_detected_by_magic_not_name);
    tcase_add_test(tc, idx_gzip_large_and_multi_member);
    tcase_add_test(tc, idx_wrong_magic);
    tcase_add_test(tc, idx_wrong_type_code);
    tcase_add_test(tc, idx_truncated_and_trailing);
    tcase_add_test(tc, idx_dims_overflow);
    tcase_add_test(tc, idx_zero_and_too_many_dims);
    tcase_add_test(tc, idx_gzip_corrupt);
    tcase_add_test(tc, idx_gzip_truncated_and_trailing);
    tcase_add_test(tc, idx_null_and_missing_file);
    tcase_add_test(tc, idx_load_names_the_file);
    suite_add_tcase(s, tc);
    TCase *mn = tcase_create("mnist");
    tcase_add_test(mn, idx_mnist_load_fake);
    tcase_add_test(mn, idx_mnist_gather);
    tcase_add_test(mn, idx_mnist_errors);
    tcase_add_test(mn, idx_mnist_real_if_present);
    suite_add_tcase(s, mn);
    return tg_run_suite(s);
}
