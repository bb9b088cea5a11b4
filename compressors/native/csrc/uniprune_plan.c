/* uniprune's lean execution path: a whole network as one native plan, run in one call per forward pass.
 *
 * A plan is a list of ops over numbered float32 buffers, each holding one activation of N samples laid out
 * C-contiguous (NCHW, or [N][F] after a flatten). Buffer 0 is the caller's input and buffer 1 the caller's
 * output; the others are allocated by the plan, once per batch size it has not seen yet, and reused by
 * values whose lifetimes do not overlap (the Python side, compressors/plan.py, assigns them). Per-sample
 * shapes are fixed when the plan is built; the batch N is given per run.
 *
 * Convolutions and linears run on the kernel library's own block-sparse plans (uniprune_kernels.c, compiled
 * into the same shared library) through its exported entry points; a layer left dense runs there with
 * every block kept. This file never looks inside those plans, so their layout can change freely.
 *
 * Why: at batch 1 a ResNet-56 layer takes 20 to 100 us and the Python path around each native call cost
 * about 5 us of it (110 calls). Here the only per-layer overhead is a function call and a switch.
 *
 * Epilogues (residual add, ReLU, clamp) run as one vector pass over the op's output right after it, while
 * it is still in L1/L2; the conv kernel writes its output once and the pass reads and writes it again.
 * Elementwise ops and the direct grouped conv run on the calling thread: the kernel library's thread pool
 * is not exported, and a second pool would fight it for the cores (see docs/KERNELS.md, "Threads").
 */
#include <float.h>
#include <string.h>

#include "uniprune_common.h"

/* The kernel library's entry points (uniprune_kernels.c). Called from exactly one place each below
 * (conv_call, gemv_call), so a change of their signatures is a change of two lines here. */
int up_conv_run(void *plan, const float *x, float *y, int N, int H, int W, int nthreads);
int up_gemv_run(void *plan, const float *x, float *y, int N, int nthreads);
/* depthwise convs (groups = C = Co), called from the OP_GCONV case only; runs on the kernels' pool */
int up_dwconv_run(const float *x, float *y, const float *w, const float *bias, const int32_t *geom, int N, int act,
                  float lo, float hi, int nthreads);
/* the geometry a kernel plan was created with; -1 for a pointer that is not such a plan (see up_plan_add) */
int up_conv_geom(const void *plan, int32_t *geom);
int up_gemv_dims(const void *plan, int32_t *dims);
/* bf16 attention on AMX tiles (uniprune_bf16.c), called from run_attn only: -3 where there is no AMX */
int64_t up_amx_attn_scratch(int64_t T, int64_t D);
int up_amx_attention(const float *x, float *y, int Co, int heads, int64_t T, float *scratch, int64_t per, int64_t i0,
                     int64_t i1);

/* Op kinds; the numbers are part of the interface with compressors/plan.py. */
enum {
    OP_CONV = 1,    /* block-sparse conv plan (groups = 1) */
    OP_GEMV = 2,    /* block-sparse linear plan: [N][C*H*W] -> [N][Co] */
    OP_GCONV = 3,   /* grouped / depthwise conv, direct loops over dense weights */
    OP_ADD = 4,     /* out = in0 + in1 (same shape) */
    OP_ACT = 5,     /* out = act(in0) */
    OP_AFFINE = 6,  /* out[c] = in0[c] * scale[c] + shift[c]: a BatchNorm that was not folded */
    OP_GAP = 7,     /* global average pool: [N][C][H][W] -> [N][C][1][1] */
    OP_POOL = 8,    /* max or average pool 2d */
    OP_SLICEPAD = 9, /* out[c + clo][i + pt][j + pl] = in[c][i * sh][j * sw], zeros elsewhere */
    OP_COPY = 10,   /* out = in0 */
    OP_IM2COL = 11, /* conv (groups = 1) as im2col over the whole batch + a block-sparse kernel, see run_im2col */
    OP_CHMUL = 12,  /* out[n][c][p] = in0[n][c][p] * in1[n][c]: squeeze-excitation's channel scaling */
    OP_CHCOPY = 13, /* out[n][ooff + c] = in0[n][ioff + c], c < cnt: one input of a concat, or a chunk */
    OP_SHUFFLE = 14, /* channel shuffle: out[n][j * g + i] = in0[n][i * (C / g) + j] */
    OP_CHNORM = 15, /* LayerNorm across channels at each pixel (channels-last LayerNorm on NCHW storage) */
    OP_ATTN = 16,   /* multi-head scaled dot-product attention over tokens stored channel-major, see run_attn */
    OP_ROWCAT = 17, /* constant rows, then the input's, in every channel plane: a transformer's class token */
    OP_ADDC = 18,   /* out = in0 + one sample's constant: a transformer's position embedding */
    OP_LAST = OP_ADDC,
};

/* Activations of an op's epilogue (or of OP_ACT); the numbers are part of the interface with plan.py. */
enum { ACT_NONE = 0, ACT_RELU = 1, ACT_CLAMP = 2, ACT_HARDSWISH = 3, ACT_HARDSIGMOID = 4, ACT_SILU = 5,
       ACT_GELU = 6, ACT_SIGMOID = 7, ACT_GELU_TANH = 8, ACT_LAST = ACT_GELU_TANH };

/* Integer header every op is given, in this order, followed by its own parameters. */
enum { I_IN0, I_IN1, I_OUT, I_ACT, I_C, I_H, I_W, I_CO, I_HO, I_WO, I_HEADER };
/* OP_GCONV: kh kw sh sw ph pw dh dw groups has_bias; floats: lo hi, weight [Co][C/groups][kh][kw], bias [Co] */
/* OP_POOL: kh kw sh sw ph pw is_max count_include_pad */
/* OP_SLICEPAD: sh sw clo pt pl */
/* OP_IM2COL: kh kw sh sw ph pw dh dw mode; kplan: mode 0 a linear plan of weight [Co][C*kh*kw], mode 1 a
 * 1x1 conv plan of weight [Co][C*kh*kw][1][1] */
/* OP_CHMUL: no parameters; in1 [N][C] (a [N][C][1][1] value); Co Ho Wo = C H W; may run in place on in0 */
/* OP_CHCOPY: ooff ioff cnt; H W = Ho Wo; the ops of one concat share their output buffer */
/* OP_SHUFFLE: g (groups, dividing C); Co Ho Wo = C H W */
/* OP_CHNORM: has_affine; floats: lo hi, eps, then weight [C] and bias [C] when has_affine; Co Ho Wo = C H W */
/* OP_ATTN: heads (dividing Co), bf16 (1: on AMX tiles where the CPU has them); in0 [N][3 * Co][H * W]: queries, keys, values, each token a column (H * W
 * tokens); C = 3 * Co, Ho Wo = H W; act none */
/* OP_ROWCAT: rows; floats: lo hi, then [C][rows][W], written before each plane's H input rows; Co = C,
 * Ho = H + rows, Wo = W; act none */
/* OP_ADDC: no parameters; floats: lo hi, then one sample's [C][H][W], added to every sample; Co Ho Wo = C H W */
#define MAX_INTS 32
/* Bounds on what a plan may ask for; uniprune_lean.py's verifier holds the same numbers (MAX_DIM, MAX_PARAM,
 * MAX_SAMPLE_FLOATS, MAX_BUFFERS). Everything up_plan_add is handed is checked against them and against the
 * buffers and kernels it names, so that a plan it accepts can only read and write inside its buffers. */
#define MAX_DIM (1 << 24)
#define MAX_PARAM (1 << 16)
#define MAX_FLOATS (1LL << 34)
#define MAX_BUFS (1 << 16)
#define ATTN_MAX_TOKENS 16384 /* an attention's tokens: its scratch grows with them */

typedef struct up_op_s {
    int kind;
    int in0, in1, out, act;
    float lo, hi;
    int C, H, W, Co, Ho, Wo;
    int p[MAX_INTS - I_HEADER];
    float *f; /* owned: per-channel parameters or weights */
    void *kplan; /* borrowed: the kernel library's plan, kept alive by the Python side */
} up_op;

typedef struct {
    int n_ops, cap_ops, n_bufs;
    up_op *ops;
    int64_t *size;  /* [n_bufs] floats per sample (buffers 0 and 1: the caller's input and output) */
    float **buf;    /* [n_bufs] allocations for cap_n samples */
    float **cur;    /* [n_bufs] the buffers of the running call (0 and 1 the caller's) */
    uint8_t *written; /* [n_bufs] some op added so far writes it (buffer 0: the input, always) */
    int cap_n;
    /* scratch of the im2col ops, floats per sample: the patches and the linear's [pixel][Co] output */
    int64_t col_size, rows_size;
    float *col, *rows;
    int64_t attn_size; /* scratch of the attention ops, floats per sample: every head's (run_attn) */
    float *attn;
} up_plan;


