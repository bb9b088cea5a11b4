/* uniprune's bfloat16 kernels: the CPU's bf16 capabilities (CPUID, XCR0 and Linux's permission for AMX tile
 * data), peak probes of the bf16 dot product (VDPBF16PS) and of AMX tiles (TDPBF16PS), and the block-sparse
 * convolution on AMX tiles. Compiled into the same library as uniprune_kernels.c, whose up_conv_create_bf16
 * hands a conv to up_amxconv_* here where the CPU has AMX, and to its own float32 kernels (with the bf16
 * weights widened) where it has not. See docs/KERNELS.md, "bfloat16".
 *
 * Everything AMX is compiled only where the compiler targets it (-march=native on a CPU with amx_tile and
 * amx_bf16, or -mamx-tile -mamx-bf16) and runs only where the CPU and the kernel allow it at run time, so
 * the same source builds and runs on Zen 3 (AVX2), Zen 4/5 (avx512_bf16, no AMX) and ARM.
 */
#include <pthread.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#if defined(__x86_64__)
#include <cpuid.h>
#include <immintrin.h>
#include <sys/syscall.h>
#include <unistd.h>
#endif

#define EXPORT __attribute__((visibility("default")))

typedef void (*task_fn)(void *ctx, int64_t item, int tid);
void up_parallel_for(int64_t n_items, int nthreads, task_fn fn, void *ctx); /* uniprune_kernels.c */
int64_t up_now_ns(void);

#if defined(__x86_64__) && defined(__AMX_TILE__) && defined(__AMX_BF16__) && defined(__AVX512F__)
#define HAVE_AMX 1
#else
#define HAVE_AMX 0
#endif
#if defined(__x86_64__) && defined(__AVX512BF16__)
#define HAVE_DPBF16 1
#else
#define HAVE_DPBF16 0
#endif

/* ------------------------------------------------------------------ capabilities ---------------- */
enum { CAP_DPBF16 = 1, CAP_AMX = 2 };
static int g_caps;
static int g_caps_mask = CAP_DPBF16 | CAP_AMX;
static pthread_once_t g_caps_once = PTHREAD_ONCE_INIT;

/* What the CPU and OS allow, whatever this build was compiled for: AVX512_BF16 (CPUID.(7,1):EAX[5]) with the
 * ZMM state enabled in XCR0; AMX-TILE and AMX-BF16 (CPUID.(7,0):EDX[24], [22]) with the tile state in XCR0
 * (bits 17, 18) and Linux's per-process permission for tile data (arch_prctl ARCH_REQ_XCOMP_PERM, since
 * 5.16): without it the first tile instruction kills the process with SIGILL. */
static void detect_caps(void) {
#if defined(__x86_64__)
    unsigned a, b, c, d;
    if (__get_cpuid_max(0, NULL) < 7) return;
    __cpuid(1, a, b, c, d);
    if (!(c & (1u << 27))) return; /* no OSXSAVE: no xgetbv */
    unsigned lo, hi;
    __asm__ volatile("xgetbv" : "=a"(lo), "=d"(hi) : "c"(0));
    uint64_t xcr0 = ((uint64_t)hi << 32) | lo;
    __cpuid_count(7, 0, a, b, c, d);
    unsigned edx7 = d;
    __cpuid_count(7, 1, a, b, c, d);
    if ((a & (1u << 5)) && (xcr0 & 0xe6) == 0xe6) g_caps |= CAP_DPBF16;
    if ((edx7 & (1u << 24)) && (edx7 & (1u << 22)) && (xcr0 & 0x60000) == 0x60000) {
        const long ARCH_REQ_XCOMP_PERM = 0x1023, XFEATURE_XTILEDATA = 18;
        if (syscall(SYS_arch_prctl, ARCH_REQ_XCOMP_PERM, XFEATURE_XTILEDATA) == 0) g_caps |= CAP_AMX;
    }
#endif
}

/* Bit 0: this build can run VDPBF16PS here; bit 1: AMX bf16 tiles (compiled in, present, permitted). */
EXPORT int up_bf16_caps(void) {
    pthread_once(&g_caps_once, detect_caps);
    int built = (HAVE_DPBF16 ? CAP_DPBF16 : 0) | (HAVE_AMX ? CAP_AMX : 0);
    return g_caps & built & g_caps_mask;
}

/* Tests and benchmarks only: hide capabilities (mask of the bits above) from every later plan creation, e.g.
 * 0 to build the float32 fallback of a bf16 conv on an AMX machine; -1 restores them. */
EXPORT void up_bf16_mask_caps(int mask) { g_caps_mask = mask < 0 ? CAP_DPBF16 | CAP_AMX : mask; }

#if HAVE_AMX
/* Tile palette 1: tiles 0-3 accumulators C (16 rows x 16 float32), 4 the weights A (16 output channels x
 * 16 pairs of bf16), 5-7 inputs B (16 pairs x 16 pixels x 2 bf16, "VNNI" order). One configuration for
 * everything here, loaded at the start of every work item: tile state is per thread, and another library
 * on the same thread (oneDNN under torch) may have loaded its own since. */
typedef struct {
    uint8_t palette, start_row, reserved[14];
    uint16_t colsb[16];
    uint8_t rows[16];
} __attribute__((aligned(64))) tilecfg;

