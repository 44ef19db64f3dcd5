/* Checkpoints: bit-exact round trips, the safetensors layout on disk, every kind of damaged or
 * foreign file, all-or-nothing loading into caller buffers, and the strictness of the JSON
 * header reading (jansson, as the loader configures it). */
#include "testing.h"
#include "scratch.h"

#include "tapegrad_io.h"

#include <dirent.h>
#include <jansson.h>
#include <math.h>
#include <stdio.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

/* ---- helpers --------------------------------------------------------------------------------- */

static char tmpdir[256];
static char ckpt_path[512];

static void setup(void)
{
    scratch_make(tmpdir, sizeof tmpdir, "tg_ckpt");
    snprintf(ckpt_path, sizeof ckpt_path, "%s/model.safetensors", tmpdir);
}

static int count_files(void) { return scratch_count(tmpdir, NULL); }

static void teardown(void) { scratch_remove(tmpdir); }

static uint8_t *read_all(const char *path, size_t *len)
{
    FILE *f = fopen(path, "rb");
    ck_assert_ptr_nonnull(f);
    fseek(f, 0, SEEK_END);
    *len = (size_t)ftell(f);
    fseek(f, 0, SEEK_SET);
    uint8_t *buf = malloc(*len + 1);
    ck_assert_uint_eq(fread(buf, 1, *len, f), *len);
    fclose(f);
    return buf;
}

static void write_all(const char *path, const void *buf, size_t len)
{
    FILE *f = fopen(path, "wb");
    ck_assert_ptr_nonnull(f);
    ck_assert_uint_eq(fwrite(buf, 1, len, f), len);
    fclose(f);
}

/* A file in the safetensors layout with a hand-written header and data_len bytes of data. */
static void write_raw(const char *header, size_t data_len)
{
    size_t n = strlen(header), len = 8 + n + data_len;
    uint8_t *buf = calloc(1, len);
    for (int i = 0; i < 8; i++)
        buf[i] = (uint8_t)((uint64_t)n >> (8 * i));
    memcpy(buf + 8, header, n);
    for (size_t i = 0; i < data_len; i++)
        buf[8 + n + i] = (uint8_t)i;
    write_all(ckpt_path, buf, len);
    free(buf);
}

static void expect_open_error(tg_status code, const char *needle1, const char *needle2)
{
    tg_checkpoint *c = (tg_checkpoint *)(uintptr_t)0x1234;
    int rc = tg_checkpoint_open(ckpt_path, &c);
    ck_assert_msg(rc == (int)code, "expected %d, got %d (%s)", code, rc, tg_last_error());
    ck_assert_ptr_eq(c, (tg_checkpoint *)(uintptr_t)0x1234);
    const char *msg = tg_last_error();
    ck_assert_msg(strstr(msg, needle1), "message \"%s\" lacks \"%s\"", msg, needle1);
    if (needle2)
        ck_assert_msg(strstr(msg, needle2), "message \"%s\" lacks \"%s\"", msg, needle2);
}

/* Three tensors of both dtypes, with values a text round trip would spoil. */
static float w1[3][4];
static double w2[2][2][2];
static double scale; /* shape [] */
static float empty_buf[1];

static void fill_values(void)
{
    for (int i = 0; i < 12; i++)
        w1[i / 4][i % 4] = (float)i * 0.1f - 0.35f;
    uint32_t nan_bits = 0x7FC01234u; /* a NaN with a payload */
    memcpy(&w1[0][0], &nan_bits, 4);
    w1[0][1] = -0.0f;
    w1[0][2] = 1e-45f; /* denormal */
    w1[0][3] = INFINITY;
    for (int i = 0; i < 8; i++)
        w2[i / 4][i / 2 % 2][i % 2] = 1.0 / 3.0 * (i - 4);
    scale = 3.141592653589793;
}

static void model_entries(tg_ckpt_entry e[4], void *d1, void *d2, void *d3)
{
    memset(e, 0, 4 * sizeof *e);
    e[0] = (tg_ckpt_entry){"layer1.weight", TG_F32, 2, {3, 4}, d1};
    e[1] = (tg_ckpt_entry){"layer2.weight", TG_F64, 3, {2, 2, 2}, d2};
    e[2] = (tg_ckpt_entry){"scale", TG_F64, 0, {0}, d3};
    e[3] = (tg_ckpt_entry){"empty", TG_F32, 2, {0, 5}, empty_buf};
}

