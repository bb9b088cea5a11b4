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
#include <stdlib.h>
#include <string.h>

#if defined(__x86_64__)
#include <cpuid.h>
#include <immintrin.h>
#include <sys/syscall.h>
#include <unistd.h>
#endif

#include "uniprune_common.h"

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
    /* UNIPRUNE_AMX=0: run as a CPU with avx512_bf16 and no AMX (AMD Zen 4/5) would, to measure the VDPBF16PS
     * kernels on an AMX machine; it also reaches an artifact's loader, which shares this library */
    const char *amx = getenv("UNIPRUNE_AMX");
    if (amx && amx[0] == '0' && amx[1] == 0) g_caps &= ~CAP_AMX;
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

#if HAVE_DPBF16 || HAVE_AMX
/* The best rate (flops per ns) of PROBE_WINDOWS windows of back-to-back bursts; burst(state) runs one burst and
 * returns its flops. */
typedef double (*burst_fn)(void *state);
static double best_rate(double seconds, burst_fn burst, void *state) {
    int64_t limit = (int64_t)(seconds * 1e9 / PROBE_WINDOWS);
    double best = 0;
    for (int w = 0; w < PROBE_WINDOWS; w++) {
        double flops = 0;
        int64_t t0 = up_clock_ns(), dt;
        do flops += burst(state);
        while ((dt = up_clock_ns() - t0) < limit);
        if (flops / (double)dt > best) best = flops / (double)dt;
    }
    return best;
}
#endif

#if HAVE_DPBF16
/* VDPBF16PS zmm: 16 lanes x 2 products, each a multiply and an add: 64 flops. 24 independent chains cover
 * its latency on both Intel and AMD cores. */
typedef struct {
    __m512 acc[24];
    __m512bh a, b;
} dpbf16_state;

static double dpbf16_burst(void *state) {
    dpbf16_state *st = state;
    __m512 acc[24];
    for (int i = 0; i < 24; i++) acc[i] = st->acc[i];
    for (int rep = 0; rep < 1024; rep++) {
#pragma GCC unroll 24
        for (int i = 0; i < 24; i++) acc[i] = _mm512_dpbf16_ps(acc[i], st->a, st->b);
    }
    for (int i = 0; i < 24; i++) st->acc[i] = acc[i];
    return 1024.0 * 24 * 64;
}

static void dpbf16_probe_task(void *ctx, int64_t item, int tid) {
    (void)tid;
    probe_ctx *c = ctx;
    volatile int one = 0x3f803f80, tiny = 0x33d633d6; /* bf16 pairs (1, 1) and (1e-7, 1e-7); volatile: no folding */
    dpbf16_state st;
    st.a = (__m512bh)_mm512_set1_epi32(one);
    st.b = (__m512bh)_mm512_set1_epi32(tiny);
    for (int i = 0; i < 24; i++) st.acc[i] = _mm512_set1_ps((float)i * 1e-3f);
    c->rate[item] = best_rate(c->seconds, dpbf16_burst, &st);
    __m512 sum = st.acc[0];
    for (int i = 1; i < 24; i++) sum = _mm512_add_ps(sum, st.acc[i]);
    volatile float sink = _mm512_reduce_add_ps(sum);
    (void)sink;
}
#endif

#if HAVE_AMX
/* TDPBF16PS on full tiles: 16 x 16 x 32 multiply-adds = 16384 flops each; four independent accumulators, two
 * A and two B tiles resident (no loads in the loop): the tile unit's own limit. Tiles stay loaded across the
 * bursts' calls. */
static double amx_burst(void *state) {
    (void)state;
    for (int rep = 0; rep < 256; rep++) {
        _tile_dpbf16ps(0, 4, 6);
        _tile_dpbf16ps(1, 4, 7);
        _tile_dpbf16ps(2, 5, 6);
        _tile_dpbf16ps(3, 5, 7);
    }
    return 256.0 * 4 * 16384;
}

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
    c->rate[item] = best_rate(c->seconds, amx_burst, NULL);
    float out[256] __attribute__((aligned(64)));
    _tile_stored(0, out, 64);
    volatile float sink = out[0];
    (void)sink;
    _tile_release();
}
#endif

#if HAVE_AMX
static double amx_count_burst(void *state) { return amx_burst(state) / 16384.0; } /* instructions, not flops */
#endif

/* ns per TDPBF16PS on tiles of m rows of A and C (1..16) and k bf16 products per row (2..32, even): whether a
 * smaller tile, one that skips pruned blocks, costs less. One thread, about `seconds`; 0 where this build or CPU
 * has no AMX or on arguments out of range. */
EXPORT double up_amx_tile_ns(int m, int k, double seconds) {
#if HAVE_AMX
    if (!(up_bf16_caps() & CAP_AMX) || m < 1 || m > 16 || k < 2 || k > 32 || k % 2) return 0;
    static const uint16_t src[512] __attribute__((aligned(64))) = {0};
    tilecfg cfg;
    memset(&cfg, 0, sizeof(cfg));
    cfg.palette = 1;
    for (int t = 0; t < 4; t++) { cfg.colsb[t] = 64; cfg.rows[t] = (uint8_t)m; }              /* C: m x 16 floats */
    for (int t = 4; t < 6; t++) { cfg.colsb[t] = (uint16_t)(2 * k); cfg.rows[t] = (uint8_t)m; } /* A: m x k bf16 */
    for (int t = 6; t < 8; t++) { cfg.colsb[t] = 64; cfg.rows[t] = (uint8_t)(k / 2); }       /* B: k/2 pairs x 16 */
    _tile_loadconfig(&cfg);
    _tile_zero(0); _tile_zero(1); _tile_zero(2); _tile_zero(3);
    _tile_loadd(4, src, 64); _tile_loadd(5, src, 64); _tile_loadd(6, src, 64); _tile_loadd(7, src, 64);
    const double rate = best_rate(seconds > 0 ? seconds : 0.1, amx_count_burst, NULL);
    _tile_release();
    return rate > 0 ? 1.0 / rate : 0;
#else
    (void)m; (void)k; (void)seconds;
    return 0;
#endif
}

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
    (void)unit;
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

/* ------------------------------------------------------------------ AMX block-sparse conv -------- */
/* A conv (groups = 1, any kh x kw, stride, padding, dilation) as C[16 output channels][16 output pixels] +=
 * A[16 output channels][16 units] . B[16 units][16 pixels], one TDPBF16PS per (panel of 16 output channels,
 * chunk of 16 units, block of 16 output pixels). A unit is one tap of one channel pair (2c, 2c+1): the pair
 * dimension of the bf16 dot product runs over two input channels, so an activation is prepared once per
 * image as bf16 pairs, two channels interleaved, in the padded stride-phase layout of the float32 conv's
 * "direct"/"flat" layouts: every tap of a block of 16 output pixels is then 64 contiguous bytes.
 *
 * Sparsity: each 16-row panel lists the channel pairs any of its rows keeps (so a pruned block costs nothing
 * only when all 16 rows of the panel drop its pair: 8x4 blocks at 75 % pruned keep 44 % of the pairs, 1x1
 * blocks almost all), and its units (taps x kept pairs) are cut into chunks of 16, the last one padded with
 * zero weights. A chunk whose units are 16 consecutive pairs at one tap is one strided tile load straight
 * from the prepared input; any other is first gathered, 16 rows of 64 bytes, into a per-thread tile of L1:
 * that copy is what lets any block shape run on the tiles.
 *
 * Output: with rows of at least 16 pixels ("direct") the blocks run along each output row (the last one
 * shifted left to end at the row's end) and the accumulators are stored straight to y, output channel by
 * output channel at the plane's stride; else the pixels are flattened over the padded row width (the
 * wrap-around columns computed and dropped) through a per-thread scratch. The bias is the accumulators'
 * start value. */
typedef struct {
    int Co, Ci, kh, kw, sh, sw, ph, pw, dh, dw, taps, ncp, npan, nchunk;
    int32_t *cptr;   /* [npan + 1] first chunk of each panel */
    int32_t *ucp;    /* [nchunk * 16] channel pair of each unit (padding units repeat the chunk's first) */
    int32_t *utap;   /* [nchunk * 16] tap of each unit */
    uint8_t *contig; /* [nchunk] 1: 16 consecutive pairs at one tap (one strided tile load, no gather) */
    uint16_t *wa;    /* [nchunk][16 rows][16 units][2] bf16: the A tiles */
    float *btile;    /* [npan][16][16]: each row's bias, 16 times */
    int32_t *used;   /* [n_used] channel pairs some panel keeps: the only ones prepared */
    int n_used;
    /* geometry of the last call */
    int H, W, Ho, Wo, Hph, Wph, nph, direct;
    int64_t plane, cstride, img_stride, Q, Qpad, nblk;
    int32_t *tap_off; /* [taps] */
    int32_t *uoff;    /* [nchunk * 16] offset of each unit's pixel 0 in an image's prepared input */
    int32_t *bpoff;   /* [nblk] offset of each block's first pixel in a prepared phase plane */
    int32_t *byoff;   /* [nblk] ... in the output plane (direct) */
    int64_t nsplit;   /* ranges of blocks per image when the threads split the pixels (amx_split_task) */
    int64_t bcap;
    /* one call */
    uint32_t *xbuf;
    float *obuf;
    uint32_t *gbuf;
    const float *x;
    float *y;
} amx_conv;

