import Foundation
import Testing

@testable import ACMCore

/// The bf16 path: rounding to bfloat16, and the bf16 GEMM against a float GEMM of the bf16-rounded inputs.
@Suite struct BF16Tests {
    /// Should round to the nearest bfloat16 with ties to even, as torch's .to(torch.bfloat16) does, and keep
    /// NaN and the infinities.
    @Test func roundsToNearestEven() {
        func bits(_ f: Float) -> UInt32 { f.bitPattern }
        // 1 + 2⁻⁸ lies halfway between 1 and 1 + 2⁻⁷: ties to the even one, 1
        #expect(BF16.rounded(1 + 0x1p-8) == 1)
        // 1 + 3·2⁻⁸ lies halfway between 1 + 2⁻⁷ and 1 + 2⁻⁶: ties to 1 + 2⁻⁶
        #expect(BF16.rounded(1 + 3 * 0x1p-8) == 1 + 0x1p-6)
        #expect(BF16.rounded(1 + 0x1p-8 + 0x1p-20) == 1 + 0x1p-7)  // just above halfway: up
        #expect(BF16.rounded(-2.5) == -2.5)
        #expect(BF16.rounded(.infinity) == .infinity && BF16.rounded(-.infinity) == -.infinity)
        #expect(BF16.rounded(.nan).isNaN)
        #expect(BF16.rounded(Float.greatestFiniteMagnitude) == .infinity)  // rounds past the largest bfloat16
        var rng = SeededGenerator(seed: 5)
        for _ in 0..<10_000 {
            let x = Float.random(in: -1000...1000, using: &rng)
            let r = BF16.rounded(x)
            #expect(bits(r) & 0xffff == 0)
            // the nearest: within half a bfloat16 ulp (2⁻⁸ relative to the exponent's power of two)
            #expect(abs(r - x) <= abs(x).binade * 0x1p-8, "\(x) → \(r)")
        }
    }

