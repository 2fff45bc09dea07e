/* Weight-only bfloat16 and int8 CPU kernels: the dense linear and the MoE SwiGLU experts of
 * cpu_kernels.c over panels of 16-bit or 8-bit weights. Activations and accumulation stay in
 * float32: a tile widens each panel row to float32 in registers (bf16: the 16 bits moved into the
 * high half; int8: sign-extended and converted) and runs the float32 kernel's FMAs; int8 sums
 * x * q over each group of inner indices, then adds that sum times the group's scale. The
 * instruction set is the compiler's choice for the build flags (-march=native, or x86-64-v3 when
 * the AVX2 path is forced); nothing here rounds activations to bf16 or int8, so AVX-512 BF16 dot
 * products and VNNI are not used.
 *
 * Panels as in cpu_kernels.c, element type by format (WEIGHT_BF16: uint16 bf16 bits,
 * WEIGHT_INT8: int8), with int8 scales (float32, or bf16 bits when scale_bf16) per output column
 * and per group of `group` inner indices (the last group of a row may be shorter):
 *   linear   panels [ceil(n / 32), k, 32]      scales [ceil(n / 32), ceil(k / group), 32]
 *   gate_up  [E, F / 16, d, 32]                scales [E, F / 16, ceil(d / group), 32]
 *   down     [E, d / 32, F, 32]                scales [E, d / 32, ceil(F / group), 32]
 * int8 weight w = q * scale; every output element is summed in the same order whatever the other
 * rows are (batch-invariant). Legend as in cpu_kernels.c.
 */
#include "kernels.h"

#ifdef __AVX512F__
#define QTILE 12 /* 24 accumulators in 32 zmm registers */
#else
#define QTILE 4 /* 16 ymm registers: 8 two-register accumulators, little spilling */
#endif

typedef uint16_t u16v __attribute__((vector_size(LANES * 2), aligned(2)));
typedef uint32_t u32v __attribute__((vector_size(LANES * 4), aligned(4)));
typedef int8_t i8v __attribute__((vector_size(LANES), aligned(1)));

/* The format's view of one weight matrix: its panels, int8 scales and group size. */
typedef struct {
    const void *panels, *scales;
    int64_t group;
    int fmt, scale_bf16;
} qweights;

/* The high half of each float32 lane; with AVX-512 one zero-extension of the 16 values, where
 * GCC 12's generic conversion (its 256-bit preference) takes two and a merge. */
ALWAYS_INLINE vec bf16_load(const uint16_t *p) {
#if defined(__AVX512F__)
    __m512i wide = _mm512_cvtepu16_epi32(_mm256_loadu_si256((const __m256i *)p));
    return (vec)_mm512_castsi512_ps(_mm512_slli_epi32(wide, 16));
#else
    return (vec)(__builtin_convertvector(*(const u16v *)p, u32v) << 16);
#endif
}

/* Sign-extend and convert with the ISA's instructions: GCC 12 scalarises the generic
 * conversion of int8 vectors (one movsbl + cvtsi2ss per weight). */
ALWAYS_INLINE vec i8_load(const int8_t *p) {
#if defined(__AVX512F__)
    return (vec)_mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm_loadu_si128((const __m128i *)p)));
#elif defined(__AVX2__)
    __m256 halves[2] = {
        _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(_mm_loadl_epi64((const __m128i *)p))),
        _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(_mm_loadl_epi64((const __m128i *)(p + 8)))),
    };
    vec v;
    memcpy(&v, halves, sizeof v);
    return v;
#else
    return __builtin_convertvector(*(const i8v *)p, vec);
#endif
}

ALWAYS_INLINE vec scale_load(const void *scales, int scale_bf16, int64_t index) {
    return scale_bf16 ? bf16_load((const uint16_t *)scales + index)
                      : load((const float *)scales + index);
}

/* acc0[r], acc1[r] = x[r] . w[:, 0:16], x[r] . w[:, 16:32] for R rows (stride ldx) of one panel
 * (k inner indices; scales: that panel's [ceil(k / group), 32]). */
