/* oneDNN's dense convolution as the plan would call it, for benchmarks/onednn_probe.py (issue 20, item 4).
 *
 * Measurement only: uniprune's kernels and artifacts never include this file. It is compiled at run time by the
 * probe against the oneDNN headers it finds (Debian's libdnnl-dev 2.x or a 3.x install; the two C APIs differ only
 * in how a convolution descriptor and memory descriptors are made, see MD() and make_conv()).
 *
 * One probe = one convolution (groups 1, square kernel, no bias, no dilation) at one batch, with:
 *   - the user's tensors in the plan's layout: float32 NCHW input and output, float32 OIHW weights;
 *   - the primitive created with format_tag any for source, weights and destination, so that oneDNN picks its own
 *     blocked layout (and, in bf16, its AMX or avx512_bf16 kernels); the destination stays float32 (the plan's
 *     activations are float32) and the source is bf16 in bf16 probes (oneDNN's conv takes one source type);
 *   - the weights reordered once at creation (not timed), the activations' reorders timed apart:
 *     pr_reorder_in (NCHW float32 -> the conv's source layout and type), pr_conv, pr_reorder_out (the conv's
 *     destination layout -> NCHW float32).
 * Every entry point returns 0 or a dnnl_status_t (non-zero), never aborts. */
#include <stdlib.h>
#include <string.h>

#include "oneapi/dnnl/dnnl.h"

#if DNNL_VERSION_MAJOR >= 3
#define MD(m) (m) /* 3.x: memory descriptors are opaque handles */
typedef const_dnnl_memory_desc_t md_ref;
#else
#define MD(m) (&(m)) /* 2.x: memory descriptors are structs passed by address */
typedef const dnnl_memory_desc_t *md_ref;
#endif

typedef struct {
    dnnl_engine_t eng;
    dnnl_stream_t stream;
    dnnl_primitive_t conv, rin, rout;
    dnnl_memory_t x_user, y_user, x_conv, y_conv, w_conv;
    dnnl_memory_t x_src, y_dst; /* what the conv reads and writes: the user's own buffers where the layouts agree */
    size_t x_bytes, y_bytes;
    char impl[128], src_tag[16], dst_tag[16];
} probe;

#define TRY(call)                         \
    do {                                  \
        dnnl_status_t s_ = (call);        \
        if (s_ != dnnl_success) return s_; \
    } while (0)

static dnnl_status_t run(probe *p, dnnl_primitive_t prim, int nargs, const dnnl_exec_arg_t *args) {
    TRY(dnnl_primitive_execute(prim, p->stream, nargs, args));
    return dnnl_stream_wait(p->stream);
}

/* A reorder primitive from one memory's descriptor to another's. */
static dnnl_status_t make_reorder(probe *p, md_ref from, md_ref to, dnnl_primitive_t *out) {
    dnnl_primitive_desc_t pd;
    TRY(dnnl_reorder_primitive_desc_create(&pd, from, p->eng, to, p->eng, NULL));
    dnnl_status_t s = dnnl_primitive_create(out, pd);
    dnnl_primitive_desc_destroy(pd);
    return s;
}

