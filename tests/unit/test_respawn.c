/* Unit tests for master/respawn.c: crash streaks, respawn back-off and heartbeat staleness. */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>

#include "master/respawn.h"

static void streak_increments_under_window(void **state)
{
    (void)state;
    assert_int_equal(respawn_streak(0, 0, 5000), 1);
    assert_int_equal(respawn_streak(0, 4999, 5000), 1);
    assert_int_equal(respawn_streak(1, 100, 5000), 2);
    assert_int_equal(respawn_streak(7, 4999, 5000), 8);
}

static void streak_resets_at_or_over_window(void **state)
{
    (void)state;
    assert_int_equal(respawn_streak(3, 5000, 5000), 0);
    assert_int_equal(respawn_streak(3, 5001, 5000), 0);
    assert_int_equal(respawn_streak(0, 5000, 5000), 0);
    assert_int_equal(respawn_streak(9, INT64_C(86400000), 5000), 0);
}

static void streak_sequence(void **state)
{
    int streak = 0;

    (void)state;
    /* Three fast crashes, one healthy run, then one more fast crash. */
    streak = respawn_streak(streak, 10, 1000);
    streak = respawn_streak(streak, 10, 1000);
    streak = respawn_streak(streak, 10, 1000);
    assert_int_equal(streak, 3);
    streak = respawn_streak(streak, 60000, 1000);
    assert_int_equal(streak, 0);
    streak = respawn_streak(streak, 10, 1000);
    assert_int_equal(streak, 1);
}

static void delay_first_crashes_immediate(void **state)
{
    (void)state;
    assert_int_equal(respawn_delay_ms(0, 10, 10000), 0);
    assert_int_equal(respawn_delay_ms(1, 10, 10000), 0);
}

static void delay_doubles(void **state)
{
    (void)state;
    assert_int_equal(respawn_delay_ms(2, 100, 1000000), RESPAWN_BASE_MS);
    assert_int_equal(respawn_delay_ms(2, 100, 1000000), 100);
    assert_int_equal(respawn_delay_ms(3, 100, 1000000), 200);
    assert_int_equal(respawn_delay_ms(4, 100, 1000000), 400);
    assert_int_equal(respawn_delay_ms(5, 100, 1000000), 800);
    assert_int_equal(respawn_delay_ms(6, 100, 1000000), 1600);
    assert_int_equal(respawn_delay_ms(12, 100, 1000000), 102400);
}

static void delay_capped_at_max(void **state)
{
    (void)state;
    assert_int_equal(respawn_delay_ms(5, 100, 500), 500);   /* 800 capped */
    assert_int_equal(respawn_delay_ms(4, 100, 400), 400);   /* exactly the max */
    assert_int_equal(respawn_delay_ms(3, 100, 10000), 200); /* under the max */
    assert_int_equal(respawn_delay_ms(2, 100, 50), 50);     /* max below the base */
    assert_int_equal(respawn_delay_ms(2, 100, 0), 0);       /* backoff_max = 0 */
    /* A long streak neither overflows nor exceeds the cap. */
    assert_int_equal(respawn_delay_ms(90, 100, 10000), 10000);
    assert_int_equal(respawn_delay_ms(999, 1000, 3600000), 3600000);
}

static void delay_gives_up_at_limit(void **state)
{
    (void)state;
    assert_int_equal(respawn_delay_ms(10, 10, 10000), -1);
    assert_int_equal(respawn_delay_ms(11, 10, 10000), -1);
    assert_int_not_equal(respawn_delay_ms(9, 10, 10000), -1);
    assert_int_equal(respawn_delay_ms(1, 1, 10000), -1);
    assert_int_equal(respawn_delay_ms(0, 1, 10000), 0);
}

static void heartbeat_stale_boundaries(void **state)
{
    (void)state;
    assert_false(respawn_heartbeat_stale(10000, 10000, 500));
    assert_false(respawn_heartbeat_stale(10499, 10000, 500));
    assert_false(respawn_heartbeat_stale(10500, 10000, 500)); /* exactly the timeout: not yet */
    assert_true(respawn_heartbeat_stale(10501, 10000, 500));
    assert_true(respawn_heartbeat_stale(INT64_C(1) << 40, 0, 10000));
    /* A beat written after `now` was sampled is fresh, not stale. */
    assert_false(respawn_heartbeat_stale(10000, 10200, 500));
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(streak_increments_under_window),
        cmocka_unit_test(streak_resets_at_or_over_window),
        cmocka_unit_test(streak_sequence),
        cmocka_unit_test(delay_first_crashes_immediate),
        cmocka_unit_test(delay_doubles),
        cmocka_unit_test(delay_capped_at_max),
        cmocka_unit_test(delay_gives_up_at_limit),
        cmocka_unit_test(heartbeat_stale_boundaries),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
