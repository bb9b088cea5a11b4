/* uniprune's block-sparse CPU kernels: direct block-sparse convolution, block-sparse GEMV with
 * compact unified blocks, and a small pthread pool. Loaded from Python by ctypes
 * (uniprune/compressors/kernels.py); see docs/KERNELS.md for the design and its limits.
 *
 * Vector code uses GCC/Clang vector extensions rather than intrinsics, so one source builds for
 * AVX-512, AVX2, SSE/NEON or scalar code. The vector width is the target's native one, chosen below by
 * the preprocessor: a vector wider than the registers is not split cleanly by GCC (a 64-byte vector on
 * AVX2 went through the stack, 10 to 20x slower).
 *
 * Layout conventions (all float32, C-contiguous):
 *   weights are packed per "panel" of ROWS=8 output channels; a panel keeps a list of the input
 *   channels that have any non-pruned weight in its rows (ch[k]) and their weights w[k][tap][ROWS].
 *   Pruned blocks are simply absent from the lists, so their cost is zero; a panel whose rows are all
 *   pruned (an output-channel block that is gone) costs only writing its bias.
 */
#include <pthread.h>
#include <stdatomic.h>
#include <string.h>

#include "uniprune_common.h"

#if defined(__x86_64__) || defined(__i386__)
#include <immintrin.h>
#define CPU_RELAX() _mm_pause()
#else
#define CPU_RELAX() ((void)0)
#endif

#define ROWS 8
#define MAX_THREADS 64

/* VL: floats per native vector. The conv's register tile for a panel of R rows is TR_R output rows x
 * TV_R vectors of VL output pixels: TR_R*TV_R accumulators, the TV_R input vectors and a broadcast weight must
 * fit the register file, or the accumulators spill on every FMA; and the tile needs at least (FMA latency x
 * FMA ports) = 8 independent accumulators (4 are enough on Zen 4's AVX-512, whose zmm FMA issues once a
 * cycle). Every tile vectorises over output pixels, never over the block's rows: a row's weight is a
 * broadcast, so a panel of one row runs as fast per FMA as a panel of eight. MAXACC bounds the leftover
 * tiles (fewer vectors, more rows). */
#if defined(__AVX512F__)
#define VL 16 /* 32 zmm */
#define TR8 8
#define TV8 2 /* 16 accumulators + 2 inputs, the whole panel at once */
#define TV4 4 /* 16 + 4 */
#define TV2 8 /* 16 + 8 */
#define TV1 12 /* 12 accumulators, inputs straight from memory as the FMA's operand, 1 weight */
#define TV1M 12 /* masked loads need registers: 12 + 12 inputs + 1 weight */
#define MAXACC 24
#elif defined(__AVX__)
#define VL 8 /* 16 ymm */
#define TR8 4
#define TV8 3 /* 12 accumulators + 3 inputs + 1 weight = 16; an 8-row panel runs as two halves */
#define TV4 3
#define TV2 5 /* 10 + 5 + 1 */
#define TV1 12 /* 12 + 1 weight, inputs from memory */
#define TV1M 7 /* masked loads need registers: 7 + 7 inputs + 1 weight */
#define MAXACC 12
#else
#define VL 4 /* SSE2 and NEON: 16-byte vectors, 16 registers on SSE2 and no FMA, so each multiply needs a */
#define TR8 4 /* temporary: 8 accumulators + 2 inputs + weight + product (4x3 spilled on SSE2) */
#define TV8 2
#define TV4 2
#define TV2 4
#define TV1 8
#define TV1M 8
#define MAXACC 8
#endif
#define TVMAX 12
#define TR1M 1
/* The GEMV works on the 8 rows of a panel as RV vectors of GW floats: one register wherever vectors hold 8
 * floats (AVX-512 uses ymm here too), two on 16-byte vectors. GS: samples per batched-GEMV tile, one
 * accumulator each, so 8 accumulator registers (FMA latency x FMA ports) plus the weights fit 16. */
#define GW (VL < ROWS ? VL : ROWS)
#define RV (ROWS / GW)
#define GS (8 / RV)

typedef float vf __attribute__((vector_size(VL * 4), aligned(4)));

/* Masked loads (AVX-512, AVX2): the conv reads x itself at stride 1 and zeroes the lanes whose input lies in
 * the padding (LAYOUT_MASKED in up_conv_run). Masked-off lanes never fault, so a tap may point before or
 * past the input. Other targets prepare a padded copy instead. */
#if defined(__AVX512F__)
#define HAVE_MASKED 1
typedef __mmask16 mask_t;
#define MASK_ALL ((mask_t)0xffff)
#define MASKED_LOAD(m, ptr) ((vf)_mm512_maskz_loadu_ps((m), (ptr)))
#elif defined(__AVX2__)
#define HAVE_MASKED 1
typedef int32_t mask_t __attribute__((vector_size(32)));
#define MASKED_LOAD(m, ptr) ((vf)_mm256_maskload_ps((ptr), (__m256i)(m)))
#else
#define HAVE_MASKED 0
typedef int mask_t;
#define MASKED_LOAD(m, ptr) (*(const vf *)(ptr))
#endif
typedef float vg __attribute__((vector_size(GW * 4), aligned(4)));

/* ------------------------------------------------------------------ thread pool ---------------- */
/* One process-wide pool. Helpers spin briefly after a job (consecutive layers arrive within
 * microseconds), then sleep on a condition variable so they never compete with torch's own OpenMP
 * threads for the cores while torch runs the layers in between. The caller waits for the job's items,
 * not for the helpers: on a loaded machine a helper may not run for a scheduler tick, and the caller
 * then does the work itself (waiting for every helper to check in cost up to 1 ms a call there). */


static pthread_mutex_t g_job_mu = PTHREAD_MUTEX_INITIALIZER; /* one job at a time */
static pthread_mutex_t g_mu = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t g_cv = PTHREAD_COND_INITIALIZER;
static pthread_t g_threads[MAX_THREADS];
static int g_nworkers = 0;
static atomic_uint_fast64_t g_gen = 0;
/* (job generation mod 2^32) << 32 | next item: a helper that wakes late can only claim items of the job
 * it was woken for, and never one of the next job under this job's fn and ctx */
static atomic_uint_fast64_t g_work = 0;
static atomic_int_fast64_t g_left = 0; /* items of the job not finished */
static task_fn g_fn;
static void *g_ctx;
static atomic_int_fast64_t g_items;
static atomic_int g_active;
static long g_spin_ns = 200000;
static uint_fast64_t g_spawn_gen;


/* Items are claimed g_step at a time: each claim is a compare-and-swap on a line every core writes, which costs
 * more than a small item (one channel pair's preparation at 197 tokens; ViT-B's 3072->768 on AMX, 2 threads,
 * claimed one by one: 1.46x over one thread, by ranges: 1.71x). */
static atomic_int_fast64_t g_step;

static void run_items(uint_fast64_t gen, int tid) {
    for (;;) {
        uint_fast64_t v = atomic_load(&g_work);
        int64_t first, last;
        do {
            first = (int64_t)(v & 0xffffffffu);
            const int64_t items = atomic_load(&g_items);
            if (v >> 32 != (gen & 0xffffffffu) || first >= items) return;
            last = first + atomic_load(&g_step) < items ? first + atomic_load(&g_step) : items;
        } while (!atomic_compare_exchange_weak(&g_work, &v, v + (uint_fast64_t)(last - first)));
        for (int64_t i = first; i < last; i++) g_fn(g_ctx, i, tid);
        atomic_fetch_sub(&g_left, last - first);
    }
}

static void *worker_main(void *arg) {
    int tid = (int)(intptr_t)arg;
    uint_fast64_t seen = g_spawn_gen; /* not g_gen: the first job may be posted before this thread runs */
    for (;;) {
        uint_fast64_t gen;
        int64_t t0 = up_clock_ns();
        int spins = 0;
        while ((gen = atomic_load(&g_gen)) == seen) {
            CPU_RELAX();
            if (++spins % 256 == 0 && up_clock_ns() - t0 > g_spin_ns) {
                pthread_mutex_lock(&g_mu);
                while ((gen = atomic_load(&g_gen)) == seen) pthread_cond_wait(&g_cv, &g_mu);
                pthread_mutex_unlock(&g_mu);
                break;
            }
        }
        seen = gen;
        if (tid <= atomic_load(&g_active)) run_items(gen, tid);
    }
    return NULL;
}

EXPORT void up_set_spin_us(long us) { g_spin_ns = us * 1000L; }

/* Run fn(ctx, i, tid) for i in [0, n_items) on up to nthreads threads (the caller is one of them). */
static void parallel_for(int64_t n_items, int nthreads, task_fn fn, void *ctx) {
    if (nthreads > MAX_THREADS) nthreads = MAX_THREADS;
    if (nthreads <= 1 || n_items <= 1 || n_items > INT32_MAX) {
        for (int64_t i = 0; i < n_items; i++) fn(ctx, i, 0);
        return;
    }
    pthread_mutex_lock(&g_job_mu);
    g_spawn_gen = atomic_load(&g_gen);
    while (g_nworkers < nthreads - 1) {
        if (pthread_create(&g_threads[g_nworkers], NULL, worker_main, (void *)(intptr_t)(g_nworkers + 1)) != 0) break;
        g_nworkers++;
    }
    uint_fast64_t gen = atomic_load(&g_gen) + 1;
    /* close the previous job's counter before its fn and ctx change under a helper still looking at it */
    atomic_store(&g_work, (gen & 0xffffffffu) << 32 | 0xffffffffu);
    g_fn = fn;
    g_ctx = ctx;
    atomic_store(&g_items, n_items);
    /* about 8 claims per thread: fine enough to even out uneven items, few enough to be cheap */
    atomic_store(&g_step, n_items / (8 * nthreads) > 1 ? n_items / (8 * nthreads) : 1);
    atomic_store(&g_active, nthreads - 1);
    atomic_store(&g_left, n_items);
    atomic_store(&g_work, (gen & 0xffffffffu) << 32);
    pthread_mutex_lock(&g_mu);
    atomic_store(&g_gen, gen);
    pthread_cond_broadcast(&g_cv);
    pthread_mutex_unlock(&g_mu);
    run_items(gen, 0);
    while (atomic_load(&g_left) > 0) CPU_RELAX();
    pthread_mutex_unlock(&g_job_mu);
}


/* ------------------------------------------------------------------ block-sparse conv ---------- */

/* First member of each kernel plan, so that a borrowed pointer can be told apart (up_conv_geom, up_gemv_dims). */
#define CONV_MAGIC 0x75704376u /* "upCv" */
#define GEMV_MAGIC 0x75704776u /* "upGv" */

