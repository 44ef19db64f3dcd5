/* Checkpoints in the safetensors layout: reading and validating them (tg_checkpoint), copying
 * tensors into caller buffers by name, and the crash-safe writer.
 *
 * Reading never trusts the file: the header length is checked against the file, the JSON is
 * parsed strictly (by jansson, see read_json), each tensor's byte range must match its dtype
 * and shape, and the ranges must tile the data section exactly (no gap, no overlap, nothing
 * left over) as safetensors itself requires. Writing goes through a temporary file that is
 * fsync'ed and renamed over the target, so a crash at any moment leaves either the old file or
 * the new one. */
#include "tapegrad_io.h"

#include "file.h"
#include "internal.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <jansson.h>
#include <limits.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>
#include <zlib.h>

/* safetensors refuses headers past 100 MB; so do we, before allocating for one. */
#define MAX_HEADER 100000000u
#define METADATA_KEY "__metadata__"

typedef struct {
    char *name;
    tg_dtype dtype;
    int ndim;
    int64_t shape[TG_MAX_DIMS];
    size_t begin, end; /* byte range in the data section */
} ckpt_tensor;

struct tg_checkpoint {
    char *source; /* path or "checkpoint", for messages */
    int n_tensors;
    ckpt_tensor *tensors;
    int n_meta;
    char **meta_keys, **meta_values;
    uint8_t *block; /* one allocation; the data section starts at its beginning */
    size_t data_len;
};

static size_t elem_size(tg_dtype dt) { return dt == TG_F64 ? 8 : 4; }
static const char *st_dtype(tg_dtype dt) { return dt == TG_F64 ? "F64" : "F32"; }

static bool host_is_little_endian(void)
{
    const uint16_t one = 1;
    return *(const uint8_t *)&one == 1;
}

/* Files are little-endian; on a big-endian host each element is reversed in place. */
static void swap_elements(uint8_t *p, size_t bytes, size_t elem)
{
    for (size_t i = 0; i + elem <= bytes; i += elem)
        for (size_t a = 0, b = elem - 1; a < b; a++, b--) {
            uint8_t t = p[i + a];
            p[i + a] = p[i + b];
            p[i + b] = t;
        }
}

static uint32_t crc_of(uint32_t crc, const uint8_t *p, size_t n)
{
    while (n > 0) {
        uInt chunk = n > UINT_MAX ? UINT_MAX : (uInt)n;
        crc = (uint32_t)crc32(crc, p, chunk);
        p += chunk;
        n -= chunk;
    }
    return crc;
}

/* numel * elem, or false when it overflows size_t. */
static bool tensor_bytes(int ndim, const int64_t *shape, size_t elem, size_t *out)
{
    size_t bytes = elem;
    for (int i = 0; i < ndim; i++) {
        if (shape[i] < 0)
            return false;
        if (shape[i] != 0 && bytes > SIZE_MAX / (uint64_t)shape[i])
            return false;
        bytes *= (size_t)shape[i];
    }
    *out = bytes;
    return true;
}

void tg_checkpoint_free(tg_checkpoint *c)
{
    if (!c)
        return;
    for (int i = 0; i < c->n_tensors; i++)
        free(c->tensors[i].name);
    for (int i = 0; i < c->n_meta; i++) {
        free(c->meta_keys[i]);
        free(c->meta_values[i]);
    }
    free(c->tensors);
    free(c->meta_keys);
    free(c->meta_values);
    free(c->block);
    free(c->source);
    free(c);
}

/* ---- reading -------------------------------------------------------------------------------- */

