#include "CACMKernels.h"

#include <immintrin.h>
#include <math.h>
#include <stdint.h>
#include <string.h>

// One clone per instruction set; the loader picks the best the CPU has (an ifunc). The AVX2 clone is x86-64-v3,
// AVX2 with FMA and F16C: a bare "avx2" clone has neither, so it multiplied and added apart and converted every
// half-precision weight with a libgcc call (__extendhfsf2: 31% of a Whisper transcription's time on an AVX2 CPU).
// Not under ThreadSanitizer: it instruments the ifunc resolvers too, and the loader runs them while relocating the
// executable, before the TSan runtime is set up, which crashes at start (scripts/test-sanitizers). The TSan build
// runs the baseline clone, the same C.
#if defined(__has_feature)
#if __has_feature(thread_sanitizer)
#define KERNEL
#endif
#endif
#ifndef KERNEL
#define KERNEL __attribute__((target_clones("avx512f", "arch=x86-64-v3", "default")))
#endif

#define LOG2E 1.44269504088896341f

// exp(x) by range reduction to 2^n·e^r, |r| ≤ ln2/2, and Cephes' expf polynomial: about 2 float ulps.
// Rounding and 2^n use the 1.5·2^23 trick: adding it leaves round(y) in the low mantissa bits.
// The same arithmetic as expApprox in Kernels.swift (tanh's).
static inline float exp_approx(float a) {
    float x = a > 88.3f ? 88.3f : a;
    x = x < -87.3f ? -87.3f : x;
    const float magic = 12582912.0f;
    float shifted = x * LOG2E + magic;
    float n = shifted - magic;
    float r = x - n * 0.693359375f;
    r = r + n * 2.12194440e-4f;
    float z = r * r;
    float y = 1.9875691500e-4f;
    y = y * r + 1.3981999507e-3f;
    y = y * r + 8.3334519073e-3f;
    y = y * r + 4.1665795894e-2f;
    y = y * r + 1.6666665459e-1f;
    y = y * r + 5.0000001201e-1f;
    y = y * z + r + 1;
    int32_t s, m;
    memcpy(&s, &shifted, 4);
    memcpy(&m, &magic, 4);
    int32_t bits = (int32_t)((uint32_t)((s - m) + 127) << 23);
    float two_to_n;
    memcpy(&two_to_n, &bits, 4);
    return y * two_to_n;
}

// erf(x) as x·P(x²)/Q(x²) on x clamped to [-4, 4] (Eigen's and XLA's form), accurate to a few float ulps.
static inline float erf_approx(float a) {
    float x = a > 4 ? 4 : a;
    x = x < -4 ? -4 : x;
    float x2 = x * x;
    float p = -2.72614225801306e-10f;
    p = p * x2 + 2.77068142495902e-08f;
    p = p * x2 - 2.10102402082508e-06f;
    p = p * x2 - 5.69250639462346e-05f;
    p = p * x2 - 7.34990630326855e-04f;
    p = p * x2 - 2.95459980854025e-03f;
    p = p * x2 - 1.60960333262415e-02f;
    p = p * x;
    float q = -1.45660718464996e-05f;
    q = q * x2 - 2.13374055278905e-04f;
    q = q * x2 - 1.68282697438203e-03f;
    q = q * x2 - 7.37332916720468e-03f;
    q = q * x2 - 1.42647390514189e-02f;
    return p / q;
}

static inline float gelu(float v) { return v * 0.5f * (1 + erf_approx(v * 0.70710678118654752f)); }

// The reductions below may be reordered (summed in vector lanes): that is what lets them vectorise.
// gelu 16 lanes at a time, with the same constants and steps, and an exponential of its own for the softmax, for
// the AVX-512 kernels below: the compiler's own vectorisation of the loops above uses 256-bit vectors and leaves
// the softmax's max scalar (its softmax took 12% of the bf16 teacher's time, measured with perf).
#define AVX512 __attribute__((target("avx512f")))

// 2^t, for the softmax's shifted logits in base 2 (t ≤ 0 in the lanes it keeps): t = n + f with n an integer and
// |f| ≤ ½, 2^f by a degree-6 polynomial and 2^n by `scalef`. The polynomial was fitted by least squares weighted
// toward equal relative error over [−½, ½] (numpy; 8e-8 relative with float rounding, where exp_approx's is 2 ulp).
// With the subtraction and the scale, thirteen vector operations a vector of exponentials where exp_approx's range
// reduction in base e and its exponent arithmetic took twenty-two: the softmax was 9% of a capped pass of the
// Fashion-MNIST ViT, and now runs in two thirds of its time. t is taken as at least −125, so that 2^t is not a
// denormal (2^−125 is as good as 0 beside the row's largest value, 1): a denormal result costs a microcode assist.
// For the same reason the callers zero the lanes past a row's end rather than leave them at −∞: such a lane went to
// 2^−125, its product with the sum's reciprocal was a denormal, and the kernel ran three times slower.
AVX512 static inline __m512 exp2_nonpositive512(__m512 t) {
    t = _mm512_max_ps(t, _mm512_set1_ps(-125.0f));
    const __m512 n = _mm512_roundscale_ps(t, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    const __m512 f = _mm512_sub_ps(t, n);
    __m512 p = _mm512_set1_ps(1.534572074888274e-4f);
    p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(1.3399930903688073e-3f));
    p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(9.618489071726799e-3f));
    p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(5.550328642129898e-2f));
    p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(2.4022646248340607e-1f));
    p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(6.931471824645996e-1f));
    p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(1.0f));
    return _mm512_scalef_ps(p, n);
}

