/* The engine's float32 CPU kernels, called from mooncake/engine/native.py: decode and
 * prefill attention over the paged KV cache, residual add + RMSNorm, rotary embedding,
 * SiLU-and-mul.
 *
 * Decode attention read in place from the paged KV cache.
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

typedef float v16 __attribute__((vector_size(64)));
typedef int32_t vi16 __attribute__((vector_size(64)));

static inline v16 ld16(const float *p) { v16 r; memcpy(&r, p, sizeof r); return r; }
static inline void st16(float *p, v16 x) { memcpy(p, &x, sizeof x); }
static inline v16 vmax(v16 a, v16 b) { vi16 m = a > b; return (v16)(((vi16)a & m) | ((vi16)b & ~m)); }
/* horizontal max / sum in log steps (lane 0 holds the result) */
static inline float hmax16(v16 x) {
    x = vmax(x, __builtin_shuffle(x, (vi16){8, 9, 10, 11, 12, 13, 14, 15, 0, 1, 2, 3, 4, 5, 6, 7}));
    x = vmax(x, __builtin_shuffle(x, (vi16){4, 5, 6, 7, 0, 1, 2, 3, 12, 13, 14, 15, 8, 9, 10, 11}));
    x = vmax(x, __builtin_shuffle(x, (vi16){2, 3, 0, 1, 6, 7, 4, 5, 10, 11, 8, 9, 14, 15, 12, 13}));
    x = vmax(x, __builtin_shuffle(x, (vi16){1, 0, 3, 2, 5, 4, 7, 6, 9, 8, 11, 10, 13, 12, 15, 14}));
    return x[0];
}
static inline float hsum16(v16 x) {
    x += __builtin_shuffle(x, (vi16){8, 9, 10, 11, 12, 13, 14, 15, 0, 1, 2, 3, 4, 5, 6, 7});
    x += __builtin_shuffle(x, (vi16){4, 5, 6, 7, 0, 1, 2, 3, 12, 13, 14, 15, 8, 9, 10, 11});
    x += __builtin_shuffle(x, (vi16){2, 3, 0, 1, 6, 7, 4, 5, 10, 11, 8, 9, 14, 15, 12, 13});
    x += __builtin_shuffle(x, (vi16){1, 0, 3, 2, 5, 4, 7, 6, 9, 8, 11, 10, 13, 12, 15, 14});
    return x[0];
}

static inline v16 vexp_neg(v16 x) {
    /* e^x for x <= 0, lane-wise, same polynomial as exp_neg */
    const v16 lo = (v16){0} - 87.0f;
    x = (v16)((vi16)((x < lo) & (vi16)lo) | (vi16)((x >= lo) & (vi16)x));
    v16 t = x * 1.44269504088896341f;
    vi16 n = __builtin_convertvector(t - 0.5f, vi16); /* t <= 0: rounds to nearest */
    v16 f = (t - __builtin_convertvector(n, v16)) * 0.69314718055994531f;
    v16 p = 1.0f + f * (1.0f + f * (0.5f + f * (1.0f / 6 + f * (1.0f / 24 + f * (1.0f / 120 + f * (1.0f / 720 + f * (1.0f / 5040)))))));
    vi16 bits = (n + 127) << 23;
    return p * (v16)bits;
}


/* lane j of the result = sum of the 16 lanes of p[j]: a transpose-and-add tree, ~45
 * vector ops for 16 dot products instead of 16 separate horizontal sums */
