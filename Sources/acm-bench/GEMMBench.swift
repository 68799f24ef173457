import ACMCore
import ArgumentParser
import Foundation

/// GFLOP/s of one thread's GEMMs on the engine's shapes, through `gemm`'s LIBXSMM path and through OpenBLAS with B
/// row-major, and through a float `GEMMWeight` (LIBXSMM over B in column panels), alternating, and with --bf16 also
/// through the bf16 path (A in float, rounded as it is read; B packed once), where the CPU has it
/// (docs/performance.md).
struct GEMMBench: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "gemm", abstract: "One thread's GEMM speed on the engine's shapes: LIBXSMM against OpenBLAS.")

    @Option(help: "Shapes as MxNxK (row-major [M×K]·[K×N]).")
    var shape: [String] = [
        "50x128x128", "50x512x128", "50x128x512", "400x16x128", "400x128x16", "800x128x128", "800x512x128",
        "800x128x512", "1600x5x128", "1576x3072x768", "1576x768x3072",
    ]
    @Option(help: "Passes; the best is reported.") var passes = 5
    @Flag(help: "Also time the bf16 GEMM (GEMMWeight in bf16) on each shape.") var bf16 = false
    @Flag(help: "Add to C (beta 1, as a learner's second product does after the first) instead of overwriting it.")
    var accumulate = false

    func run() throws {
        reexecWithTunedBLASIfNeeded()
        Parallel.workers = 1
        var rng = SeededGenerator(seed: 3)
        let beta: Float = accumulate ? 1 : 0
        print("one thread, GFLOP/s (best of \(passes))\(accumulate ? ", C accumulated" : ""); \(gemmKernelName)")
        let timeBF16 = bf16 && BF16.available
        if bf16 && !timeBF16 { print("no bf16 GEMM here: \(BF16.description)") }
        print("| M | N | K | LIBXSMM | OpenBLAS | ratio | LIBXSMM, B in panels |" + (timeBF16 ? " bf16 | bf16 ÷ LIBXSMM |" : ""))
        print("| ---: | ---: | ---: | ---: | ---: | ---: | ---: |" + (timeBF16 ? " ---: | ---: |" : ""))
        for text in shape {
            let dims = text.split(separator: "x").compactMap { Int($0) }
            guard dims.count == 3 else { throw ValidationError("shape '\(text)' is not MxNxK") }
            let (m, n, k) = (dims[0], dims[1], dims[2])
            let a = Tensor(shape: [m, k]), b = Tensor(shape: [k, n]), c = Tensor(shape: [m, n])
            for i in 0..<a.count { a.data[i] = Float.random(in: -1...1, using: &rng) }
            for i in 0..<b.count { b.data[i] = Float.random(in: -1...1, using: &rng) }
            let flop = 2.0 * Double(m * n * k)
            let reps = max(1, Int(2e9 / flop))
            var best = [Double](repeating: .infinity, count: 4)
            let fast = useXSMM
            let packed = timeBF16 ? GEMMWeight(b, precision: .bf16) : nil
            let panels = GEMMWeight(b, precision: .f32)
            for _ in 0..<passes {
                for (i, xsmm) in [fast, false].enumerated() {
                    useXSMM = xsmm
                    gemm(m: m, n: n, k: k, a: a.data, lda: k, b: b.data, ldb: n, beta: beta, c: c.data, ldc: n)
                    let seconds = time {
                        for _ in 0..<reps { gemm(m: m, n: n, k: k, a: a.data, lda: k, b: b.data, ldb: n, beta: beta, c: c.data, ldc: n) }
                    }
                    best[i] = min(best[i], seconds / Double(reps))
                }
                // the weights' own paths as the engine runs them (a row-major weight goes through `gemm`)
                useXSMM = fast
                panels.multiply(m: m, a: a.data, lda: k, beta: beta, c: c.data, ldc: n)
                let seconds = time { for _ in 0..<reps { panels.multiply(m: m, a: a.data, lda: k, beta: beta, c: c.data, ldc: n) } }
                best[3] = min(best[3], seconds / Double(reps))
                if let packed {
                    packed.multiply(m: m, a: a.data, lda: k, beta: beta, c: c.data, ldc: n)
                    let seconds = time { for _ in 0..<reps { packed.multiply(m: m, a: a.data, lda: k, beta: beta, c: c.data, ldc: n) } }
                    best[2] = min(best[2], seconds / Double(reps))
                }
            }
            useXSMM = fast
            let rates = best.map { flop / $0 / 1e9 }
            print(
                String(format: "| %d | %d | %d | %.0f | %.0f | %.2f | %.0f |", m, n, k, rates[0], rates[1], rates[0] / rates[1], rates[3])
                    + (timeBF16 ? String(format: " %.0f | %.2f |", rates[2], rates[2] / rates[0]) : ""))
        }
    }
}