typedef struct {
    uint32_t magic;     /* CONV_MAGIC */
    int Co, Ci, kh, kw, sh, sw, ph, pw, dh, dw, n_panels;
    int R;              /* panel height: 1, 2, 4 or 8 output channels (the layer's block height, see kernels.py) */
    int32_t *panel_ptr; /* [n_panels + 1] into ch / w */
    int32_t *ch;        /* [nnz] kept input channel */
    float *w;           /* [nnz][kh*kw][R] */
    float *bias;        /* [n_panels * R], zeros when the layer has none */
    int32_t *tap_off;   /* [kh*kw] offset of each tap in a prepared channel */
    int32_t *used;      /* [n_used] input channels some panel keeps: the only ones worth preparing */
    int n_used;
    /* geometry of the last call */
    int N, H, W, Ho, Wo, Hph, Wph, nph;
    int64_t plane, chstride, img_stride, Qpad;
    int layout;     /* how the input is prepared and the output vectors laid out: LAYOUT_* in up_conv_run */
    int direct;     /* output vectors stored straight to y, or to obuf and copied; see up_conv_run */
    int orow;       /* row pitch of an output row in obuf (not direct) */
    int zero_copy;  /* the prepared input is x itself (1x1, stride 1, no padding, shifted layout) */
    const float *xsrc; /* prepared input of image 0: xbuf, or x when zero_copy */
    mask_t *mask;      /* LAYOUT_MASKED: [nvec][taps] which lanes of each input vector lie inside x */
    int64_t mcap;
    int mask_H, mask_W; /* the input size mask, vx and vy were computed for (0: none yet) */
    int64_t nvec;   /* output vectors of one output channel */
    int32_t *vx;    /* [nvec] offset of each in a prepared channel */
    int32_t *vy;    /* [nvec] offset of each in the output plane (direct) or the obuf row */
    int64_t vcap;
    float *xbuf; /* the shared scratch below, for the duration of one call */
    float *obuf;
    int nthreads;
    const float *x;
    float *y;
    void *amx; /* a bf16 conv on AMX tiles (uniprune_bf16.c): up_conv_run hands every call to it */
    void *dp;  /* or on the bf16 dot product (VDPBF16PS, uniprune_bf16.c), likewise */
} conv_plan;

/* uniprune_bf16.c */
void *up_amxconv_create(const int32_t *geom, int R, int n_panels, const int32_t *panel_ptr, const int32_t *ch,
                        const float *w, const float *bias);
int up_amxconv_run(void *plan, const float *x, float *y, int N, int H, int W, int nthreads);
void up_amxconv_destroy(void *plan);
void *up_dpconv_create(const int32_t *geom, int R, int n_panels, const int32_t *panel_ptr, const int32_t *ch,
                       const float *w, const float *bias);
int up_dpconv_run(void *plan, const float *x, float *y, int N, int H, int W, int nthreads);
void up_dpconv_destroy(void *plan);

enum { LAYOUT_DIRECT = 0, LAYOUT_FLAT = 1, LAYOUT_SHIFTED = 2, LAYOUT_MASKED = 3 }; /* see up_conv_run */


/* Panel pointers as a plan file may hand them: from 0, never decreasing, each panel at most Ci channels.
 * Returns 0 when they are, -1 otherwise (the kernels would read outside ch and w). */
static int check_panels(const int32_t *panel_ptr, int n_panels, int Ci) {
    if (!panel_ptr || n_panels < 1 || panel_ptr[0] != 0) return -1;
    for (int i = 0; i < n_panels; i++)
        if (panel_ptr[i + 1] < panel_ptr[i] || panel_ptr[i + 1] - panel_ptr[i] > Ci) return -1;
    return 0;
}

/* The geometry a conv plan was created with, in up_conv_create's order (Co, Ci, kh, kw, sh, sw, ph, pw, dh,
 * dw) into geom[10]; 0, or -1 when p is not a conv plan. The plan executor checks ops against it. */
EXPORT int up_conv_geom(const conv_plan *p, int32_t *geom) {
    if (!p || !geom || p->magic != CONV_MAGIC) return -1;
    const int g[10] = {p->Co, p->Ci, p->kh, p->kw, p->sh, p->sw, p->ph, p->pw, p->dh, p->dw};
    for (int i = 0; i < 10; i++) geom[i] = g[i];
    return 0;
}

EXPORT void up_conv_destroy(conv_plan *p) {
    if (!p) return;
    up_amxconv_destroy(p->amx);
    up_dpconv_destroy(p->dp);
    p->magic = 0;
    UP_FREE_ALL(p->panel_ptr, p->ch, p->w, p->bias, p->tap_off, p->used, p->vx, p->vy, p->mask, p);
}

/* geom: Co, Ci, kh, kw, sh, sw, ph, pw, dh, dw; R: panel height (1, 2, 4 or 8). Copies all arrays; returns
 * NULL on bad input. */
EXPORT conv_plan *up_conv_create(const int32_t *geom, int R, int n_panels, const int32_t *panel_ptr,
                                 const int32_t *ch, const float *w, const float *bias) {
    conv_plan *p = calloc(1, sizeof(conv_plan));
    if (!p) return NULL;
    p->Co = geom[0]; p->Ci = geom[1]; p->kh = geom[2]; p->kw = geom[3];
    p->sh = geom[4]; p->sw = geom[5]; p->ph = geom[6]; p->pw = geom[7]; p->dh = geom[8]; p->dw = geom[9];
    p->R = R;
    if (p->Co < 1 || p->Ci < 1 || p->kh < 1 || p->kw < 1 || p->sh < 1 || p->sw < 1 || p->ph < 0 || p->pw < 0 ||
        p->dh < 1 || p->dw < 1 || (R != 1 && R != 2 && R != 4 && R != 8) || n_panels != (p->Co + R - 1) / R) {
        free(p);
        return NULL;
    }
    if (check_panels(panel_ptr, n_panels, p->Ci)) {
        free(p);
        return NULL;
    }
    p->magic = CONV_MAGIC;
    p->n_panels = n_panels;
    int64_t nnz = panel_ptr[n_panels], taps = (int64_t)p->kh * p->kw;
    p->panel_ptr = up_aligned_alloc(sizeof(int32_t) * (n_panels + 1));
    p->ch = up_aligned_alloc(sizeof(int32_t) * (nnz + 1));
    p->w = up_aligned_alloc(sizeof(float) * (nnz * taps * R + ROWS));
    p->bias = up_aligned_alloc(sizeof(float) * n_panels * R);
    p->tap_off = up_aligned_alloc(sizeof(int32_t) * taps);
    p->used = up_aligned_alloc(sizeof(int32_t) * p->Ci);
    if (!p->panel_ptr || !p->ch || !p->w || !p->bias || !p->tap_off || !p->used) {
        up_conv_destroy(p);
        return NULL;
    }
    memcpy(p->panel_ptr, panel_ptr, sizeof(int32_t) * (n_panels + 1));
    memcpy(p->ch, ch, sizeof(int32_t) * nnz);
    memset(p->used, 0, sizeof(int32_t) * p->Ci);
    for (int64_t k = 0; k < nnz; k++) {
        if (ch[k] < 0 || ch[k] >= p->Ci) {
            up_conv_destroy(p);
            return NULL;
        }
        p->used[ch[k]] = 1;
    }
    for (int c = 0; c < p->Ci; c++)
        if (p->used[c]) p->used[p->n_used++] = c;
    memcpy(p->w, w, sizeof(float) * nnz * taps * R);
    memset(p->bias, 0, sizeof(float) * n_panels * R);
    if (bias) memcpy(p->bias, bias, sizeof(float) * p->Co);
    return p;
}

/* A conv in bfloat16: w holds bf16 bit patterns in up_conv_create's packing. engine 1 (auto): on AMX tiles
 * where the CPU (and a build that targets them) has them, else on the bf16 dot product (VDPBF16PS) where it
 * has avx512_bf16: activations rounded to bf16, products accumulated in float32 (uniprune_bf16.c). Elsewhere,
 * and with engine 0, a float32 conv plan with the bf16 weights widened (exact), activations and arithmetic
 * in float32. engine 2: the dot product even where AMX is present (else float32). The plan times the
 * engines the CPU has and keeps the fastest per layer. Same arguments and checks as up_conv_create
 * otherwise; freed by up_conv_destroy. */
EXPORT conv_plan *up_conv_create_bf16(const int32_t *geom, int R, int n_panels, const int32_t *panel_ptr,
                                      const int32_t *ch, const uint16_t *w, const float *bias, int engine) {
    /* the checks up_conv_create makes, before panel_ptr[n_panels] is read here */
    if ((R != 1 && R != 2 && R != 4 && R != 8) || geom[0] < 1 || geom[2] < 1 || geom[3] < 1 ||
        n_panels != (geom[0] + R - 1) / R || panel_ptr[0] != 0)
        return NULL;
    for (int i = 0; i < n_panels; i++)
        if (panel_ptr[i + 1] < panel_ptr[i]) return NULL;
    int64_t n = (int64_t)panel_ptr[n_panels] * geom[2] * geom[3] * R;
    float *wf = up_aligned_alloc(sizeof(float) * (n + 1));
    if (!wf) return NULL;
    for (int64_t i = 0; i < n; i++) {
        uint32_t u = (uint32_t)w[i] << 16;
        memcpy(wf + i, &u, 4);
    }
    conv_plan *p = up_conv_create(geom, R, n_panels, panel_ptr, ch, wf, bias); /* checks the arguments */
    if (p && engine == 1) p->amx = up_amxconv_create(geom, R, n_panels, panel_ptr, ch, wf, bias);
    if (p && !p->amx && (engine == 1 || engine == 2)) p->dp = up_dpconv_create(geom, R, n_panels, panel_ptr, ch, wf, bias);
    free(wf);
    return p;
}

/* 1 where a conv plan runs on AMX tiles, 2 on the bf16 dot product, 0 on the float32 kernels. */
EXPORT int up_conv_engine(const conv_plan *p) { return !p ? 0 : p->amx ? 1 : p->dp ? 2 : 0; }

/* Pad and split one input channel into its stride phases, so every tap reads a contiguous run:
 * phase (py, px)[i][j] = xpad[i*sh + py][j*sw + px]. Each element is written once, zeros included, by
 * phase row: the earlier version zeroed the channel and then scattered every input element with two
 * divisions, which made the stride-2 conv's prepare pass cost as much as its compute. */
/* Strided gather of a short row: scalar, since vectorised code for rows of 8 to 17 elements spent its time in
 * prologue and epilogue; no-tree-loop-distribute-patterns keeps GCC from turning the zero and copy loops
 * back into a libc call per row (a call per row of 8 to 34 floats cost more than the copy). */
__attribute__((optimize("no-tree-vectorize", "no-tree-loop-distribute-patterns"))) static void
gather_row(float *restrict d, const float *restrict s, int n, int stride) {
    for (int j = 0; j < n; j++) d[j] = s[(int64_t)j * stride];
}

typedef int32_t vi __attribute__((vector_size(VL * 4)));
#if VL == 16
#define EVEN_LANES {0, 2, 4, 6, 8, 10, 12, 14, 16, 18, 20, 22, 24, 26, 28, 30}
#elif VL == 8
#define EVEN_LANES {0, 2, 4, 6, 8, 10, 12, 14}
#else
#define EVEN_LANES {0, 2, 4, 6}
#endif

/* d0[j] = s[2j], d1[j] = s[2j+1] for j < n: the stride-2 phase split of one padded row, two shuffles per VL
 * outputs of each phase (a scalar split was a third of a stride-2 conv's time at 8x8 outputs). s must
 * hold 2n + 2VL floats. */
static void split2_row(float *restrict d0, float *restrict d1, const float *restrict s, int n) {
    const vi even = EVEN_LANES, odd = even + 1;
    int j = 0;
    for (; j + VL <= n; j += VL) {
        vf a = *(const vf *)(s + 2 * j), b = *(const vf *)(s + 2 * j + VL);
        *(vf *)(d0 + j) = __builtin_shuffle(a, b, even);
        *(vf *)(d1 + j) = __builtin_shuffle(a, b, odd);
    }
    for (; j < n; j++) {
        d0[j] = s[2 * j];
        d1[j] = s[2 * j + 1];
    }
}

/* d[j] = s[j] for j < n, a row of 7 to 64 floats: whole vectors, then 8 and 4-float pieces, then scalars
 * (GCC's own vectorisation of such short rows spent its time in prologue and epilogue). */
