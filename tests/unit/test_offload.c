/*
 * Unit tests for worker/offload.c: jobs run on pool threads, `done` on the loop thread, the
 * bounded queue refuses work, and offload_free completes what was accepted.
 *
 * Pool threads never call cmocka assertions (they longjmp): they record what they saw and the
 * test thread checks it. Blocking is done with barriers and condition variables, never sleeps.
 */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>
#include <cmocka.h>

#include <event2/event.h>

#include "worker/offload.h"

#define N_JOBS 200

/* A loop that gives up after this long only so that a broken pool fails instead of hanging. */
#define SAFETY_TIMEOUT_S 30

struct fixture {
    struct event_base *base;
    struct event *timeout;
    int timed_out;
    pthread_t loop_thread;
};

struct job_rec {
    struct fixture *fx;
    int id;
    atomic_int worked;
    pthread_t work_thread;
    int done_count;
    int done_on_loop;
    int pending_in_done;
    struct offload *o;
};

static int done_total;

static void on_timeout(evutil_socket_t fd, short what, void *arg)
{
    struct fixture *fx = arg;

    (void)fd;
    (void)what;
    fx->timed_out = 1;
    event_base_loopbreak(fx->base);
}

static int setup(void **state)
{
    struct fixture *fx = calloc(1, sizeof(*fx));
    struct timeval tv = {SAFETY_TIMEOUT_S, 0};

    if (fx == NULL || (fx->base = event_base_new()) == NULL)
        return -1;
    fx->timeout = evtimer_new(fx->base, on_timeout, fx);
    if (fx->timeout == NULL || evtimer_add(fx->timeout, &tv) < 0)
        return -1;
    fx->loop_thread = pthread_self();
    done_total = 0;
    *state = fx;
    return 0;
}

static int teardown(void **state)
{
    struct fixture *fx = *state;

    event_free(fx->timeout);
    event_base_free(fx->base);
    free(fx);
    return 0;
}

/* Runs the loop until `done_total` reaches `want` (or the safety timeout fires). */
static void run_until(struct fixture *fx, int want)
{
    while (done_total < want && !fx->timed_out)
        assert_int_equal(event_base_loop(fx->base, EVLOOP_ONCE), 0);
    assert_false(fx->timed_out);
}

static void rec_init(struct job_rec *r, struct fixture *fx, struct offload *o, int id)
{
    memset(r, 0, sizeof(*r));
    r->fx = fx;
    r->o = o;
    r->id = id;
    atomic_init(&r->worked, 0);
}

static void work_record(void *arg)
{
    struct job_rec *r = arg;

    r->work_thread = pthread_self();
    atomic_fetch_add(&r->worked, 1);
}

static void done_record(void *arg)
{
    struct job_rec *r = arg;

    r->done_count++;
    r->done_on_loop = pthread_equal(pthread_self(), r->fx->loop_thread);
    r->pending_in_done = r->o ? offload_pending(r->o) : -1;
    done_total++;
}

static void work_runs_off_loop_done_on_loop(void **state)
{
    struct fixture *fx = *state;
    struct offload *o = offload_new(fx->base, 2, 8);
    struct job_rec r;

    assert_non_null(o);
    rec_init(&r, fx, o, 0);
    assert_int_equal(offload_submit(o, work_record, done_record, &r), 0);
    assert_int_equal(offload_pending(o), 1);
    /* `done` never runs inside submit or before the loop dispatches. */
    assert_int_equal(r.done_count, 0);
    run_until(fx, 1);
    assert_int_equal(atomic_load(&r.worked), 1);
    assert_false(pthread_equal(r.work_thread, pthread_self()));
    assert_int_equal(r.done_count, 1);
    assert_true(r.done_on_loop);
    assert_int_equal(r.pending_in_done, 0);
    assert_int_equal(offload_pending(o), 0);
    offload_free(o);
    assert_int_equal(r.done_count, 1); /* not run twice */
}