/* The convolution's primitive descriptor with every layout left to oneDNN (format_tag any). */
static dnnl_status_t make_conv(probe *p, dnnl_data_type_t dt, const dnnl_dims_t xd, const dnnl_dims_t wd,
                               const dnnl_dims_t yd, int stride, int pad, int plain, dnnl_primitive_desc_t *pd) {
    dnnl_dims_t strides = {stride, stride}, dil = {0, 0}, pads = {pad, pad};
    dnnl_format_tag_t act = plain ? dnnl_nchw : dnnl_format_tag_any;
#if DNNL_VERSION_MAJOR >= 3
    dnnl_memory_desc_t xm, wm, ym;
    TRY(dnnl_memory_desc_create_with_tag(&xm, 4, xd, dt, act));
    TRY(dnnl_memory_desc_create_with_tag(&wm, 4, wd, dt, dnnl_format_tag_any));
    TRY(dnnl_memory_desc_create_with_tag(&ym, 4, yd, dnnl_f32, act));
    dnnl_status_t s = dnnl_convolution_forward_primitive_desc_create(
        pd, p->eng, dnnl_forward_inference, dnnl_convolution_direct, xm, wm, NULL, ym, strides, dil, pads, pads, NULL);
    dnnl_memory_desc_destroy(xm);
    dnnl_memory_desc_destroy(wm);
    dnnl_memory_desc_destroy(ym);
    return s;
#else
    dnnl_memory_desc_t xm, wm, ym;
    dnnl_convolution_desc_t cd;
    TRY(dnnl_memory_desc_init_by_tag(&xm, 4, xd, dt, act));
    TRY(dnnl_memory_desc_init_by_tag(&wm, 4, wd, dt, dnnl_format_tag_any));
    TRY(dnnl_memory_desc_init_by_tag(&ym, 4, yd, dnnl_f32, act));
    TRY(dnnl_dilated_convolution_forward_desc_init(&cd, dnnl_forward_inference, dnnl_convolution_direct, &xm, &wm,
                                                   NULL, &ym, strides, dil, pads, pads));
    return dnnl_primitive_desc_create(pd, &cd, NULL, p->eng, NULL);
#endif
}

/* A plain (user) memory of the given shape, float32, tag nchw / oihw. */
static dnnl_status_t plain_memory(probe *p, const dnnl_dims_t d, dnnl_memory_t *m) {
#if DNNL_VERSION_MAJOR >= 3
    dnnl_memory_desc_t md;
    TRY(dnnl_memory_desc_create_with_tag(&md, 4, d, dnnl_f32, dnnl_nchw));
    dnnl_status_t s = dnnl_memory_create(m, md, p->eng, DNNL_MEMORY_ALLOCATE);
    dnnl_memory_desc_destroy(md);
    return s;
#else
    dnnl_memory_desc_t md;
    TRY(dnnl_memory_desc_init_by_tag(&md, 4, d, dnnl_f32, dnnl_nchw));
    return dnnl_memory_create(m, &md, p->eng, DNNL_MEMORY_ALLOCATE);
#endif
}

static md_ref memory_md(dnnl_memory_t m) {
#if DNNL_VERSION_MAJOR >= 3
    const_dnnl_memory_desc_t md = NULL;
#else
    const dnnl_memory_desc_t *md = NULL;
#endif
    dnnl_memory_get_memory_desc(m, &md);
    return md;
}

void pr_destroy(probe *p);

/* The name of md's layout among the activation layouts oneDNN's convs pick (or "other"), into out[16]. */
static void tag_name(md_ref md, const dnnl_dims_t d, dnnl_data_type_t dt, char *out) {
    static const struct { dnnl_format_tag_t tag; const char *name; } tags[] = {
        {dnnl_nchw, "nchw"}, {dnnl_nhwc, "nhwc"}, {dnnl_nChw8c, "nChw8c"}, {dnnl_nChw16c, "nChw16c"}};
    strcpy(out, "other");
    for (size_t i = 0; i < sizeof tags / sizeof tags[0]; ++i) {
#if DNNL_VERSION_MAJOR >= 3
        dnnl_memory_desc_t t;
        if (dnnl_memory_desc_create_with_tag(&t, 4, d, dt, tags[i].tag) != dnnl_success) continue;
        int eq = dnnl_memory_desc_equal(md, t);
        dnnl_memory_desc_destroy(t);
#else
        dnnl_memory_desc_t t;
        if (dnnl_memory_desc_init_by_tag(&t, 4, d, dt, tags[i].tag) != dnnl_success) continue;
        int eq = dnnl_memory_desc_equal(md, &t);
#endif
        if (eq) {
            strcpy(out, tags[i].name);
            return;
        }
    }
}

/* A probe of conv Ci -> Co, k x k, stride, padding pad, on N x Ci x H x W; bf16 != 0: bf16 source and weights,
 * float32 accumulation and destination; plain != 0: source and destination pinned to NCHW (the plan's own layout:
 * the reorder in is then only the bf16 rounding, or a copy, and the reorder out a copy), else format_tag any.
 * w: float32 [Co][Ci][k][k]. *out gets the probe (NULL on failure). */
