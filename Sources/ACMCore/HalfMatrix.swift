/// A row-major [rows, columns] matrix kept as IEEE half precision, as a model file ships it, and widened
/// to Float as it is read: half the memory, and half the bytes per read where reading it is the cost (a
/// decoder step's logits against a 51,864-token vocabulary). Widening is exact, so every product is the
/// one the Float matrix would give.
public final class HalfMatrix: @unchecked Sendable {
    public let rows: Int
    public let columns: Int
    /// The halves' bits, row-major.
    public let bits: UnsafeMutablePointer<UInt16>

    public init(rows: Int, columns: Int) {
        self.rows = rows
        self.columns = columns
        bits = UnsafeMutablePointer<UInt16>.allocate(capacity: max(rows * columns, 1))
        bits.initialize(repeating: 0, count: max(rows * columns, 1))
    }

    deinit { bits.deallocate() }

    /// Row `r` widened into `out` (`columns` floats).
    public func row(_ r: Int, into out: UnsafeMutablePointer<Float>) {
        widenHalves(bits + r * columns, into: out, count: columns)
    }

    /// out[i, j] = x[i] · row j, for `count` rows of x (`ldx` apart) and every row of the matrix: x times
    /// the matrix transposed, as `timesTransposed` computes it for a Float matrix. A few rows read each
    /// weight once for all of them; more go through GEMM on panels widened to Float, so that each panel's
    /// widening is shared by all the rows.
    public func timesTransposed(
        _ x: UnsafePointer<Float>, count: Int, ldx: Int? = nil, out: UnsafeMutablePointer<Float>, ldOut: Int? = nil,
        minimumRowsPerWorker: Int = 1024
    ) {
        let ldx = ldx ?? columns, ldOut = ldOut ?? rows, k = columns
        Parallel.forEachChunk(rows, minimumPerChunk: minimumRowsPerWorker) { _, range in
            if count <= streamedRows {
                dotRowsHalf(
                    x, rows: count, ldx: ldx, w: bits + range.lowerBound * k, outputs: range.count, k: k,
                    out: out + range.lowerBound, ldOut: ldOut)
                return
            }
            let panel = 256
            withUnsafeTemporaryAllocation(of: Float.self, capacity: panel * k) { buffer in
                let wide = buffer.baseAddress!
                for start in stride(from: range.lowerBound, to: range.upperBound, by: panel) {
                    let n = min(panel, range.upperBound - start)
                    widenHalves(bits + start * k, into: wide, count: n * k)
                    // [count, k] × [k, n]
                    gemm(m: count, n: n, k: k, a: x, lda: ldx, b: wide, ldb: k, transB: true, c: out + start, ldc: ldOut)
                }
            }
        }
    }
}
