/* Float32 CPU kernels for serving batch sizes, where MKL's GEMMs and torch's small ops run well
 * below the machine's peak. Five entry points:
 *   hagmoe_linear           a dense linear over weights packed in panels;
 *   hagmoe_moe_swiglu       the SwiGLU experts of one MoE layer over packed panels;
 *   hagmoe_paged_attention  attention of query rows (decode rows and prefill chunks) that reads
 *                           K/V in place from the paged cache, and the router's head means;
 *   hagmoe_route_sums       the attention router's sums over the paged routing-value cache in
 *                           place, and the coarse attention's entropy;
 *   hagmoe_route_decide     the router's group, K, expert and score decisions.
 *
 * Every output element is summed in the same order whatever the other rows are (batch-invariant).
 * Threads take whole output panels (linear, experts) or whole query rows (attention), so no two
 * write the same element; the two router kernels run on the calling thread. The MoE sizes and
 * the attention head dim have the alignment the Python side checks.
 *
 * Legend: m input rows, k inner size, n output columns, T tokens, K experts per token,
 * P (token, expert) pairs sorted by expert, d hidden size, F expert FFN size, E experts,
 * B sequences, Q query rows per sequence, H query heads, L key positions, bs block size,
 * G groups, M experts per group, N = G * M.
 */
#include "kernels.h"

/* Weights are packed in panels of PANEL floats per inner index, so a tile streams one
 * contiguous panel while each input row's value is broadcast against it (no horizontal sums):
 *   linear  [ceil(n / 32), k, 32]: panel j, index c: w[32j : 32j + 32, c] (zero past n)
 *   gate_up [E, F / 16, d, 32]: panel j, index c: w1[e, 16j : 16j + 16, c], w2[e, 16j : 16j + 16, c]
 *   down    [E, d / 32, F, 32]: panel j, index f: w3[e, 32j : 32j + 32, f]
 * Every output element is summed in the same order (c = 0, 1, ...) whatever the tile's rows. */
#define TILE 12 /* input rows per tile: 2 * TILE accumulators */

/* acc0[r], acc1[r] = x[r] . panel[:, 0:16], x[r] . panel[:, 16:32] for R rows (stride ldx). */
ALWAYS_INLINE void panel_tile(int R, const float *x, int64_t ldx, const float *panel, int64_t k,
                              vec *acc0, vec *acc1) {
    vec a0[TILE] = {0}, a1[TILE] = {0};
    for (int64_t c = 0; c < k; c++) {
        prefetch_ahead(panel + c * PANEL); /* a panel row is two cache lines */
        prefetch_ahead(panel + c * PANEL + LANES);
        vec p0 = load(panel + c * PANEL), p1 = load(panel + c * PANEL + LANES);
        for (int r = 0; r < R; r++) {
            float xv = x[r * ldx + c];
            a0[r] += xv * p0;
            a1[r] += xv * p1;
        }
    }
    for (int r = 0; r < R; r++) {
        acc0[r] = a0[r];
        acc1[r] = a1[r];
    }
}

/* panel_tile of one row over two adjacent panels at once (the second `k * PANEL` floats after
 * the first): four accumulator chains where one row of one panel has two, each output summed
 * exactly as panel_tile sums it. acc [4]: the two panels' halves in order. */
ALWAYS_INLINE void row_pair(const float *x, const float *panel, int64_t k, vec *acc) {
    const float *q = panel + k * PANEL;
    vec a[4] = {0};
    for (int64_t c = 0; c < k; c++) {
        prefetch_ahead(panel + c * PANEL);
        prefetch_ahead(panel + c * PANEL + LANES);
        prefetch_ahead(q + c * PANEL);
        prefetch_ahead(q + c * PANEL + LANES);
        float xv = x[c];
        a[0] += xv * load(panel + c * PANEL);
        a[1] += xv * load(panel + c * PANEL + LANES);
        a[2] += xv * load(q + c * PANEL);
        a[3] += xv * load(q + c * PANEL + LANES);
    }
    for (int h = 0; h < 4; h++) acc[h] = a[h];
}

