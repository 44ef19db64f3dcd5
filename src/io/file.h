/* Whole-file reads and system-error text shared by the IDX reader and checkpoints. */
#ifndef TG_IO_FILE_H
#define TG_IO_FILE_H

#include <stddef.h>
#include <stdint.h>

/* Reads the regular file at path into a malloc'ed buffer (*buf, *len; *buf is never NULL on
 * success, even for an empty file). Fails with TG_ERR_IO naming the path. */
int tg_read_file(const char *path, uint8_t **buf, size_t *len);

/* strerror(err), without the thread-safety problems of strerror. */
const char *tg_errno_str(int err, char *buf, size_t size);

#endif