typedef float v8f __attribute__((vector_size(32), aligned(4)));
typedef float v4f __attribute__((vector_size(16), aligned(4)));
__attribute__((optimize("no-tree-vectorize", "no-tree-loop-distribute-patterns"))) static inline void
copy_row(float *restrict d, const float *restrict s, int n) {
    int j = 0;
    for (; j + VL <= n; j += VL) *(vf *)(d + j) = *(const vf *)(s + j);
#if VL > 8
    if (j + 8 <= n) { *(v8f *)(d + j) = *(const v8f *)(s + j); j += 8; }
#endif
#if VL > 4
    if (j + 4 <= n) { *(v4f *)(d + j) = *(const v4f *)(s + j); j += 4; }
#endif
    for (; j < n; j++) d[j] = s[j];
}

__attribute__((optimize("no-tree-vectorize", "no-tree-loop-distribute-patterns"))) static inline void
zero_row(float *d, int n) {
    for (int j = 0; j < n; j++) d[j] = 0;
}

/* As split2_row, in whole vectors only: d0 and d1 take ceil(n / VL) * VL floats and s twice that (the
 * shifted layout's row buffers are sized for it): no scalar tail, which for the 11-float phase rows of a
 * 16-wide stride-2 input was most of the split's time. */
static inline void split2_vec(float *restrict d0, float *restrict d1, const float *restrict s, int n) {
    const vi even = EVEN_LANES, odd = even + 1;
    for (int j = 0; j < n; j += VL) {
        vf a = *(const vf *)(s + 2 * j), b = *(const vf *)(s + 2 * j + VL);
        *(vf *)(d0 + j) = __builtin_shuffle(a, b, even);
        *(vf *)(d1 + j) = __builtin_shuffle(a, b, odd);
    }
}

/* d[j] = s[j] / d[j] = 0 for j < n, n in the hundreds: whole vectors, then the short tail */
static inline void copy_vec(float *restrict d, const float *restrict s, int64_t n) {
    int64_t j = 0;
    for (; j + VL <= n; j += VL) *(vf *)(d + j) = *(const vf *)(s + j);
    copy_row(d + j, s + j, (int)(n - j));
}

static inline void zero_vec(float *d, int64_t n) {
    int64_t j = 0;
    for (; j + VL <= n; j += VL) *(vf *)(d + j) = (vf){0};
    zero_row(d + j, (int)(n - j));
}

/* The shifted layout (LAYOUT_SHIFTED in up_conv_run): for each kernel column kx and row phase py, a plane
 * P(kx, py)[i][ox] = xpad[i*sh + py][ox*sw + kx*dw] of Hph rows of exactly Wo floats. Tap (ky, kx) of output
 * pixel q = oy*Wo + ox is then P(kx, (ky*dh) % sh)[(ky*dh) / sh * Wo + q]: the output plane is one flat run
 * with no padding columns, so vectors of VL pixels span several short output rows (8x8 maps on AVX-512,
 * 7x7, stride-2 outputs) with no wasted lanes, and are stored straight to y. The price is kw copies of the
 * input (each read by every panel, so small beside the compute). */
__attribute__((optimize("no-tree-loop-distribute-patterns"))) static void prep_shifted(const conv_plan *p,
                                                                                    const float *src, float *dst) {
    const int sh = p->sh, sw = p->sw, W = p->W, Wo = p->Wo, pw = p->pw, kw = p->kw, dw = p->dw;
    const int blen = (Wo + kw * dw) * sw + 2 * VL;
    float rowbuf[blen + 2 * VL] __attribute__((aligned(64))); /* split2_vec reads whole vectors past blen */
    float ph0[blen / 2 + VL] __attribute__((aligned(64))), ph1[blen / 2 + VL] __attribute__((aligned(64)));
    if (sh == 1 && sw == 1 && Wo == W) { /* "same" padding: each plane is the channel shifted by off floats */
        const int64_t HW = (int64_t)p->H * W, top = (int64_t)p->ph * W, bot = (int64_t)(p->Hph - p->ph - p->H) * W;
        for (int kx = 0; kx < kw; kx++) {
            float *dk = dst + (int64_t)kx * p->plane;
            int off = kx * dw - pw;
            int64_t lo = off < 0 ? -off : 0, hi = off > 0 ? HW - off : HW;
            zero_vec(dk, top + lo);
            copy_vec(dk + top + lo, src + lo + off, hi - lo);
            zero_vec(dk + top + hi, HW - hi + bot);
            /* the columns whose input lies in the padding got the neighbouring row's end or start */
            if (off < 0)
                for (int i = 0; i < p->H; i++) zero_row(dk + top + (int64_t)i * W, -off < W ? -off : W);
            else if (off > 0)
                for (int i = 0; i < p->H; i++) zero_row(dk + top + (int64_t)i * W + (W - off > 0 ? W - off : 0), off < W ? off : W);
        }
        return;
    }
    if (sw > 1) zero_vec(rowbuf, blen + 2 * VL);
    for (int pr = 0; pr < p->Hph * sh; pr++) {
        int r = pr - p->ph, py = pr % sh;
        float *d = dst + (int64_t)py * p->plane + (int64_t)(pr / sh) * Wo;
        if (r < 0 || r >= p->H) {
            for (int kx = 0; kx < kw; kx++) zero_row(d + (int64_t)kx * sh * p->plane, Wo);
            continue;
        }
        const float *s = src + (int64_t)r * W;
        if (sw == 1) { /* straight from the input row: zeros where ox + off falls outside it */
            for (int kx = 0; kx < kw; kx++) {
                float *dk = d + (int64_t)kx * sh * p->plane;
                int off = kx * dw - pw, lo = off < 0 ? -off : 0, hi = W - off < Wo ? W - off : Wo;
                if (hi < lo) hi = lo;
                zero_row(dk, lo < Wo ? lo : Wo);
                if (hi > lo) copy_row(dk + lo, s + lo + off, hi - lo);
                zero_row(dk + hi, Wo - hi);
            }
            continue;
        }
        int wn = W < blen - 2 * VL - pw ? W : blen - 2 * VL - pw;
        copy_row(rowbuf + pw, s, wn > 0 ? wn : 0); /* the pads around stay zero */
        if (sw == 2) { /* split once into the two column phases; each kx is then a shifted copy of one */
            split2_vec(ph0, ph1, rowbuf, blen / 2 - VL);
            for (int kx = 0; kx < kw; kx++)
                copy_row(d + (int64_t)kx * sh * p->plane, ((kx * dw) % 2 ? ph1 : ph0) + (kx * dw) / 2, Wo);
        } else {
            for (int kx = 0; kx < kw; kx++) gather_row(d + (int64_t)kx * sh * p->plane, rowbuf + kx * dw, Wo, sw);
        }
    }
}

/* Pad and split one input channel into its stride phases, so every tap reads a contiguous run:
 * phase (py, px)[i][j] = xpad[i*sh + py][j*sw + px]. Every element is written once, zeros included. The
 * first version zeroed the channel and scattered each input element with two divisions: at stride 2 that
 * prepare pass cost as much as the conv's compute. Stride 1 copies rows in place; wider strides pad
 * each input row once into rowbuf and split it. */
__attribute__((optimize("no-tree-loop-distribute-patterns"))) static void conv_prep_task(void *ctx, int64_t item,
                                                                                      int tid) {
    (void)tid;
    conv_plan *p = ctx;
    int64_t n = item / p->n_used;
    int c = p->used[item % p->n_used];
    const float *src = p->x + (n * p->Ci + c) * (int64_t)p->H * p->W;
    float *dst = p->xbuf + n * p->img_stride + c * p->chstride;
    if (p->zero_copy) return;
    if (p->layout == LAYOUT_SHIFTED) {
        prep_shifted(p, src, dst);
        return;
    }
    const int sh = p->sh, sw = p->sw, Wph = p->Wph, W = p->W, pw = p->pw;
    if (sw == 1) {
        for (int pr = 0; pr < p->Hph * sh; pr++) {
            float *d = dst + (int64_t)(pr % sh) * p->plane + (int64_t)(pr / sh) * Wph;
            int r = pr - p->ph, j = 0;
            if (r < 0 || r >= p->H) {
                for (; j < Wph; j++) d[j] = 0;
                continue;
            }
            const float *s = src + (int64_t)r * W;
            int wn = W < Wph - pw ? W : Wph - pw;
            for (; j < pw; j++) d[j] = 0;
            for (j = 0; j < wn; j++) d[pw + j] = s[j];
            for (j = pw + wn; j < Wph; j++) d[j] = 0;
        }
        return;
    }
    int blen = Wph * sw + 2 * VL;
    float rowbuf[blen] __attribute__((aligned(64)));
    for (int j = 0; j < blen; j++) rowbuf[j] = 0;
    for (int pr = 0; pr < p->Hph * sh; pr++) {
        int r = pr - p->ph, py = pr % sh;
        float *d = dst + (int64_t)py * sw * p->plane + (int64_t)(pr / sh) * Wph;
        if (r < 0 || r >= p->H) {
            for (int px = 0; px < sw; px++)
                for (int j = 0; j < Wph; j++) d[px * p->plane + j] = 0;
            continue;
        }
        const float *s = src + (int64_t)r * W;
        int wn = W < blen - pw ? W : blen - pw;
        for (int j = 0; j < wn; j++) rowbuf[pw + j] = s[j]; /* the pads around stay zero */
        if (sw == 2) {
            split2_row(d, d + p->plane, rowbuf, Wph);
        } else {
            for (int px = 0; px < sw; px++) gather_row(d + px * p->plane, rowbuf + px, Wph, sw);
        }
    }
}

/* One register tile: rows r0..r0+NR-1 of a panel of R rows x output vectors g0..g0+NV-1, accumulated over
 * the panel's kept channels and stored to out (row r at out + r * ostride). R, NR and NV are constants at
 * every call site, so acc[][] lives in registers. */
static inline __attribute__((always_inline)) void conv_tile(const conv_plan *p, const float *xb, int k0, int k1,
                                                            int r0, int rows, int64_t g0, const float *bias,
                                                            float *out, int64_t ostride, const int R,
                                                            const int NR, const int NV, const int M) {
    int64_t xo[TVMAX], yo[TVMAX];
    for (int v = 0; v < NV; v++) {
        xo[v] = p->vx[g0 + v];
        yo[v] = p->vy[g0 + v];
    }
    vf acc[ROWS][TVMAX];
    for (int r = 0; r < NR; r++)
        for (int v = 0; v < NV; v++) acc[r][v] = (vf){0} + bias[r0 + r];
    const int taps = p->kh * p->kw;
    const mask_t *mk = M ? p->mask + g0 * taps : NULL;
    (void)mk; /* unused where masked loads are not built */
    for (int k = k0; k < k1; k++) {
        const float *xc = xb + (int64_t)p->ch[k] * p->chstride;
        const float *wk = p->w + (int64_t)k * taps * R + r0;
        for (int t = 0; t < taps; t++) {
            const float *xp = xc + p->tap_off[t];
            const float *wt = wk + t * R;
            if (NR == 1 && !M) { /* inputs straight from memory as the FMA's operand: no input registers needed */
                vf wv = (vf){0} + wt[0];
                for (int v = 0; v < NV; v++) acc[0][v] += *(const vf *)(xp + xo[v]) * wv;
            } else {
                vf xv[TVMAX];
                for (int v = 0; v < NV; v++)
                    xv[v] = M ? MASKED_LOAD(mk[v * taps + t], xp + xo[v]) : *(const vf *)(xp + xo[v]);
                for (int r = 0; r < NR; r++)
                    for (int v = 0; v < NV; v++) acc[r][v] += xv[v] * wt[r];
            }
        }
    }
    for (int r = 0; r < NR; r++)
        if (r0 + r < rows)
            for (int v = 0; v < NV; v++) *(vf *)(out + (r0 + r) * ostride + yo[v]) = acc[r][v];
}

