/* Decode attention read in place from the paged KV cache (float32, CPU).
 *
 * One query token per sequence attends to its sequence's cached keys and values, found
 * through its block table, without first gathering them into a padded copy: the gather
 * used to cost more than the attention itself (it writes and re-reads every cached byte
 * of the batch, every layer, every step).
 *
 * Layouts (row-major, float32):
 *   q:      [B, Hq, D], rows q_stride floats apart (the fused qkv projection's view)
 *   k, v:   [num_slots, Hkv, D]; slot = block_id * block_size + offset
 *   tables: [B, table_stride] int64 block ids
 *   ctx:    [B] int64 tokens attended by each sequence (its position + 1)
 *   out:    [B, Hq, D] contiguous
 * Query heads h*G .. h*G+G-1 share KV head h (G = Hq / Hkv), as transformers' repeat_kv.
 * window > 0 limits attention to the last `window` positions (Mistral's sliding window).
 *
 * Softmax is computed exactly (max-subtracted, float32 accumulation); exp is a
 * vectorisable polynomial accurate to float precision on the reduced range.
 */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

static inline float exp_neg(float x) {
    /* e^x for x <= 0 (max-subtracted scores): 2^(x log2 e) = 2^n * 2^f, |f| <= 0.5 */
    if (x < -87.0f) x = -87.0f;
    float t = x * 1.44269504088896341f;
    float n = __builtin_rintf(t);
    float f = (t - n) * 0.69314718055994531f;  /* 2^(t-n) = e^f, |f| <= 0.347 */
    float p = 1.0f + f * (1.0f + f * (0.5f + f * (1.0f / 6 + f * (1.0f / 24 + f * (1.0f / 120 + f * (1.0f / 720 + f * (1.0f / 5040)))))));
    int32_t bits = ((int32_t)n + 127) << 23;
    float s;
    memcpy(&s, &bits, sizeof s);
    return p * s;
}

int mc_paged_decode_f32(
    const float *q, int64_t q_stride,
    const float *k, const float *v,
    const int64_t *tables, int64_t table_stride,
    const int64_t *ctx,
    float *out,
    int64_t B, int64_t Hq, int64_t Hkv, int64_t D,
    int64_t block_size, int64_t window, float scale, int64_t max_ctx, int num_threads)
{
    if (Hkv <= 0 || Hq % Hkv != 0 || D <= 0 || D > 1024 || block_size <= 0) return 1;
    const int64_t G = Hq / Hkv;
    int failed = 0;

#pragma omp parallel num_threads(num_threads)
    {
        float *scores = (float *)malloc(sizeof(float) * (size_t)(G * (max_ctx > 0 ? max_ctx : 1)));
        float *acc = (float *)malloc(sizeof(float) * (size_t)(G * D));
        if (!scores || !acc) {
#pragma omp atomic write
            failed = 2;
        }
#pragma omp for schedule(dynamic, 1)
        for (int64_t w = 0; w < B * Hkv; ++w) {
            if (!scores || !acc) continue;
            const int64_t b = w / Hkv, h = w % Hkv;
            const int64_t n_ctx = ctx[b];
            const int64_t lo = (window > 0 && n_ctx > window) ? n_ctx - window : 0;
            const int64_t n = n_ctx - lo;
            const int64_t *bt = tables + b * table_stride;
            const float *qh = q + b * q_stride + h * G * D;
            float *o = out + (b * Hq + h * G) * D;
            if (n <= 0 || n > max_ctx) {
                for (int64_t i = 0; i < G * D; ++i) o[i] = 0.0f;
                continue;
            }

            /* scores[g][t] = (q_g . k_t) * scale */
            for (int64_t blk = lo / block_size; blk * block_size < n_ctx; ++blk) {
                const int64_t t0 = blk * block_size > lo ? blk * block_size : lo;
                const int64_t t1 = (blk + 1) * block_size < n_ctx ? (blk + 1) * block_size : n_ctx;
                const int64_t base = bt[blk] * block_size - blk * block_size;
                for (int64_t t = t0; t < t1; ++t) {
                    const float *kp = k + ((base + t) * Hkv + h) * D;
                    for (int64_t g = 0; g < G; ++g) {
                        const float *qg = qh + g * D;
                        float s = 0.0f;
#pragma omp simd reduction(+ : s)
                        for (int64_t d = 0; d < D; ++d) s += qg[d] * kp[d];
                        scores[g * n + (t - lo)] = s * scale;
                    }
                }
            }

            /* softmax per query row; the 1/sum is applied at the end */
            float inv[64];
            float *inv_p = G <= 64 ? inv : (float *)malloc(sizeof(float) * (size_t)G);
            for (int64_t g = 0; g < G; ++g) {
                float *sg = scores + g * n;
                float m = sg[0];
                for (int64_t i = 1; i < n; ++i) m = sg[i] > m ? sg[i] : m;
                float sum = 0.0f;
#pragma omp simd reduction(+ : sum)
                for (int64_t i = 0; i < n; ++i) {
                    float e = exp_neg(sg[i] - m);
                    sg[i] = e;
                    sum += e;
                }
                inv_p[g] = 1.0f / sum;
            }

            /* acc[g] = sum_t p[g][t] * v_t */
            for (int64_t i = 0; i < G * D; ++i) acc[i] = 0.0f;
            for (int64_t blk = lo / block_size; blk * block_size < n_ctx; ++blk) {
                const int64_t t0 = blk * block_size > lo ? blk * block_size : lo;
                const int64_t t1 = (blk + 1) * block_size < n_ctx ? (blk + 1) * block_size : n_ctx;
                const int64_t base = bt[blk] * block_size - blk * block_size;
                for (int64_t t = t0; t < t1; ++t) {
                    const float *vp = v + ((base + t) * Hkv + h) * D;
                    for (int64_t g = 0; g < G; ++g) {
                        const float p = scores[g * n + (t - lo)];
                        float *ag = acc + g * D;
#pragma omp simd
                        for (int64_t d = 0; d < D; ++d) ag[d] += p * vp[d];
                    }
                }
            }
            for (int64_t g = 0; g < G; ++g)
                for (int64_t d = 0; d < D; ++d) o[g * D + d] = acc[g * D + d] * inv_p[g];
            if (inv_p != inv) free(inv_p);
        }
        free(scores);
        free(acc);
    }
    return failed;
}