    /// A product in the bf16 path and its reference: A's and B's values rounded to bfloat16, multiplied in Double.
    func check(m: Int, n: Int, k: Int, rows: Range<Int>? = nil, columns: Range<Int>? = nil, beta: Float = 0) {
        var rng = SeededGenerator(seed: UInt64(m * 1_000_003 + n * 1009 + k))
        let full = rows.map { $0.upperBound } ?? k, width = columns.map { $0.upperBound } ?? n
        let b = randomTensor([full, width], rng: &rng)
        let weight = GEMMWeight(b, precision: .bf16)
        #expect(weight.precision == .bf16)
        let r = rows ?? 0..<full, cs = columns ?? 0..<width
        let lda = r.count + 3  // A with a row stride wider than its columns
        let a = randomTensor([m, lda], rng: &rng)
        let ldc = cs.count + 5
        let c = randomTensor([m, ldc], rng: &rng)
        let before = Array(UnsafeBufferPointer(start: c.data, count: c.count))
        weight.multiply(m: m, a: a.data, lda: lda, rows: rows, columns: columns, beta: beta, c: c.data, ldc: ldc)
        var worst = 0.0
        for i in 0..<m {
            for j in 0..<cs.count {
                var sum = Double(beta) * Double(before[i * ldc + j]), magnitude = abs(sum)
                for p in 0..<r.count {
                    let term = Double(BF16.rounded(a.data[i * lda + p])) * Double(BF16.rounded(b.data[(r.lowerBound + p) * width + cs.lowerBound + j]))
                    sum += term
                    magnitude += abs(term)
                }
                // float accumulation: a few float ulps of Σ|terms|
                worst = max(worst, abs(Double(c.data[i * ldc + j]) - sum) / (magnitude * 0x1p-23 * Double(r.count).squareRoot() + 1e-30))
            }
            // the padding columns of C are untouched
            for j in cs.count..<ldc { #expect(c.data[i * ldc + j] == before[i * ldc + j]) }
        }
        #expect(worst <= 8, "\(m)×\(cs.count)×\(r.count): error \(worst) float ulps of Σ|terms|·√k")
    }

    /// Should equal a float GEMM of the bf16-rounded inputs to float rounding, on the shapes the models run
    /// (learner blocks of rows, gates a few columns wide), odd sizes (an odd k, a last block of fewer than 64
    /// rows), B large enough to run in column panels, blocks of B's rows and columns, and C accumulated.
    @Test(.enabled(if: BF16.available, "no AVX-512 BF16 on this CPU"))
    func gemmMatchesRoundedFloat() {
        check(m: 1, n: 16, k: 128)
        check(m: 50, n: 128, k: 128)
        check(m: 200, n: 5, k: 48)
        check(m: 131, n: 37, k: 77)  // odd k: the last pair padded
        check(m: 70, n: 300, k: 451)  // column panels of 64 and a narrower last one
        check(m: 65, n: 384, k: 1536)  // deep k, panels
        check(m: 90, n: 48, k: 192, rows: 96..<144)  // learner 2's rows of w2 (h = 48)
        check(m: 90, n: 48, k: 64, columns: 48..<96)  // learner 1's columns of w1
        check(m: 90, n: 64, k: 48, rows: 48..<96, beta: 1)  // accumulated into C
        check(m: 33, n: 20, k: 30, rows: 10..<40, columns: 3..<23, beta: 1)
        check(m: 40, n: 150, k: 64, columns: 30..<140)  // from inside one panel, across one, into the last
        check(m: 70, n: 200, k: 100, rows: 20..<80, columns: 64..<128, beta: 1)  // exactly one panel, accumulated
    }

    /// Should give act(A·B[:, columns] + bias) rounded to bfloat16, as the hidden layer of an MLP or a learner, with
    /// the float tiles made in the thread's own buffer: against Double arithmetic on the bf16-rounded inputs, then
    /// GELU and the rounding, within one bfloat16 step of the value (a float and a Double sum can round to
    /// neighbouring bfloat16s) or 2e-6. Blocks of 96 rows and a tail, column panels entered and left midway, an odd k,
    /// and A already rounded; `bias` is the block of columns' own; the columns of `hidden` outside the block stay
    /// untouched.
    @Test(.enabled(if: BF16.available, "no AVX-512 BF16 on this CPU"), arguments: [
        (200, 250, 77, 30..<190, Activation.gelu, false), (70, 64, 128, 0..<64, .identity, false),
        (131, 300, 64, 64..<300, .gelu, true), (96, 40, 48, 8..<24, .gelu, true),
    ])
    func activatedMatchesRoundedFloat(m: Int, n: Int, k: Int, columns: Range<Int>, activation: Activation, rounded: Bool) {
        var rng = SeededGenerator(seed: UInt64(m * 7 + n + k))
        let b = randomTensor([k, n], rng: &rng), bias = randomTensor([n], rng: &rng)
        let weight = GEMMWeight(b, precision: .bf16)
        let lda = k + 6
        let a = randomTensor([m, lda], rng: &rng)
        let a16 = (0..<m * lda).map { UInt16(BF16.rounded(a.data[$0]).bitPattern >> 16) }
        let ldHidden = columns.count + 4
        var hidden = [UInt16](repeating: 0xabcd, count: m * ldHidden)
        hidden.withUnsafeMutableBufferPointer { out in
            if rounded {
                a16.withUnsafeBufferPointer {
                    weight.multiplyActivated(
                        m: m, rounded: $0.baseAddress, lda: lda, columns: columns, bias: bias.data + columns.lowerBound,
                        activation: activation,
                        hidden: out.baseAddress!, ldHidden: ldHidden)
                }
            } else {
                weight.multiplyActivated(
                    m: m, a: a.data, lda: lda, columns: columns, bias: bias.data + columns.lowerBound, activation: activation,
                    hidden: out.baseAddress!, ldHidden: ldHidden)
            }
        }
        var worst = 0.0
        for i in 0..<m {
            for (j, col) in columns.enumerated() {
                var z = Double(bias.data[col])
                for p in 0..<k { z += Double(BF16.rounded(a.data[i * lda + p])) * Double(BF16.rounded(b.data[p * n + col])) }
                let want = activation == .gelu ? exactGELU(z) : z
                let got = Double(Float(bitPattern: UInt32(hidden[i * ldHidden + j]) << 16))
                // a bfloat16 step is at most 2⁻⁷ of the value; 2e-6 absolute for the GELU's own error far in the negative
                // tail (1.0e-6 at x = -5.4, where GELU is -1.4e-7; the float GELU's test allows 1e-6)
                worst = max(worst, abs(got - want) / (abs(want) * 0x1p-7 + 2e-6))
            }
            for j in columns.count..<ldHidden { #expect(hidden[i * ldHidden + j] == 0xabcd) }
        }
        #expect(worst <= 1, "\(m)×\(columns.count)×\(k): error \(worst) bfloat16 steps")
    }

    /// Should give attention's output from bf16 products: q, k, v and the probabilities rounded to bfloat16,
    /// the softmax in float; against Double arithmetic on the rounded values, within 1e-4 (measured 1.5e-7; a
    /// probability whose float and Double values rounded to neighbouring bfloat16s would move an output by up to
    /// 2⁻⁸·|v|, which this draw does not hit). bf16 against exact attention differs by 2.6e-3 here. Sequences of
    /// 70, 11 and 14 queries, 2 heads of 32: all take the GEMM path.
    @Test(.enabled(if: BF16.available, "no AVX-512 BF16 on this CPU"))
    func attentionInBF16() {
        var rng = SeededGenerator(seed: 9)
        let heads = 2, dh = 32, d = heads * dh, tokens = 95
        let sequences = [0..<70, 70..<81, 81..<95]  // 11 keys: an odd row of probabilities, its last pair padded
        let q = randomTensor([tokens, d], scale: 2, rng: &rng), k = randomTensor([tokens, d], scale: 2, rng: &rng)
        let v = randomTensor([tokens, d], rng: &rng), out = Tensor(shape: [tokens, d])
        multiHeadAttention(
            q: q.data, k: k.data, v: v.data, ld: d, out: out.data, ldOut: d, sequences: sequences, heads: heads,
            headDim: dh, scores: WorkerScratch(), precision: .bf16)
        let r = { (x: Float) in Double(BF16.rounded(x)) }
        var worst = 0.0, fromFloat = 0.0
        for seq in sequences {
            for h in 0..<heads {
                for i in seq {
                    let scores = seq.map { j in
                        (0..<dh).reduce(0.0) { $0 + r(q.data[i * d + h * dh + $1]) * r(k.data[j * d + h * dh + $1]) } / Double(dh).squareRoot()
                    }
                    let top = scores.max()!, e = scores.map { Foundation.exp($0 - top) }, total = e.reduce(0, +)
                    let p = e.map { r(Float($0 / total)) }
                    for c in 0..<dh {
                        let want = zip(seq, p).reduce(0.0) { $0 + $1.1 * r(v.data[$1.0 * d + h * dh + c]) }
                        let exact = zip(seq, e).reduce(0.0) { $0 + $1.1 / total * Double(v.data[$1.0 * d + h * dh + c]) }
                        worst = max(worst, abs(Double(out.data[i * d + h * dh + c]) - want))
                        fromFloat = max(fromFloat, abs(Double(out.data[i * d + h * dh + c]) - exact))
                    }
                }
            }
        }
        #expect(worst <= 1e-4, "max error \(worst) against the rounded reference")
        #expect(fromFloat > 1e-4, "the output equals float attention's (\(fromFloat)): not bf16")
    }

    /// Should give, from a projection's output already rounded to bfloat16 (`Linear.forwardRounded`, then
    /// `multiHeadAttention(rounded:...)`), exactly what the float output and the float attention in bf16 give: the
    /// same roundings of the same sums. q, k and v side by side in one row of 3d (the ViT's stacked projection),
    /// sequences of 70, 11 and 14 rows (11: an odd row of probabilities), rows shared out by rows and, for a
    /// weight too large for few rows (on more than one core), by columns.
    @Test(.enabled(if: BF16.available, "no AVX-512 BF16 on this CPU"), arguments: [(2, 32, 40), (4, 64, 384)])
    func attentionOnRoundedProjections(heads: Int, headDim: Int, inputs: Int) {
        var rng = SeededGenerator(seed: UInt64(heads * 100 + inputs))
        let d = heads * headDim, tokens = 95
        let sequences = [0..<70, 70..<81, 81..<95]
        let qkv = Linear(
            weight: randomTensor([3 * d, inputs], scale: 0.3, rng: &rng), bias: randomTensor([3 * d], rng: &rng),
            precision: .bf16)
        let x = randomTensor([tokens, inputs], rng: &rng)
        let float = Tensor(shape: [tokens, 3 * d]), want = Tensor(shape: [tokens, d]), got = Tensor(shape: [tokens, d])
        qkv.forward(x.data, rows: tokens, out: float.data)
        multiHeadAttention(
            q: float.data, k: float.data + d, v: float.data + 2 * d, ld: 3 * d, out: want.data, ldOut: d,
            sequences: sequences, heads: heads, headDim: headDim, scores: WorkerScratch(), precision: .bf16)
        var rounded = [UInt16](repeating: 0, count: tokens * 3 * d)
        rounded.withUnsafeMutableBufferPointer { r in
            qkv.forwardRounded(x.data, rows: tokens, out: r.baseAddress!)
            multiHeadAttention(
                rounded: r.baseAddress!, k: r.baseAddress! + d, v: r.baseAddress! + 2 * d, ld: 3 * d, out: got.data,
                ldOut: d, sequences: sequences, heads: heads, headDim: headDim, scores: WorkerScratch())
        }
        let projected = (0..<tokens * 3 * d).count { rounded[$0] != UInt16(BF16.rounded(float.data[$0]).bitPattern >> 16) }
        #expect(projected == 0, "rounded outputs that differ from the float output's rounding")
        let differ = (0..<tokens * d).count { got.data[$0] != want.data[$0] }
        #expect(differ == 0, "attention outputs that differ")
    }

    /// Should give, from a LayerNorm written rounded (`LayerNorm.forward(rounded:)`), the float LayerNorm's values
    /// rounded, and a dense MLP on those rows (`DenseMLP.forward(rounded:)`) exactly what it gives on the float rows,
    /// which it rounds the same way: the ViT's ln_2 and MLP in bf16. Rows shared out among the workers (300) and
    /// accumulated into the output, as the residual is.
    @Test(.enabled(if: BF16.available, "no AVX-512 BF16 on this CPU"))
    func layerNormAndMLPOnRoundedRows() throws {
        let dir = try TemporaryDirectory()
        var rng = SeededGenerator(seed: 21)
        let d = 96, hidden = 160, rows = 300
        let tensors: [String: Tensor] = [
            "ln.weight": randomTensor([d], rng: &rng), "ln.bias": randomTensor([d], rng: &rng),
            "fc1.weight": randomTensor([hidden, d], scale: 0.2, rng: &rng), "fc1.bias": randomTensor([hidden], rng: &rng),
            "fc2.weight": randomTensor([d, hidden], scale: 0.2, rng: &rng), "fc2.bias": randomTensor([d], rng: &rng),
        ]
        let path = dir.path + "/w.safetensors"
        try SafeTensorsFile.write(tensors, to: path)
        let weights = Weights(file: try SafeTensorsFile(path: path), prefix: "", precision: .bf16)
        let ln = try LayerNorm(dim: d, eps: 1e-6, weights: weights.scoped("ln"))
        let mlp = try DenseMLP(dim: d, hidden: hidden, weights: weights, fc1: "fc1", fc2: "fc2")
        #expect(mlp.takesRounded(rows: rows))
        let x = randomTensor([rows, d], scale: 3, rng: &rng)
        let normed = Tensor(shape: [rows, d])
        ln.forward(x.data, rows: rows, out: normed.data)
        var rounded = [UInt16](repeating: 0, count: rows * d)
        rounded.withUnsafeMutableBufferPointer { ln.forward(x.data, rows: rows, rounded: $0.baseAddress!) }
        let wrong = (0..<rows * d).count { rounded[$0] != UInt16(BF16.rounded(normed.data[$0]).bitPattern >> 16) }
        #expect(wrong == 0, "rounded LayerNorm values that are not the float values' rounding")
        let want = randomTensor([rows, d], rng: &rng), got = Tensor(shape: [rows, d])
        got.data.update(from: want.data, count: rows * d)
        mlp.forward(normed.data, rows: rows, out: want.data, accumulate: true, scratch: WorkerScratch())
        rounded.withUnsafeBufferPointer {
            mlp.forward(rounded: $0.baseAddress!, rows: rows, out: got.data, accumulate: true, scratch: WorkerScratch())
        }
        let differ = (0..<rows * d).count { got.data[$0] != want.data[$0] }
        #expect(differ == 0, "MLP outputs that differ")
    }

    /// In bf16, should run each token's k learners as the definition does on bf16-rounded x, weights and
    /// hidden activations with float sums: within 2e-4 of the largest output (measured: 2.6e-6 with GELU, where a
    /// hidden value's float and Double forms may round to neighbouring bfloat16s, 7.5e-8 without; bf16 against
    /// exact learners differs by 2.5e-3, which the test also checks). Tokens in an order the
    /// grouping has to sort and gather, k from 0 (k_min 0) or 1 (k_min 1) to N, GELU and identity learners.
    @Test(.enabled(if: BF16.available, "no AVX-512 BF16 on this CPU"), arguments: [0, 1])
    func learnersInBF16(minChoice: Int) throws {
        let dir = try TemporaryDirectory()
        let config = ACMConfig(
            numLearners: 4, learnerDim: 24, activation: minChoice == 0 ? .gelu : .identity, minChoice: minChoice,
            hiddenBias: true, outputBias: true)
        let dIn = 40, dOut = 36, tokens = 150
        let (acm, w) = try makeACM(config, inputDim: dIn, outputDim: dOut, seed: 77, dir: dir, precision: .bf16)
        var rng = SeededGenerator(seed: 3)
        let x = randomTensor([tokens, dIn], rng: &rng)
        let ks = (0..<tokens).map { _ in Int32(Int.random(in: minChoice...4, using: &rng)) }
        let out = Tensor(shape: [tokens, dOut])
        ks.withUnsafeBufferPointer { acm.runLearners(x.data, tokens: tokens, choices: $0.baseAddress!, out: out.data, workspace: ACMWorkspace()) }
        let r = { (v: Float) in Double(BF16.rounded(v)) }
        let n = 4, h = 24, w1 = w["acm.w1"]!, w2 = w["acm.w2"]!, b1 = w["acm.b1"]!, b2 = w["acm.b2"]!
        var worst = 0.0, scale = 0.0, fromFloat = 0.0
        for t in 0..<tokens {
            var want = [Double](repeating: 0, count: dOut), exact = [Double](repeating: 0, count: dOut)
            for learner in 0..<Int(ks[t]) {
                for u in 0..<h {
                    let col = learner * h + u
                    var z = Double(b1.data[col]), zExact = z
                    for i in 0..<dIn {
                        z += r(x.data[t * dIn + i]) * r(w1.data[i * n * h + col])
                        zExact += Double(x.data[t * dIn + i]) * Double(w1.data[i * n * h + col])
                    }
                    let a = r(Float(config.activation == .gelu ? exactGELU(z) : z))
                    let aExact = config.activation == .gelu ? exactGELU(zExact) : zExact
                    for c in 0..<dOut {
                        want[c] += a * r(w2.data[col * dOut + c])
                        exact[c] += aExact * Double(w2.data[col * dOut + c])
                    }
                }
            }
            for j in 0...Int(ks[t]) {
                for c in 0..<dOut {
                    want[c] += Double(b2.data[j * dOut + c])
                    exact[c] += Double(b2.data[j * dOut + c])
                }
            }
            for c in 0..<dOut {
                worst = max(worst, abs(Double(out.data[t * dOut + c]) - want[c]))
                fromFloat = max(fromFloat, abs(Double(out.data[t * dOut + c]) - exact[c]))
                scale = max(scale, abs(want[c]))
            }
        }
        #expect(worst <= 2e-4 * scale, "max error \(worst), largest output \(scale)")
        #expect(fromFloat > 1e-4 * scale, "equal to float learners (\(fromFloat)): not bf16")
    }

    /// Should find the bf16 kernels wherever the CPU has AVX-512 BF16 (unless ACM_BF16=off): a kernel that fails
    /// the start-up self-check turns the bf16 path off, and would otherwise only show as skipped tests.
    @Test func availableWhereTheCPUHasAVX512BF16() throws {
        let cpuinfo = try String(contentsOfFile: "/proc/cpuinfo", encoding: .utf8)
        let flags = cpuinfo.split(separator: "\n").first { $0.hasPrefix("flags") }?.split(separator: " ") ?? []
        let off = ProcessInfo.processInfo.environment["ACM_BF16"] == "off"
        #expect(BF16.available == (flags.contains("avx512_bf16") && !off), "\(BF16.description)")
    }

    /// Should run f32 where asked for f32, and bf16 where asked for bf16 only where the CPU has it.
    @Test func precisionFallsBackToFloat() {
        #expect(Precision.f32.effective == .f32)
        #expect(Precision.bf16.effective == (BF16.available ? .bf16 : .f32))
        let w = GEMMWeight(Tensor(shape: [4, 4]), precision: .f32)
        #expect(w.precision == .f32)
        #expect(!BF16.description.isEmpty)
    }
}
