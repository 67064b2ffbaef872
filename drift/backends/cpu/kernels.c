/* The numpy backend's compiled kernels: matrix-vector products from quantized blocks.
 *
 * Built by drift/backends/cpu/native.py at first use with the system's C compiler
 * (-O3 -march=native -fopenmp) and called through ctypes, which releases the GIL (in hybrid
 * execution the GPU runs its hot neurons meanwhile). Two users:
 *
 * - hybrid execution's cold FFN (`ffn_cold_token`, `gemv_rows`, `axpy_rows_q8`): x is
 *   quantized once per call to int8 blocks of 32 (xq, scale xd, and xs = xd * sum(xq)), as
 *   llama.cpp's CPU backend does, and a weight row is dotted block by block in integers:
 *
 *     Q4_0  w = d (q - 8)            q in 0..15, 16 bytes of nibbles per block
 *     Q4_1  w = d q + m
 *     Q8_0  w = d q                  q int8
 *
 *   The down projection's cold columns are stored transposed (a neuron's down column is one
 *   Q8_0 row of D), so the down product of the active neurons is an axpy over rows.
 * - the numpy backend's kept-quantized weights (`gemv_f32`): float x, each block's weights
 *   rebuilt exactly as the reference dequantizes them.
 *
 * d (and m) are the half-precision planes split out of the blocks at load (the packed quants
 * stay as they are), so the inner loops read no more bytes than the file holds.
 */
#include <math.h>
#include <stdint.h>
#include <string.h>
#if defined(__AVX2__)
#include <immintrin.h>
#endif

static inline float f16(uint16_t h) { /* IEEE half -> float */
#if defined(__F16C__)
    return _cvtsh_ss(h);
#else
    uint32_t s = (uint32_t)(h & 0x8000) << 16, e = (h >> 10) & 31, m = h & 1023, bits;
    if (e == 0) { /* zero or subnormal */
        if (m == 0) bits = s;
        else { e = 113; while (!(m & 1024)) { m <<= 1; e--; } bits = s | (e << 23) | ((m & 1023) << 13); }
    } else if (e == 31) bits = s | 0x7f800000 | (m << 13);
    else bits = s | ((e + 112) << 23) | (m << 13);
    float f; memcpy(&f, &bits, 4); return f;
#endif
}

enum { KIND_Q4_0 = 0, KIND_Q4_1 = 1, KIND_Q8_0 = 2 };
/* A (R, K) weight's planes: row r's quants at qs + r * qs_stride (bytes), its scales (and
 * minimums) at d + r * d_stride (halves). Strides, not widths: a layer's cold up and down rows
 * are interleaved per neuron (`ColdFFN`), so that an active neuron's bytes are one run. */
typedef struct { int kind; const uint8_t *qs; const uint16_t *d, *m; int64_t qs_stride, d_stride; } planes_t;
/* How many active rows ahead the skipping loops ask for (0: none), and into which cache
 * level (__builtin_prefetch's locality: 3 all levels .. 0 non-temporal, which on some x86
 * parts lands in a single way and is evicted before use). set_prefetch() changes them. */
static int prefetch_rows = 4, prefetch_level = 2;
void set_prefetch(int rows, int level) { prefetch_rows = rows; prefetch_level = level; }

/* one row of K floats -> int8 blocks of 32: q, the scale xd = amax/127, xs = xd * sum(q) */
static void quantize_row(const float *v, int K, int8_t *q, float *xd, float *xs) {
    for (int b = 0; b < K / 32; b++) {
        float amax = 0.f;
        for (int i = 0; i < 32; i++) { float a = fabsf(v[b * 32 + i]); amax = a > amax ? a : amax; }
        float d = amax / 127.f, inv = amax > 0 ? 127.f / amax : 0.f;
        int sum = 0;
        for (int i = 0; i < 32; i++) {
            float t = v[b * 32 + i] * inv;
            int r = (int)(t + (t >= 0 ? 0.5f : -0.5f));
            q[b * 32 + i] = (int8_t)r;
            sum += r;
        }
        xd[b] = d;
        xs[b] = d * (float)sum;
    }
}