static void panel_tile_any(int rows, const float *x, int64_t ldx, const float *panel, int64_t k,
                           vec *acc0, vec *acc1) {
    switch (rows) {
#define TILE_CASE(R)                                                                               \
    case R: panel_tile(R, x, ldx, panel, k, acc0, acc1); break;
        TILE_CASE(1) TILE_CASE(2) TILE_CASE(3) TILE_CASE(4) TILE_CASE(5) TILE_CASE(6)
        TILE_CASE(7) TILE_CASE(8) TILE_CASE(9) TILE_CASE(10) TILE_CASE(11) default:
        panel_tile(TILE, x, ldx, panel, k, acc0, acc1);
#undef TILE_CASE
    }
}

/* out [m, n] = x [m, k] @ w [n, k]^T (+ bias [n] when not NULL), w in linear panels; threads
 * take runs of consecutive panels, and one row takes two panels at a time (row_pair). */
void hagmoe_linear(const float *x, const float *panels, const float *bias, float *out, int64_t m,
                   int64_t k, int64_t n, int threads) {
    int64_t np = (n + PANEL - 1) / PANEL, runs = threads * CHUNKS_PER_THREAD;
#pragma omp parallel for num_threads(threads) schedule(dynamic, 1)
    for (int64_t run = 0; run < runs; run++) {
        int64_t j1 = (run + 1) * np / runs;
        for (int64_t j = run * np / runs; j < j1; j++) {
            if (m == 1 && j + 1 < j1) {
                vec y[4];
                row_pair(x, panels + j * k * PANEL, k, y);
                store_panel_pair(out, y, bias, n, j);
                j++;
                continue;
            }
            const float *b = bias ? bias + j * PANEL : NULL;
            int64_t cols = panel_cols(n, j);
            vec y[2][TILE];
            for (int64_t i = 0; i < m; i += TILE) {
                int rows = m - i < TILE ? (int)(m - i) : TILE;
                panel_tile_any(rows, x + i * k, k, panels + j * k * PANEL, k, y[0], y[1]);
                for (int r = 0; r < rows; r++)
                    store_panel(out + (i + r) * n + j * PANEL, y[0][r], y[1][r], b, cols);
            }
        }
    }
}

/* h[p, 16j : 16j + 16] = silu(xs[p] . w1) * (xs[p] . w2) for every pair p of every expert, for
 * panels j in [j0, j1), expert by expert (an expert's panels lie one after another); an expert of
 * one pair takes two panels at a time. */
static void gate_up_panels(const float *xs, const int64_t *offsets, const float *gate_up,
                           float *h, int64_t experts, int64_t d, int64_t F, int64_t j0,
                           int64_t j1) {
    vec g[TILE], u[TILE];
    for (int64_t e = 0; e < experts; e++) {
        int64_t first = offsets[e], last = offsets[e + 1];
        for (int64_t j = j0; j < j1; j++) {
            const float *panel = gate_up + ((e * (F / LANES)) + j) * d * PANEL;
            if (last - first == 1 && j + 1 < j1) {
                vec y[4];
                row_pair(xs + first * d, panel, d, y);
                silu_store(h + first * F + j * LANES, y[0], y[1]);
                silu_store(h + first * F + (j + 1) * LANES, y[2], y[3]);
                j++;
                continue;
            }
            for (int64_t p = first; p < last; p += TILE) {
                int rows = last - p < TILE ? (int)(last - p) : TILE;
                panel_tile_any(rows, xs + p * d, d, panel, d, g, u);
                for (int r = 0; r < rows; r++) silu_store(h + (p + r) * F + j * LANES, g[r], u[r]);
            }
        }
    }
}

