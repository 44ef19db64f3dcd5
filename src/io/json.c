/* The strict JSON reader and the string builder behind checkpoint headers. Headers come from
 * files, so everything here assumes hostile input: every read is bounds-checked, nesting is
 * capped, and duplicate keys are found by sorting rather than a quadratic scan. */
#include "json.h"

#include "internal.h"

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* ---- UTF-8 --------------------------------------------------------------------------------- */

/* Length of the well-formed UTF-8 sequence at s (n bytes available), or 0 if there is none. */
static size_t utf8_sequence(const unsigned char *s, size_t n)
{
    if (n == 0)
        return 0;
    unsigned char c = s[0];
    if (c < 0x80)
        return 1;
    size_t len;
    uint32_t cp, min;
    if ((c & 0xE0) == 0xC0) {
        len = 2, cp = c & 0x1F, min = 0x80;
    } else if ((c & 0xF0) == 0xE0) {
        len = 3, cp = c & 0x0F, min = 0x800;
    } else if ((c & 0xF8) == 0xF0) {
        len = 4, cp = c & 0x07, min = 0x10000;
    } else {
        return 0;
    }
    if (n < len)
        return 0;
    for (size_t i = 1; i < len; i++) {
        if ((s[i] & 0xC0) != 0x80)
            return 0;
        cp = (cp << 6) | (s[i] & 0x3F);
    }
    if (cp < min || cp > 0x10FFFF || (cp >= 0xD800 && cp <= 0xDFFF))
        return 0;
    return len;
}

bool tg_utf8_valid(const char *s, size_t n)
{
    const unsigned char *u = (const unsigned char *)s;
    for (size_t i = 0; i < n;) {
        size_t len = utf8_sequence(u + i, n - i);
        if (len == 0)
            return false;
        i += len;
    }
    return true;
}

/* ---- string builder ------------------------------------------------------------------------ */

void tg_strbuf_init(tg_strbuf *sb)
{
    sb->data = NULL;
    sb->len = sb->cap = 0;
    sb->ok = true;
}

void tg_strbuf_free(tg_strbuf *sb)
{
    free(sb->data);
    tg_strbuf_init(sb);
}

/* Makes room for n more bytes plus a terminating NUL. */
static bool strbuf_reserve(tg_strbuf *sb, size_t n)
{
    if (!sb->ok)
        return false;
    if (n > SIZE_MAX - sb->len - 1) {
        sb->ok = false;
        return false;
    }
    size_t need = sb->len + n + 1;
    if (need <= sb->cap)
        return true;
    size_t cap = sb->cap ? sb->cap : 64;
    while (cap < need)
        cap = cap > SIZE_MAX / 2 ? need : cap * 2;
    char *data = realloc(sb->data, cap);
    if (!data) {
        sb->ok = false;
        return false;
    }
    sb->data = data;
    sb->cap = cap;
    return true;
}

void tg_strbuf_append(tg_strbuf *sb, const char *bytes, size_t n)
{
    if (!strbuf_reserve(sb, n))
        return;
    memcpy(sb->data + sb->len, bytes, n);
    sb->len += n;
    sb->data[sb->len] = '\0';
}

void tg_strbuf_printf(tg_strbuf *sb, const char *fmt, ...)
{
    va_list args;
    va_start(args, fmt);
    int need = vsnprintf(NULL, 0, fmt, args);
    va_end(args);
    if (need < 0) {
        sb->ok = false;
        return;
    }
    if (!strbuf_reserve(sb, (size_t)need))
        return;
    va_start(args, fmt);
    vsnprintf(sb->data + sb->len, (size_t)need + 1, fmt, args);
    va_end(args);
    sb->len += (size_t)need;
}

void tg_strbuf_json_string(tg_strbuf *sb, const char *s)
{
    tg_strbuf_append(sb, "\"", 1);
    for (const char *p = s; *p; p++) {
        unsigned char c = (unsigned char)*p;
        if (c == '"' || c == '\\') {
            char esc[2] = {'\\', (char)c};
            tg_strbuf_append(sb, esc, 2);
        } else if (c < 0x20) {
            tg_strbuf_printf(sb, "\\u%04x", c);
        } else {
            tg_strbuf_append(sb, p, 1);
        }
    }
    tg_strbuf_append(sb, "\"", 1);
}

/* ---- parser ---------------------------------------------------------------------------------- */