static inline v16 reduce16x16(const v16 *p) {
    v16 y[8], z[4], w[2];
    for (int i = 0; i < 8; ++i)
        y[i] = __builtin_shuffle(p[2 * i], p[2 * i + 1], (vi16){0, 1, 2, 3, 4, 5, 6, 7, 16, 17, 18, 19, 20, 21, 22, 23})
             + __builtin_shuffle(p[2 * i], p[2 * i + 1], (vi16){8, 9, 10, 11, 12, 13, 14, 15, 24, 25, 26, 27, 28, 29, 30, 31});
    for (int i = 0; i < 4; ++i)
        z[i] = __builtin_shuffle(y[2 * i], y[2 * i + 1], (vi16){0, 1, 2, 3, 8, 9, 10, 11, 16, 17, 18, 19, 24, 25, 26, 27})
             + __builtin_shuffle(y[2 * i], y[2 * i + 1], (vi16){4, 5, 6, 7, 12, 13, 14, 15, 20, 21, 22, 23, 28, 29, 30, 31});
    for (int i = 0; i < 2; ++i)
        w[i] = __builtin_shuffle(z[2 * i], z[2 * i + 1], (vi16){0, 1, 4, 5, 8, 9, 12, 13, 16, 17, 20, 21, 24, 25, 28, 29})
             + __builtin_shuffle(z[2 * i], z[2 * i + 1], (vi16){2, 3, 6, 7, 10, 11, 14, 15, 18, 19, 22, 23, 26, 27, 30, 31});
    return __builtin_shuffle(w[0], w[1], (vi16){0, 2, 4, 6, 8, 10, 12, 14, 16, 18, 20, 22, 24, 26, 28, 30})
         + __builtin_shuffle(w[0], w[1], (vi16){1, 3, 5, 7, 9, 11, 13, 15, 17, 19, 21, 23, 25, 27, 29, 31});
}

/* One (sequence, KV head) of decode, head_dim a multiple of 16: scores 16 tokens at a
 * time (partial dot-product vectors reduced together), vector softmax, and the value sum
 * with the output row in registers. ND = head_dim / 16 (constant in the fast paths). */