EXPORT void up_plan_destroy(up_plan *p) {
    if (!p) return;
    for (int i = 0; i < p->n_ops; i++) free(p->ops[i].f);
    for (int b = 0; b < p->n_bufs; b++) free(p->buf[b]);
    UP_FREE_ALL(p->ops, p->col, p->rows, p->attn, p->size, p->buf, p->cur, p->written, p);
}

/* sizes: floats per sample of each buffer: 0 the input's and 1 the output's (what a caller's arrays hold per
 * sample), then the plan's own. NULL on bad input or no memory. */
EXPORT up_plan *up_plan_create(int n_bufs, const int64_t *sizes) {
    if (n_bufs < 2 || n_bufs > MAX_BUFS || !sizes) return NULL;
    up_plan *p = calloc(1, sizeof(up_plan));
    if (!p) return NULL;
    p->n_bufs = n_bufs;
    p->size = calloc((size_t)n_bufs, sizeof(int64_t));
    p->buf = calloc((size_t)n_bufs, sizeof(float *));
    p->cur = calloc((size_t)n_bufs, sizeof(float *));
    p->written = calloc((size_t)n_bufs, 1);
    if (!p->size || !p->buf || !p->cur || !p->written) {
        up_plan_destroy(p);
        return NULL;
    }
    p->written[0] = 1;
    for (int b = 0; b < n_bufs; b++) {
        if (sizes[b] < (b < 2) || sizes[b] > MAX_FLOATS) {
            up_plan_destroy(p);
            return NULL;
        }
        p->size[b] = sizes[b];
    }
    return p;
}

static int64_t plane_of(const up_op *o) { return (int64_t)o->C * o->H * o->W; }
static int64_t oplane_of(const up_op *o) { return (int64_t)o->Co * o->Ho * o->Wo; }

#define ATTN_TILE 64 /* the widest tile; the rest of a row in tiles of 16 */
static int64_t round16(int64_t n) { return (n + 15) / 16 * 16; }

/* Floats of scratch one head needs (see run_attn): padded queries and keys [D][Tp], values [T][Dp], a block of
 * 4 weight rows [4][Tp] and a 4 x 64 output tile (Tp, Dp: T and D rounded up to 16), or the AMX attention's,
 * whichever is more; a multiple of 16, so that every head's scratch starts on a cache line. */
static int64_t attn_scratch(int64_t T, int64_t D) {
    const int64_t Tp = round16(T), Dp = round16(D), amx = up_amx_attn_scratch(T, D);
    const int64_t f32 = 2 * D * Tp + T * Dp + 4 * Tp + 4 * ATTN_TILE;
    return round16(f32 > amx ? f32 : amx);
}


/* Output extent of a window along one axis, as torch computes it (< 1: the window does not fit). */
static int64_t extent(int n, int k, int s, int pad, int d) {
    const int64_t span = (int64_t)n + 2LL * pad - (int64_t)d * (k - 1) - 1;
    return span < 0 ? 0 : span / s + 1;
}

/* The window parameters p[0..5] (kh kw sh sw ph pw) and, when dilated, p[6..7] (dh dw) in range, and the
 * op's Ho, Wo what they give on its H, W. */
static int window_ok(const up_op *o, int dilated) {
    const int *q = o->p;
    int dh = dilated ? q[6] : 1, dw = dilated ? q[7] : 1;
    if (!up_in_range(q[0], 1, MAX_PARAM) || !up_in_range(q[1], 1, MAX_PARAM) || !up_in_range(q[2], 1, MAX_PARAM) ||
        !up_in_range(q[3], 1, MAX_PARAM) || !up_in_range(q[4], 0, MAX_PARAM) || !up_in_range(q[5], 0, MAX_PARAM) ||
        !up_in_range(dh, 1, MAX_PARAM) || !up_in_range(dw, 1, MAX_PARAM))
        return 0;
    return extent(o->H, q[0], q[2], q[4], dh) == o->Ho && extent(o->W, q[1], q[3], q[5], dw) == o->Wo;
}

/* A pool in ceil mode: torch's extent, whose last window starts inside the input or its left padding. */
static int ceil_pool_ok(const up_op *o) {
    const int *q = o->p;
    if (!up_in_range(q[0], 1, MAX_PARAM) || !up_in_range(q[1], 1, MAX_PARAM) || !up_in_range(q[2], 1, MAX_PARAM) ||
        !up_in_range(q[3], 1, MAX_PARAM) || !up_in_range(q[4], 0, MAX_PARAM) || !up_in_range(q[5], 0, MAX_PARAM))
        return 0;
    int64_t ho = ((int64_t)o->H + 2 * q[4] - q[0] + q[2] - 1) / q[2] + 1, wo = ((int64_t)o->W + 2 * q[5] - q[1] + q[3] - 1) / q[3] + 1;
    if ((ho - 1) * q[2] >= (int64_t)o->H + q[4]) ho--;
    if ((wo - 1) * q[3] >= (int64_t)o->W + q[5]) wo--;
    return (int64_t)o->H + 2 * q[4] >= q[0] && (int64_t)o->W + 2 * q[5] >= q[1] && ho == o->Ho && wo == o->Wo;
}

/* Everything an op's integers claim, checked against its kind, its buffers (size, and written by an earlier
 * op before it is read) and its kernel plan's own geometry. n_params: integers after the header. Returns 0
 * when the op can run, -1 otherwise. */
static int check_op(const up_plan *p, const up_op *o, int n_params) {
    static const int params_of[OP_LAST + 1] = {[OP_GCONV] = 10, [OP_POOL] = 8, [OP_SLICEPAD] = 5, [OP_IM2COL] = 9,
                                               [OP_CHCOPY] = 3, [OP_SHUFFLE] = 1, [OP_CHNORM] = 1,
                                               [OP_ATTN] = 2, [OP_ROWCAT] = 1};
    const int kind = o->kind, nb = p->n_bufs;
    if (kind < OP_CONV || kind > OP_LAST || n_params != params_of[kind]) return -1;
    if (!up_in_range(o->in0, 0, nb - 1) || !up_in_range(o->out, 1, nb - 1) || !up_in_range(o->in1, -1, nb - 1) ||
        !up_in_range(o->act, ACT_NONE, ACT_LAST) || !up_in_range(o->C, 1, MAX_DIM) || !up_in_range(o->H, 1, MAX_DIM) ||
        !up_in_range(o->W, 1, MAX_DIM) || !up_in_range(o->Co, 1, MAX_DIM) || !up_in_range(o->Ho, 1, MAX_DIM) ||
        !up_in_range(o->Wo, 1, MAX_DIM))
        return -1;
    const int residual = kind == OP_CONV || kind == OP_GEMV || kind == OP_GCONV || kind == OP_IM2COL || kind == OP_ADD ||
                         kind == OP_CHMUL; /* CHMUL: in1 is the gate */
    if (((kind == OP_ADD || kind == OP_CHMUL) && o->in1 < 0) || (!residual && o->in1 >= 0) ||
        (o->out == o->in1 && kind != OP_ADD))
        return -1;
    /* ops that read a position after writing another must not run in place */
    if (o->out == o->in0 && kind != OP_ADD && kind != OP_ACT && kind != OP_AFFINE && kind != OP_COPY && kind != OP_CHMUL &&
        kind != OP_ADDC)
        return -1;
    const int64_t plane = plane_of(o), oplane = oplane_of(o);
    if (!p->written[o->in0] || plane > p->size[o->in0] || oplane > p->size[o->out]) return -1;
    const int64_t in1_floats = kind == OP_CHMUL ? o->C : oplane; /* a gate holds one float per channel */
    if (o->in1 >= 0 && (!p->written[o->in1] || in1_floats > p->size[o->in1])) return -1;
    const int same = o->C == o->Co && o->H == o->Ho && o->W == o->Wo;
    int32_t g[10];
    switch (kind) {
    case OP_CONV:
        if (up_conv_geom(o->kplan, g) || g[0] != o->Co || g[1] != o->C ||
            extent(o->H, g[2], g[4], g[6], g[8]) != o->Ho || extent(o->W, g[3], g[5], g[7], g[9]) != o->Wo)
            return -1;
        return 0;
    case OP_GEMV:
        return up_gemv_dims(o->kplan, g) || g[0] != oplane || g[1] != plane ? -1 : 0;
    case OP_GCONV: {
        const int groups = o->p[8];
        return window_ok(o, 1) && up_in_range(groups, 1, MAX_DIM) && o->C % groups == 0 && o->Co % groups == 0 &&
               up_in_range(o->p[9], 0, 1) ? 0 : -1;
    }
    case OP_IM2COL: {
        const int mode = o->p[8];
        if (!window_ok(o, 1) || !up_in_range(mode, 0, 1)) return -1;
        const int64_t patch = (int64_t)o->C * o->p[0] * o->p[1];
        if (patch > MAX_DIM) return -1;
        if (mode == 0) return up_gemv_dims(o->kplan, g) || g[0] != o->Co || g[1] != patch ? -1 : 0;
        return up_conv_geom(o->kplan, g) || g[0] != o->Co || g[1] != patch || g[2] != 1 || g[3] != 1 || g[4] != 1 ||
               g[5] != 1 || g[6] != 0 || g[7] != 0 ? -1 : 0;
    }
    case OP_ADD:
    case OP_ACT:
    case OP_AFFINE:
    case OP_COPY:
        return same ? 0 : -1;
    case OP_GAP:
        return o->Co == o->C && o->Ho == 1 && o->Wo == 1 ? 0 : -1;
    case OP_POOL:
        return o->Co == o->C && (window_ok(o, 0) || ceil_pool_ok(o)) && up_in_range(o->p[6], 0, 1) && up_in_range(o->p[7], 0, 1) ? 0 : -1;
    case OP_CHMUL:
        return same ? 0 : -1;
    case OP_CHCOPY: {
        const int ooff = o->p[0], ioff = o->p[1], cnt = o->p[2];
        return up_in_range(cnt, 1, MAX_DIM) && up_in_range(ooff, 0, MAX_DIM) && up_in_range(ioff, 0, MAX_DIM) &&
               (int64_t)ooff + cnt <= o->Co && (int64_t)ioff + cnt <= o->C && o->H == o->Ho && o->W == o->Wo &&
               o->act == ACT_NONE ? 0 : -1;
    }
    case OP_SHUFFLE:
        return same && up_in_range(o->p[0], 1, o->C) && o->C % o->p[0] == 0 && o->act == ACT_NONE ? 0 : -1;
    case OP_CHNORM:
        return same && up_in_range(o->p[0], 0, 1) ? 0 : -1;
    case OP_ATTN:
        return (int64_t)o->C == 3LL * o->Co && (int64_t)o->H * o->W <= ATTN_MAX_TOKENS && o->H == o->Ho &&
               o->W == o->Wo && up_in_range(o->p[0], 1, o->Co) && o->Co % o->p[0] == 0 && up_in_range(o->p[1], 0, 1) && o->act == ACT_NONE
               ? 0 : -1;
    case OP_ROWCAT:
        return o->Co == o->C && o->W == o->Wo && up_in_range(o->p[0], 1, MAX_DIM) && (int64_t)o->H + o->p[0] == o->Ho &&
               o->act == ACT_NONE ? 0 : -1;
    case OP_ADDC:
        return same ? 0 : -1;
    case OP_SLICEPAD:
        return up_in_range(o->p[0], 1, MAX_PARAM) && up_in_range(o->p[1], 1, MAX_PARAM) && up_in_range(o->p[2], -MAX_DIM, MAX_DIM) &&
               up_in_range(o->p[3], -MAX_PARAM, MAX_PARAM) && up_in_range(o->p[4], -MAX_PARAM, MAX_PARAM) ? 0 : -1;
    }
    return -1;
}

