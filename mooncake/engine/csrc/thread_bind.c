/* Pin each thread of the OpenMP pool torch computes with to one CPU.
 *
 * Linked against the same libgomp torch has loaded (see mooncake/engine/native.py), so
 * the parallel region below runs on torch's own pool: thread t of that pool is the one
 * that will run the t-th share of every later torch op and kernel. Unpinned, the kernel
 * scheduler migrates these threads between cores and co-schedules two of them on one
 * core while the server's and the worker's threads take the other; a parallel region
 * then ends when its descheduled thread does. This is what vLLM's CPU build does with
 * VLLM_CPU_OMP_THREADS_BIND.
 */
#define _GNU_SOURCE
#include <omp.h>
#include <sched.h>

/* Bind OpenMP thread t (t < n) to cpus[t]; the pool is resized to n threads first.
 * Writes each thread's CPU after binding (sched_getcpu) to got[t], or -1 where
 * sched_setaffinity failed. Returns the number of threads that failed. */
int mc_bind_omp_threads(const int *cpus, int n, int *got) {
    int failed = 0;
    omp_set_num_threads(n);
#pragma omp parallel num_threads(n) reduction(+ : failed)
    {
        int t = omp_get_thread_num();
        cpu_set_t set;
        CPU_ZERO(&set);
        CPU_SET(cpus[t], &set);
        if (sched_setaffinity(0, sizeof(set), &set) != 0) {
            failed += 1;
            got[t] = -1;
        } else {
            got[t] = sched_getcpu();
        }
    }
    return failed;
}