ALWAYS_INLINE void qtile(int R, const float *x, int64_t ldx, const void *panel,
                         const void *scales, int64_t k, const qweights *w, vec *acc0,
                         vec *acc1) {
    vec a0[QTILE] = {0}, a1[QTILE] = {0};
    if (w->fmt == WEIGHT_BF16) {
        const uint16_t *p = panel;
        for (int64_t c = 0; c < k; c++) {
            prefetch_ahead(p + c * PANEL);
            vec p0 = bf16_load(p + c * PANEL), p1 = bf16_load(p + c * PANEL + LANES);
            for (int r = 0; r < R; r++) {
                float xv = x[r * ldx + c];
                a0[r] += xv * p0;
                a1[r] += xv * p1;
            }
        }
    } else {
        const int8_t *p = panel;
        for (int64_t g = 0; g * w->group < k; g++) {
            int64_t end = (g + 1) * w->group < k ? (g + 1) * w->group : k;
            vec t0[QTILE] = {0}, t1[QTILE] = {0}; /* the group's sums of x * q */
            for (int64_t c = g * w->group; c < end; c++) {
                prefetch_ahead(p + c * PANEL);
                vec p0 = i8_load(p + c * PANEL), p1 = i8_load(p + c * PANEL + LANES);
                for (int r = 0; r < R; r++) {
                    float xv = x[r * ldx + c];
                    t0[r] += xv * p0;
                    t1[r] += xv * p1;
                }
            }
            vec s0 = scale_load(scales, w->scale_bf16, g * PANEL);
            vec s1 = scale_load(scales, w->scale_bf16, g * PANEL + LANES);
            for (int r = 0; r < R; r++) {
                a0[r] += t0[r] * s0;
                a1[r] += t1[r] * s1;
            }
        }
    }
    for (int r = 0; r < R; r++) {
        acc0[r] = a0[r];
        acc1[r] = a1[r];
    }
}

/* qtile of one row over two adjacent panels at once (panel, scales: the first's; stride: bytes
 * from one panel, and one panel's scales, to the next): four accumulator chains where one row of
 * one panel has two, each output summed exactly as qtile sums it. acc [4]: the two panels'
 * halves in order. */
ALWAYS_INLINE void qrow_pair(const float *x, const char *panel, const char *scales,
                             int64_t stride, int64_t scale_stride, int64_t k, const qweights *w,
                             vec *acc) {
    vec a[4] = {0};
    if (w->fmt == WEIGHT_BF16) {
        const uint16_t *p = (const void *)panel, *q = (const void *)(panel + stride);
        for (int64_t c = 0; c < k; c++) {
            prefetch_ahead(p + c * PANEL);
            prefetch_ahead(q + c * PANEL);
            float xv = x[c];
            a[0] += xv * bf16_load(p + c * PANEL);
            a[1] += xv * bf16_load(p + c * PANEL + LANES);
            a[2] += xv * bf16_load(q + c * PANEL);
            a[3] += xv * bf16_load(q + c * PANEL + LANES);
        }
    } else {
        const int8_t *p = (const void *)panel, *q = (const void *)(panel + stride);
        for (int64_t g = 0; g * w->group < k; g++) {
            int64_t end = (g + 1) * w->group < k ? (g + 1) * w->group : k;
            vec t[4] = {0};
            for (int64_t c = g * w->group; c < end; c++) {
                prefetch_ahead(p + c * PANEL);
                prefetch_ahead(q + c * PANEL);
                float xv = x[c];
                t[0] += xv * i8_load(p + c * PANEL);
                t[1] += xv * i8_load(p + c * PANEL + LANES);
                t[2] += xv * i8_load(q + c * PANEL);
                t[3] += xv * i8_load(q + c * PANEL + LANES);
            }
            for (int h = 0; h < 4; h++)
                a[h] += t[h] * scale_load(scales + (h / 2) * scale_stride, w->scale_bf16,
                                          g * PANEL + (h % 2) * LANES);
        }
    }
    for (int h = 0; h < 4; h++) acc[h] = a[h];
}

/* Panel `j` of a weight whose panels each hold `k` inner indices, its scales (NULL for bf16),
 * and the bytes from a panel, and from its scales, to the next one's. */
