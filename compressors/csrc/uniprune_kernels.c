/* uniprune's block-sparse CPU kernels: direct block-sparse convolution, block-sparse GEMV with
 * compact unified blocks, and a small pthread pool. Loaded from Python by ctypes
 * (uniprune/compressors/kernels.py); see docs/KERNELS.md for the design and its limits.
 *
 * Vector code uses GCC/Clang vector extensions rather than intrinsics: with -march=native they compile
 * to AVX-512 (or AVX2, or NEON, or scalar code) from the same source, which is the portable fallback
 * the build needs on a CPU without AVX2.
 *
 * Layout conventions (all float32, C-contiguous):
 *   weights are packed per "panel" of ROWS=8 output channels; a panel keeps a list of the input
 *   channels that have any non-pruned weight in its rows (ch[k]) and their weights w[k][tap][ROWS].
 *   Pruned blocks are simply absent from the lists, so their cost is zero; a panel whose rows are all
 *   pruned (an output-channel block that is gone) costs only writing its bias.
 */
#include <pthread.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#if defined(__x86_64__) || defined(__i386__)
#include <immintrin.h>
#define CPU_RELAX() _mm_pause()
#else
#define CPU_RELAX() ((void)0)
#endif

#define EXPORT __attribute__((visibility("default")))
#define ROWS 8
#define VL 16 /* floats per vector: one zmm on AVX-512, two ymm on AVX2 */
#define MAX_THREADS 64

typedef float vf __attribute__((vector_size(VL * 4), aligned(4)));
typedef float v8 __attribute__((vector_size(ROWS * 4), aligned(4)));

/* ------------------------------------------------------------------ thread pool ---------------- */
/* One process-wide pool. Helpers spin briefly after a job (consecutive layers arrive within
 * microseconds), then sleep on a condition variable so they never compete with torch's own OpenMP
 * threads for the cores while torch runs the layers in between. */

typedef void (*task_fn)(void *ctx, int64_t item, int tid);

static pthread_mutex_t g_job_mu = PTHREAD_MUTEX_INITIALIZER; /* one job at a time */
static pthread_mutex_t g_mu = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t g_cv = PTHREAD_COND_INITIALIZER;
static pthread_t g_threads[MAX_THREADS];
static int g_nworkers = 0;
static atomic_uint_fast64_t g_gen = 0;
static atomic_int_fast64_t g_next = 0;
static atomic_int g_done = 0;
static task_fn g_fn;
static void *g_ctx;
static int64_t g_items;
static int g_active;
static long g_spin_ns = 200000;
static uint_fast64_t g_spawn_gen;

static int64_t now_ns(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (int64_t)t.tv_sec * 1000000000LL + t.tv_nsec;
}

static void run_items(int tid) {
    for (;;) {
        int64_t i = atomic_fetch_add(&g_next, 1);
        if (i >= g_items) break;
        g_fn(g_ctx, i, tid);
    }
}

static void *worker_main(void *arg) {
    int tid = (int)(intptr_t)arg;
    uint_fast64_t seen = g_spawn_gen; /* not g_gen: the first job may be posted before this thread runs */
    for (;;) {
        uint_fast64_t gen;
        int64_t t0 = now_ns();
        int spins = 0;
        while ((gen = atomic_load(&g_gen)) == seen) {
            CPU_RELAX();
            if (++spins % 256 == 0 && now_ns() - t0 > g_spin_ns) {
                pthread_mutex_lock(&g_mu);
                while ((gen = atomic_load(&g_gen)) == seen) pthread_cond_wait(&g_cv, &g_mu);
                pthread_mutex_unlock(&g_mu);
                break;
            }
        }
        seen = gen;
        if (tid <= g_active) run_items(tid);
        atomic_fetch_add(&g_done, 1);
    }
    return NULL;
}

EXPORT void up_set_spin_us(long us) { g_spin_ns = us * 1000L; }

/* Run fn(ctx, i, tid) for i in [0, n_items) on up to nthreads threads (the caller is one of them). */
static void parallel_for(int64_t n_items, int nthreads, task_fn fn, void *ctx) {
    if (nthreads > MAX_THREADS) nthreads = MAX_THREADS;
    if (nthreads <= 1 || n_items <= 1) {
        for (int64_t i = 0; i < n_items; i++) fn(ctx, i, 0);
        return;
    }
    pthread_mutex_lock(&g_job_mu);
    g_spawn_gen = atomic_load(&g_gen);
    while (g_nworkers < nthreads - 1) {
        if (pthread_create(&g_threads[g_nworkers], NULL, worker_main, (void *)(intptr_t)(g_nworkers + 1)) != 0) break;
        g_nworkers++;
    }
    g_fn = fn;
    g_ctx = ctx;
    g_items = n_items;
    g_active = nthreads - 1;
    atomic_store(&g_next, 0);
    atomic_store(&g_done, 0);
    pthread_mutex_lock(&g_mu);
    atomic_fetch_add(&g_gen, 1);
    pthread_cond_broadcast(&g_cv);
    pthread_mutex_unlock(&g_mu);
    run_items(0);
    while (atomic_load(&g_done) < g_nworkers) CPU_RELAX();
    pthread_mutex_unlock(&g_job_mu);
}

