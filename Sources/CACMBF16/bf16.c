#include "CACMBF16.h"
#include "CACMKernels.h"

#include <libxsmm.h>
#include <immintrin.h>
#include <math.h>
#include <pthread.h>
#include <stdint.h>
#include <string.h>

static inline unsigned short round_bf16(float f) {
    uint32_t u;
    memcpy(&u, &f, 4);
    if ((u & 0x7fffffffu) > 0x7f800000u) return (unsigned short)((u >> 16) | 0x40);  // NaN: keep it quiet
    u += 0x7fffu + ((u >> 16) & 1);
    return (unsigned short)(u >> 16);
}

static inline float widen_bf16(unsigned short h) {
    uint32_t u = (uint32_t)h << 16;
    float f;
    memcpy(&f, &u, 4);
    return f;
}

// The conversion instruction (VCVTNE2PS2BF16: round to nearest even, 32 at a time), where AVX-512 BF16 is.
// It treats denormal inputs as zero, which round_bf16 rounds to ±0 or the smallest bfloat16 denormals.
__attribute__((target("avx512f,avx512bf16")))
static void round_bf16_native(const float *x, unsigned short *out, long n) {
    long i = 0;
    for (; i + 32 <= n; i += 32) {
        __m512bh r = _mm512_cvtne2ps_pbh(_mm512_loadu_ps(x + i + 16), _mm512_loadu_ps(x + i));
        _mm512_storeu_si512((void *)(out + i), (__m512i)r);
    }
    if (i < n) {
        __mmask16 lo = (__mmask16)(n - i >= 16 ? 0xffff : (1u << (n - i)) - 1);
        __mmask16 hi = (__mmask16)(n - i <= 16 ? 0 : (1u << (n - i - 16)) - 1);
        __m512bh r = _mm512_cvtne2ps_pbh(_mm512_maskz_loadu_ps(hi, x + i + 16), _mm512_maskz_loadu_ps(lo, x + i));
        _mm512_mask_storeu_epi16(out + i, (__mmask32)(((uint64_t)hi << 16) | lo), (__m512i)r);
    }
}

// round_bf16's arithmetic on 16 floats with AVX-512F only: each lane's bfloat16 in its upper 16 bits.
__attribute__((target("avx512f")))
static inline __m512i round_bf16_lanes(__m512 v) {
    const __m512i u = _mm512_castps_si512(v);
    const __mmask16 nan = _mm512_cmpgt_epu32_mask(_mm512_and_si512(u, _mm512_set1_epi32(0x7fffffff)),
                                                  _mm512_set1_epi32(0x7f800000));
    const __m512i r = _mm512_add_epi32(
        u, _mm512_add_epi32(_mm512_set1_epi32(0x7fff), _mm512_and_si512(_mm512_srli_epi32(u, 16), _mm512_set1_epi32(1))));
    return _mm512_mask_mov_epi32(r, nan, _mm512_or_si512(u, _mm512_set1_epi32(0x400000)));
}

// AVX-512F only (the same rounding as round_bf16, 16 at a time), for CPUs without the instruction.
__attribute__((target("avx512f")))
static void round_bf16_avx512(const float *x, unsigned short *out, long n) {
    long i = 0;
    for (; i + 16 <= n; i += 16)
        _mm256_storeu_si256((__m256i *)(out + i),
                            _mm512_cvtepi32_epi16(_mm512_srli_epi32(round_bf16_lanes(_mm512_loadu_ps(x + i)), 16)));
    for (; i < n; i++) out[i] = round_bf16(x[i]);
}

// 2: AVX-512 BF16's conversion instruction, 1: AVX-512F, 0: neither.
static int conversion_isa(void) {
    // Atomic (relaxed): the first conversions race to fill it in, all with the same answer; a plain int would be a
    // data race.
    static int isa = -1;
    int v = __atomic_load_n(&isa, __ATOMIC_RELAXED);
    if (v < 0) {
        __builtin_cpu_init();
        v = __builtin_cpu_supports("avx512bf16") ? 2 : __builtin_cpu_supports("avx512f") ? 1 : 0;
        __atomic_store_n(&isa, v, __ATOMIC_RELAXED);
    }
    return v;
}

