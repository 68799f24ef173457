import Foundation
import Testing
import CACMBF16
import CACMKernels

@testable import ACMCore

@Suite struct GEMMTests {
    /// Should match a naive triple loop for every transpose combination, with strided operands and beta.
    @Test(arguments: [(false, false), (true, false), (false, true), (true, true)])
    func matchesNaive(transA: Bool, transB: Bool) {
        var rng = SplitMix64(seed: 1)
        let m = 7, n = 5, k = 9, pad = 3
        // A is stored [m, k] (or [k, m] transposed), inside a wider buffer to exercise lda.
        let aRows = transA ? k : m, aCols = transA ? m : k
        let bRows = transB ? n : k, bCols = transB ? k : n
        let a = randomTensor([aRows, aCols + pad], rng: &rng)
        let b = randomTensor([bRows, bCols + pad], rng: &rng)
        let c = randomTensor([m, n + pad], rng: &rng)
        let c0 = matrix(c.data, rows: m, columns: n, ld: n + pad)
        gemm(
            m: m, n: n, k: k, alpha: 0.5,
            a: a.data, lda: aCols + pad, transA: transA,
            b: b.data, ldb: bCols + pad, transB: transB,
            beta: 2, c: c.data, ldc: n + pad)
        var opA = matrix(a.data, rows: aRows, columns: aCols, ld: aCols + pad)
        var opB = matrix(b.data, rows: bRows, columns: bCols, ld: bCols + pad)
        if transA { opA = transpose(opA) }
        if transB { opB = transpose(opB) }
        let ab = naiveMatmul(opA, opB)
        for i in 0..<m {
            for j in 0..<n {
                #expect(abs(c.data[i * (n + pad) + j] - (0.5 * ab[i][j] + 2 * c0[i][j])) < 1e-5)
            }
        }
    }

    /// Should match a naive loop on the LIBXSMM path (alpha 1, beta 0 or 1, no transpose): row counts that
    /// are and are not multiples of its row block, with strided operands, and leave padding alone.
    @Test(arguments: [0, 1] as [Float], [1, 64, 150])
    func fastPathMatchesNaive(beta: Float, m: Int) {
        var rng = SplitMix64(seed: 2)
        let n = 19, k = 37, pad = 5
        let a = randomTensor([m, k + pad], rng: &rng)
        let b = randomTensor([k, n + pad], rng: &rng)
        let c = randomTensor([m, n + pad], rng: &rng)
        let before = c.array
        gemm(m: m, n: n, k: k, a: a.data, lda: k + pad, b: b.data, ldb: n + pad, beta: beta, c: c.data, ldc: n + pad)
        let ab = naiveMatmul(matrix(a.data, rows: m, columns: k, ld: k + pad), matrix(b.data, rows: k, columns: n, ld: n + pad))
        for i in 0..<m {
            for j in 0..<(n + pad) {
                let index = i * (n + pad) + j
                let want = j < n ? ab[i][j] + beta * before[index] : before[index]
                #expect(abs(c.data[index] - want) < 1e-4, "row \(i) column \(j)")
            }
        }
    }

    /// Should match a naive loop on the narrow path (n ≤ 6: a gate's logits): every width, depths below, at
    /// and across a vector's 16 lanes and past the path's 1,024, row counts around its blocks of four, strided
    /// operands, padding left alone.
    @Test(arguments: [0, 1] as [Float])
    func narrowMatchesNaive(beta: Float) {
        var rng = SplitMix64(seed: 5)
        let pad = 3
        for n in 1...7 {
            for k in [1, 15, 16, 17, 128, 300, 1100] {
                for m in [1, 3, 4, 5, 9] {
                    let a = randomTensor([m, k + pad], rng: &rng)
                    let b = randomTensor([k, n + pad], rng: &rng)
                    let c = randomTensor([m, n + pad], rng: &rng)
                    let before = c.array
                    gemm(m: m, n: n, k: k, a: a.data, lda: k + pad, b: b.data, ldb: n + pad, beta: beta, c: c.data, ldc: n + pad)
                    let ab = naiveMatmul(
                        matrix(a.data, rows: m, columns: k, ld: k + pad), matrix(b.data, rows: k, columns: n, ld: n + pad))
                    for i in 0..<m {
                        for j in 0..<(n + pad) {
                            let index = i * (n + pad) + j
                            let want = j < n ? ab[i][j] + beta * before[index] : before[index]
                            #expect(abs(c.data[index] - want) < 1e-4 * Float(max(1, k / 100)), "n \(n) k \(k) m \(m) [\(i), \(j)]")
                        }
                    }
                }
            }
        }
    }

