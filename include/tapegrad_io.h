/* tapegrad I/O: IDX data files (MNIST), a resumable shuffling batch iterator, and checkpoints
 * in the safetensors layout.
 *
 * Ownership, one sentence per object:
 *   - tg_idx:            the caller owns the struct; its data is freed with tg_idx_free.
 *   - tg_mnist:          the caller owns the struct; its arrays are freed with tg_mnist_free.
 *   - tg_batches:        the caller owns it (tg_batches_new / tg_batches_free).
 *   - tg_batches_state:  a plain value the caller owns; no heap memory.
 *   - tg_ckpt_entry:     the caller owns it and the buffer its data points to; the library only
 *                        reads (save) or fills (load) that buffer.
 *   - tg_checkpoint:     the caller owns it (tg_checkpoint_parse / _open, tg_checkpoint_free);
 *                        names, metadata strings and tensor data it hands out live as long as it.
 *
 * Errors follow tapegrad.h: functions return 0 (or a count) on success and a negative
 * tg_status on failure, with the reason in tg_last_error(); a failed call leaves the caller's
 * outputs untouched. Malformed files give TG_ERR_FORMAT, system errors TG_ERR_IO.
 */
#ifndef TAPEGRAD_IO_H
#define TAPEGRAD_IO_H

#include "tapegrad.h"