/* ------------------------------------------------------------------ block-sparse conv ---------- */

typedef struct {
    int Co, Ci, kh, kw, sh, sw, ph, pw, dh, dw, n_panels;
    int32_t *panel_ptr; /* [n_panels + 1] into ch / w */
    int32_t *ch;        /* [nnz] kept input channel */
    float *w;           /* [nnz][kh*kw][ROWS] */
    float *bias;        /* [n_panels * ROWS], zeros when the layer has none */
    int32_t *tap_off;   /* [kh*kw] offset of each tap in a prepared channel */
    /* geometry of the last call */
    int N, H, W, Ho, Wo, Hph, Wph, nph;
    int64_t plane, chstride, img_stride, Qpad;
    float *xbuf; /* the shared scratch below, for the duration of one call */
    float *obuf;
    int nthreads;
    const float *x;
    float *y;
} conv_plan;

static void *xalloc(size_t bytes) {
    void *p = NULL;
    if (posix_memalign(&p, 64, bytes ? bytes : 64) != 0) return NULL;
    return p;
}

EXPORT void up_conv_destroy(conv_plan *p) {
    if (!p) return;
    free(p->panel_ptr);
    free(p->ch);
    free(p->w);
    free(p->bias);
    free(p->tap_off);
    free(p);
}

/* geom: Co, Ci, kh, kw, sh, sw, ph, pw, dh, dw. Copies all arrays; returns NULL on bad input. */
EXPORT conv_plan *up_conv_create(const int32_t *geom, int n_panels, const int32_t *panel_ptr, const int32_t *ch,
                                 const float *w, const float *bias) {
    conv_plan *p = calloc(1, sizeof(conv_plan));
    if (!p) return NULL;
    p->Co = geom[0]; p->Ci = geom[1]; p->kh = geom[2]; p->kw = geom[3];
    p->sh = geom[4]; p->sw = geom[5]; p->ph = geom[6]; p->pw = geom[7]; p->dh = geom[8]; p->dw = geom[9];
    if (p->Co < 1 || p->Ci < 1 || p->kh < 1 || p->kw < 1 || p->sh < 1 || p->sw < 1 || p->ph < 0 || p->pw < 0 ||
        p->dh < 1 || p->dw < 1 || n_panels != (p->Co + ROWS - 1) / ROWS) {
        free(p);
        return NULL;
    }
    p->n_panels = n_panels;
    int64_t nnz = panel_ptr[n_panels], taps = (int64_t)p->kh * p->kw;
    p->panel_ptr = xalloc(sizeof(int32_t) * (n_panels + 1));
    p->ch = xalloc(sizeof(int32_t) * (nnz + 1));
    p->w = xalloc(sizeof(float) * (nnz * taps * ROWS + 1));
    p->bias = xalloc(sizeof(float) * n_panels * ROWS);
    p->tap_off = xalloc(sizeof(int32_t) * taps);
    if (!p->panel_ptr || !p->ch || !p->w || !p->bias || !p->tap_off) {
        up_conv_destroy(p);
        return NULL;
    }
    memcpy(p->panel_ptr, panel_ptr, sizeof(int32_t) * (n_panels + 1));
    memcpy(p->ch, ch, sizeof(int32_t) * nnz);
    memcpy(p->w, w, sizeof(float) * nnz * taps * ROWS);
    memset(p->bias, 0, sizeof(float) * n_panels * ROWS);
    if (bias) memcpy(p->bias, bias, sizeof(float) * p->Co);
    return p;
}

/* Pad and split one input channel into its stride phases, so every tap reads a contiguous run:
 * phase (py, px)[i][j] = xpad[i*sh + py][j*sw + px]. */