void acm_f32_to_bf16(const float *x, unsigned short *out, long n) {
    switch (conversion_isa()) {
    case 2:
        round_bf16_native(x, out, n);
        return;
    case 1:
        round_bf16_avx512(x, out, n);
        return;
    default:
        for (long i = 0; i < n; i++) out[i] = round_bf16(x[i]);
    }
}

void acm_bf16_to_f32(const unsigned short *x, float *out, long n) {
    for (long i = 0; i < n; i++) out[i] = widen_bf16(x[i]);
}

// Rows p and p + 1 of w, 16 columns at a time: each 32-bit pair is (row p + 1's bfloat16 << 16) | row p's,
// from rows rounded by round_bf16's arithmetic with the bfloat16 in their upper halves.
__attribute__((target("avx512f")))
static void pack_pairs_avx512(const float *w, long k, long n, long ldw, unsigned short *out) {
    const __m512i high = _mm512_set1_epi32((int)0xffff0000u);
    for (long p = 0; p < k; p += 2) {
        const float *r0 = w + p * ldw, *r1 = p + 1 < k ? w + (p + 1) * ldw : NULL;
        uint32_t *o = (uint32_t *)(out + (p / 2) * n * 2);
        long j = 0;
        for (; j < n; j += 16) {
            __mmask16 m = (__mmask16)(n - j >= 16 ? 0xffff : (1u << (n - j)) - 1);
            __m512i lo = _mm512_srli_epi32(round_bf16_lanes(_mm512_maskz_loadu_ps(m, r0 + j)), 16);
            __m512i hi = r1 ? _mm512_and_si512(round_bf16_lanes(_mm512_maskz_loadu_ps(m, r1 + j)), high) : _mm512_setzero_si512();
            _mm512_mask_storeu_epi32(o + j, m, _mm512_or_si512(hi, lo));
        }
    }
}

void acm_pack_bf16_pairs(const float *w, long k, long n, long ldw, unsigned short *out) {
    if (conversion_isa() >= 1) {
        pack_pairs_avx512(w, k, n, ldw, out);
        return;
    }
    for (long p = 0; p < k; p++)
        for (long j = 0; j < n; j++) out[((p / 2) * n + j) * 2 + p % 2] = round_bf16(w[p * ldw + j]);
    if (k % 2)
        for (long j = 0; j < n; j++) out[((k / 2) * n + j) * 2 + 1] = 0;
}

void acm_pack_bf16_pairs_transposed(const float *w, long k, long n, long ldw, unsigned short *out) {
    enum { ROWS = 64, DEPTH_MAX = 512 };
    if (k % 2 == 0 && k <= DEPTH_MAX && conversion_isa() >= 1) {
        // Row j of w rounded is already its k / 2 pairs; the packed matrix is those rows' transpose, of
        // 4-byte pairs, done by LIBXSMM's transpose in blocks of rows.
        unsigned short rounded[ROWS * DEPTH_MAX];
        for (long j0 = 0; j0 < n; j0 += ROWS) {
            const long rows = n - j0 < ROWS ? n - j0 : ROWS;
            for (long j = 0; j < rows; j++) acm_f32_to_bf16(w + (j0 + j) * ldw, rounded + j * k, k);
            // column-major source [k/2 × rows] (ld k/2) to [rows × k/2] (ld n): out[q·n + j0 + j]
            libxsmm_otrans(out + 2 * j0, rounded, 4, (libxsmm_blasint)(k / 2), (libxsmm_blasint)rows,
                           (libxsmm_blasint)(k / 2), (libxsmm_blasint)n);
        }
        return;
    }
    for (long j = 0; j < n; j++) {
        const float *row = w + j * ldw;
        for (long p = 0; p + 1 < k; p += 2) {
            out[((p / 2) * n + j) * 2] = round_bf16(row[p]);
            out[((p / 2) * n + j) * 2 + 1] = round_bf16(row[p + 1]);
        }
        if (k % 2) {
            out[((k / 2) * n + j) * 2] = round_bf16(row[k - 1]);
            out[((k / 2) * n + j) * 2 + 1] = 0;
        }
    }
}