/* Append one op. ints: the I_HEADER header then the kind's parameters (n_ints in all); floats: lo, hi of
 * the clamp, then the kind's float data (copied). Returns the op's index, or -1 on bad input, -2 without
 * memory. */
EXPORT int up_plan_add(up_plan *p, int kind, const int32_t *ints, int n_ints, const float *floats, int64_t n_floats,
                       void *kplan) {
    if (!p || !ints || !floats || n_ints < I_HEADER || n_ints > MAX_INTS || n_floats < 2 || n_floats > MAX_FLOATS) return -1;
    if (p->n_ops == p->cap_ops) {
        int cap = p->cap_ops ? 2 * p->cap_ops : 32;
        up_op *ops = realloc(p->ops, sizeof(up_op) * (size_t)cap);
        if (!ops) return -2;
        p->ops = ops;
        p->cap_ops = cap;
    }
    up_op o;
    memset(&o, 0, sizeof(o));
    o.kind = kind;
    o.in0 = ints[I_IN0]; o.in1 = ints[I_IN1]; o.out = ints[I_OUT]; o.act = ints[I_ACT];
    o.C = ints[I_C]; o.H = ints[I_H]; o.W = ints[I_W]; o.Co = ints[I_CO]; o.Ho = ints[I_HO]; o.Wo = ints[I_WO];
    for (int i = I_HEADER; i < n_ints; i++) o.p[i - I_HEADER] = ints[i];
    o.lo = floats[0];
    o.hi = floats[1];
    o.kplan = kplan;
    if (check_op(p, &o, n_ints - I_HEADER) || !(o.lo == o.lo && o.hi == o.hi)) return -1;
    int64_t nf = n_floats - 2;
    if (kind == OP_GCONV) {
        int g = o.p[8];
        int64_t nw = (int64_t)o.Co * (o.C / g) * o.p[0] * o.p[1];
        if (nf != nw + (o.p[9] ? o.Co : 0)) return -1;
    } else if (kind == OP_AFFINE) {
        if (nf != 2 * (int64_t)o.C) return -1;
    } else if (kind == OP_CHNORM) {
        if (n_ints != I_HEADER + 1 || (o.p[0] != 0 && o.p[0] != 1) || nf != 1 + (o.p[0] ? 2 * (int64_t)o.C : 0) ||
            !(floats[2] > 0.0f))
            return -1;
    } else if (kind == OP_ROWCAT) {
        if (nf != (int64_t)o.C * o.p[0] * o.W) return -1;
    } else if (kind == OP_ADDC) {
        if (nf != plane_of(&o)) return -1;
    } else if (nf != 0) {
        return -1;
    }
    if (nf) {
        o.f = up_aligned_alloc(sizeof(float) * (size_t)nf);
        if (!o.f) return -2;
        memcpy(o.f, floats + 2, sizeof(float) * (size_t)nf);
    }
    if (kind == OP_ATTN) {
        int64_t need = o.p[0] * attn_scratch((int64_t)o.H * o.W, o.Co / o.p[0]);
        if (p->attn_size < need) p->attn_size = need;
    }
    if (kind == OP_IM2COL) {
        int64_t pix = (int64_t)o.Ho * o.Wo, k = (int64_t)o.C * o.p[0] * o.p[1];
        if (p->col_size < pix * k) p->col_size = pix * k;
        if (p->rows_size < pix * o.Co) p->rows_size = pix * o.Co;
    }
    p->ops[p->n_ops] = o;
    p->written[o.out] = 1;
    return p->n_ops++;
}

/* ---------------------------------------------------------------------------------- elementwise ---- */

/* exp(x) for the smooth activations, in plain arithmetic the compiler vectorises (libm's expf is a call per
 * element): Cephes' range reduction and degree-6 polynomial, relative error about 1e-7; x clamped to
 * [-87, 88], where the result stays a normal float. */
static inline float fast_exp(float x) {
    x = x < -87.0f ? -87.0f : x > 88.0f ? 88.0f : x;
    const float magic = 12582912.0f; /* 1.5 * 2^23: adding it rounds to an integer */
    float n = (x * 1.44269504088896341f + magic) - magic;
    float f = x - n * 0.693359375f - n * -2.12194440e-4f;
    float y = 1.9875691500e-4f;
    y = y * f + 1.3981999507e-3f;
    y = y * f + 8.3334519073e-3f;
    y = y * f + 4.1665795894e-2f;
    y = y * f + 1.6666665459e-1f;
    y = y * f + 5.0000001201e-1f;
    y = y * f * f + f + 1.0f;
    int32_t bits = ((int32_t)n + 127) << 23;
    float scale;
    memcpy(&scale, &bits, sizeof(scale));
    return y * scale;
}

/* erf by Abramowitz and Stegun 7.1.26 (absolute error <= 1.5e-7), for the exact GELU */
static inline float fast_erf(float x) {
    float a = x < 0 ? -x : x;
    float t = 1.0f / (1.0f + 0.3275911f * a);
    float p = ((((1.061405429f * t - 1.453152027f) * t + 1.421413741f) * t - 0.284496736f) * t + 0.254829592f) * t;
    float e = 1.0f - p * fast_exp(-a * a);
    return x < 0 ? -e : e;
}

static inline float fast_tanh(float x) {
    float e = fast_exp(-2.0f * (x < 0 ? -x : x));
    float t = (1.0f - e) / (1.0f + e);
    return x < 0 ? -t : t;
}

/* y = act(x) for the activations past ACT_CLAMP, n floats; y may alias x. One loop per activation, so each
 * vectorises. */