AVX512 static inline __m512 gelu512(__m512 v) {
    __m512 x = _mm512_mul_ps(v, _mm512_set1_ps(0.70710678118654752f));
    x = _mm512_min_ps(_mm512_max_ps(x, _mm512_set1_ps(-4)), _mm512_set1_ps(4));
    __m512 x2 = _mm512_mul_ps(x, x);
    __m512 p = _mm512_set1_ps(-2.72614225801306e-10f);
    p = _mm512_fmadd_ps(p, x2, _mm512_set1_ps(2.77068142495902e-08f));
    p = _mm512_fmadd_ps(p, x2, _mm512_set1_ps(-2.10102402082508e-06f));
    p = _mm512_fmadd_ps(p, x2, _mm512_set1_ps(-5.69250639462346e-05f));
    p = _mm512_fmadd_ps(p, x2, _mm512_set1_ps(-7.34990630326855e-04f));
    p = _mm512_fmadd_ps(p, x2, _mm512_set1_ps(-2.95459980854025e-03f));
    p = _mm512_fmadd_ps(p, x2, _mm512_set1_ps(-1.60960333262415e-02f));
    p = _mm512_mul_ps(p, x);
    __m512 q = _mm512_set1_ps(-1.45660718464996e-05f);
    q = _mm512_fmadd_ps(q, x2, _mm512_set1_ps(-2.13374055278905e-04f));
    q = _mm512_fmadd_ps(q, x2, _mm512_set1_ps(-1.68282697438203e-03f));
    q = _mm512_fmadd_ps(q, x2, _mm512_set1_ps(-7.37332916720468e-03f));
    q = _mm512_fmadd_ps(q, x2, _mm512_set1_ps(-1.42647390514189e-02f));
    // p / q as p·(1/q), 1/q from the 14-bit estimate and one Newton step (about 2⁻²⁶ relative): the divide
    // was half of the kernel's time
    __m512 inv = _mm512_rcp14_ps(q);
    inv = _mm512_mul_ps(inv, _mm512_fnmadd_ps(q, inv, _mm512_set1_ps(2)));
    __m512 erf = _mm512_mul_ps(p, inv);
    return _mm512_mul_ps(_mm512_mul_ps(v, _mm512_set1_ps(0.5f)), _mm512_add_ps(_mm512_set1_ps(1), erf));
}

KERNEL static void softmax_rows(float *x, long rows, long n, long ld, float scale);
KERNEL static void gelu_rows(float *x, long rows, long columns, long ld, const float *bias);

static inline __mmask16 tail_mask(long left) { return (__mmask16)(left >= 16 ? 0xffff : (1u << left) - 1); }

// The exponentials go to `e`, whole vectors, and only the scaled results to the row, masked: a load of what a
// masked store just wrote cannot take it from the store buffer, and waits for it to reach the cache (the
// rows of 50 scores of the Fashion-MNIST ViT ran at a third of the speed that way).
enum { SOFTMAX_BUFFER = 8192 };

// Up to ROWS_AT_ONCE rows in step: a short row is a chain of dependent steps (max, its horizontal reduction,
// the exponentials, their sum's), and the rows side by side let the core overlap the chains.
enum { ROWS_AT_ONCE = 4 };

// The softmax, as many rows in step as the buffer holds, up to ROWS_AT_ONCE (Whisper's 1,500 keys: 4 rows in
// 24 KB), the last pass's store given as STORE(row, c, mask, values). Rows of at most SOFTMAX_BUFFER.
#define SOFTMAX_ROWS_BODY(STORE)                                                                                    \
    const long padded = (n + 15) & ~15L;                                                                           \
    const long step = SOFTMAX_BUFFER / padded < ROWS_AT_ONCE ? SOFTMAX_BUFFER / padded : ROWS_AT_ONCE;             \
    float e[SOFTMAX_BUFFER] __attribute__((aligned(64)));                                                          \
    const __m512 vscale = _mm512_set1_ps(scale * LOG2E), lowest = _mm512_set1_ps(-INFINITY);                        \
    for (long r0 = 0; r0 < rows; r0 += step) {                                                                     \
        const long count = rows - r0 < step ? rows - r0 : step;                                                   \
        __m512 vm[ROWS_AT_ONCE], vs[ROWS_AT_ONCE], m[ROWS_AT_ONCE];                                                \
        for (long i = 0; i < count; i++) vm[i] = lowest, vs[i] = _mm512_setzero_ps();                             \
        for (long c = 0; c < n; c += 16)                                                                           \
            for (long i = 0; i < count; i++)                                                                       \
                vm[i] = _mm512_max_ps(vm[i], _mm512_mask_loadu_ps(lowest, tail_mask(n - c), x + (r0 + i) * ld + c)); \
        for (long i = 0; i < count; i++) m[i] = _mm512_set1_ps(_mm512_reduce_max_ps(vm[i]));                     \
        for (long c = 0; c < n; c += 16) {                                                                         \
            __mmask16 k = tail_mask(n - c);                                                                        \
            for (long i = 0; i < count; i++) {                                                                     \
                __m512 v = exp2_nonpositive512(                                                                    \
                    _mm512_mul_ps(_mm512_sub_ps(_mm512_maskz_loadu_ps(k, x + (r0 + i) * ld + c), m[i]), vscale));      \
                _mm512_store_ps(e + i * padded + c, v);                                                            \
                vs[i] = _mm512_mask_add_ps(vs[i], k, vs[i], v);                                                    \
            }                                                                                                      \
        }                                                                                                          \
        for (long i = 0; i < count; i++) {                                                                         \
            const __m512 inv = _mm512_set1_ps(1 / _mm512_reduce_add_ps(vs[i]));                                   \
            for (long c = 0; c < n; c += 16)                                                                       \
                STORE(r0 + i, c, tail_mask(n - c), _mm512_mul_ps(_mm512_load_ps(e + i * padded + c), inv));        \
        }                                                                                                          \
    }

#define STORE_FLOAT(r, c, mask, v) _mm512_mask_storeu_ps(x + (r) * ld + (c), mask, v)
// bfloat16, and a zero after an odd row's last value (the pad of its last pair)
#define STORE_BF16(r, c, mask, v)                                                                                  \
    _mm256_mask_storeu_epi16(out16 + (r) * ld16 + (c), (n - (c) < 16 && n % 2) ? (__mmask16)(((mask) << 1) | 1) : (mask), \
                             (__m256i)_mm512_cvtneps_pbh(_mm512_maskz_mov_ps(mask, v)))