/* x (S, K) -> xq (S, K) int8, xd and xs (S, K/32) */
void quantize_x(const float *x, int S, int K, int8_t *xq, float *xd, float *xs) {
    #pragma omp parallel for schedule(static) if (S > 1)
    for (int s = 0; s < S; s++)
        quantize_row(x + (int64_t)s * K, K, xq + (int64_t)s * K, xd + (int64_t)s * (K / 32),
                     xs + (int64_t)s * (K / 32));
}

#if defined(__AVX2__)
static inline float hsum8(__m256 v) {
    __m128 lo = _mm256_castps256_ps128(v), hi = _mm256_extractf128_ps(v, 1);
    lo = _mm_add_ps(lo, hi);
    lo = _mm_add_ps(lo, _mm_movehl_ps(lo, lo));
    lo = _mm_add_ss(lo, _mm_movehdup_ps(lo));
    return _mm_cvtss_f32(lo);
}
/* sum over pairs of signed int8 a * b, as 8 int32 lanes (maddubs takes unsigned * signed) */
static inline __m256i dot_i8(__m256i a, __m256i b) {
    __m256i p = _mm256_maddubs_epi16(_mm256_sign_epi8(a, a), _mm256_sign_epi8(b, a));
    return _mm256_madd_epi16(p, _mm256_set1_epi16(1));
}
static inline __m256i nibbles(const uint8_t *qs) { /* 16 bytes -> 32 values 0..15 */
    __m128i t = _mm_loadu_si128((const __m128i *)qs);
    __m256i v = _mm256_set_m128i(_mm_srli_epi16(t, 4), t);
    return _mm256_and_si256(v, _mm256_set1_epi8(15));
}
#endif

#if defined(__AVX2__)
/* block b of a weight row times block b of x: 8 int32 lanes summing to the integer dot */
static inline __m256i block_dot(int kind, const uint8_t *qs, int b, const int8_t *xq) {
    __m256i y = _mm256_loadu_si256((const __m256i *)(xq + b * 32));
    if (kind == KIND_Q8_0)
        return dot_i8(_mm256_loadu_si256((const __m256i *)(qs + b * 32)), y);
    if (kind == KIND_Q4_0)
        return dot_i8(_mm256_sub_epi8(nibbles(qs + b * 16), _mm256_set1_epi8(8)), y);
    return _mm256_madd_epi16(_mm256_maddubs_epi16(nibbles(qs + b * 16), y),
                             _mm256_set1_epi16(1));
}
#endif

#if defined(__AVX512F__) && defined(__AVX512BW__) && defined(__AVX512VNNI__)
#define DRIFT_AVX512 1
/* a nibble row (Q4_0, Q4_1) . quantized x, 16 blocks per outer step: their scales widened
 * together (d xd, 16 floats) and the minimum term's d xs (Q4_0: w = d q - 8 d, so -8 d xs;
 * Q4_1: m xs) summed in vector; then two blocks per inner step, their 32 bytes of nibbles as
 * 64 unsigned values in block order times x's int8 by VNNI (u8 x s8 -> s32, four products a
 * lane: lanes 0-7 block b, 8-15 block b + 1), scaled per block in float. */
