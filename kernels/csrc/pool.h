/* A persistent worker pool: threads are created on first use and reused by every call, so a
 * decode step's hundreds of small matmuls pay a wake-up, not a thread creation, each.
 *
 * A job is never split by worker index: the caller and whichever workers wake in time all run
 * the task, which claims work items from a shared counter until none is left. A worker that
 * is descheduled (the machine is shared) therefore never holds up the call; it just finds
 * nothing left, or arrives after the job is closed and skips it. */
#ifndef KERNELS_POOL_H
#define KERNELS_POOL_H

typedef void (*pool_task)(void *arg);

#define POOL_MAX_THREADS 256

/* total threads including the caller; stops the current workers (new ones start lazily) */
int pool_set_threads(int n);
int pool_get_threads(void);

/* run task(arg) on the caller and up to n - 1 workers; returns when every thread that entered
 * has left. With n <= 1 the caller runs it alone. Calls from several threads are serialised. */
void pool_run(pool_task task, void *arg, int n);

#endif