static const char *meta_keys[] = {"model", "note"};
static const char *meta_values[] = {"mlp-784-100-10", "quote \" backslash \\ newline \n é ✓"};

static void save_model(void)
{
    fill_values();
    tg_ckpt_entry e[4];
    model_entries(e, w1, w2, &scale);
    int rc = tg_checkpoint_save(ckpt_path, e, 4, meta_keys, meta_values, 2);
    ck_assert_msg(rc == 0, "%s", tg_last_error());
}

/* ---- round trips ----------------------------------------------------------------------------- */

START_TEST(checkpoint_roundtrip_bit_exact)
{
    save_model();
    float r1[3][4];
    double r2[2][2][2], rs;
    tg_ckpt_entry e[4];
    model_entries(e, r1, r2, &rs);
    ck_assert_int_eq(tg_checkpoint_load(ckpt_path, e, 4), 0);
    ck_assert_mem_eq(r1, w1, sizeof w1);
    ck_assert_mem_eq(r2, w2, sizeof w2);
    ck_assert_mem_eq(&rs, &scale, sizeof rs);
    /* Loading a subset, in another order, is fine. */
    ck_assert_int_eq(tg_checkpoint_load(ckpt_path, e + 1, 2), 0);

    tg_checkpoint *c;
    ck_assert_int_eq(tg_checkpoint_open(ckpt_path, &c), 0);
    ck_assert_int_eq(tg_checkpoint_count(c), 4);
    ck_assert_str_eq(tg_checkpoint_meta(c, "model"), "mlp-784-100-10");
    ck_assert_str_eq(tg_checkpoint_meta(c, "note"), meta_values[1]);
    ck_assert_ptr_nonnull(tg_checkpoint_meta(c, TG_CKPT_CRC_KEY));
    ck_assert_ptr_null(tg_checkpoint_meta(c, "absent"));
    ck_assert_int_eq(tg_checkpoint_meta_count(c), 3);
    const char *k, *v;
    ck_assert_int_eq(tg_checkpoint_meta_at(c, 0, &k, &v), 0);
    ck_assert_str_eq(k, "model");
    ck_assert_int_eq(tg_checkpoint_meta_at(c, 3, &k, &v), TG_ERR_ARG);
    ck_assert_int_eq(tg_checkpoint_find(c, "layer2.weight"), 1);
    ck_assert_int_eq(tg_checkpoint_find(c, "nope"), -1);
    tg_ckpt_entry t;
    ck_assert_int_eq(tg_checkpoint_tensor(c, 1, &t), 0);
    ck_assert_str_eq(t.name, "layer2.weight");
    ck_assert_int_eq(t.dtype, TG_F64);
    ck_assert_int_eq(t.ndim, 3);
    ck_assert_int_eq(t.shape[2], 2);
    ck_assert_uint_eq((uintptr_t)t.data % 8, 0);
    ck_assert_mem_eq(t.data, w2, sizeof w2);
    ck_assert_int_eq(tg_checkpoint_tensor(c, 2, &t), 0);
    ck_assert_int_eq(t.ndim, 0);
    ck_assert_int_eq(tg_checkpoint_tensor(c, 4, &t), TG_ERR_ARG);
    tg_checkpoint_free(c);
    tg_checkpoint_free(NULL);
    /* No temporary file is left behind. */
    ck_assert_int_eq(count_files(), 1);
}
END_TEST

/* The bytes on disk are what safetensors expects: u64 LE header length, a JSON object padded
 * with spaces to 8-byte alignment, then the tensors back to back in little-endian order. */
