/** @file tapegrad_io.h
 * tapegrad I/O: IDX data files (MNIST), a resumable shuffling batch iterator, and checkpoints
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
/** An IDX array of unsigned bytes (type code 0x08), row-major. */
typedef struct {
    int ndim;                  /**< 1 to TG_MAX_DIMS */
    int64_t dims[TG_MAX_DIMS]; /**< the sizes, ndim of them */
    uint8_t *data;             /**< size bytes */
    size_t size;               /**< the product of dims */
} tg_idx;

/** Parses an IDX file held in memory, raw or gzip-compressed (told apart by the gzip magic
 * bytes 1f 8b). The file must be exactly as long as its header says. */
TG_API int tg_idx_parse(const void *buf, size_t len, tg_idx *out);
/** The same as tg_idx_parse from a file; messages name the path. */
TG_API int tg_idx_load(const char *path, tg_idx *out);
/** Frees the data; NULL is fine; leaves the struct empty. */
TG_API void tg_idx_free(tg_idx *idx);

/* ---- MNIST ----------------------------------------------------------------------------- */
/** A split of MNIST in memory. */
typedef struct {
    int64_t count;   /**< examples */
    int rows;        /**< 28 */
    int cols;        /**< 28 */
    uint8_t *images; /**< count * rows * cols pixels, 0..255 */
    uint8_t *labels; /**< count labels, 0..9 */
} tg_mnist;

/** Loads DIR/SPLIT-images-idx3-ubyte and DIR/SPLIT-labels-idx1-ubyte, or their .gz versions when
 * the raw files are missing. split is "train" or "t10k". Checks the counts agree, the images
 * are 28 x 28 and the labels lie in 0..9. scripts/fetch_mnist.sh fetches the files. */
TG_API int tg_mnist_load(const char *dir, const char *split, tg_mnist *out);
/** Frees the arrays; NULL is fine. */
TG_API void tg_mnist_free(tg_mnist *m);

/** Copies count examples, chosen by indices, into caller buffers: images gets
 * count * rows * cols floats (pixel / 255 - mean) / std, labels gets count class indices as
 * floats. Either output may be NULL. */
TG_API int tg_mnist_gather(const tg_mnist *m, const int64_t *indices, int64_t count, float mean,
                           float std, float *images, float *labels);

/* ---- batches --------------------------------------------------------------------------- */
/** Shuffled mini-batches of example indices 0..n-1. Each epoch is a Fisher-Yates shuffle of
 * 0..n-1 drawn from one generator seeded once, so the order depends only on the seed. */
typedef struct tg_batches tg_batches;

/** Everything that decides what comes next: restoring it makes a resumed run see exactly the
 * batches the interrupted run would have seen. */
typedef struct {
    int64_t n;          /**< examples */
    int64_t batch_size; /**< examples per batch */
    int drop_last;      /**< 1: an epoch's last partial batch is skipped */
    uint64_t seed;      /**< the seed the iterator was created with */
    int64_t epoch;      /**< the epoch being served, from 0 */
    int64_t position;   /**< examples of this epoch already handed out */
    uint64_t rng[4];    /**< the generator before this epoch's shuffle */
} tg_batches_state;

/** An iterator over n examples in batches of batch_size, shuffled from seed. */
TG_API tg_batches *tg_batches_new(int64_t n, int64_t batch_size, uint64_t seed, bool drop_last);
/** Frees the iterator; NULL is fine. */
TG_API void tg_batches_free(tg_batches *b);

/** The next batch: sets *indices to its example indices (iterator memory, valid until the next
 * call) and returns how many there are. Returns 0 once the epoch is over; the iterator then
 * stands at the start of the next epoch, shuffled anew. Negative on error. */
TG_API int64_t tg_batches_next(tg_batches *b, const int64_t **indices);
/** The epoch being served, from 0. */
TG_API int64_t tg_batches_epoch(const tg_batches *b);
/** Batches per epoch. */
TG_API int64_t tg_batches_count(const tg_batches *b);

/** Copies out everything that decides what comes next (see tg_batches_state). */
TG_API int tg_batches_get_state(const tg_batches *b, tg_batches_state *state);
/** Restores a state. The state must come from an iterator over the same n, batch size and
 * drop_last. */
