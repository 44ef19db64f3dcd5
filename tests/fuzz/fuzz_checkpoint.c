/* libFuzzer target for checkpoint reading. Each input is tried two ways: as a whole checkpoint
 * file, and as a header (up to the first NUL byte) behind a correct length prefix, followed by
 * the rest as the data section, so any JSON the fuzzer finds reaches the header and layout
 * validation. Whatever parses must be self-consistent: tensors tile the data, reads by name
 * return the same bytes, and saving it again (the header written by jansson) and reading that
 * back gives the same tensors and metadata, strings unchanged. The saves go to a scratch
 * directory in /dev/shm (or $TMPDIR), removed at exit. */
#include "tapegrad_io.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

static size_t tensor_bytes(const tg_ckpt_entry *e)
{
    size_t n = e->dtype == TG_F64 ? 8 : 4;
    for (int d = 0; d < e->ndim; d++)
        n *= (size_t)e->shape[d];
    return n;
}

static char scratch_dir[512], scratch_file[600];

static void remove_scratch(void)
{
    unlink(scratch_file);
    rmdir(scratch_dir);
}

static const char *scratch_path(void)
{
    if (!scratch_file[0]) {
        const char *base = access("/dev/shm", W_OK) == 0 ? "/dev/shm" : getenv("TMPDIR");
        snprintf(scratch_dir, sizeof scratch_dir, "%s/tg_fuzz_ckpt_XXXXXX", base ? base : "/tmp");
        if (!mkdtemp(scratch_dir))
            abort();
        snprintf(scratch_file, sizeof scratch_file, "%s/c.safetensors", scratch_dir);
        atexit(remove_scratch);
    }
    return scratch_file;
}

/* Saves c's tensors and metadata and reads them back: everything must survive unchanged. The
 * saver refuses empty tensor names (the reader takes them), so such checkpoints are skipped. */
static void round_trip(const tg_checkpoint *c, const tg_ckpt_entry *entries, int n)
{
    for (int i = 0; i < n; i++)
        if (entries[i].name[0] == '\0')
            return;
    int m = tg_checkpoint_meta_count(c), k = 0;
    const char **keys = calloc((size_t)m + 1, sizeof *keys);
    const char **values = calloc((size_t)m + 1, sizeof *values);
    for (int i = 0; i < m; i++) {
        if (tg_checkpoint_meta_at(c, i, &keys[k], &values[k]) != 0)
            abort();
        if (strcmp(keys[k], TG_CKPT_CRC_KEY) != 0) /* the saver writes its own */
            k++;
    }
    const char *path = scratch_path();
    tg_checkpoint *back;
    if (tg_checkpoint_save(path, entries, n, keys, values, k) != 0 ||
        tg_checkpoint_open(path, &back) != 0 || tg_checkpoint_count(back) != n ||
        tg_checkpoint_meta_count(back) != k + 1)
        abort();
    for (int i = 0; i < n; i++) {
        tg_ckpt_entry e;
        if (tg_checkpoint_tensor(back, i, &e) != 0 || strcmp(e.name, entries[i].name) != 0 ||
            e.dtype != entries[i].dtype || e.ndim != entries[i].ndim ||
            memcmp(e.shape, entries[i].shape, sizeof e.shape[0] * (size_t)e.ndim) != 0 ||
            memcmp(e.data, entries[i].data, tensor_bytes(&e)) != 0)
            abort();
    }
    for (int i = 0; i < k; i++) {
        const char *key, *value;
        if (tg_checkpoint_meta_at(back, i, &key, &value) != 0 || strcmp(key, keys[i]) != 0 ||
            strcmp(value, values[i]) != 0)
            abort();
    }
    tg_checkpoint_free(back);
    free(keys);
    free(values);
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

    int m = tg_checkpoint_meta_count(c);
    for (int i = 0; i < m; i++) {
        const char *key, *value;
        if (tg_checkpoint_meta_at(c, i, &key, &value) != 0 || tg_checkpoint_meta(c, key) != value)
            abort();
    }
    round_trip(c, entries, n);
    free(entries);
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