void up_amxconv_destroy(amx_conv *p) {
    if (!p) return;
    UP_FREE_ALL(p->cptr, p->ucp, p->utap, p->contig, p->wa, p->btile, p->used, p->tap_off, p->uoff, p->bpoff, p->byoff, p);
}


static inline uint32_t bf16_bits(float f) { /* round to nearest even; inputs are finite */
    uint32_t u;
    memcpy(&u, &f, 4);
    return (u + 0x7fffu + ((u >> 16) & 1u)) >> 16;
}

#if HAVE_AMX || HAVE_DPBF16
/* 16 floats' bits rounded to nearest even at bit 16: the bf16 value in each lane's upper half */
static inline __m512i bf16_round(__m512i u) {
    return _mm512_add_epi32(u, _mm512_add_epi32(_mm512_set1_epi32(0x7fff),
                                                _mm512_and_si512(_mm512_srli_epi32(u, 16), _mm512_set1_epi32(1))));
}

/* d[j] = (bf16(a[j]), bf16(b[j])) for j < n, 16 at a time: the scalar loop GCC made of it cost a third of a
 * batch-32 layer's time. Rounding to nearest even, as bf16_bits. */
static inline void pack_pairs(uint32_t *restrict d, const float *restrict a, const float *restrict b, int n) {
    const __m512i hi = _mm512_set1_epi32((int)0xffff0000u);
    for (int j = 0; j < n; j += 16) {
        __mmask16 m = n - j >= 16 ? (__mmask16)0xffff : (__mmask16)((1u << (n - j)) - 1);
        const __m512i ua = bf16_round(_mm512_maskz_loadu_epi32(m, a + j)), ub = bf16_round(_mm512_maskz_loadu_epi32(m, b + j));
        _mm512_mask_storeu_epi32(d + j, m, _mm512_or_si512(_mm512_srli_epi32(ua, 16), _mm512_and_si512(ub, hi)));
    }
}

#endif

/* NULL where this build or CPU has no AMX (the caller then runs the float32 kernels), on bad input or
 * without memory. Arguments as up_conv_create's (uniprune_kernels.c), with w holding bf16 values. */
amx_conv *up_amxconv_create(const int32_t *geom, int R, int n_panels, const int32_t *panel_ptr, const int32_t *ch,
                            const float *w, const float *bias) {
    if (!(up_bf16_caps() & CAP_AMX)) return NULL;
    amx_conv *p = calloc(1, sizeof(amx_conv));
    if (!p) return NULL;
    p->Co = geom[0]; p->Ci = geom[1]; p->kh = geom[2]; p->kw = geom[3];
    p->sh = geom[4]; p->sw = geom[5]; p->ph = geom[6]; p->pw = geom[7]; p->dh = geom[8]; p->dw = geom[9];
    const int Co = p->Co, Ci = p->Ci, taps = p->kh * p->kw;
    p->taps = taps;
    p->ncp = (Ci + 1) / 2;
    p->npan = (Co + 15) / 16;
    const int ncp = p->ncp, npan = p->npan;
    /* dense weights [Co][Ci][taps] and which (output, input) pairs the packing keeps */
    float *wd = calloc((size_t)Co * Ci * taps, sizeof(float));
    uint8_t *keep = calloc((size_t)npan * ncp, 1); /* [panel][pair] */
    p->cptr = up_aligned_alloc(sizeof(int32_t) * (npan + 1));
    p->btile = up_aligned_alloc(sizeof(float) * npan * 256);
    p->used = up_aligned_alloc(sizeof(int32_t) * ncp);
    p->tap_off = up_aligned_alloc(sizeof(int32_t) * taps);
    if (!wd || !keep || !p->cptr || !p->btile || !p->used || !p->tap_off) goto fail;
    for (int pn = 0; pn < n_panels; pn++)
        for (int32_t k = panel_ptr[pn]; k < panel_ptr[pn + 1]; k++) {
            int c = ch[k];
            if (c < 0 || c >= Ci) goto fail;
            for (int r = 0; r < R && pn * R + r < Co; r++) {
                int co = pn * R + r;
                keep[(co / 16) * ncp + c / 2] = 1;
                for (int t = 0; t < taps; t++) wd[((int64_t)co * Ci + c) * taps + t] = w[((int64_t)k * taps + t) * R + r];
            }
        }
    int64_t nunits = 0;
    p->cptr[0] = 0;
    for (int P = 0; P < npan; P++) {
        int kept = 0;
        for (int c = 0; c < ncp; c++) kept += keep[P * ncp + c];
        p->cptr[P + 1] = p->cptr[P] + (int32_t)(((int64_t)kept * taps + 15) / 16);
    }
    p->nchunk = p->cptr[npan];
    nunits = (int64_t)p->nchunk * 16;
    p->ucp = up_aligned_alloc(sizeof(int32_t) * (nunits + 1));
    p->utap = up_aligned_alloc(sizeof(int32_t) * (nunits + 1));
    p->contig = up_aligned_alloc(p->nchunk + 1);
    p->wa = up_aligned_alloc(sizeof(uint16_t) * (nunits * 32 + 1));
    if (!p->ucp || !p->utap || !p->contig || !p->wa) goto fail;
    memset(p->wa, 0, sizeof(uint16_t) * nunits * 32);
    for (int P = 0; P < npan; P++) {
        int64_t u = (int64_t)p->cptr[P] * 16, u_end = (int64_t)p->cptr[P + 1] * 16;
        for (int t = 0; t < taps; t++)
            for (int c = 0; c < ncp; c++) {
                if (!keep[P * ncp + c]) continue;
                p->ucp[u] = c;
                p->utap[u] = t;
                int64_t chunk = u / 16, j = u % 16;
                for (int r = 0; r < 16 && P * 16 + r < Co; r++)
                    for (int h = 0; h < 2 && 2 * c + h < Ci; h++)
                        p->wa[chunk * 512 + r * 32 + j * 2 + h] =
                            (uint16_t)bf16_bits(wd[((int64_t)(P * 16 + r) * Ci + 2 * c + h) * taps + t]);
                u++;
            }
        for (; u < u_end; u++) { /* padding units: zero weights, any finite input */
            p->ucp[u] = p->ucp[u / 16 * 16];
            p->utap[u] = p->utap[u / 16 * 16];
        }
        for (int64_t k = p->cptr[P]; k < p->cptr[P + 1]; k++) {
            int ok = 1;
            for (int j = 1; j < 16 && ok; j++)
                ok = p->utap[k * 16 + j] == p->utap[k * 16] && p->ucp[k * 16 + j] == p->ucp[k * 16] + j;
            p->contig[k] = (uint8_t)ok;
        }
        for (int r = 0; r < 16; r++)
            for (int l = 0; l < 16; l++) p->btile[P * 256 + r * 16 + l] = bias && P * 16 + r < Co ? bias[P * 16 + r] : 0.f;
    }
    for (int c = 0; c < ncp; c++) {
        int any = 0;
        for (int P = 0; P < npan; P++) any |= keep[P * ncp + c];
        if (any) p->used[p->n_used++] = c;
    }
    free(wd);
    free(keep);
    return p;
fail:
    free(wd);
    free(keep);
    up_amxconv_destroy(p);
    return NULL;
}

#if HAVE_AMX
/* Pad one channel pair of image n into its stride phases as bf16 pairs: phase(py, px)[i][j] = (x[2c], x[2c+1])
 * at padded position (i*sh + py, j*sw + px), zeros in the padding (and for the missing odd channel). */