static void amx_configure(void) {
    tilecfg cfg;
    memset(&cfg, 0, sizeof(cfg));
    cfg.palette = 1;
    for (int t = 0; t < 8; t++) {
        cfg.colsb[t] = 64;
        cfg.rows[t] = 16;
    }
    _tile_loadconfig(&cfg);
}
#endif

/* ------------------------------------------------------------------ peak probes ----------------- */
/* The best of PROBE_WINDOWS windows of independent chains: a neighbour's burst on a shared machine lowers
 * one window, not the peak (as up_fma_peak). Rates in flops per ns, one per thread. */
#define PROBE_WINDOWS 8
typedef struct {
    double seconds;
    double rate[64];
} probe_ctx;

#if HAVE_DPBF16
/* VDPBF16PS zmm: 16 lanes x 2 products, each a multiply and an add: 64 flops. 24 independent chains cover
 * its latency on both Intel and AMD cores. */
static void dpbf16_probe_task(void *ctx, int64_t item, int tid) {
    (void)tid;
    probe_ctx *c = ctx;
    volatile int one = 0x3f803f80, tiny = 0x33d633d6; /* bf16 pairs (1, 1) and (1e-7, 1e-7); volatile: no folding */
    __m512bh a = (__m512bh)_mm512_set1_epi32(one), b = (__m512bh)_mm512_set1_epi32(tiny);
    __m512 acc[24];
    for (int i = 0; i < 24; i++) acc[i] = _mm512_set1_ps((float)i * 1e-3f);
    int64_t limit = (int64_t)(c->seconds * 1e9 / PROBE_WINDOWS);
    double best = 0;
    for (int w = 0; w < PROBE_WINDOWS; w++) {
        int64_t reps = 0, t0 = up_now_ns(), dt;
        do {
            for (int rep = 0; rep < 1024; rep++) {
#pragma GCC unroll 24
                for (int i = 0; i < 24; i++) acc[i] = _mm512_dpbf16_ps(acc[i], a, b);
            }
            reps += 1024;
        } while ((dt = up_now_ns() - t0) < limit);
        double rate = (double)reps * 24 * 64 / (double)dt;
        if (rate > best) best = rate;
    }
    __m512 sum = acc[0];
    for (int i = 1; i < 24; i++) sum = _mm512_add_ps(sum, acc[i]);
    volatile float sink = _mm512_reduce_add_ps(sum);
    (void)sink;
    c->rate[item] = best;
}
#endif

#if HAVE_AMX
/* TDPBF16PS on full tiles: 16 x 16 x 32 multiply-adds = 16384 flops each; four independent accumulators, two
 * A and two B tiles resident (no loads in the loop): the tile unit's own limit. */
static void amx_probe_task(void *ctx, int64_t item, int tid) {
    (void)tid;
    probe_ctx *c = ctx;
    static const uint16_t src[512] __attribute__((aligned(64))) = {0}; /* zeros: the rate does not depend on values */
    amx_configure();
    _tile_zero(0);
    _tile_zero(1);
    _tile_zero(2);
    _tile_zero(3);
    _tile_loadd(4, src, 64);
    _tile_loadd(5, src, 64);
    _tile_loadd(6, src, 64);
    _tile_loadd(7, src, 64);
    int64_t limit = (int64_t)(c->seconds * 1e9 / PROBE_WINDOWS);
    double best = 0;
    for (int w = 0; w < PROBE_WINDOWS; w++) {
        int64_t reps = 0, t0 = up_now_ns(), dt;
        do {
            for (int rep = 0; rep < 256; rep++) {
                _tile_dpbf16ps(0, 4, 6);
                _tile_dpbf16ps(1, 4, 7);
                _tile_dpbf16ps(2, 5, 6);
                _tile_dpbf16ps(3, 5, 7);
            }
            reps += 256;
        } while ((dt = up_now_ns() - t0) < limit);
        double rate = (double)reps * 4 * 16384 / (double)dt;
        if (rate > best) best = rate;
    }
    float out[256] __attribute__((aligned(64)));
    _tile_stored(0, out, 64);
    volatile float sink = out[0];
    (void)sink;
    _tile_release();
    c->rate[item] = best;
}
#endif

/* Measured GFLOP/s of `unit` (1: VDPBF16PS, 2: AMX TDPBF16PS) on nthreads threads, each for about `seconds`,
 * summed over threads; 0 where this build or CPU lacks the unit. */
EXPORT double up_bf16_peak(int unit, double seconds, int nthreads) {
    int caps = up_bf16_caps();
    task_fn fn = NULL;
#if HAVE_DPBF16
    if (unit == CAP_DPBF16 && (caps & CAP_DPBF16)) fn = dpbf16_probe_task;
#endif
#if HAVE_AMX
    if (unit == CAP_AMX && (caps & CAP_AMX)) fn = amx_probe_task;
#endif
    (void)caps;
    if (!fn) return 0;
    probe_ctx c;
    if (nthreads < 1) nthreads = 1;
    if (nthreads > 64) nthreads = 64;
    memset(&c, 0, sizeof(c));
    c.seconds = seconds > 0 ? seconds : 0.1;
    up_parallel_for(nthreads, nthreads, fn, &c);
    double total = 0;
    for (int i = 0; i < nthreads; i++) total += c.rate[i];
    return total;
}
