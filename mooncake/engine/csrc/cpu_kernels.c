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

/* Threads for a call of `work` element-operations: one below PAR_MIN_WORK. A parallel
 * region ends when its slowest thread does, so on a box shared with a server and a
 * worker (2 cores), a second thread that the kernel scheduler has given to another
 * process turns a microsecond of work into a time slice; a decode step's norms and
 * activations (16 rows of a few hundred values) are cheaper on the calling thread. */
#define PAR_MIN_WORK (1 << 16)
static inline int threads_for(int64_t work, int num_threads) {
    return work < PAR_MIN_WORK ? 1 : num_threads;
}

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

/* Vectors are the machine's own width: 16 floats where AVX-512 is on, 8 elsewhere. A
 * 16-float vector type on a machine without 512-bit registers is not split into register
 * pairs but kept as a 64-byte block on the stack: every use becomes loads and stores (the
 * kernels ran 5-20x slower on AVX2 that way). Register tiles are sized per width below. */
#if defined(__AVX512F__)
#define VW 16
#else
#define VW 8
#endif
typedef float vf __attribute__((vector_size(VW * 4)));
typedef int32_t vi __attribute__((vector_size(VW * 4)));

static inline vf ldv(const float *p) { vf r; memcpy(&r, p, sizeof r); return r; }
static inline void stv(float *p, vf x) { memcpy(p, &x, sizeof x); }
static inline vf vmax(vf a, vf b) { vi m = a > b; return (vf)(((vi)a & m) | ((vi)b & ~m)); }

/* lane permutations for the horizontal reductions: swap halves, quarters, ... */
#if VW == 16
#define SWAP8 (vi){8, 9, 10, 11, 12, 13, 14, 15, 0, 1, 2, 3, 4, 5, 6, 7}
#define SWAP4 (vi){4, 5, 6, 7, 0, 1, 2, 3, 12, 13, 14, 15, 8, 9, 10, 11}
#define SWAP2 (vi){2, 3, 0, 1, 6, 7, 4, 5, 10, 11, 8, 9, 14, 15, 12, 13}
#define SWAP1 (vi){1, 0, 3, 2, 5, 4, 7, 6, 9, 8, 11, 10, 13, 12, 15, 14}
#else
#define SWAP4 (vi){4, 5, 6, 7, 0, 1, 2, 3}
#define SWAP2 (vi){2, 3, 0, 1, 6, 7, 4, 5}
#define SWAP1 (vi){1, 0, 3, 2, 5, 4, 7, 6}
#endif

/* horizontal max / sum in log steps (lane 0 holds the result) */
static inline float hmaxv(vf x) {
#if VW == 16
    x = vmax(x, __builtin_shuffle(x, SWAP8));
#endif
    x = vmax(x, __builtin_shuffle(x, SWAP4));
    x = vmax(x, __builtin_shuffle(x, SWAP2));
    x = vmax(x, __builtin_shuffle(x, SWAP1));
    return x[0];
}
static inline float hsumv(vf x) {
#if VW == 16
    x += __builtin_shuffle(x, SWAP8);
#endif
    x += __builtin_shuffle(x, SWAP4);
    x += __builtin_shuffle(x, SWAP2);
    x += __builtin_shuffle(x, SWAP1);
    return x[0];
}

static inline vf vexp_neg(vf x) {
    /* e^x for x <= 0, lane-wise, same polynomial as exp_neg */
    const vf lo = (vf){0} - 87.0f;
    x = (vf)((vi)((x < lo) & (vi)lo) | (vi)((x >= lo) & (vi)x));
    vf t = x * 1.44269504088896341f;
    vi n = __builtin_convertvector(t - 0.5f, vi); /* t <= 0: rounds to nearest */
    vf f = (t - __builtin_convertvector(n, vf)) * 0.69314718055994531f;
    vf p = 1.0f + f * (1.0f + f * (0.5f + f * (1.0f / 6 + f * (1.0f / 24 + f * (1.0f / 120 + f * (1.0f / 720 + f * (1.0f / 5040)))))));
    vi bits = (n + 127) << 23;
    return p * (vf)bits;
}