static int read_tensor(const char *src, const char *name, const json_t *v, size_t data_len,
                       ckpt_tensor *t)
{
    if (!json_is_object(v))
        return tg_fail(TG_ERR_FORMAT, "%s: tensor \"%s\": its header entry is not an object",
                       src, name);
    const json_t *dtype = json_object_get(v, "dtype");
    const json_t *shape = json_object_get(v, "shape");
    const json_t *offsets = json_object_get(v, "data_offsets");
    if (!dtype || !shape || !offsets || json_object_size(v) != 3)
        return tg_fail(TG_ERR_FORMAT, "%s: tensor \"%s\" must have exactly the keys dtype, shape "
                       "and data_offsets", src, name);
    if (!json_is_string(dtype))
        return tg_fail(TG_ERR_FORMAT, "%s: tensor \"%s\": dtype is not a string", src, name);
    const char *dt = json_string_value(dtype);
    if (strcmp(dt, "F32") == 0)
        t->dtype = TG_F32;
    else if (strcmp(dt, "F64") == 0)
        t->dtype = TG_F64;
    else
        return tg_fail(TG_ERR_FORMAT, "%s: tensor \"%s\" has dtype \"%.20s\"; tapegrad reads F32 "
                       "and F64", src, name, dt);
    if (!json_is_array(shape) || json_array_size(shape) > TG_MAX_DIMS)
        return tg_fail(TG_ERR_FORMAT, "%s: tensor \"%s\": shape must be an array of at most %d "
                       "sizes", src, name, TG_MAX_DIMS);
    t->ndim = (int)json_array_size(shape);
    for (int i = 0; i < t->ndim; i++) {
        const json_t *size = json_array_get(shape, (size_t)i);
        if (!json_is_integer(size) || json_integer_value(size) < 0)
            return tg_fail(TG_ERR_FORMAT, "%s: tensor \"%s\": shape entry %d is not a "
                           "non-negative integer", src, name, i);
        t->shape[i] = json_integer_value(size);
    }
    const json_t *first = json_array_get(offsets, 0), *last = json_array_get(offsets, 1);
    if (!json_is_array(offsets) || json_array_size(offsets) != 2 || !json_is_integer(first) ||
        !json_is_integer(last))
        return tg_fail(TG_ERR_FORMAT, "%s: tensor \"%s\": data_offsets must be [begin, end]",
                       src, name);
    int64_t begin = json_integer_value(first), end = json_integer_value(last);
    if (begin < 0 || end < begin || (uint64_t)end > data_len)
        return tg_fail(TG_ERR_FORMAT, "%s: tensor \"%s\": data_offsets [%lld, %lld] are outside "
                       "the data section of %zu bytes", src, name, (long long)begin,
                       (long long)end, data_len);
    size_t bytes;
    char s[160];
    if (!tensor_bytes(t->ndim, t->shape, elem_size(t->dtype), &bytes) ||
        bytes != (size_t)(end - begin))
        return tg_fail(TG_ERR_FORMAT, "%s: tensor \"%s\": a %s %s tensor does not take the %lld "
                       "bytes of data_offsets [%lld, %lld]", src, name, dt,
                       tg_shape_str(s, sizeof s, t->ndim, t->shape), (long long)(end - begin),
                       (long long)begin, (long long)end);
    t->begin = (size_t)begin;
    t->end = (size_t)end;
    return 0;
}

static int compare_ranges(const void *a, const void *b)
{
    const ckpt_tensor *x = *(const ckpt_tensor *const *)a, *y = *(const ckpt_tensor *const *)b;
    if (x->begin != y->begin)
        return x->begin < y->begin ? -1 : 1;
    return x->end < y->end ? -1 : x->end > y->end;
}

/* The tensors' byte ranges must tile [0, data_len) exactly. */
static int check_layout(const char *src, const tg_checkpoint *c)
{
    if (c->n_tensors == 0) {
        if (c->data_len != 0)
            return tg_fail(TG_ERR_FORMAT, "%s: %zu bytes of data but no tensors", src,
                           c->data_len);
        return 0;
    }
    const ckpt_tensor **order = malloc((size_t)c->n_tensors * sizeof *order);
    if (!order)
        return tg_fail(TG_ERR_NOMEM, "%s: out of memory", src);
    for (int i = 0; i < c->n_tensors; i++)
        order[i] = &c->tensors[i];
    qsort(order, (size_t)c->n_tensors, sizeof *order, compare_ranges);
    int rc = 0;
    size_t at = 0;
    for (int i = 0; i < c->n_tensors && rc == 0; i++) {
        const ckpt_tensor *t = order[i];
        if (t->begin < at)
            rc = tg_fail(TG_ERR_FORMAT, "%s: tensors \"%s\" [%zu, %zu) and \"%s\" [%zu, %zu) "
                         "overlap", src, order[i - 1]->name, order[i - 1]->begin,
                         order[i - 1]->end, t->name, t->begin, t->end);
        else if (t->begin > at)
            rc = tg_fail(TG_ERR_FORMAT, "%s: a gap of %zu bytes before tensor \"%s\" (at %zu)",
                         src, t->begin - at, t->name, at);
        at = t->end;
    }
    if (rc == 0 && at != c->data_len)
        rc = tg_fail(TG_ERR_FORMAT, "%s: the tensors cover %zu bytes but the data section has "
                     "%zu: trailing bytes", src, at, c->data_len);
    free(order);
    return rc;
}

