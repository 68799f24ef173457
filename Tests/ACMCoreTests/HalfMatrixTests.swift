import Testing

@testable import ACMCore

@Suite struct HalfMatrixTests {
    /// A matrix of random halves in [-2, 2], and the same values as Floats (by Swift's Float16).
    private func matrix(rows: Int, columns: Int, seed: UInt64) -> (HalfMatrix, [Float]) {
        var rng = SplitMix64(seed: seed)
        let m = HalfMatrix(rows: rows, columns: columns)
        var wide: [Float] = []
        for i in 0..<rows * columns {
            let h = Float16(Float.random(in: -2...2, using: &rng))
            m.bits[i] = h.bitPattern
            wide.append(Float(h))
        }
        return (m, wide)
    }

    /// Should widen rows exactly, subnormals, infinities and signed zeros included.
    @Test func widensExactly() {
        let special: [UInt16] = [0x0000, 0x8000, 0x0001, 0x03FF, 0x0400, 0x3C00, 0x7BFF, 0xFBFF, 0x7C00, 0xFC00]
        let m = HalfMatrix(rows: 1, columns: special.count)
        for (i, b) in special.enumerated() { m.bits[i] = b }
        var out = [Float](repeating: .nan, count: special.count)
        m.row(0, into: &out)
        for (b, got) in zip(special, out) {
            let want = Float(Float16(bitPattern: b))
            #expect(got.bitPattern == want.bitPattern, "half 0x\(String(b, radix: 16))")
        }
    }

    /// Should give x times the matrix transposed, as a naive double loop does, for a few rows (the
    /// streamed path) and for many (GEMM on widened panels), with the output rows strided.
    @Test(arguments: [1, 3, 8, 9, 20])
    func timesTransposedMatchesNaive(rows: Int) {
        let (m, wide) = matrix(rows: 700, columns: 37, seed: UInt64(rows))
        var rng = SplitMix64(seed: 99)
        let x = (0..<rows * 37).map { _ in Float.random(in: -1...1, using: &rng) }
        let ldOut = 703
        var out = [Float](repeating: .nan, count: rows * ldOut)
        m.timesTransposed(x, count: rows, out: &out, ldOut: ldOut, minimumRowsPerWorker: 64)
        var worst = 0.0
        for r in 0..<rows {
            for j in 0..<700 {
                var want = 0.0
                for i in 0..<37 { want += Double(x[r * 37 + i]) * Double(wide[j * 37 + i]) }
                worst = max(worst, abs(Double(out[r * ldOut + j]) - want))
            }
        }
        #expect(worst < 1e-4, "max |Δ| \(worst)")
    }
}
