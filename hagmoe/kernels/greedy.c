/* Greedy choice over rows of logits, with the chosen token's logprob: what the sampler asks of
 * a plain greedy step, in one pass of C over logits the decode step has just written (the same
 * few torch ops after a step cost 4-8x their warm time: the step's weight stream has evicted
 * their code and data from L1 / L2). Legend: R rows, V vocabulary. */
#include "kernels.h"

/* ids [R], logprob [R] of logits [R, V]: each row's first maximum (its first NaN, as torch's
 * argmax, where it has one: logprob NaN) and max - log(sum exp(x - max)), the terms by
 * exp_approx (2 ulp), summed in LANES partial sums. */
void hagmoe_greedy_logprob(const float *logits, int64_t rows, int64_t v, int64_t *ids,
                           float *logprob) {
    for (int64_t r = 0; r < rows; r++) {
        const float *x = logits + r * v;
        float top = -INFINITY;
        for (int64_t i = 0; i < v; i++) top = x[i] > top || isnan(x[i]) ? x[i] : top;
        int64_t at = 0;
        while (at < v - 1 && !(x[at] == top || (isnan(top) && isnan(x[at])))) at++;
        vec sums = {0};
        int64_t i = 0;
        for (; i + LANES <= v; i += LANES)
            for (int l = 0; l < LANES; l++) sums[l] += exp_approx(x[i + l] - top);
        float sum = 0.f;
        for (; i < v; i++) sum += exp_approx(x[i] - top);
        for (int l = 0; l < LANES; l++) sum += sums[l];
        ids[r] = at;
        logprob[r] = top == -INFINITY || isnan(top) ? NAN : -logf(sum);
    }
}