typedef struct {
    const char *s;
    size_t len, pos;
    const char *what;
} parser;

static int fail_at(const parser *p, const char *msg)
{
    return tg_fail(TG_ERR_FORMAT, "%s: invalid JSON at byte %zu: %s", p->what, p->pos, msg);
}

static int fail_nomem(const parser *p)
{
    return tg_fail(TG_ERR_NOMEM, "%s: out of memory while parsing JSON", p->what);
}

static void skip_space(parser *p)
{
    while (p->pos < p->len) {
        char c = p->s[p->pos];
        if (c != ' ' && c != '\t' && c != '\n' && c != '\r')
            break;
        p->pos++;
    }
}

static int peek(const parser *p) { return p->pos < p->len ? (unsigned char)p->s[p->pos] : -1; }

static int parse_value(parser *p, tg_json *v, int depth);

static int hex4(parser *p, uint32_t *out)
{
    if (p->len - p->pos < 4)
        return fail_at(p, "\\u escape needs four hex digits");
    uint32_t x = 0;
    for (int i = 0; i < 4; i++) {
        char c = p->s[p->pos + (size_t)i];
        int d = c >= '0' && c <= '9'   ? c - '0'
                : c >= 'a' && c <= 'f' ? c - 'a' + 10
                : c >= 'A' && c <= 'F' ? c - 'A' + 10
                                       : -1;
        if (d < 0)
            return fail_at(p, "\\u escape needs four hex digits");
        x = x << 4 | (uint32_t)d;
    }
    p->pos += 4;
    *out = x;
    return 0;
}

static void put_utf8(tg_strbuf *sb, uint32_t cp)
{
    char b[4];
    size_t n;
    if (cp < 0x80) {
        b[0] = (char)cp, n = 1;
    } else if (cp < 0x800) {
        b[0] = (char)(0xC0 | cp >> 6), b[1] = (char)(0x80 | (cp & 0x3F)), n = 2;
    } else if (cp < 0x10000) {
        b[0] = (char)(0xE0 | cp >> 12), b[1] = (char)(0x80 | (cp >> 6 & 0x3F));
        b[2] = (char)(0x80 | (cp & 0x3F)), n = 3;
    } else {
        b[0] = (char)(0xF0 | cp >> 18), b[1] = (char)(0x80 | (cp >> 12 & 0x3F));
        b[2] = (char)(0x80 | (cp >> 6 & 0x3F)), b[3] = (char)(0x80 | (cp & 0x3F)), n = 4;
    }
    tg_strbuf_append(sb, b, n);
}

/* The escape after a backslash (p->pos is past the backslash). */
static int parse_escape(parser *p, tg_strbuf *sb)
{
    if (p->pos >= p->len)
        return fail_at(p, "unterminated string");
    char c = p->s[p->pos++];
    const char *plain = strchr("\"\\/bfnrt", c);
    if (c != '\0' && plain) {
        static const char out[] = "\"\\/\b\f\n\r\t";
        tg_strbuf_append(sb, &out[plain - "\"\\/bfnrt"], 1);
        return 0;
    }
    if (c != 'u') {
        p->pos--;
        return fail_at(p, "unknown escape in string");
    }
    uint32_t cp;
    int rc = hex4(p, &cp);
    if (rc)
        return rc;
    if (cp >= 0xDC00 && cp <= 0xDFFF)
        return fail_at(p, "lone low surrogate in \\u escape");
    if (cp >= 0xD800 && cp <= 0xDBFF) {
        if (p->len - p->pos < 2 || p->s[p->pos] != '\\' || p->s[p->pos + 1] != 'u')
            return fail_at(p, "high surrogate not followed by a low surrogate");
        p->pos += 2;
        uint32_t low;
        rc = hex4(p, &low);
        if (rc)
            return rc;
        if (low < 0xDC00 || low > 0xDFFF)
            return fail_at(p, "high surrogate not followed by a low surrogate");
        cp = 0x10000 + ((cp - 0xD800) << 10) + (low - 0xDC00);
    }
    if (cp == 0)
        return fail_at(p, "\\u0000 is not allowed in strings here");
    put_utf8(sb, cp);
    return 0;
}