static inline float row_dot_nibbles512(int kind, const uint8_t *qs, const uint16_t *d,
                                       const uint16_t *m, int nb, const int8_t *xq,
                                       const float *xd, const float *xs) {
    const __m256i low = _mm256_set1_epi8(15);
    __m512 acc = _mm512_setzero_ps(), offs = _mm512_setzero_ps();
    int b = 0;
    for (; b + 16 <= nb; b += 16) {
        __m512 dv = _mm512_cvtph_ps(_mm256_loadu_si256((const __m256i *)(d + b)));
        __m512 sc = _mm512_mul_ps(dv, _mm512_loadu_ps(xd + b));
        __m512 mv = kind == KIND_Q4_0 ? dv
                    : _mm512_cvtph_ps(_mm256_loadu_si256((const __m256i *)(m + b)));
        offs = _mm512_fmadd_ps(mv, _mm512_loadu_ps(xs + b), offs);
        for (int k = 0; k < 16; k += 2) {
            __m256i t = _mm256_loadu_si256((const __m256i *)(qs + (b + k) * 16));
            __m256i lo = _mm256_and_si256(t, low), hi = _mm256_and_si256(_mm256_srli_epi16(t, 4), low);
            /* [b lo | b+1 lo | b hi | b+1 hi] in 128-bit lanes -> [b lo | b hi | b+1 lo | b+1 hi] */
            __m512i w = _mm512_inserti64x4(_mm512_castsi256_si512(lo), hi, 1);
            w = _mm512_shuffle_i64x2(w, w, _MM_SHUFFLE(3, 1, 2, 0));
            __m512i y = _mm512_loadu_si512((const void *)(xq + (b + k) * 32));
            __m512i dot = _mm512_dpbusd_epi32(_mm512_setzero_si512(), w, y);
            /* lanes 0-7 the scale of block k, 8-15 of block k + 1 */
            __m512i pick = _mm512_set_epi32(k + 1, k + 1, k + 1, k + 1, k + 1, k + 1, k + 1, k + 1,
                                            k, k, k, k, k, k, k, k);
            acc = _mm512_fmadd_ps(_mm512_permutexvar_ps(pick, sc), _mm512_cvtepi32_ps(dot), acc);
        }
    }
    float total = _mm512_reduce_add_ps(acc)
                  + (kind == KIND_Q4_0 ? -8.f : 1.f) * _mm512_reduce_add_ps(offs);
    for (; b < nb; b++) { /* the last nb % 16 blocks (SmolLM2's D 576: 18 blocks) */
        const uint8_t *q = qs + (int64_t)b * 16;
        const int8_t *y = xq + (int64_t)b * 32;
        int s = 0;
        for (int i = 0; i < 16; i++) s += (q[i] & 15) * y[i] + (q[i] >> 4) * y[i + 16];
        total += f16(d[b]) * (xd[b] * (float)s
                              + (kind == KIND_Q4_0 ? -8.f * xs[b] : 0.f))
                 + (kind == KIND_Q4_1 ? f16(m[b]) * xs[b] : 0.f);
    }
    return total;
}
#endif

/* one weight row (nb blocks) . one quantized x row; two accumulators, so that consecutive
 * blocks' multiply-adds do not wait on each other */
static inline float row_dot(int kind, const uint8_t *qs, const uint16_t *d, const uint16_t *m,
                            int nb, const int8_t *xq, const float *xd, const float *xs) {
#if defined(DRIFT_AVX512)
    if (kind != KIND_Q8_0) return row_dot_nibbles512(kind, qs, d, m, nb, xq, xd, xs);
#endif
#if defined(__AVX2__)
    __m256 acc0 = _mm256_setzero_ps(), acc1 = _mm256_setzero_ps();
    float extra = 0.f;
    int b = 0;
    for (; b + 1 < nb; b += 2) {
        acc0 = _mm256_fmadd_ps(_mm256_set1_ps(f16(d[b]) * xd[b]),
                               _mm256_cvtepi32_ps(block_dot(kind, qs, b, xq)), acc0);
        acc1 = _mm256_fmadd_ps(_mm256_set1_ps(f16(d[b + 1]) * xd[b + 1]),
                               _mm256_cvtepi32_ps(block_dot(kind, qs, b + 1, xq)), acc1);
    }
    if (b < nb)
        acc0 = _mm256_fmadd_ps(_mm256_set1_ps(f16(d[b]) * xd[b]),
                               _mm256_cvtepi32_ps(block_dot(kind, qs, b, xq)), acc0);
    if (kind == KIND_Q4_1) /* unsigned quants: the minimum times sum(x), added after */
        for (int c = 0; c < nb; c++) extra += f16(m[c]) * xs[c];
    return hsum8(_mm256_add_ps(acc0, acc1)) + extra;
#else
    float total = 0.f;
    for (int b = 0; b < nb; b++) {
        const int8_t *y = xq + b * 32;
        int acc = 0;
        float db = f16(d[b]);
        if (kind == KIND_Q8_0) {
            const int8_t *q = (const int8_t *)qs + b * 32;
            for (int i = 0; i < 32; i++) acc += q[i] * y[i];
            total += db * xd[b] * (float)acc;
        } else {
            const uint8_t *q = qs + b * 16;
            for (int i = 0; i < 16; i++) acc += (q[i] & 15) * y[i] + (q[i] >> 4) * y[i + 16];
            if (kind == KIND_Q4_0) total += db * (xd[b] * (float)acc - 8.f * xs[b]);
            else total += db * xd[b] * (float)acc + f16(m[b]) * xs[b];
        }
    }
    return total;
#endif
}