/* The tiles of one panel of R rows: full TV-vector tiles of TR rows, then the leftover vectors in one tile
 * of as many rows as MAXACC accumulators allow (for R = 8 on AVX2: 8 rows x 1 vector). */
#define CONV_LEFT(NVL)                                                                                          \
    case NVL: {                                                                                                 \
        enum { NRL = (R * NVL <= MAXACC ? R : TR) };                                                            \
        if (NVL < TV) /* constant: leftovers never reach TV, and the variants past it would spill */           \
            for (int r0 = 0; r0 < rows; r0 += NRL) conv_tile(p, xb, k0, k1, r0, rows, g, bias, out, ostride, R, NRL, NVL, M); \
        break;                                                                                                  \
    }
#define CONV_PANEL(RR, TRR, TVV, MM)                                                                            \
    do {                                                                                                        \
        enum { R = RR, TR = TRR, TV = TVV, M = MM };                                                            \
        int64_t g = 0;                                                                                          \
        for (; g + TV <= p->nvec; g += TV)                                                                      \
            for (int r0 = 0; r0 < rows; r0 += TR) conv_tile(p, xb, k0, k1, r0, rows, g, bias, out, ostride, R, TR, TV, M); \
        switch (p->nvec - g) {                                                                                  \
            CONV_LEFT(1) CONV_LEFT(2) CONV_LEFT(3) CONV_LEFT(4) CONV_LEFT(5) CONV_LEFT(6)                       \
            CONV_LEFT(7) CONV_LEFT(8) CONV_LEFT(9) CONV_LEFT(10) CONV_LEFT(11)                                   \
            default: break;                                                                                     \
        }                                                                                                       \
    } while (0)

/* One panel's tiles, plain loads or masked ones, in two functions: generated inside one, the plain tiles'
 * setup code got worse registers and ran 8 to 10 % slower. */
static __attribute__((noinline)) void conv_panel_plain(const conv_plan *p, const float *xb, int k0, int k1, int rows,
                                                       const float *bias, float *out, int64_t ostride) {
    switch (p->R) {
    case 8: CONV_PANEL(8, TR8, TV8, 0); break;
    case 4: CONV_PANEL(4, 4, TV4, 0); break;
    case 2: CONV_PANEL(2, 2, TV2, 0); break;
    default: CONV_PANEL(1, 1, TV1, 0); break;
    }
}

static __attribute__((noinline)) void conv_panel_masked(const conv_plan *p, const float *xb, int k0, int k1,
                                                        int rows, const float *bias, float *out, int64_t ostride) {
    switch (p->R) {
    case 8: CONV_PANEL(8, TR8, TV8, HAVE_MASKED); break;
    case 4: CONV_PANEL(4, 4, TV4, HAVE_MASKED); break;
    case 2: CONV_PANEL(2, 2, TV2, HAVE_MASKED); break;
    default: CONV_PANEL(1, TR1M, TV1M, HAVE_MASKED); break;
    }
}

static void conv_compute_task(void *ctx, int64_t item, int tid) {
    conv_plan *p = ctx;
    int64_t n = item / p->n_panels;
    int pn = (int)(item % p->n_panels);
    const int R = p->R;
    int k0 = p->panel_ptr[pn], k1 = p->panel_ptr[pn + 1];
    int rows = p->Co - pn * R < R ? p->Co - pn * R : R;
    const float *bias = p->bias + pn * R;
    int64_t out_plane = (int64_t)p->Ho * p->Wo;
    float *y = p->y + (n * p->Co + (int64_t)pn * R) * out_plane;
    if (k0 == k1) { /* the whole output-channel block is pruned */
        for (int r = 0; r < rows; r++)
            for (int64_t i = 0; i < out_plane; i++) y[r * out_plane + i] = bias[r];
        return;
    }
    const float *xb = p->xsrc + n * p->img_stride;
    float *out = p->direct ? y : p->obuf + (int64_t)tid * ROWS * p->Qpad;
    int64_t ostride = p->direct ? out_plane : p->Qpad;
    if (HAVE_MASKED && p->layout == LAYOUT_MASKED)
        conv_panel_masked(p, xb, k0, k1, rows, bias, out, ostride);
    else
        conv_panel_plain(p, xb, k0, k1, rows, bias, out, ostride);
    if (p->direct) return;
    const int Wo = p->Wo, orow = p->orow;
#pragma GCC unroll 1
    for (int r = 0; r < rows; r++)
        for (int oy = 0; oy < p->Ho; oy++) { /* a loop, not memcpy: rows of 7 to 16 floats */
            float *d = y + r * out_plane + (int64_t)oy * Wo;
            const float *o = out + r * p->Qpad + (int64_t)oy * orow;
            for (int j = 0; j < Wo; j++) d[j] = o[j];
        }
}

/* A whole image per work item: its prepared input is still in L1/L2 when its panels read it (7 to 12 %
 * faster at batch 32 than preparing the whole batch first). */
static void conv_image_task(void *ctx, int64_t n, int tid) {
    conv_plan *p = ctx;
    if (!p->zero_copy)
        for (int j = 0; j < p->n_used; j++) conv_prep_task(p, n * p->n_used + j, tid);
    for (int pn = 0; pn < p->n_panels; pn++) conv_compute_task(p, n * p->n_panels + pn, tid);
}

static int g_force_layout = -1;

/* Tests and benchmarks only: force every later conv call to one layout (0 direct, 1 flat, 2 shifted;
 * direct falls back to the automatic choice where output rows are shorter than a vector); -1: automatic. */
EXPORT void up_conv_force_layout(int layout) { g_force_layout = layout >= 0 && layout <= 2 ? layout : -1; }

/* One scratch for every plan (conv, and the batched GEMV's interleaved input): the padded input and the
 * output tiles of a layer are dead once it returns, and a network of 50 layers each keeping its own would
 * hold megabytes that evict the weights from L2. A mutex makes calls from several Python threads (ctypes
 * drops the GIL) take turns. */
static pthread_mutex_t g_scratch_mu = PTHREAD_MUTEX_INITIALIZER;
static float *g_xbuf, *g_obuf;
static size_t g_xcap, g_ocap;

static int reserve(float **buf, size_t *cap, size_t need) {
    if (need <= *cap) return 0;
    free(*buf);
    *buf = up_aligned_alloc(sizeof(float) * need);
    *cap = *buf ? need : 0;
    if (!*buf) return -1;
    memset(*buf, 0, sizeof(float) * need); /* garbage lanes read the slack: keep it finite */
    return 0;
}

static int conv_run_masked(conv_plan *p, const float *x, float *y, int N, int nthreads) {
#if HAVE_MASKED
    const int H = p->H, W = p->W, Ho = p->Ho, Wo = p->Wo, taps = p->kh * p->kw;
    const int64_t Q = (int64_t)Ho * Wo, nvr = (Wo + VL - 1) / VL;
    const int flat = Wo == W;
    p->direct = !flat || Q >= VL;
    int fresh = p->mask_H == H && p->mask_W == W; /* masks depend on the input size only */
    p->Qpad = (Q + VL - 1) / VL * VL;
    p->orow = Wo;
    p->nvec = flat ? p->Qpad / VL : (int64_t)Ho * nvr;
    if (p->nvec > p->vcap || p->nvec * taps > p->mcap) {
        free(p->vx);
        free(p->vy);
        free(p->mask);
        p->vx = up_aligned_alloc(sizeof(int32_t) * p->nvec);
        p->vy = up_aligned_alloc(sizeof(int32_t) * p->nvec);
        p->mask = up_aligned_alloc(sizeof(mask_t) * p->nvec * taps);
        p->vcap = p->mcap = 0;
        if (!p->vx || !p->vy || !p->mask) return -1;
        p->vcap = p->nvec;
        p->mcap = p->nvec * taps;
        fresh = 0;
    }
    for (int64_t g = 0; g < p->nvec && !fresh; g++) {
        int64_t q0; /* first output pixel of the vector, flat in the output plane */
        if (flat) {
            q0 = g * VL;
            if (p->direct && q0 > Q - VL) q0 = Q - VL; /* the last one shifted left to end at the plane's end */
        } else {
            int64_t ox = g % nvr * VL;
            if (ox > Wo - VL) ox = Wo - VL;
            q0 = g / nvr * Wo + ox;
        }
        p->vy[g] = (int32_t)q0;
        p->vx[g] = (int32_t)(flat ? q0 : q0 / Wo * W + q0 % Wo); /* the same pixel in x */
        for (int ky = 0; ky < p->kh; ky++)
            for (int kx = 0; kx < p->kw; kx++) {
                mask_t m;
                memset(&m, 0, sizeof(m));
                for (int l = 0; l < VL; l++) {
                    /* flat: lane l is output pixel q0 + l; along a row: the row's pixel q0 % Wo + l (< Wo) */
                    int64_t q = q0 + l, oy = flat ? q / Wo : q0 / Wo, ox = flat ? q % Wo : q0 % Wo + l;
                    int64_t iy = oy + (int64_t)ky * p->dh - p->ph, ix = ox + (int64_t)kx * p->dw - p->pw;
                    int in = q < Q && iy >= 0 && iy < H && ix >= 0 && ix < W;
#if defined(__AVX512F__)
                    if (in) m |= (mask_t)(1u << l);
#else
                    m[l] = in ? -1 : 0;
#endif
                }
                p->mask[g * taps + ky * p->kw + kx] = m;
            }
    }
    p->mask_H = H;
    p->mask_W = W;
    for (int ky = 0; ky < p->kh; ky++)
        for (int kx = 0; kx < p->kw; kx++)
            p->tap_off[ky * p->kw + kx] = (int32_t)(((int64_t)ky * p->dh - p->ph) * W + (int64_t)kx * p->dw - p->pw);
    p->zero_copy = 1;
    p->chstride = (int64_t)H * W;
    p->img_stride = (int64_t)p->Ci * H * W;
    size_t oneed = p->direct ? 0 : (size_t)nthreads * ROWS * p->Qpad;
    pthread_mutex_lock(&g_scratch_mu);
    if (reserve(&g_obuf, &g_ocap, oneed)) {
        pthread_mutex_unlock(&g_scratch_mu);
        return -1;
    }
    p->xsrc = x;
    p->obuf = g_obuf;
    p->x = x;
    p->y = y;
    p->nthreads = nthreads;
    if (nthreads == 1 || N >= 4 * nthreads)
        parallel_for(N, nthreads, conv_image_task, p);
    else
        parallel_for((int64_t)N * p->n_panels, nthreads, conv_compute_task, p);
    pthread_mutex_unlock(&g_scratch_mu);
    return 0;
#else
    (void)p; (void)x; (void)y; (void)N; (void)nthreads;
    return -3;
#endif
}

/* x: [N][Ci][H][W], y: [N][Co][Ho][Wo] (Ho, Wo as torch computes them). Returns 0, or -1 when out of memory,
 * -2 when the input is smaller than the dilated kernel. */
