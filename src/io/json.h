/* A small strict JSON reader and writer for checkpoint headers.
 *
 * Reading accepts exactly RFC 8259 JSON with two narrowings a header never needs: numbers must
 * be integers that fit in int64, and strings may not contain U+0000 (they become C strings).
 * Objects with a repeated key, invalid UTF-8, nesting deeper than TG_JSON_MAX_DEPTH and any
 * trailing garbage are rejected. A parsed tree owns all its memory; tg_json_free releases it.
 */
#ifndef TG_IO_JSON_H
#define TG_IO_JSON_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#define TG_JSON_MAX_DEPTH 32

typedef enum {
    TG_JSON_NULL,
    TG_JSON_BOOL,
    TG_JSON_INT,
    TG_JSON_STRING,
    TG_JSON_ARRAY,
    TG_JSON_OBJECT,
} tg_json_type;

typedef struct tg_json tg_json;
struct tg_json {
    tg_json_type type;
    bool boolean;
    int64_t integer;
    char *string;   /* TG_JSON_STRING: NUL-terminated UTF-8 */
    size_t count;   /* array items or object members */
    tg_json *items; /* array items, or object member values */
    char **keys;    /* object member names, parallel to items */
};

/* Parses text[0, len). On failure returns a negative tg_status with an error that starts with
 * `what` and gives the byte offset. */
int tg_json_parse(const char *text, size_t len, const char *what, tg_json *out);
void tg_json_free(tg_json *v);
/* The member named key of an object, or NULL. */
const tg_json *tg_json_get(const tg_json *object, const char *key);

/* A growable byte string for writing JSON. After a failed append, ok is false and the later
 * appends do nothing, so a writer checks once at the end. */
typedef struct {
    char *data;
    size_t len, cap;
    bool ok;
} tg_strbuf;

void tg_strbuf_init(tg_strbuf *sb);
void tg_strbuf_free(tg_strbuf *sb);
void tg_strbuf_append(tg_strbuf *sb, const char *bytes, size_t n);
void tg_strbuf_printf(tg_strbuf *sb, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
/* Appends s as a quoted JSON string. */
void tg_strbuf_json_string(tg_strbuf *sb, const char *s);

/* Whether s[0, n) is well-formed UTF-8 (no overlongs, surrogates or code points past U+10FFFF). */
bool tg_utf8_valid(const char *s, size_t n);

#endif