    /// Should match a naive loop where B is large enough to be run in column panels, accumulating too.
    @Test(arguments: [0, 1] as [Float])
    func columnPanelsMatchNaive(beta: Float) {
        var rng = SplitMix64(seed: 4)
        let m = 70, n = 300, k = 500, ldb = 310
        let a = randomTensor([m, k], rng: &rng), b = randomTensor([k, ldb], rng: &rng), c = randomTensor([m, n], rng: &rng)
        let before = c.array
        gemm(m: m, n: n, k: k, a: a.data, lda: k, b: b.data, ldb: ldb, beta: beta, c: c.data, ldc: n)
        let ab = naiveMatmul(matrix(a.data, rows: m, columns: k), matrix(b.data, rows: k, columns: n, ld: ldb))
        var worst: Float = 0
        for i in 0..<m { for j in 0..<n { worst = max(worst, abs(c.data[i * n + j] - (ab[i][j] + beta * before[i * n + j]))) } }
        #expect(worst < 1e-3)
    }

    /// A float weight in column panels should multiply as its row-major matrix does, in blocks of its rows and
    /// columns that start and end inside panels, across whole panels and in the last, narrower panel, with row
    /// counts around the kernels' row block, accumulating too; and give its matrix back unchanged.
    @Test(arguments: [0, 1] as [Float])
    func panelsMatchNaive(beta: Float) {
        var rng = SplitMix64(seed: 6)
        let k = 150, n = 3 * panelWidth + 19, pad = 3
        let b = randomTensor([k, n], rng: &rng)
        let weight = GEMMWeight(b, precision: .f32, inPanels: true)
        #expect(weight.floatMatrix().array == b.array)
        let blocks: [(rows: Range<Int>, columns: Range<Int>)] = [
            (0..<k, 0..<n), (0..<k, 5..<(panelWidth - 3)), (7..<120, 10..<(2 * panelWidth + 1)),
            (1..<k, panelWidth..<(2 * panelWidth)), (0..<k, (3 * panelWidth - 2)..<n), (40..<41, 0..<n),
        ]
        for (rows, columns) in blocks {
            for m in [1, panelRowBlock - 1, panelRowBlock, 2 * panelRowBlock + 5] {
                let a = randomTensor([m, rows.count + pad], rng: &rng)
                let c = randomTensor([m, columns.count + pad], rng: &rng)
                let before = c.array
                weight.multiply(
                    m: m, a: a.data, lda: rows.count + pad, rows: rows, columns: columns, beta: beta, c: c.data,
                    ldc: columns.count + pad)
                let ab = naiveMatmul(
                    matrix(a.data, rows: m, columns: rows.count, ld: rows.count + pad),
                    matrix(b.data + rows.lowerBound * n + columns.lowerBound, rows: rows.count, columns: columns.count, ld: n))
                var worst: Float = 0, padding = true
                for i in 0..<m {
                    for j in 0..<(columns.count + pad) {
                        let index = i * (columns.count + pad) + j
                        if j < columns.count {
                            worst = max(worst, abs(c.data[index] - (ab[i][j] + beta * before[index])))
                        } else if c.data[index] != before[index] {
                            padding = false
                        }
                    }
                }
                #expect(worst < 1e-4, "rows \(rows) columns \(columns) m \(m)")
                #expect(padding, "rows \(rows) columns \(columns) m \(m): padding written")
            }
        }
    }

    /// Should transpose a strided block into a strided block and leave the padding alone: a single element, square,
    /// long and wide blocks, and the attention's kᵀ of a head (50 keys × 32).
    @Test(arguments: [(13, 7, 9, 15), (1, 1, 1, 1), (16, 16, 16, 16), (17, 33, 40, 19), (50, 32, 128, 50), (70, 45, 45, 71)])
    func transposeMatchesNaive(rows: Int, columns: Int, lda: Int, ldOut: Int) {
        var rng = SplitMix64(seed: 6)
        let a = randomTensor([rows, lda], rng: &rng)
        let out = Tensor(shape: [columns, ldOut])
        transpose(a.data, rows: rows, columns: columns, lda: lda, out: out.data, ldOut: ldOut)
        var wrong = 0
        for c in 0..<columns {
            for r in 0..<ldOut where out.data[c * ldOut + r] != (r < rows ? a.data[r * lda + c] : 0) { wrong += 1 }
        }
        #expect(wrong == 0)
    }