static int read_metadata(const char *src, json_t *v, tg_checkpoint *c)
{
    if (!json_is_object(v))
        return tg_fail(TG_ERR_FORMAT, "%s: " METADATA_KEY " is not an object", src);
    size_t n = json_object_size(v);
    c->meta_keys = calloc(n + 1, sizeof *c->meta_keys);
    c->meta_values = calloc(n + 1, sizeof *c->meta_values);
    if (!c->meta_keys || !c->meta_values)
        return tg_fail(TG_ERR_NOMEM, "%s: out of memory", src);
    const char *key;
    json_t *value;
    json_object_foreach(v, key, value) {
        if (!json_is_string(value))
            return tg_fail(TG_ERR_FORMAT, "%s: metadata value \"%.100s\" is not a string", src,
                           key);
        int i = c->n_meta++;
        c->meta_keys[i] = strdup(key);
        c->meta_values[i] = strdup(json_string_value(value));
        if (!c->meta_keys[i] || !c->meta_values[i])
            return tg_fail(TG_ERR_NOMEM, "%s: out of memory", src);
    }
    return 0;
}

/* Fills c's tensors and metadata from the parsed header; jansson keeps an object's members in
 * file order, so tensors are numbered as they appear. */
static int read_header(const char *src, json_t *root, tg_checkpoint *c)
{
    if (!json_is_object(root))
        return tg_fail(TG_ERR_FORMAT, "%s: the header is not a JSON object", src);
    if (json_object_size(root) > INT_MAX)
        return tg_fail(TG_ERR_FORMAT, "%s: too many tensors", src);
    c->tensors = calloc(json_object_size(root) + 1, sizeof *c->tensors);
    if (!c->tensors)
        return tg_fail(TG_ERR_NOMEM, "%s: out of memory", src);
    const char *key;
    json_t *value;
    json_object_foreach(root, key, value) {
        int rc;
        if (strcmp(key, METADATA_KEY) == 0) {
            rc = read_metadata(src, value, c);
        } else {
            ckpt_tensor *t = &c->tensors[c->n_tensors];
            rc = read_tensor(src, key, value, c->data_len, t);
            if (rc == 0) {
                t->name = strdup(key);
                c->n_tensors++;
                if (!t->name)
                    rc = tg_fail(TG_ERR_NOMEM, "%s: out of memory", src);
            }
        }
        if (rc)
            return rc;
    }
    return check_layout(src, c);
}

static int check_crc(const char *src, const tg_checkpoint *c, const uint8_t *data)
{
    const char *recorded = tg_checkpoint_meta(c, TG_CKPT_CRC_KEY);
    if (!recorded)
        return 0; /* a file from another writer: nothing to check against */
    uint32_t actual = crc_of((uint32_t)crc32(0, NULL, 0), data, c->data_len);
    char expect[16];
    snprintf(expect, sizeof expect, "%08" PRIx32, actual);
    if (strcmp(recorded, expect) != 0)
        return tg_fail(TG_ERR_FORMAT, "%s: checksum mismatch: the data section's CRC-32 is %s but "
                       "the header records \"%.20s\"; the file is corrupt", src, expect, recorded);
    return 0;
}

/* The header's JSON, decoded by jansson. Its decoder is strict RFC 8259: UTF-8 is validated
 * (no overlongs, surrogates or code points past U+10FFFF), escapes are checked, integers that do
 * not fit in 64 bits are refused, nesting is capped (at 2048), and only an object or an array
 * may stand at the top with nothing after it. On top of that, a repeated key is refused (it
 * would make a header ambiguous: two tensors of one name) and so is \u0000 in a string (names
 * and metadata become C strings), which jansson refuses unless JSON_ALLOW_NUL is given. */
static int read_json(const char *src, const uint8_t *text, size_t len, json_t **out)
{
    json_error_t err;
    *out = json_loadb((const char *)text, len, JSON_REJECT_DUPLICATES, &err);
    if (*out)
        return 0;
    if (json_error_code(&err) == json_error_out_of_memory)
        return tg_fail(TG_ERR_NOMEM, "%s: out of memory while parsing the header", src);
    /* jansson quotes the bytes near the error, which may be anything: keep the message text. */
    for (char *p = err.text; *p; p++)
        if (*p < 0x20 || *p > 0x7e)
            *p = '?';
    return tg_fail(TG_ERR_FORMAT, "%s: checkpoint header: invalid JSON at byte %d: %s", src,
                   err.position, err.text);
}

/* Parses a whole file held in buf (which it takes over: freed on failure, kept as c->block on
 * success, with the data section moved to its start so every tensor is aligned). */