static void conv_prep_task(void *ctx, int64_t item, int tid) {
    (void)tid;
    conv_plan *p = ctx;
    int64_t n = item / p->Ci, c = item % p->Ci;
    const float *src = p->x + (n * p->Ci + c) * (int64_t)p->H * p->W;
    float *dst = p->xbuf + n * p->img_stride + c * p->chstride;
    memset(dst, 0, sizeof(float) * p->chstride);
    for (int r = 0; r < p->H; r++) {
        int pr = r + p->ph, py = pr % p->sh, i = pr / p->sh;
        const float *s = src + (int64_t)r * p->W;
        if (p->sw == 1) {
            memcpy(dst + (int64_t)py * p->plane + (int64_t)i * p->Wph + p->pw, s, sizeof(float) * p->W);
        } else {
            for (int col = 0; col < p->W; col++) {
                int pc = col + p->pw, px = pc % p->sw, j = pc / p->sw;
                dst[(int64_t)(py * p->sw + px) * p->plane + (int64_t)i * p->Wph + j] = s[col];
            }
        }
    }
}

/* One output tile of ROWS channels x NV vectors of pixels, accumulated over the panel's kept channels. */
static inline __attribute__((always_inline)) void conv_tile(const conv_plan *p, const float *xb, int k0, int k1,
                                                            int64_t q0, float *ob, int NV) {
    vf acc[ROWS][2];
    for (int r = 0; r < ROWS; r++)
        for (int v = 0; v < NV; v++) acc[r][v] = (vf){0};
    const int taps = p->kh * p->kw;
    for (int k = k0; k < k1; k++) {
        const float *xc = xb + (int64_t)p->ch[k] * p->chstride + q0;
        const float *wk = p->w + (int64_t)k * taps * ROWS;
        for (int t = 0; t < taps; t++) {
            const float *xp = xc + p->tap_off[t];
            const float *wt = wk + t * ROWS;
            vf x0 = *(const vf *)xp;
            vf x1 = NV > 1 ? *(const vf *)(xp + VL) : x0;
            for (int r = 0; r < ROWS; r++) {
                acc[r][0] += x0 * wt[r];
                if (NV > 1) acc[r][1] += x1 * wt[r];
            }
        }
    }
    for (int r = 0; r < ROWS; r++)
        for (int v = 0; v < NV; v++) *(vf *)(ob + r * p->Qpad + q0 + v * VL) = acc[r][v];
}

static void conv_compute_task(void *ctx, int64_t item, int tid) {
    conv_plan *p = ctx;
    int64_t n = item / p->n_panels;
    int pn = (int)(item % p->n_panels);
    int k0 = p->panel_ptr[pn], k1 = p->panel_ptr[pn + 1];
    int rows = p->Co - pn * ROWS < ROWS ? p->Co - pn * ROWS : ROWS;
    const float *bias = p->bias + pn * ROWS;
    int64_t out_plane = (int64_t)p->Ho * p->Wo;
    float *y = p->y + (n * p->Co + (int64_t)pn * ROWS) * out_plane;
    if (k0 == k1) { /* the whole output-channel block is pruned */
        for (int r = 0; r < rows; r++)
            for (int64_t i = 0; i < out_plane; i++) y[r * out_plane + i] = bias[r];
        return;
    }
    const float *xb = p->xbuf + n * p->img_stride;
    float *ob = p->obuf + (int64_t)tid * ROWS * p->Qpad;
    int64_t q0 = 0;
    for (; q0 + 2 * VL <= p->Qpad; q0 += 2 * VL) conv_tile(p, xb, k0, k1, q0, ob, 2);
    for (; q0 < p->Qpad; q0 += VL) conv_tile(p, xb, k0, k1, q0, ob, 1);
    for (int r = 0; r < rows; r++) {
        float b = bias[r];
        for (int oy = 0; oy < p->Ho; oy++) {
            const float *s = ob + r * p->Qpad + (int64_t)oy * p->Wph;
            float *d = y + r * out_plane + (int64_t)oy * p->Wo;
            for (int ox = 0; ox < p->Wo; ox++) d[ox] = s[ox] + b;
        }
    }
}

/* One scratch for every conv plan: the padded input and the output tiles of a layer are dead once it
 * returns, and a network of 50 layers each keeping its own would hold megabytes that evict the weights
 * from L2. A mutex makes calls from several Python threads (ctypes drops the GIL) take turns. */
static pthread_mutex_t g_scratch_mu = PTHREAD_MUTEX_INITIALIZER;
static float *g_xbuf, *g_obuf;
static size_t g_xcap, g_ocap;

static int reserve(float **buf, size_t *cap, size_t need) {
    if (need <= *cap) return 0;
    free(*buf);
    *buf = xalloc(sizeof(float) * need);
    *cap = *buf ? need : 0;
    if (!*buf) return -1;
    memset(*buf, 0, sizeof(float) * need); /* garbage lanes read the slack: keep it finite */
    return 0;
}

