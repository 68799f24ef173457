import CACMBF16

/// The arithmetic a model's GEMMs run in.
///
/// - `f32`: float throughout.
/// - `bf16`: the GEMMs' weights (and attention's keys and values) rounded to bfloat16, their activations as they
///   are read, products summed in float. The residual stream, LayerNorm, softmax, GELU, the gates' argmax and
///   the cap's probabilities stay float (docs/performance.md#bf16).
public enum Precision: String, Sendable, CaseIterable, Codable {
    case f32
    case bf16

    /// `self` where this CPU can run it: bf16 only where the GEMM has bfloat16 instructions (`BF16.available`),
    /// else float, which is faster there than emulated bfloat16.
    public var effective: Precision { self == .bf16 && !BF16.available ? .f32 : self }

    /// The GEMM kernels a model in this precision runs on here, for logs and benchmarks.
    public var kernelName: String { self == .bf16 ? BF16.description : gemmKernelName }
}

/// The bf16 GEMM's kernels on this CPU.
public enum BF16 {
    /// Whether the CPU has the bfloat16 instructions the GEMM runs on (AVX-512 BF16) and LIBXSMM's kernels on
    /// them passed a self-check against float arithmetic. ACM_BF16=off says no.
    public static var available: Bool { acm_bf16_isa() > 0 }

    /// The instructions and library, e.g. "avx512_bf16 (LIBXSMM 1.17, cpx)", or why there are none.
    public static var description: String { String(cString: acm_bf16_description()) }

    /// `x` rounded to the nearest bfloat16 (ties to even), as a float: what the bf16 GEMM multiplies.
    public static func rounded(_ x: Float) -> Float {
        var v = x, bits: UInt16 = 0, out: Float = 0
        acm_f32_to_bf16(&v, &bits, 1)
        acm_bf16_to_f32(&bits, &out, 1)
        return out
    }
}

/// A GEMM's right-hand matrix B [k × n], row-major, stored for the kernels that multiply it:
/// - in f32, where `gemm` runs LIBXSMM and B is wider than a panel, in column panels (`packPanels`), which the
///   kernels stream from consecutive addresses, instead of row-major;
/// - in bf16, rounded to bfloat16 and packed in column panels, each in pairs of rows (`acm_pack_bf16_panels`),
///   with the float matrix kept beside it for the few products the packed copy cannot serve.
/// Blocks of rows (starting at an even row in bf16) and of columns multiply as the matrix does.
public struct GEMMWeight: @unchecked Sendable {
    /// B row-major, where it is not in panels.
    private let rowMajor: Tensor?
    /// B in float column panels, `rows · columns` floats; nil where `rowMajor` is kept.
    private let panels: Tensor?
    /// B in bfloat16 panels of pairs, `bf16PackedCount(k:n:)` values; nil in f32.
    private let packed: PackedStorage?

    public let rows: Int
    public let columns: Int
    /// What `multiply` runs in.
    public var precision: Precision { packed == nil ? .f32 : .bf16 }

    /// B in float, row-major: the matrix itself, or, where it is kept in panels, a new copy (for building other
    /// weights at load). Keep the tensor alive while its `data` is read.
    public func floatMatrix() -> Tensor {
        if let rowMajor { return rowMajor }
        let out = Tensor(shape: [rows, columns])
        unpackPanels(panels!.data, k: rows, n: columns, into: out.data)
        return out
    }

    /// The column panels `multiply` runs over (one where B is row-major): blocks of columns that start and end on
    /// them split the product without cutting a panel.
    public var panelCount: Int { panels == nil && packed == nil ? 1 : (columns + panelWidth - 1) / panelWidth }

    /// The columns of `panels`, a range of `panelCount`.
    public func columns(ofPanels panels: Range<Int>) -> Range<Int> {
        if panelCount == 1 { return 0..<columns }
        return panels.lowerBound * panelWidth..<min(panels.upperBound * panelWidth, columns)
    }

    /// `matrix` [k × n]; packed for bf16 when `precision.effective` is bf16, else in panels where `gemm` runs
    /// LIBXSMM (`inPanels`).
    public init(_ matrix: Tensor, precision: Precision, inPanels: Bool = useXSMM) {
        precondition(matrix.shape.count == 2)
        let (k, n) = (matrix.shape[0], matrix.shape[1])
        rows = k
        columns = n
        if precision.effective == .bf16 {
            rowMajor = matrix
            panels = nil
            let storage = PackedStorage(count: bf16PackedCount(k: k, n: n))
            acm_pack_bf16_panels(matrix.data, k, n, n, storage.buffer.baseAddress)
            packed = storage
        } else if inPanels && n > panelWidth && k > 0 {
            let storage = Tensor(shape: [k * n])
            packPanels(matrix.data, k: k, n: n, into: storage.data)
            rowMajor = nil
            panels = storage
            packed = nil
        } else {
            rowMajor = matrix
            panels = nil
            packed = nil
        }
    }