/* out[token[p], 32j : 32j + 32] += weight[p] * (h[p] @ w3[e]^T)[32j : 32j + 32] for panels j in
 * [j0, j1), expert by expert (so each output element adds the experts in order); an expert of
 * one pair takes two panels at a time. */
static void down_panels(const float *h, const int64_t *token, const float *weight,
                        const int64_t *offsets, const float *down, float *out, int64_t experts,
                        int64_t d, int64_t F, int64_t j0, int64_t j1) {
    vec y0[TILE], y1[TILE];
    for (int64_t e = 0; e < experts; e++) {
        int64_t first = offsets[e], last = offsets[e + 1];
        for (int64_t j = j0; j < j1; j++) {
            const float *panel = down + ((e * (d / PANEL)) + j) * F * PANEL;
            if (last - first == 1 && j + 1 < j1) {
                vec y[4];
                row_pair(h + first * F, panel, F, y);
                float *dst = out + token[first] * d + j * PANEL;
                add_scaled(dst, weight[first], y[0], y[1]);
                add_scaled(dst + PANEL, weight[first], y[2], y[3]);
                j++;
                continue;
            }
            for (int64_t p = first; p < last; p += TILE) {
                int rows = last - p < TILE ? (int)(last - p) : TILE;
                panel_tile_any(rows, h + p * F, F, panel, F, y0, y1);
                for (int r = 0; r < rows; r++)
                    add_scaled(out + token[p + r] * d + j * PANEL, weight[p + r], y0[r], y1[r]);
            }
        }
    }
}

/* The SwiGLU experts E_e(x) = w3[e] (silu(w1[e] x) * (w2[e] x)) over pairs sorted by expert
 * (offsets [E + 1] delimit each expert's pairs; xs [P, d] each pair's token row; h [P, F]
 * scratch). Threads take chunks of consecutive gate/up panels, then of down panels (disjoint
 * output columns). */
static void swiglu_pairs(const float *xs, const int64_t *token, const float *weight,
                         const int64_t *offsets, const float *gate_up, const float *down,
                         float *h, float *out, int64_t experts, int64_t d, int64_t F,
                         int threads) {
    int64_t chunks = threads * CHUNKS_PER_THREAD, ng = F / LANES, nd = d / PANEL;
#pragma omp parallel num_threads(threads)
    {
#pragma omp for schedule(dynamic, 1)
        for (int64_t c = 0; c < chunks; c++)
            gate_up_panels(xs, offsets, gate_up, h, experts, d, F, c * ng / chunks,
                           (c + 1) * ng / chunks);
        /* implicit barrier: all of h is ready */
#pragma omp for schedule(dynamic, 1)
        for (int64_t c = 0; c < chunks; c++)
            down_panels(h, token, weight, offsets, down, out, experts, d, F, c * nd / chunks,
                        (c + 1) * nd / chunks);
    }
}

/* mix [2, L]: the means of p [H, L] over heads [0, coarse) and [coarse, H), on [first, length);
 * zero elsewhere. */
static void head_means(const float *p, float *mix, int64_t heads, int64_t coarse, int64_t keys,
                       int64_t first, int64_t length) {
    for (int64_t i = 0; i < 2 * keys; i++) mix[i] = 0.f;
    for (int64_t h = 0; h < heads; h++) {
        float *m = mix + (h < coarse ? 0 : keys);
        for (int64_t j = first; j < length; j++) m[j] += p[h * keys + j];
    }
    for (int64_t j = first; j < length; j++) {
        mix[j] /= (float)coarse;
        mix[keys + j] /= (float)(heads - coarse);
    }
}

/* Heads [h0, h1) of one query row qr [H, hd] against its keys [first, length) through table:
 * p into pb [H, L] (those heads' rows), out row [H, hd] (those heads' slices). */
