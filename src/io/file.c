/* Whole-file reads with errors that name the path and say what the system said. */
#include "file.h"

#include "internal.h"

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

const char *tg_errno_str(int err, char *buf, size_t size)
{
    /* With _POSIX_C_SOURCE and no _GNU_SOURCE this is the XSI strerror_r, which fills buf. */
    if (strerror_r(err, buf, size) != 0)
        snprintf(buf, size, "error %d", err);
    return buf;
}

int tg_read_file(const char *path, uint8_t **buf, size_t *len)
{
    char why[128];
    int fd = open(path, O_RDONLY);
    if (fd < 0)
        return tg_fail(TG_ERR_IO, "%s: cannot open: %s", path,
                       tg_errno_str(errno, why, sizeof why));
    struct stat st;
    if (fstat(fd, &st) != 0) {
        int err = errno;
        close(fd);
        return tg_fail(TG_ERR_IO, "%s: cannot stat: %s", path,
                       tg_errno_str(err, why, sizeof why));
    }
    if (!S_ISREG(st.st_mode)) {
        close(fd);
        return tg_fail(TG_ERR_IO, "%s: not a regular file", path);
    }
    /* The size is a hint: read until end of file so a file that changes size is still read
     * consistently (a reader that trusts st_size could return a torn result). */
    size_t cap = st.st_size > 0 ? (size_t)st.st_size + 1 : 4096, used = 0;
    uint8_t *data = malloc(cap);
    if (!data) {
        close(fd);
        return tg_fail(TG_ERR_NOMEM, "%s: cannot allocate %zu bytes to read it", path, cap);
    }
    for (;;) {
        if (used == cap) {
            size_t new_cap = cap * 2;
            uint8_t *bigger = new_cap > cap ? realloc(data, new_cap) : NULL;
            if (!bigger) {
                free(data);
                close(fd);
                return tg_fail(TG_ERR_NOMEM, "%s: cannot allocate memory to read it", path);
            }
            data = bigger;
            cap = new_cap;
        }
        ssize_t got = read(fd, data + used, cap - used);
        if (got < 0 && errno == EINTR)
            continue;
        if (got < 0) {
            int err = errno;
            free(data);
            close(fd);
            return tg_fail(TG_ERR_IO, "%s: read failed: %s", path,
                           tg_errno_str(err, why, sizeof why));
        }
        if (got == 0)
            break;
        used += (size_t)got;
    }
    close(fd);
    *buf = data;
    *len = used;
    return 0;
}
