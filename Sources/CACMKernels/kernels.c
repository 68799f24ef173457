#include "CACMKernels.h"

#include <stdint.h>
#include <string.h>

// One clone per instruction set; the loader picks the best the CPU has (an ifunc).
#define KERNEL __attribute__((target_clones("avx512f", "avx2", "default")))

// exp(x) by range reduction to 2^n·e^r, |r| ≤ ln2/2, and Cephes' expf polynomial: about 2 float ulps.
// Rounding and 2^n use the 1.5·2^23 trick: adding it leaves round(y) in the low mantissa bits.
// The same arithmetic as expApprox in Kernels.swift (tanh's).
static inline float exp_approx(float a) {
    float x = a > 88.3f ? 88.3f : a;
    x = x < -87.3f ? -87.3f : x;
    const float magic = 12582912.0f;
    float shifted = x * 1.44269504088896341f + magic;
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
KERNEL void acm_softmax_rows(float *x, long rows, long n, long ld, float scale) {
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
        for (long c = 0; c < d; c++) yr[c] = (xr[c] - mean) * rstd * gamma[c] + beta[c];
    }
}

KERNEL void acm_gelu_rows(float *x, long rows, long columns, long ld, const float *bias) {
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

KERNEL void acm_exp_f64(const double *x, double *out, long n) {
    for (long i = 0; i < n; i++) {
        double v = x[i] < -700.0 ? -700.0 : x[i];
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
        // 2^k by its bit pattern: k ≥ -1010 here, a normal double
        int64_t bits = ((int64_t)k + 1023) << 52;
        double two_to_k;
        memcpy(&two_to_k, &bits, 8);
        out[i] = e * two_to_k;
    }
}
