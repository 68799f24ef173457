// The bf16 GEMM path: weights packed once as bfloat16 pairs, activations rounded to bfloat16 as they are
// read, products accumulated in float. The kernels are LIBXSMM 1.17's JIT ones, used only where they run
// on the CPU's own bfloat16 instructions (AVX-512 BF16's VDPBF16PS; LIBXSMM 1.17 has no AMX kernels, and
// runs AVX-512 BF16 on CPUs with AMX); elsewhere `acm_bf16_isa` says so and the engine keeps float
// (docs/performance.md#bf16).
#pragma once

/// The bfloat16 instructions the GEMM runs on, found once: 0 none (LIBXSMM would emulate them, slower than
/// float), 1 AVX-512 BF16. A self-check against float arithmetic must pass before a non-zero
/// answer; ACM_BF16=off forces 0.
int acm_bf16_isa(void);

/// The name of `acm_bf16_isa`'s answer with LIBXSMM's for its target, e.g. "avx512_bf16 (LIBXSMM 1.17, cpx)",
/// or why there is none.
const char *acm_bf16_description(void);

/// out[i] = x[i] rounded to the nearest bfloat16, ties to even (as torch's .to(torch.bfloat16)); NaNs stay NaNs.
void acm_f32_to_bf16(const float *x, unsigned short *out, long n);

/// out[i] = x[i] widened to float (exact).
void acm_bf16_to_f32(const unsigned short *x, float *out, long n);

/// Packs the row-major float matrix w [k × n] (row stride ldw) as bfloat16 in pairs of rows ("VNNI"):
/// element (p, j) at out[((p / 2)·n + j)·2 + p % 2], [(k + 1) / 2 · n · 2] values, an odd k's last pair padded
/// with zero. A block of its rows starting at an even row r is then the packed matrix at out + r·n, and a
/// block of its columns starting at column j is out + 2·j with the same n as row stride.
void acm_pack_bf16_pairs(const float *w, long k, long n, long ldw, unsigned short *out);

/// The same packing of the matrix whose transpose is stored: element (p, j) is w[j·ldw + p], for w [n × k]
/// (row stride ldw), e.g. an attention head's keys [keys × head dim] packed as kᵀ for the scores q·kᵀ.
void acm_pack_bf16_pairs_transposed(const float *w, long k, long n, long ldw, unsigned short *out);
/// `acm_pack_bf16_pairs` of w [k × n] already bfloat16 (row stride ldw): only the interleaving of row pairs.
void acm_pack_bf16_pairs_rounded(const unsigned short *w, long k, long n, long ldw, unsigned short *out);
/// `acm_pack_bf16_pairs_transposed` of w [n × k] already bfloat16 (row stride ldw; k and ldw even): a transpose
/// of 4-byte pairs.
void acm_pack_bf16_pairs_transposed_rounded(const unsigned short *w, long k, long n, long ldw, unsigned short *out);

/// Columns per panel of `acm_pack_bf16_panels`.
enum { BF16_PANEL = 64 };

/// Packs the row-major float matrix w [k × n] (row stride ldw) in panels of BF16_PANEL columns, each packed in
/// pairs of rows as `acm_pack_bf16_pairs` packs a matrix of its width: the panel of columns [j, j + w) (j a
/// multiple of BF16_PANEL, w = min(BF16_PANEL, n − j)) at out + j·kk, kk = k rounded up to even; (k + 1) / 2 · n · 2
/// values in all. For n ≤ BF16_PANEL this is `acm_pack_bf16_pairs`' layout.
void acm_pack_bf16_panels(const float *w, long k, long n, long ldw, unsigned short *out);

/// Row-major C[m × n] = A[m × k]·B + beta·C (beta 0 or 1) for B the block of rows [row0, row0 + k) (row0 even) and
/// columns [col0, col0 + n) of a matrix [total_k × total_n] packed by `acm_pack_bf16_panels`; A float (a, row
/// stride lda) rounded as it is read, or, when a16 is given, already bfloat16 (row stride lda16, k even). Each tile
/// of C is then finished while it is in the cache when bias, gelu or out16 is given (beta 0): bias added per column
/// (bias NULL: none), GELU when `gelu` (the engine's `acm_gelu_rows`), then rounded to bfloat16 into out16 (row stride
/// ld16, n even) for a product that reads it next. out16 goes with c NULL (and beta 0): C is then not kept, each
/// tile made and finished in a buffer of the thread's, and only out16 written; this saves passes over C.
void acm_gemm_bf16_panels(long m, long n, long k, const float *a, long lda, const unsigned short *a16, long lda16,
                          const unsigned short *panels, long total_k, long total_n, long row0, long col0, float beta,
                          float *c, long ldc, const float *bias, int gelu, unsigned short *out16, long ld16);

/// Row-major C[m × n] = A[m × k]·B[k × n] + beta·C (beta 0 or 1), A float (row stride lda), rounded to
/// bfloat16 in blocks of rows as it is read; B packed by `acm_pack_bf16_pairs` (b pointing at the block's
/// first element, ldb the packed matrix's n); products summed in float. Only where `acm_bf16_isa` > 0.
void acm_gemm_bf16(long m, long n, long k, const float *a, long lda, const unsigned short *b, long ldb, float beta,
                   float *c, long ldc);

/// The same with A already bfloat16 (row stride lda; k and lda even): rows rounded once for several products.
void acm_gemm_bf16_rounded(long m, long n, long k, const unsigned short *a, long lda, const unsigned short *b, long ldb,
                           float beta, float *c, long ldc);

/// LayerNorm of `rows` rows of d (the engine's acm_layer_norm_rows) written rounded to bfloat16 into out16 [rows × d],
/// with no float output: for products that read only the rounded rows.
void acm_layer_norm_rows_bf16(const float *x, long rows, long d, const float *gamma, const float *beta, float eps,
                              unsigned short *out16);
/// out[p] = x[order[p]] rounded to bfloat16, rows of d values, for p < n (x's first n rows when order is NULL).
void acm_gather_rows_bf16(unsigned short *out, const float *x, const int *order, long n, long d);

/// LIBXSMM's column-major f32 kernel C[m×n] = A[m×k]·B[k×n] + beta·C (alpha 1, beta 0 or 1), or NULL where it has
/// none: libxsmm_smmdispatch behind a per-thread table of the shapes already asked for.
const void *acm_smm_kernel(int m, int n, int k, int lda, int ldb, int ldc, float beta);
/// How many times this thread's table sent a lookup on to LIBXSMM (a shape not in it, or evicted from it).
long acm_smm_kernel_misses(void);