// Rows of at most 16·V values (the Fashion-MNIST ViT's 50 keys: V = 4): a row's vectors stay in registers from
// the loads to the stores, with nothing through memory between the passes. The rows below are loaded before the
// rows above them are stored: a load that overlaps a masked store still in flight waits for it to reach the
// cache, and consecutive rows of 50 floats share cache lines (loaded after, this kernel took 15% of the ViT's
// time instead of 9%). Two rows go in step: one row is a chain of dependent steps (its max's horizontal
// reduction, the exponentials, their sum's reduction, the reciprocal), and two chains side by side let the
// core overlap them. Each row's operations are those of SOFTMAX_ROWS_BODY, in the same order, so the same results.
// Inlined with V a constant at each of softmax_rows_avx512's cases, so each gets its own unrolled copy.
AVX512 static inline __attribute__((always_inline)) void softmax_short_rows(float *x, long rows, long n, long ld,
                                                                            float scale, const int V) {
    __mmask16 k[4];
    for (int j = 0; j < V; j++) k[j] = n - 16 * j <= 0 ? 0 : tail_mask(n - 16 * j);
    const __m512 vscale = _mm512_set1_ps(scale * LOG2E), lowest = _mm512_set1_ps(-INFINITY);
    __m512 v[2][4];
    for (int i = 0; i < 2 && i < rows; i++)
        for (int j = 0; j < V; j++) v[i][j] = _mm512_mask_loadu_ps(lowest, k[j], x + i * ld + 16 * j);
    for (long r = 0; r < rows;) {
        // rows r and r + 1 (or r alone, the last of an odd count) are in v
        const int count = rows - r >= 2 ? 2 : 1;
#define SHORT_SOFTMAX_STEP(C)                                                                                      \
        {                                                                                                          \
            __m512 m[C], s[C], e[C][4];                                                                            \
            for (int i = 0; i < C; i++) {                                                                          \
                __m512 vm = lowest;                                                                                \
                for (int j = 0; j < V; j++) vm = _mm512_max_ps(vm, v[i][j]);                                       \
                m[i] = _mm512_set1_ps(_mm512_reduce_max_ps(vm));                                                   \
                s[i] = _mm512_setzero_ps();                                                                        \
            }                                                                                                      \
            for (int j = 0; j < V; j++)                                                                            \
                for (int i = 0; i < C; i++) {                                                                      \
                    e[i][j] = exp2_nonpositive512(_mm512_mul_ps(_mm512_sub_ps(_mm512_maskz_mov_ps(k[j], v[i][j]), m[i]), vscale)); \
                    s[i] = _mm512_mask_add_ps(s[i], k[j], s[i], e[i][j]);                                          \
                }                                                                                                  \
            for (int i = 0; i < 2 && r + C + i < rows; i++)                                                        \
                for (int j = 0; j < V; j++)                                                                        \
                    v[i][j] = _mm512_mask_loadu_ps(lowest, k[j], x + (r + C + i) * ld + 16 * j);                   \
            for (int i = 0; i < C; i++) {                                                                          \
                const __m512 inv = _mm512_set1_ps(1 / _mm512_reduce_add_ps(s[i]));                                 \
                for (int j = 0; j < V; j++)                                                                        \
                    _mm512_mask_storeu_ps(x + (r + i) * ld + 16 * j, k[j], _mm512_mul_ps(e[i][j], inv));           \
            }                                                                                                      \
        }
        if (count == 2) SHORT_SOFTMAX_STEP(2) else SHORT_SOFTMAX_STEP(1)
#undef SHORT_SOFTMAX_STEP
        r += count;
    }
}

AVX512 static void softmax_rows_avx512(float *x, long rows, long n, long ld, float scale) {
    switch ((n + 15) / 16) {
    case 1: softmax_short_rows(x, rows, n, ld, scale, 1); return;
    case 2: softmax_short_rows(x, rows, n, ld, scale, 2); return;
    case 3: softmax_short_rows(x, rows, n, ld, scale, 3); return;
    case 4: softmax_short_rows(x, rows, n, ld, scale, 4); return;
    default: break;
    }
    if (n > SOFTMAX_BUFFER) {
        softmax_rows(x, rows, n, ld, scale);
        return;
    }
    SOFTMAX_ROWS_BODY(STORE_FLOAT)
}

__attribute__((target("avx512f,avx512bw,avx512vl,avx512bf16")))
void acm_softmax_rows_bf16(const float *x, long rows, long n, long ld, float scale, unsigned short *out16, long ld16) {
    SOFTMAX_ROWS_BODY(STORE_BF16)
}

// One pass over the tile where GELU in place and the rounding after it took two, with a function call per row
// for the rounding.
__attribute__((target("avx512f,avx512bw,avx512vl,avx512bf16")))
void acm_finish_rows_bf16(const float *x, long rows, long columns, long ld, const float *bias, int gelu,
                          unsigned short *out16, long ld16) {
    for (long r = 0; r < rows; r++) {
        const float *row = x + r * ld;
        for (long c = 0; c < columns; c += 16) {
            __mmask16 k = tail_mask(columns - c);
            __m512 v = _mm512_maskz_loadu_ps(k, row + c);
            if (bias) v = _mm512_add_ps(v, _mm512_maskz_loadu_ps(k, bias + c));
            if (gelu) v = gelu512(v);
            _mm256_mask_storeu_epi16(out16 + r * ld16 + c, k, (__m256i)_mm512_cvtneps_pbh(v));
        }
    }
}

AVX512 static void gelu_rows_avx512(float *x, long rows, long columns, long ld, const float *bias) {
    for (long r = 0; r < rows; r++) {
        float *row = x + r * ld;
        for (long c = 0; c < columns; c += 16) {
            __mmask16 k = tail_mask(columns - c);
            __m512 v = _mm512_maskz_loadu_ps(k, row + c);
            if (bias) v = _mm512_add_ps(v, _mm512_maskz_loadu_ps(k, bias + c));
            _mm512_mask_storeu_ps(row + c, k, gelu512(v));
        }
    }
}

static int has_avx512f(void) {
    // Atomic (relaxed): the kernels' first calls race to fill it in, all with the same answer; a plain int would be
    // a data race.
    static int yes = -1;
    int v = __atomic_load_n(&yes, __ATOMIC_RELAXED);
    if (v < 0) {
        __builtin_cpu_init();
        v = __builtin_cpu_supports("avx512f");
        __atomic_store_n(&yes, v, __ATOMIC_RELAXED);
    }
    return v;
}

// Lane 4i of the result: the sum of the 16 lanes of the i-th argument. Three rounds of shuffles and adds for
// four vectors, where one reduction each takes four.
AVX512 static inline __m512 sum_lanes4(__m512 a, __m512 b, __m512 c, __m512 d) {
    __m512 ab = _mm512_add_ps(_mm512_shuffle_f32x4(a, b, 0x44), _mm512_shuffle_f32x4(a, b, 0xEE));
    __m512 cd = _mm512_add_ps(_mm512_shuffle_f32x4(c, d, 0x44), _mm512_shuffle_f32x4(c, d, 0xEE));
    __m512 v = _mm512_add_ps(_mm512_shuffle_f32x4(ab, cd, 0x88), _mm512_shuffle_f32x4(ab, cd, 0xDD));
    v = _mm512_add_ps(v, _mm512_permute_ps(v, 0x4E));
    return _mm512_add_ps(v, _mm512_permute_ps(v, 0xB1));
}