typedef struct {
    const char *panel, *scales;
    int64_t stride, scale_stride;
} qpanel;

static qpanel qpanel_at(const qweights *w, int64_t j, int64_t k) {
    int64_t wsize = w->fmt == WEIGHT_BF16 ? 2 : 1, ssize = w->scale_bf16 ? 2 : 4;
    int64_t groups = w->fmt == WEIGHT_INT8 ? (k + w->group - 1) / w->group : 0;
    qpanel q = {(const char *)w->panels + j * k * PANEL * wsize, NULL, k * PANEL * wsize,
                groups * PANEL * ssize};
    if (w->scales) q.scales = (const char *)w->scales + j * q.scale_stride;
    return q;
}

/* qtile on panel `j` of a weight whose panels each hold `k` inner indices. */
static void qtile_any(int rows, const float *x, int64_t ldx, const qweights *w, int64_t j,
                      int64_t k, vec *acc0, vec *acc1) {
    qpanel q = qpanel_at(w, j, k);
    const char *panel = q.panel, *scales = q.scales;
    switch (rows) {
#define QTILE_CASE(R)                                                                              \
    case R: qtile(R, x, ldx, panel, scales, k, w, acc0, acc1); break;
        QTILE_CASE(1) QTILE_CASE(2) QTILE_CASE(3)
#if QTILE > 4
        QTILE_CASE(4) QTILE_CASE(5) QTILE_CASE(6) QTILE_CASE(7) QTILE_CASE(8) QTILE_CASE(9)
        QTILE_CASE(10) QTILE_CASE(11)
#endif
    default: qtile(QTILE, x, ldx, panel, scales, k, w, acc0, acc1);
#undef QTILE_CASE
    }
}

/* out [m, n] = x [m, k] @ w [n, k]^T (+ bias [n] when not NULL), w in bf16 or int8 panels; one
 * row takes two panels at a time (qrow_pair). */
void hagmoe_linear_q(const float *x, const void *panels, const void *scales, const float *bias,
                     float *out, int64_t m, int64_t k, int64_t n, int64_t group, int fmt,
                     int scale_bf16, int threads) {
    qweights w = {panels, scales, group, fmt, scale_bf16};
    int64_t np = (n + PANEL - 1) / PANEL, runs = threads * CHUNKS_PER_THREAD;
#pragma omp parallel for num_threads(threads) schedule(dynamic, 1)
    for (int64_t run = 0; run < runs; run++) {
        int64_t j1 = (run + 1) * np / runs;
        for (int64_t j = run * np / runs; j < j1; j++) {
            if (m == 1 && j + 1 < j1) {
                vec y[4];
                qpanel q = qpanel_at(&w, j, k);
                qrow_pair(x, q.panel, q.scales, q.stride, q.scale_stride, k, &w, y);
                store_panel_pair(out, y, bias, n, j);
                j++;
                continue;
            }
            const float *b = bias ? bias + j * PANEL : NULL;
            int64_t cols = panel_cols(n, j);
            vec y[2][QTILE];
            for (int64_t i = 0; i < m; i += QTILE) {
                int rows = m - i < QTILE ? (int)(m - i) : QTILE;
                qtile_any(rows, x + i * k, k, &w, j, k, y[0], y[1]);
                for (int r = 0; r < rows; r++)
                    store_panel(out + (i + r) * n + j * PANEL, y[0][r], y[1][r], b, cols);
            }
        }
    }
}

/* h[p, 16j : 16j + 16] = silu(xs[p] . w1) * (xs[p] . w2) for every pair p of every expert, for
 * panels j in [j0, j1), expert by expert; an expert of one pair takes two panels at a time. */
