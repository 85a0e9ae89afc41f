/* Workers wait for a new job generation: they spin briefly after each job (decode steps issue
 * matmuls back to back) and then sleep on a condition variable, so an idle pool costs no CPU. */
#define _GNU_SOURCE
#include <pthread.h>
#include <stdatomic.h>
#include <time.h>
#include <unistd.h>

#include "pool.h"

#if defined(__x86_64__) || defined(__i386__)
#include <immintrin.h>
static inline void cpu_relax(void) { _mm_pause(); }
#else
static inline void cpu_relax(void) {}
#endif

#define SPIN_NS 300000L  /* how long a worker spins for the next job before sleeping */

static pthread_mutex_t run_lock = PTHREAD_MUTEX_INITIALIZER;  /* one job (or resize) at a time */
static pthread_mutex_t mu = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t wake_cv = PTHREAD_COND_INITIALIZER, done_cv = PTHREAD_COND_INITIALIZER;

static int n_threads = 1;   /* configured size, caller included */
static int n_started = 0;   /* running workers (pool threads 1..n_started) */
static pid_t owner_pid;     /* a forked child has none of its parent's threads */
static pthread_t tids[POOL_MAX_THREADS];
static unsigned spawn_generation[POOL_MAX_THREADS];  /* job generation a worker starts after */

static atomic_uint generation;
static atomic_int remaining;
static atomic_int quit;
static pool_task job_task;
static void *job_arg;
static int job_n;

static long now_ns(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec * 1000000000L + ts.tv_nsec;
}

static unsigned wait_generation(unsigned seen) {
    long deadline = now_ns() + SPIN_NS;
    for (int i = 0;; i++) {
        unsigned g = atomic_load_explicit(&generation, memory_order_acquire);
        if (g != seen || atomic_load(&quit)) return g;
        if ((i & 255) == 255 && now_ns() > deadline) break;
        cpu_relax();
    }
    pthread_mutex_lock(&mu);
    unsigned g;
    while ((g = atomic_load(&generation)) == seen && !atomic_load(&quit)) pthread_cond_wait(&wake_cv, &mu);
    pthread_mutex_unlock(&mu);
    return g;
}

static void *worker_main(void *p) {
    int id = (int)(long)p;
    unsigned seen = spawn_generation[id];  /* not a fresh read: the first job may be out already */
    for (;;) {
        seen = wait_generation(seen);
        if (atomic_load(&quit)) return NULL;
        if (id < job_n) job_task(job_arg, id, job_n);
        if (atomic_fetch_sub(&remaining, 1) == 1) {
            pthread_mutex_lock(&mu);
            pthread_cond_signal(&done_cv);
            pthread_mutex_unlock(&mu);
        }
    }
}

static void stop_workers(void) {
    if (owner_pid == getpid()) {
        pthread_mutex_lock(&mu);
        atomic_store(&quit, 1);
        pthread_cond_broadcast(&wake_cv);
        pthread_mutex_unlock(&mu);
        for (int i = 1; i <= n_started; i++) pthread_join(tids[i], NULL);
    }
    n_started = 0;
    atomic_store(&quit, 0);
}

static void start_workers(void) {
    if (owner_pid != getpid()) n_started = 0;
    owner_pid = getpid();
    while (n_started < n_threads - 1) {
        int id = n_started + 1;
        spawn_generation[id] = atomic_load(&generation);
        if (pthread_create(&tids[id], NULL, worker_main, (void *)(long)id) != 0) break;
        n_started = id;
    }
}

int pool_set_threads(int n) {
    if (n < 1 || n > POOL_MAX_THREADS) return -1;
    pthread_mutex_lock(&run_lock);
    stop_workers();
    n_threads = n;
    pthread_mutex_unlock(&run_lock);
    return 0;
}

int pool_get_threads(void) { return n_threads; }

void pool_run(pool_task task, void *arg, int n) {
    if (n > n_threads) n = n_threads;
    if (n <= 1) {
        task(arg, 0, 1);
        return;
    }
    pthread_mutex_lock(&run_lock);
    if (owner_pid != getpid() || n_started < n_threads - 1) start_workers();
    if (n > n_started + 1) n = n_started + 1;  /* thread creation failed: run with fewer */
    job_task = task;
    job_arg = arg;
    job_n = n;
    atomic_store(&remaining, n_started);
    pthread_mutex_lock(&mu);
    atomic_fetch_add_explicit(&generation, 1, memory_order_release);
    pthread_cond_broadcast(&wake_cv);
    pthread_mutex_unlock(&mu);

    task(arg, 0, n);

    long deadline = now_ns() + SPIN_NS;
    for (int i = 0; atomic_load(&remaining) > 0; i++) {
        if ((i & 255) == 255 && now_ns() > deadline) {
            pthread_mutex_lock(&mu);
            while (atomic_load(&remaining) > 0) pthread_cond_wait(&done_cv, &mu);
            pthread_mutex_unlock(&mu);
            break;
        }
        cpu_relax();
    }
    pthread_mutex_unlock(&run_lock);
}