void acm_pack_bf16_pairs_transposed_rounded(const unsigned short *w, long k, long n, long ldw, unsigned short *out) {
    if (k % 2 || ldw % 2) abort();
    // row j of w is already its k / 2 pairs: the packed matrix is the transpose of those rows, of 4-byte pairs
    libxsmm_otrans(out, w, 4, (libxsmm_blasint)(k / 2), (libxsmm_blasint)n, (libxsmm_blasint)(ldw / 2),
                   (libxsmm_blasint)n);
}

// Rows p and p + 1 of w, 16 columns at a time, widened to 32 bits: row p's value in the lower half, row p + 1's
// in the upper (zero past an odd k's last row).
__attribute__((target("avx512f,avx512bw,avx512vl")))
static void pack_pairs_rounded_avx512(const unsigned short *w, long k, long n, long ldw, unsigned short *out) {
    for (long p = 0; p < k; p += 2) {
        const unsigned short *r0 = w + p * ldw, *r1 = p + 1 < k ? w + (p + 1) * ldw : NULL;
        uint32_t *o = (uint32_t *)(out + (p / 2) * n * 2);
        for (long j = 0; j < n; j += 16) {
            __mmask16 m = (__mmask16)(n - j >= 16 ? 0xffff : (1u << (n - j)) - 1);
            __m512i lo = _mm512_cvtepu16_epi32(_mm256_maskz_loadu_epi16(m, r0 + j));
            __m512i hi = r1 ? _mm512_slli_epi32(_mm512_cvtepu16_epi32(_mm256_maskz_loadu_epi16(m, r1 + j)), 16)
                            : _mm512_setzero_si512();
            _mm512_mask_storeu_epi32(o + j, m, _mm512_or_si512(hi, lo));
        }
    }
}

void acm_pack_bf16_pairs_rounded(const unsigned short *w, long k, long n, long ldw, unsigned short *out) {
    if (conversion_isa() == 2) {  // AVX-512 BF16 implies the BW/VL masked 16-bit loads
        pack_pairs_rounded_avx512(w, k, n, ldw, out);
        return;
    }
    for (long p = 0; p < k; p++)
        for (long j = 0; j < n; j++) out[((p / 2) * n + j) * 2 + p % 2] = w[p * ldw + j];
    if (k % 2)
        for (long j = 0; j < n; j++) out[((k / 2) * n + j) * 2 + 1] = 0;
}

// The blocking of B stored row-major in pairs (attention's keys and values, packed per head; `gemm_bf16`), measured
// on one Zen 5 core with A already bfloat16 (LIBXSMM's kernels take a block of up to ROW_BLOCK rows of A and C in
// registers and stream a panel of B):
// - B of more than LARGE_B_BYTES runs in panels of PANEL columns, and a deep one (k > DEEP) in chunks of DEPTH
//   rows, the chunks outermost, then the panels, then the blocks of rows, so that a panel's chunk (192 KiB) stays
//   in the L2 cache while all of A's rows stream past it: ViT-B's fc2 [768×3072]×[3072×768] from 272 GFLOP/s
//   (rows outermost, whole depth) to 393; its qkv [768×768]×[768×2304] 445 → 452; Whisper's fc1
//   [1536×384]×[384×1536] 428 → 452 (whole, no panels: 359);
// - the small shapes (B under 256 KiB) already run at 445-500 whole;
// - blocks of 96 rows rather than 64: the dense ViT-B at batch 8 341-349 ms against 349-358 (32: 373; 128:
//   348-353), the Fashion-MNIST models and Whisper's encoder the same within the noise.
// The weights are stored in contiguous panels instead (`acm_pack_bf16_panels`, `gemm_bf16_panels`), which the
// kernels stream from consecutive addresses: the dense ViT-B at batch 8 from 344-361 ms to 336-347.
enum { ROW_BLOCK = 96, PANEL = 128, LARGE_B_BYTES = 256 * 1024, DEEP = 1024, DEPTH = 768 };