static int parse_owned(uint8_t *buf, size_t len, const char *src, tg_checkpoint **out)
{
    int rc;
    tg_checkpoint *c = calloc(1, sizeof *c);
    if (!c || !(c->source = strdup(src))) {
        free(c);
        free(buf);
        return tg_fail(TG_ERR_NOMEM, "%s: out of memory", src);
    }
    if (len < 8) {
        rc = tg_fail(TG_ERR_FORMAT, "%s: %zu bytes is too short for a checkpoint (the header "
                     "length alone takes 8)", src, len);
        goto fail;
    }
    uint64_t n = 0;
    for (int i = 7; i >= 0; i--)
        n = n << 8 | buf[i];
    if (n > len - 8) {
        rc = tg_fail(TG_ERR_FORMAT, "%s: the header length %" PRIu64 " is larger than the rest "
                     "of the file (%zu bytes): truncated or not a checkpoint", src, n, len - 8);
        goto fail;
    }
    if (n < 2 || n > MAX_HEADER) {
        rc = tg_fail(TG_ERR_FORMAT, "%s: header length %" PRIu64 " is not plausible (2 to %u "
                     "bytes)", src, n, MAX_HEADER);
        goto fail;
    }
    size_t header_len = (size_t)n;
    c->data_len = len - 8 - header_len;
    json_t *root;
    rc = read_json(src, buf + 8, header_len, &root);
    if (rc)
        goto fail;
    rc = read_header(src, root, c);
    json_decref(root);
    if (rc)
        goto fail;
    uint8_t *data = buf + 8 + header_len;
    rc = check_crc(src, c, data);
    if (rc)
        goto fail;
    memmove(buf, data, c->data_len);
    c->block = buf;
    if (!host_is_little_endian())
        for (int i = 0; i < c->n_tensors; i++)
            swap_elements(buf + c->tensors[i].begin, c->tensors[i].end - c->tensors[i].begin,
                          elem_size(c->tensors[i].dtype));
    *out = c;
    return 0;
fail:
    free(buf);
    tg_checkpoint_free(c);
    return rc;
}

int tg_checkpoint_parse(const void *buf, size_t len, tg_checkpoint **out)
{
    if (!buf || !out)
        return tg_fail(TG_ERR_NULL, "tg_checkpoint_parse: buffer or output is NULL");
    uint8_t *copy = malloc(len ? len : 1);
    if (!copy)
        return tg_fail(TG_ERR_NOMEM, "tg_checkpoint_parse: cannot allocate %zu bytes", len);
    memcpy(copy, buf, len);
    return parse_owned(copy, len, "checkpoint", out);
}

int tg_checkpoint_open(const char *path, tg_checkpoint **out)
{
    if (!path || !out)
        return tg_fail(TG_ERR_NULL, "tg_checkpoint_open: path or output is NULL");
    uint8_t *buf;
    size_t len;
    int rc = tg_read_file(path, &buf, &len);
    if (rc)
        return rc;
    return parse_owned(buf, len, path, out);
}

int tg_checkpoint_count(const tg_checkpoint *c)
{
    if (!c)
        return tg_fail(TG_ERR_NULL, "tg_checkpoint_count: checkpoint is NULL");
    return c->n_tensors;
}

int tg_checkpoint_tensor(const tg_checkpoint *c, int i, tg_ckpt_entry *out)
{
    if (!c || !out)
        return tg_fail(TG_ERR_NULL, "tg_checkpoint_tensor: checkpoint or output is NULL");
    if (i < 0 || i >= c->n_tensors)
        return tg_fail(TG_ERR_ARG, "tg_checkpoint_tensor: index %d is outside 0..%d", i,
                       c->n_tensors - 1);
    const ckpt_tensor *t = &c->tensors[i];
    memset(out, 0, sizeof *out);
    out->name = t->name;
    out->dtype = t->dtype;
    out->ndim = t->ndim;
    memcpy(out->shape, t->shape, sizeof t->shape);
    out->data = c->block + t->begin;
    return 0;
}

int tg_checkpoint_find(const tg_checkpoint *c, const char *name)
{
    if (!c || !name)
        return -1;
    for (int i = 0; i < c->n_tensors; i++)
        if (strcmp(c->tensors[i].name, name) == 0)
            return i;
    return -1;
}

int tg_checkpoint_meta_count(const tg_checkpoint *c)
{
    if (!c)
        return tg_fail(TG_ERR_NULL, "tg_checkpoint_meta_count: checkpoint is NULL");
    return c->n_meta;
}

int tg_checkpoint_meta_at(const tg_checkpoint *c, int i, const char **key, const char **value)
{
    if (!c || !key || !value)
        return tg_fail(TG_ERR_NULL, "tg_checkpoint_meta_at: an argument is NULL");
    if (i < 0 || i >= c->n_meta)
        return tg_fail(TG_ERR_ARG, "tg_checkpoint_meta_at: index %d is outside 0..%d", i,
                       c->n_meta - 1);
    *key = c->meta_keys[i];
    *value = c->meta_values[i];
    return 0;
}

