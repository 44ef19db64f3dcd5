/* libFuzzer target for checkpoint reading and the JSON header reader. Each input is tried
 * three ways: as a whole checkpoint file, as a bare JSON text, and as a header (up to the first
 * NUL byte) behind a correct length prefix, followed by the rest as the data section, so any
 * JSON the fuzzer finds reaches the header and layout validation. Whatever parses must be
 * self-consistent: tensors tile the data, reads by name return the same bytes, and metadata
 * strings survive the JSON writer and reader unchanged. */
#include "io/json.h"
#include "tapegrad_io.h"

#include <stdlib.h>
#include <string.h>

static size_t tensor_bytes(const tg_ckpt_entry *e)
{
    size_t n = e->dtype == TG_F64 ? 8 : 4;
    for (int d = 0; d < e->ndim; d++)
        n *= (size_t)e->shape[d];
    return n;
}

static void exercise(const tg_checkpoint *c)
{
    int n = tg_checkpoint_count(c);
    if (n < 0)
        abort();
    tg_ckpt_entry *entries = calloc((size_t)n + 1, sizeof *entries);
    for (int i = 0; i < n; i++) {
        if (tg_checkpoint_tensor(c, i, &entries[i]) != 0 ||
            tg_checkpoint_find(c, entries[i].name) != i)
            abort();
    }
    /* Read everything back into fresh buffers by name. */
    void **copies = calloc((size_t)n + 1, sizeof *copies);
    tg_ckpt_entry *targets = calloc((size_t)n + 1, sizeof *targets);
    for (int i = 0; i < n; i++) {
        targets[i] = entries[i];
        copies[i] = malloc(tensor_bytes(&entries[i]) + 1);
        targets[i].data = copies[i];
    }
    if (tg_checkpoint_read(c, targets, n) != 0)
        abort();
    for (int i = 0; i < n; i++) {
        if (memcmp(copies[i], entries[i].data, tensor_bytes(&entries[i])) != 0)
            abort();
        free(copies[i]);
    }
    free(copies);
    free(targets);
    free(entries);

    int m = tg_checkpoint_meta_count(c);
    for (int i = 0; i < m; i++) {
        const char *key, *value;
        if (tg_checkpoint_meta_at(c, i, &key, &value) != 0 || tg_checkpoint_meta(c, key) != value)
            abort();
        tg_strbuf sb;
        tg_strbuf_init(&sb);
        tg_strbuf_json_string(&sb, value);
        tg_json back;
        if (!sb.ok || tg_json_parse(sb.data, sb.len, "fuzz", &back) != 0 ||
            back.type != TG_JSON_STRING || strcmp(back.string, value) != 0)
            abort();
        tg_json_free(&back);
        tg_strbuf_free(&sb);
    }
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    tg_checkpoint *c = NULL;
    if (tg_checkpoint_parse(data, size, &c) == 0) {
        exercise(c);
        tg_checkpoint_free(c);
    } else if (c != NULL || tg_last_error()[0] == '\0') {
        abort();
    }

    tg_json v;
    if (tg_json_parse((const char *)data, size, "fuzz", &v) == 0)
        tg_json_free(&v);

    /* A NUL byte (never valid in the JSON) splits header from data; else all is header. */
    const uint8_t *nul = memchr(data, 0, size);
    size_t header = nul ? (size_t)(nul - data) : size;
    uint8_t *framed = malloc(size + 8);
    for (int i = 0; i < 8; i++)
        framed[i] = (uint8_t)((uint64_t)header >> (8 * i));
    memcpy(framed + 8, data, header);
    if (nul)
        memcpy(framed + 8 + header, nul + 1, size - header - 1);
    size_t framed_len = nul ? size + 7 : size + 8;
    c = NULL;
    if (tg_checkpoint_parse(framed, framed_len, &c) == 0) {
        exercise(c);
        tg_checkpoint_free(c);
    }
    free(framed);
    return 0;
}
