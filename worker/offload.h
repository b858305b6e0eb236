/*
 * offload: a worker's small thread pool for blocking work (argon2id hashing, store calls),
 * with a bounded queue for admission control.
 *
 * Jobs run `work` on a pool thread, then `done` back on the worker's event loop (woken through
 * an eventfd, as memcached's notify fd). When `queue` jobs are already waiting, submit refuses
 * instead of queueing without bound, and the caller answers 503 + Retry-After.
 */
#ifndef AUTHD_OFFLOAD_H
#define AUTHD_OFFLOAD_H

#include <event2/event.h>

struct offload;
typedef void offload_fn(void *arg);

/* Starts `threads` threads. Returns NULL on failure (errno set). */
struct offload *offload_new(struct event_base *base, int threads, int queue_limit);

/*
 * Queues a job; call from the loop's thread only. Returns 0, or -1 when the queue is full (nothing
 * queued; `done` will not run). `work` runs on a pool thread and must not touch the event loop;
 * `done` runs on the loop.
 */
int offload_submit(struct offload *o, offload_fn *work, offload_fn *done, void *arg);

/* Jobs queued or running and not yet completed on the loop. */
int offload_pending(const struct offload *o);

/* Stops the threads after the queued jobs ran; their `done` callbacks run before it returns. */
void offload_free(struct offload *o);

#endif
