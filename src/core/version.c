/* The version of the library a program runs with; TG_VERSION_* in tapegrad.h is the version
 * it was compiled against. */
#include "tapegrad.h"

#define TG_STR_(x) #x
#define TG_STR(x) TG_STR_(x)

const char *tg_version(void)
{
    return TG_STR(TG_VERSION_MAJOR) "." TG_STR(TG_VERSION_MINOR) "." TG_STR(TG_VERSION_PATCH);
}