static inline void decode_item_vec(
    const float *qh, const float *k, const float *v, const int64_t *offs, int64_t n,
    float *o, int64_t G, const int64_t ND, float scale, float *scores /* G * n_pad */)
{
    const int64_t D = ND * 16, n_pad = (n + 15) / 16 * 16;
    const v16 ninf = (v16){0} - __builtin_inff();
    for (int64_t g = 0; g < G; ++g) {
        const float *qg = qh + g * D;
        v16 qv[16];
        for (int64_t c = 0; c < ND; ++c) qv[c] = ld16(qg + 16 * c) * scale;
        float *sg = scores + g * n_pad;
        v16 mx = ninf;
        for (int64_t i0 = 0; i0 < n; i0 += 16) {
            v16 part[16];
            const int64_t cnt = n - i0 < 16 ? n - i0 : 16;
            for (int64_t j = 0; j < 16; ++j) {
                v16 a = {0};
                if (j < cnt) {
                    const float *kp = k + offs[i0 + j];
                    for (int64_t c = 0; c < ND; ++c) a += qv[c] * ld16(kp + 16 * c);
                }
                part[j] = a;
            }
            v16 sv = reduce16x16(part);
            if (cnt < 16)
                for (int64_t j = cnt; j < 16; ++j) sv[j] = -__builtin_inff();
            st16(sg + i0, sv);
            mx = vmax(mx, sv);
        }
        const float m = hmax16(mx);
        v16 sum = {0};
        for (int64_t i0 = 0; i0 < n; i0 += 16) {
            const v16 e = vexp_neg(ld16(sg + i0) - m);
            vi16 keep = {0};
            for (int j = 0; j < 16; ++j) keep[j] = i0 + j < n ? -1 : 0;
            const v16 pe = (v16)((vi16)e & keep);
            st16(sg + i0, pe);
            sum += pe;
        }
        const float inv = 1.0f / hsum16(sum);
#if defined(__AVX512F__)
        const int64_t CB = ND; /* the whole output row in (up to 16) registers */
#else
        const int64_t CB = ND < 4 ? ND : 4; /* 16 ymm registers: 64 columns per pass */
#endif
        for (int64_t c0 = 0; c0 < ND; c0 += CB) {
            /* a constant when CB divides ND (the fast paths), so acc stays in registers */
            const int64_t cn = ND % CB == 0 ? CB : (ND - c0 < CB ? ND - c0 : CB);
            v16 acc[16];
            for (int64_t c = 0; c < cn; ++c) acc[c] = (v16){0};
            for (int64_t i = 0; i < n; ++i) {
                const float pi = sg[i];
                const float *vp = v + offs[i] + 16 * c0;
                for (int64_t c = 0; c < cn; ++c) acc[c] += ld16(vp + 16 * c) * pi;
            }
            for (int64_t c = 0; c < cn; ++c) st16(o + g * D + 16 * (c0 + c), acc[c] * inv);
        }
    }
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
        const int64_t ctx_pad = (max_ctx > 0 ? max_ctx : 1) + 16;
        float *scores = (float *)malloc(sizeof(float) * (size_t)(G * ctx_pad));
        float *acc = (float *)malloc(sizeof(float) * (size_t)(G * D));
        int64_t *offs = (int64_t *)malloc(sizeof(int64_t) * (size_t)(max_ctx > 0 ? max_ctx : 1));
        if (!scores || !acc || !offs) {
#pragma omp atomic write
            failed = 2;
        }
#pragma omp for schedule(dynamic, 1)
        for (int64_t w = 0; w < B * Hkv; ++w) {
            if (!scores || !acc || !offs) continue;
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

            /* offs[i]: where token lo + i of head h starts in k / v */
            for (int64_t blk = lo / block_size; blk * block_size < n_ctx; ++blk) {
                const int64_t t0 = blk * block_size > lo ? blk * block_size : lo;
                const int64_t t1 = (blk + 1) * block_size < n_ctx ? (blk + 1) * block_size : n_ctx;
                const int64_t base = bt[blk] * block_size - blk * block_size;
                for (int64_t t = t0; t < t1; ++t) offs[t - lo] = ((base + t) * Hkv + h) * D;
            }

            if (D % 16 == 0 && D <= 256) {
                if (D == 64) decode_item_vec(qh, k, v, offs, n, o, G, 4, scale, scores);
                else if (D == 128) decode_item_vec(qh, k, v, offs, n, o, G, 8, scale, scores);
                else decode_item_vec(qh, k, v, offs, n, o, G, D / 16, scale, scores);
                continue;
            }

            /* other head sizes, scalar: scores[g][i] = (q_g . k_i) * scale */
            for (int64_t i = 0; i < n; ++i) {
                const float *kp = k + offs[i];
                for (int64_t g = 0; g < G; ++g) {
                    const float *qg = qh + g * D;
                    float s = 0.0f;
#pragma omp simd reduction(+ : s)
                    for (int64_t d = 0; d < D; ++d) s += qg[d] * kp[d];
                    scores[g * n + i] = s * scale;
                }
            }

            /* softmax per query row; the 1/sum is applied at the end */
            float inv[64];
            float *inv_p = G <= 64 ? inv : (float *)malloc(sizeof(float) * (size_t)G);
            for (int64_t g = 0; g < G; ++g) {
                float *sg = scores + g * n;
                float m = sg[0];
#pragma omp simd reduction(max : m)
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

            /* acc[g] = sum_i p[g][i] * v_i */
            for (int64_t i = 0; i < G * D; ++i) acc[i] = 0.0f;
            for (int64_t i = 0; i < n; ++i) {
                const float *vp = v + offs[i];
                for (int64_t g = 0; g < G; ++g) {
                    const float p = scores[g * n + i];
                    float *ag = acc + g * D;
#pragma omp simd
                    for (int64_t d = 0; d < D; ++d) ag[d] += p * vp[d];
                }
            }
            for (int64_t g = 0; g < G; ++g)
                for (int64_t d = 0; d < D; ++d) o[g * D + d] = acc[g * D + d] * inv_p[g];
            if (inv_p != inv) free(inv_p);
        }
        free(scores);
        free(acc);
        free(offs);
    }
    return failed;
}

/* ---------------------------------------------------------------------------------
 * Prefill attention of one sequence's chunk, read in place from the paged cache.
 *
 * The chunk's n query tokens sit at positions ctx-n .. ctx-1; their own K/V are already
 * in the cache, so every key (cached prefix and chunk alike) is read through the block
 * table. Work items are (KV head, TQ query tokens): the G query heads of the KV head form
 * R = TQ*G rows. Their keys are taken KC at a time; for each such key chunk:
 *   1. S = Q K^T for the R rows (8 rows x 32 keys register tiles over K transposed once
 *      per call: the inner loop is one K vector pair and eight broadcasts per 16 FMAs);
 *   2. softmax on whole rows of S: one max per row and chunk (the output and the sum are
 *      rescaled only when it grows), exp in place, the causal / window mask applied only
 *      to the vectors that straddle a row's boundary (the others need none);
 *   3. O += P V, 4 rows x 64 columns of accumulators, 32 keys at a time.
 * The scores of a chunk stay in L2 (R*KC floats); no [n, ctx] matrix is built and no K/V
 * is gathered into a copy. Compared with an online softmax per 32-key tile this does one
 * horizontal max per row per KC keys instead of per 32 and no masking in the interior
 * of the causal triangle.
 *
 * Layouts: q [n, Hq, D] rows q_stride floats apart; out [n, Hq, D] rows out_stride apart;
 * table: block ids covering ctx tokens. Needs D % 16 == 0 and D <= 256 (returns 1
 * otherwise: the caller falls back to SDPA).
 */