static void amx_prep(amx_conv *p, int64_t n, int c) {
    const int H = p->H, W = p->W, Wph = p->Wph;
    const float *x0 = p->x + (n * p->Ci + 2 * c) * (int64_t)H * W;
    const float *x1 = 2 * c + 1 < p->Ci ? x0 + (int64_t)H * W : NULL;
    uint32_t *d = p->xbuf + n * p->img_stride + (int64_t)c * p->cstride;
    for (int py = 0; py < p->sh; py++)
        for (int px = 0; px < p->sw; px++) {
            uint32_t *ph = d + (int64_t)(py * p->sw + px) * p->plane;
            /* output columns j whose input column j*sw + px - pw lies in [0, W) */
            int jlo = (p->pw - px + p->sw - 1) / p->sw;
            if (jlo < 0) jlo = 0;
            int jhi = (W - 1 + p->pw - px) / p->sw + 1;
            if (jhi > Wph) jhi = Wph;
            if (jhi < jlo) jhi = jlo;
            for (int i = 0; i < p->Hph; i++) {
                uint32_t *o = ph + (int64_t)i * Wph;
                int r = i * p->sh + py - p->ph;
                if (r < 0 || r >= H) {
                    memset(o, 0, sizeof(uint32_t) * Wph);
                    continue;
                }
                const float *s0 = x0 + (int64_t)r * W + (jlo * p->sw + px - p->pw);
                const float *s1 = x1 ? x1 + (int64_t)r * W + (jlo * p->sw + px - p->pw) : NULL;
                for (int j = 0; j < jlo; j++) o[j] = 0;
                const int n_in = jhi - jlo, sw = p->sw;
                if (s1 && sw == 1)
                    pack_pairs(o + jlo, s0, s1, n_in);
                else if (s1)
                    for (int j = 0; j < n_in; j++) o[jlo + j] = bf16_bits(s0[j * sw]) | bf16_bits(s1[j * sw]) << 16;
                else
                    for (int j = 0; j < n_in; j++) o[jlo + j] = bf16_bits(s0[j * sw]);
                for (int j = jhi; j < Wph; j++) o[j] = 0;
            }
        }
}

static void amx_prep_task(void *ctx, int64_t item, int tid) {
    (void)tid;
    amx_conv *p = ctx;
    amx_prep(p, item / p->n_used, p->used[item % p->n_used]);
}

static inline void gather16(uint32_t *restrict d, const uint32_t *xb, const int32_t *uo, int64_t poff) {
    for (int r = 0; r < 16; r++) _mm512_store_si512((void *)(d + 16 * r), _mm512_loadu_si512((const void *)(xb + uo[r] + poff)));
}

/* Gather the B rows of chunk k for the `cnt` blocks from g on into gb (unless the chunk loads straight). */
static inline void amx_gather(const amx_conv *p, const uint32_t *xb, int k, int64_t g, int64_t cnt, uint32_t *gb) {
    if (p->contig[k]) return;
    const int32_t *uo = p->uoff + (int64_t)k * 16;
    for (int64_t i = 0; i < cnt; i++) gather16(gb + i * 256, xb, uo, p->bpoff[g + i]);
}

/* B tile `tb` of block i of chunk k into accumulator `tc`: a strided load straight from the prepared input
 * where the chunk is contiguous, else from the rows gathered an iteration earlier. Tile numbers must be
 * immediates: a macro. */
#define AMX_BLOCK(tc, ta, tb, i)                                                                          \
    do {                                                                                                  \
        if (p->contig[k])                                                                                 \
            _tile_loadd(tb, xb + p->uoff[(int64_t)k * 16] + p->bpoff[g + (i)], (long)(p->cstride * 4));   \
        else                                                                                              \
            _tile_loadd(tb, cur + (i) * 256, 64);                                                         \
        _tile_dpbf16ps(tc, ta, tb);                                                                       \
    } while (0)

/* One chunk k into the cnt accumulators. Tiles are not renamed: a load into a tile waits for every
 * instruction still reading it, so consecutive chunks alternate their A tile (4, 5) and blocks their B
 * tile (6, 7). */
#define AMX_CHUNK(ta)                                                                                     \
    do {                                                                                                  \
        const uint32_t *cur = gb + ((k - k0) & 1) * 1024;                                                 \
        if (k + 1 < k1) amx_gather(p, xb, k + 1, g, cnt, gb + ((k + 1 - k0) & 1) * 1024);                 \
        _tile_loadd(ta, p->wa + (int64_t)k * 512, 64);                                                    \
        AMX_BLOCK(0, ta, 6, 0);                                                                           \
        if (cnt > 1) AMX_BLOCK(1, ta, 7, 1);                                                              \
        if (cnt > 2) AMX_BLOCK(2, ta, 6, 2);                                                              \
        if (cnt > 3) AMX_BLOCK(3, ta, 7, 3);                                                              \
    } while (0)

/* Panel P of image n over its blocks g0..g1 (of nblk) */
static void amx_panel(amx_conv *p, int64_t n, int P, int64_t g0, int64_t g1, int tid) {
    const int64_t Q = p->Q;
    const int rows = p->Co - P * 16 < 16 ? p->Co - P * 16 : 16;
    const int straight = p->direct && rows == 16;
    const uint32_t *xb = p->xbuf + n * p->img_stride;
    float *yP = p->y + (n * p->Co + (int64_t)P * 16) * Q;
    float *ob = p->obuf + (int64_t)tid * 16 * p->Qpad;
    uint32_t *gb = p->gbuf + (int64_t)tid * 8 * 256; /* two sets of 4 gathered B tiles */
    const float *bt = p->btile + (int64_t)P * 256;
    const int k0 = p->cptr[P], k1 = p->cptr[P + 1];
    /* blocks in groups of up to 4 accumulators, as even as possible: a TDPBF16PS's latency is about three of
     * its issue intervals, so a group of 1 after three of 4 (8x8 maps: 5 blocks) would wait on itself */
    for (int64_t g = g0, cnt; g < g1; g += cnt) {
        const int64_t left = g1 - g, groups = (left + 3) / 4;
        cnt = (left + groups - 1) / groups;
        _tile_loadd(0, bt, 64);
        if (cnt > 1) _tile_loadd(1, bt, 64);
        if (cnt > 2) _tile_loadd(2, bt, 64);
        if (cnt > 3) _tile_loadd(3, bt, 64);
        /* a tile load right after the stores that gathered its rows waits for them to reach L1: gather one
         * chunk ahead, so the stores drain while the previous chunk's tiles compute (2x at 16 channels) */
        if (k0 < k1) amx_gather(p, xb, k0, g, cnt, gb);
        int k = k0;
        for (; k + 1 < k1; k++) {
            AMX_CHUNK(4);
            k++;
            AMX_CHUNK(5);
        }
        if (k < k1) AMX_CHUNK(4);
        if (straight) {
            const long st = (long)(Q * 4);
            _tile_stored(0, yP + p->byoff[g], st);
            if (cnt > 1) _tile_stored(1, yP + p->byoff[g + 1], st);
            if (cnt > 2) _tile_stored(2, yP + p->byoff[g + 2], st);
            if (cnt > 3) _tile_stored(3, yP + p->byoff[g + 3], st);
        } else {
            const long st = (long)(p->Qpad * 4);
            _tile_stored(0, ob + g * 16, st);
            if (cnt > 1) _tile_stored(1, ob + (g + 1) * 16, st);
            if (cnt > 2) _tile_stored(2, ob + (g + 2) * 16, st);
            if (cnt > 3) _tile_stored(3, ob + (g + 3) * 16, st);
        }
    }
    if (straight) return;
    for (int r = 0; r < rows; r++) {
        const float *o = ob + (int64_t)r * p->Qpad;
        float *d = yP + (int64_t)r * Q;
        if (p->direct) {
            for (int64_t b = g0; b < g1; b++)
                for (int l = 0; l < 16; l++) d[p->byoff[b] + l] = o[b * 16 + l];
        } else { /* the flat positions of these blocks that are output pixels, row by row (a division per
                  * element here once took a fifth of ResNet-56's batch-32 time) */
            const int64_t Wph = p->Wph, q0 = g0 * 16, q1 = g1 * 16 < p->Ho * Wph ? g1 * 16 : p->Ho * Wph;
            for (int64_t oy = q0 / Wph; oy * Wph < q1; oy++) {
                const int64_t a = q0 > oy * Wph ? q0 : oy * Wph, b = q1 < oy * Wph + p->Wo ? q1 : oy * Wph + p->Wo;
                if (b > a) memcpy(d + oy * p->Wo + (a - oy * Wph), o + a, sizeof(float) * (size_t)(b - a));
            }
        }
    }
}

static void amx_panel_task(void *ctx, int64_t item, int tid) {
    amx_conv *p = ctx;
    amx_configure(); /* per work item: the tile state is per thread (see amx_configure) */
    amx_panel(p, item / p->npan, (int)(item % p->npan), 0, p->nblk, tid);
    _tile_release();
}

/* Item n * nsplit + s: every panel of image n over the s-th of nsplit ranges of its blocks */
static void amx_split_task(void *ctx, int64_t item, int tid) {
    amx_conv *p = ctx;
    const int64_t n = item / p->nsplit, s = item % p->nsplit;
    const int64_t g0 = p->nblk * s / p->nsplit, g1 = p->nblk * (s + 1) / p->nsplit;
    amx_configure();
    for (int P = 0; P < p->npan; P++) amx_panel(p, n, P, g0, g1, tid);
    _tile_release();
}

static void amx_image_task(void *ctx, int64_t n, int tid) {
    amx_conv *p = ctx;
    for (int j = 0; j < p->n_used; j++) amx_prep(p, n, p->used[j]);
    amx_configure();
    for (int P = 0; P < p->npan; P++) amx_panel(p, n, P, 0, p->nblk, tid);
    _tile_release();
}