/* out[s, i] = W[rows[i]] . x[s] for i < n (rows NULL: row i), W (R, K) in `kind` planes:
 * qs (R, K/2) or (R, K) bytes, d and m (R, K/32) f16. out (S, n). */
void gemv_rows(const planes_t *w, int K, const int32_t *rows, int n, const int8_t *xq,
               const float *xd, const float *xs, int S, float *out) {
    int nb = K / 32;
    #pragma omp parallel for schedule(static)
    for (int i = 0; i < n; i++) {
        int64_t r = rows ? rows[i] : i;
        for (int s = 0; s < S; s++)
            out[(int64_t)s * n + i] = row_dot(w->kind, w->qs + r * w->qs_stride,
                                              w->d + r * w->d_stride,
                                              w->m ? w->m + r * w->d_stride : 0, nb,
                                              xq + (int64_t)s * K, xd + (int64_t)s * nb,
                                              xs + (int64_t)s * nb);
    }
}

#ifdef _OPENMP
extern int omp_get_thread_num(void);
extern int omp_get_num_threads(void);
#endif
static inline int n_threads_here(void) { /* threads of the enclosing parallel region */
#ifdef _OPENMP
    return omp_get_num_threads();
#else
    return 1;
#endif
}
/* this thread's share [i0, i1) of n items, split evenly; returns the thread's index */
static inline int thread_share(int n, int *i0, int *i1) {
    int t = 0, nt = n_threads_here();
#ifdef _OPENMP
    t = omp_get_thread_num();
#endif
    *i0 = (int)((int64_t)n * t / nt);
    *i1 = (int)((int64_t)n * (t + 1) / nt);
    return t;
}

/* out += h * one Q8_0 row (nb blocks, f16 scales) */
static inline void axpy_row_q8(float h, const int8_t *q, const uint16_t *d, int nb, float *out) {
    for (int b = 0; b < nb; b++) {
        float f = h * f16(d[b]);
#if defined(DRIFT_AVX512)
        __m512 vf = _mm512_set1_ps(f);
        for (int e = 0; e < 32; e += 16) {
            __m512 w = _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(
                _mm_loadu_si128((const __m128i *)(q + b * 32 + e))));
            _mm512_storeu_ps(out + b * 32 + e,
                             _mm512_fmadd_ps(vf, w, _mm512_loadu_ps(out + b * 32 + e)));
        }
#elif defined(__AVX2__)
        __m256 vf = _mm256_set1_ps(f);
        for (int e = 0; e < 32; e += 8) {
            __m256 w = _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(
                _mm_loadl_epi64((const __m128i *)(q + b * 32 + e))));
            _mm256_storeu_ps(out + b * 32 + e,
                             _mm256_fmadd_ps(vf, w, _mm256_loadu_ps(out + b * 32 + e)));
        }