/* lane j of the result = sum of the VW lanes of p[j]: a transpose-and-add tree, a few
 * vector ops per dot product instead of a separate horizontal sum each. Each level adds
 * the two halves of every vector's remaining span and packs two vectors into one. */
static inline vf reduce_vxv(const vf *p) {
#if VW == 16
    vf y[8], z[4], w[2];
    for (int i = 0; i < 8; ++i)
        y[i] = __builtin_shuffle(p[2 * i], p[2 * i + 1], (vi){0, 1, 2, 3, 4, 5, 6, 7, 16, 17, 18, 19, 20, 21, 22, 23})
             + __builtin_shuffle(p[2 * i], p[2 * i + 1], (vi){8, 9, 10, 11, 12, 13, 14, 15, 24, 25, 26, 27, 28, 29, 30, 31});
    for (int i = 0; i < 4; ++i)
        z[i] = __builtin_shuffle(y[2 * i], y[2 * i + 1], (vi){0, 1, 2, 3, 8, 9, 10, 11, 16, 17, 18, 19, 24, 25, 26, 27})
             + __builtin_shuffle(y[2 * i], y[2 * i + 1], (vi){4, 5, 6, 7, 12, 13, 14, 15, 20, 21, 22, 23, 28, 29, 30, 31});
    for (int i = 0; i < 2; ++i)
        w[i] = __builtin_shuffle(z[2 * i], z[2 * i + 1], (vi){0, 1, 4, 5, 8, 9, 12, 13, 16, 17, 20, 21, 24, 25, 28, 29})
             + __builtin_shuffle(z[2 * i], z[2 * i + 1], (vi){2, 3, 6, 7, 10, 11, 14, 15, 18, 19, 22, 23, 26, 27, 30, 31});
    return __builtin_shuffle(w[0], w[1], (vi){0, 2, 4, 6, 8, 10, 12, 14, 16, 18, 20, 22, 24, 26, 28, 30})
         + __builtin_shuffle(w[0], w[1], (vi){1, 3, 5, 7, 9, 11, 13, 15, 17, 19, 21, 23, 25, 27, 29, 31});
#else
    vf y[4], z[2];
    for (int i = 0; i < 4; ++i)
        y[i] = __builtin_shuffle(p[2 * i], p[2 * i + 1], (vi){0, 1, 2, 3, 8, 9, 10, 11})
             + __builtin_shuffle(p[2 * i], p[2 * i + 1], (vi){4, 5, 6, 7, 12, 13, 14, 15});
    for (int i = 0; i < 2; ++i)
        z[i] = __builtin_shuffle(y[2 * i], y[2 * i + 1], (vi){0, 1, 4, 5, 8, 9, 12, 13})
             + __builtin_shuffle(y[2 * i], y[2 * i + 1], (vi){2, 3, 6, 7, 10, 11, 14, 15});
    return __builtin_shuffle(z[0], z[1], (vi){0, 2, 4, 6, 8, 10, 12, 14})
         + __builtin_shuffle(z[0], z[1], (vi){1, 3, 5, 7, 9, 11, 13, 15});
#endif
}

/* Value-sum accumulators per pass: the whole output row (up to 256 columns) with AVX-512's
 * 32 registers; 64 columns with AVX2's 16. */
#if VW == 16
#define DECODE_ACC 16
#else
#define DECODE_ACC 8
#endif

/* One (sequence, KV head) of decode, head_dim a multiple of 16: scores VW tokens at a
 * time (partial dot-product vectors reduced together), vector softmax, and the value sum
 * with the output row in registers. ND = head_dim / VW (constant in the fast paths). */
