/*
 * retention: deletes what the store no longer needs — ended sessions with their refresh-token
 * hashes, old audit events — after the retention.* periods (docs/architecture.md, "Retention").
 *
 * Every worker arms a timer, but only the worker in the lowest live slot of the current
 * generation (health_first_live_slot) runs a pass, so N workers do not all prune. A pass is a
 * series of steps on the store pool, each one store call per kind deleting at most
 * retention.batch records (one short transaction), with retention.pause between steps:
 * request jobs queue between them, so a pass never holds the event loop or a pool thread for
 * long. Deletions are idempotent, so two workers pruning at once during a reload only share
 * the work.
 */
#ifndef AUTHD_RETENTION_H
#define AUTHD_RETENTION_H

#include <stdint.h>

#include "shared/config.h"

struct worker;
struct retention;

/* Arms the pass timer of worker `w` (nothing to do when retention.interval is 0). NULL: error. */
struct retention *retention_new(struct worker *w);

/* Call after the store pool is freed (no step is running): closes the pass's connection. */
void retention_free(struct retention *r);

/*
 * The cutoff for records of a kind kept `keep` seconds, at `now`: records that ended before it
 * go. INT64_MIN when `keep` is 0 (kept forever: nothing is older than the cutoff).
 */
int64_t retention_cutoff(int64_t now, double keep);

/* Whether a kind needs another step: its last call deleted a full batch and did not fail. */
int retention_more(int64_t deleted, int batch, int failed);

#endif