static __thread unsigned short *a_buffer;
static __thread size_t a_capacity;

// The buffer is also this thread's value of a_buffer_key, whose destructor frees it when the thread exits: the
// threads that run GEMMs include Dispatch's (Parallel.run's fallback, Swift concurrency), which come and go, and
// each would otherwise leave its buffer (up to tens of MB) behind.
static pthread_key_t a_buffer_key;
static pthread_once_t a_buffer_once = PTHREAD_ONCE_INIT;
static void make_a_buffer_key(void) {
    if (pthread_key_create(&a_buffer_key, free) != 0) abort();
}

static unsigned short *row_buffer(size_t count) {
    if (count > a_capacity) {
        pthread_once(&a_buffer_once, make_a_buffer_key);
        free(a_buffer);
        a_capacity = count + count / 4;
        a_buffer = malloc(a_capacity * sizeof(unsigned short));
        if (!a_buffer || pthread_setspecific(a_buffer_key, a_buffer) != 0) abort();
    }
    return a_buffer;
}

// A thread's memo of the kernels LIBXSMM gave it, by shape: a table in front of libxsmm_smmdispatch and
// libxsmm_bsmmdispatch, whose lookup (a descriptor built, hashed and compared in its own thread-local cache) took
// 3-4% of a Fashion-MNIST ViT pass at batch 1, where the GEMMs are many and small. The ACM model in auto mode asks
// for about 160 shapes (each learner's rows end in a partial block of its own size), so the table is 4-way set
// associative: direct-mapped, colliding shapes evicted each other at every call. LIBXSMM keeps its kernels until
// libxsmm_finalize, which nothing here calls, so a cached pointer stays valid; a NULL (no kernel for the shape) is
// cached too.
struct kernel_entry {
    int m, n, k, lda, ldb, ldc, bf16, used;
    float beta;
    const void *kernel;
};
enum { KERNEL_SET_BITS = 8, KERNEL_WAYS = 4 };
// initial-exec: this library is linked into the program, so the table is reached without a call to __tls_get_addr
static __thread struct kernel_entry kernel_cache[1 << KERNEL_SET_BITS][KERNEL_WAYS]
    __attribute__((tls_model("initial-exec")));
static __thread long kernel_cache_misses __attribute__((tls_model("initial-exec")));

long acm_smm_kernel_misses(void) { return kernel_cache_misses; }

static const void *cached_kernel(int bf16, int m, int n, int k, int lda, int ldb, int ldc, float beta) {
    uint32_t h = (uint32_t)m * 0x9E3779B1u;
    h = (h ^ (uint32_t)n) * 0x85EBCA77u;
    h = (h ^ (uint32_t)k) * 0xC2B2AE3Du;
    h = (h ^ (uint32_t)lda) * 0x27D4EB2Fu;
    h = (h ^ (uint32_t)ldb) * 0x165667B1u;
    h = (h ^ (uint32_t)ldc) * 0x9E3779B1u;
    // beta and bf16 into the low bits, which the multiplication carries up into the set's bits: a shape asked for
    // with beta 0 and 1 (a learner's first product, then those it adds) must not always land in the same set (it
    // did, and with one way the two evicted each other: 30,000 lookups in LIBXSMM's registry per 2 s of the ACM
    // model in auto mode)
    h = (h ^ (uint32_t)(beta != 0) ^ ((uint32_t)bf16 << 1)) * 0x85EBCA77u;
    struct kernel_entry *set = kernel_cache[h >> (32 - KERNEL_SET_BITS)];
    for (int w = 0; w < KERNEL_WAYS; w++) {
        const struct kernel_entry *e = &set[w];
        if (e->used && e->m == m && e->n == n && e->k == k && e->lda == lda && e->ldb == ldb && e->ldc == ldc &&
            e->bf16 == bf16 && e->beta == beta)
            return e->kernel;
    }
    kernel_cache_misses++;
    const libxsmm_blasint m_ = m, n_ = n, k_ = k, lda_ = lda, ldb_ = ldb, ldc_ = ldc;
    const float alpha = 1;
    const void *found;
    if (bf16) {
        const int flags = LIBXSMM_GEMM_FLAG_VNNI_A;
        found = (const void *)libxsmm_bsmmdispatch(m_, n_, k_, &lda_, &ldb_, &ldc_, &alpha, &beta, &flags, NULL);
    } else {
        const int flags = LIBXSMM_GEMM_FLAG_NONE;
        found = (const void *)libxsmm_smmdispatch(m_, n_, k_, &lda_, &ldb_, &ldc_, &alpha, &beta, &flags, NULL);
    }
    // the newest first; the oldest of a full set goes
    memmove(&set[1], &set[0], (KERNEL_WAYS - 1) * sizeof(struct kernel_entry));
    set[0] = (struct kernel_entry){m, n, k, lda, ldb, ldc, bf16, 1, beta, found};
    return found;
}