// C[m×N] (+)= A[m×k]·Bᵀ for Bᵀ [N×k] (B's columns as rows), N ≤ 6: four rows at a time, each output a dot
// product held in a vector of 16 partial sums.
#define NARROW_GEMM(N)                                                                                             \
    AVX512 static void gemm_narrow_##N(long m, long k, const float *a, long lda, const float *bt, int beta,      \
                                       float *c, long ldc) {                                                     \
        long r = 0;                                                                                              \
        for (; r + 4 <= m; r += 4) {                                                                             \
            __m512 acc[4][N];                                                                                    \
            for (int i = 0; i < 4; i++)                                                                          \
                for (int j = 0; j < N; j++) acc[i][j] = _mm512_setzero_ps();                                     \
            for (long p = 0; p < k; p += 16) {                                                                   \
                __mmask16 mask = tail_mask(k - p);                                                               \
                __m512 x[4];                                                                                     \
                for (int i = 0; i < 4; i++) x[i] = _mm512_maskz_loadu_ps(mask, a + (r + i) * lda + p);          \
                for (int j = 0; j < N; j++) {                                                                    \
                    __m512 w = _mm512_maskz_loadu_ps(mask, bt + j * k + p);                                      \
                    for (int i = 0; i < 4; i++) acc[i][j] = _mm512_fmadd_ps(x[i], w, acc[i][j]);                 \
                }                                                                                                \
            }                                                                                                    \
            for (int j = 0; j < N; j++) {                                                                        \
                float sums[16];                                                                                  \
                _mm512_storeu_ps(sums, sum_lanes4(acc[0][j], acc[1][j], acc[2][j], acc[3][j]));                  \
                for (int i = 0; i < 4; i++) {                                                                    \
                    float *out = c + (r + i) * ldc + j;                                                          \
                    *out = beta ? *out + sums[4 * i] : sums[4 * i];                                              \
                }                                                                                                \
            }                                                                                                    \
        }                                                                                                        \
        for (; r < m; r++) {                                                                                     \
            __m512 acc[N];                                                                                       \
            for (int j = 0; j < N; j++) acc[j] = _mm512_setzero_ps();                                            \
            for (long p = 0; p < k; p += 16) {                                                                   \
                __mmask16 mask = tail_mask(k - p);                                                               \
                __m512 x = _mm512_maskz_loadu_ps(mask, a + r * lda + p);                                         \
                for (int j = 0; j < N; j++)                                                                      \
                    acc[j] = _mm512_fmadd_ps(x, _mm512_maskz_loadu_ps(mask, bt + j * k + p), acc[j]);            \
            }                                                                                                    \
            for (int j = 0; j < N; j++) {                                                                        \
                float *out = c + r * ldc + j;                                                                    \
                float sum = _mm512_reduce_add_ps(acc[j]);                                                        \
                *out = beta ? *out + sum : sum;                                                                  \
            }                                                                                                    \
        }                                                                                                        \
    }
NARROW_GEMM(1)
NARROW_GEMM(2)
NARROW_GEMM(3)
NARROW_GEMM(4)
NARROW_GEMM(5)
NARROW_GEMM(6)

int acm_gemm_narrow(long m, long n, long k, const float *a, long lda, const float *b, long ldb, int beta, float *c,
                    long ldc) {
    if (n < 1 || n > 6 || k > 1024 || !has_avx512f()) return 0;
    float bt[6 * 1024];
    for (long j = 0; j < n; j++)
        for (long p = 0; p < k; p++) bt[j * k + p] = b[p * ldb + j];
    switch (n) {
    case 1: gemm_narrow_1(m, k, a, lda, bt, beta, c, ldc); break;
    case 2: gemm_narrow_2(m, k, a, lda, bt, beta, c, ldc); break;
    case 3: gemm_narrow_3(m, k, a, lda, bt, beta, c, ldc); break;
    case 4: gemm_narrow_4(m, k, a, lda, bt, beta, c, ldc); break;
    case 5: gemm_narrow_5(m, k, a, lda, bt, beta, c, ldc); break;
    default: gemm_narrow_6(m, k, a, lda, bt, beta, c, ldc); break;
    }
    return 1;
}

void acm_softmax_rows(float *x, long rows, long n, long ld, float scale) {
    if (has_avx512f()) {
        softmax_rows_avx512(x, rows, n, ld, scale);
    } else {
        softmax_rows(x, rows, n, ld, scale);
    }
}

void acm_gelu_rows(float *x, long rows, long columns, long ld, const float *bias) {
    if (has_avx512f()) {
        gelu_rows_avx512(x, rows, columns, ld, bias);
    } else {
        gelu_rows(x, rows, columns, ld, bias);
    }
}

// The loops the AVX-512 kernels above mirror, for other CPUs.
KERNEL static void softmax_rows(float *x, long rows, long n, long ld, float scale) {
#pragma clang fp reassociate(on)
    for (long r = 0; r < rows; r++) {
        float *row = x + r * ld;
        float m = row[0];
        for (long c = 1; c < n; c++) m = row[c] > m ? row[c] : m;
        float sum = 0;
        for (long c = 0; c < n; c++) {
            float e = exp_approx((row[c] - m) * scale);
            row[c] = e;
            sum += e;
        }
        float inv = 1 / sum;
        for (long c = 0; c < n; c++) row[c] *= inv;
    }
}

KERNEL void acm_layer_norm_rows(const float *x, long rows, long d, const float *gamma, const float *beta, float eps,
                                float *out) {
#pragma clang fp reassociate(on)
    for (long r = 0; r < rows; r++) {
        const float *xr = x + r * d;
        float *yr = out + r * d;
        float sum = 0;
        for (long c = 0; c < d; c++) sum += xr[c];
        float mean = sum / (float)d;
        float sq = 0;
        for (long c = 0; c < d; c++) sq += (xr[c] - mean) * (xr[c] - mean);
        float rstd = 1 / __builtin_sqrtf(sq / (float)d + eps);
        // an empty asm hides that rstd is a reciprocal: under reassociate(on) the compiler turns
        // (x - mean) * (1 / s) back into a division per element, which costs most of the loop
        __asm__("" : "+x"(rstd));
        for (long c = 0; c < d; c++) yr[c] = (xr[c] - mean) * rstd * gamma[c] + beta[c];
    }
}

KERNEL static void gelu_rows(float *x, long rows, long columns, long ld, const float *bias) {
    for (long r = 0; r < rows; r++) {
        float *row = x + r * ld;
        if (bias) {
            for (long c = 0; c < columns; c++) row[c] = gelu(row[c] + bias[c]);
        } else {
            for (long c = 0; c < columns; c++) row[c] = gelu(row[c]);
        }
    }
}

KERNEL void acm_add_bias_rows(float *x, long rows, long columns, long ld, const float *bias) {
    for (long r = 0; r < rows; r++) {
        float *row = x + r * ld;
        for (long c = 0; c < columns; c++) row[c] += bias[c];
    }
}

