/* One decoder layer (no shared expert, no q/k norm or clipping) for a decode step, in one call:
 * B sequences, one new row each, the paged caches written and read in place. The layer's math
 * is the model's (MODEL.md "One layer"):
 *   a = norm(x);  q, k, v = a W_qkv^T (+ b);  rope(q, k);  cache[slot] = k, v
 *   x = x + o_proj(attention(q, cache));  u = norm(x)
 *   linear router: p = softmax(u W_gate^T);  experts, scores = top_k(p) (ties: the lower
 *   index; renormalised when normalize_topk)
 *   attention router: rv_cache[slot] = u W_rv^T;  group, K, experts, scores from the sums of
 *   the attention's coarse / fine head means over the cached routing values
 *   o = sum_k scores[k] * E_{experts[k]}(u), times the feedback where there is one;  x = x + o
 * through the kernels of cpu_kernels.c / quant_kernels.c (each parallel over its own outputs),
 * so the results are those of the per-op path up to the norms', softmax's and tanh's rounding.
 * hagmoe_decode_model runs every layer, the final norm and the head in one call.
 * Legend: B rows (sequences), d hidden size, H query heads, Hkv key/value heads, hd head dim,
 * W = (H + 2 Hkv) hd, N experts (G + N routing values with the attention router, G groups),
 * K = top_k (k_max), R feedback size, nb blocks per sequence, bs block size.
 */
#include "kernels.h"

/* A packed weight [n, k]: float32, bf16 or int8 panels (fmt: WEIGHT_*), as quant.py lays out. */
typedef struct {
    const void *panels, *scales;
    const float *bias; /* [n] or NULL */
    int64_t n, k, group;
    int32_t fmt, scale_bf16;
} hagmoe_weight;

/* One layer's experts in the MoE kernels' layout (quant.to_expert_panels). */
typedef struct {
    const void *gate_up, *gate_up_scales, *down, *down_scales;
    int64_t experts, d, F, group_d, group_F;
    int32_t fmt, scale_bf16;
} hagmoe_expert_weights;

typedef struct {
    const float *attn_norm_w, *attn_norm_b, *moe_norm_w, *moe_norm_b; /* b NULL: RMSNorm */
    /* gate: the linear router's [N, d], or the attention router's routing values [G + N, d] */
    hagmoe_weight qkv, o, gate;
    hagmoe_expert_weights experts;
    const float *expert_embed; /* feedback's expert identities [N, R]; NULL: no feedback */
    hagmoe_weight feedback;    /* feedback's projection [d, R] */
    int64_t heads, kv_heads, hd, top_k, window; /* top_k: K (the attention router's k_max) */
    int64_t coarse, groups, per_group, k_min;   /* the attention router; coarse 0: linear */
    float norm_eps, alpha, mu, gamma;           /* alpha, mu: K's gate; gamma: feedback's */
    int32_t normalize_topk, rope;
} hagmoe_layer;

/* A model for a decode step: its token embedding (rows [V, d], or NULL: the tied head's
 * panels), learned position embedding [max_position, d] (NULL: none), layers, the final norm
 * and the output head [V, d]. */
typedef struct {
    const float *embed, *pos_embed;
    const hagmoe_layer *layers;
    int64_t num_layers;
    const float *norm_w, *norm_b; /* b NULL: RMSNorm */
    hagmoe_weight head;
    float norm_eps;
} hagmoe_model;

/* Where a layer's decisions go: experts / scores [B, K] (-1 / 0 past a row's k); the attention
 * router's group, k and normalised entropy [B] (NULL with the linear router). */
typedef struct {
    int64_t *experts;
    float *scores;
    int64_t *group, *k;
    float *entropy;
} hagmoe_routing;

/* A decode step's rows: cos / sin [B, hd] (NULL without rope), slot_mapping [B], block_table
 * [B, nb], query_pos [B]. */
typedef struct {
    const float *cos, *sin;
    const int64_t *slot_mapping, *block_table, *query_pos;
    int64_t batch, blocks_per_seq, block_size;
    int32_t threads;
} hagmoe_decode_rows;

