import Foundation
import Testing

@testable import ACMCore

/// x·wᵀ + b in Double, x [rows, inputs] (rows `ldx` apart), w [outputs, inputs].
func naiveLinear(_ x: UnsafePointer<Float>, rows: Int, ldx: Int? = nil, w: Tensor, bias: Tensor?) -> [[Double]] {
    let outputs = w.shape[0], inputs = w.shape[1], ld = ldx ?? inputs
    var out = [[Double]](repeating: [Double](repeating: 0, count: outputs), count: rows)
    for r in 0..<rows {
        for j in 0..<outputs {
            var sum = bias.map { Double($0.data[j]) } ?? 0
            for i in 0..<inputs { sum += Double(x[r * ld + i]) * Double(w.data[j * inputs + i]) }
            out[r][j] = sum
        }
    }
    return out
}

@Suite struct LinearTests {
    /// Should compute x·wᵀ + b by columns for rows that stream the weight (up to `streamedRows`) and for rows
    /// that take a GEMM, with strided rows, with and without a bias.
    @Test(arguments: [1, 3, 8, 9, 20])
    func timesTransposedMatchesNaive(rows: Int) {
        var rng = SplitMix64(seed: 12)
        let inputs = 37, outputs = 70, pad = 3
        let x = randomTensor([rows, inputs + pad], rng: &rng)
        let w = randomTensor([outputs, inputs], rng: &rng), b = randomTensor([outputs], rng: &rng)
        for bias in [nil, b] {
            let out = Tensor(shape: [rows, outputs + pad])
            timesTransposed(
                x.data, rows: rows, ldx: inputs + pad, w: w.data, outputs: outputs, inputs: inputs, bias: bias?.data,
                out: out.data, ldOut: outputs + pad, minimumColumnsPerWorker: 16)
            let want = naiveLinear(x.data, rows: rows, ldx: inputs + pad, w: w, bias: bias)
            for r in 0..<rows {
                for j in 0..<(outputs + pad) {
                    let got = Double(out.data[r * (outputs + pad) + j])
                    if j < outputs {
                        #expect(abs(got - want[r][j]) < 1e-4, "row \(r) column \(j)")
                    } else {
                        #expect(got == 0, "padding at row \(r) column \(j)")
                    }
                }
            }
        }
    }

    /// Should compute a projection and a dense MLP as their definitions do, whether few rows run on one
    /// worker or split by columns, and many rows split by rows.
    @Test(arguments: [FewRows.oneWorker, .splitColumns], [3, 12, 40])
    func denseMatchesNaive(fewRows: FewRows, rows: Int) {
        var rng = SplitMix64(seed: 13)
        let d = 21, hidden = 130
        let x = randomTensor([rows, d], rng: &rng)
        let fc1 = Linear(weight: randomTensor([hidden, d], scale: 0.3, rng: &rng), bias: randomTensor([hidden], rng: &rng), precision: .f32)
        let fc2 = Linear(weight: randomTensor([d, hidden], scale: 0.3, rng: &rng), bias: randomTensor([d], rng: &rng), precision: .f32)

        let projected = Tensor(shape: [rows, hidden])
        fc1.forward(x.data, rows: rows, out: projected.data, fewRows: fewRows)
        let wantHidden = naiveLinear(x.data, rows: rows, w: fc1.weight, bias: fc1.bias)
        for r in 0..<rows {
            for j in 0..<hidden { #expect(abs(Double(projected.data[r * hidden + j]) - wantHidden[r][j]) < 1e-4) }
        }

        let out = Tensor(shape: [rows, d])
        DenseMLP(fc1: fc1, fc2: fc2).forward(x.data, rows: rows, out: out.data, scratch: WorkerScratch(), fewRows: fewRows)
        for r in 0..<rows {
            let activated = wantHidden[r].map(exactGELU)
            for c in 0..<d {
                let want = (0..<hidden).reduce(Double(fc2.bias!.data[c])) {
                    $0 + activated[$1] * Double(fc2.weight.data[c * hidden + $1])
                }
                #expect(abs(Double(out.data[r * d + c]) - want) < 1e-4, "row \(r) column \(c)")
            }
        }
    }

    /// Should compute a projection and a dense MLP whose weights are large enough to be shared out by columns, with
    /// rows few enough for that (40) and too many (300), in f32 and, where the CPU has it, bf16.
    @Test(arguments: [40, 300], Precision.allCases)
    func largeWeightsMatchNaive(rows: Int, precision: Precision) {
        var rng = SplitMix64(seed: 14)
        let d = 300, hidden = 900
        let x = randomTensor([rows, d], rng: &rng)
        let fc1 = Linear(weight: randomTensor([hidden, d], scale: 0.1, rng: &rng), bias: randomTensor([hidden], rng: &rng), precision: precision)
        let fc2 = Linear(weight: randomTensor([d, hidden], scale: 0.1, rng: &rng), bias: randomTensor([d], rng: &rng), precision: precision)
        #expect(fc1.splitsColumns(rows: rows) == (rows < columnSplitRows && Parallel.workers > 1))
        // bf16 rounds x, the weights and the hidden layer: 2⁻⁸ relative each, over sums of 300 and 900 terms
        let tolerance = fc1.precision == .bf16 ? 0.05 : 1e-4
        let projected = Tensor(shape: [rows, hidden])
        fc1.forward(x.data, rows: rows, out: projected.data)
        let wantHidden = naiveLinear(x.data, rows: rows, w: fc1.weight, bias: fc1.bias)
        var worst = 0.0
        for r in 0..<rows { for j in 0..<hidden { worst = max(worst, abs(Double(projected.data[r * hidden + j]) - wantHidden[r][j])) } }
        #expect(worst < tolerance, "fc1: \(worst)")

        let out = randomTensor([rows, d], rng: &rng), residual = out.array
        DenseMLP(fc1: fc1, fc2: fc2).forward(x.data, rows: rows, out: out.data, accumulate: true, scratch: WorkerScratch())
        worst = 0
        for r in 0..<rows {
            let activated = wantHidden[r].map(exactGELU)
            for c in 0..<d {
                // A plain loop, not a reduce with a closure: the suite runs unoptimized, and this is 81 M terms.
                var want = Double(fc2.bias!.data[c]) + Double(residual[r * d + c])
                let w = fc2.weight.data + c * hidden
                for i in 0..<hidden { want += activated[i] * Double(w[i]) }
                worst = max(worst, abs(Double(out.data[r * d + c]) - want))
            }
        }
        #expect(worst < tolerance, "MLP: \(worst)")
    }
}