int pr_create(int bf16, int plain, int N, int Ci, int Co, int H, int W, int k, int stride, int pad, const float *w,
              probe **out) {
    *out = NULL;
    if (N < 1 || Ci < 1 || Co < 1 || k < 1 || stride < 1 || pad < 0 || H + 2 * pad < k || W + 2 * pad < k || !w)
        return dnnl_invalid_arguments;
    probe *p = calloc(1, sizeof *p);
    if (!p) return dnnl_out_of_memory;
    int Ho = (H + 2 * pad - k) / stride + 1, Wo = (W + 2 * pad - k) / stride + 1;
    dnnl_dims_t xd = {N, Ci, H, W}, wd = {Co, Ci, k, k}, yd = {N, Co, Ho, Wo};
    dnnl_primitive_desc_t pd = NULL;
    dnnl_memory_t w_user = NULL;
    dnnl_primitive_t rw = NULL;
    dnnl_status_t s;
#define STEP(call)                    \
    if ((s = (call)) != dnnl_success) \
        goto fail
    STEP(dnnl_engine_create(&p->eng, dnnl_cpu, 0));
    STEP(dnnl_stream_create(&p->stream, p->eng, dnnl_stream_default_flags));
    STEP(make_conv(p, bf16 ? dnnl_bf16 : dnnl_f32, xd, wd, yd, stride, pad, plain, &pd));
    const char *impl = NULL;
    if (dnnl_primitive_desc_query(pd, dnnl_query_impl_info_str, 0, &impl) == dnnl_success && impl)
        strncpy(p->impl, impl, sizeof p->impl - 1);
    STEP(dnnl_primitive_create(&p->conv, pd));
    STEP(dnnl_memory_create(&p->x_conv, dnnl_primitive_desc_query_md(pd, dnnl_query_src_md, 0), p->eng,
                            DNNL_MEMORY_ALLOCATE));
    STEP(dnnl_memory_create(&p->w_conv, dnnl_primitive_desc_query_md(pd, dnnl_query_weights_md, 0), p->eng,
                            DNNL_MEMORY_ALLOCATE));
    STEP(dnnl_memory_create(&p->y_conv, dnnl_primitive_desc_query_md(pd, dnnl_query_dst_md, 0), p->eng,
                            DNNL_MEMORY_ALLOCATE));
    tag_name(memory_md(p->x_conv), xd, bf16 ? dnnl_bf16 : dnnl_f32, p->src_tag);
    tag_name(memory_md(p->y_conv), yd, dnnl_f32, p->dst_tag);
    STEP(plain_memory(p, xd, &p->x_user));
    STEP(plain_memory(p, yd, &p->y_user));
    STEP(plain_memory(p, wd, &w_user));
    p->x_bytes = (size_t)N * Ci * H * W * sizeof(float);
    p->y_bytes = (size_t)N * Co * Ho * Wo * sizeof(float);
    void *h = NULL;
    STEP(dnnl_memory_get_data_handle(w_user, &h));
    memcpy(h, w, (size_t)Co * Ci * k * k * sizeof(float));
    STEP(make_reorder(p, memory_md(w_user), memory_md(p->w_conv), &rw));
    dnnl_exec_arg_t wargs[] = {{DNNL_ARG_FROM, w_user}, {DNNL_ARG_TO, p->w_conv}};
    STEP(run(p, rw, 2, wargs));
    STEP(make_reorder(p, memory_md(p->x_user), memory_md(p->x_conv), &p->rin));
    STEP(make_reorder(p, memory_md(p->y_conv), memory_md(p->y_user), &p->rout));
    int same_in = dnnl_memory_desc_equal(memory_md(p->x_user), memory_md(p->x_conv));
    int same_out = dnnl_memory_desc_equal(memory_md(p->y_user), memory_md(p->y_conv));
    p->x_src = same_in ? p->x_user : p->x_conv; /* then pr_all skips the copy */
    p->y_dst = same_out ? p->y_user : p->y_conv;
    dnnl_primitive_destroy(rw);
    dnnl_memory_destroy(w_user);
    dnnl_primitive_desc_destroy(pd);
    *out = p;
    return 0;
fail:
    if (rw) dnnl_primitive_destroy(rw);
    if (w_user) dnnl_memory_destroy(w_user);
    if (pd) dnnl_primitive_desc_destroy(pd);
    pr_destroy(p);
    return s ? (int)s : -1;
#undef STEP
}

