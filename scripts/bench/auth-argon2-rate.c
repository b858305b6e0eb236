/*
 * auth-argon2-rate: the raw argon2id verification rate of this machine, the reference of
 * scripts/bench/auth's login benchmark. It calls authd's own password_verify()
 * (shared/password.c, linked in by the script) on a PHC string made by password_hash() with the
 * same parameters as the server, from THREADS threads, for SECONDS seconds, and prints the
 * total and per-thread rates. No HTTP, TLS, store, JWT or event loop: what a login could cost
 * at the very least.
 *
 * build (scripts/bench/auth does this):
 *   gcc -O2 -g -pthread -I SRC -o auth-argon2-rate scripts/bench/auth-argon2-rate.c \
 *       SRC/shared/password.c -largon2 -lcrypto -lunistring
 * usage: auth-argon2-rate [THREADS [SECONDS [MEMORY_KIB [ITERATIONS [PARALLELISM]]]]]
 *   defaults: 2 threads, 10 s, OWASP m=19456 KiB, t=2, p=1
 * output: one line of key=value pairs, e.g.
 *   threads=2 seconds=10.02 verifies=812 rate=81.0 per_thread_ms=24.67 m=19456 t=2 p=1
 */
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "shared/password.h"

static const char password[] = "authd bench passphrase 42";
static char phc[PASSWORD_PHC_MAX];
static struct password_params params = {19456, 2, 1};
static double deadline;
static atomic_int go;
static atomic_int failed;

static double now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

struct counter {
    pthread_t tid;
    long n;
};

static void *run(void *arg)
{
    struct counter *c = arg;
    int rehash;

    while (!atomic_load(&go))
        ;
    /* A verification started before the deadline counts: the loop ends at the first check past it. */
    while (now() < deadline) {
        if (password_verify(phc, password, strlen(password), &params, &rehash) != 1) {
            atomic_store(&failed, 1);
            break;
        }
        c->n++;
    }
    return NULL;
}

int main(int argc, char **argv)
{
    int threads = argc > 1 ? atoi(argv[1]) : 2;
    double seconds = argc > 2 ? atof(argv[2]) : 10;

    if (argc > 3)
        params.memory_kib = (uint32_t)strtoul(argv[3], NULL, 10);
    if (argc > 4)
        params.iterations = (uint32_t)strtoul(argv[4], NULL, 10);
    if (argc > 5)
        params.parallelism = (uint32_t)strtoul(argv[5], NULL, 10);
    if (threads < 1 || threads > 256 || seconds <= 0) {
        fprintf(stderr, "usage: %s [THREADS [SECONDS [MEMORY_KIB [ITERATIONS [PARALLELISM]]]]]\n",
                argv[0]);
        return 2;
    }
    if (password_hash(&params, password, strlen(password), phc, sizeof(phc)) < 0) {
        fprintf(stderr, "password_hash failed (parameters m=%u t=%u p=%u)\n", params.memory_kib,
                params.iterations, params.parallelism);
        return 1;
    }
    struct counter *c = calloc((size_t)threads, sizeof(*c));
    if (c == NULL)
        return 1;
    for (int i = 0; i < threads; i++)
        if (pthread_create(&c[i].tid, NULL, run, &c[i]) != 0) {
            perror("pthread_create");
            return 1;
        }
    double start = now();
    deadline = start + seconds;
    atomic_store(&go, 1);
    long total = 0;
    for (int i = 0; i < threads; i++) {
        pthread_join(c[i].tid, NULL);
        total += c[i].n;
    }
    double elapsed = now() - start;
    if (atomic_load(&failed)) {
        fprintf(stderr, "password_verify did not match\n");
        return 1;
    }
    printf("threads=%d seconds=%.2f verifies=%ld rate=%.1f per_thread_ms=%.2f m=%u t=%u p=%u\n",
           threads, elapsed, total, (double)total / elapsed,
           total ? elapsed * threads / (double)total * 1000 : 0, params.memory_kib,
           params.iterations, params.parallelism);
    return 0;
}
