// LIBXSMM 1.17 (Debian's libxsmm-dev, a static library): JIT-compiled small-matrix GEMM kernels for the
// CPU it runs on (AVX-512 here), which Debian's OpenBLAS 0.3.21 does not reach on every CPU
// (docs/performance.md).
#include <libxsmm.h>

// A JIT kernel's type, libxsmm_smmfunction, is variadic (`void (*)(const float*, const float*, float*, ...)`),
// and Swift can neither import nor call a variadic function pointer. These two shims hand the kernel to
// Swift as an opaque pointer and call it with its three fixed arguments.

/// The column-major kernel C[m×n] = A[m×k]·B[k×n] + beta·C (alpha 1, beta 0 or 1), or NULL.
static inline const void *CXSMM_smmdispatch(int m, int n, int k, int lda, int ldb, int ldc, float beta) {
    const float alpha = 1;
    const int flags = LIBXSMM_GEMM_FLAG_NONE;
    return (const void *)libxsmm_smmdispatch(m, n, k, &lda, &ldb, &ldc, &alpha, &beta, &flags, NULL);
}

/// Runs a kernel from CXSMM_smmdispatch. The JIT kernels leave the upper halves of the vector registers
/// dirty; the vzeroupper spares the SSE code that follows (Swift's default target) a state-transition
/// stall per instruction, measured 10× slower GELU here. Only called where LIBXSMM targets AVX2 or better
/// (`CXSMM_targets_avx2`), where the instruction exists.
static inline void CXSMM_smmcall(const void *kernel, const float *a, const float *b, float *c) {
    ((libxsmm_smmfunction)kernel)(a, b, c);
    __asm__ volatile("vzeroupper");
}

/// Whether LIBXSMM generates AVX2 or AVX-512 code on this CPU (the kernels `gemm` uses it for).
static inline int CXSMM_targets_avx2(void) {
    return libxsmm_get_target_archid() >= LIBXSMM_X86_AVX2;
}