const void *acm_smm_kernel(int m, int n, int k, int lda, int ldb, int ldc, float beta) {
    return cached_kernel(0, m, n, k, lda, ldb, ldc, beta);
}

// LIBXSMM is column-major: the row-major C[rows × w] = A·B is its Cᵀ[w × rows] = Bᵀ·Aᵀ, with B (packed in
// pairs of k) as its "A" in VNNI layout.
static libxsmm_bsmmfunction kernel(long w, long rows, long k, long ldb, long lda, long ldc, float beta) {
    return (libxsmm_bsmmfunction)cached_kernel(1, (int)w, (int)rows, (int)k, (int)ldb, (int)lda, (int)ldc, beta);
}

// The same product in plain loops, for a shape LIBXSMM has no kernel for (none seen) and for the self-check.
static void loops(long rows, long w, long k, const unsigned short *a, long lda, const unsigned short *b, long ldb,
                  float beta, float *c, long ldc) {
    for (long r = 0; r < rows; r++)
        for (long j = 0; j < w; j++) {
            float s = beta == 0 ? 0 : c[r * ldc + j];
            for (long p = 0; p < k; p++)
                s += widen_bf16(a[r * lda + p]) * widen_bf16(b[((p / 2) * ldb + j) * 2 + p % 2]);
            c[r * ldc + j] = s;
        }
}

// Rows of A per kernel call over B in panels: Whisper's bf16 encoder on the 12 fixture clips 0.624-0.631 s with 96,
// 0.639-0.649 with 32 (four interleaved runs); the dense ViT-B at batch 8 317-320 ms with 96, 320-324 with 32 (three);
// the Fashion-MNIST models the same within the noise.
enum { PANEL_ROWS = 96 };

// What is done to each tile of C once its last chunk of depth is in, while the tile is in the L1 cache: add
// `bias` (per column) and GELU when `gelu`, then round the tile into `out16` (row stride ld16) when given, for
// a next product that reads it (an MLP's hidden layer: this saves a pass over it, and its rounding).
struct epilogue {
    const float *bias;
    int gelu;
    unsigned short *out16;
    long ld16;
};

static void finish_tile(const struct epilogue *e, float *tile, long ldc, long row, long rows, long j, long w) {
    if (e->out16 && conversion_isa() == 2) {
        acm_finish_rows_bf16(tile, rows, w, ldc, e->bias ? e->bias + j : NULL, e->gelu, e->out16 + row * e->ld16 + j,
                             e->ld16);
        return;
    }
    if (e->gelu) {
        acm_gelu_rows(tile, rows, w, ldc, e->bias ? e->bias + j : NULL);
    } else if (e->bias) {
        acm_add_bias_rows(tile, rows, w, ldc, e->bias + j);
    }
    if (e->out16)
        for (long r = 0; r < rows; r++) acm_f32_to_bf16(tile + r * ldc, e->out16 + (row + r) * e->ld16 + j, w);
}

