/* What the CPU kernel sources share: the vector type, loads, the exponential, the panel and tile
 * sizes, and the (token, expert) pair sort of the MoE kernels. Legend as in cpu_kernels.c. */
#ifndef HAGMOE_KERNELS_H
#define HAGMOE_KERNELS_H
#include <math.h>
#include <omp.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#define LANES 16
/* A packed weight's element type (quant.py's format codes). */
#define WEIGHT_F32 0
#define WEIGHT_BF16 1
#define WEIGHT_INT8 2
#define PANEL 32
#define ALWAYS_INLINE static inline __attribute__((always_inline))
/* The MoE kernels split each weight's panels into this many runs of consecutive panels per
 * thread, taken dynamically: a run streams each expert's panels contiguously. */
#define CHUNKS_PER_THREAD 4

typedef float vec __attribute__((vector_size(LANES * sizeof(float)), aligned(sizeof(float))));

#if defined(__AVX512F__) || defined(__AVX2__)
#include <immintrin.h>
#endif
#ifdef __AVX512F__
static inline float hsum(vec v) { return _mm512_reduce_add_ps((__m512)v); }
#else
static inline float hsum(vec v) {
    float s = 0.f;
    for (int i = 0; i < LANES; i++) s += v[i];
    return s;
}
#endif

static inline vec load(const float *p) { return *(const vec *)p; }

/* Panel streams are prefetched this many bytes ahead of the tile reading them, every cache line
 * of them: the hardware prefetchers alone left a core near 10 GB/s on bf16 / int8 panels, and
 * float32 tiles of 8+ rows lost a fifth of their speed with every other line left to them
 * (docs/benchmarks.md). */
#define PREFETCH_AHEAD 2048
static inline void prefetch_ahead(const void *p) {
    __builtin_prefetch((const char *)p + PREFETCH_AHEAD, 0, 3);
}

/* Output columns of panel j of a weight with n of them: PANEL, fewer in the last panel. */
static inline int64_t panel_cols(int64_t n, int64_t j) {
    return n - j * PANEL < PANEL ? n - j * PANEL : PANEL;
}

/* dst[0, cols) = a panel's two halves y0, y1 (+ bias[0, cols) when not NULL). */
static inline void store_panel(float *dst, vec y0, vec y1, const float *bias, int64_t cols) {
    for (int64_t c = 0; c < cols; c++)
        dst[c] = (c < LANES ? y0[c] : y1[c - LANES]) + (bias ? bias[c] : 0.f);
}

/* Panels j and j + 1 of one output row out [n] = y [4] (the two panels' halves, as a row pair
 * gives them), + bias [n] when not NULL. */
static inline void store_panel_pair(float *out, const vec *y, const float *bias, int64_t n,
                                    int64_t j) {
    for (int64_t p = 0; p < 2; p++)
        store_panel(out + (j + p) * PANEL, y[2 * p], y[2 * p + 1],
                    bias ? bias + (j + p) * PANEL : NULL, panel_cols(n, j + p));
}

/* dst [32] += wt * (y0, y1): an expert's down output added to its token's row. */
ALWAYS_INLINE void add_scaled(float *dst, float wt, vec y0, vec y1) {
    *(vec *)dst = load(dst) + wt * y0;
    *(vec *)(dst + LANES) = load(dst + LANES) + wt * y1;
}

/* exp(x) within 2 ulp for x in [-87, 88] (clamped outside), branch-free so that loops over it
 * vectorise (libm's expf does not): Cephes' polynomial, 2^n put into the exponent bits. */