#endif

/* Tests and benchmarks only: how up_amxconv_run splits fewer images than threads (-1 by its rule, 0 by
 * panels, 1 by ranges of output pixels). */
static int g_amx_split = -1;
EXPORT void up_amx_force_split(int how) { g_amx_split = how == 0 || how == 1 ? how : -1; }

#if HAVE_AMX
static pthread_mutex_t g_amx_mu = PTHREAD_MUTEX_INITIALIZER; /* one scratch for every AMX conv, as the f32 kernels */
static void *g_amx_scratch;
static size_t g_amx_cap;
#endif

/* x: [N][Ci][H][W] float32, y: [N][Co][Ho][Wo] float32. 0, or -1 out of memory, -2 input smaller than the
 * dilated kernel, -3 no AMX in this build. */
int up_amxconv_run(amx_conv *p, const float *x, float *y, int N, int H, int W, int nthreads) {
#if HAVE_AMX
    const int Hp = H + 2 * p->ph, Wp = W + 2 * p->pw;
    const int eh = p->dh * (p->kh - 1) + 1, ew = p->dw * (p->kw - 1) + 1;
    if (Hp < eh || Wp < ew || N < 1) return -2;
    if (nthreads < 1) nthreads = 1;
    if (nthreads > 64) nthreads = 64;
    if (p->H != H || p->W != W) { /* offsets depend on the input size only */
        p->H = H;
        p->W = W;
        p->Ho = (Hp - eh) / p->sh + 1;
        p->Wo = (Wp - ew) / p->sw + 1;
        p->Hph = (Hp + p->sh - 1) / p->sh;
        p->Wph = (Wp + p->sw - 1) / p->sw;
        p->nph = p->sh * p->sw;
        p->plane = (int64_t)p->Hph * p->Wph;
        p->cstride = (p->nph * p->plane + 15) / 16 * 16;
        p->img_stride = (int64_t)p->ncp * p->cstride;
        p->Q = (int64_t)p->Ho * p->Wo;
        p->direct = p->Wo >= 16;
        int64_t nbr = (p->Wo + 15) / 16;
        p->nblk = p->direct ? p->Ho * nbr : ((int64_t)p->Ho * p->Wph + 15) / 16;
        p->Qpad = p->nblk * 16;
        if ((int64_t)p->ncp * p->cstride + p->plane > INT32_MAX / 2) return -1;
        for (int ky = 0; ky < p->kh; ky++)
            for (int kx = 0; kx < p->kw; kx++) {
                int py = (ky * p->dh) % p->sh, ry = (ky * p->dh) / p->sh;
                int px = (kx * p->dw) % p->sw, rx = (kx * p->dw) / p->sw;
                p->tap_off[ky * p->kw + kx] = (int32_t)((py * p->sw + px) * p->plane + (int64_t)ry * p->Wph + rx);
            }
        free(p->uoff);
        p->uoff = up_aligned_alloc(sizeof(int32_t) * ((int64_t)p->nchunk * 16 + 1));
        if (!p->uoff) {
            p->H = 0;
            return -1;
        }
        for (int64_t u = 0; u < (int64_t)p->nchunk * 16; u++)
            p->uoff[u] = (int32_t)(p->ucp[u] * p->cstride + p->tap_off[p->utap[u]]);
        if (p->nblk > p->bcap) {
            free(p->bpoff);
            free(p->byoff);
            p->bpoff = up_aligned_alloc(sizeof(int32_t) * p->nblk);
            p->byoff = up_aligned_alloc(sizeof(int32_t) * p->nblk);
            p->bcap = p->bpoff && p->byoff ? p->nblk : 0;
            if (!p->bcap) {
                p->H = 0;
                return -1;
            }
        }
        for (int64_t b = 0; b < p->nblk; b++) {
            if (p->direct) {
                int64_t oy = b / nbr, ox = b % nbr * 16;
                if (ox > p->Wo - 16) ox = p->Wo - 16;
                p->bpoff[b] = (int32_t)(oy * p->Wph + ox);
                p->byoff[b] = (int32_t)(oy * p->Wo + ox);
            } else {
                p->bpoff[b] = p->byoff[b] = (int32_t)(b * 16);
            }
        }
    }
    /* the blocks of the flat layout read up to a plane past a pair's phases: slack after the last image */
    size_t xneed = (size_t)N * p->img_stride + p->plane + p->Qpad + 64;
    size_t oneed = (size_t)nthreads * 16 * p->Qpad, gneed = (size_t)nthreads * 8 * 256;
    size_t bytes = (xneed + gneed) * 4 + oneed * 4;
    pthread_mutex_lock(&g_amx_mu);
    if (bytes > g_amx_cap) {
        free(g_amx_scratch);
        g_amx_scratch = up_aligned_alloc(bytes);
        g_amx_cap = g_amx_scratch ? bytes : 0;
        if (!g_amx_scratch) {
            pthread_mutex_unlock(&g_amx_mu);
            return -1;
        }
        memset(g_amx_scratch, 0, bytes); /* the slack and unprepared pairs feed dropped lanes only: keep them finite */
    }
    p->gbuf = g_amx_scratch;
    p->obuf = (float *)((uint32_t *)g_amx_scratch + gneed);
    p->xbuf = (uint32_t *)g_amx_scratch + gneed + oneed;
    p->x = x;
    p->y = y;
    /* Below about 1024 tile products (a few µs) a second thread costs more than it saves (ResNet-50's
     * 256->64 1x1 at 16x16: 21 µs on one thread, 24 to 28 µs on two). */
    if ((int64_t)N * p->nchunk * p->nblk < 1024) nthreads = 1;
    if (nthreads == 1 || N >= 4 * nthreads) {
        up_parallel_for(N, nthreads, amx_image_task, p);
    } else {
        up_parallel_for((int64_t)N * p->n_used, nthreads, amx_prep_task, p);
        /* Few images: with few panels, split each image's output pixels between the threads (every thread
         * runs every panel over its pixels), else split the panels. Measured at batch 1 on 2 threads (Xeon,
         * AMX; speedup over 1 thread, panels / pixels): 64->64 3x3 at 16x16 1.08 / 1.50, at 32x32 1.32 / 1.52;
         * 128->128 at 8x8 1.43 / 1.36; ViT-B's 768->3072 at 197 tokens 1.60 / 1.48. */
        p->nsplit = (nthreads + N - 1) / N;
        int split = p->npan < 4 * nthreads && p->nblk >= 4 * p->nsplit;
        if (g_amx_split >= 0) split = g_amx_split && p->nblk >= p->nsplit;
        if (split)
            up_parallel_for((int64_t)N * p->nsplit, nthreads, amx_split_task, p);
        else
            up_parallel_for((int64_t)N * p->npan, nthreads, amx_panel_task, p);
    }
    pthread_mutex_unlock(&g_amx_mu);
    return 0;
#else
    (void)p; (void)x; (void)y; (void)N; (void)H; (void)W; (void)nthreads;
    return -3;
#endif
}

/* ------------------------------------------------------------------ VDPBF16PS block-sparse conv --- */
/* A conv (groups = 1, any kh x kw, stride, padding, dilation) on the bf16 dot product, for CPUs with
 * avx512_bf16 and no AMX (AMD Zen 4/5). VDPBF16PS adds two products per float32 lane: the pair runs over two
 * taps of one kernel row, (kx = 2m, 2m + 1), never over two input channels, so a pruned block costs nothing
 * whatever its shape (a 1x1 block is one input channel of one output channel: pairing channels would keep a
 * pair whenever either is kept, 44 % of the pairs at 75 % pruned). A 3x3 kernel is 6 dot products per
 * channel (the odd tap paired with a zero weight), against 9 FMAs in float32. Where whole aligned channel
 * pairs are kept (8x4 blocks, dense layers) or the window has one tap (1x1 convs), pairing the channels
 * (2c, 2c + 1) takes fewer dot products (4.5 per channel for 3x3) and is used instead: whichever pairing needs
 * fewer, per layer, at creation.
 *
 * Layout: as the float32 kernels' (the same panels of R output channels, the same kept-channel lists), with
 * each input channel prepared once per image as the stride phases of its padded planes in which element (i, j)
 * of phase (py, px) is the bf16 pair (xpad[i*sh + py][j*sw + px], xpad[i*sh + py][j*sw + px + dw]): tap pair
 * (ky, m) of 16 consecutive output pixels is then 64 contiguous bytes. Register tiles vectorise over output
 * pixels (16 per zmm), never over the block: a row's weight pair is a broadcast, so a 1x1 block (R = 1) runs
 * as fast per dot product as an 8x4 one. Output vectors run along each output row where rows have at least
 * 16 pixels ("direct", stored straight to y), else over the rows flattened at the padded width through a
 * per-thread scratch ("flat"), as up_conv_run's layouts. */