#else
        for (int e = 0; e < 32; e++) out[b * 32 + e] += f * (float)q[b * 32 + e];
#endif
    }
}

/* y[s] = sum_i h[s, i] * W[rows[i]] over Q8_0 rows of K (the transposed down projection):
 * qs (R, K) int8, d (R, K/32) f16. h (S, n), y (S, K), overwritten. Each thread streams
 * whole rows of its share of the active neurons into its own accumulator (L1/L2), then the
 * accumulators are summed. */
void axpy_rows_q8(const planes_t *w, int K, const int32_t *rows, int n,
                  const float *h, int S, float *y, float *work, int n_work) {
    int nb = K / 32;
    memset(work, 0, sizeof(float) * (size_t)n_work * S * K);
    #pragma omp parallel num_threads(n_work)
    {
        int i0, i1, t = thread_share(n, &i0, &i1);
        float *acc = work + (size_t)t * S * K;
        for (int i = i0; i < i1; i++) {
            int64_t r = rows ? rows[i] : i;
            const int8_t *q = (const int8_t *)w->qs + r * w->qs_stride;
            for (int s = 0; s < S; s++) {
                float hi = h[(int64_t)s * n + i];
                if (hi == 0.f) continue;
                axpy_row_q8(hi, q, w->d + r * w->d_stride, nb, acc + (int64_t)s * K);
            }
        }
    }
    int64_t total = (int64_t)S * K;
    #pragma omp parallel for schedule(static)
    for (int64_t j = 0; j < total; j++) {
        float v = 0.f;
        for (int t = 0; t < n_work; t++) v += work[(size_t)t * total + j];
        y[j] = v;
    }
}

/* Ask for n bytes at p ahead of their use: a skipping layer's active rows are scattered 2-4 KB
 * pieces, too short for the hardware prefetcher to ramp up on each before it ends. */
static inline void prefetch(const void *p, int64_t n) {
    const char *c = (const char *)p;
    if (prefetch_level >= 3) for (int64_t o = 0; o < n; o += 64) __builtin_prefetch(c + o, 0, 3);
    else if (prefetch_level == 2) for (int64_t o = 0; o < n; o += 64) __builtin_prefetch(c + o, 0, 2);
    else if (prefetch_level == 1) for (int64_t o = 0; o < n; o += 64) __builtin_prefetch(c + o, 0, 1);
    else for (int64_t o = 0; o < n; o += 64) __builtin_prefetch(c + o, 0, 0);
}

static inline float activation(int act, float g) {
    if (act == 0) return g / (1.f + expf(-g)); /* silu (SwiGLU) */
    return 0.5f * g * (1.f + tanhf(0.7978845608f * (g + 0.044715f * g * g * g))); /* gelu */
}

/* y = the sum of the nt threads' accumulators (work: nt rows of D), split over the threads of
 * the enclosing parallel region (after a barrier: every accumulator is complete) */
static void sum_accumulators(const float *work, int nt, int D, float *y) {
    #pragma omp for schedule(static)
    for (int c = 0; c < D; c++) {
        float v = 0.f;
        for (int u = 0; u < nt; u++) v += work[(size_t)u * D + c];
        y[c] = v;
    }
}

/* One token through a layer's cold neurons, in one parallel region:
 *   a = act(gate . x) for all F neurons; keep those with |a| > threshold (all if 0);
 *   h = a * (up . x) for the kept; y = down^T h.
 * With down as rows and no predictor (the common case) each thread takes its share of the
 * neurons through all three steps into its own accumulator, so the only barrier is the final
 * sum; otherwise the steps run one after another, a barrier each.
 * down_rows: down is (F, D) Q8_0 rows (axpy over the kept rows, per-thread accumulators in
 * `work` (n_work * D)); else (D, F) rows of the file (h quantized, a GEMV). cand: the neurons
 * a predictor chose (n_cand of them, ascending), whose gate alone is computed, or NULL for
 * all. g: the F gate pre-activations, computed elsewhere (the GPU; gate is then unused), or
 * NULL. scratch: F floats
 * a, F ints rows, F floats h, F + 2F/32 bytes/floats for quantized h. Returns the kept count. */