/* A string (p->pos at the opening quote); *out is malloc'ed. */
static int parse_string(parser *p, char **out)
{
    p->pos++;
    tg_strbuf sb;
    tg_strbuf_init(&sb);
    tg_strbuf_append(&sb, "", 0); /* an empty string still gets a buffer */
    for (;;) {
        if (p->pos >= p->len) {
            tg_strbuf_free(&sb);
            return fail_at(p, "unterminated string");
        }
        unsigned char c = (unsigned char)p->s[p->pos];
        int rc = 0;
        if (c == '"') {
            p->pos++;
            break;
        } else if (c < 0x20) {
            rc = fail_at(p, "control character in string");
        } else if (c == '\\') {
            p->pos++;
            rc = parse_escape(p, &sb);
        } else {
            size_t n = utf8_sequence((const unsigned char *)p->s + p->pos, p->len - p->pos);
            if (n == 0) {
                rc = fail_at(p, "invalid UTF-8 in string");
            } else {
                tg_strbuf_append(&sb, p->s + p->pos, n);
                p->pos += n;
            }
        }
        if (rc) {
            tg_strbuf_free(&sb);
            return rc;
        }
    }
    if (!sb.ok) {
        tg_strbuf_free(&sb);
        return fail_nomem(p);
    }
    *out = sb.data;
    return 0;
}

static int parse_number(parser *p, tg_json *v)
{
    bool negative = false;
    if (peek(p) == '-') {
        negative = true;
        p->pos++;
    }
    int c = peek(p);
    if (c < '0' || c > '9')
        return fail_at(p, "expected a digit");
    /* The magnitude may reach 2^63 only when negative. */
    uint64_t limit = negative ? (uint64_t)INT64_MAX + 1 : (uint64_t)INT64_MAX;
    uint64_t x = 0;
    if (c == '0') {
        p->pos++;
        c = peek(p);
        if (c >= '0' && c <= '9')
            return fail_at(p, "leading zero in number");
    } else {
        while ((c = peek(p)) >= '0' && c <= '9') {
            uint64_t d = (uint64_t)(c - '0');
            if (x > (limit - d) / 10)
                return fail_at(p, "integer does not fit in 64 bits");
            x = x * 10 + d;
            p->pos++;
        }
    }
    if (c == '.' || c == 'e' || c == 'E')
        return fail_at(p, "only integers are accepted here");
    v->type = TG_JSON_INT;
    v->integer = negative ? (x == (uint64_t)INT64_MAX + 1 ? INT64_MIN : -(int64_t)x) : (int64_t)x;
    return 0;
}

static int parse_literal(parser *p, tg_json *v)
{
    static const struct {
        const char *text;
        tg_json_type type;
        bool value;
    } literals[] = {{"true", TG_JSON_BOOL, true}, {"false", TG_JSON_BOOL, false},
                    {"null", TG_JSON_NULL, false}};
    for (size_t i = 0; i < sizeof literals / sizeof literals[0]; i++) {
        size_t n = strlen(literals[i].text);
        if (p->len - p->pos >= n && memcmp(p->s + p->pos, literals[i].text, n) == 0) {
            p->pos += n;
            v->type = literals[i].type;
            v->boolean = literals[i].value;
            return 0;
        }
    }
    return fail_at(p, "unexpected character");
}

/* Room for one more item (and key) in a container being built. */
static bool grow_items(tg_json *v, size_t *cap, bool with_keys)
{
    if (v->count < *cap)
        return true;
    size_t new_cap = *cap ? *cap * 2 : 4;
    tg_json *items = realloc(v->items, new_cap * sizeof *items);
    if (!items)
        return false;
    v->items = items;
    if (with_keys) {
        char **keys = realloc(v->keys, new_cap * sizeof *keys);
        if (!keys)
            return false;
        v->keys = keys;
    }
    *cap = new_cap;
    return true;
}

static int parse_array(parser *p, tg_json *v, int depth)
{
    v->type = TG_JSON_ARRAY;
    p->pos++;
    skip_space(p);
    if (peek(p) == ']') {
        p->pos++;
        return 0;
    }
    size_t cap = 0;
    for (;;) {
        if (!grow_items(v, &cap, false))
            return fail_nomem(p);
        tg_json *item = &v->items[v->count];
        memset(item, 0, sizeof *item);
        skip_space(p);
        int rc = parse_value(p, item, depth + 1);
        if (rc) {
            tg_json_free(item);
            return rc;
        }
        v->count++;
        skip_space(p);
        int c = peek(p);
        p->pos += c >= 0;
        if (c == ']')
            return 0;
        if (c != ',') {
            p->pos -= c >= 0;
            return fail_at(p, "expected ',' or ']' in array");
        }
    }
}