typedef struct {
    int Co, Ci, kh, kw, sh, sw, ph, pw, dh, dw, R, n_panels;
    int chpair;          /* 1: pairs of channels (2c, 2c + 1), 0: pairs of taps (kx = 2m, 2m + 1) */
    int hw, npt;         /* dot products per kernel row (kw, or (kw + 1) / 2 tap pairs) and per kernel */
    int nsrc;            /* prepared sources per image: channel pairs, or channels */
    int32_t *panel_ptr;  /* [n_panels + 1] */
    int32_t *ch;         /* [items] each panel's kept sources (channel pairs or channels) */
    uint32_t *w;         /* [items][npt][R] bf16 pairs (channel 2c or tap 2m in the low half, the other or 0 high) */
    float *bias;         /* [n_panels * R] */
    int32_t *used;       /* [n_used] sources some panel keeps: the only ones prepared */
    int n_used;
    /* geometry of the last call */
    int H, W, Ho, Wo, Hph, Wph, direct;
    int64_t plane, cstride, img_stride, Qpad, nvec, vcap;
    int32_t *tp_off; /* [npt] offset of each tap pair in a prepared channel */
    int32_t *vx;     /* [nvec] offset of each output vector's pixel 0 in a phase plane */
    int32_t *vy;     /* [nvec] ... in the output plane (direct) or the scratch row (flat) */
    /* one call */
    uint32_t *xbuf;
    float *obuf;
    const float *x;
    float *y;
} dp_conv;

void up_dpconv_destroy(dp_conv *p) {
    if (!p) return;
    UP_FREE_ALL(p->panel_ptr, p->ch, p->w, p->bias, p->used, p->tp_off, p->vx, p->vy, p);
}

/* NULL where this build or CPU has no VDPBF16PS, on bad input or without memory. Arguments as up_conv_create's
 * (uniprune_kernels.c), w holding bf16 values (exact: the low 16 bits of each float are zero). */
dp_conv *up_dpconv_create(const int32_t *geom, int R, int n_panels, const int32_t *panel_ptr, const int32_t *ch,
                          const float *w, const float *bias) {
    if (!(up_bf16_caps() & CAP_DPBF16)) return NULL;
    for (int i = 0; i < 10; i++)
        if (!up_in_range(geom[i], i == 6 || i == 7 ? 0 : 1, 1 << 24)) return NULL;
    if ((R != 1 && R != 2 && R != 4 && R != 8) || n_panels != (geom[0] + R - 1) / R || !panel_ptr || panel_ptr[0] != 0)
        return NULL;
    for (int i = 0; i < n_panels; i++)
        if (panel_ptr[i + 1] < panel_ptr[i] || panel_ptr[i + 1] - panel_ptr[i] > geom[1]) return NULL;
    const int64_t nnz = panel_ptr[n_panels];
    for (int64_t k = 0; k < nnz; k++)
        if (!up_in_range(ch[k], 0, geom[1] - 1)) return NULL;
    dp_conv *p = calloc(1, sizeof(dp_conv));
    int32_t *slot = NULL;
    if (!p) return NULL;
    p->Co = geom[0]; p->Ci = geom[1]; p->kh = geom[2]; p->kw = geom[3];
    p->sh = geom[4]; p->sw = geom[5]; p->ph = geom[6]; p->pw = geom[7]; p->dh = geom[8]; p->dw = geom[9];
    p->R = R;
    p->n_panels = n_panels;
    const int64_t taps = (int64_t)p->kh * p->kw, ncp = (p->Ci + 1) / 2;
    /* the pairing with fewer dot products: taps (any block shape packs whole) or channels (aligned pairs of
     * kept channels, as 8x4 blocks and dense layers keep them, and 1x1 windows, which have no tap to pair) */
    slot = malloc(sizeof(int32_t) * ncp);
    if (!slot) goto fail;
    int64_t npairs = 0;
    for (int pn = 0; pn < n_panels; pn++) {
        memset(slot, 0, sizeof(int32_t) * ncp);
        for (int32_t k = panel_ptr[pn]; k < panel_ptr[pn + 1]; k++) npairs += !slot[ch[k] / 2]++;
    }
    p->chpair = npairs * taps < nnz * p->kh * ((p->kw + 1) / 2);
    p->hw = p->chpair ? p->kw : (p->kw + 1) / 2;
    p->npt = p->kh * p->hw;
    p->nsrc = p->chpair ? (int)ncp : p->Ci;
    const int64_t nit = p->chpair ? npairs : nnz, npt = p->npt;
    p->panel_ptr = up_aligned_alloc(sizeof(int32_t) * (n_panels + 1));
    p->ch = up_aligned_alloc(sizeof(int32_t) * (nit + 1));
    p->w = up_aligned_alloc(sizeof(uint32_t) * (nit * npt * R + 1));
    p->bias = up_aligned_alloc(sizeof(float) * n_panels * R);
    p->used = up_aligned_alloc(sizeof(int32_t) * p->nsrc);
    p->tp_off = up_aligned_alloc(sizeof(int32_t) * npt);
    if (!p->panel_ptr || !p->ch || !p->w || !p->bias || !p->used || !p->tp_off) goto fail;
    memset(p->w, 0, sizeof(uint32_t) * nit * npt * R);
    memset(p->used, 0, sizeof(int32_t) * p->nsrc);
    p->panel_ptr[0] = 0;
    for (int pn = 0; pn < n_panels; pn++) {
        const int32_t k0 = panel_ptr[pn], k1 = panel_ptr[pn + 1];
        if (!p->chpair) { /* the float32 packing, taps paired along each kernel row */
            for (int32_t k = k0; k < k1; k++) {
                p->ch[k] = ch[k];
                for (int ky = 0; ky < p->kh; ky++)
                    for (int m = 0; m < p->hw; m++)
                        for (int r = 0; r < R; r++) {
                            const float *wt = w + ((int64_t)k * taps + (int64_t)ky * p->kw + 2 * m) * R + r;
                            uint32_t lo = bf16_bits(wt[0]), hi = 2 * m + 1 < p->kw ? bf16_bits(wt[R]) : 0;
                            p->w[(((int64_t)k * npt) + ky * p->hw + m) * R + r] = lo | hi << 16;
                        }
            }
            p->panel_ptr[pn + 1] = k1;
            continue;
        }
        /* channel pairs: the panel's pairs in increasing order, each channel's weights in its half */
        for (int64_t c = 0; c < ncp; c++) slot[c] = -1;
        for (int32_t k = k0; k < k1; k++) slot[ch[k] / 2] = 0;
        int32_t it = p->panel_ptr[pn];
        for (int64_t c = 0; c < ncp; c++)
            if (slot[c] >= 0) {
                slot[c] = it;
                p->ch[it++] = (int32_t)c;
            }
        p->panel_ptr[pn + 1] = it;
        for (int32_t k = k0; k < k1; k++) {
            uint32_t *wi = p->w + (int64_t)slot[ch[k] / 2] * npt * R;
            const int shift = ch[k] & 1 ? 16 : 0;
            for (int64_t t = 0; t < taps; t++)
                for (int r = 0; r < R; r++) wi[t * R + r] |= bf16_bits(w[((int64_t)k * taps + t) * R + r]) << shift;
        }
    }
    for (int64_t k = 0; k < nit; k++) p->used[p->ch[k]] = 1;
    for (int c = 0; c < p->nsrc; c++)
        if (p->used[c]) p->used[p->n_used++] = c;
    for (int i = 0; i < n_panels * R; i++) p->bias[i] = bias && i < p->Co ? bias[i] : 0.f;
    free(slot);
    return p;
fail:
    free(slot);
    up_dpconv_destroy(p);
    return NULL;
}

#if HAVE_DPBF16
#define DP_TVMAX 12

/* One register tile: rows r0..r0+NR-1 of a panel of R rows x output vectors g0..g0+NV-1, accumulated over
 * the panel's kept channels and tap pairs. R, NR and NV are constants at every call site (acc in registers):
 * 8x2, 4x4, 2x8 and 1x12 accumulators, the rest of the 32 zmm for the inputs and a broadcast weight pair. */