static void many_jobs_all_complete(void **state)
{
    struct fixture *fx = *state;
    struct offload *o = offload_new(fx->base, 4, N_JOBS);
    struct job_rec *r = calloc(N_JOBS, sizeof(*r));

    assert_non_null(o);
    assert_non_null(r);
    for (int i = 0; i < N_JOBS; i++) {
        rec_init(&r[i], fx, o, i);
        assert_int_equal(offload_submit(o, work_record, done_record, &r[i]), 0);
        assert_int_equal(offload_pending(o), i + 1);
    }
    assert_int_equal(offload_pending(o), N_JOBS);
    run_until(fx, N_JOBS);
    assert_int_equal(done_total, N_JOBS);
    assert_int_equal(offload_pending(o), 0);
    for (int i = 0; i < N_JOBS; i++) {
        assert_int_equal(atomic_load(&r[i].worked), 1);
        assert_int_equal(r[i].done_count, 1);
        assert_true(r[i].done_on_loop);
        assert_false(pthread_equal(r[i].work_thread, pthread_self()));
    }
    offload_free(o);
    assert_int_equal(done_total, N_JOBS);
    free(r);
}

static void done_may_be_null(void **state)
{
    struct fixture *fx = *state;
    struct offload *o = offload_new(fx->base, 1, 4);
    struct job_rec a, b;

    assert_non_null(o);
    rec_init(&a, fx, o, 0);
    rec_init(&b, fx, o, 1);
    assert_int_equal(offload_submit(o, work_record, NULL, &a), 0);
    assert_int_equal(offload_submit(o, work_record, done_record, &b), 0);
    /* One thread runs jobs in order: when b's done runs, a was completed too. */
    run_until(fx, 1);
    assert_int_equal(atomic_load(&a.worked), 1);
    assert_int_equal(offload_pending(o), 0);
    offload_free(o);
}

/* A job that blocks its pool thread until the test releases it. */
struct gate {
    pthread_barrier_t started;
    pthread_mutex_t lock;
    pthread_cond_t cond;
    int open;
};

static void gate_init(struct gate *g)
{
    pthread_barrier_init(&g->started, NULL, 2);
    pthread_mutex_init(&g->lock, NULL);
    pthread_cond_init(&g->cond, NULL);
    g->open = 0;
}

static void gate_open(struct gate *g)
{
    pthread_mutex_lock(&g->lock);
    g->open = 1;
    pthread_cond_broadcast(&g->cond);
    pthread_mutex_unlock(&g->lock);
}

static void gate_destroy(struct gate *g)
{
    pthread_barrier_destroy(&g->started);
    pthread_cond_destroy(&g->cond);
    pthread_mutex_destroy(&g->lock);
}

static struct gate *the_gate;

static void work_blocking(void *arg)
{
    struct gate *g = the_gate;

    pthread_barrier_wait(&g->started);
    pthread_mutex_lock(&g->lock);
    while (!g->open)
        pthread_cond_wait(&g->cond, &g->lock);
    pthread_mutex_unlock(&g->lock);
    work_record(arg);
}