const char *tg_checkpoint_meta(const tg_checkpoint *c, const char *key)
{
    if (!c || !key)
        return NULL;
    for (int i = 0; i < c->n_meta; i++)
        if (strcmp(c->meta_keys[i], key) == 0)
            return c->meta_values[i];
    return NULL;
}

int tg_checkpoint_read(const tg_checkpoint *c, tg_ckpt_entry *entries, int n)
{
    const char *who = "tg_checkpoint_read";
    if (!c || (!entries && n > 0))
        return tg_fail(TG_ERR_NULL, "%s: checkpoint or entries is NULL", who);
    if (n < 0)
        return tg_fail(TG_ERR_ARG, "%s: n is %d", who, n);
    /* Match everything first: a mismatch must leave every buffer as it was. */
    for (int i = 0; i < n; i++) {
        const tg_ckpt_entry *e = &entries[i];
        if (!e->name)
            return tg_fail(TG_ERR_NULL, "%s: entry %d has no name", who, i);
        int k = tg_checkpoint_find(c, e->name);
        if (k < 0)
            return tg_fail(TG_ERR_SHAPE, "%s: checkpoint from another model? it has no tensor "
                           "\"%s\" (it has %d tensors)", c->source, e->name, c->n_tensors);
        const ckpt_tensor *t = &c->tensors[k];
        if (t->dtype != e->dtype)
            return tg_fail(TG_ERR_DTYPE, "%s: checkpoint from another model? tensor \"%s\" is %s "
                           "in the checkpoint but %s here", c->source, e->name,
                           tg_dtype_name(t->dtype), tg_dtype_name(e->dtype));
        if (!tg_shape_equal(t->ndim, t->shape, e->ndim, e->shape)) {
            char a[160], b[160];
            int endim = e->ndim < 0 ? 0 : e->ndim > TG_MAX_DIMS ? TG_MAX_DIMS : e->ndim;
            return tg_fail(TG_ERR_SHAPE, "%s: checkpoint from another model? tensor \"%s\" has "
                           "shape %s in the checkpoint but %s here", c->source, e->name,
                           tg_shape_str(a, sizeof a, t->ndim, t->shape),
                           tg_shape_str(b, sizeof b, endim, e->shape));
        }
        if (!e->data && t->end > t->begin)
            return tg_fail(TG_ERR_NULL, "%s: entry \"%s\" has no data buffer", who, e->name);
    }
    for (int i = 0; i < n; i++) {
        const ckpt_tensor *t = &c->tensors[tg_checkpoint_find(c, entries[i].name)];
        if (t->end > t->begin)
            memcpy(entries[i].data, c->block + t->begin, t->end - t->begin);
    }
    return 0;
}

int tg_checkpoint_load(const char *path, tg_ckpt_entry *entries, int n)
{
    if (!path || (!entries && n > 0))
        return tg_fail(TG_ERR_NULL, "tg_checkpoint_load: path or entries is NULL");
    tg_checkpoint *c;
    int rc = tg_checkpoint_open(path, &c);
    if (rc)
        return rc;
    rc = tg_checkpoint_read(c, entries, n);
    tg_checkpoint_free(c);
    return rc;
}

/* ---- writing --------------------------------------------------------------------------------- */

static int compare_strings(const void *a, const void *b)
{
    return strcmp(*(const char *const *)a, *(const char *const *)b);
}

/* The first string that appears twice among n, or NULL. */
static const char *find_duplicate(const char *const *strings, int n, int *status)
{
    *status = 0;
    if (n < 2)
        return NULL;
    const char **sorted = malloc((size_t)n * sizeof *sorted);
    if (!sorted) {
        *status = TG_ERR_NOMEM;
        return NULL;
    }
    memcpy(sorted, strings, (size_t)n * sizeof *sorted);
    qsort(sorted, (size_t)n, sizeof *sorted, compare_strings);
    const char *dup = NULL;
    for (int i = 1; i < n && !dup; i++)
        if (strcmp(sorted[i - 1], sorted[i]) == 0)
            dup = sorted[i];
    free(sorted);
    return dup;
}

/* 0 when s is well-formed UTF-8 as jansson judges it (it writes the header and refuses
 * anything else), TG_ERR_ARG when it is not, TG_ERR_NOMEM when memory ran out judging. */
static int check_utf8(const char *s)
{
    json_t *str = json_string(s);
    if (!str) {
        str = json_string_nocheck(s); /* fails only when memory runs out */
        json_decref(str);
        return str ? TG_ERR_ARG : TG_ERR_NOMEM;
    }
    json_decref(str);
    return 0;
}