int ffn_cold_token(planes_t *gate, planes_t *up, planes_t *down, int down_rows, int D, int F,
                   const float *x, float threshold, int act, const int32_t *cand, int n_cand,
                   const float *g, float *a, int32_t *rows, float *h, int8_t *hq, float *hd, float *hs,
                   float *work, int n_work, float *y) {
    int8_t xq[D];
    float xd[D / 32], xs[D / 32];
    quantize_row(x, D, xq, xd, xs);
    int nbD = D / 32, nbF = F / 32;
    int64_t rbD_u = up->kind == KIND_Q8_0 ? D : D / 2; /* bytes of an up row's quants */
    int count = 0;
    if (g) cand = NULL; /* every neuron's gate is given */
    if (down_rows && !cand) { /* each thread its share of the neurons, start to end */
        #pragma omp parallel num_threads(n_work)
        {
            int i0, i1, t = thread_share(F, &i0, &i1), nt = n_threads_here(), mine = 0;
            for (int j = i0; j < i1; j++) { /* its active neurons, listed in rows[i0..] */
                float aj = activation(act, g ? g[j]
                                             : row_dot(gate->kind, gate->qs + j * gate->qs_stride,
                                                       gate->d + j * gate->d_stride,
                                                       gate->m ? gate->m + j * gate->d_stride : 0,
                                                       nbD, xq, xd, xs));
                if (threshold > 0 && !(fabsf(aj) > threshold)) continue;
                a[j] = aj;
                rows[i0 + mine++] = j;
            }
            float *acc = work + (size_t)t * D;
            memset(acc, 0, sizeof(float) * D);
            const int8_t *dq = (const int8_t *)down->qs;
            for (int i = 0; i < mine; i++) { /* up . x, then the neuron's down row, together */
                int64_t j = rows[i0 + i];
                if (prefetch_rows && i + prefetch_rows < mine) {
                    int64_t n = rows[i0 + i + prefetch_rows];
                    prefetch(up->qs + n * up->qs_stride, rbD_u);
                    prefetch(up->d + n * up->d_stride, 2 * nbD);
                    prefetch(dq + n * down->qs_stride, D);
                    prefetch(down->d + n * down->d_stride, 2 * nbD);
                }
                float hj = a[j] * row_dot(up->kind, up->qs + j * up->qs_stride,
                                          up->d + j * up->d_stride,
                                          up->m ? up->m + j * up->d_stride : 0, nbD, xq, xd, xs);
                axpy_row_q8(hj, dq + j * down->qs_stride, down->d + j * down->d_stride, nbD, acc);
            }
            #pragma omp atomic
            count += mine;
            #pragma omp barrier
            sum_accumulators(work, nt, D, y);
        }
        return count;
    }
    #pragma omp parallel num_threads(n_work)
    {
        int n_gate = cand ? n_cand : F; /* the predictor's candidates, or every neuron */
        #pragma omp for schedule(static)
        for (int i = 0; i < n_gate; i++) {
            int64_t j = cand ? cand[i] : i;
            a[j] = activation(act, g ? g[j]
                                     : row_dot(gate->kind, gate->qs + j * gate->qs_stride,
                                               gate->d + j * gate->d_stride,
                                               gate->m ? gate->m + j * gate->d_stride : 0, nbD,
                                               xq, xd, xs));
        }
        #pragma omp single
        {
            if (threshold > 0) {
                for (int i = 0; i < n_gate; i++) {
                    int j = cand ? cand[i] : i;
                    if (fabsf(a[j]) > threshold) rows[count++] = j;
                }
            } else {
                for (int j = 0; j < F; j++) rows[j] = j;
                count = F;
            }
        }
        #pragma omp for schedule(static)
        for (int i = 0; i < count; i++) {
            int64_t j = rows[i];
            if (prefetch_rows && i + prefetch_rows < count) {
                int64_t n = rows[i + prefetch_rows];
                prefetch(up->qs + n * up->qs_stride, rbD_u);
                prefetch(up->d + n * up->d_stride, 2 * nbD);
            }
            h[i] = a[j] * row_dot(up->kind, up->qs + j * up->qs_stride, up->d + j * up->d_stride,
                                  up->m ? up->m + j * up->d_stride : 0, nbD, xq, xd, xs);
        }
        if (!down_rows) { /* dense: y = down . h over the file's (D, F) rows */
            #pragma omp single
            quantize_row(h, F, hq, hd, hs);
            #pragma omp for schedule(static)
            for (int64_t r = 0; r < D; r++)
                y[r] = row_dot(down->kind, down->qs + r * down->qs_stride, down->d + r * down->d_stride,
                               down->m ? down->m + r * down->d_stride : 0, nbF, hq, hd, hs);
        } else {
            int i0, i1, t = thread_share(count, &i0, &i1), nt = n_threads_here();
            float *acc = work + (size_t)t * D;
            memset(acc, 0, sizeof(float) * D);
            const int8_t *dq = (const int8_t *)down->qs;
            for (int i = i0; i < i1; i++) {
                int64_t r = rows[i];
                if (prefetch_rows && i + prefetch_rows < i1) {
                    int64_t n = rows[i + prefetch_rows];
                    prefetch(dq + n * down->qs_stride, D);
                    prefetch(down->d + n * down->d_stride, 2 * nbD);
                }
                axpy_row_q8(h[i], dq + r * down->qs_stride, down->d + r * down->d_stride, nbD, acc);
            }
            #pragma omp barrier
            sum_accumulators(work, nt, D, y);
        }
    }
    return count;
}