START_TEST(checkpoint_file_layout)
{
    save_model();
    size_t len;
    uint8_t *buf = read_all(ckpt_path, &len);
    uint64_t n = 0;
    for (int i = 7; i >= 0; i--)
        n = n << 8 | buf[i];
    ck_assert_uint_eq((8 + n) % 8, 0);
    ck_assert_uint_eq(len, 8 + n + sizeof w1 + sizeof w2 + sizeof scale);
    ck_assert_int_eq(buf[8], '{');
    char *header = strndup((char *)buf + 8, n);
    ck_assert_ptr_nonnull(strstr(header, "\"layer1.weight\":{\"dtype\":\"F32\",\"shape\":[3,4],"
                                         "\"data_offsets\":[0,48]}"));
    ck_assert_ptr_nonnull(strstr(header, "\"layer2.weight\":{\"dtype\":\"F64\",\"shape\":[2,2,2],"
                                         "\"data_offsets\":[48,112]}"));
    ck_assert_ptr_nonnull(strstr(header, "\"scale\":{\"dtype\":\"F64\",\"shape\":[],"
                                         "\"data_offsets\":[112,120]}"));
    ck_assert_ptr_nonnull(strstr(header, "\"empty\":{\"dtype\":\"F32\",\"shape\":[0,5],"
                                         "\"data_offsets\":[120,120]}"));
    ck_assert_ptr_nonnull(strstr(header, "\"__metadata__\":{\"model\":\"mlp-784-100-10\""));
    ck_assert_ptr_nonnull(strstr(header, "\\\"")); /* the escaped quote in the note */
    ck_assert_mem_eq(buf + 8 + n, w1, sizeof w1);
    /* The header parses as strict JSON, members in the order written. */
    json_error_t err;
    json_t *root = json_loadb(header, n, JSON_REJECT_DUPLICATES, &err);
    ck_assert_msg(root != NULL, "%s", err.text);
    ck_assert(json_is_object(root));
    const char *first = json_object_iter_key(json_object_iter(root));
    ck_assert_str_eq(first, "layer1.weight");
    json_decref(root);
    free(header);
    free(buf);
}
END_TEST

START_TEST(checkpoint_parse_from_memory)
{
    save_model();
    size_t len;
    uint8_t *buf = read_all(ckpt_path, &len);
    tg_checkpoint *c;
    /* An odd offset in memory must not matter. */
    uint8_t *shifted = malloc(len + 1);
    memcpy(shifted + 1, buf, len);
    ck_assert_int_eq(tg_checkpoint_parse(shifted + 1, len, &c), 0);
    float r1[3][4];
    double r2[2][2][2], rs;
    tg_ckpt_entry e[4];
    model_entries(e, r1, r2, &rs);
    ck_assert_int_eq(tg_checkpoint_read(c, e, 4), 0);
    ck_assert_mem_eq(r1, w1, sizeof w1);
    tg_checkpoint_free(c);
    free(shifted);
    free(buf);
}
END_TEST

START_TEST(checkpoint_foreign_file_without_checksum)
{
    /* As another writer might produce it: no metadata, padding, tensors out of offset order. */
    write_raw("{\"b\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[8,16]},"
              "\"a\":{\"dtype\":\"F64\",\"shape\":[1],\"data_offsets\":[0,8]}}    ",
              16);
    float b[2];
    double a;
    tg_ckpt_entry e[2] = {{"a", TG_F64, 1, {1}, &a}, {"b", TG_F32, 1, {2}, b}};
    ck_assert_msg(tg_checkpoint_load(ckpt_path, e, 2) == 0, "%s", tg_last_error());
    uint8_t want[8] = {8, 9, 10, 11, 12, 13, 14, 15};
    ck_assert_mem_eq(b, want, 8);
    /* A header of metadata only. */
    write_raw("{\"__metadata__\":{\"k\":\"v\"}}", 0);
    tg_checkpoint *c;
    ck_assert_int_eq(tg_checkpoint_open(ckpt_path, &c), 0);
    ck_assert_int_eq(tg_checkpoint_count(c), 0);
    ck_assert_str_eq(tg_checkpoint_meta(c, "k"), "v");
    tg_checkpoint_free(c);
}
END_TEST

/* ---- damaged files --------------------------------------------------------------------------- */

START_TEST(checkpoint_flipped_data_byte)
{
    save_model();
    size_t len;
    uint8_t *buf = read_all(ckpt_path, &len);
    buf[len - 3] ^= 0x10;
    write_all(ckpt_path, buf, len);
    expect_open_error(TG_ERR_FORMAT, ckpt_path, "checksum mismatch");
    float r1[3][4];
    double r2[2][2][2], rs;
    tg_ckpt_entry e[4];
    model_entries(e, r1, r2, &rs);
    memset(r1, 0x11, sizeof r1);
    ck_assert_int_eq(tg_checkpoint_load(ckpt_path, e, 4), TG_ERR_FORMAT);
    uint8_t pattern[sizeof r1];
    memset(pattern, 0x11, sizeof pattern);
    ck_assert_mem_eq(r1, pattern, sizeof r1);
    free(buf);
}
END_TEST