static void queue_full_rejects(void **state)
{
    struct fixture *fx = *state;
    struct offload *o = offload_new(fx->base, 1, 2);
    struct job_rec r[5];
    struct gate g;

    assert_non_null(o);
    gate_init(&g);
    the_gate = &g;
    for (int i = 0; i < 5; i++)
        rec_init(&r[i], fx, o, i);

    /* The only thread takes job 0 and blocks in it: nothing is waiting. */
    assert_int_equal(offload_submit(o, work_blocking, done_record, &r[0]), 0);
    pthread_barrier_wait(&g.started);
    /* Two jobs may wait; the third is refused. */
    assert_int_equal(offload_submit(o, work_record, done_record, &r[1]), 0);
    assert_int_equal(offload_submit(o, work_record, done_record, &r[2]), 0);
    assert_int_equal(offload_submit(o, work_record, done_record, &r[3]), -1);
    assert_int_equal(offload_submit(o, work_record, done_record, &r[4]), -1);
    assert_int_equal(offload_pending(o), 3);
    assert_int_equal(atomic_load(&r[1].worked), 0);
    assert_int_equal(atomic_load(&r[2].worked), 0);

    gate_open(&g);
    run_until(fx, 3);
    assert_int_equal(done_total, 3);
    assert_int_equal(offload_pending(o), 0);
    for (int i = 0; i < 3; i++) {
        assert_int_equal(atomic_load(&r[i].worked), 1);
        assert_int_equal(r[i].done_count, 1);
        assert_true(r[i].done_on_loop);
    }
    /* Refused jobs never run, neither `work` nor `done`. */
    for (int i = 3; i < 5; i++) {
        assert_int_equal(atomic_load(&r[i].worked), 0);
        assert_int_equal(r[i].done_count, 0);
    }
    /* Once the queue drained, submits are accepted again. */
    assert_int_equal(offload_submit(o, work_record, done_record, &r[3]), 0);
    run_until(fx, 4);
    assert_int_equal(r[3].done_count, 1);
    offload_free(o);
    assert_int_equal(done_total, 4);
    gate_destroy(&g);
}

static void free_runs_pending_done(void **state)
{
    struct fixture *fx = *state;
    struct offload *o = offload_new(fx->base, 1, 8);
    struct job_rec r[4];
    struct gate g;

    assert_non_null(o);
    gate_init(&g);
    the_gate = &g;
    for (int i = 0; i < 4; i++)
        rec_init(&r[i], fx, NULL, i);

    /* Job 0 blocks the only thread; jobs 1..3 are still queued when the pool is freed. */
    assert_int_equal(offload_submit(o, work_blocking, done_record, &r[0]), 0);
    pthread_barrier_wait(&g.started);
    for (int i = 1; i < 4; i++)
        assert_int_equal(offload_submit(o, work_record, done_record, &r[i]), 0);
    assert_int_equal(offload_pending(o), 4);
    gate_open(&g);
    /* The loop never dispatched: no `done` ran yet. */
    assert_int_equal(done_total, 0);

    offload_free(o);
    assert_int_equal(done_total, 4);
    for (int i = 0; i < 4; i++) {
        assert_int_equal(atomic_load(&r[i].worked), 1);
        assert_int_equal(r[i].done_count, 1);
        assert_true(r[i].done_on_loop);
    }
    gate_destroy(&g);
}

static void free_runs_finished_done(void **state)
{
    struct fixture *fx = *state;
    struct offload *o = offload_new(fx->base, 2, 8);
    struct job_rec r[3];

    assert_non_null(o);
    for (int i = 0; i < 3; i++) {
        rec_init(&r[i], fx, NULL, i);
        assert_int_equal(offload_submit(o, work_record, done_record, &r[i]), 0);
    }
    /* Jobs may or may not have run; none completed on the loop. Free completes all of them. */
    offload_free(o);
    assert_int_equal(done_total, 3);
    for (int i = 0; i < 3; i++) {
        assert_int_equal(atomic_load(&r[i].worked), 1);
        assert_int_equal(r[i].done_count, 1);
    }
}

static void free_idle_and_null(void **state)
{
    struct fixture *fx = *state;
    struct offload *o = offload_new(fx->base, 3, 1);

    assert_non_null(o);
    assert_int_equal(offload_pending(o), 0);
    offload_free(o);
    offload_free(NULL);
    assert_int_equal(done_total, 0);
}

#define T(f) cmocka_unit_test_setup_teardown(f, setup, teardown)

int main(void)
{
    const struct CMUnitTest tests[] = {
        T(work_runs_off_loop_done_on_loop),
        T(many_jobs_all_complete),
        T(done_may_be_null),
        T(queue_full_rejects),
        T(free_runs_pending_done),
        T(free_runs_finished_done),
        T(free_idle_and_null),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