static inline __attribute__((always_inline)) void dp_tile(const dp_conv *p, const uint32_t *xb, int k0, int k1,
                                                          int r0, int rows, int64_t g0, const float *bias,
                                                          float *out, int64_t ostride, const int R, const int NR,
                                                          const int NV) {
    int64_t xo[DP_TVMAX], yo[DP_TVMAX];
    for (int v = 0; v < NV; v++) {
        xo[v] = p->vx[g0 + v];
        yo[v] = p->vy[g0 + v];
    }
    __m512 acc[8][DP_TVMAX];
    for (int r = 0; r < NR; r++)
        for (int v = 0; v < NV; v++) acc[r][v] = _mm512_set1_ps(bias[r0 + r]);
    const int npt = p->npt;
    for (int k = k0; k < k1; k++) {
        const uint32_t *xc = xb + (int64_t)p->ch[k] * p->cstride;
        const uint32_t *wk = p->w + (int64_t)k * npt * R + r0;
        for (int t = 0; t < npt; t++) {
            const uint32_t *xp = xc + p->tp_off[t];
            const uint32_t *wt = wk + t * R;
            __m512bh xv[DP_TVMAX];
            for (int v = 0; v < NV; v++) xv[v] = (__m512bh)_mm512_loadu_si512((const void *)(xp + xo[v]));
            for (int r = 0; r < NR; r++) {
                const __m512bh wv = (__m512bh)_mm512_set1_epi32((int)wt[r]);
                for (int v = 0; v < NV; v++) acc[r][v] = _mm512_dpbf16_ps(acc[r][v], xv[v], wv);
            }
        }
    }
    for (int r = 0; r < NR; r++)
        if (r0 + r < rows)
            for (int v = 0; v < NV; v++) _mm512_storeu_ps(out + (r0 + r) * ostride + yo[v], acc[r][v]);
}

/* The tiles of one panel: full TV-vector tiles, then the leftover vectors in one tile of NVL < TV vectors. */
#define DP_LEFT(NVL)                                                                                        \
    case NVL:                                                                                               \
        if (NVL < TV) dp_tile(p, xb, k0, k1, 0, rows, g, bias, out, ostride, R, R, NVL < TV ? NVL : 1);     \
        break;
#define DP_PANEL(RR, TVV)                                                                                   \
    do {                                                                                                    \
        enum { R = RR, TV = TVV };                                                                          \
        int64_t g = 0;                                                                                      \
        for (; g + TV <= p->nvec; g += TV) dp_tile(p, xb, k0, k1, 0, rows, g, bias, out, ostride, R, R, TV); \
        switch (p->nvec - g) {                                                                              \
            DP_LEFT(1) DP_LEFT(2) DP_LEFT(3) DP_LEFT(4) DP_LEFT(5) DP_LEFT(6)                               \
            DP_LEFT(7) DP_LEFT(8) DP_LEFT(9) DP_LEFT(10) DP_LEFT(11)                                        \
            default: break;                                                                                 \
        }                                                                                                   \
    } while (0)

static __attribute__((noinline)) void dp_panel(const dp_conv *p, const uint32_t *xb, int k0, int k1, int rows,
                                               const float *bias, float *out, int64_t ostride) {
    switch (p->R) {
    case 8: DP_PANEL(8, 2); break;
    case 4: DP_PANEL(4, 4); break;
    case 2: DP_PANEL(2, 8); break;
    default: DP_PANEL(1, 12); break;
    }
}

/* Channel c of image n as the tap-pair phases described above; zeros in the padding and past the row's
 * end (the partner of an odd kernel width's last tap, whose weight is zero). */
static void dp_prep(dp_conv *p, int64_t n, int c) {
    const int H = p->H, W = p->W, sh = p->sh, sw = p->sw, Wph = p->Wph, pw = p->pw;
    const int blen = Wph * sw + p->dw + 32;
    float rowbuf[2 * blen] __attribute__((aligned(64)));
    memset(rowbuf, 0, sizeof(float) * 2 * blen);
    /* the pair's second element: the same row dw further (tap pairs), or the next channel's row (channel pairs,
     * none for an odd channel count's last: zeros) */
    const int c0 = p->chpair ? 2 * c : c, dw = p->chpair ? blen : p->dw;
    const float *src = p->x + (n * p->Ci + c0) * (int64_t)H * W;
    const float *src1 = p->chpair && c0 + 1 < p->Ci ? src + (int64_t)H * W : NULL;
    uint32_t *dst = p->xbuf + n * p->img_stride + (int64_t)c * p->cstride;
    const int wn = W < blen - pw ? W : blen - pw;
    for (int pr = 0; pr < p->Hph * sh; pr++) {
        const int r = pr - p->ph, py = pr % sh;
        uint32_t *d = dst + (int64_t)py * sw * p->plane + (int64_t)(pr / sh) * Wph;
        if (r < 0 || r >= H) {
            for (int px = 0; px < sw; px++) memset(d + px * p->plane, 0, sizeof(uint32_t) * Wph);
            continue;
        }
        memcpy(rowbuf + pw, src + (int64_t)r * W, sizeof(float) * wn); /* the pads around stay zero */
        if (src1) memcpy(rowbuf + blen + pw, src1 + (int64_t)r * W, sizeof(float) * wn);
        if (sw == 1) {
            pack_pairs(d, rowbuf, rowbuf + dw, Wph);
        } else {
            for (int px = 0; px < sw; px++)
                for (int j = 0; j < Wph; j++)
                    d[px * p->plane + j] = bf16_bits(rowbuf[j * sw + px]) | bf16_bits(rowbuf[j * sw + px + dw]) << 16;
        }
    }
}

static void dp_prep_task(void *ctx, int64_t item, int tid) {
    (void)tid;
    dp_conv *p = ctx;
    dp_prep(p, item / p->n_used, p->used[item % p->n_used]);
}

static void dp_compute_task(void *ctx, int64_t item, int tid) {
    dp_conv *p = ctx;
    const int64_t n = item / p->n_panels;
    const int pn = (int)(item % p->n_panels), R = p->R;
    const int k0 = p->panel_ptr[pn], k1 = p->panel_ptr[pn + 1];
    const int rows = p->Co - pn * R < R ? p->Co - pn * R : R;
    const float *bias = p->bias + pn * R;
    const int64_t Q = (int64_t)p->Ho * p->Wo;
    float *y = p->y + (n * p->Co + (int64_t)pn * R) * Q;
    if (k0 == k1) { /* the whole output-channel block is pruned */
        for (int r = 0; r < rows; r++)
            for (int64_t i = 0; i < Q; i++) y[r * Q + i] = bias[r];
        return;
    }
    const uint32_t *xb = p->xbuf + n * p->img_stride;
    float *out = p->direct ? y : p->obuf + (int64_t)tid * 8 * p->Qpad;
    const int64_t ostride = p->direct ? Q : p->Qpad;
    dp_panel(p, xb, k0, k1, rows, bias, out, ostride);
    if (p->direct) return;
    for (int r = 0; r < rows; r++)
        for (int oy = 0; oy < p->Ho; oy++)
            for (int ox = 0; ox < p->Wo; ox++) y[r * Q + (int64_t)oy * p->Wo + ox] = out[r * p->Qpad + (int64_t)oy * p->Wph + ox];
}

static void dp_image_task(void *ctx, int64_t n, int tid) {
    dp_conv *p = ctx;
    for (int j = 0; j < p->n_used; j++) dp_prep(p, n, p->used[j]);
    for (int pn = 0; pn < p->n_panels; pn++) dp_compute_task(p, n * p->n_panels + pn, tid);
}

static pthread_mutex_t g_dp_mu = PTHREAD_MUTEX_INITIALIZER; /* one scratch for every such conv, as the others */
static void *g_dp_scratch;
static size_t g_dp_cap;

/* The offsets that depend on the input size only: 0, or -1 (out of memory, or offsets past int32). */
static int dp_geometry(dp_conv *p, int H, int W) {
    const int Hp = H + 2 * p->ph, Wp = W + 2 * p->pw;
    const int eh = p->dh * (p->kh - 1) + 1, ew = p->dw * (p->kw - 1) + 1;
    p->Ho = (Hp - eh) / p->sh + 1;
    p->Wo = (Wp - ew) / p->sw + 1;
    p->Hph = (Hp + p->sh - 1) / p->sh;
    p->Wph = (Wp + p->sw - 1) / p->sw;
    p->plane = (int64_t)p->Hph * p->Wph;
    p->cstride = ((int64_t)p->sh * p->sw * p->plane + 15) / 16 * 16;
    p->img_stride = (int64_t)p->nsrc * p->cstride;
    if (p->img_stride + p->plane > INT32_MAX / 2) return -1;
    p->direct = p->Wo >= 16;
    const int64_t nbr = (p->Wo + 15) / 16;
    p->nvec = p->direct ? p->Ho * nbr : ((int64_t)p->Ho * p->Wph + 15) / 16;
    p->Qpad = p->nvec * 16;
    for (int ky = 0; ky < p->kh; ky++)
        for (int m = 0; m < p->hw; m++) { /* m: a tap (channel pairs) or the first of a tap pair */
            const int kx = p->chpair ? m : 2 * m;
            const int py = (ky * p->dh) % p->sh, ry = (ky * p->dh) / p->sh;
            const int px = (kx * p->dw) % p->sw, rx = (kx * p->dw) / p->sw;
            p->tp_off[ky * p->hw + m] = (int32_t)((py * p->sw + px) * p->plane + (int64_t)ry * p->Wph + rx);
        }
    if (p->nvec > p->vcap) {
        free(p->vx);
        free(p->vy);
        p->vx = up_aligned_alloc(sizeof(int32_t) * p->nvec);
        p->vy = up_aligned_alloc(sizeof(int32_t) * p->nvec);
        p->vcap = p->vx && p->vy ? p->nvec : 0;
        if (!p->vcap) return -1;
    }
    for (int64_t g = 0; g < p->nvec; g++) {
        if (p->direct) {
            int64_t oy = g / nbr, ox = g % nbr * 16;
            if (ox > p->Wo - 16) ox = p->Wo - 16; /* the last one shifted left to end at the row's end */
            p->vx[g] = (int32_t)(oy * p->Wph + ox);
            p->vy[g] = (int32_t)(oy * p->Wo + ox);
        } else {
            p->vx[g] = p->vy[g] = (int32_t)(g * 16);
        }
    }
    p->H = H;
    p->W = W;
    return 0;
}
#endif