static void smooth_act(float *y, const float *x, int64_t n, int act) {
    switch (act) {
    case ACT_HARDSWISH:
        for (int64_t i = 0; i < n; i++) {
            float v = x[i], r = v + 3.0f;
            r = r < 0 ? 0 : r > 6.0f ? 6.0f : r;
            y[i] = v * r * (1.0f / 6.0f);
        }
        break;
    case ACT_HARDSIGMOID:
        for (int64_t i = 0; i < n; i++) {
            float r = x[i] + 3.0f;
            r = r < 0 ? 0 : r > 6.0f ? 6.0f : r;
            y[i] = r * (1.0f / 6.0f);
        }
        break;
    case ACT_SILU:
        for (int64_t i = 0; i < n; i++) y[i] = x[i] / (1.0f + fast_exp(-x[i]));
        break;
    case ACT_SIGMOID:
        for (int64_t i = 0; i < n; i++) y[i] = 1.0f / (1.0f + fast_exp(-x[i]));
        break;
    case ACT_GELU:
        for (int64_t i = 0; i < n; i++) y[i] = 0.5f * x[i] * (1.0f + fast_erf(x[i] * 0.70710678118654752f));
        break;
    case ACT_GELU_TANH:
        for (int64_t i = 0; i < n; i++) {
            float v = x[i];
            y[i] = 0.5f * v * (1.0f + fast_tanh(0.79788456080286536f * (v + 0.044715f * v * v * v)));
        }
        break;
    default:
        if (y != x) memcpy(y, x, sizeof(float) * (size_t)n);
    }
}

/* y = act(a (+ b)), n floats; b may be NULL; y may alias a or b. One pass, vectorised by the compiler. */
static void ewise(float *y, const float *a, const float *b, int64_t n, int act, float lo, float hi) {
    if (act > ACT_CLAMP) {
        if (b) {
            for (int64_t i = 0; i < n; i++) y[i] = a[i] + b[i];
            smooth_act(y, y, n, act);
        } else {
            smooth_act(y, a, n, act);
        }
        return;
    }
    if (b) {
        if (act == ACT_RELU)
            for (int64_t i = 0; i < n; i++) { float v = a[i] + b[i]; y[i] = v > 0 ? v : 0; }
        else if (act == ACT_CLAMP)
            for (int64_t i = 0; i < n; i++) { float v = a[i] + b[i]; v = v < lo ? lo : v; y[i] = v > hi ? hi : v; }
        else
            for (int64_t i = 0; i < n; i++) y[i] = a[i] + b[i];
    } else {
        if (act == ACT_RELU)
            for (int64_t i = 0; i < n; i++) y[i] = a[i] > 0 ? a[i] : 0;
        else if (act == ACT_CLAMP)
            for (int64_t i = 0; i < n; i++) { float v = a[i] < lo ? lo : a[i]; y[i] = v > hi ? hi : v; }
        else if (y != a)
            memcpy(y, a, sizeof(float) * (size_t)n);
    }
}

/* ------------------------------------------------------------------------------------- threads ---- */

/* The plan's own loops run on the kernel library's pool (up_parallel_for, uniprune_common.h), on the same
 * threads as its kernels, so there is never a second pool fighting the first for the cores. */

/* Floats of work below which a loop stays on the calling thread: waking the pool costs a few µs, about what
 * one thread needs for 16K floats of a memory-bound pass. */
#define PAR_MIN_FLOATS 16384

typedef struct {
    float *y;
    const float *a, *b;
    int64_t n, chunk;
    int act;
    float lo, hi;
} ewise_ctx;

static void ewise_task(void *ctx, int64_t item, int tid) {
    (void)tid;
    const ewise_ctx *c = ctx;
    int64_t i0 = item * c->chunk, len = c->n - i0 < c->chunk ? c->n - i0 : c->chunk;
    ewise(c->y + i0, c->a + i0, c->b ? c->b + i0 : NULL, len, c->act, c->lo, c->hi);
}

/* ewise on up to nthreads threads, in chunks of whole cache lines */
static void ewise_par(float *y, const float *a, const float *b, int64_t n, int act, float lo, float hi, int nthreads) {
    int64_t min_chunk = act > ACT_CLAMP ? PAR_MIN_FLOATS / 8 : PAR_MIN_FLOATS; /* exp-based ones cost ~8x more */
    if (nthreads <= 1 || n < 2 * min_chunk) {
        ewise(y, a, b, n, act, lo, hi);
        return;
    }
    int64_t chunk = (n + nthreads - 1) / nthreads;
    if (chunk < min_chunk) chunk = min_chunk;
    chunk = (chunk + 15) / 16 * 16;
    ewise_ctx c = {y, a, b, n, chunk, act, lo, hi};
    up_parallel_for((n + chunk - 1) / chunk, nthreads, ewise_task, &c);
}

/* An op's loop over items [0, n_items) (planes, images: each op says), split in ranges over the threads. */
typedef void (*range_fn)(const struct up_op_s *o, const float *in, const float *in1, float *out, int N, int64_t i0,
                         int64_t i1);

typedef struct {
    range_fn fn;
    const struct up_op_s *o;
    const float *in, *in1;
    float *out;
    int N;
    int64_t n_items, per;
} range_ctx;

static void range_task(void *ctx, int64_t item, int tid) {
    (void)tid;
    const range_ctx *c = ctx;
    int64_t i0 = item * c->per, i1 = i0 + c->per < c->n_items ? i0 + c->per : c->n_items;
    c->fn(c->o, c->in, c->in1, c->out, c->N, i0, i1);
}

/* fn over n_items items of about item_floats floats of work each, on up to nthreads threads */
static void run_range(range_fn fn, const struct up_op_s *o, const float *in, const float *in1, float *out, int N,
                      int64_t n_items, int64_t item_floats, int nthreads) {
    if (item_floats < 1) item_floats = 1;
    int64_t max_parts = n_items * item_floats / PAR_MIN_FLOATS;
    int parts = nthreads < max_parts ? nthreads : (int)max_parts;
    if (parts > n_items) parts = (int)n_items;
    if (parts <= 1) {
        fn(o, in, in1, out, N, 0, n_items);
        return;
    }
    range_ctx c = {fn, o, in, in1, out, N, n_items, (n_items + parts - 1) / parts};
    up_parallel_for((n_items + c.per - 1) / c.per, parts, range_task, &c);
}

/* --------------------------------------------------------------------------------- other kernels ---- */

static int conv_call(void *kplan, const float *x, float *y, int N, int H, int W, int nthreads) {
    return up_conv_run(kplan, x, y, N, H, W, nthreads);
}

static int gemv_call(void *kplan, const float *x, float *y, int N, int nthreads) {
    return up_gemv_run(kplan, x, y, N, nthreads);
}

/* Grouped conv by direct loops: per (image, output channel), for every input channel of its group and tap,
 * one axpy over each output row's valid columns. Written for depthwise convs (one input channel per
 * group), where a GEMM-shaped kernel has nothing to reuse; stride-1 rows vectorise. Items: n * Co + oc. */
static void run_gconv(const up_op *o, const float *x, const float *unused, float *y, int N, int64_t i0, int64_t i1) {
    (void)unused; (void)N;
    const int kh = o->p[0], kw = o->p[1], sh = o->p[2], sw = o->p[3], ph = o->p[4], pw = o->p[5];
    const int dh = o->p[6], dw = o->p[7], g = o->p[8], has_bias = o->p[9];
    const int cig = o->C / g, cog = o->Co / g, H = o->H, W = o->W, Ho = o->Ho, Wo = o->Wo;
    const float *wts = o->f, *bias = has_bias ? o->f + (int64_t)o->Co * cig * kh * kw : NULL;
    const int64_t iplane = (int64_t)H * W, oplane = (int64_t)Ho * Wo;
    for (int64_t item = i0; item < i1; item++) {
        const int64_t n = item / o->Co;
        const int oc = (int)(item % o->Co);
        float *yo = y + item * oplane;
        float b = bias ? bias[oc] : 0.0f;
        for (int64_t i = 0; i < oplane; i++) yo[i] = b;
        int ic0 = oc / cog * cig;
        for (int ci = 0; ci < cig; ci++) {
            const float *xi = x + ((int64_t)n * o->C + ic0 + ci) * iplane;
            for (int ky = 0; ky < kh; ky++)
                for (int kx = 0; kx < kw; kx++) {
                    float wv = wts[(((int64_t)oc * cig + ci) * kh + ky) * kw + kx];
                    int xoff = kx * dw - pw;
                    /* output columns whose input column ox*sw + xoff lies in [0, W) */
                    int lo = xoff >= 0 ? 0 : (-xoff + sw - 1) / sw;
                    int hi = W - 1 - xoff < 0 ? -1 : (W - 1 - xoff) / sw;
                    if (hi > Wo - 1) hi = Wo - 1;
                    if (lo > hi) continue;
                    for (int oy = 0; oy < Ho; oy++) {
                        int iy = oy * sh - ph + ky * dh;
                        if (iy < 0 || iy >= H) continue;
                        const float *xr = xi + (int64_t)iy * W + xoff;
                        float *yr = yo + (int64_t)oy * Wo;
                        if (sw == 1)
                            for (int ox = lo; ox <= hi; ox++) yr[ox] += wv * xr[ox];
                        else
                            for (int ox = lo; ox <= hi; ox++) yr[ox] += wv * xr[(int64_t)ox * sw];
                    }
                }
        }
    }
}