START_TEST(checkpoint_every_truncation_fails)
{
    save_model();
    size_t len;
    uint8_t *buf = read_all(ckpt_path, &len);
    for (size_t cut = 0; cut < len; cut++) {
        tg_checkpoint *c = NULL;
        int rc = tg_checkpoint_parse(buf, cut, &c);
        ck_assert_msg(rc == TG_ERR_FORMAT, "a file cut to %zu of %zu bytes gave %d", cut, len, rc);
        ck_assert_ptr_null(c);
    }
    write_all(ckpt_path, buf, len - 1);
    expect_open_error(TG_ERR_FORMAT, ckpt_path, NULL);
    write_all(ckpt_path, buf, 5);
    expect_open_error(TG_ERR_FORMAT, "too short", NULL);
    free(buf);
}
END_TEST

START_TEST(checkpoint_header_length_past_end)
{
    save_model();
    size_t len;
    uint8_t *buf = read_all(ckpt_path, &len);
    buf[0] = 0xFF, buf[1] = 0xFF, buf[2] = 0x7F;
    write_all(ckpt_path, buf, len);
    expect_open_error(TG_ERR_FORMAT, "header length", "larger than the rest of the file");
    memset(buf, 0xFF, 8);
    write_all(ckpt_path, buf, len);
    expect_open_error(TG_ERR_FORMAT, "larger than the rest of the file", NULL);
    memset(buf, 0, 8);
    write_all(ckpt_path, buf, len);
    expect_open_error(TG_ERR_FORMAT, "not plausible", NULL);
    free(buf);
}
END_TEST

START_TEST(checkpoint_bad_json)
{
    const struct {
        const char *header;
        const char *needle;
    } cases[] = {
        {"{\"a\":", "invalid JSON at byte"},
        {"{\"a\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,4]},}", "invalid JSON"},
        {"[1,2]", "not a JSON object"},
        {"{\"a\":{\"dtype\":\"F32\",\"shape\":[1.0],\"data_offsets\":[0,4]}}",
         "not a non-negative integer"},
        {"{\"a\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,4.0]}}", "[begin, end]"},
        {"{\"a\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,4]}} x",
         "end of file expected"},
        {"{\"a\" {}}", "':' expected"},
        {"\x01{}", "'[' or '{' expected near '?'"}, /* the raw byte is not copied */
        {"{\"a\\x\":{}}", "invalid escape"},
        {"{\"\xc3\x28\":{}}", "unable to decode byte 0xc3"},
        {"{\"a\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,4]},"
         "\"a\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[4,8]}}",
         "duplicate object key near '\"a\"'"},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        write_raw(cases[i].header, 8);
        expect_open_error(TG_ERR_FORMAT, cases[i].needle, ckpt_path);
    }
}
END_TEST

START_TEST(checkpoint_bad_layout)
{
    const struct {
        const char *header;
        size_t data;
        const char *needle;
    } cases[] = {
        {"{\"a\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8]},"
         "\"b\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[4,12]}}", 12, "overlap"},
        {"{\"a\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,4]},"
         "\"b\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[8,12]}}", 12, "gap of 4 bytes"},
        {"{\"a\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[4,8]}}", 8, "gap"},
        {"{\"a\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,4]}}", 8, "trailing bytes"},
        {"{\"a\":{\"dtype\":\"F32\",\"shape\":[3],\"data_offsets\":[0,12]}}", 8, "outside"},
        {"{\"a\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[4,0]}}", 8, "outside"},
        {"{\"a\":{\"dtype\":\"F32\",\"shape\":[3],\"data_offsets\":[0,8]}}", 8, "does not take"},
        {"{\"a\":{\"dtype\":\"F64\",\"shape\":[4611686018427387904,4],\"data_offsets\":[0,8]}}", 8,
         "does not take"},
        {"{\"a\":{\"dtype\":\"BF16\",\"shape\":[4],\"data_offsets\":[0,8]}}", 8, "\"BF16\""},
        {"{\"a\":{\"dtype\":\"F32\",\"shape\":[-2],\"data_offsets\":[0,8]}}", 8, "non-negative"},
        {"{\"a\":{\"dtype\":\"F32\",\"shape\":[1,1,1,1,1,1,1,1,2],\"data_offsets\":[0,8]}}", 8,
         "at most 8"},
        {"{\"a\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8],\"x\":1}}", 8,
         "exactly the keys"},
        {"{\"a\":{\"dtype\":\"F32\",\"shape\":[2]}}", 8, "exactly the keys"},
        {"{\"a\":[]}", 8, "not an object"},
        {"{\"a\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0]}}", 8, "[begin, end]"},
        {"{\"__metadata__\":{\"k\":1}}", 0, "not a string"},
        {"{\"__metadata__\":[]}", 0, "not an object"},
        {"{}", 8, "no tensors"},
        {"{\"__metadata__\":{\"tapegrad.crc32\":\"00000000\"},"
         "\"a\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8]}}", 8, "checksum"},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        write_raw(cases[i].header, cases[i].data);
        expect_open_error(TG_ERR_FORMAT, cases[i].needle, NULL);
    }
}
END_TEST

