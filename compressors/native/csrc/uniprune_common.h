/* What the native library's translation units share: the export macro, 64-byte aligned allocation, the clock,
 * range checks for the indices a caller hands in, and the one thread pool (defined in uniprune_kernels.c).
 *
 * The library is uniprune_kernels.c (the float32 block-sparse kernels and the pool), uniprune_plan.c (the
 * whole-model executor) and uniprune_bf16.c (the bf16 kernels on AMX tiles), compiled together into one
 * shared library by one build (uniprune_lean/build.py). A kernel for another precision or block shape is one
 * more file that includes this header, uses these helpers and the pool, and is listed in SOURCES there. */
#ifndef UNIPRUNE_COMMON_H
#define UNIPRUNE_COMMON_H

#include <stdint.h>
#include <stdlib.h>
#include <time.h>

#define EXPORT __attribute__((visibility("default")))

/* Memory every kernel's vectors load from: on a cache line, never NULL for a zero size (NULL: no memory). */
static inline void *up_aligned_alloc(size_t bytes) {
    void *p = NULL;
    if (posix_memalign(&p, 64, bytes ? bytes : 64) != 0) return NULL;
    return p;
}

/* free() every pointer listed (NULL ones too): a destructor's owned arrays, in one line. */
static inline void up_free_each(void *const *ptrs, size_t n) {
    for (size_t i = 0; i < n; i++) free(ptrs[i]);
}
#define UP_FREE_ALL(...)                                                   \
    do {                                                                   \
        void *const up_owned_[] = {__VA_ARGS__};                           \
        up_free_each(up_owned_, sizeof(up_owned_) / sizeof(up_owned_[0])); \
    } while (0)

/* A monotonic clock in ns: the pool's spin limit, per-op timings and the peak probes. */
static inline int64_t up_clock_ns(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (int64_t)t.tv_sec * 1000000000LL + t.tv_nsec;
}

/* lo <= v <= hi: every index and extent a plan file hands in is checked with this before it is used. */
static inline int up_in_range(int64_t v, int64_t lo, int64_t hi) { return v >= lo && v <= hi; }

/* The one thread pool: fn(ctx, item, tid) for item in [0, n_items) on up to nthreads threads, the caller
 * among them. Hidden by -fvisibility=hidden, so not part of the exported interface. */
typedef void (*task_fn)(void *ctx, int64_t item, int tid);
void up_parallel_for(int64_t n_items, int nthreads, task_fn fn, void *ctx);

#endif