/* Items of the per-plane ops below: n * C + c, one input plane each. */
static void run_affine(const up_op *o, const float *x, const float *unused, float *y, int N, int64_t i0, int64_t i1) {
    (void)unused; (void)N;
    const int64_t plane = (int64_t)o->H * o->W;
    const float *scale = o->f, *shift = o->f + o->C;
    for (int64_t nc = i0; nc < i1; nc++) {
        const float *xi = x + nc * plane;
        float *yi = y + nc * plane;
        const float s = scale[nc % o->C], t = shift[nc % o->C];
        for (int64_t i = 0; i < plane; i++) yi[i] = xi[i] * s + t;
    }
}

static void run_gap(const up_op *o, const float *x, const float *unused, float *y, int N, int64_t i0, int64_t i1) {
    (void)unused; (void)N;
    const int64_t plane = (int64_t)o->H * o->W;
    const float inv = 1.0f / (float)plane;
    for (int64_t nc = i0; nc < i1; nc++) {
        const float *xi = x + nc * plane;
        float s = 0;
        for (int64_t i = 0; i < plane; i++) s += xi[i];
        y[nc] = s * inv;
    }
}

/* Max or average pool (ceil mode included: the output size says how many windows there are, and a window
 * hanging over the input's end is clipped as torch clips it); average divides by the window inside the
 * padded input when count_include_pad (torch's default), else by its part inside the input. */
static void run_pool(const up_op *o, const float *x, const float *unused, float *y, int N, int64_t i0, int64_t i1) {
    (void)unused; (void)N;
    const int kh = o->p[0], kw = o->p[1], sh = o->p[2], sw = o->p[3], ph = o->p[4], pw = o->p[5];
    const int is_max = o->p[6], include_pad = o->p[7];
    const int H = o->H, W = o->W, Ho = o->Ho, Wo = o->Wo;
    if (is_max) { /* separable: the max over each window's columns, row by row, then over its rows */
        float colmax[Wo];
        for (int64_t nc = i0; nc < i1; nc++) {
            const float *xi = x + nc * H * W;
            float *yo = y + nc * Ho * Wo;
            for (int oy = 0; oy < Ho; oy++) {
                int y0 = oy * sh - ph, ya = y0 < 0 ? 0 : y0, yb = y0 + kh > H ? H : y0 + kh;
                for (int ox = 0; ox < Wo; ox++) colmax[ox] = -FLT_MAX;
                for (int iy = ya; iy < yb; iy++) {
                    const float *xr = xi + (int64_t)iy * W;
                    /* the columns whose window lies inside the row one window column at a time, in a loop over
                     * ox the compiler vectorises where rows are long enough; the clipped ones at either edge
                     * window by window (64 channels of 31x31, 3x3 stride 2: 71 µs with the window loop
                     * innermost everywhere, 56 µs so) */
                    const int lo = (pw + sw - 1) / sw, hi0 = W - kw + pw >= 0 ? (W - kw + pw) / sw + 1 : 0;
                    const int hi = hi0 < Wo ? hi0 : Wo;
                    for (int ox = 0; ox < Wo; ox++) {
                        if (ox == lo && lo < hi) ox = hi;
                        if (ox >= Wo) break;
                        int x0 = ox * sw - pw, xa = x0 < 0 ? 0 : x0, xb = x0 + kw > W ? W : x0 + kw;
                        float m = colmax[ox];
                        for (int ix = xa; ix < xb; ix++) m = xr[ix] > m ? xr[ix] : m;
                        colmax[ox] = m;
                    }
                    for (int kx = 0; kx < kw && lo < hi; kx++) {
                        const float *xs = xr + kx - pw;
                        if (sw == 2) /* a constant stride: even lanes of two vectors */
                            for (int ox = lo; ox < hi; ox++) colmax[ox] = xs[2 * ox] > colmax[ox] ? xs[2 * ox] : colmax[ox];
                        else
                            for (int ox = lo; ox < hi; ox++) {
                                const float v = xs[(int64_t)ox * sw];
                                colmax[ox] = v > colmax[ox] ? v : colmax[ox];
                            }
                    }
                }
                memcpy(yo + (int64_t)oy * Wo, colmax, sizeof(float) * (size_t)Wo);
            }
        }
        return;
    }
    for (int64_t nc = i0; nc < i1; nc++) {
        const float *xi = x + nc * H * W;
        float *yo = y + nc * Ho * Wo;
        for (int oy = 0; oy < Ho; oy++) {
            int y0 = oy * sh - ph, y1 = y0 + kh;
            int ya = y0 < 0 ? 0 : y0, yb = y1 > H ? H : y1;
            for (int ox = 0; ox < Wo; ox++) {
                int x0 = ox * sw - pw, x1 = x0 + kw;
                int xa = x0 < 0 ? 0 : x0, xb = x1 > W ? W : x1;
                float acc = is_max ? -FLT_MAX : 0.0f;
                for (int iy = ya; iy < yb; iy++)
                    for (int ix = xa; ix < xb; ix++) {
                        float v = xi[iy * W + ix];
                        if (is_max) acc = v > acc ? v : acc;
                        else acc += v;
                    }
                if (!is_max) {
                    /* torch clips the padded window at H + ph, W + pw before counting */
                    int cy1 = y1 > H + ph ? H + ph : y1, cx1 = x1 > W + pw ? W + pw : x1;
                    int cnt = include_pad ? (cy1 - y0) * (cx1 - x0) : (yb - ya) * (xb - xa);
                    acc = cnt > 0 ? acc / (float)cnt : 0.0f;
                }
                yo[oy * Wo + ox] = acc;
            }
        }
    }
}

/* The CIFAR ResNets' option-A shortcut in one pass: subsample by (sh, sw), then zero-pad channels and
 * borders; each output element is written once. Items: n * Co + c, one output plane each. */
static void run_slicepad(const up_op *o, const float *x, const float *unused, float *y, int N, int64_t i0, int64_t i1) {
    (void)unused; (void)N;
    const int sh = o->p[0], sw = o->p[1], clo = o->p[2], pt = o->p[3], pl = o->p[4];
    const int H = o->H, W = o->W, Ho = o->Ho, Wo = o->Wo;
    const int Hs = (H + sh - 1) / sh, Ws = (W + sw - 1) / sw;
    const int64_t oplane = (int64_t)Ho * Wo;
    for (int64_t item = i0; item < i1; item++) {
        const int64_t n = item / o->Co;
        const int c = (int)(item % o->Co);
        float *yo = y + item * oplane;
        int ci = c - clo;
        if (ci < 0 || ci >= o->C) {
            memset(yo, 0, sizeof(float) * (size_t)oplane);
            continue;
        }
        const float *xi = x + ((int64_t)n * o->C + ci) * H * W;
        for (int oy = 0; oy < Ho; oy++) {
            float *yr = yo + (int64_t)oy * Wo;
            int iy = oy - pt;
            if (iy < 0 || iy >= Hs) {
                for (int ox = 0; ox < Wo; ox++) yr[ox] = 0;
                continue;
            }
            const float *xr = xi + (int64_t)iy * sh * W;
            for (int ox = 0; ox < Wo; ox++) {
                int ix = ox - pl;
                yr[ox] = ix >= 0 && ix < Ws ? xr[(int64_t)ix * sw] : 0.0f;
            }
        }
    }
}

/* squeeze-excitation: every plane times its channel's gate; items n * C + c */
static void run_chmul(const up_op *o, const float *x, const float *gate, float *y, int N, int64_t i0, int64_t i1) {
    (void)N;
    const int64_t plane = (int64_t)o->H * o->W;
    for (int64_t nc = i0; nc < i1; nc++) {
        const float *xi = x + nc * plane;
        float *yi = y + nc * plane;
        const float s = gate[nc];
        for (int64_t i = 0; i < plane; i++) yi[i] = xi[i] * s;
    }
}

