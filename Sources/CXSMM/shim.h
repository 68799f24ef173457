// LIBXSMM 1.17 (Debian's libxsmm-dev, a static library): JIT-compiled small-matrix GEMM kernels for the
// CPU it runs on (AVX-512 here), which Debian's OpenBLAS 0.3.21 does not reach on every CPU
// (docs/performance.md).
#include <libxsmm.h>

// A JIT kernel's type, libxsmm_smmfunction, is variadic (`void (*)(const float*, const float*, float*, ...)`),
// and Swift can neither import nor call a variadic function pointer: `acm_smm_kernel` (CACMBF16, which also
// remembers each shape's kernel) hands the kernel to Swift as an opaque pointer, and this shim calls it with its
// three fixed arguments.

/// Runs a kernel from `acm_smm_kernel` (CACMBF16). The JIT kernels leave the upper halves of the vector registers
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