EXPORT int up_conv_run(conv_plan *p, const float *x, float *y, int N, int H, int W, int nthreads) {
    /* A pointwise conv sees only pixels: run a plane as one row, so that an (L, 1) plane (a transformer's
     * tokens, narrow late-stage maps) gets the layouts of long rows. ViT-B's 768->3072 at 197 tokens on AMX:
     * 2.02 ms as 197 rows of one pixel, 1.11 ms as one row (fp32 8.3 -> 7.5 ms, bf16 dot 11.2 -> 9.0 ms). */
    if (p->kh == 1 && p->kw == 1 && p->sh == 1 && p->sw == 1 && p->ph == 0 && p->pw == 0 && H > 1 &&
        (int64_t)H * W <= INT32_MAX) {
        W *= H;
        H = 1;
    }
    if (p->amx) return up_amxconv_run(p->amx, x, y, N, H, W, nthreads);
    if (p->dp) return up_dpconv_run(p->dp, x, y, N, H, W, nthreads);
    int Hp = H + 2 * p->ph, Wp = W + 2 * p->pw;
    int eh = p->dh * (p->kh - 1) + 1, ew = p->dw * (p->kw - 1) + 1;
    if (Hp < eh || Wp < ew || N < 1) return -2;
    if (nthreads < 1) nthreads = 1;
    if (nthreads > MAX_THREADS) nthreads = MAX_THREADS;
    p->N = N; p->H = H; p->W = W;
    p->Ho = (Hp - eh) / p->sh + 1;
    p->Wo = (Wp - ew) / p->sw + 1;
    p->Hph = (Hp + p->sh - 1) / p->sh;
    p->Wph = (Wp + p->sw - 1) / p->sw;
    p->nph = p->sh * p->sw;
    /* Three layouts of the prepared input and the output vectors; the one computing the fewest lanes wins,
     * the first two on a tie (they copy the input once, the shifted layout kw times):
     * LAYOUT_DIRECT: stride phases of the padded input; vectors run along each output row, the last one
     *   shifted left to end at the row's end, stored straight to y. Needs Wo >= VL.
     * LAYOUT_FLAT: the same input; the output rows flattened at the padded width Wph, computing the Wph - Wo
     *   wrap-around columns too, into a scratch copied to y without them.
     * LAYOUT_SHIFTED: see prep_shifted; the flat output plane, no wasted lanes, stored straight to y when
     *   it holds at least one vector (else via the scratch). A 1x1 conv at stride 1 without padding reads x
     *   itself (zero_copy): its prepared input would be a copy of x. */
    int64_t Q = (int64_t)p->Ho * p->Wo, q = (int64_t)p->Ho * p->Wph;
    int64_t nvr = (p->Wo + VL - 1) / VL, qflat = (q + VL - 1) / VL * VL, qshift = (Q + VL - 1) / VL * VL;
    int64_t lanes_direct = p->Wo >= VL ? (int64_t)p->Ho * nvr * VL : INT64_MAX;
    int64_t best = lanes_direct < qflat ? lanes_direct : qflat;
    int layout = lanes_direct <= qflat ? LAYOUT_DIRECT : LAYOUT_FLAT;
    /* shifted copies the input kw times: at stride 1 by whole planes (cheap), at stride 2 row by row through a
     * phase split, which cost more than the lanes it saved (75 % pruned 32->32 16x16 s2: 1.49x dense against
     * 1.63x flat); with kw = 1 it copies no more than the others */
    if ((qshift < best && (p->sw == 1 || p->kw <= p->sw)) || (qshift == best && p->kw == 1)) layout = LAYOUT_SHIFTED;
    /* LAYOUT_MASKED (AVX-512, AVX2; stride 1): no prepared copy at all. Vectors run over the flat output plane
     * when output rows are as long as input rows (Wo == W: "same" padding), else along each output row
     * (Wo >= VL); each tap loads the input vector straight from x with the lanes that fall in the padding
     * masked to zero. The prepare pass it removes cost 10 to 25 % of a batch-32 layer. */
    int can_mask = HAVE_MASKED && p->sh == 1 && p->sw == 1 && (p->Wo == W || p->Wo >= VL);
    /* When, measured on Zen 4 (docs/KERNELS.md): masked wins where output rows are shorter than a vector but
     * the plane holds one (8x8 and 4x4 maps on AVX-512: 10 to 40 % faster), and on AVX-512 where at most half
     * the (panel, channel) pairs are kept and one image's input is at most 64 KiB (the prepare pass it skips
     * is then a larger share: ResNet's 16ch@32x32 and 32ch@16x16 at 75 % pruned, 5 to 12 %). It loses with
     * every block kept at 16x16 and 32x32 maps (5 to 10 %), on larger inputs when pruned (64ch@32x32 and
     * 128ch@16x16: 7 %), on planes smaller than a vector (2x2: 1.6x slower), and on AVX2, where vmaskmovps
     * made dense 32x32 convs 30 % slower. */
    int64_t pairs = (int64_t)p->n_panels * p->Ci, Q1 = (int64_t)p->Ho * p->Wo;
    int sparse_enough = VL == 16 && 2 * (int64_t)p->panel_ptr[p->n_panels] <= pairs &&
                        (int64_t)p->Ci * H * W * (int64_t)sizeof(float) <= 65536;
    /* 1-row panels (1x1 blocks) take the shifted layout there instead: their 1x12 tile then uses the inputs
     * as the FMAs' memory operands, where masked loads need a register and a mask each (75 % pruned, batch
     * 32: shifted 1.16 to 1.75x dense, masked 0.89 to 2.02x, direct 0.89 to 2.51x) */
    if (can_mask && Q1 >= VL && (p->Wo < VL || sparse_enough)) layout = p->R == 1 ? LAYOUT_SHIFTED : LAYOUT_MASKED;
    if (g_force_layout >= 0 && !(g_force_layout == LAYOUT_DIRECT && p->Wo < VL) &&
        !(g_force_layout == LAYOUT_MASKED && !can_mask))
        layout = g_force_layout;
    if (layout == LAYOUT_MASKED && !can_mask) layout = LAYOUT_SHIFTED;
    p->layout = layout;
    if (layout == LAYOUT_MASKED) return conv_run_masked(p, x, y, N, nthreads);
    p->mask_H = 0; /* vx, vy and tap_off are rewritten below: the masked layout's are stale */
    int nkx = layout == LAYOUT_SHIFTED ? p->kw : p->sw; /* column planes per row phase */
    p->plane = layout == LAYOUT_SHIFTED ? (int64_t)p->Hph * p->Wo : (int64_t)p->Hph * p->Wph;
    p->chstride = (int64_t)nkx * p->sh * p->plane + (layout == LAYOUT_SHIFTED ? VL : 0);
    p->direct = layout == LAYOUT_DIRECT || (layout == LAYOUT_SHIFTED && Q >= VL);
    p->Qpad = layout == LAYOUT_FLAT ? qflat : qshift;
    p->orow = layout == LAYOUT_FLAT ? p->Wph : p->Wo;
    p->nvec = layout == LAYOUT_DIRECT ? (int64_t)p->Ho * nvr : p->Qpad / VL;
    if (p->nvec > p->vcap) {
        free(p->vx);
        free(p->vy);
        p->vx = up_aligned_alloc(sizeof(int32_t) * p->nvec);
        p->vy = up_aligned_alloc(sizeof(int32_t) * p->nvec);
        p->vcap = p->vx && p->vy ? p->nvec : 0;
        if (!p->vcap) return -1;
    }
    for (int64_t g = 0; g < p->nvec; g++) {
        if (layout == LAYOUT_DIRECT) {
            int64_t oy = g / nvr, ox = g % nvr * VL;
            if (ox > p->Wo - VL) ox = p->Wo - VL;
            p->vx[g] = (int32_t)(oy * p->Wph + ox);
            p->vy[g] = (int32_t)(oy * p->Wo + ox);
        } else { /* flat: the last vector shifted left to end at the plane's end when direct */
            int64_t o = g * VL;
            if (p->direct && o > Q - VL) o = Q - VL;
            p->vx[g] = p->vy[g] = (int32_t)o;
        }
    }
    for (int ky = 0; ky < p->kh; ky++)
        for (int kx = 0; kx < p->kw; kx++) {
            int py = (ky * p->dh) % p->sh, ry = (ky * p->dh) / p->sh;
            int px = (kx * p->dw) % p->sw, rx = (kx * p->dw) / p->sw;
            p->tap_off[ky * p->kw + kx] =
                layout == LAYOUT_SHIFTED ? (int32_t)((kx * p->sh + py) * p->plane + (int64_t)ry * p->Wo)
                                         : (int32_t)((py * p->sw + px) * p->plane + (int64_t)ry * p->Wph + rx);
        }
    /* garbage lanes (columns past Wo, the rounding of Qpad) read past a channel's end: keep slack */
    p->img_stride = p->Ci * p->chstride + p->Qpad + 2 * p->plane + 4 * VL;
    p->zero_copy = layout == LAYOUT_SHIFTED && p->direct && p->kh == 1 && p->kw == 1 && p->sh == 1 && p->sw == 1 &&
                   p->ph == 0 && p->pw == 0;
    size_t xneed = p->zero_copy ? 0 : (size_t)N * p->img_stride;
    size_t oneed = p->direct ? 0 : (size_t)nthreads * ROWS * p->Qpad;
    pthread_mutex_lock(&g_scratch_mu);
    if (reserve(&g_xbuf, &g_xcap, xneed) || reserve(&g_obuf, &g_ocap, oneed)) {
        pthread_mutex_unlock(&g_scratch_mu);
        return -1;
    }
    if (p->zero_copy) { /* x as the prepared input: one plane per channel, vectors never past Q */
        p->chstride = Q;
        p->img_stride = (int64_t)p->Ci * Q;
    }
    p->xsrc = p->zero_copy ? x : g_xbuf;
    p->xbuf = g_xbuf;
    p->obuf = g_obuf;
    p->x = x;
    p->y = y;
    p->nthreads = nthreads;
    if (nthreads == 1 || N >= 4 * nthreads) { /* else too few images to keep the threads busy */
        parallel_for(N, nthreads, conv_image_task, p);
    } else {
        parallel_for((int64_t)N * p->n_used, nthreads, conv_prep_task, p);
        parallel_for((int64_t)N * p->n_panels, nthreads, conv_compute_task, p);
    }
    pthread_mutex_unlock(&g_scratch_mu);
    return 0;
}

/* ------------------------------------------------------------------ depthwise conv ------------- */
/* Depthwise conv (groups = channels, one filter per channel: MobileNet's 3x3 layers), dense, vectorised over
 * channels: each image is transposed to [pixel][channel] in a per-thread scratch, every output pixel is then
 * VL channels per FMA with the taps that fall in the padding skipped (no masks, no lanes wasted on planes of
 * 1x1 to 4x4 pixels), and the result is transposed back. First version, replaced: vectorised over each
 * plane's pixels on the conv's shifted layout; its per-plane prepare pass cost 1 to 3 us a plane, 4 to 20x
 * slower than torch on MobileNetV2's 8x8 to 1x1 planes. */
typedef struct {
    int C, Cp, H, W, Ho, Wo, kh, kw, sh, sw, ph, pw, dh, dw, act;
    float lo, hi;
    const float *x;
    float *y;
    const float *wt;  /* [kh*kw][Cp] */
    const float *bt;  /* [Cp] */
    float *scratch;
    int64_t per_thread;
} dw_ctx;

#define DW_NV 4 /* channel vectors per FMA block: independent chains, and each tap's bounds checked once */

/* a clamped to [lo, hi] lane by lane: a select in C vector extensions, a blend by mask */
static inline vf dw_clamp(vf a, vf lo, vf hi) {
    const vi below = a < lo, above = a > hi;
    a = (vf)((below & (vi)lo) | (~below & (vi)a));
    return (vf)((above & (vi)hi) | (~above & (vi)a));
}

