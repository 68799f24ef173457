// Row kernels of a transformer forward pass, in C so that each can be compiled for AVX-512 and AVX2 and
// chosen at run time by the CPU it runs on (`target_clones`): Swift has no per-function target, and its
// default x86-64 target is SSE2, a quarter of AVX-512's width. Each mirrors the Swift loop it replaced
// (Sources/ACMCore/Kernels.swift) and is checked against naive loops in ACMCoreTests.
#pragma once

/// Softmax of each of `rows` rows of `n` floats (row stride `ld`) times `scale`, in place.
void acm_softmax_rows(float *x, long rows, long n, long ld, float scale);

/// The same softmax, the probabilities written rounded to bfloat16 into out16 (row stride ld16) instead of
/// over x, each row followed by a zero when n is odd (the pad of its last pair, for a bf16 product over them).
/// Rows of at most 8,192 values; only on CPUs with AVX-512 BF16.
void acm_softmax_rows_bf16(const float *x, long rows, long n, long ld, float scale, unsigned short *out16, long ld16);

/// LayerNorm of each of `rows` rows of `d` floats: (x − mean)/√(var + eps)·gamma + beta, the variance
/// biased as in PyTorch. `out` may equal `x`.
void acm_layer_norm_rows(const float *x, long rows, long d, const float *gamma, const float *beta, float eps,
                         float *out);

/// x = GELU(x + bias) in place (exact, erf form) for `rows` rows of `columns` (row stride `ld`); `bias`
/// may be NULL.
void acm_gelu_rows(float *x, long rows, long columns, long ld, const float *bias);

/// x + bias (bias NULL: none), then GELU when `gelu`, for `rows` rows of `columns` (row stride `ld`), written rounded
/// to bfloat16 (ties to even, as acm_f32_to_bf16 with the conversion instruction) into out16 (row stride ld16)
/// and not back into x: a hidden layer's tile that only a bf16 product reads. Only on CPUs with AVX-512 BF16.
void acm_finish_rows_bf16(const float *x, long rows, long columns, long ld, const float *bias, int gelu,
                          unsigned short *out16, long ld16);

/// x += bias for `rows` rows of `columns` (row stride `ld`).
void acm_add_bias_rows(float *x, long rows, long columns, long ld, const float *bias);

/// x[i] += y[i] for i < n.
void acm_add(float *x, const float *y, long n);

/// Σ e^{x[i] − shift} over n floats, with exp_approx (about 2 float ulps each) and the sum kept in vector lanes:
/// a log-softmax's normaliser, log(Σ) + shift, with shift the row's maximum. An x[i] of −∞ adds about 1e-38.
float acm_sum_exp(const float *x, long n, float shift);

/// out[i] = e^{x[i]} for n doubles in [-700, 0] (a softmax's shifted logits), to about 1 ulp: Cephes'
/// exp (range reduction to 2^n·e^r and a Padé approximant of e^r), vectorised over the array.
void acm_exp_f64(const double *x, double *out, long n);

/// For each of `rows` rows of `choices` floats (row stride `ld`): best[t] = offset + the index of its
/// largest value, the first of equal ones (a NaN never wins over an earlier value); histogram[c] (of
/// `choices` entries, added to) counts the rows whose index is c. Returns Σ best[t]. Branch-free, as
/// the winner of a gate's row is unpredictable.
long acm_argmax_rows(const float *x, long rows, long choices, long ld, int offset, int *best, long *histogram);

/// The rows t (of `rows` rows of `choices` gate logits, `ld` apart) with ks[t] ≥ `level`, in order:
/// token[r] = t and survival[r] = Σ_{c ≥ top} p_t(c), p_t the softmax of row t in double precision (e·(1/Σe)),
/// summed from the last choice down. `scratch` holds 2·rows·choices doubles. Returns the number of rows.
long acm_reaching_survival(const float *x, long rows, long choices, long ld, const int *ks, int level,
                           long top, double *scratch, double *survival, int *token);

/// acm_reaching_survival in portable C (the loops the compiler vectorises), whichever the CPU: the reference the
/// AVX-512 path is tested against.
long acm_reaching_survival_portable(const float *x, long rows, long choices, long ld, const int *ks, int level,
                                    long top, double *scratch, double *survival, int *token);

/// acm_argmax_rows in portable C, whichever the CPU (as acm_reaching_survival_portable).
long acm_argmax_rows_portable(const float *x, long rows, long choices, long ld, int offset, int *best, long *histogram);

/// The doubles of scratch acm_choose_under_cap needs for `tokens` rows of `choices` logits.
long acm_choose_scratch(long tokens, long choices);