// Where C goes when only its rounded copy is wanted (c NULL): one tile at a time, [PANEL_ROWS × BF16_PANEL], so
// that the float tile never leaves the L1 cache (ViT-B's fc1 would otherwise write 9.7 MB of float hidden layer a
// part of four images, which nothing reads).
static __thread float c_tile[PANEL_ROWS * BF16_PANEL];

// A's m rows of k floats (row stride lda) rounded to bfloat16 into this thread's buffer, each row padded to an even
// length with a zero (an odd k runs on the zero pad of the last pair).
static const unsigned short *rounded_rows(long m, long k, const float *a, long lda) {
    const long kk = (k + 1) & ~1L;
    unsigned short *buffer = row_buffer((size_t)m * kk);
    for (long r = 0; r < m; r++) {
        acm_f32_to_bf16(a + r * lda, buffer + r * kk, k);
        if (kk != k) buffer[r * kk + k] = 0;
    }
    return buffer;
}

// A float (rounded here first, into a per-thread buffer) or, when a16 is given, already bfloat16 (row stride
// lda16, k even).
static void gemm_bf16(long m, long n, long k, const float *a, long lda, const unsigned short *a16, long lda16,
                      const unsigned short *b, long ldb, float beta, float *c, long ldc) {
    if (m <= 0 || n <= 0) return;
    const long kk = (k + 1) & ~1L;  // an odd k runs on the zero pad of the last pair
    if (!a16) {
        a16 = rounded_rows(m, k, a, lda);
        lda16 = kk;
    }
    const int large = n > PANEL && n * kk * 2 > LARGE_B_BYTES;
    const long panel = large ? PANEL : n, depth = large && kk > DEEP ? DEPTH : kk;
    const long block = m < ROW_BLOCK ? m : ROW_BLOCK;
    for (long p = 0; p < kk; p += depth) {
        const long d = kk - p < depth ? kk - p : depth;
        const float chunk_beta = p == 0 ? beta : 1;
        for (long j = 0; j < n; j += panel) {
            const long w = n - j < panel ? n - j : panel;
            const unsigned short *bj = b + p * ldb + 2 * j;
            libxsmm_bsmmfunction full = kernel(w, block, d, ldb, lda16, ldc, chunk_beta), tail = NULL;
            for (long row = 0; row < m; row += block) {
                const long rows = m - row < block ? m - row : block;
                libxsmm_bsmmfunction g = full;
                if (rows != block) g = tail = tail ? tail : kernel(w, rows, d, ldb, lda16, ldc, chunk_beta);
                const unsigned short *as = a16 + row * lda16 + p;
                if (g)
                    g((const libxsmm_bfloat16 *)bj, (const libxsmm_bfloat16 *)as, c + row * ldc + j);
                else
                    loops(rows, w, d, as, lda16, bj, ldb, chunk_beta, c + row * ldc + j, ldc);
            }
        }
    }
    // The JIT kernels leave the upper vector halves dirty; spare the SSE code that follows the transition
    // stalls (as CXSMM_smmcall does).
    __asm__ volatile("vzeroupper");
}

void acm_gemm_bf16(long m, long n, long k, const float *a, long lda, const unsigned short *b, long ldb, float beta,
                   float *c, long ldc) {
    gemm_bf16(m, n, k, a, lda, NULL, 0, b, ldb, beta, c, ldc);
}

void acm_gemm_bf16_rounded(long m, long n, long k, const unsigned short *a, long lda, const unsigned short *b, long ldb,
                           float beta, float *c, long ldc) {
    gemm_bf16(m, n, k, NULL, 0, a, lda, b, ldb, beta, c, ldc);
}

void acm_pack_bf16_panels(const float *w, long k, long n, long ldw, unsigned short *out) {
    const long kk = (k + 1) & ~1L;
    for (long j = 0; j < n; j += BF16_PANEL) {
        const long width = n - j < BF16_PANEL ? n - j : BF16_PANEL;
        acm_pack_bf16_pairs(w + j, k, width, ldw, out + j * kk);
    }
}