static inline __attribute__((always_inline)) void dw_pixel(const dw_ctx *c, const float *xT, float *yo,
                                                           const int64_t *toff, const int32_t *tw, int nt, int c0,
                                                           const int NV) {
    vf acc[DW_NV];
    for (int v = 0; v < NV; v++) acc[v] = *(const vf *)(c->bt + c0 + v * VL);
    for (int t = 0; t < nt; t++) {
        const float *xp = xT + toff[t] + c0, *wp = c->wt + tw[t] + c0;
        for (int v = 0; v < NV; v++) acc[v] += *(const vf *)(xp + v * VL) * *(const vf *)(wp + v * VL);
    }
    const vf lo = (vf){0} + c->lo, hi = (vf){0} + c->hi;
    for (int v = 0; v < NV; v++) {
        *(vf *)(yo + c0 + v * VL) = c->act ? dw_clamp(acc[v], lo, hi) : acc[v];
    }
}

/* dst[i * ds + j] = src[j * ss + i] for an 8 x 8 block: eight row loads, three rounds of shuffles (vector
 * extensions, as split2_row, so every ISA gets its own), eight row stores. The rounds leave columns 1 and 2, and
 * 5 and 6, swapped. */
typedef float v8s __attribute__((vector_size(32), aligned(4)));
typedef int32_t v8i __attribute__((vector_size(32)));
static inline void transpose8x8(const float *src, int64_t ss, float *dst, int64_t ds) {
    v8s r[8], t[8];
    for (int j = 0; j < 8; j++) memcpy(&r[j], src + j * ss, sizeof(v8s));
    for (int k = 0; k < 4; k++) {
        t[2 * k] = __builtin_shuffle(r[2 * k], r[2 * k + 1], (v8i){0, 8, 1, 9, 4, 12, 5, 13});
        t[2 * k + 1] = __builtin_shuffle(r[2 * k], r[2 * k + 1], (v8i){2, 10, 3, 11, 6, 14, 7, 15});
    }
    for (int k = 0; k < 2; k++)
        for (int m = 0; m < 2; m++) {
            r[4 * k + m] = __builtin_shuffle(t[4 * k + m], t[4 * k + m + 2], (v8i){0, 1, 8, 9, 4, 5, 12, 13});
            r[4 * k + m + 2] = __builtin_shuffle(t[4 * k + m], t[4 * k + m + 2], (v8i){2, 3, 10, 11, 6, 7, 14, 15});
        }
    static const int col[8] = {0, 2, 1, 3, 4, 6, 5, 7};
    for (int m = 0; m < 4; m++) {
        t[m] = __builtin_shuffle(r[m], r[m + 4], (v8i){0, 1, 2, 3, 8, 9, 10, 11});
        t[m + 4] = __builtin_shuffle(r[m], r[m + 4], (v8i){4, 5, 6, 7, 12, 13, 14, 15});
    }
    for (int i = 0; i < 8; i++) memcpy(dst + i * ds, &t[col[i]], sizeof(v8s));
}

/* dst[q * ds + c] = src[c * ss + q] for the C rows c and P columns q of src: 8 x 8 blocks, the edges scalar.
 * Scalar loops alone took most of MobileNetV2's depthwise time (a fifth of the whole pass). */
__attribute__((optimize("no-tree-loop-distribute-patterns"))) static void
transpose_planes(const float *src, int64_t ss, float *dst, int64_t ds, int64_t C, int64_t P) {
    int64_t c0 = 0;
    for (; c0 + 8 <= C; c0 += 8) {
        int64_t q = 0;
        for (; q + 8 <= P; q += 8) transpose8x8(src + c0 * ss + q, ss, dst + q * ds + c0, ds);
        for (; q < P; q++)
            for (int j = 0; j < 8; j++) dst[q * ds + c0 + j] = src[(c0 + j) * ss + q];
    }
    for (int64_t c = c0; c < C; c++)
        for (int64_t q = 0; q < P; q++) dst[q * ds + c] = src[c * ss + q];
}

__attribute__((optimize("no-tree-loop-distribute-patterns"))) static void dw_task(void *ctx, int64_t n, int tid) {
    const dw_ctx *c = ctx;
    const int C = c->C, Cp = c->Cp;
    const int64_t HW = (int64_t)c->H * c->W, Q = (int64_t)c->Ho * c->Wo;
    float *xT = c->scratch + tid * c->per_thread, *yT = xT + HW * Cp;
    const float *xn = c->x + n * C * HW;
    transpose_planes(xn, HW, xT, Cp, C, HW);
    int64_t toff[64];
    int32_t tw[64];
    for (int oy = 0; oy < c->Ho; oy++)
        for (int ox = 0; ox < c->Wo; ox++) {
            float *yo = yT + ((int64_t)oy * c->Wo + ox) * Cp;
            int nt = 0; /* the taps inside the input, found once per pixel rather than per channel vector */
            for (int ky = 0; ky < c->kh; ky++) {
                int iy = oy * c->sh - c->ph + ky * c->dh;
                if (iy < 0 || iy >= c->H) continue;
                for (int kx = 0; kx < c->kw; kx++) {
                    int ix = ox * c->sw - c->pw + kx * c->dw;
                    if (ix < 0 || ix >= c->W) continue;
                    toff[nt] = ((int64_t)iy * c->W + ix) * Cp;
                    tw[nt++] = (ky * c->kw + kx) * Cp;
                }
            }
            int c0 = 0;
            for (; c0 + DW_NV * VL <= Cp; c0 += DW_NV * VL) dw_pixel(c, xT, yo, toff, tw, nt, c0, DW_NV);
            switch ((Cp - c0) / VL) {
            case 3: dw_pixel(c, xT, yo, toff, tw, nt, c0, 3); break;
            case 2: dw_pixel(c, xT, yo, toff, tw, nt, c0, 2); break;
            case 1: dw_pixel(c, xT, yo, toff, tw, nt, c0, 1); break;
            default: break;
            }
        }
    /* back: yT's Q rows are pixels of Cp channels, y's rows are the C channels of Q pixels */
    transpose_planes(yT, Cp, c->y + n * C * Q, Q, Q, C);
}

/* Stride-1 planes whose output rows hold two vectors or more run channel by channel in place (items n * C + c, so
 * one image is shared between the threads): the channel's padded input rows are copied once into a per-thread
 * scratch, after which every tap of an output row is one unaligned vector load along the row. The transposes of
 * the path above cost more than the conv itself on such planes: MobileNetV2's 32 channels of 32x32 (AVX-512, 1
 * thread) took 48.6 us there, 20.8 us here. Where the rows are shorter or the stride 2 (this path with column
 * phases), the path above measured faster (96 channels 32x32 -> 16x16: 46 against 72 us; 192 channels of 8x8:
 * 12 against 31 us) and stays. */
typedef struct {
    int64_t Hp, Wq; /* padded rows; floats per row (output columns, the widest tap's reach, a vector of slack) */
} dw_rows;

static dw_rows dw_row_geom(const dw_ctx *c) {
    dw_rows g;
    g.Hp = c->H + 2 * c->ph;
    g.Wq = c->Wo + (int64_t)c->dw * (c->kw - 1) + VL;
    return g;
}

/* Plain loops, kept from becoming libc calls: a memcpy or memset call per row of 8 to 40 floats cost more than
 * the copy */
__attribute__((optimize("no-tree-loop-distribute-patterns"))) static void dw_direct_task(void *ctx, int64_t item,
                                                                                         int tid) {
    const dw_ctx *c = ctx;
    const dw_rows g = dw_row_geom(c);
    const int ch = (int)(item % c->C), taps = c->kh * c->kw;
    const int64_t n = item / c->C, HW = (int64_t)c->H * c->W, Q = (int64_t)c->Ho * c->Wo;
    const float *xc = c->x + (n * c->C + ch) * HW;
    float *yc = c->y + (n * c->C + ch) * Q, *rows = c->scratch + tid * c->per_thread;
    /* rows[r * Wq + j] = padded input row r at column j (zeros outside the input) */
    const int64_t lead = c->pw < g.Wq ? c->pw : g.Wq, body = c->W < g.Wq - lead ? c->W : g.Wq - lead;
    for (int64_t r = 0; r < g.Hp; r++) {
        const int64_t iy = r - c->ph;
        float *d = rows + r * g.Wq;
        if (iy < 0 || iy >= c->H) {
            for (int64_t j = 0; j < g.Wq; j++) d[j] = 0.0f;
            continue;
        }
        const float *src = xc + iy * c->W;
        for (int64_t j = 0; j < lead; j++) d[j] = 0.0f;
        for (int64_t j = 0; j < body; j++) d[lead + j] = src[j];
        for (int64_t j = lead + body; j < g.Wq; j++) d[j] = 0.0f;
    }
    /* each tap's weight and offset from the start of its output row's window, once per channel */
    float wk[64];
    int64_t toff[64];
    for (int ky = 0, t = 0; ky < c->kh; ky++)
        for (int kx = 0; kx < c->kw; kx++, t++) {
            wk[t] = c->wt[(int64_t)t * c->Cp + ch];
            toff[t] = (int64_t)ky * c->dh * g.Wq + kx * c->dw;
        }
    const float b = c->bt[ch];
    const int64_t row_step = (int64_t)c->sh * g.Wq;
    const vf lo = (vf){0} + c->lo, hi = (vf){0} + c->hi;
    /* two output rows at a time: two independent FMA chains (one chain of kh * kw taps waited on itself) */
    for (int oy = 0; oy < c->Ho; oy += 2) {
        const int two = oy + 1 < c->Ho;
        const float *win = rows + oy * row_step;
        for (int ox = 0; ox < c->Wo; ox += VL) {
            vf acc[2] = {(vf){0} + b, (vf){0} + b};
            for (int t = 0; t < taps; t++) {
                acc[0] += *(const vf *)(win + toff[t] + ox) * wk[t];
                if (two) acc[1] += *(const vf *)(win + row_step + toff[t] + ox) * wk[t];
            }
            for (int i = 0; i <= two; i++) {
                const vf a = c->act ? dw_clamp(acc[i], lo, hi) : acc[i];
                float *yr = yc + (int64_t)(oy + i) * c->Wo + ox;
                if (c->Wo - ox >= VL)
                    *(vf *)yr = a;
                else
                    for (int l = 0; l < c->Wo - ox; l++) yr[l] = a[l];
            }
        }
    }
}

/* y[n][c] = conv(x[n][c], w[c]) + bias[c] for a depthwise conv, optionally clamped to [lo, hi] (act != 0: ReLU
 * is lo = 0, hi = +inf; ReLU6 lo = 0, hi = 6). geom: C, H, W, kh, kw, sh, sw, ph, pw, dh, dw; w: [C][kh][kw];
 * bias: [C] or NULL; x: [N][C][H][W]; y: [N][C][Ho][Wo] as torch computes them. Threads take whole images.
 * Returns 0, -1 when out of memory, -2 on a bad geometry (input smaller than the dilated kernel). */