/* x: [N][Ci][H][W] float32, y: [N][Co][Ho][Wo] float32. 0, or -1 out of memory, -2 input smaller than the
 * dilated kernel, -3 no VDPBF16PS in this build. */
int up_dpconv_run(dp_conv *p, const float *x, float *y, int N, int H, int W, int nthreads) {
#if HAVE_DPBF16
    if (H < 1 || W < 1 || H + 2 * p->ph < p->dh * (p->kh - 1) + 1 || W + 2 * p->pw < p->dw * (p->kw - 1) + 1 || N < 1)
        return -2;
    if (nthreads < 1) nthreads = 1;
    if (nthreads > 64) nthreads = 64;
    if ((p->H != H || p->W != W) && dp_geometry(p, H, W)) {
        p->H = 0;
        return -1;
    }
    /* the flat layout's vectors read up to a plane and a vector past a channel's phases: slack after the last image */
    const size_t xneed = (size_t)N * p->img_stride + p->plane + p->Qpad + 64;
    const size_t oneed = p->direct ? 0 : (size_t)nthreads * 8 * p->Qpad;
    const size_t bytes = (xneed + oneed) * 4;
    pthread_mutex_lock(&g_dp_mu);
    if (bytes > g_dp_cap) {
        free(g_dp_scratch);
        g_dp_scratch = up_aligned_alloc(bytes);
        g_dp_cap = g_dp_scratch ? bytes : 0;
        if (!g_dp_scratch) {
            pthread_mutex_unlock(&g_dp_mu);
            return -1;
        }
        memset(g_dp_scratch, 0, bytes); /* the slack and unprepared channels feed dropped lanes only: keep them finite */
    }
    p->obuf = g_dp_scratch;
    p->xbuf = (uint32_t *)g_dp_scratch + oneed;
    p->x = x;
    p->y = y;
    if (nthreads == 1 || N >= 4 * nthreads) {
        up_parallel_for(N, nthreads, dp_image_task, p);
    } else {
        up_parallel_for((int64_t)N * p->n_used, nthreads, dp_prep_task, p);
        up_parallel_for((int64_t)N * p->n_panels, nthreads, dp_compute_task, p);
    }
    pthread_mutex_unlock(&g_dp_mu);
    return 0;
#else
    (void)p; (void)x; (void)y; (void)N; (void)H; (void)W; (void)nthreads;
    return -3;
#endif
}

/* ------------------------------------------------------------------ AMX attention --------------- */
/* One head of softmax(scale * qᵀk) applied to v, on AMX tiles with bf16 operands and float32 sums, for plans in
 * bf16. q, k, v and out are D rows of T floats (tokens are columns, as the plan stores them), so everything
 * is computed transposed and no operand but the keys is transposed:
 *   scoresᵀ [T keys][16 queries] = ka . qb per block of 16 queries: A = the keys as rows of channels (ka
 *     [Tp][Dk], the one transpose, by gathers), B = two channels of each query (qb [Dk/2][Tp] pairs);
 *   the softmax runs down each query's column: every 16-lane vector is one key's score for the 16 queries;
 *   outᵀ [D][16 queries] = va . pb: A = the values as they are (va [Dn][Tk] bf16), B = two keys' weights of
 *     each query (pb [Tk/2][16] pairs), stored straight into out's rows.
 * Tp: T rounded up to 16, Tk: to 32; Dk: D to 32, Dn: D to 16. Padding is zeros, so padded keys add nothing
 * and padded queries and channels are computed and dropped. */
static int64_t r64(int64_t bytes) { return (bytes + 63) / 64 * 64; }

/* Scratch of one head: ka, qb, va as in the comment above; st the scoresᵀ of one query block [Tp][16];
 * pb its weights [Tk/2][16] pairs; ob four 16 x 16 output tiles for the partial stores. */
typedef struct {
    int64_t T, Tp, Tk;
    int D, Dk, Dn;
    uint16_t *ka, *va;
    uint32_t *qb, *pb;
    float *st, *ob;
} amx_attn;

/* The padded sizes of a head of T tokens and D channels and, with scratch, its arrays' places in it; returns the
 * floats of scratch they take (a multiple of 16: every array starts on a cache line). */
static int64_t attn_layout(amx_attn *a, int64_t T, int D, float *scratch) {
    a->T = T; a->D = D;
    a->Tp = (T + 15) / 16 * 16; a->Tk = (T + 31) / 32 * 32; a->Dk = (D + 31) / 32 * 32; a->Dn = (D + 15) / 16 * 16;
    const int64_t bytes[6] = {r64(a->Tp * a->Dk * 2), r64(a->Dk / 2 * a->Tp * 4), r64(a->Dn * a->Tk * 2),
                              r64(a->Tp * 16 * 4), r64(a->Tk / 2 * 64), 4 * 1024};
    int64_t at[6], total = 0;
    for (int i = 0; i < 6; i++) {
        at[i] = total;
        total += bytes[i];
    }
    if (scratch) {
        char *base = (char *)scratch;
        a->ka = (uint16_t *)(base + at[0]);
        a->qb = (uint32_t *)(base + at[1]);
        a->va = (uint16_t *)(base + at[2]);
        a->st = (float *)(base + at[3]);
        a->pb = (uint32_t *)(base + at[4]);
        a->ob = (float *)(base + at[5]);
    }
    return total / 4;
}

/* Floats of 64-byte aligned scratch one head needs (a multiple of 16). */
EXPORT int64_t up_amx_attn_scratch(int64_t T, int64_t D) {
    amx_attn a;
    return attn_layout(&a, T, (int)D, NULL);
}

#if HAVE_AMX
/* 16 floats to bf16 (round to nearest even, as bf16_bits) */
static inline __m256i bf16x16(__m512 v) {
    return _mm512_cvtepi32_epi16(_mm512_srli_epi32(bf16_round(_mm512_castps_si512(v)), 16));
}

/* exp of 16 floats: uniprune_plan.c's fast_exp (range reduction and polynomial) in intrinsics. The softmax written
 * as plain loops over fast_exp, which the compiler vectorised only in part, made ViT-B's attention 6.3 -> 10.5 ms. */
