/* Workers wait for a new job generation: they spin briefly after each job (decode steps issue
 * matmuls back to back) and then sleep on a condition variable, so an idle pool costs no CPU.
 * `entry` admits workers to the current job: generation in the high 32 bits, a CLOSED bit set
 * by the caller once its own task call returns (all work is claimed by then), and the count of
 * workers inside. The caller waits only for workers that entered. */
#define _GNU_SOURCE
#include <pthread.h>
#include <stdatomic.h>
#include <stdint.h>
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
#define CLOSED ((uint64_t)1 << 31)
#define INSIDE ((uint64_t)CLOSED - 1)

static pthread_mutex_t run_lock = PTHREAD_MUTEX_INITIALIZER;  /* one job (or resize) at a time */
static pthread_mutex_t mu = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t wake_cv = PTHREAD_COND_INITIALIZER, done_cv = PTHREAD_COND_INITIALIZER;

static int n_threads = 1;   /* configured size, caller included */
static int n_started = 0;   /* running workers */
static pid_t owner_pid;     /* a forked child has none of its parent's threads */
static pthread_t tids[POOL_MAX_THREADS];

static atomic_uint generation;      /* bumped once per job */
static _Atomic uint64_t entry;      /* see above */
static atomic_int quit;
static pool_task job_task;
static void *job_arg;

static long now_ns(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec * 1000000000L + ts.tv_nsec;
}

/* a condition wait on `mu` bounded to 1 ms: a wake-up lost to a bug costs a millisecond, not a hang */
static void timed_wait(pthread_cond_t *cv) {
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    ts.tv_nsec += 1000000L;
    if (ts.tv_nsec >= 1000000000L) {
        ts.tv_sec++;
        ts.tv_nsec -= 1000000000L;
    }
    pthread_cond_timedwait(cv, &mu, &ts);
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

/* join job `g` if it is still open; run it; tell a waiting caller when the last one leaves */
static void enter_job(unsigned g) {
    uint64_t s = atomic_load(&entry);
    while ((unsigned)(s >> 32) == g && !(s & CLOSED)) {
        if (!atomic_compare_exchange_weak(&entry, &s, s + 1)) continue;
        job_task(job_arg);
        uint64_t after = atomic_fetch_sub(&entry, 1) - 1;
        if ((after & CLOSED) && (after & INSIDE) == 0) {
            pthread_mutex_lock(&mu);
            pthread_cond_signal(&done_cv);
            pthread_mutex_unlock(&mu);
        }
        return;
    }
}

static void *worker_main(void *p) {
    unsigned seen = (unsigned)(uintptr_t)p;  /* the generation current at spawn time */
    for (;;) {
        seen = wait_generation(seen);
        if (atomic_load(&quit)) return NULL;
        enter_job(seen);
    }
}

static void stop_workers(void) {
    if (owner_pid == getpid()) {
        pthread_mutex_lock(&mu);
        atomic_store(&quit, 1);
        pthread_cond_broadcast(&wake_cv);
        pthread_mutex_unlock(&mu);
        for (int i = 0; i < n_started; i++) pthread_join(tids[i], NULL);
    }
    n_started = 0;
    atomic_store(&quit, 0);
}

static void start_workers(void) {
    if (owner_pid != getpid()) n_started = 0;
    owner_pid = getpid();
    while (n_started < n_threads - 1) {
        void *seen = (void *)(uintptr_t)atomic_load(&generation);
        if (pthread_create(&tids[n_started], NULL, worker_main, seen) != 0) break;
        n_started++;
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
        task(arg);
        return;
    }
    pthread_mutex_lock(&run_lock);
    if (owner_pid != getpid() || n_started < n_threads - 1) start_workers();
    job_task = task;
    job_arg = arg;
    unsigned g = atomic_load(&generation) + 1;
    atomic_store(&entry, (uint64_t)g << 32);
    pthread_mutex_lock(&mu);
    atomic_store_explicit(&generation, g, memory_order_release);
    pthread_cond_broadcast(&wake_cv);
    pthread_mutex_unlock(&mu);

    task(arg);

    atomic_fetch_or(&entry, CLOSED);
    long deadline = now_ns() + SPIN_NS;
    for (int i = 0; atomic_load(&entry) & INSIDE; i++) {
        if ((i & 255) == 255 && now_ns() > deadline) {
            pthread_mutex_lock(&mu);
            while (atomic_load(&entry) & INSIDE) timed_wait(&done_cv);
            pthread_mutex_unlock(&mu);
            break;
        }
        cpu_relax();
    }
    pthread_mutex_unlock(&run_lock);
}