KERNEL void acm_add(float *restrict x, const float *restrict y, long n) {
    for (long i = 0; i < n; i++) x[i] += y[i];
}

KERNEL float acm_sum_exp(const float *restrict x, long n, float shift) {
#pragma clang fp reassociate(on)
    float sum = 0;
    for (long i = 0; i < n; i++) sum += exp_approx(x[i] - shift);
    return sum;
}

// e^v for v in [-700, 0] (Cephes); inlined into each instruction set's clone of its callers.
static inline double exp_f64(double v) {
    v = v < -700.0 ? -700.0 : v;
    v = v > 0.0 ? 0.0 : v;
    // n = round(v·log2 e), by the 1.5·2^52 trick; r = v − n·ln 2 in two parts
    const double magic = 6755399441055744.0;
    double shifted = v * 1.4426950408889634073599 + magic;
    double k = shifted - magic;
    double r = v - k * 6.93145751953125E-1;
    r = r - k * 1.42860682030941723212E-6;
    double rr = r * r;
    double p = ((1.26177193074810590878E-4 * rr + 3.02994407707441961300E-2) * rr + 9.99999999999999999910E-1) * r;
    double q = ((3.00198505138664455042E-6 * rr + 2.52448340349684104192E-3) * rr + 2.27265548208155028766E-1) * rr +
               2.00000000000000000009E0;
    double e = 1.0 + 2.0 * (p / (q - p));
    // 2^k by its bit pattern: k ≥ -1010 here, a normal double. k is in the low bits of `shifted` (1.5·2^52 + k),
    // whose own high bits the shift drops: integer arithmetic only, where (int64_t)k has no AVX-512F
    // instruction and ran element by element
    int64_t bits;
    memcpy(&bits, &shifted, 8);
    bits = (int64_t)((uint64_t)(bits + 1023) << 52);
    double two_to_k;
    memcpy(&two_to_k, &bits, 8);
    return e * two_to_k;
}

KERNEL void acm_exp_f64(const double *x, double *out, long n) {
    for (long i = 0; i < n; i++) out[i] = exp_f64(x[i]);
}

// The rows t with ks[t] >= level, in order, into token; returns their number.
static inline long reaching_rows(long rows, const int *ks, int level, int *token) {
    long n = 0;
    for (long t = 0; t < rows; t++) {
        token[n] = (int)t;
        n += ks[t] >= level;
    }
    return n;
}

// exp_f64 on eight lanes, the same operations in the same order (with the multiply-adds fused where the
// avx512f clone of the scalar code fuses them), so that each lane is the scalar result bit for bit
// (KernelTests.dispatchedChoiceKernelsMatchPortable).
AVX512 static inline __m512d exp_f64_512(__m512d v) {
    v = _mm512_max_pd(_mm512_set1_pd(-700.0), v);  // v < -700 ? -700 : v, NaN kept
    v = _mm512_min_pd(_mm512_setzero_pd(), v);     // v > 0 ? 0 : v, NaN kept
    const __m512d magic = _mm512_set1_pd(6755399441055744.0);
    __m512d shifted = _mm512_fmadd_pd(v, _mm512_set1_pd(1.4426950408889634073599), magic);
    __m512d k = _mm512_sub_pd(shifted, magic);
    __m512d r = _mm512_fnmadd_pd(k, _mm512_set1_pd(6.93145751953125E-1), v);
    r = _mm512_fnmadd_pd(k, _mm512_set1_pd(1.42860682030941723212E-6), r);
    __m512d rr = _mm512_mul_pd(r, r);
    __m512d p = _mm512_fmadd_pd(_mm512_set1_pd(1.26177193074810590878E-4), rr, _mm512_set1_pd(3.02994407707441961300E-2));
    p = _mm512_mul_pd(_mm512_fmadd_pd(p, rr, _mm512_set1_pd(9.99999999999999999910E-1)), r);
    __m512d q = _mm512_fmadd_pd(_mm512_set1_pd(3.00198505138664455042E-6), rr, _mm512_set1_pd(2.52448340349684104192E-3));
    q = _mm512_fmadd_pd(q, rr, _mm512_set1_pd(2.27265548208155028766E-1));
    q = _mm512_fmadd_pd(q, rr, _mm512_set1_pd(2.00000000000000000009E0));
    __m512d e = _mm512_fmadd_pd(_mm512_set1_pd(2.0), _mm512_div_pd(p, _mm512_sub_pd(q, p)), _mm512_set1_pd(1.0));
    __m512i bits = _mm512_slli_epi64(_mm512_add_epi64(_mm512_castpd_si512(shifted), _mm512_set1_epi64(1023)), 52);
    return _mm512_mul_pd(e, _mm512_castsi512_pd(bits));
}

// acm_reaching_survival with AVX-512, eight reaching rows at a time in registers: their logits gathered column by
// column, where the portable loops below made six passes over the rows through memory, and finished their last
// few rows (up to seven, of a sequence's few dozen) one by one, each exponential with a scalar divide.
AVX512 static long reaching_survival_avx512(const float *x, long rows, long choices, long ld, const int *ks, int level,
                                           long top, double *survival, int *token) {
#pragma clang fp contract(off)
    long n = reaching_rows(rows, ks, level, token);
    double e[choices][8];
    for (long i = 0; i < n; i += 8) {
        long lanes = n - i < 8 ? n - i : 8;
        int tok[8] = {0};
        for (long j = 0; j < lanes; j++) tok[j] = token[i + j];
        __m256i row = _mm256_mullo_epi32(_mm256_loadu_si256((const __m256i *)tok), _mm256_set1_epi32((int)ld));
        // lanes past the reaching rows read row 0's logits (token 0): in bounds, and never stored
        __m512d m = _mm512_set1_pd(-__builtin_inf());
        for (long c = 0; c < choices; c++) {
            __m512d v = _mm512_cvtps_pd(_mm256_i32gather_ps(x + c, row, 4));
            _mm512_storeu_pd(e[c], v);
            m = _mm512_max_pd(v, m);  // v > m ? v : m
        }
        __m512d sum = _mm512_setzero_pd();
        for (long c = 0; c < choices; c++) {
            __m512d ec = exp_f64_512(_mm512_sub_pd(_mm512_loadu_pd(e[c]), m));
            _mm512_storeu_pd(e[c], ec);
            sum = _mm512_add_pd(sum, ec);
        }
        __m512d inv = _mm512_div_pd(_mm512_set1_pd(1.0), sum);
        __m512d s = _mm512_setzero_pd();
        for (long c = choices - 1; c >= top; c--) s = _mm512_add_pd(s, _mm512_mul_pd(_mm512_loadu_pd(e[c]), inv));
        _mm512_mask_storeu_pd(survival + i, (__mmask8)((1u << lanes) - 1), s);
    }
    return n;
}