static void gate_up_qpanels(const hagmoe_pairs *s, const qweights *w, int64_t experts, int64_t d,
                            int64_t F, int64_t j0, int64_t j1) {
    vec g[QTILE], u[QTILE];
    for (int64_t e = 0; e < experts; e++) {
        int64_t first = s->offsets[e], last = s->offsets[e + 1];
        for (int64_t j = j0; j < j1; j++) {
            if (last - first == 1 && j + 1 < j1) {
                vec y[4];
                qpanel q = qpanel_at(w, e * (F / LANES) + j, d);
                qrow_pair(s->xs + first * d, q.panel, q.scales, q.stride, q.scale_stride, d, w, y);
                silu_store(s->h + first * F + j * LANES, y[0], y[1]);
                silu_store(s->h + first * F + (j + 1) * LANES, y[2], y[3]);
                j++;
                continue;
            }
            for (int64_t p = first; p < last; p += QTILE) {
                int rows = last - p < QTILE ? (int)(last - p) : QTILE;
                qtile_any(rows, s->xs + p * d, d, w, e * (F / LANES) + j, d, g, u);
                for (int r = 0; r < rows; r++)
                    silu_store(s->h + (p + r) * F + j * LANES, g[r], u[r]);
            }
        }
    }
}

/* out[token[p], 32j : 32j + 32] += weight[p] * (h[p] @ w3[e]^T)[32j : 32j + 32] for panels j in
 * [j0, j1), expert by expert; an expert of one pair takes two panels at a time. */
static void down_qpanels(const hagmoe_pairs *s, const qweights *w, float *out, int64_t experts,
                         int64_t d, int64_t F, int64_t j0, int64_t j1) {
    vec y0[QTILE], y1[QTILE];
    for (int64_t e = 0; e < experts; e++) {
        int64_t first = s->offsets[e], last = s->offsets[e + 1];
        for (int64_t j = j0; j < j1; j++) {
            if (last - first == 1 && j + 1 < j1) {
                vec y[4];
                qpanel q = qpanel_at(w, e * (d / PANEL) + j, F);
                qrow_pair(s->h + first * F, q.panel, q.scales, q.stride, q.scale_stride, F, w, y);
                float *dst = out + s->token[first] * d + j * PANEL, wt = s->weight[first];
                add_scaled(dst, wt, y[0], y[1]);
                add_scaled(dst + PANEL, wt, y[2], y[3]);
                j++;
                continue;
            }
            for (int64_t p = first; p < last; p += QTILE) {
                int rows = last - p < QTILE ? (int)(last - p) : QTILE;
                qtile_any(rows, s->h + p * F, F, w, e * (d / PANEL) + j, F, y0, y1);
                for (int r = 0; r < rows; r++)
                    add_scaled(out + s->token[p + r] * d + j * PANEL, s->weight[p + r], y0[r],
                               y1[r]);
            }
        }
    }
}

/* hagmoe_moe_swiglu over bf16 or int8 panels (gate_up / down with their scales, NULL for bf16;
 * int8 groups of group_d inner indices for gate_up, of group_F for down):
 * out [T, d] += sum_k scores[t, k] * E_{experts[t, k]}(x[t]). Returns 0, or -1 when scratch
 * memory ran out. */
int hagmoe_moe_swiglu_q(const float *x, const int64_t *chosen, const float *scores,
                        int64_t tokens, int64_t k, const void *gate_up, const void *gate_up_scales,
                        const void *down, const void *down_scales, float *out, int64_t experts,
                        int64_t d, int64_t F, int64_t group_d, int64_t group_F, int fmt,
                        int scale_bf16, int threads) {
    hagmoe_pairs s;
    if (hagmoe_sort_pairs(&s, x, chosen, scores, tokens, k, experts, d, F) != 0) return -1;
    qweights wg = {gate_up, gate_up_scales, group_d, fmt, scale_bf16};
    qweights wd = {down, down_scales, group_F, fmt, scale_bf16};
    int64_t chunks = threads * CHUNKS_PER_THREAD, ng = F / LANES, nd = d / PANEL;
#pragma omp parallel num_threads(threads)
    {
#pragma omp for schedule(dynamic, 1)
        for (int64_t c = 0; c < chunks; c++)
            gate_up_qpanels(&s, &wg, experts, d, F, c * ng / chunks, (c + 1) * ng / chunks);
        /* implicit barrier: all of h is ready */
#pragma omp for schedule(dynamic, 1)
        for (int64_t c = 0; c < chunks; c++)
            down_qpanels(&s, &wd, out, experts, d, F, c * nd / chunks, (c + 1) * nd / chunks);
    }
    hagmoe_free_pairs(&s);
    return 0;
}