    /// Should remember a kernel asked for with beta 0 and with beta 1 side by side (a learner's first product, then
    /// those it adds): each shape goes to LIBXSMM's registry once, not at every call (the two shared a slot of the
    /// per-thread table and evicted each other, 30,000 registry lookups per 2 s of the ACM model in auto mode).
    @Test func kernelTableKeepsBothBetas() {
        for rows in [16, 22, 25, 29, 32, 64] {
            for k in [16, 128] {
                let before = acm_smm_kernel_misses()
                for call in 0..<200 { _ = acm_smm_kernel(64, Int32(rows), Int32(k), 64, Int32(k), 128, Float(call % 2)) }
                #expect(acm_smm_kernel_misses() - before <= 2, "rows \(rows), k \(k)")
            }
        }
    }

    /// Should force AVX-512 kernels where OpenBLAS picked weaker ones, AVX2 only over its slowest, and
    /// nothing where its own pick is already the best the flags allow.
    @Test func blasCoreChoice() {
        let avx512: Set<String> = ["avx512f", "avx512bw", "avx512dq", "avx512vl", "avx2", "fma"]
        #expect(preferredBLASCore(flags: avx512, chosen: "Haswell") == "SkylakeX")
        #expect(preferredBLASCore(flags: avx512, chosen: "Zen") == "SkylakeX")
        #expect(preferredBLASCore(flags: avx512, chosen: "Prescott") == "SkylakeX")
        #expect(preferredBLASCore(flags: avx512, chosen: "SkylakeX") == nil)
        #expect(preferredBLASCore(flags: avx512, chosen: "Cooperlake") == nil)
        #expect(preferredBLASCore(flags: ["avx2", "fma"], chosen: "Prescott") == "Haswell")
        #expect(preferredBLASCore(flags: ["avx2", "fma"], chosen: "Zen") == nil)
        #expect(preferredBLASCore(flags: ["sse2"], chosen: "Prescott") == nil)
    }

    /// Should write zeros for k = 0 with beta = 0, and leave padding columns alone.
    @Test func emptyInnerDimension() {
        let c = Tensor(shape: [2, 4], values: [1, 2, 3, 4, 5, 6, 7, 8])
        let dummy = Tensor(shape: [1])
        gemm(m: 2, n: 3, k: 0, a: dummy.data, lda: 1, b: dummy.data, ldb: 3, c: c.data, ldc: 4)
        #expect(c.array == [0, 0, 0, 4, 0, 0, 0, 8])
    }
}

@Suite struct ElementwiseTests {
    /// Should equal the erf form of GELU, computed in Double with libm's erf, within 1e-6 absolute.
    @Test func geluMatchesErfForm() {
        let xs = stride(from: -12.0, through: 12.0, by: 0.0137).map { Float($0) } + [0, -0.0, 1e-8, -1e-8, 30, -30]
        let t = Tensor(shape: [xs.count], values: xs)
        geluInPlace(t.data, count: xs.count)
        for (i, x) in xs.enumerated() {
            let want = exactGELU(Double(x))
            #expect(abs(Double(t[i]) - want) <= 1e-6 * max(1, abs(want)), "x=\(x)")
        }
    }

    /// Should be within 2 ulp of libm's exp in double precision over a softmax's shifted logits.
    @Test func doubleExpIsAccurate() {
        let xs = stride(from: -700.0, through: 0.0, by: 0.0137).map { $0 } + [0, -1e-300, -5e-324, -0.5, -1, -700]
        var out = [Double](repeating: 0, count: xs.count)
        expInPlace(xs, out: &out, count: xs.count)
        var worst = 0.0
        for (x, y) in zip(xs, out) { worst = max(worst, abs(y - Foundation.exp(x)) / Foundation.exp(x)) }
        #expect(worst <= 4.5e-16, "worst relative error \(worst)")
    }