KERNEL long acm_reaching_survival_portable(const float *x, long rows, long choices, long ld, const int *ks, int level,
                                           long top, double *scratch, double *survival, int *token);

long acm_reaching_survival(const float *x, long rows, long choices, long ld, const int *ks, int level, long top,
                           double *scratch, double *survival, int *token) {
    if (has_avx512f()) return reaching_survival_avx512(x, rows, choices, ld, ks, level, top, survival, token);
    return acm_reaching_survival_portable(x, rows, choices, ld, ks, level, top, scratch, survival, token);
}

KERNEL long acm_reaching_survival_portable(const float *x, long rows, long choices, long ld, const int *ks, int level,
                                           long top, double *scratch, double *survival, int *token) {
    // The reaching rows, then column by column across them (so that every step below is one vector loop over
    // the rows): e[c·n + r] = exp(z_rc − max_c z_rc), their sums, and the survival sums from the top choice
    // down, in the same order per row as a row-by-row loop.
    long n = reaching_rows(rows, ks, level, token);
    double *restrict e = scratch, *restrict m = scratch + n * choices;
    for (long r = 0; r < n; r++) m[r] = -__builtin_inf();
    for (long c = 0; c < choices; c++) {
        double *restrict ec = e + c * n;
        for (long r = 0; r < n; r++) {
            double v = (double)x[(long)token[r] * ld + c];
            ec[r] = v;
            m[r] = v > m[r] ? v : m[r];
        }
    }
    for (long c = 0; c < choices; c++) {
        double *restrict ec = e + c * n;
        for (long r = 0; r < n; r++) ec[r] = exp_f64(ec[r] - m[r]);
    }
    double *restrict sum = m, *restrict s = survival;
    for (long r = 0; r < n; r++) sum[r] = 0.0;
    for (long c = 0; c < choices; c++) {
        const double *restrict ec = e + c * n;
        for (long r = 0; r < n; r++) sum[r] += ec[r];
    }
    // p = e·(1/sum), as torch.softmax does: one division per row, where one per element was most of the time
    for (long r = 0; r < n; r++) {
        s[r] = 0.0;
        sum[r] = 1.0 / sum[r];
    }
    for (long c = choices - 1; c >= top; c--) {
        // each p rounded before it is added (no fused multiply-add), as torch's softmax then cumsum
#pragma clang fp contract(off)
        const double *restrict ec = e + c * n;
        for (long r = 0; r < n; r++) s[r] += ec[r] * sum[r];
    }
    return n;
}

// acm_argmax_rows with AVX-512: sixteen rows at a time, their logits gathered column by column, and the winner of
// each lane kept by mask; the same comparisons as the portable loop (`>`, so a NaN never wins and ties go to the
// smaller index). The portable loop ran each short row's choices as its own scalar loop.
AVX512 static long argmax_rows_avx512(const float *x, long rows, long choices, long ld, int offset, int *best,
                                      long *histogram) {
    const __m512i lanes = _mm512_mullo_epi32(
        _mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15), _mm512_set1_epi32((int)ld));
    __m512i sum = _mm512_setzero_si512();
    for (long r = 0; r < rows; r += 16) {
        __mmask16 m = tail_mask(rows - r);
        const float *base = x + r * ld;
        __m512 top = _mm512_mask_i32gather_ps(_mm512_setzero_ps(), m, lanes, base, 4);
        __m512i b = _mm512_setzero_si512();
        for (long c = 1; c < choices; c++) {
            __m512 v = _mm512_mask_i32gather_ps(_mm512_setzero_ps(), m, lanes, base + c, 4);
            __mmask16 greater = _mm512_cmp_ps_mask(v, top, _CMP_GT_OQ);
            top = _mm512_mask_mov_ps(top, greater, v);
            b = _mm512_mask_mov_epi32(b, greater, _mm512_set1_epi32((int)c));
        }
        _mm512_mask_storeu_epi32(best + r, m, _mm512_add_epi32(b, _mm512_set1_epi32(offset)));
        for (long c = 0; c < choices; c++)
            histogram[c] += __builtin_popcount(_mm512_mask_cmpeq_epi32_mask(m, b, _mm512_set1_epi32((int)c)));
        sum = _mm512_mask_add_epi32(sum, m, sum, b);
    }
    return (long)offset * rows + _mm512_reduce_add_epi32(sum);
}

KERNEL long acm_argmax_rows_portable(const float *x, long rows, long choices, long ld, int offset, int *best,
                                     long *histogram);

long acm_argmax_rows(const float *x, long rows, long choices, long ld, int offset, int *best, long *histogram) {
    if (has_avx512f()) return argmax_rows_avx512(x, rows, choices, ld, offset, best, histogram);
    return acm_argmax_rows_portable(x, rows, choices, ld, offset, best, histogram);
}

KERNEL long acm_argmax_rows_portable(const float *x, long rows, long choices, long ld, int offset, int *best,
                                     long *histogram) {
    // four histograms, so that consecutive rows with the same winner do not wait on each other's
    // increment (a store-to-load chain); summed at the end
    long counts[4][choices];
    memset(counts, 0, sizeof(counts));
    long total = 0;
    for (long t = 0; t < rows; t++) {
        const float *row = x + t * ld;
        float m = row[0];
        int b = 0;
        for (long c = 1; c < choices; c++) {
            int greater = row[c] > m;
            m = greater ? row[c] : m;
            b = greater ? (int)c : b;
        }
        best[t] = offset + b;
        counts[t & 3][b] += 1;
        total += offset + b;
    }
    for (long c = 0; c < choices; c++) histogram[c] += counts[0][c] + counts[1][c] + counts[2][c] + counts[3][c];
    return total;
}

// The k-th largest of a[0..<n) (1 ≤ k ≤ n), reordering a: quickselect with a branch-free partition
// (the order of survival probabilities is unpredictable, and a branch per element mispredicts half the
// time). Stops at a NaN pivot rather than loop.
static double kth_largest(double *a, long n, long k) {
    long lo = 0, hi = n, target = k - 1;
    while (hi - lo > 1) {
        long mid = lo + (hi - lo) / 2;
        double x = a[lo], y = a[mid], z = a[hi - 1];
        double lo2 = x < y ? x : y, hi2 = x < y ? y : x;
        double p = z < lo2 ? lo2 : (z > hi2 ? hi2 : z);  // the median of the three
        // [lo, i): > p; then [i, e): == p; [e, hi): < p
        long i = lo;
        for (long j = lo; j < hi; j++) {
            double v = a[j];
            a[j] = a[i];
            a[i] = v;
            i += v > p;
        }
        if (target < i) {
            hi = i;
            continue;
        }
        long e = i;
        for (long j = i; j < hi; j++) {
            double v = a[j];
            a[j] = a[e];
            a[e] = v;
            e += v == p;
        }
        if (target < e || e == i) return p;
        lo = e;
    }
    return a[lo];
}

