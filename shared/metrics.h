/*
 * metrics: renders the health segment for people and machines — the Prometheus text
 * exposition served on /metrics and the worker table of `authd status` (text or JSON).
 * Everything is aggregated over all slots, so one scrape sees the whole instance.
 */
#ifndef AUTHD_METRICS_H
#define AUTHD_METRICS_H

#include <jansson.h>
#include <stddef.h>

#include "shared/health.h"

/* Prometheus text format 0.0.4. Returns malloc'd text (caller frees) and its length. */
char *metrics_render(const struct health *h, size_t *len_r);

/* `authd status --json` document; caller owns the reference. */
json_t *metrics_status_json(const struct health *h);

/* `authd status` table; malloc'd, caller frees. */
char *metrics_status_text(const struct health *h);

const char *metrics_state_name(enum health_state state);

#endif
