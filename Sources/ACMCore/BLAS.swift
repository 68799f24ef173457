import Foundation
#if canImport(Glibc)
import Glibc
#endif
import CBLAS

/// The one BLAS entry point. Every matrix is row-major; `lda`, `ldb`, `ldc` are row strides in elements,
/// so a block of columns of a wider matrix is passed as a pointer to its first element plus the wider
/// matrix's stride.
///
///     C[m×n] = alpha · op(A)[m×k] · op(B)[k×n] + beta · C
///
/// where op(A) is A, or Aᵀ when `transA` (then A is stored [k×m]); likewise for B.
@inline(__always)
public func gemm(
    m: Int, n: Int, k: Int,
    alpha: Float = 1,
    a: UnsafePointer<Float>, lda: Int, transA: Bool = false,
    b: UnsafePointer<Float>, ldb: Int, transB: Bool = false,
    beta: Float = 0,
    c: UnsafeMutablePointer<Float>, ldc: Int
) {
    if m == 0 || n == 0 { return }
    if k == 0 {
        // BLAS leaves C untouched when k = 0 only for beta = 1; make the beta = 0 case explicit.
        if beta == 0 { for i in 0..<m { (c + i * ldc).update(repeating: 0, count: n) } }
        return
    }
    cblas_sgemm(
        CblasRowMajor,
        transA ? CblasTrans : CblasNoTrans,
        transB ? CblasTrans : CblasNoTrans,
        Int32(m), Int32(n), Int32(k),
        alpha, a, Int32(lda), b, Int32(ldb),
        beta, c, Int32(ldc))
}

/// The number of threads OpenBLAS uses for one GEMM.
public var blasThreads: Int {
    get { Int(openblas_get_num_threads()) }
    set { openblas_set_num_threads(Int32(newValue)) }
}

/// The CPU kernel set OpenBLAS chose at load time, e.g. "SkylakeX".
public var blasCoreName: String { String(cString: openblas_get_corename()) }

/// Debian 12's OpenBLAS (0.3.21) does not know CPUs newer than itself (Sapphire Rapids among them) and
/// falls back to its slowest kernels ("Prescott"), about 5× slower here. The kernel set is chosen when
/// the library loads, so the only fix is to set OPENBLAS_CORETYPE and start the program again.
///
/// Call first thing in `main`. It does nothing when OPENBLAS_CORETYPE is already set (the user's choice
/// wins) or when OpenBLAS recognised the CPU; otherwise it picks the newest kernel set the CPU's flags
/// support and re-executes the program with the same arguments.
public func reexecWithTunedBLASIfNeeded() {
    guard getenv("OPENBLAS_CORETYPE") == nil, blasCoreName.lowercased() == "prescott",
        let cpuinfo = try? String(contentsOfFile: "/proc/cpuinfo", encoding: .utf8),
        let flagsLine = cpuinfo.split(separator: "\n").first(where: { $0.hasPrefix("flags") })
    else { return }
    let flags = Set(flagsLine.split(separator: " ").map(String.init))
    let core: String
    if flags.isSuperset(of: ["avx512f", "avx512bw", "avx512dq", "avx512vl"]) {
        core = "SkylakeX"
    } else if flags.isSuperset(of: ["avx2", "fma"]) {
        core = "Haswell"
    } else {
        return
    }
    setenv("OPENBLAS_CORETYPE", core, 1)
    let args = CommandLine.arguments
    var argv = args.map { strdup($0) } + [nil]
    execv("/proc/self/exe", &argv)
    // execv only returns on failure: carry on with the slow kernels.
}