static void give_best(const double *survival, const int *token, long n, long k, double *scratch, int *ks) {
    memcpy(scratch, survival, (size_t)n * sizeof(double));
    double v = kth_largest(scratch, n, k);
    long greater = 0;
    for (long r = 0; r < n; r++) greater += survival[r] > v;
    long ties = k - greater;  // the earliest of those equal to v
    for (long r = 0; r < n; r++) {
        int equal = survival[r] == v;
        int take = (survival[r] > v) | (equal & (ties > 0));
        ties -= equal & take;
        ks[token[r]] += take;
    }
}

static inline __mmask8 tail_mask8(long left) { return left >= 8 ? (__mmask8)0xFF : (__mmask8)((1u << left) - 1); }

// give_best with AVX-512: the quickselect partitions eight at a time, out of place (the values above the
// pivot to one buffer, those below to another, by compress: no chain from one element to the next, where the
// in-place partition waited on each swap's store), and the final pass by mask. The compressed vectors are
// stored whole (a compress straight to memory is slow on AMD's cores), so each buffer has 8 doubles to spare.
AVX512 static void give_best_avx512(const double *survival, const int *token, long n, long k, double *scratch, int *ks) {
    double *buffer[3] = {scratch, scratch + n + 8, scratch + 2 * (n + 8)};
    memcpy(buffer[0], survival, (size_t)n * sizeof(double));
    int cur = 0;
    long size = n, target = k - 1;
    double v;
    for (;;) {
        double *a = buffer[cur];
        if (size <= 16) {
            v = kth_largest(a, size, target + 1);
            break;
        }
        double x = a[0], y = a[size / 2], z = a[size - 1];
        double lo2 = x < y ? x : y, hi2 = x < y ? y : x;
        double p = z < lo2 ? lo2 : (z > hi2 ? hi2 : z);  // the median of the three
        int high = (cur + 1) % 3, low = (cur + 2) % 3;
        double *above = buffer[high], *below = buffer[low];
        const __m512d vp = _mm512_set1_pd(p);
        long g = 0, l = 0;
        for (long i = 0; i < size; i += 8) {
            __mmask8 m = tail_mask8(size - i);
            __m512d w = _mm512_maskz_loadu_pd(m, a + i);
            __mmask8 gt = _mm512_mask_cmp_pd_mask(m, w, vp, _CMP_GT_OQ);
            __mmask8 lt = _mm512_mask_cmp_pd_mask(m, w, vp, _CMP_LT_OQ);
            _mm512_storeu_pd(above + g, _mm512_maskz_compress_pd(gt, w));
            _mm512_storeu_pd(below + l, _mm512_maskz_compress_pd(lt, w));
            g += __builtin_popcount(gt);
            l += __builtin_popcount(lt);
        }
        // the rest equal p (or are NaN: then p is returned rather than loop)
        if (target < g) {
            cur = high;
            size = g;
        } else if (target < size - l) {
            v = p;
            break;
        } else {
            target -= size - l;
            cur = low;
            size = l;
        }
    }
    const __m512d vv = _mm512_set1_pd(v);
    long greater = 0;
    for (long i = 0; i < n; i += 8)
        greater += __builtin_popcount(_mm512_mask_cmp_pd_mask(tail_mask8(n - i), _mm512_maskz_loadu_pd(tail_mask8(n - i), survival + i), vv, _CMP_GT_OQ));
    long ties = k - greater;  // the earliest of those equal to v
    for (long i = 0; i < n; i += 8) {
        __mmask8 m = tail_mask8(n - i);
        __m512d w = _mm512_maskz_loadu_pd(m, survival + i);
        unsigned take = _mm512_mask_cmp_pd_mask(m, w, vv, _CMP_GT_OQ);
        unsigned equal = _mm512_mask_cmp_pd_mask(m, w, vv, _CMP_EQ_OQ);
        while (equal && ties > 0) {
            take |= equal & -equal;
            equal &= equal - 1;
            ties--;
        }
        long lanes = n - i < 8 ? n - i : 8;
        for (long j = 0; j < lanes; j++) ks[token[i + j]] += (take >> j) & 1;
    }
}

void acm_give_best(const double *survival, const int *token, long n, long k, double *scratch, int *ks) {
    if (k <= 0) return;
    if (k >= n) {
        for (long r = 0; r < n; r++) ks[token[r]] += 1;
        return;
    }
    if (has_avx512f()) {
        give_best_avx512(survival, token, n, k, scratch, ks);
    } else {
        give_best(survival, token, n, k, scratch, ks);
    }
}

long acm_choose_scratch(long tokens, long choices) {
    long give = 3 * (tokens + 8), portable = 2 * tokens * choices;
    return tokens + (give > portable ? give : portable);
}

long acm_choose_under_cap(const float *logits, long ld, long tokens, int min_choice, int num_learners, long cap,
                          int *ks, double *scratch, int *token) {
    long choices = num_learners + 1 - min_choice;
    long reaching[choices];
    memset(reaching, 0, sizeof(reaching));
    long total = acm_argmax_rows(logits, tokens, choices, ld, min_choice, ks, reaching);
    if (cap < 0 || total <= cap) return total;

    // Units above the k_min floor at each level j: the tokens whose auto k reaches j. Keep whole levels from the
    // bottom while the budget lasts; `boundary` is the level where it runs out.
    // reaching[c] = #{t : k_t >= k_min + c}: the histogram summed from the top
    for (long c = choices - 2; c >= 0; c--) reaching[c] += reaching[c + 1];
    long left = cap - (long)min_choice * tokens;
    int boundary = min_choice + 1;
    while (boundary <= num_learners && reaching[boundary - min_choice] <= left) {
        left -= reaching[boundary - min_choice];
        boundary++;
    }
    long n = 0;
    double *survival = scratch, *buffer = scratch + tokens;
    if (left > 0 && boundary <= num_learners) {
        // at the boundary level, the tokens that reach it ranked by S_t(j) = P(K_t >= j), high to low, ties to the
        // earlier token: the first `left` of them keep their j-th learner
        n = acm_reaching_survival(logits, tokens, choices, ld, ks, boundary, boundary - min_choice, buffer, survival,
                                  token);
    }
    // every token keeps its learners below the boundary level, the first `left` ranked one more
    for (long t = 0; t < tokens; t++) ks[t] = ks[t] < boundary - 1 ? ks[t] : boundary - 1;
    if (n > 0) acm_give_best(survival, token, n, left, buffer, ks);
    return cap;
}