static void attend_heads(const float *qr, const float *cache, const int64_t *table, float *orow,
                         float *pb, int64_t h0, int64_t h1, int64_t rep, int64_t width,
                         int64_t hd, int64_t keys, int64_t bs, int64_t first, int64_t length,
                         float scale) {
    for (int64_t i = h0 * hd; i < h1 * hd; i++) orow[i] = 0.f;
    /* scores, row by row of the cache: every head's K slice of position j at once */
    for (int64_t j = first; j < length; j++) {
        const float *k = cache + (table[j / bs] * bs + j % bs) * 2 * width;
        for (int64_t h = h0; h < h1; h++) {
            vec s = {0};
            for (int64_t c = 0; c < hd; c += LANES)
                s += load(qr + h * hd + c) * load(k + h / rep * hd + c);
            pb[h * keys + j] = hsum(s) * scale;
        }
    }
    for (int64_t h = h0; h < h1; h++) {
        float *p = pb + h * keys, top = -INFINITY, total = 0.f;
        for (int64_t j = first; j < length; j++) top = p[j] > top ? p[j] : top;
        for (int64_t j = first; j < length; j++) p[j] = exp_approx(p[j] - top);
        for (int64_t j = first; j < length; j++) total += p[j];
        for (int64_t j = first; j < length; j++) p[j] /= total;
    }
    for (int64_t j = first; j < length; j++) {
        const float *v = cache + (table[j / bs] * bs + j % bs) * 2 * width + width;
        for (int64_t h = h0; h < h1; h++) {
            float w = pb[h * keys + j];
            for (int64_t c = 0; c < hd; c += LANES)
                *(vec *)(orow + h * hd + c) += w * load(v + h / rep * hd + c);
        }
    }
}

/* Query rows against their sequences' paged keys, without gathering the cache. Row r = (b, i) of
 * q [B, Q, H, hd] sits at position pos = query_pos[b, i] and sees key positions j in
 * [first, pos], first = pos + 1 - window when a sliding window is set (window > 0):
 *   p[h, j] = softmax_j(scale * q[r, h] . K_j),  out[r, h] = sum_j p[h, j] V_j
 * where K_j, V_j are the head's slices of cache row table[b][j / bs] * bs + j % bs
 * (rows hold K then V, kv_heads * hd each; query head h reads kv head h / (heads / kv_heads)).
 * When mix is not NULL it gets the head means the router needs, [B, Q, 2, L] with
 * L = blocks_per_seq * bs: over heads [0, coarse), then [coarse, heads), zero outside
 * [first, pos]. Rows with valid[r] == 0 (valid may be NULL: all rows) are zero.
 * Returns 0, or -1 when scratch memory ran out. */
int hagmoe_paged_attention(const float *q, const float *cache, const int64_t *block_table,
                           const int64_t *query_pos, const uint8_t *valid, float *out, float *mix,
                           int64_t batch, int64_t rows, int64_t heads, int64_t kv_heads,
                           int64_t hd, int64_t blocks_per_seq, int64_t bs, float scale,
                           int64_t window, int64_t coarse, int threads) {
    int64_t rep = heads / kv_heads, width = kv_heads * hd, keys = blocks_per_seq * bs;
    /* Few rows: threads also split a row's kv heads (not with mix: head means need them all). */
    int64_t split = mix || batch * rows >= 2 * threads ? 1 : kv_heads;
    int failed = 0;
#pragma omp parallel num_threads(threads) reduction(| : failed)
    {
        float *pb = malloc((heads * keys + 1) * sizeof *pb); /* p [H, L] of one row */
        failed = pb == NULL;
#pragma omp for schedule(dynamic, 1)
        for (int64_t item = 0; item < batch * rows * split; item++) {
            if (!pb) continue;
            int64_t r = item / split, h0 = item % split * rep, h1 = split == 1 ? heads : h0 + rep;
            float *orow = out + r * heads * hd, *mrow = mix ? mix + r * 2 * keys : NULL;
            if (valid && !valid[r]) {
                for (int64_t i = h0 * hd; i < h1 * hd; i++) orow[i] = 0.f;
                if (mrow) memset(mrow, 0, 2 * keys * sizeof *mrow);
                continue;
            }
            int64_t length = query_pos[r] + 1;
            int64_t first = window > 0 && length > window ? length - window : 0;
            const int64_t *table = block_table + (r / rows) * blocks_per_seq;
            attend_heads(q + r * heads * hd, cache, table, orow, pb, h0, h1, rep, width, hd, keys,
                         bs, first, length, scale);
            if (mrow) head_means(pb, mrow, heads, coarse, keys, first, length);
        }
        free(pb);
    }
    return failed ? -1 : 0;
}