static void linear_any(const hagmoe_weight *w, const float *x, float *out, int64_t m, int threads) {
    if (w->fmt == WEIGHT_F32)
        hagmoe_linear(x, w->panels, w->bias, out, m, w->k, w->n, threads);
    else
        hagmoe_linear_q(x, w->panels, w->scales, w->bias, out, m, w->k, w->n, w->group, w->fmt,
                        w->scale_bf16, threads);
}

/* out [B, d] = LayerNorm (b != NULL) or RMSNorm of x [B, d] with weight w. */
static void norm_rows(const float *x, const float *w, const float *b, float *out, int64_t rows,
                      int64_t d, float eps) {
    for (int64_t r = 0; r < rows; r++) {
        const float *xr = x + r * d;
        float mean = 0.f, var = 0.f;
        if (b) {
            for (int64_t i = 0; i < d; i++) mean += xr[i];
            mean /= (float)d;
        }
        for (int64_t i = 0; i < d; i++) var += (xr[i] - mean) * (xr[i] - mean);
        float inv = 1.f / sqrtf(var / (float)d + eps);
        for (int64_t i = 0; i < d; i++)
            out[r * d + i] = (xr[i] - mean) * inv * w[i] + (b ? b[i] : 0.f);
    }
}

/* Rotate-half rope of `heads` heads [hd] of one row in place with cos / sin [hd]. */
static void rope_heads(float *v, int64_t heads, int64_t hd, const float *cos, const float *sin) {
    int64_t half = hd / 2;
    for (int64_t h = 0; h < heads; h++) {
        float *x = v + h * hd;
        for (int64_t i = 0; i < half; i++) {
            float x1 = x[i], x2 = x[i + half];
            x[i] = x1 * cos[i] - x2 * sin[i];
            x[i + half] = x2 * cos[i + half] + x1 * sin[i + half];
        }
    }
}

/* experts / scores [K] of one row's gate logits [N]: softmax, the K largest (ties: the lower
 * index), renormalised over the K when `normalize`. */
static void top_k_row(const float *logits, int64_t n, int64_t k, int normalize, int64_t *experts,
                      float *scores, float *p) {
    float top = -INFINITY, total = 0.f;
    for (int64_t e = 0; e < n; e++) top = logits[e] > top ? logits[e] : top;
    for (int64_t e = 0; e < n; e++) total += p[e] = expf(logits[e] - top);
    for (int64_t e = 0; e < n; e++) p[e] /= total;
    float kept = 0.f;
    for (int64_t j = 0; j < k; j++) {
        int64_t best = -1;
        for (int64_t e = 0; e < n; e++)
            if (p[e] >= 0.f && (best < 0 || p[e] > p[best])) best = e;
        experts[j] = best;
        kept += scores[j] = p[best];
        p[best] = -1.f; /* taken */
    }
    if (normalize)
        for (int64_t j = 0; j < k; j++) scores[j] /= kept;
}

static int moe_any(const hagmoe_expert_weights *w, const float *u, const int64_t *chosen,
                   const float *scores, float *out, int64_t rows, int64_t k, int threads) {
    if (w->fmt == WEIGHT_F32)
        return hagmoe_moe_swiglu(u, chosen, scores, rows, k, w->gate_up, w->down, out,
                                 w->experts, w->d, w->F, threads);
    return hagmoe_moe_swiglu_q(u, chosen, scores, rows, k, w->gate_up, w->gate_up_scales, w->down,
                               w->down_scales, out, w->experts, w->d, w->F, w->group_d, w->group_F,
                               w->fmt, w->scale_bf16, threads);
}

/* The attention router's decisions for the rows' u [B, d] (MODEL.md "Routing"): their routing
 * values rv = u W_rv^T into rv_cache at their slots, then z and the coarse entropy summed with
 * the attention's head means mix [B, 2, keys] over the cached values, then group, K, experts. */
static void route_attention(const hagmoe_layer *L, const hagmoe_decode_rows *s, const float *u,
                            const float *mix, float *rv_cache, float *z, float *entropy,
                            const hagmoe_routing *out) {
    int64_t B = s->batch, width = L->gate.n, keys = s->blocks_per_seq * s->block_size;
    linear_any(&L->gate, u, z, B, s->threads); /* rv [B, G + N] */
    for (int64_t r = 0; r < B; r++)
        memcpy(rv_cache + s->slot_mapping[r] * width, z + r * width, width * sizeof *z);
    hagmoe_route_sums(mix, mix + keys, 2 * keys, 2 * keys, rv_cache, s->block_table,
                      s->query_pos, NULL, z, entropy, B, 1, L->groups, width, s->blocks_per_seq,
                      s->block_size);
    hagmoe_route_decide(z, entropy, s->query_pos, out->group, out->experts, out->scores, out->k,
                        out->entropy, B, L->groups, L->per_group, L->k_min, L->top_k, L->alpha,
                        L->mu, 0);
}

