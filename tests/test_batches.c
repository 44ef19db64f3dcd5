/* The shuffling batch iterator: determinism by seed, one visit per example per epoch, and a
 * saved state that resumes exactly where the run stood. */
#include "testing.h"

#include "tapegrad_io.h"

#include <stdio.h>
#include <string.h>

/* Runs epochs of b, writing every index handed out (and -1 at each epoch end) into out. */
static size_t record(tg_batches *b, int epochs, int64_t *out, size_t cap)
{
    size_t k = 0;
    for (int e = 0; e < epochs; e++) {
        const int64_t *idx;
        int64_t got;
        while ((got = tg_batches_next(b, &idx)) > 0) {
            ck_assert_uint_le(k + (size_t)got, cap);
            memcpy(out + k, idx, (size_t)got * sizeof *idx);
            k += (size_t)got;
        }
        ck_assert_int_eq(got, 0);
        ck_assert_uint_lt(k, cap);
        out[k++] = -1;
    }
    return k;
}

START_TEST(batches_same_seed_same_order)
{
    static int64_t a[4000], b[4000], c[4000];
    tg_batches *x = tg_batches_new(1000, 32, 42, false);
    tg_batches *y = tg_batches_new(1000, 32, 42, false);
    tg_batches *z = tg_batches_new(1000, 32, 43, false);
    ck_assert_ptr_nonnull(x);
    size_t na = record(x, 3, a, 4000), nb = record(y, 3, b, 4000), nc = record(z, 3, c, 4000);
    ck_assert_uint_eq(na, nb);
    ck_assert_mem_eq(a, b, na * sizeof a[0]);
    ck_assert_uint_eq(na, nc);
    ck_assert_int_ne(memcmp(a, c, na * sizeof a[0]), 0);
    /* Each epoch is shuffled anew. */
    ck_assert_int_ne(memcmp(a, a + 1001, 1000 * sizeof a[0]), 0);
    tg_batches_free(x);
    tg_batches_free(y);
    tg_batches_free(z);
}
END_TEST

/* The order is part of what a resumed run relies on: pin it down for one seed, so a change to
 * the shuffle (or to tg_rng) that would break resuming old runs is noticed. The expected order
 * was checked against an independent Python version of splitmix64 + xoshiro256** + Fisher-Yates. */
START_TEST(batches_order_is_pinned)
{
    tg_batches *b = tg_batches_new(10, 10, 2024, false);
    const int64_t *idx;
    ck_assert_int_eq(tg_batches_next(b, &idx), 10);
    int64_t first[10];
    memcpy(first, idx, sizeof first);
    char text[128] = "";
    for (int i = 0; i < 10; i++)
        snprintf(text + strlen(text), sizeof text - strlen(text), "%s%lld", i ? "," : "",
                 (long long)first[i]);
    ck_assert_str_eq(text, "5,4,6,0,2,9,7,1,3,8");
    tg_batches_free(b);
}
END_TEST

START_TEST(batches_every_index_once_per_epoch)
{
    for (int drop = 0; drop <= 1; drop++) {
        tg_batches *b = tg_batches_new(103, 10, 7, drop);
        ck_assert_int_eq(tg_batches_count(b), drop ? 10 : 11);
        for (int e = 0; e < 4; e++) {
            ck_assert_int_eq(tg_batches_epoch(b), e);
            int seen[103] = {0};
            int64_t total = 0, batches = 0, got;
            const int64_t *idx;
            while ((got = tg_batches_next(b, &idx)) > 0) {
                batches++;
                ck_assert_int_eq(got, batches == 11 ? 3 : 10);
                for (int64_t i = 0; i < got; i++) {
                    ck_assert_int_ge(idx[i], 0);
                    ck_assert_int_lt(idx[i], 103);
                    seen[idx[i]]++;
                }
                total += got;
            }
            ck_assert_int_eq(batches, drop ? 10 : 11);
            ck_assert_int_eq(total, drop ? 100 : 103);
            for (int i = 0; i < 103; i++)
                ck_assert_int_le(seen[i], 1);
            if (!drop)
                for (int i = 0; i < 103; i++)
                    ck_assert_int_eq(seen[i], 1);
        }
        tg_batches_free(b);
    }
}
END_TEST

START_TEST(batches_state_restore_mid_epoch)
{
    static int64_t want[3000], got[3000];
    tg_batches *a = tg_batches_new(257, 16, 99, false);
    const int64_t *idx;
    /* Two full epochs and a bit. */
    record(a, 2, want, 3000);
    for (int i = 0; i < 5; i++)
        ck_assert_int_eq(tg_batches_next(a, &idx), 16);
    tg_batches_state st;
    ck_assert_int_eq(tg_batches_get_state(a, &st), 0);
    ck_assert_int_eq(st.epoch, 2);
    ck_assert_int_eq(st.position, 80);
    size_t n = record(a, 2, want, 3000);

    /* A fresh iterator with another seed, set to the state, continues identically. */
    tg_batches *b = tg_batches_new(257, 16, 12345, false);
    ck_assert_int_eq(tg_batches_set_state(b, &st), 0);
    ck_assert_int_eq(tg_batches_epoch(b), 2);
    ck_assert_uint_eq(record(b, 2, got, 3000), n);
    ck_assert_mem_eq(want, got, n * sizeof want[0]);

    /* The same through the text form that goes into a checkpoint's metadata. */
    char text[256];
    int len = tg_batches_state_to_string(&st, text, sizeof text);
    ck_assert_int_gt(len, 0);
    ck_assert_int_lt(len, (int)sizeof text);
    ck_assert_int_eq(tg_batches_state_to_string(&st, NULL, 0), len);
    tg_batches_state back;
    ck_assert_int_eq(tg_batches_state_from_string(text, &back), 0);
    ck_assert_mem_eq(&back, &st, sizeof st);
    tg_batches *c = tg_batches_new(257, 16, 0, false);
    ck_assert_int_eq(tg_batches_set_state(c, &back), 0);
    ck_assert_uint_eq(record(c, 2, got, 3000), n);
    ck_assert_mem_eq(want, got, n * sizeof want[0]);
    tg_batches_free(a);
    tg_batches_free(b);
    tg_batches_free(c);
}
END_TEST