long acm_count_k(const int *ks, long tokens, int n, long *histogram) {
    // four histograms, so that consecutive tokens with the same k do not wait on each other's increment (a
    // store-to-load chain: half of the grouping's time); summed at the end
    long partial[4][n + 1];
    memset(partial, 0, sizeof(partial));
    long sum = 0;
    for (long t = 0; t < tokens; t++) {
        partial[t & 3][ks[t]] += 1;
        sum += ks[t];
    }
    for (int k = 0; k <= n; k++) histogram[k] += partial[0][k] + partial[1][k] + partial[2][k] + partial[3][k];
    return sum;
}

long acm_order_by_k(const int *ks, long tokens, int *floor, int n, long *counts, int *order, int *position,
                    int *identity) {
    memset(counts, 0, (size_t)(n + 1) * sizeof(long));
    acm_count_k(ks, tokens, n, counts);
    int kmin = *floor;
    while (tokens > 0 && kmin < n && counts[kmin] == 0) kmin++;
    *floor = kmin;
    long start[n + 1];
    long active = 0;
    for (int k = n; k > kmin; k--) {
        start[k] = active;
        active += counts[k];
    }
    int same = active == tokens;
    for (long t = 0; t < tokens; t++) {
        int k = ks[t];
        if (k <= kmin) continue;
        long p = start[k]++;
        order[p] = (int)t;
        position[t] = (int)p;
        same &= p == t;
    }
    *identity = same;
    return active;
}

// 16 floats, loaded and stored unaligned: one AVX-512 register in that clone, two or four narrower ones in the
// others
typedef float floats16 __attribute__((vector_size(64), aligned(4)));

// no_builtin: the compiler would otherwise turn the vector loop back into a memcpy call per row
KERNEL __attribute__((no_builtin("memcpy"))) void acm_gather_rows(float *restrict out, const float *restrict x,
                                                                   const int *order, long n, long d) {
    if (d % 16 != 0) {
        for (long p = 0; p < n; p++) memcpy(out + p * d, x + (long)order[p] * d, (size_t)d * sizeof(float));
        return;
    }
    // rows of whole vectors, copied inline: a memcpy call per row cost a third of a 512-byte row's copy
    for (long p = 0; p < n; p++) {
        const floats16 *src = (const floats16 *)(x + (long)order[p] * d);
        floats16 *dst = (floats16 *)(out + p * d);
        for (long i = 0; i < d / 16; i++) dst[i] = src[i];
    }
}

KERNEL void acm_scatter_rows(float *restrict out, const float *restrict ys, const int *position, const int *ks,
                             int kmin, long rows, long d, int accumulate, const float *restrict table) {
    for (long t = 0; t < rows; t++) {
        float *row = out + t * d;
        const float *b = table ? table + (long)ks[t] * d : 0;
        if (ks[t] > kmin) {
            const float *y = ys + (long)position[t] * d;
            // (row + y) + b: the order of the separate scatter and bias passes this replaces
            if (accumulate && b) {
                for (long i = 0; i < d; i++) row[i] = (row[i] + y[i]) + b[i];
            } else if (accumulate) {
                for (long i = 0; i < d; i++) row[i] += y[i];
            } else if (b) {
                for (long i = 0; i < d; i++) row[i] = y[i] + b[i];
            } else {
                memcpy(row, y, (size_t)d * sizeof(float));
            }
        } else if (accumulate) {
            if (b) for (long i = 0; i < d; i++) row[i] += b[i];
        } else if (b) {
            memcpy(row, b, (size_t)d * sizeof(float));
        } else {
            memset(row, 0, (size_t)d * sizeof(float));
        }
    }
}

KERNEL void acm_add_indexed_rows(float *restrict out, const float *restrict table, const int *ks, long rows, long d) {
    for (long t = 0; t < rows; t++) {
        float *row = out + t * d;
        const float *b = table + (long)ks[t] * d;
        for (long i = 0; i < d; i++) row[i] += b[i];
    }
}

// _Float16 loads compile to vcvtph2ps where the clone's instruction set has it (AVX-512F and x86-64-v3 imply
// F16C), and to a call in the default clone.
KERNEL void acm_f16_to_f32(const unsigned short *src, float *dst, long n) {
    const _Float16 *h = (const _Float16 *)src;
    for (long i = 0; i < n; i++) dst[i] = (float)h[i];
}

KERNEL void acm_dot_rows(const float *x, long rows, long ldx, const float *w, long ldw, long outputs, long k,
                         float *out, long ld_out) {
#pragma clang fp reassociate(on)
    for (long j = 0; j < outputs; j++) {
        const float *wj = w + j * ldw;
        for (long r = 0; r < rows; r++) {
            const float *xr = x + r * ldx;
            float sum = 0;
            for (long i = 0; i < k; i++) sum += xr[i] * wj[i];
            out[r * ld_out + j] = sum;
        }
    }
}

KERNEL void acm_weighted_rows(const float *p, long rows, long ldp, const float *v, long ldv, long n, long k,
                              float *out, long ld_out) {
    for (long r = 0; r < rows; r++) {
        float *restrict o = out + r * ld_out;
        const float *pr = p + r * ldp;
        for (long i = 0; i < k; i++) o[i] = 0;
        for (long j = 0; j < n; j++) {
            const float pj = pr[j];
            const float *restrict vj = v + j * ldv;
            for (long i = 0; i < k; i++) o[i] += pj * vj[i];
        }
    }
}

KERNEL void acm_dot_rows_f16(const float *x, long rows, long ldx, const unsigned short *w, long outputs, long k,
                             float *out, long ld_out) {
#pragma clang fp reassociate(on)
    const _Float16 *h = (const _Float16 *)w;
    for (long j = 0; j < outputs; j++) {
        const _Float16 *wj = h + j * k;
        for (long r = 0; r < rows; r++) {
            const float *xr = x + r * ldx;
            float sum = 0;
            for (long i = 0; i < k; i++) sum += xr[i] * (float)wj[i];
            out[r * ld_out + j] = sum;
        }
    }
}

void acm_flush_denormals(void) {
    _mm_setcsr(_mm_getcsr() | 0x8040);  // FTZ (bit 15) | DAZ (bit 6)
}