/* o [B, d] *= 1 + gamma tanh(W_fb sum_k scores[k] embed[experts[k]]) (the feedback; mixed [B, R]
 * and r [B, d] scratch). */
static void feedback(const hagmoe_layer *L, const hagmoe_routing *out, float *o, float *mixed,
                     float *r, int64_t B, int threads) {
    int64_t R = L->feedback.k, K = L->top_k, d = L->feedback.n;
    for (int64_t b = 0; b < B; b++) {
        float *m = mixed + b * R;
        for (int64_t i = 0; i < R; i++) m[i] = 0.f;
        for (int64_t j = 0; j < K; j++) {
            int64_t e = out->experts[b * K + j];
            const float *emb = L->expert_embed + (e < 0 ? 0 : e) * R;
            for (int64_t i = 0; i < R; i++) m[i] += out->scores[b * K + j] * emb[i];
        }
    }
    linear_any(&L->feedback, mixed, r, B, threads);
    for (int64_t i = 0; i < B * d; i++) o[i] *= 1.f + L->gamma * tanhf(r[i]);
}

/* x [B, d] -> the layer's output x_out [B, d]; the cache [num_slots, 2 Hkv hd] gets each row's
 * K, V, and rv_cache [num_slots, G + N] its routing values (the attention router; else unused);
 * out gets the routing. Returns 0, or -1 when memory ran out. */
int hagmoe_decode_layer(const hagmoe_layer *L, const hagmoe_decode_rows *s, const float *x_in,
                        float *x, float *cache, float *rv_cache, const hagmoe_routing *out) {
    int64_t B = s->batch, d = L->qkv.k, hd = L->hd, H = L->heads, width = L->kv_heads * hd;
    int64_t W = H * hd + 2 * width, N = L->gate.n, K = L->top_k, R = L->feedback.k;
    int64_t keys = L->coarse ? s->blocks_per_seq * s->block_size : 0;
    int64_t extra = L->coarse ? B * (2 * keys + 1) : 0, fb = L->expert_embed ? B * (R + d) : 0;
    float *a = malloc((B * (d + W + H * hd + d + N) + N + extra + fb) * sizeof *a);
    if (!a) return -1;
    memcpy(x, x_in, B * d * sizeof *x);
    float *y = a + B * d, *q = y + B * W, *o = q + B * H * hd, *logits = o + B * d;
    float *p = logits + B * N, *mix = p + N, *entropy = mix + 2 * B * keys, *mixed = mix + extra;
    norm_rows(x, L->attn_norm_w, L->attn_norm_b, a, B, d, L->norm_eps);
    linear_any(&L->qkv, a, y, B, s->threads); /* [B, W]: q, k, v */
    for (int64_t r = 0; r < B; r++) {
        float *yr = y + r * W;
        if (L->rope) {
            rope_heads(yr, H, hd, s->cos + r * hd, s->sin + r * hd);
            rope_heads(yr + H * hd, L->kv_heads, hd, s->cos + r * hd, s->sin + r * hd);
        }
        memcpy(q + r * H * hd, yr, H * hd * sizeof *q);
        memcpy(cache + s->slot_mapping[r] * 2 * width, yr + H * hd, 2 * width * sizeof *q);
    }
    int failed = hagmoe_paged_attention(q, cache, s->block_table, s->query_pos, NULL, y,
                                        L->coarse ? mix : NULL, B, 1, H, L->kv_heads, hd,
                                        s->blocks_per_seq, s->block_size, 1.f / sqrtf((float)hd),
                                        L->window, L->coarse, s->threads);
    linear_any(&L->o, y, o, B, s->threads); /* [B, d] */
    for (int64_t i = 0; i < B * d; i++) x[i] += o[i];
    norm_rows(x, L->moe_norm_w, L->moe_norm_b, a, B, d, L->norm_eps); /* u */
    if (L->coarse)
        route_attention(L, s, a, mix, rv_cache, logits, entropy, out);
    else {
        linear_any(&L->gate, a, logits, B, s->threads); /* [B, N] */
        for (int64_t r = 0; r < B; r++)
            top_k_row(logits + r * N, N, K, L->normalize_topk, out->experts + r * K,
                      out->scores + r * K, p);
    }
    memset(o, 0, B * d * sizeof *o);
    failed |= moe_any(&L->experts, a, out->experts, out->scores, o, B, K, s->threads);
    if (L->expert_embed) feedback(L, out, o, mixed, mixed + B * R, B, s->threads);
    for (int64_t i = 0; i < B * d; i++) x[i] += o[i];
    free(a);
    return failed ? -1 : 0;
}

