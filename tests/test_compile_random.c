/* Placeholder: the compile_random tests are being written. */
#include "testing.h"

START_TEST(placeholder) { ck_assert_int_eq(1, 1); }
END_TEST

int main(void)
{
    Suite *s = suite_create("compile_random");
    TCase *tc = tcase_create("compile_random");
    tcase_add_test(tc, placeholder);
    suite_add_tcase(s, tc);
    return tg_run_suite(s);
}