int hagmoe_sort_pairs(hagmoe_pairs *s, const float *x, const int64_t *chosen, const float *scores,
                      int64_t tokens, int64_t k, int64_t experts, int64_t d, int64_t F) {
    memset(s, 0, sizeof *s);
    s->offsets = calloc(experts + 2, sizeof *s->offsets);
    s->token = malloc((tokens * k + 1) * sizeof *s->token);
    s->weight = malloc((tokens * k + 1) * sizeof *s->weight);
    if (!s->offsets || !s->token || !s->weight) goto fail;
    int64_t *offsets = s->offsets;
    for (int64_t i = 0; i < tokens * k; i++)
        if (chosen[i] >= 0) offsets[chosen[i] + 2]++;
    for (int64_t e = 0; e < experts; e++) offsets[e + 2] += offsets[e + 1];
    s->pairs = offsets[experts + 1]; /* offsets[e + 1]: next free slot of expert e */
    s->xs = malloc((s->pairs * d + s->pairs * F + 1) * sizeof *s->xs);
    if (!s->xs) goto fail;
    s->h = s->xs + s->pairs * d;
    for (int64_t i = 0; i < tokens * k; i++) {
        if (chosen[i] < 0) continue;
        int64_t p = offsets[chosen[i] + 1]++;
        s->token[p] = i / k;
        s->weight[p] = scores[i];
        memcpy(s->xs + p * d, x + (i / k) * d, d * sizeof *s->xs);
    }
    return 0;
fail:
    hagmoe_free_pairs(s);
    return -1;
}

void hagmoe_free_pairs(hagmoe_pairs *s) {
    free(s->offsets);
    free(s->token);
    free(s->weight);
    free(s->xs);
    memset(s, 0, sizeof *s);
}

/* One MoE layer: out [T, d] += sum_k scores[t, k] * E_{experts[t, k]}(x[t]) for x [T, d],
 * experts / scores [T, K] (expert -1: no expert). Returns 0, or -1 when scratch memory ran out. */
int hagmoe_moe_swiglu(const float *x, const int64_t *chosen, const float *scores, int64_t tokens,
                      int64_t k, const float *gate_up, const float *down, float *out,
                      int64_t experts, int64_t d, int64_t F, int threads) {
    hagmoe_pairs s;
    if (hagmoe_sort_pairs(&s, x, chosen, scores, tokens, k, experts, d, F) != 0) return -1;
    swiglu_pairs(s.xs, s.token, s.weight, s.offsets, gate_up, down, s.h, out, experts, d, F,
                 threads);
    hagmoe_free_pairs(&s);
    return 0;
}

/* The attention router's sums for query rows r = (b, i) at positions query_pos [B, Q] over their
 * sequences' cached routing values rv [num_slots, G + N], keys j <= pos through
 * block_table [B, nb]:
 *   z[r, :G] = sum_j a_c[r, j] rv[j, :G],  z[r, G:] = sum_j a_f[r, j] rv[j, G:],
 *   entropy[r] = -sum_j a_c[r, j] log a_c[r, j]   (0 log 0 = 0)
 * a_c, a_f rows of length nb * bs at b * stride_b + i * stride_q; rows with valid[r] == 0
 * (valid may be NULL) are zero. */