/* ---- loading into a model -------------------------------------------------------------------- */

START_TEST(checkpoint_another_model_leaves_buffers)
{
    save_model();
    float r1[3][4];
    double r2[2][2][2], rs;
    float other[4][3];
    memset(r1, 0x22, sizeof r1);
    memset(r2, 0x22, sizeof r2);
    memset(other, 0x22, sizeof other);
    uint8_t pattern[sizeof r2];
    memset(pattern, 0x22, sizeof pattern);

    /* The shape differs: the message names the tensor and both shapes. */
    tg_ckpt_entry e[3] = {{"layer2.weight", TG_F64, 3, {2, 2, 2}, r2},
                          {"layer1.weight", TG_F32, 2, {4, 3}, other},
                          {"scale", TG_F64, 0, {0}, &rs}};
    ck_assert_int_eq(tg_checkpoint_load(ckpt_path, e, 3), TG_ERR_SHAPE);
    const char *msg = tg_last_error();
    ck_assert_ptr_nonnull(strstr(msg, "another model"));
    ck_assert_ptr_nonnull(strstr(msg, "\"layer1.weight\" has shape [3, 4] in the checkpoint but "
                                      "[4, 3] here"));
    ck_assert_mem_eq(r2, pattern, sizeof r2);
    ck_assert_mem_eq(other, pattern, sizeof other);

    /* A missing tensor. */
    tg_ckpt_entry m[2] = {{"layer1.weight", TG_F32, 2, {3, 4}, r1},
                          {"layer3.weight", TG_F32, 2, {3, 4}, other}};
    ck_assert_int_eq(tg_checkpoint_load(ckpt_path, m, 2), TG_ERR_SHAPE);
    ck_assert_ptr_nonnull(strstr(tg_last_error(), "no tensor \"layer3.weight\""));
    ck_assert_mem_eq(r1, pattern, sizeof r1);

    /* Another dtype. */
    tg_ckpt_entry d[2] = {{"layer1.weight", TG_F32, 2, {3, 4}, r1},
                          {"layer2.weight", TG_F32, 3, {2, 2, 2}, other}};
    ck_assert_int_eq(tg_checkpoint_load(ckpt_path, d, 2), TG_ERR_DTYPE);
    ck_assert_ptr_nonnull(strstr(tg_last_error(), "is f64 in the checkpoint but f32 here"));
    ck_assert_mem_eq(r1, pattern, sizeof r1);
}
END_TEST

START_TEST(checkpoint_null_arguments)
{
    save_model();
    tg_checkpoint *c;
    tg_ckpt_entry e[1] = {{"scale", TG_F64, 0, {0}, NULL}};
    ck_assert_int_eq(tg_checkpoint_save(NULL, e, 1, NULL, NULL, 0), TG_ERR_NULL);
    ck_assert_int_eq(tg_checkpoint_save(ckpt_path, NULL, 1, NULL, NULL, 0), TG_ERR_NULL);
    ck_assert_int_eq(tg_checkpoint_save(ckpt_path, e, 1, NULL, NULL, 1), TG_ERR_NULL);
    ck_assert_int_eq(tg_checkpoint_save(ckpt_path, e, 1, NULL, NULL, 0), TG_ERR_NULL); /* data */
    ck_assert_int_eq(tg_checkpoint_load(NULL, e, 1), TG_ERR_NULL);
    ck_assert_int_eq(tg_checkpoint_load(ckpt_path, NULL, 1), TG_ERR_NULL);
    ck_assert_int_eq(tg_checkpoint_load(ckpt_path, e, 1), TG_ERR_NULL); /* no buffer */
    ck_assert_int_eq(tg_checkpoint_parse(NULL, 8, &c), TG_ERR_NULL);
    ck_assert_int_eq(tg_checkpoint_parse("", 0, NULL), TG_ERR_NULL);
    ck_assert_int_eq(tg_checkpoint_open(NULL, &c), TG_ERR_NULL);
    ck_assert_int_eq(tg_checkpoint_open(ckpt_path, NULL), TG_ERR_NULL);
    ck_assert_int_eq(tg_checkpoint_count(NULL), TG_ERR_NULL);
    ck_assert_int_eq(tg_checkpoint_read(NULL, e, 1), TG_ERR_NULL);
    ck_assert_int_eq(tg_checkpoint_tensor(NULL, 0, e), TG_ERR_NULL);
    ck_assert_int_eq(tg_checkpoint_meta_count(NULL), TG_ERR_NULL);
    ck_assert_ptr_null(tg_checkpoint_meta(NULL, "model"));
    ck_assert_int_eq(tg_checkpoint_find(NULL, "x"), -1);
    ck_assert_int_eq(tg_checkpoint_open(ckpt_path, &c), 0);
    tg_ckpt_entry unnamed = {NULL, TG_F64, 0, {0}, &scale};
    ck_assert_int_eq(tg_checkpoint_read(c, &unnamed, 1), TG_ERR_NULL);
    ck_assert_int_eq(tg_checkpoint_meta_at(c, 0, NULL, NULL), TG_ERR_NULL);
    tg_checkpoint_free(c);
    ck_assert_int_eq(tg_checkpoint_open("/nonexistent/model.safetensors", &c), TG_ERR_IO);
    ck_assert_ptr_nonnull(strstr(tg_last_error(), "/nonexistent/model.safetensors"));
}
END_TEST