#ifdef __cplusplus
extern "C" {
#endif

/* ---- IDX files ------------------------------------------------------------------------- */
/* An IDX array of unsigned bytes (type code 0x08), row-major. */
typedef struct {
    int ndim;
    int64_t dims[TG_MAX_DIMS];
    uint8_t *data; /* size bytes */
    size_t size;   /* the product of dims */
} tg_idx;

/* Parses an IDX file held in memory, raw or gzip-compressed (told apart by the gzip magic
 * bytes 1f 8b). The file must be exactly as long as its header says. */
int tg_idx_parse(const void *buf, size_t len, tg_idx *out);
/* The same from a file; messages name the path. */
int tg_idx_load(const char *path, tg_idx *out);
void tg_idx_free(tg_idx *idx); /* NULL is fine; leaves the struct empty */

/* ---- MNIST ----------------------------------------------------------------------------- */
typedef struct {
    int64_t count;   /* examples */
    int rows, cols;  /* 28 x 28 */
    uint8_t *images; /* count * rows * cols pixels, 0..255 */
    uint8_t *labels; /* count labels, 0..9 */
} tg_mnist;

/* Loads DIR/SPLIT-images-idx3-ubyte and DIR/SPLIT-labels-idx1-ubyte, or their .gz versions when
 * the raw files are missing. split is "train" or "t10k". Checks the counts agree, the images
 * are 28 x 28 and the labels lie in 0..9. scripts/fetch_mnist.sh fetches the files. */
int tg_mnist_load(const char *dir, const char *split, tg_mnist *out);
void tg_mnist_free(tg_mnist *m); /* NULL is fine */

/* Copies count examples, chosen by indices, into caller buffers: images gets
 * count * rows * cols floats (pixel / 255 - mean) / std, labels gets count class indices as
 * floats. Either output may be NULL. */
int tg_mnist_gather(const tg_mnist *m, const int64_t *indices, int64_t count, float mean,
                    float std, float *images, float *labels);

/* ---- batches --------------------------------------------------------------------------- */
/* Shuffled mini-batches of example indices 0..n-1. Each epoch is a Fisher-Yates shuffle of
 * 0..n-1 drawn from one generator seeded once, so the order depends only on the seed. */
typedef struct tg_batches tg_batches;

/* Everything that decides what comes next: restoring it makes a resumed run see exactly the
 * batches the interrupted run would have seen. */
typedef struct {
    int64_t n;          /* examples */
    int64_t batch_size;
    int drop_last;      /* 1: an epoch's last partial batch is skipped */
    uint64_t seed;
    int64_t epoch;      /* the epoch being served, from 0 */
    int64_t position;   /* examples of this epoch already handed out */
    uint64_t rng[4];    /* the generator before this epoch's shuffle */
} tg_batches_state;

tg_batches *tg_batches_new(int64_t n, int64_t batch_size, uint64_t seed, bool drop_last);
void tg_batches_free(tg_batches *b); /* NULL is fine */

/* The next batch: sets *indices to its example indices (iterator memory, valid until the next
 * call) and returns how many there are. Returns 0 once the epoch is over; the iterator then
 * stands at the start of the next epoch, shuffled anew. Negative on error. */
int64_t tg_batches_next(tg_batches *b, const int64_t **indices);
int64_t tg_batches_epoch(const tg_batches *b);
/* Batches per epoch. */
int64_t tg_batches_count(const tg_batches *b);

int tg_batches_get_state(const tg_batches *b, tg_batches_state *state);
/* The state must come from an iterator over the same n, batch size and drop_last. */
int tg_batches_set_state(tg_batches *b, const tg_batches_state *state);
/* The state as one line of text (for a checkpoint's metadata) and back. to_string returns the
 * length it needs, like snprintf; from_string validates every field. */
int tg_batches_state_to_string(const tg_batches_state *state, char *buf, size_t size);
int tg_batches_state_from_string(const char *text, tg_batches_state *state);

/* ---- checkpoints ----------------------------------------------------------------------- */
/* The file is in the safetensors layout: an 8-byte little-endian header length N, N bytes of
 * JSON naming each tensor's dtype ("F32" / "F64"), shape and [begin, end) offsets into the
 * data section, plus "__metadata__" (string to string), then the little-endian data. save
 * adds the CRC-32 of the data section to the metadata under TG_CKPT_CRC_KEY, and every reader
 * here checks it when present. */
#define TG_CKPT_CRC_KEY "tapegrad.crc32"

typedef struct {
    const char *name;
    tg_dtype dtype;
    int ndim;
    int64_t shape[TG_MAX_DIMS];
    void *data; /* numel elements of dtype, row-major */
} tg_ckpt_entry;

/* Writes the entries and metadata (n_meta key/value pairs of UTF-8 strings; the key
 * TG_CKPT_CRC_KEY is the library's) to path, crash-safe: a temporary file in the same
 * directory is written, fsync'ed and renamed over path, then the directory is fsync'ed, so path
 * always holds either the old checkpoint or the whole new one. Temporary files left by killed
 * writers are removed. Tensor names must be unique, non-empty UTF-8 and not "__metadata__". */
int tg_checkpoint_save(const char *path, const tg_ckpt_entry *entries, int n,
                       const char *const *meta_keys, const char *const *meta_values, int n_meta);
/* Fills each entry's buffer with the tensor of the same name. If any name is missing or has
 * another dtype or shape, nothing is written to any buffer. Extra tensors in the file are
 * fine. */
int tg_checkpoint_load(const char *path, tg_ckpt_entry *entries, int n);

typedef struct tg_checkpoint tg_checkpoint;
/* Validates a whole checkpoint held in memory (header, offsets, checksum) and copies it. */
int tg_checkpoint_parse(const void *buf, size_t len, tg_checkpoint **out);
int tg_checkpoint_open(const char *path, tg_checkpoint **out);
void tg_checkpoint_free(tg_checkpoint *c); /* NULL is fine */

int tg_checkpoint_count(const tg_checkpoint *c); /* tensors, in file order */
/* Describes tensor i: name, dtype, shape and data point into c (the data is aligned for the
 * dtype; treat it as read-only). */
int tg_checkpoint_tensor(const tg_checkpoint *c, int i, tg_ckpt_entry *out);
int tg_checkpoint_find(const tg_checkpoint *c, const char *name); /* index, or -1 */
/* Copies tensors by name into the entries' buffers, all or nothing (as tg_checkpoint_load). */
int tg_checkpoint_read(const tg_checkpoint *c, tg_ckpt_entry *entries, int n);
int tg_checkpoint_meta_count(const tg_checkpoint *c);
int tg_checkpoint_meta_at(const tg_checkpoint *c, int i, const char **key, const char **value);
const char *tg_checkpoint_meta(const tg_checkpoint *c, const char *key); /* NULL if absent */

#ifdef __cplusplus
}
#endif
#endif