static inline void decode_item_vec(
    const float *qh, const float *k, const float *v, const int64_t *offs, int64_t n,
    float *o, int64_t G, const int64_t ND, float scale, float *scores /* G * n_pad */)
{
    const int64_t D = ND * VW, n_pad = (n + VW - 1) / VW * VW;
    const vf ninf = (vf){0} - __builtin_inff();
    for (int64_t g = 0; g < G; ++g) {
        const float *qg = qh + g * D;
        vf qv[256 / VW];
        for (int64_t c = 0; c < ND; ++c) qv[c] = ldv(qg + VW * c) * scale;
        float *sg = scores + g * n_pad;
        vf mx = ninf;
        for (int64_t i0 = 0; i0 < n; i0 += VW) {
            vf part[VW];
            const int64_t cnt = n - i0 < VW ? n - i0 : VW;
            for (int64_t j = 0; j < VW; ++j) {
                vf a = {0};
                if (j < cnt) {
                    const float *kp = k + offs[i0 + j];
                    for (int64_t c = 0; c < ND; ++c) a += qv[c] * ldv(kp + VW * c);
                }
                part[j] = a;
            }
            vf sv = reduce_vxv(part);
            if (cnt < VW)
                for (int64_t j = cnt; j < VW; ++j) sv[j] = -__builtin_inff();
            stv(sg + i0, sv);
            mx = vmax(mx, sv);
        }
        const float m = hmaxv(mx);
        vf sum = {0};
        for (int64_t i0 = 0; i0 < n; i0 += VW) {
            const vf e = vexp_neg(ldv(sg + i0) - m);
            vi keep = {0};
            for (int j = 0; j < VW; ++j) keep[j] = i0 + j < n ? -1 : 0;
            const vf pe = (vf)((vi)e & keep);
            stv(sg + i0, pe);
            sum += pe;
        }
        const float inv = 1.0f / hsumv(sum);
        const int64_t CB = ND < DECODE_ACC ? ND : DECODE_ACC;
        for (int64_t c0 = 0; c0 < ND; c0 += CB) {
            /* a constant when CB divides ND (the fast paths), so acc stays in registers */
            const int64_t cn = ND % CB == 0 ? CB : (ND - c0 < CB ? ND - c0 : CB);
            vf acc[DECODE_ACC];
            for (int64_t c = 0; c < cn; ++c) acc[c] = (vf){0};
            for (int64_t i = 0; i < n; ++i) {
                const float pi = sg[i];
                const float *vp = v + offs[i] + VW * c0;
                for (int64_t c = 0; c < cn; ++c) acc[c] += ldv(vp + VW * c) * pi;
            }
            for (int64_t c = 0; c < cn; ++c) stv(o + g * D + VW * (c0 + c), acc[c] * inv);
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

#pragma omp parallel num_threads(threads_for(B * Hq * (max_ctx > 0 ? max_ctx : 1) * D / 8, num_threads))
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
                if (D == 64) decode_item_vec(qh, k, v, offs, n, o, G, 64 / VW, scale, scores);
                else if (D == 128) decode_item_vec(qh, k, v, offs, n, o, G, 128 / VW, scale, scores);
                else decode_item_vec(qh, k, v, offs, n, o, G, D / VW, scale, scores);
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
 *   1. S = Q K^T for the R rows (SRB rows x 2 vectors of keys register tiles over K
 *      transposed once per call: on AVX-512 the inner loop is one K vector pair and
 *      eight broadcasts per 16 FMAs);
 *   2. softmax on whole rows of S: one max per row and chunk (the output and the sum are
 *      rescaled only when it grows), exp in place, the causal / window mask applied only
 *      to the vectors that straddle a row's boundary (the others need none);
 *   3. O += P V, 4 rows x PCV vectors of columns of accumulators, 32 keys at a time.
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
#define TK 32  /* keys per transposed K tile */
#define KC 256 /* keys per softmax chunk */
/* Register tiles: S takes SRB rows x 2 vectors of keys, O += P V 4 rows x PCV vectors of
 * columns; AVX-512's 32 registers hold 8 x 2 and 4 x 4 accumulators, AVX2's 16 hold 4 x 2
 * and 4 x 2 with room for the loaded vectors and a broadcast. */
#if VW == 16
#define SRB 8
#define PCV 4
#else
#define SRB 4
#define PCV 2
#endif

#if defined(__AVX512F__)
#include <immintrin.h>
/* e^x for x <= 0, lane-wise: the polynomial of vexp_neg, with the power of two applied by
 * vscalefps (no integer round trip); -inf and anything below -87 give e^-87 (~1.6e-38),
 * which callers mask where it must be exactly 0 */
static inline vf vexp_le0(vf x) {
    const __m512 xc = _mm512_max_ps((__m512)x, _mm512_set1_ps(-87.0f));
    const __m512 t = _mm512_mul_ps(xc, _mm512_set1_ps(1.44269504088896341f));
    const __m512 n = _mm512_roundscale_ps(t, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    const vf f = (vf)_mm512_sub_ps(t, n) * 0.69314718055994531f;
    const vf p = 1.0f + f * (1.0f + f * (0.5f + f * (1.0f / 6 + f * (1.0f / 24 + f * (1.0f / 120 + f * (1.0f / 720 + f * (1.0f / 5040)))))));
    return (vf)_mm512_scalef_ps((__m512)p, n);
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

#pragma omp parallel num_threads(threads_for(n * ctx * Hq * D / 8, num_threads))
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

                /* 1. S = Qs Kt, SRB rows x 2 vectors of keys at a time */
                for (int64_t kb = 0; kb < nk; kb += TK) {
                    const float *kt = kt_all + (h * n_kt + (c0 + kb) / TK) * D * TK;
                    for (int64_t r = 0; r < R; r += SRB)
                        for (int64_t k0 = 0; k0 < TK; k0 += 2 * VW) {
                            vf a[SRB], b[SRB];
                            for (int i = 0; i < SRB; ++i) a[i] = b[i] = (vf){0};
                            const float *q0 = qs + r * D;
                            for (int64_t d = 0; d < D; ++d) {
                                const vf ka = ldv(kt + d * TK + k0), kb2 = ldv(kt + d * TK + k0 + VW);
                                for (int i = 0; i < SRB; ++i) {
                                    const float x = q0[i * D + d];
                                    a[i] += ka * x;
                                    b[i] += kb2 * x;
                                }
                            }
                            float *s0 = s + r * KC + kb + k0;
                            for (int i = 0; i < SRB; ++i) {
                                stv(s0 + i * KC, a[i]);
                                stv(s0 + i * KC + VW, b[i]);
                            }
                        }
                }

                /* 2. softmax per row over the chunk; row r sees keys [vis_lo, vis_hi) */
                vi iota;
                for (int j = 0; j < VW; ++j) iota[j] = j;
                for (int64_t r = 0; r < R; ++r) {
                    const int64_t p = pos0 + r / G;
                    const int64_t vis_hi = p + 1 < key_hi ? p + 1 : key_hi;
                    const int64_t vis_lo = window > 0 && p - window + 1 > 0 ? p - window + 1 : 0;
                    float *sr = s + r * KC;
                    /* vectors [f_lo, f_hi) lie wholly inside the visible range */
                    const int64_t f_lo = vis_lo <= c0 ? 0 : (vis_lo - c0 + VW - 1) / VW;
                    const int64_t f_hi = vis_hi >= c0 + nk ? nk / VW : (vis_hi > c0 ? (vis_hi - c0) / VW : 0);
                    vf mx = (vf){0} - __builtin_inff();
                    for (int64_t i = 0; i < nk / VW; ++i) {
                        const vf x = ldv(sr + VW * i);
                        if (i >= f_lo && i < f_hi) { mx = vmax(mx, x); continue; }
                        const vi key = iota + (int32_t)(c0 + VW * i);
                        const vi in = (key >= (int32_t)vis_lo) & (key < (int32_t)vis_hi);
                        mx = vmax(mx, (vf)(((vi)x & in) | ((vi)mx & ~in)));
                    }
                    const float cmax = hmaxv(mx);
                    if (cmax == -__builtin_inff()) { /* no visible key in this chunk */
                        memset(sr, 0, sizeof(float) * (size_t)nk);
                        continue;
                    }
                    if (cmax > m[r]) {
                        if (m[r] != -__builtin_inff()) {
                            const float corr = exp_neg(m[r] - cmax);
                            l[r] *= corr;
                            float *orow = o + r * D;
                            for (int64_t c = 0; c < D; c += VW) stv(orow + c, ldv(orow + c) * corr);
                        }
                        m[r] = cmax;
                    }
                    const float mr = m[r];
                    vf sum = {0};
                    for (int64_t i = 0; i < nk / VW; ++i) {
                        vf e = vexp_le0(ldv(sr + VW * i) - mr);
                        if (i < f_lo || i >= f_hi) {
                            const vi key = iota + (int32_t)(c0 + VW * i);
                            e = (vf)((vi)e & ((key >= (int32_t)vis_lo) & (key < (int32_t)vis_hi)));
                        }
                        stv(sr + VW * i, e);
                        sum += e;
                    }
                    l[r] += hsumv(sum);
                }

                /* 3. O += P V, 32 keys at a time */
                for (int64_t kb = 0; kb < nk; kb += TK) {
                    const float *vrow[TK];
                    for (int64_t j = 0; j < TK; ++j) {
                        const int64_t tok = c0 + kb + j;
                        vrow[j] = vp_all + (h * n_kt * TK + tok) * D;
                    }
                    int64_t dc = 0;
                    for (; dc + PCV * VW <= D; dc += PCV * VW) { /* 4 rows x PCV vectors of accumulators */
                        for (int64_t r = 0; r < R; r += 4) {
                            float *o0 = o + r * D + dc;
                            vf c[4][PCV];
                            for (int i = 0; i < 4; ++i)
                                for (int u = 0; u < PCV; ++u) c[i][u] = ldv(o0 + i * D + u * VW);
                            const float *p0 = s + r * KC + kb;
                            for (int64_t j = 0; j < TK; ++j) {
                                const float *vp = vrow[j] + dc;
                                vf vv[PCV];
                                for (int u = 0; u < PCV; ++u) vv[u] = ldv(vp + u * VW);
                                for (int i = 0; i < 4; ++i) {
                                    const float w = p0[i * KC + j];
                                    for (int u = 0; u < PCV; ++u) c[i][u] += vv[u] * w;
                                }
                            }
                            for (int i = 0; i < 4; ++i)
                                for (int u = 0; u < PCV; ++u) stv(o0 + i * D + u * VW, c[i][u]);
                        }
                    }
                    for (; dc < D; dc += VW) { /* columns left over: one vector at a time */
                        for (int64_t r = 0; r < R; ++r) {
                            vf c = ldv(o + r * D + dc);
                            for (int64_t j = 0; j < TK; ++j) c += ldv(vrow[j] + dc) * s[r * KC + kb + j];
                            stv(o + r * D + dc, c);
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
#pragma omp parallel for schedule(static) num_threads(threads_for(T * H, num_threads))
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
#pragma omp parallel for schedule(static) num_threads(threads_for(T * H * D, num_threads))
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
    /* explicit vectors: GCC vectorizes the scalar loop for AVX-512 (masked selects) but
     * not for AVX2, where it ran 8x slower than torch's op */
#pragma omp parallel for schedule(static) num_threads(threads_for(T * I * 4, num_threads))
    for (int64_t t = 0; t < T; ++t) {
        float *g = gate_up + t * 2 * I;
        const float *u = g + I;
        int64_t i = 0;
        for (; i + VW <= I; i += VW) {
            const vf x = ldv(g + i);
            const vi pos = x > 0.0f;
            const vf negabs = (vf)(((vi)(0.0f - x) & pos) | ((vi)x & ~pos)); /* -|x| */
            const vf e = vexp_neg(negabs);                                    /* e^-|x| */
            const vf num = (vf)(((vi)x & pos) | ((vi)(x * e) & ~pos));
            stv(g + i, num / (1.0f + e) * ldv(u + i));
        }
        for (; i < I; ++i) {
            const float x = g[i];
            const float e = exp_neg(x > 0.0f ? -x : x); /* e^-|x|, never overflows */
            const float num = x > 0.0f ? x : x * e;      /* one division per element */
            g[i] = num / (1.0f + e) * u[i];
        }
    }
    return 0;
}