EXPORT int up_dwconv_run(const float *x, float *y, const float *w, const float *bias, const int32_t *geom, int N,
                         int act, float lo, float hi, int nthreads) {
    dw_ctx c;
    memset(&c, 0, sizeof(c));
    c.C = geom[0]; c.H = geom[1]; c.W = geom[2]; c.kh = geom[3]; c.kw = geom[4]; c.sh = geom[5]; c.sw = geom[6];
    c.ph = geom[7]; c.pw = geom[8]; c.dh = geom[9]; c.dw = geom[10];
    if (N < 1 || c.C < 1 || c.H < 1 || c.W < 1 || c.kh < 1 || c.kw < 1 || c.sh < 1 || c.sw < 1 || c.ph < 0 ||
        c.pw < 0 || c.dh < 1 || c.dw < 1)
        return -2;
    int Hp = c.H + 2 * c.ph, Wp = c.W + 2 * c.pw, eh = c.dh * (c.kh - 1) + 1, ew = c.dw * (c.kw - 1) + 1;
    if (Hp < eh || Wp < ew) return -2;
    if (nthreads < 1) nthreads = 1;
    if (nthreads > MAX_THREADS) nthreads = MAX_THREADS;
    c.Ho = (Hp - eh) / c.sh + 1;
    c.Wo = (Wp - ew) / c.sw + 1;
    c.Cp = (c.C + VL - 1) / VL * VL;
    const int taps = c.kh * c.kw;
    const int direct = c.sw == 1 && c.Wo >= 2 * VL && taps <= 64;
    c.per_thread = ((int64_t)c.H * c.W + (int64_t)c.Ho * c.Wo) * c.Cp;
    if (direct) {
        const dw_rows g = dw_row_geom(&c);
        c.per_thread = g.Hp * g.Wq;
    }
    c.act = act != 0;
    c.lo = lo;
    c.hi = hi;
    c.x = x;
    c.y = y;
    /* the weights as [tap][channel] and the bias, padded to whole vectors with zeros */
    float *wt = up_aligned_alloc(sizeof(float) * ((size_t)taps + 1) * c.Cp);
    if (!wt) return -1;
    memset(wt, 0, sizeof(float) * ((size_t)taps + 1) * c.Cp);
    for (int ch = 0; ch < c.C; ch++)
        for (int t = 0; t < taps; t++) wt[(int64_t)t * c.Cp + ch] = w[(int64_t)ch * taps + t];
    if (bias)
        for (int ch = 0; ch < c.C; ch++) wt[(int64_t)taps * c.Cp + ch] = bias[ch];
    c.wt = wt;
    c.bt = wt + (int64_t)taps * c.Cp;
    pthread_mutex_lock(&g_scratch_mu);
    if (reserve(&g_xbuf, &g_xcap, (size_t)nthreads * c.per_thread)) {
        pthread_mutex_unlock(&g_scratch_mu);
        free(wt);
        return -1;
    }
    c.scratch = g_xbuf;
    if (direct)
        parallel_for((int64_t)N * c.C, nthreads, dw_direct_task, &c);
    else
        parallel_for(N, nthreads, dw_task, &c);
    pthread_mutex_unlock(&g_scratch_mu);
    free(wt);
    return 0;
}

/* ------------------------------------------------------------------ block-sparse GEMV ---------- */
/* y[n] = W x[n] + b: one sample at a time while memory-bound (batch 1), tiles of GS samples beyond.
 * Kept weights as in the conv plan with one tap, but indexed by runs of consecutive input channels (a
 * kept 8x8 block is one run of 8) instead of one index per channel, which at batch 1 was an eighth of
 * the bytes read. Unified blocks in compact form: one magnitude, and one sign byte per input
 * channel (bit r = sign of row r), so a unified 8x8 block reads 12 bytes instead of 256. */

typedef struct {
    uint32_t magic; /* GEMV_MAGIC */
    int Co, Ci, n_panels;
    int32_t *wptr;  /* [n_panels + 1] into w (in channels) */
    int32_t *rptr;  /* [n_panels + 1] into the runs */
    int32_t *rc0;   /* [nruns] first input channel of the run */
    int32_t *rlen;  /* [nruns] its input channels, whose weights are consecutive in w */
    float *w;       /* [nnz][ROWS], panel after panel (NULL when wh holds them) */
    uint16_t *wh;   /* the same in bf16 (up_gemv_create_bf16): half the bytes a memory-bound batch 1 reads */
    int32_t *uptr;  /* [n_panels + 1] into the unified block lists */
    int32_t *uch0;  /* [nu] first input channel of the block */
    int32_t *ulen;  /* [nu] its input channels */
    int32_t *usoff; /* [nu] offset of its sign bytes */
    float *umag;    /* [nu] magnitude */
    uint8_t *usign; /* sign bytes */
    float *bias;
    int N;
    const float *x;
    float *xt; /* [N / GS][Ci][GS]: x of each tile of samples, interleaved: one stream of broadcasts
                * instead of GS (measured 10 to 25 % faster at batch 32); in the conv's scratch */
    float *y;
} gemv_plan;

static float g_sign_lut[256][ROWS] __attribute__((aligned(64)));
static pthread_once_t g_lut_once = PTHREAD_ONCE_INIT;
static void init_lut(void) {
    for (int b = 0; b < 256; b++)
        for (int r = 0; r < ROWS; r++) g_sign_lut[b][r] = (b >> r) & 1 ? -1.0f : 1.0f;
}

EXPORT void up_gemv_destroy(gemv_plan *p) {
    if (!p) return;
    p->magic = 0;
    UP_FREE_ALL(p->wptr, p->rptr, p->rc0, p->rlen, p->w, p->wh, p->uptr, p->uch0, p->ulen, p->usoff, p->umag, p->usign, p->bias, p);
}

EXPORT gemv_plan *up_gemv_create(int Co, int Ci, int n_panels, const int32_t *panel_ptr, const int32_t *ch,
                                 const float *w, const int32_t *uptr, const int32_t *uch0, const int32_t *ulen,
                                 const int32_t *usoff, const float *umag, const uint8_t *usign, int64_t n_sign,
                                 const float *bias) {
    pthread_once(&g_lut_once, init_lut);
    if (Co < 1 || Ci < 1 || n_panels != (Co + ROWS - 1) / ROWS || check_panels(panel_ptr, n_panels, Ci) ||
        !uptr || uptr[0] != 0 || n_sign < 0)
        return NULL;
    for (int i = 0; i < n_panels; i++)
        if (uptr[i + 1] < uptr[i]) return NULL;
    gemv_plan *p = calloc(1, sizeof(gemv_plan));
    if (!p) return NULL;
    p->magic = GEMV_MAGIC;
    p->Co = Co; p->Ci = Ci; p->n_panels = n_panels;
    int64_t nnz = panel_ptr[n_panels], nu = uptr[n_panels];
    p->wptr = up_aligned_alloc(sizeof(int32_t) * (n_panels + 1));
    p->rptr = up_aligned_alloc(sizeof(int32_t) * (n_panels + 1));
    p->rc0 = up_aligned_alloc(sizeof(int32_t) * (nnz + 1));
    p->rlen = up_aligned_alloc(sizeof(int32_t) * (nnz + 1));
    p->w = up_aligned_alloc(sizeof(float) * (nnz * ROWS + 1));
    p->uptr = up_aligned_alloc(sizeof(int32_t) * (n_panels + 1));
    p->uch0 = up_aligned_alloc(sizeof(int32_t) * (nu + 1));
    p->ulen = up_aligned_alloc(sizeof(int32_t) * (nu + 1));
    p->usoff = up_aligned_alloc(sizeof(int32_t) * (nu + 1));
    p->umag = up_aligned_alloc(sizeof(float) * (nu + 1));
    p->usign = up_aligned_alloc(n_sign + 1);
    p->bias = up_aligned_alloc(sizeof(float) * n_panels * ROWS);
    if (!p->wptr || !p->rptr || !p->rc0 || !p->rlen || !p->w || !p->uptr || !p->uch0 || !p->ulen || !p->usoff ||
        !p->umag || !p->usign || !p->bias) {
        up_gemv_destroy(p);
        return NULL;
    }
    int32_t nruns = 0;
    for (int pn = 0; pn < n_panels; pn++) {
        p->rptr[pn] = nruns;
        for (int k = panel_ptr[pn]; k < panel_ptr[pn + 1]; k++) {
            if (ch[k] < 0 || ch[k] >= Ci) {
                up_gemv_destroy(p);
                return NULL;
            }
            if (nruns > p->rptr[pn] && ch[k] == p->rc0[nruns - 1] + p->rlen[nruns - 1]) {
                p->rlen[nruns - 1]++;
            } else {
                p->rc0[nruns] = ch[k];
                p->rlen[nruns++] = 1;
            }
        }
    }
    p->rptr[n_panels] = nruns;
    memcpy(p->wptr, panel_ptr, sizeof(int32_t) * (n_panels + 1));
    memcpy(p->w, w, sizeof(float) * nnz * ROWS);
    memcpy(p->uptr, uptr, sizeof(int32_t) * (n_panels + 1));
    memcpy(p->uch0, uch0, sizeof(int32_t) * nu);
    memcpy(p->ulen, ulen, sizeof(int32_t) * nu);
    memcpy(p->usoff, usoff, sizeof(int32_t) * nu);
    memcpy(p->umag, umag, sizeof(float) * nu);
    memcpy(p->usign, usign, n_sign);
    for (int64_t u = 0; u < nu; u++) /* a unified block reads ulen inputs from uch0 and ulen sign bytes from usoff */
        if (uch0[u] < 0 || ulen[u] < 0 || (int64_t)uch0[u] + ulen[u] > Ci || usoff[u] < 0 ||
            (int64_t)usoff[u] + ulen[u] > n_sign) {
            up_gemv_destroy(p);
            return NULL;
        }
    memset(p->bias, 0, sizeof(float) * n_panels * ROWS);
    if (bias) memcpy(p->bias, bias, sizeof(float) * Co);
    return p;
}

/* A linear plan with bf16 weights w ([nnz][ROWS] as bits, as up_conv_create_bf16's), kept in bf16 and widened
 * as they are loaded: a batch-1 linear reads half the bytes (the 1000-class heads of the torchvision models
 * are dense and memory-bound). Arguments and checks otherwise up_gemv_create's. */
EXPORT gemv_plan *up_gemv_create_bf16(int Co, int Ci, int n_panels, const int32_t *panel_ptr, const int32_t *ch,
                                      const uint16_t *w, const int32_t *uptr, const int32_t *uch0, const int32_t *ulen,
                                      const int32_t *usoff, const float *umag, const uint8_t *usign, int64_t n_sign,
                                      const float *bias) {
    if (Co < 1 || n_panels != (Co + ROWS - 1) / ROWS || check_panels(panel_ptr, n_panels, Ci)) return NULL;
    const int64_t n = (int64_t)panel_ptr[n_panels] * ROWS;
    float *wf = up_aligned_alloc(sizeof(float) * (n + 1));
    uint16_t *wh = up_aligned_alloc(sizeof(uint16_t) * (n + GW));
    gemv_plan *p = NULL;
    if (wf && wh) {
        for (int64_t i = 0; i < n; i++) {
            uint32_t u = (uint32_t)w[i] << 16;
            memcpy(wf + i, &u, 4);
        }
        p = up_gemv_create(Co, Ci, n_panels, panel_ptr, ch, wf, uptr, uch0, ulen, usoff, umag, usign, n_sign, bias);
    }
    free(wf);
    if (!p) {
        free(wh);
        return NULL;
    }
    memcpy(wh, w, sizeof(uint16_t) * n);
    free(p->w);
    p->w = NULL;
    p->wh = wh;
    return p;
}

/* A linear plan's output and input features into dims[2]; 0, or -1 when p is not a linear plan. */
EXPORT int up_gemv_dims(const gemv_plan *p, int32_t *dims) {
    if (!p || !dims || p->magic != GEMV_MAGIC) return -1;
    dims[0] = p->Co;
    dims[1] = p->Ci;
    return 0;
}

#define GEMV_PANELS_PER_ITEM 4

