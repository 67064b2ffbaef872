/* The CPU side of hybrid execution: a gated FFN's cold neurons, from quantized blocks.
 *
 * Built by drift/hybrid/cpu_kernels.py at first use with the system's C compiler
 * (-O3 -march=native -fopenmp) and called through ctypes, which releases the GIL: the GPU
 * runs its hot neurons meanwhile.
 *
 * x is quantized once per call to int8 blocks of 32 (xq, scale xd, and xs = xd * sum(xq)),
 * as llama.cpp's CPU backend does; a weight row is then dotted block by block in integers:
 *
 *   Q4_0  w = d (q - 8)            q in 0..15, 16 bytes of nibbles per block
 *   Q4_1  w = d q + m
 *   Q8_0  w = d q                  q int8
 *
 * with d (and m) already float32 planes (converted once at load), so the inner loop only
 * reads the packed quants. Rows of the down projection are stored transposed (a cold
 * neuron's down column is one Q8_0 row of D), so the down product of the active neurons is
 * an axpy over rows: y += h_j * down_t[j].
 */
#include <stdint.h>
#include <string.h>
#if defined(__AVX2__)
#include <immintrin.h>
#endif

enum { KIND_Q4_0 = 0, KIND_Q4_1 = 1, KIND_Q8_0 = 2 };

/* x (S, K) -> xq (S, K) int8, xd and xs (S, K/32) */
void quantize_x(const float *x, int S, int K, int8_t *xq, float *xd, float *xs) {
    int nb = K / 32;
    #pragma omp parallel for schedule(static) if (S > 1)
    for (int s = 0; s < S; s++) {
        for (int b = 0; b < nb; b++) {
            const float *v = x + (int64_t)s * K + b * 32;
            float amax = 0.f;
            for (int i = 0; i < 32; i++) { float a = v[i] < 0 ? -v[i] : v[i]; amax = a > amax ? a : amax; }
            float d = amax / 127.f, inv = amax > 0 ? 127.f / amax : 0.f;
            int sum = 0;
            int8_t *q = xq + (int64_t)s * K + b * 32;
            for (int i = 0; i < 32; i++) {
                float t = v[i] * inv;
                int r = (int)(t + (t >= 0 ? 0.5f : -0.5f));
                q[i] = (int8_t)r;
                sum += r;
            }
            xd[(int64_t)s * nb + b] = d;
            xs[(int64_t)s * nb + b] = d * (float)sum;
        }
    }
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

/* one weight row (nb blocks) . one quantized x row */
static inline float row_dot(int kind, const uint8_t *qs, const float *d, const float *m,
                            int nb, const int8_t *xq, const float *xd, const float *xs) {
#if defined(__AVX2__)
    __m256 acc = _mm256_setzero_ps();
    float extra = 0.f;
    for (int b = 0; b < nb; b++) {
        __m256i y = _mm256_loadu_si256((const __m256i *)(xq + b * 32));
        __m256i p;
        if (kind == KIND_Q8_0) {
            p = dot_i8(_mm256_loadu_si256((const __m256i *)(qs + b * 32)), y);
        } else if (kind == KIND_Q4_0) {
            p = dot_i8(_mm256_sub_epi8(nibbles(qs + b * 16), _mm256_set1_epi8(8)), y);
        } else { /* Q4_1: unsigned quants, the minimum times sum(x) added after */
            p = _mm256_madd_epi16(_mm256_maddubs_epi16(nibbles(qs + b * 16), y),
                                  _mm256_set1_epi16(1));
            extra += m[b] * xs[b];
        }
        acc = _mm256_fmadd_ps(_mm256_set1_ps(d[b] * xd[b]), _mm256_cvtepi32_ps(p), acc);
    }
    return hsum8(acc) + extra;
#else
    float total = 0.f;
    for (int b = 0; b < nb; b++) {
        const int8_t *y = xq + b * 32;
        int acc = 0;
        if (kind == KIND_Q8_0) {
            const int8_t *q = (const int8_t *)qs + b * 32;
            for (int i = 0; i < 32; i++) acc += q[i] * y[i];
            total += d[b] * xd[b] * (float)acc;
        } else {
            const uint8_t *q = qs + b * 16;
            for (int i = 0; i < 16; i++) acc += (q[i] & 15) * y[i] + (q[i] >> 4) * y[i + 16];
            if (kind == KIND_Q4_0) total += d[b] * (xd[b] * (float)acc - 8.f * xs[b]);
            else total += d[b] * xd[b] * (float)acc + m[b] * xs[b];
        }
    }
    return total;
#endif
}

/* out[s, i] = W[rows[i]] . x[s] for i < n (rows NULL: row i), W (R, K) in `kind` planes:
 * qs (R, K/2) or (R, K) bytes, d and m (R, K/32). out (S, n). */
void gemv_rows(int kind, const uint8_t *qs, const float *d, const float *m, int K,
               const int32_t *rows, int n, const int8_t *xq, const float *xd, const float *xs,
               int S, float *out) {
    int nb = K / 32;
    int64_t row_bytes = kind == KIND_Q8_0 ? K : K / 2;
    #pragma omp parallel for schedule(static)
    for (int i = 0; i < n; i++) {
        int64_t r = rows ? rows[i] : i;
        for (int s = 0; s < S; s++)
            out[(int64_t)s * n + i] = row_dot(kind, qs + r * row_bytes, d + r * nb,
                                              m ? m + r * nb : 0, nb, xq + (int64_t)s * K,
                                              xd + (int64_t)s * nb, xs + (int64_t)s * nb);
    }
}

/* y[s] = sum_i h[s, i] * W[rows[i]] over Q8_0 rows of K (the transposed down projection):
 * qs (R, K) int8, d (R, K/32). h (S, n), y (S, K), overwritten. Each thread owns a slice of
 * y's columns (CHUNK blocks, in L1 throughout) and streams that slice of every active row. */
#define CHUNK 8
void axpy_rows_q8(const int8_t *qs, const float *d, int K, const int32_t *rows, int n,
                  const float *h, int S, float *y) {
    int nb = K / 32, n_chunks = (nb + CHUNK - 1) / CHUNK;
    memset(y, 0, sizeof(float) * (size_t)S * K);
    #pragma omp parallel for schedule(static)
    for (int c = 0; c < n_chunks; c++) {
        int b0 = c * CHUNK, b1 = b0 + CHUNK < nb ? b0 + CHUNK : nb;
        for (int i = 0; i < n; i++) {
            int64_t r = rows ? rows[i] : i;
            for (int s = 0; s < S; s++) {
                float hi = h[(int64_t)s * n + i];
                if (hi == 0.f) continue;
                for (int b = b0; b < b1; b++) {
                    const int8_t *q = qs + r * K + b * 32;
                    float f = hi * d[r * nb + b];
                    float *out = y + (int64_t)s * K + b * 32;
#if defined(__AVX2__)
                    __m256 vf = _mm256_set1_ps(f);
                    for (int e = 0; e < 32; e += 8) {
                        __m256 w = _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(
                            _mm_loadl_epi64((const __m128i *)(q + e))));
                        _mm256_storeu_ps(out + e, _mm256_fmadd_ps(vf, w, _mm256_loadu_ps(out + e)));
                    }
#else
                    for (int e = 0; e < 32; e++) out[e] += f * (float)q[e];
#endif
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