/* The implementation oneDNN chose for the convolution (e.g. "brg_conv_fwd:avx512_core_amx"). */
const char *pr_impl(const probe *p) { return p->impl; }

/* The layouts oneDNN chose for the conv's source (0) and destination (1): "nhwc", "nChw16c", ... or "other". */
const char *pr_layout(const probe *p, int which) { return which ? p->dst_tag : p->src_tag; }

/* Copy n floats of NCHW input into the probe's user input (n must be its size). */
int pr_set_input(probe *p, const float *x, size_t n) {
    if (!p || !x || n * sizeof(float) != p->x_bytes) return dnnl_invalid_arguments;
    void *h = NULL;
    TRY(dnnl_memory_get_data_handle(p->x_user, &h));
    memcpy(h, x, p->x_bytes);
    return 0;
}

/* Copy the user output (NCHW float32, n floats) out. */
int pr_get_output(const probe *p, float *y, size_t n) {
    if (!p || !y || n * sizeof(float) != p->y_bytes) return dnnl_invalid_arguments;
    void *h = NULL;
    TRY(dnnl_memory_get_data_handle(p->y_user, &h));
    memcpy(y, h, p->y_bytes);
    return 0;
}

int pr_reorder_in(probe *p) {
    dnnl_exec_arg_t a[] = {{DNNL_ARG_FROM, p->x_user}, {DNNL_ARG_TO, p->x_conv}};
    return run(p, p->rin, 2, a);
}

int pr_conv(probe *p) {
    dnnl_exec_arg_t a[] = {{DNNL_ARG_SRC, p->x_src}, {DNNL_ARG_WEIGHTS, p->w_conv}, {DNNL_ARG_DST, p->y_dst}};
    return run(p, p->conv, 3, a);
}

int pr_reorder_out(probe *p) {
    dnnl_exec_arg_t a[] = {{DNNL_ARG_FROM, p->y_conv}, {DNNL_ARG_TO, p->y_user}};
    return run(p, p->rout, 2, a);
}

/* What a plan with float32 NCHW activations would pay for the layer: reorder in, conv, reorder out (each reorder
 * only where the conv's layout and type differ from the user's). */
int pr_all(probe *p) {
    if (p->x_src != p->x_user) TRY(pr_reorder_in(p));
    TRY(pr_conv(p));
    return p->y_dst != p->y_user ? pr_reorder_out(p) : 0;
}

void pr_destroy(probe *p) {
    if (!p) return;
    dnnl_primitive_t prims[] = {p->conv, p->rin, p->rout};
    for (int i = 0; i < 3; ++i)
        if (prims[i]) dnnl_primitive_destroy(prims[i]);
    dnnl_memory_t mems[] = {p->x_user, p->y_user, p->x_conv, p->y_conv, p->w_conv};
    for (int i = 0; i < 5; ++i)
        if (mems[i]) dnnl_memory_destroy(mems[i]);
    if (p->stream) dnnl_stream_destroy(p->stream);
    if (p->eng) dnnl_engine_destroy(p->eng);
    free(p);
}

/* The library's version, runtime and the ISA it dispatches to: major*10000 + minor*100 + patch. */
int pr_version(unsigned *cpu_runtime, int *isa) {
    const dnnl_version_t *v = dnnl_version();
    *cpu_runtime = v->cpu_runtime;
    *isa = (int)dnnl_get_effective_cpu_isa();
    return v->major * 10000 + v->minor * 100 + v->patch;
}