/* items n * cnt + c: plane ioff + c of input image n to plane ooff + c of output image n */
static void run_chcopy(const up_op *o, const float *x, const float *unused, float *y, int N, int64_t i0, int64_t i1) {
    (void)unused; (void)N;
    const int ooff = o->p[0], ioff = o->p[1], cnt = o->p[2];
    const int64_t plane = (int64_t)o->H * o->W;
    for (int64_t item = i0; item < i1; item++) {
        const int64_t n = item / cnt, c = item % cnt;
        memcpy(y + (n * o->Co + ooff + c) * plane, x + (n * o->C + ioff + c) * plane, sizeof(float) * (size_t)plane);
    }
}

/* items n * C + c, one output plane each: channel c = j * g + i comes from input channel i * (C / g) + j */
static void run_shuffle(const up_op *o, const float *x, const float *unused, float *y, int N, int64_t i0, int64_t i1) {
    (void)unused; (void)N;
    const int g = o->p[0], cpg = o->C / g;
    const int64_t plane = (int64_t)o->H * o->W;
    for (int64_t item = i0; item < i1; item++) {
        const int64_t n = item / o->C;
        const int c = (int)(item % o->C), src = (c % g) * cpg + c / g;
        memcpy(y + item * plane, x + (n * o->C + src) * plane, sizeof(float) * (size_t)plane);
    }
}

/* LayerNorm over the C channels of each pixel, biased variance as torch's: items n * tiles + tile, a tile of
 * CHNORM_TILE pixels whose sums run as vectors across the pixels, channel by channel. */
#define CHNORM_TILE 256
static void run_chnorm(const up_op *o, const float *x, const float *unused, float *y, int N, int64_t i0, int64_t i1) {
    (void)unused; (void)N;
    const int C = o->C;
    const int64_t plane = (int64_t)o->H * o->W, tiles = (plane + CHNORM_TILE - 1) / CHNORM_TILE;
    const float eps = o->f[0], *wt = o->p[0] ? o->f + 1 : NULL, *bs = o->p[0] ? o->f + 1 + C : NULL;
    float mean[CHNORM_TILE], rstd[CHNORM_TILE];
    for (int64_t item = i0; item < i1; item++) {
        const int64_t n = item / tiles, p0 = item % tiles * CHNORM_TILE;
        const int len = (int)(plane - p0 < CHNORM_TILE ? plane - p0 : CHNORM_TILE);
        const float *xi = x + n * C * plane + p0;
        float *yi = y + n * C * plane + p0;
        for (int i = 0; i < len; i++) mean[i] = rstd[i] = 0.0f;
        for (int c = 0; c < C; c++)
            for (int i = 0; i < len; i++) mean[i] += xi[c * plane + i];
        for (int i = 0; i < len; i++) mean[i] *= 1.0f / (float)C;
        for (int c = 0; c < C; c++)
            for (int i = 0; i < len; i++) {
                float d = xi[c * plane + i] - mean[i];
                rstd[i] += d * d;
            }
        for (int i = 0; i < len; i++) {
            float v = rstd[i] * (1.0f / (float)C) + eps;
            rstd[i] = 1.0f / __builtin_sqrtf(v);
        }
        for (int c = 0; c < C; c++) {
            const float s = wt ? wt[c] : 1.0f, t = bs ? bs[c] : 0.0f;
            for (int i = 0; i < len; i++) yi[c * plane + i] = (xi[c * plane + i] - mean[i]) * rstd[i] * s + t;
        }
    }
}

/* Sums and maxima over n floats in 16 independent lanes, which the compiler vectorises (one
 * running sum would be a chain it may not reorder). */
#define LANES 16
static float lanes_max(const float *x, int64_t n) {
    float m[LANES];
    for (int k = 0; k < LANES; k++) m[k] = -FLT_MAX;
    int64_t i = 0;
    for (; i + LANES <= n; i += LANES)
        for (int k = 0; k < LANES; k++) m[k] = x[i + k] > m[k] ? x[i + k] : m[k];
    for (; i < n; i++) m[0] = x[i] > m[0] ? x[i] : m[0];
    float r = m[0];
    for (int k = 1; k < LANES; k++) r = m[k] > r ? m[k] : r;
    return r;
}

static float lanes_sum(const float *x, int64_t n) {
    float s[LANES] = {0};
    int64_t i = 0;
    for (; i + LANES <= n; i += LANES)
        for (int k = 0; k < LANES; k++) s[k] += x[i + k];
    for (; i < n; i++) s[0] += x[i];
    float r = 0;
    for (int k = 0; k < LANES; k++) r += s[k];
    return r;
}

/* 4 x 64 tiles of a matrix product in 16 vector registers (GCC/Clang vector extensions: 512-bit registers on
 * AVX-512, pairs of 256-bit ones on AVX2): c[b][0..64) = sum over k < K of a[k * sk + b * sb] * rows[k * rs + 0..64).
 * Each step loads one 64-float row and four scalars for 16 FMAs, so it runs at the FMA units' pace. */
typedef float v16f __attribute__((vector_size(64)));
/* loads and stores as memcpy (unaligned, no aliasing question); macros, since a function passing a vector by value
 * has another ABI on each ISA */
#define LD16(v, p) memcpy(&(v), (p), sizeof(v16f))
#define ST16(p, v) memcpy((p), &(v), sizeof(v16f))
#define TILE_ROW(c, a) c##0 += (a) * r0; c##1 += (a) * r1; c##2 += (a) * r2; c##3 += (a) * r3
#define TILE_STORE(c, dst) ST16((dst), c##0); ST16((dst) + 16, c##1); ST16((dst) + 32, c##2); ST16((dst) + 48, c##3)
static void tile4x16(float *c, int64_t cs, const float *a, int64_t sk, int64_t sb, const float *rows, int64_t rs,
                     int64_t K) {
    v16f c0 = {0}, c1 = {0}, c2 = {0}, c3 = {0};
    for (int64_t k = 0; k < K; k++) {
        const float *ak = a + k * sk;
        v16f r0;
        LD16(r0, rows + k * rs);
        c0 += ak[0] * r0;
        c1 += ak[sb] * r0;
        c2 += ak[2 * sb] * r0;
        c3 += ak[3 * sb] * r0;
    }
    ST16(c, c0);
    ST16(c + cs, c1);
    ST16(c + 2 * cs, c2);
    ST16(c + 3 * cs, c3);
}

static void tile4x64(float *c, int64_t cs, const float *a, int64_t sk, int64_t sb, const float *rows, int64_t rs,
                     int64_t K) {
    v16f p0 = {0}, p1 = {0}, p2 = {0}, p3 = {0}, q0 = {0}, q1 = {0}, q2 = {0}, q3 = {0};
    v16f u0 = {0}, u1 = {0}, u2 = {0}, u3 = {0}, w0 = {0}, w1 = {0}, w2 = {0}, w3 = {0};
    for (int64_t k = 0; k < K; k++) {
        const float *r = rows + k * rs, *ak = a + k * sk;
        v16f r0, r1, r2, r3;
        LD16(r0, r);
        LD16(r1, r + 16);
        LD16(r2, r + 32);
        LD16(r3, r + 48);
        TILE_ROW(p, ak[0]);
        TILE_ROW(q, ak[sb]);
        TILE_ROW(u, ak[2 * sb]);
        TILE_ROW(w, ak[3 * sb]);
    }
    TILE_STORE(p, c);
    TILE_STORE(q, c + cs);
    TILE_STORE(u, c + 2 * cs);
    TILE_STORE(w, c + 3 * cs);
}

/* Multi-head attention, items n * heads + h. Tokens are columns: channel c of token t is plane c's element t,
 * so head h's queries are D = Co / heads rows of T = H * W floats (likewise keys, values and the output).
 * Per head: queries (scaled by 1 / sqrt(D)) and keys copied into rows padded to Tp (a multiple of 16) with
 * zeros, values transposed to [token][channel] (rows of Dp); then per block of 4 queries, their scores against
 * all keys as 4 x 64 and 4 x 16 tiles (q kᵀ over the D channels), a softmax per row over the T real keys, and
 * the outputs as tiles (weights times values over the T keys). scratch: attn_scratch floats per item. A bf16
 * attention (p[1]) runs each head on AMX tiles instead where the CPU has them (up_amx_attention). */
/* c[4][0..n) (n a multiple of 16) = the product of tile4x64, in tiles of 64 then 16 */
static void tile4xn(float *c, int64_t cs, const float *a, int64_t sk, int64_t sb, const float *rows, int64_t rs,
                    int64_t K, int64_t n) {
    int64_t j = 0;
    for (; j + ATTN_TILE <= n; j += ATTN_TILE) tile4x64(c + j, cs, a, sk, sb, rows + j, rs, K);
    for (; j < n; j += 16) tile4x16(c + j, cs, a, sk, sb, rows + j, rs, K);
}