/* one weight row . one float x row in float32, the block's weights rebuilt exactly as the
 * reference dequantizes them (d * (q - 8), d * q + m, d * q): sum_b d_b * sum(q x) (+ m_b *
 * sum(x) for Q4_1) */
static inline float row_dot_f32(int kind, const uint8_t *qs, const uint16_t *d,
                                const uint16_t *m, int nb, const float *x) {
#if defined(__AVX2__)
    __m256 acc = _mm256_setzero_ps(), accm = _mm256_setzero_ps();
    for (int b = 0; b < nb; b++) {
        const float *xv = x + b * 32;
        __m256i v;
        if (kind == KIND_Q8_0) v = _mm256_loadu_si256((const __m256i *)(qs + b * 32));
        else v = nibbles(qs + b * 16);
        if (kind == KIND_Q4_0) v = _mm256_sub_epi8(v, _mm256_set1_epi8(8));
        __m128i lo = _mm256_castsi256_si128(v), hi = _mm256_extracti128_si256(v, 1);
        __m128i part[4] = {lo, _mm_srli_si128(lo, 8), hi, _mm_srli_si128(hi, 8)};
        __m256 sum = _mm256_setzero_ps();
        for (int j = 0; j < 4; j++) {
            __m256i w32 = kind == KIND_Q4_1 ? _mm256_cvtepu8_epi32(part[j])
                                            : _mm256_cvtepi8_epi32(part[j]);
            sum = _mm256_fmadd_ps(_mm256_cvtepi32_ps(w32), _mm256_loadu_ps(xv + 8 * j), sum);
        }
        acc = _mm256_fmadd_ps(_mm256_set1_ps(f16(d[b])), sum, acc);
        if (kind == KIND_Q4_1) {
            __m256 xs = _mm256_add_ps(_mm256_add_ps(_mm256_loadu_ps(xv), _mm256_loadu_ps(xv + 8)),
                                      _mm256_add_ps(_mm256_loadu_ps(xv + 16),
                                                    _mm256_loadu_ps(xv + 24)));
            accm = _mm256_fmadd_ps(_mm256_set1_ps(f16(m[b])), xs, accm);
        }
    }
    return hsum8(_mm256_add_ps(acc, accm));
#else
    float total = 0.f;
    for (int b = 0; b < nb; b++) {
        const float *xv = x + b * 32;
        float db = f16(d[b]), sq = 0.f, sx = 0.f;
        for (int e = 0; e < 32; e++) {
            int q = kind == KIND_Q8_0 ? ((const int8_t *)qs)[b * 32 + e]
                                      : (qs[b * 16 + e % 16] >> (e < 16 ? 0 : 4)) & 15;
            if (kind == KIND_Q4_0) q -= 8;
            sq += (float)q * xv[e];
            sx += xv[e];
        }
        total += db * sq + (kind == KIND_Q4_1 ? f16(m[b]) * sx : 0.f);
    }
    return total;
#endif
}