static int check_save_args(const char *path, const tg_ckpt_entry *entries, int n,
                           const char *const *keys, const char *const *values, int n_meta,
                           size_t *sizes)
{
    const char *who = "tg_checkpoint_save";
    if (!path || (!entries && n > 0) || ((!keys || !values) && n_meta > 0))
        return tg_fail(TG_ERR_NULL, "%s: path, entries or metadata is NULL", who);
    if (n < 0 || n_meta < 0)
        return tg_fail(TG_ERR_ARG, "%s: n = %d and n_meta = %d must not be negative", who, n,
                       n_meta);
    for (int i = 0; i < n; i++) {
        const tg_ckpt_entry *e = &entries[i];
        int utf8 = e->name ? check_utf8(e->name) : TG_ERR_ARG;
        if (utf8 == TG_ERR_NOMEM)
            return tg_fail(TG_ERR_NOMEM, "%s: out of memory", who);
        if (utf8 || !*e->name || strcmp(e->name, METADATA_KEY) == 0)
            return tg_fail(TG_ERR_ARG, "%s: entry %d needs a non-empty UTF-8 name other than "
                           METADATA_KEY, who, i);
        if (e->dtype != TG_F32 && e->dtype != TG_F64)
            return tg_fail(TG_ERR_DTYPE, "%s: tensor \"%s\" has an unknown dtype %d", who,
                           e->name, (int)e->dtype);
        if (e->ndim < 0 || e->ndim > TG_MAX_DIMS)
            return tg_fail(TG_ERR_SHAPE, "%s: tensor \"%s\" has %d dimensions (0 to %d allowed)",
                           who, e->name, e->ndim, TG_MAX_DIMS);
        if (!tensor_bytes(e->ndim, e->shape, elem_size(e->dtype), &sizes[i]) ||
            sizes[i] > INT64_MAX)
            return tg_fail(TG_ERR_SHAPE, "%s: tensor \"%s\" has a negative or too large shape",
                           who, e->name);
        if (!e->data && sizes[i] > 0)
            return tg_fail(TG_ERR_NULL, "%s: tensor \"%s\" has no data", who, e->name);
    }
    for (int i = 0; i < n_meta; i++) {
        if (!keys[i] || !values[i])
            return tg_fail(TG_ERR_NULL, "%s: metadata entry %d is NULL", who, i);
        int utf8 = check_utf8(keys[i]);
        if (utf8 == 0)
            utf8 = check_utf8(values[i]);
        if (utf8 == TG_ERR_NOMEM)
            return tg_fail(TG_ERR_NOMEM, "%s: out of memory", who);
        if (utf8)
            return tg_fail(TG_ERR_ARG, "%s: metadata entry \"%.60s\" is not UTF-8", who, keys[i]);
        if (strcmp(keys[i], TG_CKPT_CRC_KEY) == 0)
            return tg_fail(TG_ERR_ARG, "%s: the metadata key " TG_CKPT_CRC_KEY " is reserved for "
                           "the checksum", who);
    }
    int status;
    const char **names = malloc(((size_t)n + 1) * sizeof *names);
    if (!names)
        return tg_fail(TG_ERR_NOMEM, "%s: out of memory", who);
    for (int i = 0; i < n; i++)
        names[i] = entries[i].name;
    const char *dup = find_duplicate(names, n, &status);
    int rc = 0;
    if (status)
        rc = tg_fail(TG_ERR_NOMEM, "%s: out of memory", who);
    else if (dup)
        rc = tg_fail(TG_ERR_ARG, "%s: two tensors are named \"%s\"", who, dup);
    free(names);
    if (rc)
        return rc;
    dup = find_duplicate((const char *const *)keys, n_meta, &status);
    if (status)
        return tg_fail(TG_ERR_NOMEM, "%s: out of memory", who);
    if (dup)
        return tg_fail(TG_ERR_ARG, "%s: the metadata key \"%s\" appears twice", who, dup);
    return 0;
}

/* The header JSON, written by jansson in the order given (tensors, then "__metadata__" with
 * the checksum last) and padded with spaces so the data section starts 8-byte aligned in the
 * file. The strings were checked by check_save_args. On success *out is malloc'ed. */
