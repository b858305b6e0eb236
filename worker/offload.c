/* offload: per-worker thread pool with a bounded queue (see offload.h). */
#include "worker/offload.h"

#include <errno.h>
#include <pthread.h>
#include <stdint.h>
#include <stdlib.h>
#include <sys/eventfd.h>
#include <unistd.h>

struct job {
    offload_fn *work, *done;
    void *arg;
    struct job *next;
};

struct job_list {
    struct job *head, *tail;
};

struct offload {
    pthread_mutex_t lock;
    pthread_cond_t cond;
    struct job_list waiting;  /* guarded by lock */
    struct job_list finished; /* guarded by lock */
    int nwaiting, limit;
    int stopping;
    int pending; /* loop side only */
    int efd;
    struct event *ev;
    int nthreads;
    pthread_t *threads;
};

static void list_push(struct job_list *l, struct job *j)
{
    j->next = NULL;
    if (l->tail)
        l->tail->next = j;
    else
        l->head = j;
    l->tail = j;
}

static struct job *list_pop(struct job_list *l)
{
    struct job *j = l->head;
    if (j) {
        l->head = j->next;
        if (l->head == NULL)
            l->tail = NULL;
    }
    return j;
}

static void *thread_main(void *arg)
{
    struct offload *o = arg;

    pthread_mutex_lock(&o->lock);
    for (;;) {
        while (o->waiting.head == NULL && !o->stopping)
            pthread_cond_wait(&o->cond, &o->lock);
        struct job *j = list_pop(&o->waiting);
        if (j == NULL)
            break; /* stopping and nothing left */
        o->nwaiting--;
        pthread_mutex_unlock(&o->lock);
        j->work(j->arg);
        pthread_mutex_lock(&o->lock);
        int was_empty = o->finished.head == NULL;
        list_push(&o->finished, j);
        if (was_empty) {
            uint64_t one = 1;
            ssize_t w = write(o->efd, &one, sizeof(one));
            (void)w; /* the counter cannot overflow at these rates; EAGAIN still wakes */
        }
    }
    pthread_mutex_unlock(&o->lock);
    return NULL;
}

static void run_finished(struct offload *o)
{
    pthread_mutex_lock(&o->lock);
    struct job *j = o->finished.head;
    o->finished.head = o->finished.tail = NULL;
    pthread_mutex_unlock(&o->lock);
    while (j) {
        struct job *next = j->next;
        o->pending--;
        if (j->done)
            j->done(j->arg);
        free(j);
        j = next;
    }
}

static void on_notify(evutil_socket_t fd, short what, void *arg)
{
    uint64_t n;
    ssize_t r = read(fd, &n, sizeof(n));
    (void)r;
    run_finished(arg);
}

struct offload *offload_new(struct event_base *base, int threads, int queue_limit)
{
    struct offload *o = calloc(1, sizeof(*o));

    if (o == NULL)
        return NULL;
    pthread_mutex_init(&o->lock, NULL);
    pthread_cond_init(&o->cond, NULL);
    o->limit = queue_limit;
    o->efd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
    o->threads = calloc((size_t)threads, sizeof(pthread_t));
    if (o->efd < 0 || o->threads == NULL)
        goto fail;
    o->ev = event_new(base, o->efd, EV_READ | EV_PERSIST, on_notify, o);
    if (o->ev == NULL || event_add(o->ev, NULL) < 0)
        goto fail;
    for (; o->nthreads < threads; o->nthreads++) {
        int err = pthread_create(&o->threads[o->nthreads], NULL, thread_main, o);
        if (err != 0) {
            errno = err;
            goto fail;
        }
    }
    return o;
fail:
    offload_free(o);
    return NULL;
}

int offload_submit(struct offload *o, offload_fn *work, offload_fn *done, void *arg)
{
    struct job *j;

    pthread_mutex_lock(&o->lock);
    if (o->nwaiting >= o->limit || o->stopping) {
        pthread_mutex_unlock(&o->lock);
        return -1;
    }
    pthread_mutex_unlock(&o->lock);
    if ((j = malloc(sizeof(*j))) == NULL)
        return -1;
    j->work = work;
    j->done = done;
    j->arg = arg;
    pthread_mutex_lock(&o->lock);
    list_push(&o->waiting, j);
    o->nwaiting++;
    pthread_cond_signal(&o->cond);
    pthread_mutex_unlock(&o->lock);
    o->pending++;
    return 0;
}

int offload_pending(const struct offload *o)
{
    return o->pending;
}

void offload_free(struct offload *o)
{
    if (o == NULL)
        return;
    pthread_mutex_lock(&o->lock);
    o->stopping = 1;
    pthread_cond_broadcast(&o->cond);
    pthread_mutex_unlock(&o->lock);
    for (int i = 0; i < o->nthreads; i++)
        pthread_join(o->threads[i], NULL);
    run_finished(o);
    if (o->ev)
        event_free(o->ev);
    if (o->efd >= 0)
        close(o->efd);
    pthread_cond_destroy(&o->cond);
    pthread_mutex_destroy(&o->lock);
    free(o->threads);
    free(o);
}