/* x: [N][Ci][H][W], y: [N][Co][Ho][Wo] (Ho, Wo as torch computes them). Returns 0, or -1 when out of memory,
 * -2 when the input is smaller than the dilated kernel. */
EXPORT int up_conv_run(conv_plan *p, const float *x, float *y, int N, int H, int W, int nthreads) {
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
    p->plane = (int64_t)p->Hph * p->Wph;
    p->chstride = p->nph * p->plane;
    int64_t q = (int64_t)p->Ho * p->Wph;
    p->Qpad = (q + VL - 1) / VL * VL;
    /* garbage lanes (columns past Wo, the rounding of Qpad) read past a channel's end: keep slack */
    p->img_stride = p->Ci * p->chstride + p->Qpad + 2 * p->plane + 4 * VL;
    for (int ky = 0; ky < p->kh; ky++)
        for (int kx = 0; kx < p->kw; kx++) {
            int py = (ky * p->dh) % p->sh, ry = (ky * p->dh) / p->sh;
            int px = (kx * p->dw) % p->sw, rx = (kx * p->dw) / p->sw;
            p->tap_off[ky * p->kw + kx] = (int32_t)((py * p->sw + px) * p->plane + (int64_t)ry * p->Wph + rx);
        }
    size_t xneed = (size_t)N * p->img_stride, oneed = (size_t)nthreads * ROWS * p->Qpad;
    pthread_mutex_lock(&g_scratch_mu);
    if (reserve(&g_xbuf, &g_xcap, xneed) || reserve(&g_obuf, &g_ocap, oneed)) {
        pthread_mutex_unlock(&g_scratch_mu);
        return -1;
    }
    p->xbuf = g_xbuf;
    p->obuf = g_obuf;
    p->x = x;
    p->y = y;
    p->nthreads = nthreads;
    parallel_for((int64_t)N * p->Ci, nthreads, conv_prep_task, p);
    parallel_for((int64_t)N * p->n_panels, nthreads, conv_compute_task, p);
    pthread_mutex_unlock(&g_scratch_mu);
    return 0;
}

/* ------------------------------------------------------------------ block-sparse GEMV ---------- */
/* y[n] = W x[n] + b for a few samples (batch 1 is the case it is for). Kept weights as in the conv plan
 * with one tap; unified blocks in compact form: one magnitude, and one sign byte per input channel
 * (bit r = sign of row r), so a unified 8x8 block reads 12 bytes instead of 256. */

typedef struct {
    int Co, Ci, n_panels;
    int32_t *panel_ptr, *ch;
    float *w;
    int32_t *uptr;  /* [n_panels + 1] into the unified block lists */
    int32_t *uch0;  /* [nu] first input channel of the block */
    int32_t *ulen;  /* [nu] its input channels */
    int32_t *usoff; /* [nu] offset of its sign bytes */
    float *umag;    /* [nu] magnitude */
    uint8_t *usign; /* sign bytes */
    float *bias;
    int N;
    const float *x;
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
    free(p->panel_ptr); free(p->ch); free(p->w); free(p->uptr); free(p->uch0); free(p->ulen);
    free(p->usoff); free(p->umag); free(p->usign); free(p->bias);
    free(p);
}

