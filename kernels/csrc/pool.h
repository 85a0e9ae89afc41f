/* A persistent worker pool: threads are created on first use and reused by every call, so a
 * decode step's hundreds of small matmuls pay a wake-up, not a thread creation, each. */
#ifndef KERNELS_POOL_H
#define KERNELS_POOL_H

typedef void (*pool_task)(void *arg, int worker, int n_workers);

#define POOL_MAX_THREADS 256

/* total threads including the caller; stops the current workers (new ones start lazily) */
int pool_set_threads(int n);
int pool_get_threads(void);

/* run task(arg, i, n) for i in 0..n-1 at once, the caller being worker 0; n is capped at the
 * pool size. Calls from several threads are serialised. */
void pool_run(pool_task task, void *arg, int n);

#endif