// B in panels (acm_pack_bf16_panels) of a matrix [total_k × total_n], the block at rows row0 (even) + k and
// columns col0 + n. Rows outermost in blocks of PANEL_ROWS, then every panel the columns meet, at full depth:
// each tile of C is finished (the epilogue) as soon as it is made.
static void gemm_bf16_panels(long m, long n, long k, const float *a, long lda, const unsigned short *a16, long lda16,
                             const unsigned short *panels, long total_k, long total_n, long row0, long col0, float beta,
                             float *c, long ldc, const struct epilogue *e) {
    if (m <= 0 || n <= 0) return;
    const long kk = (k + 1) & ~1L, total_kk = (total_k + 1) & ~1L;
    if (!a16) {
        a16 = rounded_rows(m, k, a, lda);
        lda16 = kk;
    }
    const long first = col0 / BF16_PANEL, last = (col0 + n - 1) / BF16_PANEL;
    const long block = m < PANEL_ROWS ? m : PANEL_ROWS;
    const int tiled = c == NULL;  // C in c_tile, tile by tile (beta 0, e->out16 given)
    if (tiled) ldc = BF16_PANEL;
    libxsmm_bsmmfunction kernels[2][3] = {{0}};  // [full block, tail block][first, middle, last segment]
    long tail_rows = -1;
    for (long row = 0; row < m; row += block) {
        const long rows = m - row < block ? m - row : block;
        const int t = rows != block;
        if (t && tail_rows != rows) {
            kernels[1][0] = kernels[1][1] = kernels[1][2] = NULL;
            tail_rows = rows;
        }
        for (long p = first; p <= last; p++) {
            const long start = p * BF16_PANEL, ld = total_n - start < BF16_PANEL ? total_n - start : BF16_PANEL;
            const long j = col0 > start ? col0 : start;
            const long end = col0 + n < start + ld ? col0 + n : start + ld;
            const int which = p == first ? 0 : p == last ? 2 : 1;
            if (!kernels[t][which]) kernels[t][which] = kernel(end - j, rows, kk, ld, lda16, ldc, beta);
            const unsigned short *bj = panels + start * total_kk + row0 * ld + 2 * (j - start);
            const unsigned short *as = a16 + row * lda16;
            float *cj = tiled ? c_tile : c + row * ldc + (j - col0);
            if (kernels[t][which])
                kernels[t][which]((const libxsmm_bfloat16 *)bj, (const libxsmm_bfloat16 *)as, cj);
            else
                loops(rows, end - j, kk, as, lda16, bj, ld, beta, cj, ldc);
            if (e) finish_tile(e, cj, ldc, row, rows, j - col0, end - j);
        }
    }
    __asm__ volatile("vzeroupper");
}

void acm_gemm_bf16_panels(long m, long n, long k, const float *a, long lda, const unsigned short *a16, long lda16,
                          const unsigned short *panels, long total_k, long total_n, long row0, long col0, float beta,
                          float *c, long ldc, const float *bias, int gelu, unsigned short *out16, long ld16) {
    const struct epilogue e = {bias, gelu, out16, ld16};
    const int finish = bias || gelu || out16;
    // C is not kept exactly when its rounded copy is all that is wanted (finish_tile may then write only that)
    if ((c == NULL) != (out16 != NULL) || (out16 && beta != 0)) abort();
    gemm_bf16_panels(m, n, k, a16 ? NULL : a, lda, a16, lda16, panels, total_k, total_n, row0, col0, beta, c, ldc,
                     finish ? &e : NULL);
}

void acm_layer_norm_rows_bf16(const float *x, long rows, long d, const float *gamma, const float *beta, float eps,
                              unsigned short *out16) {
    // each row normalised into a float row in the L1 cache, then rounded: the float LayerNorm's values, rounded
    float stack[2048];
    float *row = d <= 2048 ? stack : malloc(sizeof(float) * (size_t)d);
    if (!row) abort();
    for (long r = 0; r < rows; r++) {
        acm_layer_norm_rows(x + r * d, 1, d, gamma, beta, eps, row);
        acm_f32_to_bf16(row, out16 + r * d, d);
    }
    if (row != stack) free(row);
}