EXPORT gemv_plan *up_gemv_create(int Co, int Ci, int n_panels, const int32_t *panel_ptr, const int32_t *ch,
                                 const float *w, const int32_t *uptr, const int32_t *uch0, const int32_t *ulen,
                                 const int32_t *usoff, const float *umag, const uint8_t *usign, int64_t n_sign,
                                 const float *bias) {
    pthread_once(&g_lut_once, init_lut);
    if (Co < 1 || Ci < 1 || n_panels != (Co + ROWS - 1) / ROWS) return NULL;
    gemv_plan *p = calloc(1, sizeof(gemv_plan));
    if (!p) return NULL;
    p->Co = Co; p->Ci = Ci; p->n_panels = n_panels;
    int64_t nnz = panel_ptr[n_panels], nu = uptr[n_panels];
    p->panel_ptr = xalloc(sizeof(int32_t) * (n_panels + 1));
    p->ch = xalloc(sizeof(int32_t) * (nnz + 1));
    p->w = xalloc(sizeof(float) * (nnz * ROWS + 1));
    p->uptr = xalloc(sizeof(int32_t) * (n_panels + 1));
    p->uch0 = xalloc(sizeof(int32_t) * (nu + 1));
    p->ulen = xalloc(sizeof(int32_t) * (nu + 1));
    p->usoff = xalloc(sizeof(int32_t) * (nu + 1));
    p->umag = xalloc(sizeof(float) * (nu + 1));
    p->usign = xalloc(n_sign + 1);
    p->bias = xalloc(sizeof(float) * n_panels * ROWS);
    if (!p->panel_ptr || !p->ch || !p->w || !p->uptr || !p->uch0 || !p->ulen || !p->usoff || !p->umag ||
        !p->usign || !p->bias) {
        up_gemv_destroy(p);
        return NULL;
    }
    memcpy(p->panel_ptr, panel_ptr, sizeof(int32_t) * (n_panels + 1));
    memcpy(p->ch, ch, sizeof(int32_t) * nnz);
    memcpy(p->w, w, sizeof(float) * nnz * ROWS);
    memcpy(p->uptr, uptr, sizeof(int32_t) * (n_panels + 1));
    memcpy(p->uch0, uch0, sizeof(int32_t) * nu);
    memcpy(p->ulen, ulen, sizeof(int32_t) * nu);
    memcpy(p->usoff, usoff, sizeof(int32_t) * nu);
    memcpy(p->umag, umag, sizeof(float) * nu);
    memcpy(p->usign, usign, n_sign);
    memset(p->bias, 0, sizeof(float) * n_panels * ROWS);
    if (bias) memcpy(p->bias, bias, sizeof(float) * Co);
    return p;
}

#define GEMV_PANELS_PER_ITEM 4

static void gemv_task(void *ctx, int64_t item, int tid) {
    (void)tid;
    gemv_plan *p = ctx;
    int pa = (int)item * GEMV_PANELS_PER_ITEM;
    int pb = pa + GEMV_PANELS_PER_ITEM < p->n_panels ? pa + GEMV_PANELS_PER_ITEM : p->n_panels;
    for (int pn = pa; pn < pb; pn++) {
        int rows = p->Co - pn * ROWS < ROWS ? p->Co - pn * ROWS : ROWS;
        for (int n = 0; n < p->N; n++) {
            const float *x = p->x + (int64_t)n * p->Ci;
            v8 acc0 = *(const v8 *)(p->bias + pn * ROWS), acc1 = {0}, acc2 = {0}, acc3 = {0};
            int k = p->panel_ptr[pn], k1 = p->panel_ptr[pn + 1];
            /* four accumulators hide the FMA latency */
            for (; k + 4 <= k1; k += 4) {
                acc0 += *(const v8 *)(p->w + (int64_t)k * ROWS) * x[p->ch[k]];
                acc1 += *(const v8 *)(p->w + (int64_t)(k + 1) * ROWS) * x[p->ch[k + 1]];
                acc2 += *(const v8 *)(p->w + (int64_t)(k + 2) * ROWS) * x[p->ch[k + 2]];
                acc3 += *(const v8 *)(p->w + (int64_t)(k + 3) * ROWS) * x[p->ch[k + 3]];
            }
            for (; k < k1; k++) acc0 += *(const v8 *)(p->w + (int64_t)k * ROWS) * x[p->ch[k]];
            for (int u = p->uptr[pn]; u < p->uptr[pn + 1]; u++) {
                const uint8_t *s = p->usign + p->usoff[u];
                const float *xu = x + p->uch0[u];
                v8 t0 = {0}, t1 = {0};
                int i = 0, len = p->ulen[u];
                for (; i + 2 <= len; i += 2) {
                    t0 += *(const v8 *)g_sign_lut[s[i]] * xu[i];
                    t1 += *(const v8 *)g_sign_lut[s[i + 1]] * xu[i + 1];
                }
                if (i < len) t0 += *(const v8 *)g_sign_lut[s[i]] * xu[i];
                acc1 += (t0 + t1) * p->umag[u];
            }
            v8 acc = (acc0 + acc1) + (acc2 + acc3);
            float *y = p->y + (int64_t)n * p->Co + pn * ROWS;
            for (int r = 0; r < rows; r++) y[r] = acc[r];
        }
    }
}

/* x: [N][Ci], y: [N][Co]. */
EXPORT int up_gemv_run(gemv_plan *p, const float *x, float *y, int N, int nthreads) {
    if (N < 1) return -2;
    p->N = N;
    p->x = x;
    p->y = y;
    int64_t items = (p->n_panels + GEMV_PANELS_PER_ITEM - 1) / GEMV_PANELS_PER_ITEM;
    parallel_for(items, nthreads, gemv_task, p);
    return 0;
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