/// One sequence's learner counts under a cap (docs/compute-budget.md): ks[t] the gate's argmax over its row of
/// num_learners + 1 − min_choice logits (`ld` apart; ties to the smaller k) plus min_choice, then, where their sum
/// exceeds `cap` (≥ min_choice·tokens; negative: no cap), trimmed level by level from the top: whole levels kept
/// from the bottom while the budget lasts, and at the level where it runs out the tokens that reach it ranked by
/// their survival probability there (acm_reaching_survival, acm_give_best). `scratch` holds
/// acm_choose_scratch(tokens, choices) doubles, `token` `tokens` ints. Returns the learners kept.
long acm_choose_under_cap(const float *logits, long ld, long tokens, int min_choice, int num_learners, long cap,
                          int *ks, double *scratch, int *token);

/// ks[token[r]] += 1 for the `k` best of `n` rows r: the highest survival[r], ties to the smaller r
/// (the rows are in token order). `scratch` holds 3·(n + 8) doubles.
void acm_give_best(const double *survival, const int *token, long n, long k, double *scratch, int *ks);

/// histogram[k] += #{t : ks[t] = k} for t < tokens (each ks[t] in [0, n], n + 1 entries); returns Σ ks[t].
long acm_count_k(const int *ks, long tokens, int n, long *histogram);

/// The counting sort of a block's tokens by learner count, high to low, of those with ks[t] > kmin (each
/// ks[t] in [*floor, n]), where kmin is *floor raised to the smallest ks[t] (the learners every token runs), and
/// written back to *floor: counts[k] (n + 1 entries) = #{t : ks[t] = k}; order[p] = the token at position p and
/// position[t] = its position, for those tokens; *identity = whether every token is one and stays where it is.
/// Returns how many there are.
long acm_order_by_k(const int *ks, long tokens, int *floor, int n, long *counts, int *order, int *position,
                    int *identity);

/// Row-major C[m×n] = A[m×k]·B[k×n] (+ C when `beta`) for narrow products (n ≤ 6, k ≤ 1024; a gate's logits) with
/// AVX-512: each output a dot product, four rows at a time, where a GEMM kernel vectorised along n would fill
/// n of its 16 lanes. Returns 0, having done nothing, where it does not apply (other shapes, no AVX-512).
int acm_gemm_narrow(long m, long n, long k, const float *a, long lda, const float *b, long ldb, int beta, float *c,
                    long ldc);

/// out[p] = x[order[p]] for p < n, rows of d floats (a gather of tokens into a contiguous block).
void acm_gather_rows(float *out, const float *x, const int *order, long n, long d);

/// The scatter of a gathered block's results, with each token's bias by its learner count, for every token
/// t < rows, rows of d floats: out[t] = (out[t] + ys[position[t]]) + table[ks[t]] where ks[t] > kmin, else
/// out[t] += table[ks[t]]. Without `accumulate` (out[t] holds nothing yet) the out[t] on the right is 0;
/// without a table (NULL) its rows are 0.
void acm_scatter_rows(float *out, const float *ys, const int *position, const int *ks, int kmin, long rows, long d,
                      int accumulate, const float *table);

/// out[t] += table[ks[t]] for t < rows, rows of d floats (each token's bias by its learner count).
void acm_add_indexed_rows(float *out, const float *table, const int *ks, long rows, long d);

/// dst[i] = src[i] widened from IEEE half (its bits) to float, for i < n.
void acm_f16_to_f32(const unsigned short *src, float *dst, long n);

/// out[r·ld_out + j] = Σ_i x[r·ldx + i]·w[j·k + i] for r < rows and j < outputs, w in IEEE half (its bits),
/// each weight read once for all the rows: a few rows against a large half-precision matrix (a decoder
/// step's logits against the vocabulary), where the read of w is the cost.
void acm_dot_rows_f16(const float *x, long rows, long ldx, const unsigned short *w, long outputs, long k, float *out,
                      long ld_out);

/// out[r, j] = Σ_i x[r, i]·w[j, i] for `rows` rows of x (`ldx` apart) and `outputs` rows of w (`ldw` apart), k
/// columns each: a few queries' attention scores against keys read where they lie.
void acm_dot_rows(const float *x, long rows, long ldx, const float *w, long ldw, long outputs, long k, float *out,
                  long ld_out);

/// out[r, :] = Σ_j p[r, j]·v[j, :] for `rows` rows of p (`ldp` apart) over `n` rows of v (`ldv` apart), k columns:
/// a few queries' attention-weighted sums of values read where they lie.
void acm_weighted_rows(const float *p, long rows, long ldp, const float *v, long ldv, long n, long k, float *out,
                       long ld_out);

/// Sets the calling thread's SSE control word to flush denormal results to zero and read denormal inputs as zero.
void acm_flush_denormals(void);

/// The CPUs in this process's affinity mask (`sched_getaffinity`), or -1 where it cannot be read (more than
/// CPU_SETSIZE CPUs).
int acm_affinity_cpus(void);