#define TQ 16
#define TK 32  /* keys per register tile: two vectors */
#define KC 256 /* keys per softmax chunk */

#if defined(__AVX512F__)
#include <immintrin.h>
/* e^x for x <= 0, lane-wise: the polynomial of vexp_neg, with the power of two applied by
 * vscalefps (no integer round trip); -inf and anything below -87 give e^-87 (~1.6e-38),
 * which callers mask where it must be exactly 0 */
static inline v16 vexp_le0(v16 x) {
    const __m512 xc = _mm512_max_ps((__m512)x, _mm512_set1_ps(-87.0f));
    const __m512 t = _mm512_mul_ps(xc, _mm512_set1_ps(1.44269504088896341f));
    const __m512 n = _mm512_roundscale_ps(t, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    const v16 f = (v16)_mm512_sub_ps(t, n) * 0.69314718055994531f;
    const v16 p = 1.0f + f * (1.0f + f * (0.5f + f * (1.0f / 6 + f * (1.0f / 24 + f * (1.0f / 120 + f * (1.0f / 720 + f * (1.0f / 5040)))))));
    return (v16)_mm512_scalef_ps((__m512)p, n);
}
#else
#define vexp_le0 vexp_neg
#endif

int mc_paged_prefill_f32(
    const float *q, int64_t q_stride,
    const float *k, const float *v,
    const int64_t *table,
    int64_t n, int64_t ctx,
    float *out, int64_t out_stride,
    int64_t Hq, int64_t Hkv, int64_t D,
    int64_t block_size, int64_t window, float scale, int num_threads)
{
    if (Hkv <= 0 || Hq % Hkv != 0 || D % 16 != 0 || D <= 0 || D > 256 || block_size <= 0 || n <= 0 || n > ctx) return 1;
    const int64_t G = Hq / Hkv, R = TQ * G; /* R is a multiple of 16 */
    const int64_t n_qt = (n + TQ - 1) / TQ, n_kt = (ctx + TK - 1) / TK;
    const int64_t row_stride = Hkv * D; /* floats between consecutive cache slots */
    /* K transposed once per call, tile by tile: kt_all[h][tile][d][TK]; keys past ctx are 0 */
    float *kt_all = (float *)aligned_alloc(64, sizeof(float) * (size_t)(Hkv * n_kt * D * TK));
    float *zero_row = (float *)aligned_alloc(64, sizeof(float) * (size_t)D);
    float *vp_all = (float *)aligned_alloc(64, sizeof(float) * (size_t)(Hkv * n_kt * TK * D)); /* [h][tok][D], 0 past ctx */
    int64_t *slot = (int64_t *)malloc(sizeof(int64_t) * (size_t)ctx); /* cache slot of each token */
    if (!kt_all || !zero_row || !slot || !vp_all) { free(kt_all); free(zero_row); free(slot); free(vp_all); return 2; }
    memset(zero_row, 0, sizeof(float) * (size_t)D);
    for (int64_t tok = 0; tok < ctx; ++tok) slot[tok] = table[tok / block_size] * block_size + tok % block_size;
    int failed = 0;

#pragma omp parallel num_threads(num_threads)
    {
#pragma omp for schedule(static)
        for (int64_t w = 0; w < Hkv * n_kt; ++w) {
            const int64_t h = w / n_kt, tile = w % n_kt;
            float *kt = kt_all + w * D * TK;
            for (int64_t j = 0; j < TK; ++j) {
                const int64_t tok = tile * TK + j;
                float *vd = vp_all + (h * n_kt * TK + tok) * D;
                if (tok < ctx) {
                    const float *kp = k + slot[tok] * row_stride + h * D;
                    for (int64_t d = 0; d < D; ++d) kt[d * TK + j] = kp[d];
                    memcpy(vd, v + slot[tok] * row_stride + h * D, sizeof(float) * (size_t)D);
                } else {
                    for (int64_t d = 0; d < D; ++d) kt[d * TK + j] = 0.0f;
                    memset(vd, 0, sizeof(float) * (size_t)D);
                }
            }
        }

        float *qs = (float *)aligned_alloc(64, sizeof(float) * (size_t)(R * D));
        float *o = (float *)aligned_alloc(64, sizeof(float) * (size_t)(R * D));
        float *s = (float *)aligned_alloc(64, sizeof(float) * (size_t)(R * KC));
        float *m = (float *)malloc(sizeof(float) * (size_t)R);
        float *l = (float *)malloc(sizeof(float) * (size_t)R);
        int ok = qs && o && s && m && l;
        if (!ok) {
#pragma omp atomic write
            failed = 2;
        }
#pragma omp for schedule(dynamic, 1)
        for (int64_t it = 0; it < Hkv * n_qt; ++it) {
            if (!ok) continue;
            /* one KV head after the other, so the threads share its K and V in cache (all
             * heads' K and V of a long prompt exceed L2); last query tiles (the most keys)
             * first, for balance */
            const int64_t h = it / n_qt, qt = n_qt - 1 - it % n_qt;
            const int64_t t0 = qt * TQ;
            const int64_t nt = n - t0 < TQ ? n - t0 : TQ;
            const int64_t pos0 = ctx - n + t0; /* position of the tile's first query */
            const int64_t key_hi = pos0 + nt;  /* exclusive */
            int64_t key_lo = 0;
            if (window > 0 && pos0 - window + 1 > 0) key_lo = pos0 - window + 1;

            /* rows r = t * G + g; rows of missing tokens (t >= nt) are zero and discarded */
            for (int64_t t = 0; t < TQ; ++t)
                for (int64_t g = 0; g < G; ++g) {
                    float *dst = qs + (t * G + g) * D;
                    if (t < nt) {
                        const float *src = q + (t0 + t) * q_stride + (h * G + g) * D;
                        for (int64_t d = 0; d < D; ++d) dst[d] = src[d] * scale;
                    } else {
                        memset(dst, 0, sizeof(float) * (size_t)D);
                    }
                }
            memset(o, 0, sizeof(float) * (size_t)(R * D));
            for (int64_t r = 0; r < R; ++r) { m[r] = -__builtin_inff(); l[r] = 0.0f; }

            for (int64_t c0 = key_lo / TK * TK; c0 < key_hi; c0 += KC) {
                const int64_t c1 = c0 + KC < key_hi ? c0 + KC : key_hi;
                const int64_t nk = (c1 - c0 + TK - 1) / TK * TK; /* keys of the chunk, whole tiles */

                /* 1. S = Qs Kt, 8 rows x 32 keys at a time (4 rows x 16 keys on AVX2) */
                for (int64_t kb = 0; kb < nk; kb += TK) {
                    const float *kt = kt_all + (h * n_kt + (c0 + kb) / TK) * D * TK;
#if !defined(__AVX512F__)
                    /* 16 ymm registers, and a v16 takes two: 4 rows x 16 keys keep their 8
                     * accumulators, the K vector and a broadcast in registers (the 8 x 32
                     * tile below would need 36 and spill on every FMA) */
                    for (int64_t r = 0; r < R; r += 4)
                        for (int64_t half = 0; half < TK; half += 16) {
                            v16 a0 = {0}, a1 = {0}, a2 = {0}, a3 = {0};
                            const float *q0 = qs + r * D;
                            for (int64_t d = 0; d < D; ++d) {
                                const v16 ka = ld16(kt + d * TK + half);
                                a0 += ka * q0[d]; a1 += ka * q0[D + d]; a2 += ka * q0[2 * D + d]; a3 += ka * q0[3 * D + d];
                            }
                            float *s0 = s + r * KC + kb + half;
                            st16(s0, a0); st16(s0 + KC, a1); st16(s0 + 2 * KC, a2); st16(s0 + 3 * KC, a3);
                        }
                    continue;
#endif
                    for (int64_t r = 0; r < R; r += 8) {
                        v16 a0 = {0}, a1 = {0}, a2 = {0}, a3 = {0}, a4 = {0}, a5 = {0}, a6 = {0}, a7 = {0};
                        v16 b0 = {0}, b1 = {0}, b2 = {0}, b3 = {0}, b4 = {0}, b5 = {0}, b6 = {0}, b7 = {0};
                        const float *q0 = qs + r * D;
                        for (int64_t d = 0; d < D; ++d) {
                            const v16 ka = ld16(kt + d * TK), kb2 = ld16(kt + d * TK + 16);
                            const float x0 = q0[d], x1 = q0[D + d], x2 = q0[2 * D + d], x3 = q0[3 * D + d];
                            const float x4 = q0[4 * D + d], x5 = q0[5 * D + d], x6 = q0[6 * D + d], x7 = q0[7 * D + d];
                            a0 += ka * x0; b0 += kb2 * x0; a1 += ka * x1; b1 += kb2 * x1;
                            a2 += ka * x2; b2 += kb2 * x2; a3 += ka * x3; b3 += kb2 * x3;
                            a4 += ka * x4; b4 += kb2 * x4; a5 += ka * x5; b5 += kb2 * x5;
                            a6 += ka * x6; b6 += kb2 * x6; a7 += ka * x7; b7 += kb2 * x7;
                        }
                        float *s0 = s + r * KC + kb;
                        st16(s0, a0); st16(s0 + 16, b0); st16(s0 + KC, a1); st16(s0 + KC + 16, b1);
                        st16(s0 + 2 * KC, a2); st16(s0 + 2 * KC + 16, b2); st16(s0 + 3 * KC, a3); st16(s0 + 3 * KC + 16, b3);
                        st16(s0 + 4 * KC, a4); st16(s0 + 4 * KC + 16, b4); st16(s0 + 5 * KC, a5); st16(s0 + 5 * KC + 16, b5);
                        st16(s0 + 6 * KC, a6); st16(s0 + 6 * KC + 16, b6); st16(s0 + 7 * KC, a7); st16(s0 + 7 * KC + 16, b7);
                    }
                }

                /* 2. softmax per row over the chunk; row r sees keys [vis_lo, vis_hi) */
                vi16 iota;
                for (int j = 0; j < 16; ++j) iota[j] = j;
                for (int64_t r = 0; r < R; ++r) {
                    const int64_t p = pos0 + r / G;
                    const int64_t vis_hi = p + 1 < key_hi ? p + 1 : key_hi;
                    const int64_t vis_lo = window > 0 && p - window + 1 > 0 ? p - window + 1 : 0;
                    float *sr = s + r * KC;
                    /* vectors [f_lo, f_hi) lie wholly inside the visible range */
                    const int64_t f_lo = vis_lo <= c0 ? 0 : (vis_lo - c0 + 15) / 16;
                    const int64_t f_hi = vis_hi >= c0 + nk ? nk / 16 : (vis_hi > c0 ? (vis_hi - c0) / 16 : 0);
                    v16 mx = (v16){0} - __builtin_inff();
                    for (int64_t i = 0; i < nk / 16; ++i) {
                        const v16 x = ld16(sr + 16 * i);
                        if (i >= f_lo && i < f_hi) { mx = vmax(mx, x); continue; }
                        const vi16 key = iota + (int32_t)(c0 + 16 * i);
                        const vi16 in = (key >= (int32_t)vis_lo) & (key < (int32_t)vis_hi);
                        mx = vmax(mx, (v16)(((vi16)x & in) | ((vi16)mx & ~in)));
                    }
                    const float cmax = hmax16(mx);
                    if (cmax == -__builtin_inff()) { /* no visible key in this chunk */
                        memset(sr, 0, sizeof(float) * (size_t)nk);
                        continue;
                    }
                    if (cmax > m[r]) {
                        if (m[r] != -__builtin_inff()) {
                            const float corr = exp_neg(m[r] - cmax);
                            l[r] *= corr;
                            float *orow = o + r * D;
                            for (int64_t c = 0; c < D; c += 16) st16(orow + c, ld16(orow + c) * corr);
                        }
                        m[r] = cmax;
                    }
                    const float mr = m[r];
                    v16 sum = {0};
                    for (int64_t i = 0; i < nk / 16; ++i) {
                        v16 e = vexp_le0(ld16(sr + 16 * i) - mr);
                        if (i < f_lo || i >= f_hi) {
                            const vi16 key = iota + (int32_t)(c0 + 16 * i);
                            e = (v16)((vi16)e & ((key >= (int32_t)vis_lo) & (key < (int32_t)vis_hi)));
                        }
                        st16(sr + 16 * i, e);
                        sum += e;
                    }
                    l[r] += hsum16(sum);
                }

                /* 3. O += P V, 32 keys at a time */
                for (int64_t kb = 0; kb < nk; kb += TK) {
                    const float *vrow[TK];
                    for (int64_t j = 0; j < TK; ++j) {
                        const int64_t tok = c0 + kb + j;
                        vrow[j] = vp_all + (h * n_kt * TK + tok) * D;
                    }
                    int64_t dc = 0;
#if defined(__AVX512F__)
                    for (; dc + 64 <= D; dc += 64) { /* 4 rows x 64 columns of accumulators */
                        for (int64_t r = 0; r < R; r += 4) {
                            float *o0 = o + r * D + dc;
                            v16 c00 = ld16(o0), c01 = ld16(o0 + 16), c02 = ld16(o0 + 32), c03 = ld16(o0 + 48);
                            v16 c10 = ld16(o0 + D), c11 = ld16(o0 + D + 16), c12 = ld16(o0 + D + 32), c13 = ld16(o0 + D + 48);
                            v16 c20 = ld16(o0 + 2 * D), c21 = ld16(o0 + 2 * D + 16), c22 = ld16(o0 + 2 * D + 32), c23 = ld16(o0 + 2 * D + 48);
                            v16 c30 = ld16(o0 + 3 * D), c31 = ld16(o0 + 3 * D + 16), c32 = ld16(o0 + 3 * D + 32), c33 = ld16(o0 + 3 * D + 48);
                            const float *p0 = s + r * KC + kb;
                            for (int64_t j = 0; j < TK; ++j) {
                                const float *vp = vrow[j] + dc;
                                const v16 v0 = ld16(vp), v1 = ld16(vp + 16), v2 = ld16(vp + 32), v3 = ld16(vp + 48);
                                const float w0 = p0[j], w1 = p0[KC + j], w2 = p0[2 * KC + j], w3 = p0[3 * KC + j];
                                c00 += v0 * w0; c01 += v1 * w0; c02 += v2 * w0; c03 += v3 * w0;
                                c10 += v0 * w1; c11 += v1 * w1; c12 += v2 * w1; c13 += v3 * w1;
                                c20 += v0 * w2; c21 += v1 * w2; c22 += v2 * w2; c23 += v3 * w2;
                                c30 += v0 * w3; c31 += v1 * w3; c32 += v2 * w3; c33 += v3 * w3;
                            }
                            st16(o0, c00); st16(o0 + 16, c01); st16(o0 + 32, c02); st16(o0 + 48, c03);
                            st16(o0 + D, c10); st16(o0 + D + 16, c11); st16(o0 + D + 32, c12); st16(o0 + D + 48, c13);
                            st16(o0 + 2 * D, c20); st16(o0 + 2 * D + 16, c21); st16(o0 + 2 * D + 32, c22); st16(o0 + 2 * D + 48, c23);
                            st16(o0 + 3 * D, c30); st16(o0 + 3 * D + 16, c31); st16(o0 + 3 * D + 32, c32); st16(o0 + 3 * D + 48, c33);
                        }
                    }
#endif
                    /* head_dim not a multiple of 64 (and every head on AVX2, whose 16 registers
                     * hold 4 rows x 16 columns but not the 4 x 64 tile): 16 columns at a time */
                    for (; dc < D; dc += 16) {
#if !defined(__AVX512F__)
                        for (int64_t r = 0; r < R; r += 4) {
                            float *o0 = o + r * D + dc;
                            v16 c0 = ld16(o0), c1 = ld16(o0 + D), c2 = ld16(o0 + 2 * D), c3 = ld16(o0 + 3 * D);
                            const float *p0 = s + r * KC + kb;
                            for (int64_t j = 0; j < TK; ++j) {
                                const v16 vv = ld16(vrow[j] + dc);
                                c0 += vv * p0[j]; c1 += vv * p0[KC + j]; c2 += vv * p0[2 * KC + j]; c3 += vv * p0[3 * KC + j];
                            }
                            st16(o0, c0); st16(o0 + D, c1); st16(o0 + 2 * D, c2); st16(o0 + 3 * D, c3);
                        }
                        continue;
#endif
                        for (int64_t r = 0; r < R; ++r) {
                            v16 c = ld16(o + r * D + dc);
                            for (int64_t j = 0; j < TK; ++j) c += ld16(vrow[j] + dc) * s[r * KC + kb + j];
                            st16(o + r * D + dc, c);
                        }
                    }
                }
            }
            for (int64_t t = 0; t < nt; ++t)
                for (int64_t g = 0; g < G; ++g) {
                    const int64_t r = t * G + g;
                    const float inv = l[r] > 0.0f ? 1.0f / l[r] : 0.0f;
                    float *dst = out + (t0 + t) * out_stride + (h * G + g) * D;
                    for (int64_t d = 0; d < D; ++d) dst[d] = o[r * D + d] * inv;
                }
        }
        free(qs); free(o); free(s); free(m); free(l);
    }
    free(kt_all);
    free(zero_row);
    free(slot);
    free(vp_all);
    return failed;
}

/* ---------------------------------------------------------------------------------
 * RMSNorm, optionally fused with the residual add before it (float32, rows of H):
 *   if add: x += add (in place);  out = weight * (x * rsqrt(mean(x^2) + eps))
 * The same order of operations as transformers' LlamaRMSNorm; one read of x for the
 * statistics and one for the output instead of the five passes of the torch ops.
 */
int mc_add_rmsnorm_f32(float *x, const float *add, float *out, const float *weight,
                       int64_t T, int64_t H, float eps, int num_threads)
{
    if (H <= 0) return 1;
#pragma omp parallel for schedule(static) num_threads(num_threads)
    for (int64_t t = 0; t < T; ++t) {
        float *xr = x + t * H;
        float ss = 0.0f;
        if (add) {
            const float *ar = add + t * H;
#pragma omp simd reduction(+ : ss)
            for (int64_t i = 0; i < H; ++i) { const float y = xr[i] + ar[i]; xr[i] = y; ss += y * y; }
        } else {
#pragma omp simd reduction(+ : ss)
            for (int64_t i = 0; i < H; ++i) ss += xr[i] * xr[i];
        }
        const float r = 1.0f / __builtin_sqrtf(ss / (float)H + eps);
        float *orow = out + t * H;
#pragma omp simd
        for (int64_t i = 0; i < H; ++i) orow[i] = weight[i] * (xr[i] * r);
    }
    return 0;
}

/* ---------------------------------------------------------------------------------
 * Rotary embedding of q and k together: x [T, H, D] (token rows x_stride floats apart,
 * each token's heads contiguous) into out [T, H, D] contiguous:
 *   out = x * cos + swap_halves(x) * sin      (sin carries rotate_half's sign)
 * cos, sin: [T, D] contiguous (the step's table rows).
 */
int mc_rope_f32(const float *x, int64_t x_stride, const float *cos, const float *sin, float *out,
                int64_t T, int64_t H, int64_t D, int num_threads)
{
    if (D % 2 != 0) return 1;
    const int64_t half = D / 2;
#pragma omp parallel for schedule(static) num_threads(num_threads)
    for (int64_t t = 0; t < T; ++t) {
        const float *c = cos + t * D, *s = sin + t * D;
        for (int64_t h = 0; h < H; ++h) {
            const float *xr = x + t * x_stride + h * D;
            float *o = out + (t * H + h) * D;
#pragma omp simd
            for (int64_t d = 0; d < half; ++d) o[d] = xr[d] * c[d] + xr[d + half] * s[d];
#pragma omp simd
            for (int64_t d = half; d < D; ++d) o[d] = xr[d] * c[d] + xr[d - half] * s[d];
        }
    }
    return 0;
}

/* SwiGLU's activation in place: gate <- silu(gate) * up, for gate and up the two halves
 * of each row of the fused gate/up projection ([T, 2I], rows 2I floats apart). */
int mc_silu_mul_f32(float *gate_up, int64_t T, int64_t I, int num_threads)
{
#pragma omp parallel for schedule(static) num_threads(num_threads)
    for (int64_t t = 0; t < T; ++t) {
        float *g = gate_up + t * 2 * I;
        const float *u = g + I;
#pragma omp simd
        for (int64_t i = 0; i < I; ++i) {
            const float x = g[i];
            const float e = exp_neg(x > 0.0f ? -x : x); /* e^-|x|, never overflows */
            const float num = x > 0.0f ? x : x * e;      /* one division per element */
            g[i] = num / (1.0f + e) * u[i];
        }
    }
    return 0;
}