    /// C[m × columns] = A[m × rows]·B[rows, columns] + beta·C: the block of B at `rows` (an even start in
    /// bf16) and `columns` (default all), A with row stride `lda`, C with `ldc`. Then, when given, `bias` (the
    /// columns' own, `columns.count` values) added and GELU applied (`gelu`), each tile of C while it is in the
    /// cache where the weight is in panels.
    @inline(__always)
    public func multiply(
        m: Int, a: UnsafePointer<Float>, lda: Int, rows: Range<Int>? = nil, columns: Range<Int>? = nil,
        beta: Float = 0, c: UnsafeMutablePointer<Float>, ldc: Int, bias: UnsafePointer<Float>? = nil, gelu: Bool = false
    ) {
        let n = self.columns
        let r = rows ?? 0..<self.rows, cs = columns ?? 0..<n
        if let packed, r.lowerBound % 2 == 0, m > 0, !cs.isEmpty, !r.isEmpty {
            acm_gemm_bf16_panels(
                m, cs.count, r.count, a, lda, nil, 0, packed.buffer.baseAddress, self.rows, n, r.lowerBound, cs.lowerBound,
                beta, c, ldc, bias, gelu ? 1 : 0, nil, 0)
            return
        }
        if let panels {
            panelGEMM(
                m: m, a: a, lda: lda, panels: panels.data, k: self.rows, n: n, rows: r, columns: cs, beta: beta, c: c,
                ldc: ldc, bias: bias, gelu: gelu)
            return
        }
        gemm(
            m: m, n: cs.count, k: r.count, a: a, lda: lda, b: rowMajor!.data + r.lowerBound * n + cs.lowerBound, ldb: n,
            beta: beta, c: c, ldc: ldc)
        (gelu ? Activation.gelu : .identity).apply(c, rows: m, columns: cs.count, bias: bias, ld: ldc)
    }
}

extension GEMMWeight {
    /// `multiply` with A already rounded to bfloat16 (`acm_gather_rows_bf16`), row stride `lda` (even): for
    /// rows that several products read. Only for a bf16 weight and an even block of rows. `bias` (the columns' own),
    /// when given, is added to each tile as it is made.
    @inline(__always)
    public func multiply(
        m: Int, rounded a: UnsafePointer<UInt16>, lda: Int, rows: Range<Int>? = nil, columns: Range<Int>? = nil,
        beta: Float = 0, c: UnsafeMutablePointer<Float>, ldc: Int, bias: UnsafePointer<Float>? = nil
    ) {
        let n = self.columns
        let r = rows ?? 0..<self.rows, cs = columns ?? 0..<n
        guard let packed else { preconditionFailure("a rounded A multiplies only a bf16 weight") }
        precondition(r.lowerBound % 2 == 0 && r.count % 2 == 0 && lda % 2 == 0)
        if m == 0 || cs.isEmpty { return }
        acm_gemm_bf16_panels(
            m, cs.count, r.count, nil, 0, a, lda, packed.buffer.baseAddress, self.rows, n, r.lowerBound, cs.lowerBound, beta,
            c, ldc, bias, 0, nil, 0)
    }
}

extension GEMMWeight {
    /// Whether `multiplyActivated` runs `activation` (the others go through `Activation.apply`).
    public static func fusesActivation(_ activation: Activation) -> Bool { activation == .gelu || activation == .identity }

    /// In bf16, act(A·B[:, columns] + bias) for act GELU or identity (`fusesActivation`), rounded to bfloat16 into
    /// `hidden` (row stride `ldHidden`, the block of columns even) for the product that reads it next: each tile
    /// is made, finished and rounded in a buffer of the thread's that stays in the L1 cache, and the float result
    /// is not kept. A float (`a`), or already rounded (`rounded`).
    @inline(__always)
    public func multiplyActivated(
        m: Int, a: UnsafePointer<Float>? = nil, rounded: UnsafePointer<UInt16>? = nil, lda: Int,
        columns: Range<Int>? = nil, bias: UnsafePointer<Float>?, activation: Activation,
        hidden: UnsafeMutablePointer<UInt16>, ldHidden: Int
    ) {
        let n = self.columns, cs = columns ?? 0..<n
        guard let packed else { preconditionFailure("multiplyActivated runs only a bf16 weight") }
        precondition(Self.fusesActivation(activation) && cs.count % 2 == 0 && (a != nil) != (rounded != nil))
        precondition(cs.lowerBound >= 0 && cs.upperBound <= n)
        precondition(rounded == nil || (self.rows % 2 == 0 && lda % 2 == 0))
        if m == 0 || cs.isEmpty { return }
        acm_gemm_bf16_panels(
            m, cs.count, self.rows, rounded == nil ? a : nil, lda, rounded, lda, packed.buffer.baseAddress, self.rows, n, 0,
            cs.lowerBound, 0, nil, 0, bias, activation == .gelu ? 1 : 0, hidden, ldHidden)
    }
}

/// Room for `floats` floats and, after them, `count` bfloat16 values (two to a float) in scratch memory.
@inline(__always)
func bf16Space(_ scratch: Scratch, floats: Int, count: Int) -> (UnsafeMutablePointer<Float>, UnsafeMutablePointer<UInt16>) {
    let base = scratch.reserve(floats + (count + 1) / 2)
    return (base, UnsafeMutableRawPointer(base + floats).bindMemory(to: UInt16.self, capacity: count))
}

/// The bfloat16 values a packed B [k × n] takes (`acm_pack_bf16_pairs`).
public func bf16PackedCount(k: Int, n: Int) -> Int { (k + 1) / 2 * n * 2 }

/// The packed bfloat16 copy's memory, freed with the last `GEMMWeight` that shares it.
final class PackedStorage: @unchecked Sendable {
    let buffer: UnsafeMutableBufferPointer<UInt16>
    init(count: Int) { buffer = .allocate(capacity: max(count, 1)) }
    deinit { buffer.deallocate() }
}
