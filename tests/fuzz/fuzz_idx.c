/* libFuzzer target for the IDX reader: every input is parsed as it is (raw, or gzip when it
 * starts with 1f 8b) and again wrapped in a valid gzip stream. Unwrapping must not change the
 * verdict: gzip(x) parses exactly when x does, to the same array. */
#include "tapegrad_io.h"

#include <stdlib.h>
#include <string.h>
#include <zlib.h>

static uint8_t *gzip(const uint8_t *data, size_t size, size_t *out_len)
{
    z_stream zs;
    memset(&zs, 0, sizeof zs);
    if (deflateInit2(&zs, 1, Z_DEFLATED, 15 + 16, 8, Z_DEFAULT_STRATEGY) != Z_OK)
        abort();
    size_t cap = deflateBound(&zs, (uLong)size) + 64;
    uint8_t *out = malloc(cap);
    zs.next_in = (Bytef *)(uintptr_t)data;
    zs.avail_in = (uInt)size;
    zs.next_out = out;
    zs.avail_out = (uInt)cap;
    if (deflate(&zs, Z_FINISH) != Z_STREAM_END)
        abort();
    *out_len = zs.total_out;
    deflateEnd(&zs);
    return out;
}

static void check_consistent(const tg_idx *idx)
{
    size_t product = 1;
    for (int i = 0; i < idx->ndim; i++)
        product *= (size_t)idx->dims[i];
    if (idx->ndim < 1 || idx->ndim > TG_MAX_DIMS || product != idx->size || !idx->data)
        abort();
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    tg_idx raw = {0}, gz = {0}; /* failures leave them untouched */
    int raw_rc = tg_idx_parse(data, size, &raw);
    if (raw_rc == 0)
        check_consistent(&raw);
    else if (tg_last_error()[0] == '\0')
        abort(); /* every failure must say why */

    size_t gz_len;
    uint8_t *wrapped = gzip(data, size, &gz_len);
    int gz_rc = tg_idx_parse(wrapped, gz_len, &gz);
    free(wrapped);
    bool is_gzip = size >= 2 && data[0] == 0x1f && data[1] == 0x8b;
    if (!is_gzip) {
        if ((raw_rc == 0) != (gz_rc == 0))
            abort();
        if (raw_rc == 0 && (raw.size != gz.size || raw.ndim != gz.ndim ||
                            memcmp(raw.dims, gz.dims, sizeof raw.dims[0] * (size_t)raw.ndim) ||
                            memcmp(raw.data, gz.data, raw.size)))
            abort();
    }
    if (gz_rc == 0)
        check_consistent(&gz);
    tg_idx_free(&raw);
    tg_idx_free(&gz);
    return 0;
}