static int build_header(const tg_ckpt_entry *entries, int n, const size_t *sizes,
                        const char *const *keys, const char *const *values, int n_meta,
                        uint32_t crc, char **out, size_t *out_len)
{
    const char *who = "tg_checkpoint_save";
    /* jansson's setters take over the value they are given even when they fail, and ignore a
     * NULL one, so one flag checked at the end catches any allocation that failed. */
    bool ok = true;
    json_t *root = json_object();
    size_t at = 0;
    for (int i = 0; i < n; i++) {
        const tg_ckpt_entry *e = &entries[i];
        json_t *tensor = json_object(), *shape = json_array(), *offsets = json_array();
        for (int d = 0; d < e->ndim; d++)
            ok &= json_array_append_new(shape, json_integer(e->shape[d])) == 0;
        ok &= json_array_append_new(offsets, json_integer((json_int_t)at)) == 0;
        ok &= json_array_append_new(offsets, json_integer((json_int_t)(at + sizes[i]))) == 0;
        ok &= json_object_set_new_nocheck(tensor, "dtype", json_string(st_dtype(e->dtype))) == 0;
        ok &= json_object_set_new_nocheck(tensor, "shape", shape) == 0;
        ok &= json_object_set_new_nocheck(tensor, "data_offsets", offsets) == 0;
        ok &= json_object_set_new_nocheck(root, e->name, tensor) == 0;
        at += sizes[i];
    }
    json_t *meta = json_object();
    for (int i = 0; i < n_meta; i++)
        ok &= json_object_set_new_nocheck(meta, keys[i], json_string_nocheck(values[i])) == 0;
    char crc_text[16];
    snprintf(crc_text, sizeof crc_text, "%08" PRIx32, crc);
    ok &= json_object_set_new_nocheck(meta, TG_CKPT_CRC_KEY, json_string(crc_text)) == 0;
    ok &= json_object_set_new_nocheck(root, METADATA_KEY, meta) == 0;
    size_t len = ok ? json_dumpb(root, NULL, 0, JSON_COMPACT) : 0;
    char *text = len ? malloc(len + 8) : NULL;
    if (text && json_dumpb(root, text, len, JSON_COMPACT) != len) {
        free(text);
        text = NULL;
    }
    json_decref(root);
    if (!text)
        return tg_fail(TG_ERR_NOMEM, "%s: out of memory for the header", who);
    while ((8 + len) % 8 != 0)
        text[len++] = ' ';
    if (len > MAX_HEADER) {
        free(text);
        return tg_fail(TG_ERR_ARG, "%s: the header would take %zu bytes; readers refuse more "
                       "than %u", who, len, MAX_HEADER);
    }
    *out = text;
    *out_len = len;
    return 0;
}

static int write_all(int fd, const void *buf, size_t n)
{
    const uint8_t *p = buf;
    while (n > 0) {
        ssize_t w = write(fd, p, n > (1u << 30) ? (1u << 30) : n);
        if (w < 0 && errno == EINTR)
            continue;
        if (w < 0)
            return errno;
        p += w;
        n -= (size_t)w;
    }
    return 0;
}

/* Writes one tensor's bytes in little-endian order. */
static int write_tensor(int fd, const tg_ckpt_entry *e, size_t bytes)
{
    if (host_is_little_endian())
        return write_all(fd, e->data, bytes);
    uint8_t chunk[1 << 16];
    const uint8_t *p = e->data;
    while (bytes > 0) {
        size_t k = bytes < sizeof chunk ? bytes : sizeof chunk;
        memcpy(chunk, p, k);
        swap_elements(chunk, k, elem_size(e->dtype));
        int err = write_all(fd, chunk, k);
        if (err)
            return err;
        p += k;
        bytes -= k;
    }
    return 0;
}

static uint32_t data_crc(const tg_ckpt_entry *entries, int n, const size_t *sizes)
{
    uint32_t crc = (uint32_t)crc32(0, NULL, 0);
    for (int i = 0; i < n; i++) {
        if (host_is_little_endian()) {
            crc = crc_of(crc, entries[i].data, sizes[i]);
            continue;
        }
        uint8_t chunk[1 << 16];
        const uint8_t *p = entries[i].data;
        for (size_t left = sizes[i]; left > 0;) {
            size_t k = left < sizeof chunk ? left : sizeof chunk;
            memcpy(chunk, p, k);
            swap_elements(chunk, k, elem_size(entries[i].dtype));
            crc = crc_of(crc, chunk, k);
            p += k;
            left -= k;
        }
    }
    return crc;
}

/* Splits path into its directory ("." when it has none) and its last component. */
static int split_path(const char *path, char **dir, const char **base)
{
    const char *slash = strrchr(path, '/');
    *base = slash ? slash + 1 : path;
    size_t dlen = slash ? (slash == path ? 1 : (size_t)(slash - path)) : 1;
    *dir = malloc(dlen + 1);
    if (!*dir)
        return tg_fail(TG_ERR_NOMEM, "tg_checkpoint_save: out of memory");
    memcpy(*dir, slash ? path : ".", dlen);
    (*dir)[dlen] = '\0';
    if (!**base)
        return tg_fail(TG_ERR_ARG, "tg_checkpoint_save: %s names a directory, not a file", path);
    return 0;
}

