/* Greedy choice over rows of logits, with the chosen token's logprob: what the sampler asks of
 * a plain greedy step, in one pass of C over logits the decode step has just written (the same
 * few torch ops after a step cost 4-8x their warm time: the step's weight stream has evicted
 * their code and data from L1 / L2). Legend: R rows, V vocabulary. */
#include "kernels.h"

/* The first maximum of x [v] (its first NaN, as torch's argmax, where it has one): LANES running
 * maxima with the index of each lane's first, then the lowest index among the lanes' best. */
static int64_t first_max(const float *x, int64_t v) {
    float top[LANES];
    int64_t at[LANES];
    int nan = 0;
    for (int l = 0; l < LANES; l++) top[l] = -INFINITY, at[l] = v;
    int64_t i = 0;
    for (; i + LANES <= v; i += LANES)
        for (int l = 0; l < LANES; l++) {
            float y = x[i + l];
            nan |= y != y;
            at[l] = y > top[l] ? i + l : at[l];
            top[l] = y > top[l] ? y : top[l];
        }
    if (nan) {
        for (int64_t j = 0; j < v; j++)
            if (isnan(x[j])) return j;
    }
    float best = -INFINITY;
    int64_t found = v;
    for (; i < v; i++) {
        if (isnan(x[i])) return i;
        if (x[i] > best) best = x[i], found = i;
    }
    for (int l = 0; l < LANES; l++)
        if (top[l] > best || (top[l] == best && at[l] < found)) best = top[l], found = at[l];
    return found == v ? 0 : found; /* all -inf: torch's argmax takes the first */
}

/* log(sum exp(x - top)) over x [v], the terms by exp_approx (2 ulp) in LANES partial sums. */
static float log_sum_exp_shifted(const float *x, int64_t v, float top) {
    vec sums = {0};
    int64_t i = 0;
    for (; i + LANES <= v; i += LANES)
        for (int l = 0; l < LANES; l++) sums[l] += exp_approx(x[i + l] - top);
    float sum = 0.f;
    for (; i < v; i++) sum += exp_approx(x[i] - top);
    for (int l = 0; l < LANES; l++) sum += sums[l];
    return logf(sum);
}

/* ids [R], logprob [R] of logits [R, V]: each row's first maximum and max - logsumexp (NaN for a
 * row with a NaN or of -inf only); rows split over `threads` from 4 rows. */
void hagmoe_greedy_logprob(const float *logits, int64_t rows, int64_t v, int64_t *ids,
                           float *logprob, int64_t threads) {
#pragma omp parallel for num_threads(threads) schedule(static) if (rows >= 4 && threads > 1)
    for (int64_t r = 0; r < rows; r++) {
        const float *x = logits + r * v;
        int64_t at = first_max(x, v);
        float top = x[at];
        ids[r] = at;
        logprob[r] = top == -INFINITY || isnan(top) ? NAN : -log_sum_exp_shifted(x, v, top);
    }
}