static inline __m512 exp16(__m512 x) {
    x = _mm512_max_ps(_mm512_min_ps(x, _mm512_set1_ps(88.0f)), _mm512_set1_ps(-87.0f));
    const __m512 n = _mm512_roundscale_ps(_mm512_mul_ps(x, _mm512_set1_ps(1.44269504088896341f)),
                                          _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    __m512 f = _mm512_fnmadd_ps(n, _mm512_set1_ps(0.693359375f), x);
    f = _mm512_fnmadd_ps(n, _mm512_set1_ps(-2.12194440e-4f), f);
    __m512 y = _mm512_set1_ps(1.9875691500e-4f);
    y = _mm512_fmadd_ps(y, f, _mm512_set1_ps(1.3981999507e-3f));
    y = _mm512_fmadd_ps(y, f, _mm512_set1_ps(8.3334519073e-3f));
    y = _mm512_fmadd_ps(y, f, _mm512_set1_ps(4.1665795894e-2f));
    y = _mm512_fmadd_ps(y, f, _mm512_set1_ps(1.6666665459e-1f));
    y = _mm512_fmadd_ps(y, f, _mm512_set1_ps(5.0000001201e-1f));
    y = _mm512_fmadd_ps(_mm512_mul_ps(y, f), f, _mm512_add_ps(f, _mm512_set1_ps(1.0f)));
    return _mm512_scalef_ps(y, n);
}

/* ka, qb and va of one head from its q, k, v rows */
static void attn_prepare(const amx_attn *a, const float *q, const float *k, const float *v) {
    const int64_t T = a->T, Tp = a->Tp, Tk = a->Tk;
    const int D = a->D, Dk = a->Dk;
    const __m512i lane = _mm512_mullo_epi32(_mm512_set_epi32(15, 14, 13, 12, 11, 10, 9, 8, 7, 6, 5, 4, 3, 2, 1, 0),
                                            _mm512_set1_epi32((int)T));
    for (int64_t t = 0; t < Tp; t++)
        for (int d0 = 0; d0 < Dk; d0 += 16) {
            const int left = D - d0;
            const __mmask16 m = t >= T || left <= 0 ? 0 : left >= 16 ? (__mmask16)0xffff : (__mmask16)((1u << left) - 1);
            const __m512 g = _mm512_mask_i32gather_ps(_mm512_setzero_ps(), m, lane, k + (int64_t)(m ? d0 : 0) * T + t, 4);
            _mm256_store_si256((__m256i *)(a->ka + t * Dk + d0), bf16x16(g));
        }
    for (int p = 0; p < Dk / 2; p++) {
        uint32_t *row = a->qb + (int64_t)p * Tp;
        if (2 * p + 1 < D) {
            pack_pairs(row, q + (int64_t)2 * p * T, q + (int64_t)(2 * p + 1) * T, (int)T);
        } else {
            for (int64_t t = 0; t < T; t++) row[t] = 2 * p < D ? bf16_bits(q[(int64_t)2 * p * T + t]) : 0;
        }
        for (int64_t t = T; t < Tp; t++) row[t] = 0;
    }
    for (int d = 0; d < a->Dn; d++) {
        uint16_t *row = a->va + (int64_t)d * Tk;
        int64_t j = 0;
        if (d < D)
            for (; j < T; j += 16) {
                const __mmask16 m = T - j >= 16 ? (__mmask16)0xffff : (__mmask16)((1u << (T - j)) - 1);
                _mm256_mask_storeu_epi16(row + j, m, bf16x16(_mm512_maskz_loadu_ps(m, v + (int64_t)d * T + j)));
            }
        for (j = d < D ? T : 0; j < Tk; j++) row[j] = 0;
    }
}

/* The softmax of the scoresᵀ in st, down each query's column, as bf16 pairs of keys in pb */
static void attn_softmax(const amx_attn *a, float scale) {
    const int64_t T = a->T;
    __m512 m = _mm512_load_ps(a->st);
    for (int64_t j = 1; j < T; j++) m = _mm512_max_ps(m, _mm512_load_ps(a->st + j * 16));
    const __m512 s = _mm512_set1_ps(scale), ms = _mm512_mul_ps(m, s);
    __m512 sum = _mm512_setzero_ps();
    for (int64_t j = 0; j < T; j++) {
        const __m512 e = exp16(_mm512_fmsub_ps(_mm512_load_ps(a->st + j * 16), s, ms));
        _mm512_store_ps(a->st + j * 16, e);
        sum = _mm512_add_ps(sum, e);
    }
    const __m512 inv = _mm512_div_ps(_mm512_set1_ps(1.0f), sum);
    for (int64_t j = 0; j < a->Tk; j += 2) {
        const __m512 e0 = j < T ? _mm512_mul_ps(_mm512_load_ps(a->st + j * 16), inv) : _mm512_setzero_ps();
        const __m512 e1 = j + 1 < T ? _mm512_mul_ps(_mm512_load_ps(a->st + (j + 1) * 16), inv) : _mm512_setzero_ps();
        pack_pairs(a->pb + j / 2 * 16, (const float *)&e0, (const float *)&e1, 16);
    }
}

/* Accumulator tc of rows r0.. into out's rows, or through ob where the tile overhangs the head */
#define ATTN_STORE(tc)                                                                                      \
    do {                                                                                                    \
        const int d = d0 + 16 * (tc);                                                                       \
        if (full && d + 16 <= D) {                                                                          \
            _tile_stored(tc, out + (int64_t)d * T + i0, (long)(T * 4));                                     \
        } else {                                                                                            \
            _tile_stored(tc, a->ob + (tc) * 256, 64);                                                       \
            for (int r = 0; r < 16 && d + r < D; r++)                                                       \
                for (int l = 0; l < 16 && i0 + l < T; l++) out[(int64_t)(d + r) * T + i0 + l] = a->ob[(tc) * 256 + r * 16 + l]; \
        }                                                                                                   \
    } while (0)

static void attn_head(const amx_attn *a, float *out, float scale) {
    const int64_t T = a->T, Tp = a->Tp, Tk = a->Tk;
    const int D = a->D, Dk = a->Dk;
    for (int64_t i0 = 0; i0 < T; i0 += 16) {
        /* scoresᵀ of queries i0..i0+15 against every key, four key blocks at a time */
        for (int64_t j0 = 0; j0 < Tp; j0 += 64) {
            const int nb = Tp - j0 >= 64 ? 4 : (int)((Tp - j0) / 16);
            _tile_zero(0); _tile_zero(1); _tile_zero(2); _tile_zero(3);
            for (int dc = 0; dc < Dk; dc += 32) {
                _tile_loadd(6, a->qb + (int64_t)(dc / 2) * Tp + i0, (long)(Tp * 4));
                _tile_loadd(4, a->ka + j0 * Dk + dc, (long)(Dk * 2));
                _tile_dpbf16ps(0, 4, 6);
                if (nb > 1) { _tile_loadd(5, a->ka + (j0 + 16) * Dk + dc, (long)(Dk * 2)); _tile_dpbf16ps(1, 5, 6); }
                if (nb > 2) { _tile_loadd(4, a->ka + (j0 + 32) * Dk + dc, (long)(Dk * 2)); _tile_dpbf16ps(2, 4, 6); }
                if (nb > 3) { _tile_loadd(5, a->ka + (j0 + 48) * Dk + dc, (long)(Dk * 2)); _tile_dpbf16ps(3, 5, 6); }
            }
            _tile_stored(0, a->st + j0 * 16, 64);
            if (nb > 1) _tile_stored(1, a->st + (j0 + 16) * 16, 64);
            if (nb > 2) _tile_stored(2, a->st + (j0 + 32) * 16, 64);
            if (nb > 3) _tile_stored(3, a->st + (j0 + 48) * 16, 64);
        }
        attn_softmax(a, scale);
        /* outᵀ of these queries, four channel blocks at a time */
        const int full = i0 + 16 <= T;
        for (int d0 = 0; d0 < a->Dn; d0 += 64) {
            const int nb = a->Dn - d0 >= 64 ? 4 : (a->Dn - d0) / 16;
            _tile_zero(0); _tile_zero(1); _tile_zero(2); _tile_zero(3);
            for (int64_t kc = 0; kc < Tk; kc += 32) {
                _tile_loadd(6, a->pb + kc / 2 * 16, 64);
                _tile_loadd(4, a->va + (int64_t)d0 * Tk + kc, (long)(Tk * 2));
                _tile_dpbf16ps(0, 4, 6);
                if (nb > 1) { _tile_loadd(5, a->va + (int64_t)(d0 + 16) * Tk + kc, (long)(Tk * 2)); _tile_dpbf16ps(1, 5, 6); }
                if (nb > 2) { _tile_loadd(4, a->va + (int64_t)(d0 + 32) * Tk + kc, (long)(Tk * 2)); _tile_dpbf16ps(2, 4, 6); }
                if (nb > 3) { _tile_loadd(5, a->va + (int64_t)(d0 + 48) * Tk + kc, (long)(Tk * 2)); _tile_dpbf16ps(3, 5, 6); }
            }
            ATTN_STORE(0);
            if (nb > 1) ATTN_STORE(1);
            if (nb > 2) ATTN_STORE(2);
            if (nb > 3) ATTN_STORE(3);
        }
    }
}
#endif

/* Attention heads i0..i1 (items n * heads + h) of x [N][3 * Co][T] into y [N][Co][T] on AMX tiles; scratch:
 * per >= up_amx_attn_scratch(T, Co / heads) floats per item (a multiple of 16), 64-byte aligned. 0, or -3 where this build or CPU has
 * no AMX (the caller then runs its float32 attention). */
int up_amx_attention(const float *x, float *y, int Co, int heads, int64_t T, float *scratch, int64_t per, int64_t i0,
                     int64_t i1) {
#if HAVE_AMX
    const int D = Co / heads;
    if (!(up_bf16_caps() & CAP_AMX) || per < up_amx_attn_scratch(T, D)) return -3;
    const float scale = 1.0f / __builtin_sqrtf((float)D);
    amx_configure();
    for (int64_t item = i0; item < i1; item++) {
        const int64_t n = item / heads, h = item % heads;
        const float *q = x + ((int64_t)n * 3 * Co + h * D) * T, *k = q + (int64_t)Co * T, *v = k + (int64_t)Co * T;
        amx_attn a;
        attn_layout(&a, T, D, scratch + item * per);
        attn_prepare(&a, q, k, v);
        attn_head(&a, y + ((int64_t)n * Co + h * D) * T, scale);
    }
    _tile_release();
    return 0;
#else
    (void)x; (void)y; (void)Co; (void)heads; (void)T; (void)scratch; (void)per; (void)i0; (void)i1;
    return -3;
#endif
}