static inline float exp_approx(float x) {
    x = x < -87.f ? -87.f : (x > 88.f ? 88.f : x);
    float t = x * 1.44269504f + 12582912.f; /* 1.5 * 2^23: round to nearest */
    float n = t - 12582912.f;
    float r = x - n * 0.693359375f + n * 2.12194440e-4f;
    float p = 1.9875691500e-4f;
    p = p * r + 1.3981999507e-3f;
    p = p * r + 8.3334519073e-3f;
    p = p * r + 4.1665795894e-2f;
    p = p * r + 1.6666665459e-1f;
    p = p * r + 5.0000001201e-1f;
    int32_t bits;
    memcpy(&bits, &t, sizeof bits);
    bits = (bits - 0x4B400000 + 127) << 23;
    float scale;
    memcpy(&scale, &bits, sizeof scale);
    return (p * r * r + r + 1.f) * scale;
}

/* dst [16] = silu(g) * u: SwiGLU of a gate/up panel's halves. */
ALWAYS_INLINE void silu_store(float *dst, vec g, vec u) {
    for (int i = 0; i < LANES; i++) dst[i] = g[i] / (1.f + exp_approx(-g[i])) * u[i];
}

/* The routed (token, expert) pairs of one MoE call sorted by expert (counting sort, tokens in
 * order): offsets [E + 1] delimit each expert's pairs, token / weight [P] each pair's token and
 * score, xs [P, d] its token's row, h [P, F] scratch after xs. */
typedef struct {
    int64_t *offsets, *token, pairs;
    float *weight, *xs, *h;
} hagmoe_pairs;

/* Fills `s` from chosen / scores [T, K] (expert -1: none); 0, or -1 when memory ran out (then
 * nothing is left to free). */
int hagmoe_sort_pairs(hagmoe_pairs *s, const float *x, const int64_t *chosen, const float *scores,
                      int64_t tokens, int64_t k, int64_t experts, int64_t d, int64_t F);
void hagmoe_free_pairs(hagmoe_pairs *s);

/* The entry points decode_layer.c composes (defined in cpu_kernels.c and quant_kernels.c). */
void hagmoe_linear(const float *x, const float *panels, const float *bias, float *out, int64_t m,
                   int64_t k, int64_t n, int threads);
void hagmoe_linear_q(const float *x, const void *panels, const void *scales, const float *bias,
                     float *out, int64_t m, int64_t k, int64_t n, int64_t group, int fmt,
                     int scale_bf16, int threads);
int hagmoe_paged_attention(const float *q, const float *cache, const int64_t *block_table,
                           const int64_t *query_pos, const uint8_t *valid, float *out, float *mix,
                           int64_t batch, int64_t rows, int64_t heads, int64_t kv_heads,
                           int64_t hd, int64_t blocks_per_seq, int64_t bs, float scale,
                           int64_t window, int64_t coarse, int threads);
void hagmoe_route_sums(const float *a_c, const float *a_f, int64_t stride_b, int64_t stride_q,
                       const float *rv, const int64_t *block_table, const int64_t *query_pos,
                       const uint8_t *valid, float *z, float *entropy, int64_t batch,
                       int64_t rows, int64_t groups, int64_t width, int64_t blocks_per_seq,
                       int64_t bs);
void hagmoe_route_decide(const float *z, const float *entropy, const int64_t *positions,
                         int64_t *group, int64_t *experts, float *scores, int64_t *k_out,
                         float *hn_out, int64_t tokens, int64_t groups, int64_t per_group,
                         int64_t k_min, int64_t k_max, float alpha, float mu, int64_t k_fixed);
int hagmoe_moe_swiglu(const float *x, const int64_t *chosen, const float *scores, int64_t tokens,
                      int64_t k, const float *gate_up, const float *down, float *out,
                      int64_t experts, int64_t d, int64_t F, int threads);
int hagmoe_moe_swiglu_q(const float *x, const int64_t *chosen, const float *scores,
                        int64_t tokens, int64_t k, const void *gate_up, const void *gate_up_scales,
                        const void *down, const void *down_scales, float *out, int64_t experts,
                        int64_t d, int64_t F, int64_t group_d, int64_t group_F, int fmt,
                        int scale_bf16, int threads);

#endif