static void run_attn(const up_op *o, const float *x, const float *scratch, float *y, int N, int64_t i0, int64_t i1) {
    (void)N;
    const int heads = o->p[0], Co = o->Co, D = Co / heads;
    const int64_t T = (int64_t)o->H * o->W, Tp = round16(T), Dp = round16(D), per = attn_scratch(T, D);
    if (o->p[1] && up_amx_attention(x, y, Co, heads, T, (float *)scratch, per, i0, i1) == 0) return;
    const float scale = 1.0f / __builtin_sqrtf((float)D);
    for (int64_t item = i0; item < i1; item++) {
        const int64_t n = item / heads, h = item % heads;
        const float *q = x + ((int64_t)n * o->C + h * D) * T, *k = q + (int64_t)Co * T, *v = k + (int64_t)Co * T;
        float *out = y + ((int64_t)n * Co + h * D) * T;
        float *qp = (float *)scratch + item * per, *kp = qp + (int64_t)D * Tp, *vt = kp + (int64_t)D * Tp;
        float *pb = vt + T * Dp, *ob = pb + 4 * Tp;
        memset(qp, 0, sizeof(float) * (size_t)(2 * D * Tp + T * Dp));
        for (int d = 0; d < D; d++) {
            for (int64_t t = 0; t < T; t++) qp[(int64_t)d * Tp + t] = q[(int64_t)d * T + t] * scale;
            memcpy(kp + (int64_t)d * Tp, k + (int64_t)d * T, sizeof(float) * (size_t)T);
            for (int64_t t = 0; t < T; t++) vt[t * Dp + d] = v[(int64_t)d * T + t];
        }
        for (int64_t t0 = 0; t0 < T; t0 += 4) {
            tile4xn(pb, Tp, qp + t0, Tp, 1, kp, Tp, D, Tp);
            for (int b = 0; b < 4; b++) {
                float *row = pb + b * Tp;
                const float m = lanes_max(row, T);
                for (int64_t j = 0; j < T; j++) row[j] = fast_exp(row[j] - m);
                const float inv = 1.0f / lanes_sum(row, T);
                for (int64_t j = 0; j < T; j++) row[j] *= inv;
                for (int64_t j = T; j < Tp; j++) row[j] = 0.0f;
            }
            const int rows = T - t0 < 4 ? (int)(T - t0) : 4;
            for (int64_t d0 = 0; d0 < D; d0 += ATTN_TILE) {
                const int64_t dn = D - d0 < ATTN_TILE ? D - d0 : ATTN_TILE;
                tile4xn(ob, ATTN_TILE, pb, 1, Tp, vt + d0, Dp, T, round16(dn));
                for (int b = 0; b < rows; b++)
                    for (int64_t dd = 0; dd < dn; dd++) out[(d0 + dd) * T + t0 + b] = ob[b * ATTN_TILE + dd];
            }
        }
    }
}

/* items n * C + c: the constant rows of plane c, then the input plane */
static void run_rowcat(const up_op *o, const float *x, const float *unused, float *y, int N, int64_t i0, int64_t i1) {
    (void)unused; (void)N;
    const int64_t head = (int64_t)o->p[0] * o->W, plane = (int64_t)o->H * o->W;
    for (int64_t nc = i0; nc < i1; nc++) {
        float *yo = y + nc * (head + plane);
        memcpy(yo, o->f + nc % o->C * head, sizeof(float) * (size_t)head);
        memcpy(yo + head, x + nc * plane, sizeof(float) * (size_t)plane);
    }
}

/* items n: sample n plus the constant */
static void run_addc(const up_op *o, const float *x, const float *unused, float *y, int N, int64_t i0, int64_t i1) {
    (void)unused; (void)N;
    const int64_t plane = plane_of(o);
    for (int64_t n = i0; n < i1; n++) ewise(y + n * plane, x + n * plane, o->f, plane, ACT_NONE, 0.0f, 0.0f);
}

/* -------------------------------------------------------------------------------------------- run ---- */

/* A conv whose output maps are small (Ho*Wo <= 64: the digits CNN's 2x2 and 1x1, ResNets' 8x8) leaves most
 * lanes of the direct conv's pixel vectors empty. Here the patches of all N*Ho*Wo output pixels become one
 * matrix (column k = ci*kh*kw + ky*kw + kx, the order of weight.reshape(Co, -1)) and one block-sparse kernel
 * runs over the whole batch: mode 0, the linear kernel on rows = pixels (vectorised over output channels;
 * batch 1 is memory-bound there); mode 1, the conv kernel as a 1x1 conv over one "image" of K channels x
 * N*Ho*Wo pixels (vectorised over the pixels of every image at once). Zeros where a window leaves the input. */
static void run_im2col(const up_op *o, const float *x, float *col, int N) {
    const int kh = o->p[0], kw = o->p[1], sh = o->p[2], sw = o->p[3], ph = o->p[4], pw = o->p[5];
    const int dh = o->p[6], dw = o->p[7], mode = o->p[8], H = o->H, W = o->W, Ho = o->Ho, Wo = o->Wo;
    if (mode == 1) { /* colT[k][m], m = (n * Ho + oy) * Wo + ox */
        const int64_t M = (int64_t)N * Ho * Wo;
        for (int c = 0; c < o->C; c++)
            for (int ky = 0; ky < kh; ky++)
                for (int kx = 0; kx < kw; kx++) {
                    float *row = col + (((int64_t)c * kh + ky) * kw + kx) * M;
                    for (int n = 0; n < N; n++) {
                        const float *xc = x + ((int64_t)n * o->C + c) * H * W;
                        for (int oy = 0; oy < Ho; oy++) {
                            int iy = oy * sh - ph + ky * dh;
                            float *d = row + ((int64_t)n * Ho + oy) * Wo;
                            for (int ox = 0; ox < Wo; ox++) {
                                int ix = ox * sw - pw + kx * dw;
                                d[ox] = iy >= 0 && iy < H && ix >= 0 && ix < W ? xc[iy * W + ix] : 0.0f;
                            }
                        }
                    }
                }
        return;
    }
    for (int n = 0; n < N; n++)
        for (int oy = 0; oy < o->Ho; oy++)
            for (int ox = 0; ox < o->Wo; ox++) {
                float *row = col + (((int64_t)n * o->Ho + oy) * o->Wo + ox) * o->C * kh * kw;
                for (int c = 0; c < o->C; c++) {
                    const float *xc = x + ((int64_t)n * o->C + c) * H * W;
                    for (int ky = 0; ky < kh; ky++) {
                        int iy = oy * sh - ph + ky * dh;
                        for (int kx = 0; kx < kw; kx++) {
                            int ix = ox * sw - pw + kx * dw;
                            *row++ = iy >= 0 && iy < H && ix >= 0 && ix < W ? xc[iy * W + ix] : 0.0f;
                        }
                    }
                }
            }
}

/* The kernel's output (mode 0: [N*pix][Co]; mode 1: [Co][N*pix]) -> y [N][Co][pix], with the epilogue on
 * the way: the reordering pass is needed anyway. */
static void im2col_store(const up_op *o, const float *rows, const float *r, float *y, int N) {
    const int64_t pix = (int64_t)o->Ho * o->Wo;
    const int Co = o->Co, act = o->act;
    const int64_t sm = o->p[8] ? 1 : Co, sc = o->p[8] ? (int64_t)N * pix : 1; /* strides of pixel, channel */
    const float lo = o->lo, hi = o->hi;
    for (int n = 0; n < N; n++)
        for (int c = 0; c < Co; c++) {
            const float *src = rows + (int64_t)n * pix * sm + c * sc;
            float *dst = y + ((int64_t)n * Co + c) * pix;
            const float *res = r ? r + ((int64_t)n * Co + c) * pix : NULL;
            for (int64_t i = 0; i < pix; i++) {
                float v = src[i * sm] + (res ? res[i] : 0.0f);
                if (act == ACT_RELU) v = v > 0 ? v : 0;
                else if (act == ACT_CLAMP) v = v < lo ? lo : v > hi ? hi : v;
                dst[i] = v;
            }
            if (act > ACT_CLAMP) smooth_act(dst, dst, pix, act);
        }
}

/* floats * N + slack as bytes, or 0 when that overflows what one allocation can be */
static size_t batch_bytes(int64_t floats, int N) {
    int64_t n;
    if (__builtin_mul_overflow(floats, (int64_t)N, &n) || n > (INT64_MAX / 4) - 64) return 0;
    return sizeof(float) * (size_t)(n + 64);
}