START_TEST(checkpoint_save_rejects_bad_entries)
{
    double x = 1.0;
    const char *crc_key[] = {TG_CKPT_CRC_KEY}, *crc_value[] = {"0"};
    const char *dup_keys[] = {"a", "a"}, *dup_values[] = {"1", "2"};
    tg_ckpt_entry two[2] = {{"x", TG_F64, 0, {0}, &x}, {"x", TG_F64, 0, {0}, &x}};
    ck_assert_int_eq(tg_checkpoint_save(ckpt_path, two, 2, NULL, NULL, 0), TG_ERR_ARG);
    ck_assert_ptr_nonnull(strstr(tg_last_error(), "two tensors are named \"x\""));
    ck_assert_int_eq(tg_checkpoint_save(ckpt_path, two, 1, crc_key, crc_value, 1), TG_ERR_ARG);
    ck_assert_int_eq(tg_checkpoint_save(ckpt_path, two, 1, dup_keys, dup_values, 2), TG_ERR_ARG);
    tg_ckpt_entry bad[] = {
        {"", TG_F64, 0, {0}, &x},
        {"__metadata__", TG_F64, 0, {0}, &x},
        {"\xff", TG_F64, 0, {0}, &x},
        {"x", (tg_dtype)7, 0, {0}, &x},
        {"x", TG_F64, 9, {0}, &x},
        {"x", TG_F64, 1, {-1}, &x},
        {"x", TG_F64, 2, {INT64_MAX, 4}, &x},
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++)
        ck_assert_int_lt(tg_checkpoint_save(ckpt_path, &bad[i], 1, NULL, NULL, 0), 0);
    ck_assert_int_eq(tg_checkpoint_save(ckpt_path, two, -1, NULL, NULL, 0), TG_ERR_ARG);
    /* Nothing was written. */
    ck_assert_int_eq(count_files(), 0);
    /* A directory that does not exist, and a path naming a directory. */
    ck_assert_int_eq(tg_checkpoint_save("/nonexistent/dir/m.safetensors", two, 1, NULL, NULL, 0),
                     TG_ERR_IO);
    ck_assert_ptr_nonnull(strstr(tg_last_error(), "/nonexistent/dir/m.safetensors"));
    char dir_path[600];
    snprintf(dir_path, sizeof dir_path, "%s/", tmpdir);
    ck_assert_int_eq(tg_checkpoint_save(dir_path, two, 1, NULL, NULL, 0), TG_ERR_ARG);
}
END_TEST