static int compare_keys(const void *a, const void *b)
{
    return strcmp(*(char *const *)a, *(char *const *)b);
}

/* A repeated key makes a header ambiguous (two tensors of one name), so it is an error. */
static int check_unique_keys(parser *p, const tg_json *v, size_t start)
{
    if (v->count < 2)
        return 0;
    char **sorted = malloc(v->count * sizeof *sorted);
    if (!sorted)
        return fail_nomem(p);
    memcpy(sorted, v->keys, v->count * sizeof *sorted);
    qsort(sorted, v->count, sizeof *sorted, compare_keys);
    int rc = 0;
    for (size_t i = 1; i < v->count && rc == 0; i++) {
        if (strcmp(sorted[i - 1], sorted[i]) == 0)
            rc = tg_fail(TG_ERR_FORMAT, "%s: invalid JSON: the object at byte %zu has the key "
                         "\"%.100s\" twice", p->what, start, sorted[i]);
    }
    free(sorted);
    return rc;
}

static int parse_object(parser *p, tg_json *v, int depth)
{
    size_t start = p->pos;
    v->type = TG_JSON_OBJECT;
    p->pos++;
    skip_space(p);
    if (peek(p) == '}') {
        p->pos++;
        return 0;
    }
    size_t cap = 0;
    for (;;) {
        if (!grow_items(v, &cap, true))
            return fail_nomem(p);
        skip_space(p);
        if (peek(p) != '"')
            return fail_at(p, "expected a string key in object");
        char *key = NULL;
        int rc = parse_string(p, &key);
        if (rc)
            return rc;
        skip_space(p);
        if (peek(p) != ':') {
            free(key);
            return fail_at(p, "expected ':' after object key");
        }
        p->pos++;
        skip_space(p);
        tg_json *item = &v->items[v->count];
        memset(item, 0, sizeof *item);
        rc = parse_value(p, item, depth + 1);
        if (rc) {
            free(key);
            tg_json_free(item);
            return rc;
        }
        v->keys[v->count++] = key;
        skip_space(p);
        int c = peek(p);
        p->pos += c >= 0;
        if (c == '}')
            return check_unique_keys(p, v, start);
        if (c != ',') {
            p->pos -= c >= 0;
            return fail_at(p, "expected ',' or '}' in object");
        }
    }
}

static int parse_value(parser *p, tg_json *v, int depth)
{
    if (depth > TG_JSON_MAX_DEPTH)
        return fail_at(p, "nested too deeply");
    switch (peek(p)) {
    case -1: return fail_at(p, "unexpected end of input");
    case '{': return parse_object(p, v, depth);
    case '[': return parse_array(p, v, depth);
    case '"': v->type = TG_JSON_STRING; return parse_string(p, &v->string);
    case 't':
    case 'f':
    case 'n': return parse_literal(p, v);
    default: break;
    }
    int c = peek(p);
    if (c == '-' || (c >= '0' && c <= '9'))
        return parse_number(p, v);
    return fail_at(p, "unexpected character");
}

int tg_json_parse(const char *text, size_t len, const char *what, tg_json *out)
{
    if (!text || !out)
        return tg_fail(TG_ERR_NULL, "%s: JSON text or output is NULL", what ? what : "json");
    parser p = {text, len, 0, what ? what : "json"};
    tg_json v;
    memset(&v, 0, sizeof v);
    skip_space(&p);
    int rc = parse_value(&p, &v, 1);
    if (rc == 0) {
        skip_space(&p);
        if (p.pos != p.len)
            rc = fail_at(&p, "trailing characters after the JSON value");
    }
    if (rc) {
        tg_json_free(&v);
        return rc;
    }
    *out = v;
    return 0;
}

void tg_json_free(tg_json *v)
{
    if (!v)
        return;
    for (size_t i = 0; i < v->count; i++) {
        tg_json_free(&v->items[i]);
        if (v->keys)
            free(v->keys[i]);
    }
    free(v->items);
    free(v->keys);
    free(v->string);
    memset(v, 0, sizeof *v);
}

const tg_json *tg_json_get(const tg_json *object, const char *key)
{
    if (!object || object->type != TG_JSON_OBJECT)
        return NULL;
    for (size_t i = 0; i < object->count; i++)
        if (strcmp(object->keys[i], key) == 0)
            return &object->items[i];
    return NULL;
}