static int reserve_buffers(up_plan *p, int N) {
    if (N <= p->cap_n) return 0;
    for (int b = 2; b < p->n_bufs; b++)
        if (!batch_bytes(p->size[b], N)) return -1;
    if (!batch_bytes(p->col_size, N) || !batch_bytes(p->rows_size, N) || !batch_bytes(p->attn_size, N)) return -1;
    free(p->col);
    free(p->rows);
    free(p->attn);
    p->col = up_aligned_alloc(batch_bytes(p->col_size, N));
    p->rows = up_aligned_alloc(batch_bytes(p->rows_size, N));
    p->attn = up_aligned_alloc(batch_bytes(p->attn_size, N));
    if (!p->col || !p->rows || !p->attn) {
        p->cap_n = 0;
        return -1;
    }
    for (int b = 2; b < p->n_bufs; b++) {
        free(p->buf[b]);
        /* a vector's worth of slack: kernels may read a few lanes past an activation's end */
        p->buf[b] = up_aligned_alloc(batch_bytes(p->size[b], N));
        if (!p->buf[b]) {
            p->cap_n = 0;
            return -1;
        }
    }
    p->cap_n = N;
    return 0;
}

/* Run the whole plan on x [N][...] into y [N][...]. Returns 0; -1 out of memory; -3 bad arguments; or
 * 100 * (op index + 1) + the failing kernel's own code (negated) when a kernel fails. Not reentrant: one
 * call per plan at a time (the Python side holds a lock). */
static int plan_run(up_plan *p, const float *x, float *y, int N, int nthreads, int64_t *op_ns);

EXPORT int up_plan_run(up_plan *p, const float *x, float *y, int N, int nthreads) {
    return plan_run(p, x, y, N, nthreads, NULL);
}

/* As up_plan_run, also writing each op's wall time in ns to op_ns[n_ops]: what each op costs in its place
 * in a real pass, caches as they are (a clock read per op, ~20 ns). */
EXPORT int up_plan_run_timed(up_plan *p, const float *x, float *y, int N, int nthreads, int64_t *op_ns) {
    return plan_run(p, x, y, N, nthreads, op_ns);
}


static int plan_run(up_plan *p, const float *x, float *y, int N, int nthreads, int64_t *op_ns) {
    /* a plan without ops, or whose ops never write the output, would hand back uninitialised memory */
    if (!p || !x || !y || N < 1 || p->n_ops < 1 || !p->written[1]) return -3;
    if (nthreads < 1) nthreads = 1;
    if (reserve_buffers(p, N)) return -1;
    float **bufs = p->cur;
    for (int b = 0; b < p->n_bufs; b++) bufs[b] = p->buf[b];
    bufs[0] = (float *)x; /* never written: no op has buffer 0 as its output */
    bufs[1] = y;
    int64_t t0 = op_ns ? up_clock_ns() : 0;
    for (int i = 0; i < p->n_ops; i++) {
        const up_op *o = &p->ops[i];
        const float *in = bufs[o->in0], *r = o->in1 >= 0 ? bufs[o->in1] : NULL;
        float *out = bufs[o->out];
        int64_t nout = (int64_t)N * oplane_of(o);
        int rc = 0;
        switch (o->kind) {
        case OP_CONV:
            rc = conv_call(o->kplan, in, out, N, o->H, o->W, nthreads);
            if (!rc && (r || o->act)) ewise_par(out, out, r, nout, o->act, o->lo, o->hi, nthreads);
            break;
        case OP_GEMV:
            rc = gemv_call(o->kplan, in, out, N, nthreads);
            if (!rc && (r || o->act)) ewise_par(out, out, r, nout, o->act, o->lo, o->hi, nthreads);
            break;
        case OP_IM2COL:
            if ((int64_t)N * o->Ho * o->Wo > INT32_MAX) return -3; /* the kernel's pixel count is an int */
            run_im2col(o, in, p->col, N);
            if (o->p[8] == 1)
                rc = conv_call(o->kplan, p->col, p->rows, 1, 1, N * o->Ho * o->Wo, nthreads);
            else
                rc = gemv_call(o->kplan, p->col, p->rows, N * o->Ho * o->Wo, nthreads);
            if (!rc) im2col_store(o, p->rows, r, out, N);
            break;
        case OP_GCONV:
            if (o->p[8] == o->C && o->Co == o->C) { /* depthwise: the kernels' vectorised loop, clamp fused */
                const int32_t geom[11] = {o->C, o->H, o->W, o->p[0], o->p[1], o->p[2], o->p[3], o->p[4], o->p[5], o->p[6], o->p[7]};
                const int fuse = !r && (o->act == ACT_RELU || o->act == ACT_CLAMP);
                const float lo = o->act == ACT_RELU ? 0.0f : o->lo, hi = o->act == ACT_RELU ? FLT_MAX : o->hi;
                rc = up_dwconv_run(in, out, o->f, o->p[9] ? o->f + (int64_t)o->C * o->p[0] * o->p[1] : NULL, geom, N,
                                   fuse, lo, hi, nthreads);
                if (!rc && !fuse && (r || o->act)) ewise_par(out, out, r, nout, o->act, o->lo, o->hi, nthreads);
            } else {
                run_range(run_gconv, o, in, NULL, out, N, (int64_t)N * o->Co,
                          (int64_t)o->Ho * o->Wo * (o->C / o->p[8]) * o->p[0] * o->p[1], nthreads);
                if (r || o->act) ewise_par(out, out, r, nout, o->act, o->lo, o->hi, nthreads);
            }
            break;
        case OP_ADD:
        case OP_ACT:
        case OP_COPY:
            ewise_par(out, in, o->kind == OP_ADD ? r : NULL, (int64_t)N * plane_of(o), o->act, o->lo, o->hi, nthreads);
            break;
        case OP_AFFINE:
            run_range(run_affine, o, in, NULL, out, N, (int64_t)N * o->C, (int64_t)o->H * o->W, nthreads);
            if (o->act) ewise_par(out, out, NULL, nout, o->act, o->lo, o->hi, nthreads);
            break;
        case OP_GAP:
            run_range(run_gap, o, in, NULL, out, N, (int64_t)N * o->C, (int64_t)o->H * o->W, nthreads);
            if (o->act) ewise_par(out, out, NULL, nout, o->act, o->lo, o->hi, nthreads);
            break;
        case OP_POOL:
            run_range(run_pool, o, in, NULL, out, N, (int64_t)N * o->C, (int64_t)o->Ho * o->Wo * o->p[0] * o->p[1],
                      nthreads);
            if (o->act) ewise_par(out, out, NULL, nout, o->act, o->lo, o->hi, nthreads);
            break;
        case OP_SLICEPAD:
            run_range(run_slicepad, o, in, NULL, out, N, (int64_t)N * o->Co, (int64_t)o->Ho * o->Wo, nthreads);
            break;
        case OP_CHMUL:
            run_range(run_chmul, o, in, r, out, N, (int64_t)N * o->C, (int64_t)o->H * o->W, nthreads);
            if (o->act) ewise_par(out, out, NULL, nout, o->act, o->lo, o->hi, nthreads);
            break;
        case OP_CHCOPY:
            run_range(run_chcopy, o, in, NULL, out, N, (int64_t)N * o->p[2], (int64_t)o->H * o->W, nthreads);
            break;
        case OP_SHUFFLE:
            run_range(run_shuffle, o, in, NULL, out, N, (int64_t)N * o->C, (int64_t)o->H * o->W, nthreads);
            break;
        case OP_CHNORM: {
            const int64_t tiles = ((int64_t)o->H * o->W + CHNORM_TILE - 1) / CHNORM_TILE;
            run_range(run_chnorm, o, in, NULL, out, N, (int64_t)N * tiles, (int64_t)CHNORM_TILE * o->C * 3, nthreads);
            if (o->act) ewise_par(out, out, NULL, nout, o->act, o->lo, o->hi, nthreads);
            break;
        }
        case OP_ATTN: {
            const int64_t T = (int64_t)o->H * o->W;
            run_range(run_attn, o, in, p->attn, out, N, (int64_t)N * o->p[0], T * T * (o->Co / o->p[0]) / 4, nthreads);
            break;
        }
        case OP_ROWCAT:
            run_range(run_rowcat, o, in, NULL, out, N, (int64_t)N * o->C, (int64_t)o->Ho * o->Wo, nthreads);
            break;
        case OP_ADDC:
            run_range(run_addc, o, in, NULL, out, N, N, plane_of(o), nthreads);
            if (o->act) ewise_par(out, out, NULL, nout, o->act, o->lo, o->hi, nthreads);
            break;
        default:
            return -3;
        }
        if (rc) return 100 * (i + 1) - rc;
        if (op_ns) {
            int64_t t1 = up_clock_ns();
            op_ns[i] = t1 - t0;
            t0 = t1;
        }
    }
    return 0;
}

EXPORT int up_plan_num_ops(const up_plan *p) { return p ? p->n_ops : 0; }
