/*
 * respawn: the supervisor's pure decisions, kept apart from processes and syscalls so they are
 * unit-tested directly: how a worker exit counts toward a crash loop, how long to wait before
 * the next spawn, and whether a heartbeat is stale.
 */
#ifndef AUTHD_RESPAWN_H
#define AUTHD_RESPAWN_H

#include <stdint.h>

#define RESPAWN_BASE_MS 100

/*
 * Consecutive fast crashes after an exit of a worker that ran `lived_ms`: one more when it
 * lived less than `window_ms`, else the streak is over (0).
 */
int respawn_streak(int streak, int64_t lived_ms, int64_t window_ms);

/*
 * Delay before respawning after a crash with `streak` consecutive fast crashes: 0 for the first
 * (or a slow crash), then RESPAWN_BASE_MS doubling up to `max_ms`; -1 when `streak` reached
 * `limit`: a crash loop, give up.
 */
int64_t respawn_delay_ms(int streak, int limit, int64_t max_ms);

/* True when a heartbeat taken at `beat_ms` is older than `timeout_ms` at `now_ms`. */
int respawn_heartbeat_stale(int64_t now_ms, int64_t beat_ms, int64_t timeout_ms);

#endif
