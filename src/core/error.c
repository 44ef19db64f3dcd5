/* The thread's last error: a code and a message naming the op and the shapes involved. */
#include "internal.h"

#include <stdio.h>
#include <string.h>

static _Thread_local tg_status last_code = TG_OK;
static _Thread_local char last_message[512];
/* The first failure of a chain: a NULL input quotes this, not the whole chain of NULLs. */
static _Thread_local char root_message[512];
static _Thread_local bool propagating;

tg_status tg_fail(tg_status code, const char *fmt, ...)
{
    char message[sizeof last_message];
    va_list args;
    va_start(args, fmt);
    vsnprintf(message, sizeof message, fmt, args);
    va_end(args);
    memcpy(last_message, message, sizeof last_message);
    if (!propagating)
        memcpy(root_message, message, sizeof root_message);
    last_code = code;
    return code;
}

const char *tg_last_error(void) { return last_code == TG_OK ? "" : last_message; }
tg_status tg_last_error_code(void) { return last_code; }

void tg_clear_error(void)
{
    last_code = TG_OK;
    last_message[0] = '\0';
    root_message[0] = '\0';
}

const char *tg_dtype_name(tg_dtype dt)
{
    switch (dt) {
    case TG_F32: return "f32";
    case TG_F64: return "f64";
    }
    return "unknown dtype";
}

const char *tg_shape_str(char *buf, size_t size, int ndim, const int64_t *shape)
{
    size_t used = 0;
    used += (size_t)snprintf(buf, size, "[");
    for (int i = 0; i < ndim && used < size; i++)
        used += (size_t)snprintf(buf + used, size - used, "%s%lld", i ? ", " : "",
                                 (long long)shape[i]);
    if (used < size)
        snprintf(buf + used, size - used, "]");
    return buf;
}

tg_status tg_fail_null_input(const char *op, int index)
{
    if (last_code == TG_OK)
        return tg_fail(TG_ERR_NULL, "%s: input %d is NULL", op, index);
    char earlier[sizeof root_message];
    memcpy(earlier, root_message, sizeof earlier);
    propagating = true;
    tg_fail(TG_ERR_NULL, "%s: input %d is NULL (after: %s)", op, index, earlier);
    propagating = false;
    return TG_ERR_NULL;
}