void acm_gather_rows_bf16(unsigned short *out, const float *x, const int *order, long n, long d) {
    for (long p = 0; p < n; p++) acm_f32_to_bf16(x + (long)(order ? order[p] : p) * d, out + p * d, d);
}

static int isa = -1;
static char description[160];
static pthread_once_t once = PTHREAD_ONCE_INIT;

// A product with odd sizes, a block of rows and a tail, column panels and a tail, against the loops: for B packed
// row-major in pairs and for B in panels.
static int self_check(void) {
    const long m = ROW_BLOCK + 6, n = 300, k = 451;  // n·k·2 > LARGE_B_BYTES: panels of PANEL and a tail
    float *a = malloc(sizeof(float) * m * k), *w = malloc(sizeof(float) * k * n);
    float *c = malloc(sizeof(float) * m * n), *r = malloc(sizeof(float) * m * n);
    unsigned short *b = malloc(sizeof(unsigned short) * (k + 1) * n), *ab = malloc(sizeof(unsigned short) * m * (k + 1));
    uint32_t state = 12345;
    for (long i = 0; i < m * k; i++) a[i] = (float)((state = state * 1664525u + 1013904223u) >> 8) / (1 << 24) - 0.5f;
    for (long i = 0; i < k * n; i++) w[i] = (float)((state = state * 1664525u + 1013904223u) >> 8) / (1 << 24) - 0.5f;
    acm_pack_bf16_pairs(w, k, n, n, b);
    for (long i = 0; i < m; i++) {
        acm_f32_to_bf16(a + i * k, ab + i * (k + 1), k);
        ab[i * (k + 1) + k] = 0;
    }
    loops(m, n, k + 1, ab, k + 1, b, n, 0, r, n);
    gemm_bf16(m, n, k, a, k, NULL, 0, b, n, 0, c, n);
    int ok = 1;
    for (long i = 0; i < m * n; i++)
        if (!(fabsf(c[i] - r[i]) <= 1e-4f * (1 + fabsf(r[i])))) ok = 0;
    // the weights' layout: panels of BF16_PANEL and a narrower last one, blocks of PANEL_ROWS rows and a tail
    acm_pack_bf16_panels(w, k, n, n, b);
    memset(c, 0, sizeof(float) * m * n);
    gemm_bf16_panels(m, n, k, a, k, NULL, 0, b, k, n, 0, 0, 0, c, n, NULL);
    for (long i = 0; i < m * n; i++)
        if (!(fabsf(c[i] - r[i]) <= 1e-4f * (1 + fabsf(r[i])))) ok = 0;
    free(a), free(w), free(c), free(r), free(b), free(ab);
    return ok;
}

static void find_isa(void) {
    const char *off = getenv("ACM_BF16");
    libxsmm_init();
    const int arch = libxsmm_get_target_archid();
    const char *target = libxsmm_get_target_arch();
    if (off && strcmp(off, "off") == 0) {
        isa = 0;
        snprintf(description, sizeof description, "none (ACM_BF16=off)");
        return;
    }
    if (arch < LIBXSMM_X86_AVX512_CPX) {
        isa = 0;
        snprintf(description, sizeof description, "none (no AVX-512 BF16; LIBXSMM 1.17 targets %s)", target);
        return;
    }
    if (!self_check()) {
        isa = 0;
        snprintf(description, sizeof description, "none (LIBXSMM's %s bf16 kernels failed the self-check)", target);
        return;
    }
    isa = 1;
    snprintf(description, sizeof description, "avx512_bf16 (LIBXSMM 1.17, %s)", target);
}

int acm_bf16_isa(void) {
    pthread_once(&once, find_isa);
    return isa;
}

const char *acm_bf16_description(void) {
    pthread_once(&once, find_isa);
    return description;
}