START_TEST(batches_state_at_epoch_boundary)
{
    static int64_t want[2000], got[2000];
    tg_batches *a = tg_batches_new(50, 7, 5, true);
    record(a, 1, want, 2000);
    tg_batches_state st;
    tg_batches_get_state(a, &st);
    ck_assert_int_eq(st.epoch, 1);
    ck_assert_int_eq(st.position, 0);
    size_t n = record(a, 3, want, 2000);
    tg_batches *b = tg_batches_new(50, 7, 5, true);
    ck_assert_int_eq(tg_batches_set_state(b, &st), 0);
    ck_assert_uint_eq(record(b, 3, got, 2000), n);
    ck_assert_mem_eq(want, got, n * sizeof want[0]);
    tg_batches_free(a);
    tg_batches_free(b);
}
END_TEST

START_TEST(batches_errors)
{
    ck_assert_ptr_null(tg_batches_new(0, 1, 0, false));
    ck_assert_int_eq(tg_last_error_code(), TG_ERR_ARG);
    ck_assert_ptr_null(tg_batches_new(10, 0, 0, false));
    ck_assert_ptr_null(tg_batches_new(10, 11, 0, true));
    ck_assert_ptr_nonnull(strstr(tg_last_error(), "no batch"));
    tg_batches *b = tg_batches_new(10, 11, 0, false); /* one short batch per epoch is fine */
    const int64_t *idx;
    ck_assert_int_eq(tg_batches_next(b, &idx), 10);
    ck_assert_int_eq(tg_batches_next(b, &idx), 0);
    ck_assert_int_eq(tg_batches_next(b, NULL), TG_ERR_NULL);
    ck_assert_int_eq(tg_batches_next(NULL, &idx), TG_ERR_NULL);
    ck_assert_int_eq(tg_batches_epoch(NULL), TG_ERR_NULL);
    ck_assert_int_eq(tg_batches_count(NULL), TG_ERR_NULL);
    tg_batches_free(NULL);

    tg_batches_state st;
    ck_assert_int_eq(tg_batches_get_state(b, NULL), TG_ERR_NULL);
    ck_assert_int_eq(tg_batches_get_state(b, &st), 0);
    tg_batches_state saved = st;
    /* A state from another configuration is refused, and the iterator is unchanged. */
    tg_batches *other = tg_batches_new(12, 11, 0, false);
    ck_assert_int_eq(tg_batches_set_state(other, &st), TG_ERR_ARG);
    ck_assert_ptr_nonnull(strstr(tg_last_error(), "n = 10"));
    tg_batches_free(other);
    st.position = 11;
    ck_assert_int_eq(tg_batches_set_state(b, &st), TG_ERR_ARG);
    st = saved;
    memset(st.rng, 0, sizeof st.rng);
    ck_assert_int_eq(tg_batches_set_state(b, &st), TG_ERR_ARG);
    ck_assert_int_eq(tg_batches_set_state(b, NULL), TG_ERR_NULL);
    tg_batches_get_state(b, &st);
    ck_assert_mem_eq(&st, &saved, sizeof st);

    /* Text that is not a state. */
    tg_batches_state parsed;
    memset(&parsed, 0x77, sizeof parsed);
    tg_batches_state untouched = parsed;
    char text[256];
    tg_batches_state_to_string(&saved, text, sizeof text);
    const char *bad[] = {"", "garbage", "tg_batches/1 n=10", "tg_batches/2 n=10 batch_size=11",
                         ("tg_batches/1 n=-1 batch_size=11 drop_last=0 seed=0 epoch=0 position=0 "
                          "rng=0000000000000000000000000000000000000000000000000000000000000001")};
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        ck_assert_int_eq(tg_batches_state_from_string(bad[i], &parsed), TG_ERR_FORMAT);
        ck_assert_mem_eq(&parsed, &untouched, sizeof parsed);
    }
    text[strlen(text) - 1] = 'g'; /* not hex */
    ck_assert_int_eq(tg_batches_state_from_string(text, &parsed), TG_ERR_FORMAT);
    strcat(text, "0"); /* too long */
    ck_assert_int_eq(tg_batches_state_from_string(text, &parsed), TG_ERR_FORMAT);
    ck_assert_int_eq(tg_batches_state_from_string(NULL, &parsed), TG_ERR_NULL);
    tg_batches_free(b);
}
END_TEST

int main(void)
{
    Suite *s = suite_create("batches");
    TCase *tc = tcase_create("batches");
    tcase_add_test(tc, batches_same_seed_same_order);
    tcase_add_test(tc, batches_order_is_pinned);
    tcase_add_test(tc, batches_every_index_once_per_epoch);
    tcase_add_test(tc, batches_state_restore_mid_epoch);
    tcase_add_test(tc, batches_state_at_epoch_boundary);
    tcase_add_test(tc, batches_errors);
    suite_add_tcase(s, tc);
    return tg_run_suite(s);
}
