// Row kernels of a transformer forward pass, in C so that each can be compiled for AVX-512 and AVX2 and
// chosen at run time by the CPU it runs on (`target_clones`): Swift has no per-function target, and its
// default x86-64 target is SSE2, a quarter of AVX-512's width. Each mirrors the Swift loop it replaced
// (Sources/ACMCore/Kernels.swift) and is checked against naive loops in ACMCoreTests.
#pragma once

/// Softmax of each of `rows` rows of `n` floats (row stride `ld`) times `scale`, in place.
void acm_softmax_rows(float *x, long rows, long n, long ld, float scale);

/// LayerNorm of each of `rows` rows of `d` floats: (x − mean)/√(var + eps)·gamma + beta, the variance
/// biased as in PyTorch. `out` may equal `x`.
void acm_layer_norm_rows(const float *x, long rows, long d, const float *gamma, const float *beta, float eps,
                         float *out);

/// x = GELU(x + bias) in place (exact, erf form) for `rows` rows of `columns` (row stride `ld`); `bias`
/// may be NULL.
void acm_gelu_rows(float *x, long rows, long columns, long ld, const float *bias);

/// x += bias for `rows` rows of `columns` (row stride `ld`).
void acm_add_bias_rows(float *x, long rows, long columns, long ld, const float *bias);

/// x[i] += y[i] for i < n.
void acm_add(float *x, const float *y, long n);

/// out[i] = e^{x[i]} for n doubles in [-700, 0] (a softmax's shifted logits), to about 1 ulp: Cephes'
/// exp (range reduction to 2^n·e^r and a Padé approximant of e^r), vectorised over the array.
void acm_exp_f64(const double *x, double *out, long n);