void hagmoe_route_sums(const float *a_c, const float *a_f, int64_t stride_b, int64_t stride_q,
                       const float *rv, const int64_t *block_table, const int64_t *query_pos,
                       const uint8_t *valid, float *z, float *entropy, int64_t batch,
                       int64_t rows, int64_t groups, int64_t width, int64_t blocks_per_seq,
                       int64_t bs) {
    for (int64_t r = 0; r < batch * rows; r++) {
        int64_t b = r / rows, i = r % rows;
        const float *pc = a_c + b * stride_b + i * stride_q, *pf = a_f + b * stride_b + i * stride_q;
        const int64_t *table = block_table + b * blocks_per_seq;
        float *zr = z + r * width, h = 0.f;
        for (int64_t c = 0; c < width; c++) zr[c] = 0.f;
        int64_t length = valid && !valid[r] ? 0 : query_pos[r] + 1;
        for (int64_t j = 0; j < length; j++) {
            const float *row = rv + (table[j / bs] * bs + j % bs) * width;
            for (int64_t c = 0; c < groups; c++) zr[c] += pc[j] * row[c];
            for (int64_t c = groups; c < width; c++) zr[c] += pf[j] * row[c];
            if (pc[j] > 0.f) h -= pc[j] * logf(pc[j]);
        }
        entropy[r] = h;
    }
}

/* The attention router's decisions (MODEL.md) from z [T, G + N] (z_g, then every group's expert
 * logits), the coarse entropy [T] and each token's position [T]:
 *   group[t] = argmax z_g (first on ties), p = softmax of the group's M expert logits,
 *   hn[t] = entropy / log(pos + 1) (0 at pos 0),
 *   k[t] = clamp(k_min + floor((k_max - k_min) sigmoid(alpha (hn - mu))), k_min, k_max),
 *   or k_fixed when > 0; experts / scores [T, k_max]: the k best of p (ties: lower index) as
 *   global ids, then -1 / 0. */
void hagmoe_route_decide(const float *z, const float *entropy, const int64_t *positions,
                         int64_t *group, int64_t *experts, float *scores, int64_t *k_out,
                         float *hn_out, int64_t tokens, int64_t groups, int64_t per_group,
                         int64_t k_min, int64_t k_max, float alpha, float mu, int64_t k_fixed) {
    float p[per_group];
    for (int64_t t = 0; t < tokens; t++) {
        const float *zt = z + t * (groups + groups * per_group);
        int64_t g = 0;
        for (int64_t i = 1; i < groups; i++) g = zt[i] > zt[g] ? i : g;
        const float *ze = zt + groups + g * per_group;
        float top = ze[0], total = 0.f;
        for (int64_t i = 1; i < per_group; i++) top = ze[i] > top ? ze[i] : top;
        for (int64_t i = 0; i < per_group; i++) total += p[i] = expf(ze[i] - top);
        for (int64_t i = 0; i < per_group; i++) p[i] /= total;
        float hn = positions[t] >= 1 ? entropy[t] / logf((float)(positions[t] + 1)) : 0.f;
        int64_t k = k_fixed;
        if (k <= 0) {
            float gate = 1.f / (1.f + expf(-alpha * (hn - mu)));
            k = k_min + (int64_t)floorf((float)(k_max - k_min) * gate);
            k = k < k_min ? k_min : (k > k_max ? k_max : k);
        }
        group[t] = g, k_out[t] = k, hn_out[t] = hn;
        for (int64_t slot = 0; slot < k_max; slot++) { /* selection: best remaining, lowest index */
            int64_t best = -1;
            for (int64_t i = 0; i < per_group; i++)
                if (p[i] >= 0.f && (best < 0 || p[i] > p[best])) best = i;
            int use = slot < k && best >= 0;
            experts[t * k_max + slot] = use ? g * per_group + best : -1;
            scores[t * k_max + slot] = use ? p[best] : 0.f;
            if (best >= 0) p[best] = -1.f;
        }
    }
}