TG_API int tg_batches_set_state(tg_batches *b, const tg_batches_state *state);
/** The state as one line of text (for a checkpoint's metadata). Returns the length it needs,
 * like snprintf. */
TG_API int tg_batches_state_to_string(const tg_batches_state *state, char *buf, size_t size);
/** The state back from tg_batches_state_to_string's text; validates every field. */
TG_API int tg_batches_state_from_string(const char *text, tg_batches_state *state);

/* ---- checkpoints ----------------------------------------------------------------------- */
/** The metadata key of a checkpoint's checksum. The file is in the safetensors layout: an
 * 8-byte little-endian header length N, N bytes of JSON naming each tensor's dtype ("F32" /
 * "F64"), shape and [begin, end) offsets into the data section, plus "__metadata__" (string
 * to string), then the little-endian data. save adds the CRC-32 of the data section to the
 * metadata under TG_CKPT_CRC_KEY, and every reader here checks it when present. */
#define TG_CKPT_CRC_KEY "tapegrad.crc32"

/** A tensor to save, or a buffer to load into, by name. */
typedef struct {
    const char *name;            /**< unique in the checkpoint */
    tg_dtype dtype;              /**< element type */
    int ndim;                    /**< number of axes */
    int64_t shape[TG_MAX_DIMS];  /**< sizes, ndim of them */
    void *data;                  /**< numel elements of dtype, row-major */
} tg_ckpt_entry;

/** Writes the entries and metadata (n_meta key/value pairs of UTF-8 strings; the key
 * TG_CKPT_CRC_KEY is the library's) to path, crash-safe: a temporary file in the same
 * directory is written, fsync'ed and renamed over path, then the directory is fsync'ed, so path
 * always holds either the old checkpoint or the whole new one. Temporary files left by killed
 * writers are removed. Tensor names must be unique, non-empty UTF-8 and not "__metadata__". */
TG_API int tg_checkpoint_save(const char *path, const tg_ckpt_entry *entries, int n,
                              const char *const *meta_keys, const char *const *meta_values,
                              int n_meta);
/** Fills each entry's buffer with the tensor of the same name. If any name is missing or has
 * another dtype or shape, nothing is written to any buffer. Extra tensors in the file are
 * fine. */
TG_API int tg_checkpoint_load(const char *path, tg_ckpt_entry *entries, int n);

/** A checkpoint read and validated in memory. */
typedef struct tg_checkpoint tg_checkpoint;
/** Validates a whole checkpoint held in memory (header, offsets, checksum) and copies it. */
TG_API int tg_checkpoint_parse(const void *buf, size_t len, tg_checkpoint **out);
/** The same as tg_checkpoint_parse from a file; messages name the path. */
TG_API int tg_checkpoint_open(const char *path, tg_checkpoint **out);
/** Frees the checkpoint; NULL is fine. */
TG_API void tg_checkpoint_free(tg_checkpoint *c);

/** Tensors, in file order. */
TG_API int tg_checkpoint_count(const tg_checkpoint *c);
/** Describes tensor i: name, dtype, shape and data point into c (the data is aligned for the
 * dtype; treat it as read-only). */
TG_API int tg_checkpoint_tensor(const tg_checkpoint *c, int i, tg_ckpt_entry *out);
/** The index of the tensor named name, or -1. */
TG_API int tg_checkpoint_find(const tg_checkpoint *c, const char *name);
/** Copies tensors by name into the entries' buffers, all or nothing (as tg_checkpoint_load). */
TG_API int tg_checkpoint_read(const tg_checkpoint *c, tg_ckpt_entry *entries, int n);
/** Metadata entries, in file order. */
TG_API int tg_checkpoint_meta_count(const tg_checkpoint *c);
/** Metadata entry i: points *key and *value into c. */
TG_API int tg_checkpoint_meta_at(const tg_checkpoint *c, int i, const char **key,
                                 const char **value);
/** The metadata value of key; NULL if absent. */
TG_API const char *tg_checkpoint_meta(const tg_checkpoint *c, const char *key);

#ifdef __cplusplus
}
#endif
#endif