START_TEST(checkpoint_overwrite_and_stale_temps)
{
    save_model();
    /* A temporary file from a writer that died, and one from a live process (pid 1). */
    pid_t child = fork();
    if (child == 0)
        _exit(0);
    waitpid(child, NULL, 0);
    char dead[600], live[600];
    snprintf(dead, sizeof dead, "%s.tmp.%ld.0", ckpt_path, (long)child);
    snprintf(live, sizeof live, "%s.tmp.1.0", ckpt_path);
    write_all(dead, "junk", 4);
    write_all(live, "junk", 4);
    double x = 2.5, y = 0;
    tg_ckpt_entry e = {"x", TG_F64, 0, {0}, &x};
    ck_assert_int_eq(tg_checkpoint_save(ckpt_path, &e, 1, NULL, NULL, 0), 0);
    ck_assert_int_ne(access(dead, F_OK), 0);
    ck_assert_int_eq(access(live, F_OK), 0);
    ck_assert_int_eq(count_files(), 2);
    e.data = &y;
    ck_assert_int_eq(tg_checkpoint_load(ckpt_path, &e, 1), 0);
    ck_assert(y == 2.5);
    /* The old model is gone. */
    float r1[3][4];
    tg_ckpt_entry old = {"layer1.weight", TG_F32, 2, {3, 4}, r1};
    ck_assert_int_eq(tg_checkpoint_load(ckpt_path, &old, 1), TG_ERR_SHAPE);
}
END_TEST

/* ---- the JSON of the header ----------------------------------------------------------------- */
/* The loader hands headers to jansson with JSON_REJECT_DUPLICATES and without JSON_ALLOW_NUL or
 * JSON_DECODE_ANY; these cases pin down what that accepts and refuses. */

/* A checkpoint of data_len zero bytes behind the given header (parsed from memory). */
static int parse_header(const char *header, size_t n, size_t data_len, tg_checkpoint **c)
{
    uint8_t *buf = calloc(1, 8 + n + data_len);
    for (int i = 0; i < 8; i++)
        buf[i] = (uint8_t)((uint64_t)n >> (8 * i));
    memcpy(buf + 8, header, n);
    int rc = tg_checkpoint_parse(buf, 8 + n + data_len, c);
    free(buf);
    return rc;
}

/* A header of metadata only: {"__metadata__":{"k":VALUE}}. */
static int parse_meta_value(const char *value, size_t len, tg_checkpoint **c)
{
    char header[256];
    int n = snprintf(header, sizeof header, "{\"__metadata__\":{\"k\":");
    memcpy(header + n, value, len);
    memcpy(header + n + len, "}}", 2);
    return parse_header(header, (size_t)n + len + 2, 0, c);
}

static void meta_value_bad(const char *value, size_t len, const char *needle)
{
    tg_checkpoint *c = NULL;
    int rc = parse_meta_value(value, len, &c);
    ck_assert_msg(rc == TG_ERR_FORMAT, "%.*s: expected a format error, got %d", (int)len, value,
                  rc);
    ck_assert_ptr_null(c);
    ck_assert_msg(strstr(tg_last_error(), needle), "%.*s: \"%s\" lacks \"%s\"", (int)len, value,
                  tg_last_error(), needle);
}