/* Temporary files are "BASE.tmp.PID.SEQ". One whose writer is gone (killed mid-save) is
 * removed; one whose writer still runs is left alone, as it may be about to be renamed. */
static void remove_stale_temps(const char *dir, const char *base)
{
    DIR *d = opendir(dir);
    if (!d)
        return;
    size_t blen = strlen(base);
    struct dirent *ent;
    while ((ent = readdir(d)) != NULL) {
        const char *name = ent->d_name;
        if (strncmp(name, base, blen) != 0 || strncmp(name + blen, ".tmp.", 5) != 0)
            continue;
        char *end;
        errno = 0;
        long pid = strtol(name + blen + 5, &end, 10);
        if (errno || pid <= 0 || *end != '.' || pid == (long)getpid())
            continue;
        if (kill((pid_t)pid, 0) == 0 || errno != ESRCH)
            continue;
        size_t n = strlen(dir) + strlen(name) + 2;
        char *full = malloc(n);
        if (full) {
            snprintf(full, n, "%s/%s", dir, name);
            unlink(full);
            free(full);
        }
    }
    closedir(d);
}

static int fsync_dir(const char *dir)
{
    int fd = open(dir, O_RDONLY | O_DIRECTORY);
    if (fd < 0)
        return errno;
    int err = fsync(fd) == 0 ? 0 : errno;
    close(fd);
    /* Some file systems cannot sync a directory; the rename is then as durable as they allow. */
    return err == EINVAL || err == ENOTSUP ? 0 : err;
}

int tg_checkpoint_save(const char *path, const tg_ckpt_entry *entries, int n,
                       const char *const *meta_keys, const char *const *meta_values, int n_meta)
{
    static atomic_uint sequence;
    size_t *sizes = malloc(((size_t)(n > 0 ? n : 0) + 1) * sizeof *sizes);
    if (!sizes)
        return tg_fail(TG_ERR_NOMEM, "tg_checkpoint_save: out of memory");
    int rc = check_save_args(path, entries, n, meta_keys, meta_values, n_meta, sizes);
    if (rc) {
        free(sizes);
        return rc;
    }
    char *header = NULL;
    size_t header_len = 0;
    rc = build_header(entries, n, sizes, meta_keys, meta_values, n_meta,
                      data_crc(entries, n, sizes), &header, &header_len);
    if (rc) {
        free(sizes);
        return rc;
    }
    char *dir = NULL, *tmp = NULL;
    const char *base;
    char why[128];
    int fd = -1;
    rc = split_path(path, &dir, &base);
    if (rc)
        goto done;
    remove_stale_temps(dir, base);
    size_t tlen = strlen(path) + 64;
    tmp = malloc(tlen);
    if (!tmp) {
        rc = tg_fail(TG_ERR_NOMEM, "tg_checkpoint_save: out of memory");
        goto done;
    }
    snprintf(tmp, tlen, "%s.tmp.%ld.%u", path, (long)getpid(), atomic_fetch_add(&sequence, 1));
    fd = open(tmp, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0644);
    if (fd < 0) {
        rc = tg_fail(TG_ERR_IO, "%s: cannot create %s: %s", path, tmp,
                     tg_errno_str(errno, why, sizeof why));
        goto done;
    }
    uint8_t prefix[8];
    for (int i = 0; i < 8; i++)
        prefix[i] = (uint8_t)((uint64_t)header_len >> (8 * i));
    int err = write_all(fd, prefix, sizeof prefix);
    if (!err)
        err = write_all(fd, header, header_len);
    for (int i = 0; i < n && !err; i++)
        err = write_tensor(fd, &entries[i], sizes[i]);
    if (!err && fsync(fd) != 0)
        err = errno;
    if (close(fd) != 0 && !err)
        err = errno;
    fd = -1;
    if (err) {
        rc = tg_fail(TG_ERR_IO, "%s: writing %s failed: %s", path, tmp,
                     tg_errno_str(err, why, sizeof why));
        unlink(tmp);
        goto done;
    }
    if (rename(tmp, path) != 0) {
        rc = tg_fail(TG_ERR_IO, "%s: cannot rename %s into place: %s", path, tmp,
                     tg_errno_str(errno, why, sizeof why));
        unlink(tmp);
        goto done;
    }
    err = fsync_dir(dir);
    if (err)
        rc = tg_fail(TG_ERR_IO, "%s: saved, but syncing the directory %s failed: %s", path, dir,
                     tg_errno_str(err, why, sizeof why));
done:
    free(tmp);
    free(dir);
    free(sizes);
    free(header);
    return rc;
}
