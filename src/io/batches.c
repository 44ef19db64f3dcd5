/* The shuffling batch iterator and its resumable state.
 *
 * Epoch e's order is a Fisher-Yates shuffle of the identity drawn from the generator as it
 * stood at the start of epoch e; the generator then carries on into epoch e + 1. Shuffling the
 * identity (not last epoch's order) is what makes the state small: the generator before this
 * epoch's shuffle plus the position rebuild everything, with no permutation to store. */
#include "tapegrad_io.h"

#include "internal.h"

#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

struct tg_batches {
    tg_batches_state st;
    uint64_t next_rng[4]; /* the generator after this epoch's shuffle: next epoch's start */
    int64_t *perm;        /* this epoch's order */
};

/* Rebuilds perm and next_rng from st.rng. */
static void shuffle(tg_batches *b)
{
    tg_rng rng = {{0}, 0.0, 0};
    memcpy(rng.s, b->st.rng, sizeof rng.s);
    int64_t n = b->st.n;
    for (int64_t i = 0; i < n; i++)
        b->perm[i] = i;
    for (int64_t i = n - 1; i > 0; i--) {
        int64_t j = (int64_t)tg_rng_below(&rng, (uint64_t)i + 1);
        int64_t t = b->perm[i];
        b->perm[i] = b->perm[j];
        b->perm[j] = t;
    }
    memcpy(b->next_rng, rng.s, sizeof b->next_rng);
}

static int check_config(const char *who, int64_t n, int64_t batch_size, bool drop_last)
{
    if (n < 1 || batch_size < 1)
        return tg_fail(TG_ERR_ARG, "%s: need n >= 1 and batch_size >= 1, got n = %lld, "
                       "batch_size = %lld", who, (long long)n, (long long)batch_size);
    if ((uint64_t)n > SIZE_MAX / sizeof(int64_t))
        return tg_fail(TG_ERR_ARG, "%s: n = %lld is too large", who, (long long)n);
    if (drop_last && batch_size > n)
        return tg_fail(TG_ERR_ARG, "%s: batch_size %lld > n = %lld with drop_last: an epoch "
                       "would have no batch", who, (long long)batch_size, (long long)n);
    return 0;
}

tg_batches *tg_batches_new(int64_t n, int64_t batch_size, uint64_t seed, bool drop_last)
{
    if (check_config("tg_batches_new", n, batch_size, drop_last))
        return NULL;
    tg_batches *b = calloc(1, sizeof *b);
    int64_t *perm = malloc((size_t)n * sizeof *perm);
    if (!b || !perm) {
        free(b);
        free(perm);
        tg_fail(TG_ERR_NOMEM, "tg_batches_new: cannot allocate an order of %lld examples",
                (long long)n);
        return NULL;
    }
    b->perm = perm;
    b->st.n = n;
    b->st.batch_size = batch_size;
    b->st.drop_last = drop_last;
    b->st.seed = seed;
    tg_rng rng;
    tg_rng_seed(&rng, seed);
    memcpy(b->st.rng, rng.s, sizeof b->st.rng);
    shuffle(b);
    return b;
}

void tg_batches_free(tg_batches *b)
{
    if (!b)
        return;
    free(b->perm);
    free(b);
}

int64_t tg_batches_next(tg_batches *b, const int64_t **indices)
{
    if (!b || !indices)
        return tg_fail(TG_ERR_NULL, "tg_batches_next: iterator or indices is NULL");
    int64_t left = b->st.n - b->st.position;
    int64_t take = left < b->st.batch_size ? left : b->st.batch_size;
    if (take == 0 || (b->st.drop_last && take < b->st.batch_size)) {
        b->st.epoch++;
        b->st.position = 0;
        memcpy(b->st.rng, b->next_rng, sizeof b->st.rng);
        shuffle(b);
        *indices = NULL;
        return 0;
    }
    *indices = b->perm + b->st.position;
    b->st.position += take;
    return take;
}

int64_t tg_batches_epoch(const tg_batches *b)
{
    if (!b)
        return tg_fail(TG_ERR_NULL, "tg_batches_epoch: iterator is NULL");
    return b->st.epoch;
}

int64_t tg_batches_count(const tg_batches *b)
{
    if (!b)
        return tg_fail(TG_ERR_NULL, "tg_batches_count: iterator is NULL");
    int64_t full = b->st.n / b->st.batch_size;
    return full + (!b->st.drop_last && b->st.n % b->st.batch_size != 0);
}

int tg_batches_get_state(const tg_batches *b, tg_batches_state *state)
{
    if (!b || !state)
        return tg_fail(TG_ERR_NULL, "tg_batches_get_state: iterator or state is NULL");
    *state = b->st;
    return 0;
}