/* out (S, R) = x (S, K) . W^T in float32 for the numpy backend (`NativeQuantMatrix`): rows in
 * parallel, each row dotted with every x row while it is in L1. */
void gemv_f32(int kind, const uint8_t *qs, const uint16_t *d, const uint16_t *m, int K, int R,
              const float *x, int S, float *out) {
    int nb = K / 32;
    int64_t row_bytes = kind == KIND_Q8_0 ? K : K / 2;
    #pragma omp parallel for schedule(static)
    for (int r = 0; r < R; r++)
        for (int s = 0; s < S; s++)
            out[(int64_t)s * R + r] = row_dot_f32(kind, qs + r * row_bytes, d + (int64_t)r * nb,
                                                  m ? m + (int64_t)r * nb : 0, nb,
                                                  x + (int64_t)s * K);
}

/* rows r0..r1 of a (R, K) weight as float32 (out (r1 - r0, K)), exactly as the reference
 * dequantizes them: d (q - 8), d q + m, d q. (d q is exact in float32: 11 bits of an f16
 * scale times at most 8 bits of quant; Q4_1's + m is the one rounding, fused or not.) One
 * thread: the caller's BLAS call comes next, and OpenMP's threads, spinning after a parallel
 * region, would take its cores (SmolLM2's prefill ran 9x slower so). */
void dequant_rows(const planes_t *w, int K, int r0, int r1, float *out) {
    int nb = K / 32;
    for (int r = r0; r < r1; r++) {
        const uint8_t *qs = w->qs + (int64_t)r * w->qs_stride;
        const uint16_t *d = w->d + (int64_t)r * w->d_stride;
        const uint16_t *m = w->m ? w->m + (int64_t)r * w->d_stride : 0;
        float *o = out + (int64_t)(r - r0) * K;
        for (int b = 0; b < nb; b++) {
            float db = f16(d[b]);
            if (w->kind == KIND_Q8_0) {
                const int8_t *q = (const int8_t *)qs + b * 32;
                for (int i = 0; i < 32; i++) o[b * 32 + i] = db * (float)q[i];
            } else {
                const uint8_t *q = qs + b * 16;
                if (w->kind == KIND_Q4_0) {
                    for (int i = 0; i < 16; i++) {
                        o[b * 32 + i] = db * (float)((q[i] & 15) - 8);
                        o[b * 32 + 16 + i] = db * (float)((q[i] >> 4) - 8);
                    }
                } else {
                    float mb = f16(m[b]);
                    for (int i = 0; i < 16; i++) {
                        o[b * 32 + i] = db * (float)(q[i] & 15) + mb;
                        o[b * 32 + 16 + i] = db * (float)(q[i] >> 4) + mb;
                    }
                }
            }
        }
    }
}

int n_threads(void) {
#ifdef _OPENMP
    extern int omp_get_max_threads(void);
    return omp_get_max_threads();
#else
    return 1;
#endif
}