    /// Should be accurate relative to libm's exp over the range softmax uses.
    @Test func expIsAccurate() {
        var worst = 0.0
        for x in stride(from: -87.0, through: 88.0, by: 0.01) {
            let got = Double(expApprox(Float(x)))
            let want = Foundation.exp(Double(Float(x)))
            worst = max(worst, abs(got - want) / want)
        }
        #expect(worst < 5e-7)
    }

    /// Should compute relu and tanh as libm does.
    @Test func otherActivations() {
        let xs: [Float] = (-50...50).map { Float($0) * 0.173 }
        let r = Tensor(shape: [xs.count], values: xs)
        Activation.relu.apply(r.data, count: xs.count)
        #expect(r.array == xs.map { max($0, 0) })
        let th = Tensor(shape: [xs.count], values: xs)
        Activation.tanh.apply(th.data, count: xs.count)
        #expect(maxAbsDiff(th.array, xs.map { Foundation.tanh($0) }) < 1e-6)
        let id = Tensor(shape: [xs.count], values: xs)
        Activation.identity.apply(id.data, count: xs.count)
        #expect(id.array == xs)
    }
}

@Suite struct RowKernelTests {
    /// Should normalise each row as PyTorch's LayerNorm does (biased variance, eps inside the root),
    /// also in place; rows of whole vectors (16, the Fashion-MNIST ViT's 128, Whisper's 384, an odd count of
    /// them) and not.
    @Test(arguments: [false, true], [37, 16, 128, 384, 80])
    func layerNormMatchesNaive(inPlace: Bool, d: Int) {
        var rng = SplitMix64(seed: 2)
        let rows = 5
        let x = randomTensor([rows, d], scale: 3, rng: &rng)
        let gamma = randomTensor([d], rng: &rng), beta = randomTensor([d], rng: &rng)
        let original = x.array
        let out = inPlace ? x : Tensor(shape: [rows, d])
        layerNorm(x.data, rows: rows, columns: d, gamma: gamma.data, beta: beta.data, eps: 1e-6, out: out.data)
        for r in 0..<rows {
            let row = (0..<d).map { Double(original[r * d + $0]) }
            let mean = row.reduce(0, +) / Double(d)
            let variance = row.map { ($0 - mean) * ($0 - mean) }.reduce(0, +) / Double(d)
            for c in 0..<d {
                let want = (row[c] - mean) / (variance + 1e-6).squareRoot() * Double(gamma[c]) + Double(beta[c])
                #expect(abs(Double(out.data[r * d + c]) - want) < 1e-5)
            }
        }
    }