typedef uint16_t vgh __attribute__((vector_size(GW * 2), aligned(2)));
typedef uint32_t vgu __attribute__((vector_size(GW * 4)));

/* GW weights from float32 (bf16 = 0) or bf16 (1) storage, at element offset o of the plan's weights. Every
 * caller passes a constant bf16 into an inlined body, so each of its two versions has no branch. */
static inline __attribute__((always_inline)) vg gemv_w(const gemv_plan *p, int bf16, int64_t o) {
    if (!bf16) return *(const vg *)(p->w + o);
    vgh h;
    memcpy(&h, p->wh + o, sizeof(h));
    const vgu u = __builtin_convertvector(h, vgu) << 16;
    vg f;
    memcpy(&f, &u, sizeof(f));
    return f;
}

/* Samples n0..n0+GS-1 against one panel: one accumulator per sample, so each weight vector is loaded once
 * for GS FMAs (a batched linear is compute-bound). Unified blocks are scaled sign vectors here. */
static inline __attribute__((always_inline)) void gemv_tile(const gemv_plan *p, int pn, int rows, int n0, int bf16) {
    int64_t w = (int64_t)p->wptr[pn] * ROWS;
    const float *xt = p->xt + (int64_t)n0 * p->Ci;
    vg acc[GS][RV], wv[RV];
    for (int j = 0; j < GS; j++)
        for (int h = 0; h < RV; h++) acc[j][h] = *(const vg *)(p->bias + pn * ROWS + h * GW);
    for (int u = p->rptr[pn]; u < p->rptr[pn + 1]; u++) {
        /* the first 8 channels of the run after next: runs start at random channels, which the hardware
         * prefetcher cannot guess (5 to 13 % faster at batch 32) */
        if (u + 2 < p->rptr[pn + 1])
            for (int b = 0; b < 8 * GS * 4; b += 64)
                __builtin_prefetch((const char *)(xt + p->rc0[u + 2] * GS) + b);
        for (int64_t c = p->rc0[u], e = c + p->rlen[u]; c < e; c++, w += ROWS) {
            for (int h = 0; h < RV; h++) wv[h] = gemv_w(p, bf16, w + h * GW);
            for (int j = 0; j < GS; j++)
                for (int h = 0; h < RV; h++) acc[j][h] += wv[h] * xt[c * GS + j];
        }
    }
    for (int u = p->uptr[pn]; u < p->uptr[pn + 1]; u++) {
        const uint8_t *s = p->usign + p->usoff[u];
        for (int64_t c = p->uch0[u], e = c + p->ulen[u]; c < e; c++, s++) {
            for (int h = 0; h < RV; h++) wv[h] = *(const vg *)(g_sign_lut[*s] + h * GW) * p->umag[u];
            for (int j = 0; j < GS; j++)
                for (int h = 0; h < RV; h++) acc[j][h] += wv[h] * xt[c * GS + j];
        }
    }
    for (int j = 0; j < GS; j++) {
        float *y = p->y + (int64_t)(n0 + j) * p->Co + pn * ROWS;
        for (int r = 0; r < rows; r++) y[r] = acc[j][r / GW][r % GW];
    }
}

/* One sample against one panel (batch 1, memory-bound): four accumulators over the channels hide the FMA
 * latency, and unified blocks sum their signed inputs before the one multiply by the magnitude. */
static inline __attribute__((always_inline)) void gemv_one(const gemv_plan *p, int pn, int rows, int n, int bf16) {
    const float *x = p->x + (int64_t)n * p->Ci;
    int64_t w = (int64_t)p->wptr[pn] * ROWS;
    vg acc[4][RV] = {{{0}}}, t[2][RV];
    for (int h = 0; h < RV; h++) acc[0][h] = *(const vg *)(p->bias + pn * ROWS + h * GW);
    for (int u = p->rptr[pn]; u < p->rptr[pn + 1]; u++) {
        const float *xr = x + p->rc0[u];
        int i = 0, len = p->rlen[u];
        for (; i + 4 <= len; i += 4, w += 4 * ROWS)
            for (int a = 0; a < 4; a++)
                for (int h = 0; h < RV; h++) acc[a][h] += gemv_w(p, bf16, w + a * ROWS + h * GW) * xr[i + a];
        for (; i < len; i++, w += ROWS)
            for (int h = 0; h < RV; h++) acc[0][h] += gemv_w(p, bf16, w + h * GW) * xr[i];
    }
    for (int u = p->uptr[pn]; u < p->uptr[pn + 1]; u++) {
        const uint8_t *s = p->usign + p->usoff[u];
        const float *xu = x + p->uch0[u];
        for (int h = 0; h < RV; h++) t[0][h] = t[1][h] = (vg){0};
        int i = 0, len = p->ulen[u];
        for (; i + 2 <= len; i += 2)
            for (int a = 0; a < 2; a++)
                for (int h = 0; h < RV; h++) t[a][h] += *(const vg *)(g_sign_lut[s[i + a]] + h * GW) * xu[i + a];
        if (i < len)
            for (int h = 0; h < RV; h++) t[0][h] += *(const vg *)(g_sign_lut[s[i]] + h * GW) * xu[i];
        for (int h = 0; h < RV; h++) acc[1][h] += (t[0][h] + t[1][h]) * p->umag[u];
    }
    float *y = p->y + (int64_t)n * p->Co + pn * ROWS;
    for (int r = 0; r < rows; r++) {
        int h = r / GW, l = r % GW;
        y[r] = (acc[0][h][l] + acc[1][h][l]) + (acc[2][h][l] + acc[3][h][l]);
    }
}

static void gemv_pack_task(void *ctx, int64_t item, int tid) {
    (void)tid;
    gemv_plan *p = ctx;
    const float *x = p->x + item * GS * p->Ci;
    float *xt = p->xt + item * GS * p->Ci;
    for (int c = 0; c < p->Ci; c++)
        for (int j = 0; j < GS; j++) xt[c * GS + j] = x[(int64_t)j * p->Ci + c];
}

static void gemv_task(void *ctx, int64_t item, int tid) {
    (void)tid;
    gemv_plan *p = ctx;
    int pa = (int)item * GEMV_PANELS_PER_ITEM;
    int pb = pa + GEMV_PANELS_PER_ITEM < p->n_panels ? pa + GEMV_PANELS_PER_ITEM : p->n_panels;
    for (int pn = pa; pn < pb; pn++) {
        int rows = p->Co - pn * ROWS < ROWS ? p->Co - pn * ROWS : ROWS;
        int n = 0;
        if (p->wh) {
            for (; n + GS <= p->N; n += GS) gemv_tile(p, pn, rows, n, 1);
            for (; n < p->N; n++) gemv_one(p, pn, rows, n, 1);
        } else {
            for (; n + GS <= p->N; n += GS) gemv_tile(p, pn, rows, n, 0);
            for (; n < p->N; n++) gemv_one(p, pn, rows, n, 0);
        }
    }
}

/* x: [N][Ci], y: [N][Co]. Returns 0, -1 when out of memory, -2 when N < 0. */
EXPORT int up_gemv_run(gemv_plan *p, const float *x, float *y, int N, int nthreads) {
    if (N < 0) return -2;
    p->N = N;
    p->x = x;
    p->y = y;
    int64_t items = (p->n_panels + GEMV_PANELS_PER_ITEM - 1) / GEMV_PANELS_PER_ITEM, tiles = N / GS;
    if (tiles) { /* batch 1 takes no lock */
        pthread_mutex_lock(&g_scratch_mu);
        if (reserve(&g_xbuf, &g_xcap, (size_t)tiles * GS * p->Ci)) {
            pthread_mutex_unlock(&g_scratch_mu);
            return -1;
        }
        p->xt = g_xbuf;
        parallel_for(tiles, nthreads, gemv_pack_task, p);
    }
    parallel_for(items, nthreads, gemv_task, p);
    if (tiles) pthread_mutex_unlock(&g_scratch_mu);
    return 0;
}

/* ------------------------------------------------------------------ FMA peak probe ------------- */
/* The core's FMA peak for this build's vector type: MAXACC independent chains (more than latency x ports on
 * every target here: Zen 4 needs 4 zmm or 8 ymm chains), so the loop is bound by FMA throughput alone. On
 * Zen 4 it reads 32 flops a cycle for both the avx512 and the avx2 build (two 256-bit FMA pipes; a zmm FMA
 * takes both), 118 GFLOP/s at 3.7 GHz; ONNX Runtime's NCHWc conv (direct, no Winograd) reached 0.91 to 1.00
 * of it. The best of several short windows, not one long one: on a shared machine a neighbour's burst
 * inside a single window read 5 to 10 % low. What a kernel's "share of the FMA peak" divides by
 * (kernels.fma_peak_gflops). */
typedef struct {
    double seconds;
    double rate[MAX_THREADS]; /* flops per ns, best window */
} fma_probe_ctx;

#define FMA_WINDOWS 8

static void fma_probe_task(void *ctx, int64_t item, int tid) {
    (void)tid;
    fma_probe_ctx *c = ctx;
    volatile float mv = 0.9999999f, av = 1e-7f; /* volatile: the chains must not be folded to constants */
    vf m = (vf){0} + mv, a = (vf){0} + av, acc[MAXACC];
    for (int i = 0; i < MAXACC; i++) acc[i] = (vf){0} + (float)i * 1e-3f;
    int64_t limit = (int64_t)(c->seconds * 1e9 / FMA_WINDOWS);
    double best = 0;
    for (int w = 0; w < FMA_WINDOWS; w++) {
        int64_t reps = 0, t0 = up_clock_ns(), dt;
        do {
            for (int rep = 0; rep < 1024; rep++) {
#pragma GCC unroll 32
                for (int i = 0; i < MAXACC; i++) acc[i] = acc[i] * m + a;
            }
            reps += 1024;
        } while ((dt = up_clock_ns() - t0) < limit);
        double rate = (double)reps * MAXACC * VL * 2 / (double)dt;
        if (rate > best) best = rate;
    }
    vf sum = (vf){0};
    for (int i = 0; i < MAXACC; i++) sum += acc[i];
    volatile float sink = sum[0];
    (void)sink;
    c->rate[item] = best;
}

/* Measured GFLOP/s of vector FMAs on nthreads threads (each for about `seconds`, the best of FMA_WINDOWS
 * windows), summed over threads. */
EXPORT double up_fma_peak(double seconds, int nthreads) {
    fma_probe_ctx c;
    if (nthreads < 1) nthreads = 1;
    if (nthreads > MAX_THREADS) nthreads = MAX_THREADS;
    c.seconds = seconds > 0 ? seconds : 0.1;
    memset(c.rate, 0, sizeof(c.rate));
    parallel_for(nthreads, nthreads, fma_probe_task, &c);
    double total = 0;
    for (int i = 0; i < nthreads; i++) total += c.rate[i];
    return total;
}

/* Which vector instructions this build was compiled for, so Python can report it. */
EXPORT const char *up_isa(void) {
#if defined(__AVX512F__)
    return "avx512f";
#elif defined(__AVX2__)
    return "avx2";
#elif defined(__ARM_NEON)
    return "neon";
#else
    return "generic";
#endif
}

/* The pool, for the other translation units (uniprune_plan.c: elementwise ops, pools, copies; uniprune_bf16.c:
 * the AMX conv): fn(ctx, i, tid) for i in [0, n_items) on up to nthreads threads, the caller among them. Not
 * reentrant from inside fn. */
void up_parallel_for(int64_t n_items, int nthreads, task_fn fn, void *ctx) {
    parallel_for(n_items, nthreads, fn, ctx);
}