START_TEST(checkpoint_header_json)
{
    /* Every escape, raw UTF-8, whitespace around the object. */
    tg_checkpoint *c;
    const char *escaped = " {\"__metadata__\": {"
                          "\"s\": \"a\\\"\\\\\\/\\b\\f\\n\\r\\t\\u00e9\\ud83d\\ude00\", "
                          "\"\xe2\x9c\x93\": \"\"}}\r\n";
    ck_assert_msg(parse_header(escaped, strlen(escaped), 0, &c) == 0, "%s", tg_last_error());
    ck_assert_str_eq(tg_checkpoint_meta(c, "s"), "a\"\\/\b\f\n\r\t\xc3\xa9\xf0\x9f\x98\x80");
    ck_assert_str_eq(tg_checkpoint_meta(c, "\xe2\x9c\x93"), "");
    tg_checkpoint_free(c);

    /* Offsets and sizes take the whole int64 range before the layout judges them. */
    const char *big = "{\"a\":{\"dtype\":\"F32\",\"shape\":[9223372036854775807],"
                      "\"data_offsets\":[0,4]}}";
    ck_assert_int_eq(parse_header(big, strlen(big), 4, &c), TG_ERR_FORMAT);
    ck_assert_ptr_nonnull(strstr(tg_last_error(), "does not take"));
    const char *huge = "{\"a\":{\"dtype\":\"F32\",\"shape\":[9223372036854775808],"
                       "\"data_offsets\":[0,4]}}";
    ck_assert_int_eq(parse_header(huge, strlen(huge), 4, &c), TG_ERR_FORMAT);
    ck_assert_ptr_nonnull(strstr(tg_last_error(), "too big integer"));
    const char *negative = "{\"a\":{\"dtype\":\"F32\",\"shape\":[1],"
                           "\"data_offsets\":[-9223372036854775808,4]}}";
    ck_assert_int_eq(parse_header(negative, strlen(negative), 4, &c), TG_ERR_FORMAT);
    ck_assert_ptr_nonnull(strstr(tg_last_error(), "outside the data section"));

    /* Nesting is capped (jansson's limit is 2048 levels). */
    static char deep[2 * 3000 + 64];
    int n = snprintf(deep, sizeof deep, "{\"a\":");
    memset(deep + n, '[', 3000);
    memset(deep + n + 3000, ']', 3000);
    memcpy(deep + n + 6000, "}", 1);
    ck_assert_int_eq(parse_header(deep, (size_t)n + 6001, 0, &c), TG_ERR_FORMAT);
    ck_assert_ptr_nonnull(strstr(tg_last_error(), "maximum parsing depth"));

    /* Strings: escapes, UTF-8 and NUL. */
    meta_value_bad("\"\\u0000\"", 8, "\\u0000 is not allowed");
    meta_value_bad("\"a\0b\"", 5, "control character");
    meta_value_bad("\"a\nb\"", 5, "unexpected newline");
    meta_value_bad("\"\xff\"", 3, "unable to decode byte 0xff");
    meta_value_bad("\"\xc0\x80\"", 4, "unable to decode byte 0xc0");       /* overlong NUL */
    meta_value_bad("\"\xed\xa0\x80\"", 5, "unable to decode byte 0xed");   /* surrogate */
    meta_value_bad("\"\xf4\x90\x80\x80\"", 6, "unable to decode byte 0xf4"); /* > U+10FFFF */
    meta_value_bad("\"\\udc00\"", 8, "invalid Unicode");
    meta_value_bad("\"\\ud800x\"", 9, "invalid Unicode");
    meta_value_bad("\"\\u12\"", 6, "invalid escape");
    meta_value_bad("\"abc", 4, "premature end of input");
    /* Numbers and literals (a metadata value must be a string, but the JSON fails first). */
    meta_value_bad("01", 2, "invalid token");
    meta_value_bad("-", 1, "invalid token");
    meta_value_bad("tru", 3, "invalid token");
    meta_value_bad("1e400", 5, "real number overflow");
    meta_value_bad("NaN", 3, "invalid token");
    meta_value_bad("1", 1, "not a string");
    /* Structure. */
    meta_value_bad("\"v\",\"k\":\"w\"", 11, "duplicate object key");
    meta_value_bad("\"v\" \"j\":\"w\"", 11, "'}' expected");
    ck_assert_int_eq(parse_header("{}x", 3, 0, &c), TG_ERR_FORMAT);
    ck_assert_ptr_nonnull(strstr(tg_last_error(), "end of file expected"));
    ck_assert_int_eq(parse_header("  ", 2, 0, &c), TG_ERR_FORMAT);
    ck_assert_ptr_nonnull(strstr(tg_last_error(), "invalid JSON"));
    ck_assert_int_eq(parse_header("\"x\"", 3, 0, &c), TG_ERR_FORMAT);
    ck_assert_ptr_nonnull(strstr(tg_last_error(), "'[' or '{' expected"));
}
END_TEST

int main(void)
{
    Suite *s = suite_create("checkpoint");
    TCase *tc = tcase_create("checkpoint");
    tcase_add_checked_fixture(tc, setup, teardown);
    tcase_add_test(tc, checkpoint_roundtrip_bit_exact);
    tcase_add_test(tc, checkpoint_file_layout);
    tcase_add_test(tc, checkpoint_parse_from_memory);
    tcase_add_test(tc, checkpoint_foreign_file_without_checksum);
    tcase_add_test(tc, checkpoint_flipped_data_byte);
    tcase_add_test(tc, checkpoint_every_truncation_fails);
    tcase_add_test(tc, checkpoint_header_length_past_end);
    tcase_add_test(tc, checkpoint_bad_json);
    tcase_add_test(tc, checkpoint_bad_layout);
    tcase_add_test(tc, checkpoint_another_model_leaves_buffers);
    tcase_add_test(tc, checkpoint_null_arguments);
    tcase_add_test(tc, checkpoint_save_rejects_bad_entries);
    tcase_add_test(tc, checkpoint_overwrite_and_stale_temps);
    tcase_add_test(tc, checkpoint_header_json);
    suite_add_tcase(s, tc);
    return tg_run_suite(s);
}