int tg_batches_set_state(tg_batches *b, const tg_batches_state *state)
{
    const char *who = "tg_batches_set_state";
    if (!b || !state)
        return tg_fail(TG_ERR_NULL, "%s: iterator or state is NULL", who);
    const tg_batches_state *s = state;
    if (s->n != b->st.n || s->batch_size != b->st.batch_size ||
        (s->drop_last != 0) != (b->st.drop_last != 0))
        return tg_fail(TG_ERR_ARG, "%s: the state is for n = %lld, batch_size = %lld, "
                       "drop_last = %d but this iterator has n = %lld, batch_size = %lld, "
                       "drop_last = %d", who, (long long)s->n, (long long)s->batch_size,
                       s->drop_last != 0, (long long)b->st.n, (long long)b->st.batch_size,
                       b->st.drop_last != 0);
    if (s->epoch < 0 || s->position < 0 || s->position > s->n)
        return tg_fail(TG_ERR_ARG, "%s: epoch %lld / position %lld out of range for n = %lld",
                       who, (long long)s->epoch, (long long)s->position, (long long)s->n);
    if ((s->rng[0] | s->rng[1] | s->rng[2] | s->rng[3]) == 0)
        return tg_fail(TG_ERR_ARG, "%s: the generator state is all zeros", who);
    b->st = *s;
    b->st.drop_last = s->drop_last != 0;
    shuffle(b);
    return 0;
}

/* ---- the state as text ---------------------------------------------------------------------- */

#define STATE_TAG "tg_batches/1"

int tg_batches_state_to_string(const tg_batches_state *state, char *buf, size_t size)
{
    if (!state || (!buf && size > 0))
        return tg_fail(TG_ERR_NULL, "tg_batches_state_to_string: state or buffer is NULL");
    const tg_batches_state *s = state;
    return snprintf(buf, size,
                    STATE_TAG " n=%" PRId64 " batch_size=%" PRId64 " drop_last=%d seed=%" PRIu64
                    " epoch=%" PRId64 " position=%" PRId64 " rng=%016" PRIx64 "%016" PRIx64
                    "%016" PRIx64 "%016" PRIx64,
                    s->n, s->batch_size, s->drop_last != 0, s->seed, s->epoch, s->position,
                    s->rng[0], s->rng[1], s->rng[2], s->rng[3]);
}

/* Reads " key=<digits>" at *p; base 10 or 16 (exactly 64 hex digits for four words). */
static bool read_number(const char **p, const char *key, uint64_t *out, uint64_t max)
{
    size_t klen = strlen(key);
    if (**p != ' ' || strncmp(*p + 1, key, klen) != 0 || (*p)[1 + klen] != '=')
        return false;
    const char *digits = *p + klen + 2;
    if (*digits < '0' || *digits > '9')
        return false;
    errno = 0;
    char *end;
    unsigned long long v = strtoull(digits, &end, 10);
    if (errno || v > max)
        return false;
    *out = v;
    *p = end;
    return true;
}

static bool read_hex64(const char *s, uint64_t *out)
{
    uint64_t v = 0;
    for (int i = 0; i < 16; i++) {
        char c = s[i];
        int d = c >= '0' && c <= '9' ? c - '0' : c >= 'a' && c <= 'f' ? c - 'a' + 10 : -1;
        if (d < 0)
            return false;
        v = v << 4 | (uint64_t)d;
    }
    *out = v;
    return true;
}

int tg_batches_state_from_string(const char *text, tg_batches_state *state)
{
    const char *who = "tg_batches_state_from_string";
    if (!text || !state)
        return tg_fail(TG_ERR_NULL, "%s: text or state is NULL", who);
    tg_batches_state s;
    memset(&s, 0, sizeof s);
    const char *p = text;
    uint64_t n, bs, drop, seed, epoch, pos;
    size_t tag = strlen(STATE_TAG);
    bool ok = strncmp(p, STATE_TAG, tag) == 0;
    p += ok ? tag : 0;
    ok = ok && read_number(&p, "n", &n, INT64_MAX) && read_number(&p, "batch_size", &bs, INT64_MAX)
         && read_number(&p, "drop_last", &drop, 1) && read_number(&p, "seed", &seed, UINT64_MAX)
         && read_number(&p, "epoch", &epoch, INT64_MAX)
         && read_number(&p, "position", &pos, INT64_MAX);
    ok = ok && strncmp(p, " rng=", 5) == 0 && strlen(p + 5) == 64;
    for (int i = 0; ok && i < 4; i++)
        ok = read_hex64(p + 5 + 16 * i, &s.rng[i]);
    if (!ok)
        return tg_fail(TG_ERR_FORMAT, "%s: not a batch iterator state: \"%.120s\"", who, text);
    s.n = (int64_t)n;
    s.batch_size = (int64_t)bs;
    s.drop_last = (int)drop;
    s.seed = seed;
    s.epoch = (int64_t)epoch;
    s.position = (int64_t)pos;
    if (s.n < 1 || s.batch_size < 1 || s.position > s.n)
        return tg_fail(TG_ERR_FORMAT, "%s: inconsistent state: \"%.120s\"", who, text);
    *state = s;
    return 0;
}