static inline float bf16_value(uint16_t bits) {
    uint32_t wide = (uint32_t)bits << 16;
    float value;
    memcpy(&value, &wide, sizeof value);
    return value;
}

/* out [d] = row `id` of a packed weight [n, d] (panel id / 32, lane id % 32), in float32. */
static void panel_row(const hagmoe_weight *w, int64_t id, float *out) {
    int64_t panel = id / PANEL, lane = id % PANEL, d = w->k, at = panel * d * PANEL + lane;
    int64_t groups = w->fmt == WEIGHT_INT8 ? (d + w->group - 1) / w->group : 0;
    for (int64_t j = 0; j < d; j++) {
        int64_t i = at + j * PANEL;
        if (w->fmt == WEIGHT_F32) {
            out[j] = ((const float *)w->panels)[i];
        } else if (w->fmt == WEIGHT_BF16) {
            out[j] = bf16_value(((const uint16_t *)w->panels)[i]);
        } else {
            int64_t g = (panel * groups + j / w->group) * PANEL + lane; /* its scale */
            float scale = w->scale_bf16 ? bf16_value(((const uint16_t *)w->scales)[g])
                                        : ((const float *)w->scales)[g];
            out[j] = (float)((const int8_t *)w->panels)[i] * scale;
        }
    }
}

/* x [B, d] = the rows' token embeddings (+ their positions' embeddings). */
static void embed_rows(const hagmoe_model *M, const hagmoe_decode_rows *s, const int64_t *ids,
                       float *x) {
    int64_t d = M->head.k;
    for (int64_t r = 0; r < s->batch; r++) {
        float *xr = x + r * d;
        if (M->embed)
            memcpy(xr, M->embed + ids[r] * d, d * sizeof *xr);
        else
            panel_row(&M->head, ids[r], xr);
        if (M->pos_embed)
            for (int64_t j = 0; j < d; j++) xr[j] += M->pos_embed[s->query_pos[r] * d + j];
    }
}

/* Token ids [B] -> logits [B, V]; caches[l] and rv_caches[l] (NULL without the attention
 * router) are layer l's; routing gets every layer's decisions, each field [L, B, ...].
 * Returns 0, or -1 when memory ran out. */
int hagmoe_decode_model(const hagmoe_model *M, const hagmoe_decode_rows *s, const int64_t *ids,
                        float *const *caches, float *const *rv_caches, float *logits,
                        const hagmoe_routing *routing) {
    int64_t B = s->batch, d = M->head.k;
    float *scratch = malloc(2 * B * d * sizeof *scratch), *x = scratch, *y = scratch + B * d;
    if (!scratch) return -1;
    embed_rows(M, s, ids, x);
    int failed = 0;
    for (int64_t l = 0; l < M->num_layers && !failed; l++) {
        const hagmoe_layer *L = M->layers + l;
        int64_t at = l * B * L->top_k, one = l * B;
        hagmoe_routing out = {routing->experts + at, routing->scores + at,
                              L->coarse ? routing->group + one : NULL,
                              L->coarse ? routing->k + one : NULL,
                              L->coarse ? routing->entropy + one : NULL};
        failed = hagmoe_decode_layer(L, s, x, y, caches[l], rv_caches ? rv_caches[l] : NULL, &out);
        float *t = x;
        x = y, y = t;
    }
    norm_rows(x, M->norm_w, M->norm_b, y, B, d, M->norm_eps);
    linear_any(&M->head, y, logits, B, s->threads);
    free(scratch);
    return failed;
}