    /// Should turn each row into probabilities equal to the naive softmax, also with huge logits: rows of one to
    /// four vectors with a partial last one (the kernels that keep a row in registers: 50 is the Fashion-MNIST
    /// ViT's keys), exactly four (64), and longer rows (the kernel through a buffer); one row and several.
    @Test(arguments: [(4, 21), (1, 5), (3, 16), (7, 50), (4, 64), (5, 65), (2, 200)])
    func softmaxMatchesNaive(rows: Int, n: Int) {
        var rng = SplitMix64(seed: 3)
        let ld = n + 4
        let x = randomTensor([rows, ld], scale: 8, rng: &rng)
        x.data[3] = 1000  // overflow guard: the max is subtracted first
        let before = matrix(x.data, rows: rows, columns: n, ld: ld)
        softmaxRows(x.data, rows: rows, n: n, ld: ld)
        for r in 0..<rows {
            let m = before[r].max()!
            let e = before[r].map { Foundation.exp(Double($0 - m)) }
            let s = e.reduce(0, +)
            for c in 0..<n { #expect(abs(Double(x.data[r * ld + c]) - e[c] / s) < 1e-6) }
        }
    }

    /// Should gather rows by index, scatter them back (copied or added) to the tokens above k_min with each
    /// token's row of a bias table by its k (every token's), and add a table's rows alone, as naive loops do.
    @Test func indexedRowsMatchNaive() {
        var rng = SplitMix64(seed: 13)
        let tokens = 23, d = 19
        let x = randomTensor([tokens, d], rng: &rng)
        let order = (0..<tokens).map(Int32.init).shuffled(using: &rng)
        let position = (0..<tokens).map { t in Int32(order.firstIndex(of: Int32(t))!) }
        let rows = { (t: Tensor, r: Int) in Array(UnsafeBufferPointer(start: t.data + r * d, count: d)) }

        let gathered = Tensor(shape: [tokens, d])
        gatherRows(gathered.data, from: x.data, order: order, count: tokens, columns: d)
        for p in 0..<tokens { #expect(rows(gathered, p) == rows(x, Int(order[p]))) }

        let table = randomTensor([5, d], rng: &rng)
        for kMin in [0, 1] {
            let ks = (0..<tokens).map { _ in Int32.random(in: Int32(kMin)...4, using: &rng) }
            for accumulate in [false, true] {
                for withTable in [false, true] {
                    let out = randomTensor([tokens, d], rng: &rng)
                    let before = out.array
                    scatterRows(
                        out.data, from: gathered.data, position: position, ks: ks, above: kMin, rows: tokens, columns: d,
                        accumulate: accumulate, table: withTable ? table.data : nil)
                    for t in 0..<tokens {
                        let old = accumulate ? Array(before[t * d..<(t + 1) * d]) : [Float](repeating: 0, count: d)
                        let sum = ks[t] > kMin ? zip(old, rows(x, t)).map { $0 + $1 } : old
                        let want = withTable ? zip(sum, rows(table, Int(ks[t]))).map { $0 + $1 } : sum
                        #expect(rows(out, t) == want, "token \(t), k_min \(kMin), accumulate \(accumulate), table \(withTable)")
                    }
                }
            }
        }

        let ks = (0..<tokens).map { _ in Int32.random(in: 0...4, using: &rng) }
        let out = randomTensor([tokens, d], rng: &rng)
        let before = out.array
        addIndexedRows(out.data, table: table.data, ks: ks, rows: tokens, columns: d)
        for t in 0..<tokens {
            #expect(rows(out, t) == zip(before[t * d..<(t + 1) * d], rows(table, Int(ks[t]))).map { $0 + $1 })
        }
    }

    /// Should pick each row's first largest value, as a naive loop does, with ties, a row stride and
    /// an offset, count the winners into the histogram it is given, and return the sum of the picks.
    @Test func argmaxMatchesNaive() {
        var rng = SplitMix64(seed: 11)
        for columns in [1, 2, 5, 17] {
            let rows = 203, ld = columns + 3, offset = 1
            // values from a small set, so that ties are common
            let x = (0..<rows * ld).map { _ in Float(Int.random(in: -2...2, using: &rng)) }
            var best = [Int32](repeating: -1, count: rows)
            var histogram = [Int](repeating: 7, count: columns)
            let total = argmaxRows(x, rows: rows, columns: columns, ld: ld, offset: offset, best: &best, histogram: &histogram)
            var want = [Int32](), wantHistogram = [Int](repeating: 7, count: columns)
            for r in 0..<rows {
                let row = x[r * ld..<r * ld + columns]
                let i = row.firstIndex(of: row.max()!)! - r * ld
                want.append(Int32(offset + i))
                wantHistogram[i] += 1
            }
            #expect(best == want)
            #expect(histogram == wantHistogram)
            #expect(total == want.reduce(0) { $0 + Int($1) })
        }
    }

    /// Should list the rows whose k reaches the level, in order, with the softmax probability mass of
    /// their choices from `top` up, as a naive double-precision softmax gives.
    @Test func reachingSurvivalMatchesNaive() {
        var rng = SplitMix64(seed: 12)
        let rows = 61, choices = 5, ld = 9, level = 3, top = 2
        let x = randomTensor([rows, ld], scale: 6, rng: &rng)
        let ks = (0..<rows).map { _ in Int32.random(in: 1...5, using: &rng) }
        var scratch = [Double](repeating: .nan, count: 2 * rows * choices)
        var survival = [Double](repeating: .nan, count: rows), token = [Int32](repeating: -1, count: rows)
        let n = reachingSurvival(
            x.data, rows: rows, columns: choices, ld: ld, ks: ks, level: level, top: top, scratch: &scratch,
            survival: &survival, token: &token)
        let reaching = (0..<rows).filter { ks[$0] >= level }
        #expect(n == reaching.count)
        #expect(token.prefix(n).map(Int.init) == reaching)
        for (r, t) in reaching.enumerated() {
            let row = (0..<choices).map { Double(x.data[t * ld + $0]) }
            let e = row.map { Foundation.exp($0 - row.max()!) }
            let want = e[top...].reduce(0, +) / e.reduce(0, +)
            #expect(abs(survival[r] - want) < 1e-14, "row \(t)")
        }
    }

    /// Should give, on whatever path the CPU takes (AVX-512 here, where the CPU has it), the same bits as the
    /// portable loops: the survival sums and the argmax picks, histograms and totals, across the shapes that
    /// exercise the vector paths' tails (1 to 70 rows, 1 to 17 choices), NaNs and ties included.
    @Test func dispatchedChoiceKernelsMatchPortable() {
        var rng = SplitMix64(seed: 13)
        for (rows, choices) in [(1, 1), (7, 4), (8, 5), (9, 5), (16, 2), (17, 17), (50, 5), (61, 4), (70, 9)] {
            let ld = choices + 3
            // quarters, so that ties are common
            var x = (0..<rows * ld).map { _ in Float(Int.random(in: -40...40, using: &rng)) / 4 }
            if rows > 5 { x[3 * ld + min(1, choices - 1)] = .nan }
            for level in 0...min(choices, 3) {
                let ks = (0..<rows).map { _ in Int32.random(in: 0...Int32(choices), using: &rng) }
                let top = Int.random(in: 0..<choices, using: &rng)
                var scratch = [Double](repeating: 0, count: 2 * rows * choices)
                var s1 = [Double](repeating: 0, count: rows), s2 = s1
                var t1 = [Int32](repeating: -1, count: rows), t2 = t1
                let n1 = acm_reaching_survival(x, rows, choices, ld, ks, Int32(level), top, &scratch, &s1, &t1)
                let n2 = acm_reaching_survival_portable(x, rows, choices, ld, ks, Int32(level), top, &scratch, &s2, &t2)
                #expect(n1 == n2 && t1 == t2)
                #expect(s1.prefix(n1).map(\.bitPattern) == s2.prefix(n2).map(\.bitPattern), "\(rows) x \(choices), level \(level)")
            }
            var b1 = [Int32](repeating: -1, count: rows), b2 = b1
            var h1 = [Int](repeating: 2, count: choices), h2 = h1
            let total1 = acm_argmax_rows(x, rows, choices, ld, 1, &b1, &h1)
            let total2 = acm_argmax_rows_portable(x, rows, choices, ld, 1, &b2, &h2)
            #expect(b1 == b2 && h1 == h2 && total1 == total2, "\(rows) x \(choices)")
        }
    }

    /// Should make the patch embedding one GEMM equal to a naive strided convolution.
    @Test func patchEmbeddingMatchesConvolution() {
        var rng = SplitMix64(seed: 6)
        let count = 2, c = 3, size = 8, p = 4, d = 5, g = size / p, length = c * p * p
        let images = randomTensor([count, c, size, size], rng: &rng)
        let weight = randomTensor([d, c, p, p], rng: &rng)
        let patches = Tensor(shape: [count * g * g, length])
        extractPatches(images.data, count: count, channels: c, size: size, patch: p, out: patches.data)
        let out = Tensor(shape: [count * g * g, d])
        gemm(m: count * g * g, n: d, k: length, a: patches.data, lda: length, b: weight.data, ldb: length, transB: true, c: out.data, ldc: d)
        for b in 0..<count {
            for gy in 0..<g {
                for gx in 0..<g {
                    for o in 0..<d {
                        var want = 0.0
                        for ch in 0..<c {
                            for ky in 0..<p {
                                for kx in 0..<p {
                                    let pixel = images.data[((b * c + ch) * size + gy * p + ky) * size + gx * p + kx]
                                    want += Double(pixel) * Double(weight.data[((o * c + ch) * p + ky) * p + kx])
                                }
                            }
                        }
                        #expect(abs(Double(out.data[((b * g + gy) * g + gx) * d + o]) - want) < 1e-5)
                    }
                }
            }
        }
    }

    /// Should equal naive per-sequence, per-head attention, with no attention across sequences: a
    /// sequence of few queries (keys not transposed) and of many (transposed).
    @Test func selfAttentionMatchesNaive() {
        var rng = SplitMix64(seed: 4)
        let heads = 3, dh = 4, d = heads * dh
        let sequences = [0..<5, 5..<6, 6..<19]
        let tokens = 19
        let q = randomTensor([tokens, d], rng: &rng), k = randomTensor([tokens, d], rng: &rng)
        let v = randomTensor([tokens, d], rng: &rng)
        let out = Tensor(shape: [tokens, d])
        multiHeadAttention(
            q: q.data, k: k.data, v: v.data, ld: d, out: out.data, ldOut: d,
            sequences: sequences, heads: heads, headDim: dh, scores: WorkerScratch())
        for seq in sequences {
            let want = naiveAttention(q: q, k: k, v: v, queries: seq, keys: seq, causal: false, heads: heads)
            for i in seq {
                for c in 0..<d { #expect(abs(Double(out.data[i * d + c]) - want[i - seq.lowerBound][c]) < 1e-5) }
            }
        }
    }

    /// Should equal naive attention over each sequence's own rows of a separate key and value buffer (a
    /// decoder's cross-attention, or its KV cache with `causal`), for few queries and for many.
    @Test(arguments: [false, true])
    func attentionOverKeysMatchesNaive(causal: Bool) {
        var rng = SplitMix64(seed: 6)
        let heads = 2, dh = 5, d = heads * dh, pad = 3
        let sequences = [0..<1, 1..<3, 3..<15], keys = [0..<7, 10..<12, 20..<38]
        let q = randomTensor([15, d + pad], rng: &rng)
        let k = randomTensor([40, d + pad], rng: &rng), v = randomTensor([40, d + pad], rng: &rng)
        let out = Tensor(shape: [15, d + pad])
        multiHeadAttention(
            q: q.data, k: k.data, v: v.data, ld: d + pad, out: out.data, ldOut: d + pad,
            sequences: sequences, keys: keys, causal: causal, heads: heads, headDim: dh, scores: WorkerScratch())
        for (seq, keyRows) in zip(sequences, keys) {
            let want = naiveAttention(q: q, k: k, v: v, queries: seq, keys: keyRows, causal: causal, heads: heads, headDim: dh)
            for i in seq {
                for c in 0..<d {
                    #expect(abs(Double(out.data[i * (d + pad) + c]) - want[i - seq.lowerBound][c]) < 1e-5, "row \(i)")
                }
            }
        }
    }

    /// Should equal naive attention when a long sequence runs in blocks of queries (1,000 keys: blocks of 96
    /// queries, the last one short), with and without `causal`.
    @Test(arguments: [false, true])
    func longSequencesInBlocksMatchNaive(causal: Bool) {
        var rng = SplitMix64(seed: 9)
        let heads = 2, dh = 4, d = heads * dh, keyCount = 1000, count = 250
        #expect(scoreBlockFloats / keyCount < count)
        let q = randomTensor([count, d], rng: &rng)
        let k = randomTensor([keyCount, d], rng: &rng), v = randomTensor([keyCount, d], rng: &rng)
        let out = Tensor(shape: [count, d])
        multiHeadAttention(
            q: q.data, k: k.data, v: v.data, ld: d, out: out.data, ldOut: d, sequences: [0..<count],
            keys: [0..<keyCount], causal: causal, heads: heads, headDim: dh, scores: WorkerScratch())
        let want = naiveAttention(q: q, k: k, v: v, queries: 0..<count, keys: 0..<keyCount, causal: causal, heads: heads)
        for i in 0..<count {
            for c in 0..<d { #expect(abs(Double(out.data[i * d + c]) - want[i][c]) < 1e-5, "row \(i)") }
        }
    }
}

/// softmax(q·kᵀ/√dh)·v per head in Double, for the query rows `queries` over the key rows `keys`; with
/// `causal`, query j sees the first keys.count − queries.count + j + 1 keys. Rows of [heads·dh] (default
/// dh: the tensors' columns / heads), one per query.
func naiveAttention(
    q: Tensor, k: Tensor, v: Tensor, queries: Range<Int>, keys: Range<Int>, causal: Bool, heads: Int,
    headDim: Int? = nil
) -> [[Double]] {
    let ld = q.columns, dh = headDim ?? ld / heads
    return (0..<queries.count).map { j in
        let i = queries.lowerBound + j
        let visible = causal ? keys.count - queries.count + j + 1 : keys.count
        var row = [Double](repeating: 0, count: heads * dh)
        for h in 0..<heads {
            let logits = keys.prefix(visible).map { key in
                (0..<dh).reduce(0.0) { $0 + Double(q.data[i * ld + h * dh + $1]) * Double(k.data[key * ld + h * dh + $1]) }
                    / Double(dh).squareRoot()
            }
            let m = logits.max()!
            let e = logits.map { Foundation.exp($0 - m) }
            let sum = e.reduce(0, +)
            for c in 0..<dh {
                row[h * dh + c] = zip(keys.prefix(visible), e).reduce(0.0) { $0 + $1.1 / sum * Double(v.data[$1.0 * ld + h * dh + c]) }
            }
        }
        return row
    }
}

@Suite struct ParallelTests {
    /// Should run every chunk exactly once per call, call after call, whatever the count.
    @Test func runsEveryChunkOnce() {
        let hits = Tensor(shape: [8])
        for round in 0..<2000 {
            let count = 1 + round % max(1, Parallel.workers)
            Parallel.run(count) { i in hits.data[i] += 1 }
        }
        var want = [Float](repeating: 0, count: 8)
        for round in 0..<2000 { for i in 0..<(1 + round % max(1, Parallel.workers)) { want[i] += 1 } }
        #expect(hits.array == want)
    }

    /// Should finish a call made from inside a chunk, and calls made from several threads at once (the
    /// pool serves one; the others go to Dispatch).
    @Test func nestedAndConcurrentCalls() {
        let sums = Tensor(shape: [4 * 64])
        Parallel.run(2) { outer in
            Parallel.forEachChunk(64, minimumPerChunk: 1) { _, r in
                for i in r { sums.data[outer * 64 + i] += 1 }
            }
        }
        DispatchQueue.concurrentPerform(iterations: 4) { caller in
            for _ in 0..<200 {
                Parallel.forEachChunk(64, minimumPerChunk: 1) { _, r in
                    for i in r { sums.data[caller * 64 + i] += 1 }
                }
            }
        }
        for caller in 0..<4 {
            let want: Float = caller < 2 ? 201 : 200
            #expect((0..<64).allSatisfy { sums.data[caller * 64 + $0] == want }, "caller \(caller)")
        }
    }

    /// Should add the residual over every element, split or not.
    @Test func addInPlaceAddsEverything() {
        var rng = SplitMix64(seed: 5)
        for count in [1, 1000, 100_003] {
            let x = randomTensor([count], rng: &rng), y = randomTensor([count], rng: &rng)
            let want = zip(x.array, y.array).map { $0 + $1 }
            addInPlace(x.data, y.data, count: count)
            #expect(x.array == want)
        }
    }
}

@Suite struct DenormalTests {
    /// Kept out of the optimiser's sight, so that the products are computed at run time, under the thread's MXCSR.
    nonisolated(unsafe) static var operands: [Float] = [1e-20, 1e-20, Float.leastNonzeroMagnitude, 1]

    @inline(never) static func products() -> (denormalResult: Float, denormalInput: Float) {
        (operands[0] * operands[1], operands[2] * operands[3])
    }

    /// Runs `body` on a new thread and returns its result.
    static func onThread<T: Sendable>(_ body: @escaping @Sendable () -> T) -> T {
        let done = DispatchSemaphore(value: 0)
        nonisolated(unsafe) var result: T?
        let thread = Thread {
            result = body()
            done.signal()
        }
        thread.start()
        done.wait()
        return result!
    }

    /// Should keep denormals on a thread that has not asked, and, once it has, flush a denormal result to zero and
    /// read a denormal input as zero, on that thread and on the threads it starts afterwards.
    @Test func flushesOnTheThreadAndThoseItStarts() {
        let (before, after, child) = Self.onThread {
            let before = Self.products()
            flushDenormalsToZero()
            return (before, Self.products(), Self.onThread { Self.products() })
        }
        #expect(before.denormalResult > 0 && before.denormalInput > 0)
        #expect(after.denormalResult == 0 && after.denormalInput == 0)
        #expect(child.denormalResult == 0 && child.denormalInput == 0)
    }
}
