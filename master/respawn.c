/* respawn: pure supervisor decisions (see respawn.h). */
#include "master/respawn.h"

int respawn_streak(int streak, int64_t lived_ms, int64_t window_ms)
{
    return lived_ms < window_ms ? streak + 1 : 0;
}

int64_t respawn_delay_ms(int streak, int limit, int64_t max_ms)
{
    if (streak >= limit)
        return -1;
    if (streak <= 1)
        return 0;
    int64_t d = RESPAWN_BASE_MS;
    for (int i = 2; i < streak && d < max_ms; i++)
        d *= 2;
    return d < max_ms ? d : max_ms;
}

int respawn_heartbeat_stale(int64_t now_ms, int64_t beat_ms, int64_t timeout_ms)
{
    return now_ms - beat_ms > timeout_ms;
}
