import Foundation
#if canImport(Glibc)
import Glibc
#endif
import CBLAS
import CXSMM
import CACMKernels
import CACMBF16

/// The one GEMM entry point. Every matrix is row-major; `lda`, `ldb`, `ldc` are row strides in elements,
/// so a block of columns of a wider matrix is passed as a pointer to its first element plus the wider
/// matrix's stride.
///
///     C[m×n] = alpha · op(A)[m×k] · op(B)[k×n] + beta · C
///
/// where op(A) is A, or Aᵀ when `transA` (then A is stored [k×m]); likewise for B.
///
/// The kernel is chosen here and nowhere else: LIBXSMM's JIT kernels for the common case (no transpose,
/// alpha 1, beta 0 or 1), run over blocks of `xsmmRowBlock` rows, and OpenBLAS for the rest. Measured
/// on one core (docs/performance.md), LIBXSMM runs the engine's shapes at 210–255 GFLOP/s where
/// OpenBLAS 0.3.21 runs them at 190–235 with its AVX-512 kernels, and at half that with the AVX2
/// kernels it picks on AMD CPUs. Both are single-threaded here: `Parallel` splits the rows.
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
    if useXSMM, alpha == 1, !transA, !transB, beta == 0 || beta == 1, n <= narrowGEMMColumns,
        acm_gemm_narrow(m, n, k, a, lda, b, ldb, beta == 1 ? 1 : 0, c, ldc) != 0
    {
        return
    }
    if useXSMM, alpha == 1, !transA, !transB, beta == 0 || beta == 1,
        xsmmGEMM(m: m, n: n, k: k, a: a, lda: lda, b: b, ldb: ldb, beta: beta, c: c, ldc: ldc)
    {
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

/// The widest product `gemm` runs as dot products (`acm_gemm_narrow`): a gate's logits.
let narrowGEMMColumns = 6

/// Rows per LIBXSMM kernel call: the kernel keeps a block of A's rows and C's in registers and cache while
/// it streams B.
let xsmmRowBlock = 64
/// Columns per LIBXSMM kernel call when B is large (more than `xsmmLargeB` floats) but not deep (k up to
/// `xsmmPanelDepth`): a panel of B that stays in the L2 cache across the row blocks. Measured on one
/// core: ViT-B's learner shape [788×768]×[768×768] goes from 180 to 240 GFLOP/s (175 to 227 with C
/// accumulated); its fc2, [788×3072]×[3072×768], from 246 to 156 if cut into panels, so deep B is not.
let xsmmColumnBlock = 256
let xsmmLargeB = 128 * 1024
let xsmmPanelDepth = 1024

/// Whether `gemm` uses LIBXSMM: where it targets AVX2 or AVX-512, unless ACM_GEMM=openblas (for comparisons).
nonisolated(unsafe) public var useXSMM: Bool = {
    if let choice = getenv("ACM_GEMM").map({ String(cString: $0) }), choice == "openblas" { return false }
    libxsmm_init()
    return CXSMM_targets_avx2() != 0
}()

/// The GEMM kernels in use, e.g. "LIBXSMM (cpx), OpenBLAS SkylakeX", for logs and benchmarks.
public var gemmKernelName: String {
    useXSMM ? "LIBXSMM (\(String(cString: libxsmm_get_target_arch()))), OpenBLAS \(blasCoreName)" : "OpenBLAS \(blasCoreName)"
}

/// Row-major C = A·B (+ C) through LIBXSMM; false, having done nothing, when LIBXSMM has no kernel for
/// the shape.
///
/// LIBXSMM is column-major: a row-major C[m×n] = A[m×k]·B[k×n] is the column-major Cᵀ[n×m] = Bᵀ·Aᵀ,
/// i.e. its kernel for (n, rows, k) with B as its first operand.
@inline(__always)
func xsmmGEMM(
    m: Int, n: Int, k: Int, a: UnsafePointer<Float>, lda: Int, b: UnsafePointer<Float>, ldb: Int,
    beta: Float, c: UnsafeMutablePointer<Float>, ldc: Int
) -> Bool {
    if k * n > xsmmLargeB && n > xsmmColumnBlock && k <= xsmmPanelDepth {
        var column = 0
        while column < n {
            let width = min(xsmmColumnBlock, n - column)
            if !xsmmGEMM(m: m, n: width, k: k, a: a, lda: lda, b: b + column, ldb: ldb, beta: beta, c: c + column, ldc: ldc) {
                openblasGEMM(m: m, n: width, k: k, a: a, lda: lda, b: b + column, ldb: ldb, beta: beta, c: c + column, ldc: ldc)
            }
            column += width
        }
        return true
    }
    let block = min(m, xsmmRowBlock)
    guard let kernel = acm_smm_kernel(Int32(n), Int32(block), Int32(k), Int32(ldb), Int32(lda), Int32(ldc), beta)
    else { return false }
    var row = 0
    while row + block <= m {
        CXSMM_smmcall(kernel, b, a + row * lda, c + row * ldc)
        row += block
    }
    if row < m {
        // the last rows, fewer than a block: their own kernel, or OpenBLAS where LIBXSMM has none
        if let tail = acm_smm_kernel(Int32(n), Int32(m - row), Int32(k), Int32(ldb), Int32(lda), Int32(ldc), beta) {
            CXSMM_smmcall(tail, b, a + row * lda, c + row * ldc)
        } else {
            openblasGEMM(m: m - row, n: n, k: k, a: a + row * lda, lda: lda, b: b, ldb: ldb, beta: beta, c: c + row * ldc, ldc: ldc)
        }
    }
    return true
}

/// Columns per panel of a float weight stored in panels (`GEMMWeight`): each panel [k × w] contiguous, so that a
/// kernel streams B from consecutive addresses instead of rows `n` floats apart (4-KiB strides for ViT-B's fc1,
/// whose rows alias in the caches and defeat the prefetcher). Measured on one core with both cores busy, at
/// ViT-B's shapes (788 rows): fc1 [768→3072] from 180 to 255 GFLOP/s, fc2 [3072→768] from 165–200 to 245, q/k/v
/// [768→2304] from 200–210 to 250, a projection [768→768] from 210 to 250; Fashion-MNIST's [800×128]×[128×512]
/// from 245 to 260 (docs/performance.md).
let panelWidth = Int(BF16_PANEL)
/// Rows per kernel call over panels: the block of A stays in the L1 and L2 caches while B's panels stream past.
let panelRowBlock = 32
/// Up to this many rows, `panelGEMM` runs each panel over all the rows before the next (the panel stays in the L2
/// cache while A's rows pass it); above, each block of rows through all the panels (A's block stays while B streams).
/// The dense ViT-B at batch 1 (197 rows, each core half the panels): 86–90 ms with blocks of rows outermost, 83
/// with panels; at batch 8 (788 rows a core) 620–655 ms with blocks outermost, 650–690 with chunks of 128 to 800.
let panelOuterRows = 256

/// `matrix` [k × n] (row stride n) in column panels of `panelWidth`: panel p, columns [p·w, p·w + wₚ) with wₚ =
/// min(w, n − p·w), is [k × wₚ] row-major at offset p·w·k.
func packPanels(_ matrix: UnsafePointer<Float>, k: Int, n: Int, into out: UnsafeMutablePointer<Float>) {
    var start = 0
    while start < n {
        let width = min(panelWidth, n - start)
        let panel = out + start * k
        for row in 0..<k { (panel + row * width).update(from: matrix + row * n + start, count: width) }
        start += width
    }
}

/// The inverse of `packPanels`.
func unpackPanels(_ panels: UnsafePointer<Float>, k: Int, n: Int, into out: UnsafeMutablePointer<Float>) {
    var start = 0
    while start < n {
        let width = min(panelWidth, n - start)
        let panel = panels + start * k
        for row in 0..<k { (out + row * n + start).update(from: panel + row * width, count: width) }
        start += width
    }
}

/// Row-major C[m × cs] = A[m × rs]·B[rs, cs] + beta·C (beta 0 or 1) for B [k × n] in panels (`packPanels`), rows
/// `rs` and columns `cs` of it: LIBXSMM's kernels over blocks of `panelRowBlock` rows of A, each block through
/// every panel that `cs` meets, part-panels at its ends. Each tile of C then gets `bias` (`cs.count` values) and GELU
/// (`gelu`), when given, while it is in the L1 cache.
func panelGEMM(
    m: Int, a: UnsafePointer<Float>, lda: Int, panels: UnsafePointer<Float>, k: Int, n: Int,
    rows rs: Range<Int>, columns cs: Range<Int>, beta: Float, c: UnsafeMutablePointer<Float>, ldc: Int,
    bias: UnsafePointer<Float>? = nil, gelu: Bool = false
) {
    if m == 0 || cs.isEmpty { return }
    // the tiles' epilogue: identity without a bias does nothing
    let epilogue: Activation = gelu ? .gelu : .identity
    if rs.isEmpty {
        if beta == 0 { for i in 0..<m { (c + i * ldc).update(repeating: 0, count: cs.count) } }
        epilogue.apply(c, rows: m, columns: cs.count, bias: bias, ld: ldc)
        return
    }
    let depth = rs.count
    // The kernels of one block size: a segment of `w` columns of a panel of width `ld`. All but the first and
    // last segments are whole panels of `panelWidth`.
    struct Kernels {
        var whole: UnsafeRawPointer?, first: UnsafeRawPointer?, last: UnsafeRawPointer?
        var block = 0
    }
    let firstPanel = cs.lowerBound / panelWidth, lastPanel = (cs.upperBound - 1) / panelWidth
    func segment(_ p: Int) -> (start: Int, width: Int, ld: Int) {
        let panelStart = p * panelWidth, ld = min(panelWidth, n - panelStart)
        let start = max(cs.lowerBound, panelStart), end = min(cs.upperBound, panelStart + ld)
        return (start, end - start, ld)
    }
    func dispatch(_ p: Int, block: Int) -> UnsafeRawPointer? {
        let s = segment(p)
        return acm_smm_kernel(Int32(s.width), Int32(block), Int32(depth), Int32(s.ld), Int32(lda), Int32(ldc), beta)
    }
    func kernels(block: Int) -> Kernels {
        Kernels(
            whole: lastPanel - firstPanel > 1 ? dispatch(firstPanel + 1, block: block) : nil,
            first: dispatch(firstPanel, block: block),
            last: lastPanel > firstPanel ? dispatch(lastPanel, block: block) : nil, block: block)
    }
    let full = kernels(block: min(panelRowBlock, m))
    let tail = m % panelRowBlock != 0 && m > panelRowBlock ? kernels(block: m % panelRowBlock) : full
    // the rows in chunks (all of them, or one block), within a chunk the panels, within a panel the blocks
    let chunk = m <= panelOuterRows ? m : panelRowBlock
    var chunkStart = 0
    while chunkStart < m {
        let chunkEnd = min(m, chunkStart + chunk)
        for p in firstPanel...lastPanel {
            let s = segment(p)
            let b = panels + p * panelWidth * k + rs.lowerBound * s.ld + (s.start - p * panelWidth)
            var row = chunkStart
            while row < chunkEnd {
                let block = min(panelRowBlock, chunkEnd - row)
                let set = block == full.block ? full : tail
                let kernel = p == firstPanel ? set.first : p == lastPanel ? set.last : set.whole
                let aBlock = a + row * lda, cBlock = c + row * ldc + (s.start - cs.lowerBound)
                if let kernel {
                    CXSMM_smmcall(kernel, b, aBlock, cBlock)
                } else {
                    openblasGEMM(m: block, n: s.width, k: depth, a: aBlock, lda: lda, b: b, ldb: s.ld, beta: beta, c: cBlock, ldc: ldc)
                }
                epilogue.apply(
                    cBlock, rows: block, columns: s.width, bias: bias.map { $0 + (s.start - cs.lowerBound) }, ld: ldc)
                row += block
            }
        }
        chunkStart = chunkEnd
    }
}

/// Row-major C = A·B + beta·C through OpenBLAS: where LIBXSMM has no kernel for part of a product it began.
@inline(never)
func openblasGEMM(
    m: Int, n: Int, k: Int, a: UnsafePointer<Float>, lda: Int, b: UnsafePointer<Float>, ldb: Int,
    beta: Float, c: UnsafeMutablePointer<Float>, ldc: Int
) {
    cblas_sgemm(
        CblasRowMajor, CblasNoTrans, CblasNoTrans, Int32(m), Int32(n), Int32(k),
        1, a, Int32(lda), b, Int32(ldb), beta, c, Int32(ldc))
}

/// out[c, r] = a[r, c] for a [rows × columns] block with row stride `lda`, into `out` with row stride
/// `ldOut`: LIBXSMM's transpose where `gemm` uses LIBXSMM, else a plain loop.
public func transpose(
    _ a: UnsafePointer<Float>, rows: Int, columns: Int, lda: Int, out: UnsafeMutablePointer<Float>, ldOut: Int
) {
    if useXSMM {
        // column-major, a is [columns × rows] with leading dimension lda; out [rows × columns], ldOut
        libxsmm_otrans(out, a, 4, Int32(columns), Int32(rows), Int32(lda), Int32(ldOut))
        return
    }
    for r in 0..<rows {
        for c in 0..<columns { out[c * ldOut + r] = a[r * lda + c] }
    }
}

/// The number of threads OpenBLAS uses for one GEMM.
public var blasThreads: Int {
    get { Int(openblas_get_num_threads()) }
    set { openblas_set_num_threads(Int32(newValue)) }
}

/// The CPU kernel set OpenBLAS chose at load time, e.g. "SkylakeX".
public var blasCoreName: String { String(cString: openblas_get_corename()) }

/// Debian 12's OpenBLAS (0.3.21) does not know CPUs newer than itself well: Sapphire Rapids falls back to its
/// slowest kernels ("Prescott", about 5× slower here), and AMD Zen 4 and Zen 5, which have AVX-512, get the
/// AVX2 "Haswell" kernels (half the speed on Zen 5). The kernel set is chosen when the library loads, so the
/// only fix is to set OPENBLAS_CORETYPE and start the program again.
///
/// Call first thing in `main`. It does nothing when OPENBLAS_CORETYPE is already set (the user's choice
/// wins) or when OpenBLAS already chose the best kernel set the CPU's flags support; otherwise it sets
/// that kernel set and re-executes the program with the same arguments.
public func reexecWithTunedBLASIfNeeded() {
    guard getenv("OPENBLAS_CORETYPE") == nil,
        let cpuinfo = try? String(contentsOfFile: "/proc/cpuinfo", encoding: .utf8),
        let flagsLine = cpuinfo.split(separator: "\n").first(where: { $0.hasPrefix("flags") })
    else { return }
    let flags = Set(flagsLine.split(separator: " ").map(String.init))
    guard let core = preferredBLASCore(flags: flags, chosen: blasCoreName) else { return }
    setenv("OPENBLAS_CORETYPE", core, 1)
    let args = CommandLine.arguments
    var argv = args.map { strdup($0) } + [nil]
    execv("/proc/self/exe", &argv)
    // execv only returns on failure: carry on with the kernels OpenBLAS chose.
}

/// The OpenBLAS kernel set to force on a CPU with `flags`, or nil when `chosen` (OpenBLAS's own pick)
/// is already as good: SkylakeX wherever AVX-512 is there, Haswell where only AVX2 and FMA are.
func preferredBLASCore(flags: Set<String>, chosen: String) -> String? {
    let avx512Cores: Set<String> = ["skylakex", "cooperlake", "sapphirerapids"]
    if flags.isSuperset(of: ["avx512f", "avx512bw", "avx512dq", "avx512vl"]) {
        return avx512Cores.contains(chosen.lowercased()) ? nil : "SkylakeX"
    }
    if flags.isSuperset(of: ["avx2", "fma"]), chosen.lowercased() == "prescott" { return "Haswell" }
    return nil
}
