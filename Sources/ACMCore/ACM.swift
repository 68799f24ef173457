// Adaptive Computation Module: N learners and a gate, run grouped.
// Mirrors AdaptiveComputationMLP in https://github.com/bartwojcik/adaptive_computation_modules
// (architectures/acm.py at 6760ad64), without its forward_gated's min(k, kmax−1) batch dependence.

import CACMBF16
import CACMKernels

/// The composition of linear layers with nothing between them, as one layer: x·W₀ᵀ·W₁ᵀ⋯ + the biases
/// carried through. Multiplied out in double precision, so the folded logits differ from the layer-by-layer
/// ones only by float rounding (docs/performance.md counts the gate decisions that moved).
func foldLinear(_ layers: [Linear], precision: Precision) -> Linear {
    // m = W_{last}·⋯·W₀ [out, in] and c the bias, built up from the first layer.
    let first = layers[0]
    var rows = first.outputs
    let columns = first.inputs
    var m = (0..<(rows * columns)).map { Double(first.weight.data[$0]) }
    var c = (0..<rows).map { i in first.bias.map { Double($0.data[i]) } ?? 0 }
    for layer in layers.dropFirst() {
        precondition(layer.inputs == rows)
        var next = [Double](repeating: 0, count: layer.outputs * columns)
        var nextBias = [Double](repeating: 0, count: layer.outputs)
        for o in 0..<layer.outputs {
            var b = layer.bias.map { Double($0.data[o]) } ?? 0
            for i in 0..<rows {
                let w = Double(layer.weight.data[o * rows + i])
                b += w * c[i]
                for j in 0..<columns { next[o * columns + j] += w * m[i * columns + j] }
            }
            nextBias[o] = b
        }
        m = next
        c = nextBias
        rows = layer.outputs
    }
    return Linear(
        weight: Tensor(shape: [rows, columns], values: m.map { Float($0) }),
        bias: Tensor(shape: [rows], values: c.map { Float($0) }), precision: precision)
}

/// Scratch space shared by every ACM (and every `DenseOrACM`) of a model; the layers run one at a time.
public final class ACMWorkspace: @unchecked Sendable {
    let gateA = Scratch(), gateB = Scratch()
    /// A dense MLP's hidden layer, per worker.
    let mlpHidden = WorkerScratch()
    /// Each token's k, written by `ACMLayer.forward` for `DenseOrACM.forward`.
    var choices: [Int32] = []
    /// One per worker: each runs the learners for its own block of tokens.
    var chunks: [LearnerScratch] = []

    public init() {}

    func prepare() {
        while chunks.count < Parallel.workers { chunks.append(LearnerScratch()) }
    }
}

/// A worker's buffers for grouped learner execution.
final class LearnerScratch {
    let gathered = Scratch(), hidden = Scratch(), output = Scratch()
    /// In bf16: the rows that run learners beyond k_min, gathered and rounded once for all of them.
    let rounded = Scratch()
    var order: [Int32] = []
    var position: [Int32] = []
    /// The grouping's count of tokens per k.
    var counts: [Int] = []
    /// The cap's ranking scratch (`chooseLearners`).
    let boundary = BoundaryScratch()
}

/// An ACM layer: learner n is `act(x·w1[:, n·h..<(n+1)·h] + b1[n·h..<(n+1)·h])·w2[n·h..<(n+1)·h, :]`,
/// and a token that runs k learners gets the sum of the first k, plus Σ_{j≤k} b2[j] when present.
public final class ACMLayer: @unchecked Sendable {
    public let config: ACMConfig
    public let inputDim: Int
    public let outputDim: Int
    /// `w1` [d_in, N·h]
    let w1: GEMMWeight
    /// `b1` [N·h]
    let b1: Tensor?
    /// `w2` [N·h, d_out]
    let w2: GEMMWeight
    /// Running sums of `b2` [(N+1)·d_out]: row k is Σ_{j≤k} b2[j].
    let cumulativeB2: Tensor?
    /// `gating_network.net.{j}`; a gate with no activation between its layers is one linear map, and is
    /// kept as that one layer (`foldLinear`): one GEMM of [tokens, d_in] × [d_in, choices] instead of three.
    public let gate: [Linear]
    /// The one-layer gate stacked on the k_min learners every token runs (their w1 columns and b1), as one
    /// layer of choices + k_min·h outputs, so that one GEMM over the tokens gives both (`forward`); nil
    /// when the gate is not one layer or k_min = 0.
    let gateAndFirst: Linear?

    public init(config: ACMConfig, inputDim: Int, outputDim: Int, weights: Weights) throws {
        try config.validate(path: weights.prefix)
        self.config = config
        self.inputDim = inputDim
        self.outputDim = outputDim
        let n = config.numLearners, h = config.learnerDim
        let precision = weights.precision
        w1 = GEMMWeight(try weights.tensor("w1", shape: [inputDim, n * h]), precision: precision)
        b1 = config.hiddenBias ? try weights.tensor("b1", shape: [n * h]) : nil
        w2 = GEMMWeight(try weights.tensor("w2", shape: [n * h, outputDim]), precision: precision)
        if config.outputBias {
            let b2 = try weights.tensor("b2", shape: [(n + 1) * outputDim])
            let sums = Tensor(shape: [n + 1, outputDim])
            for k in 0...n {
                for c in 0..<outputDim {
                    sums.data[k * outputDim + c] = b2.data[k * outputDim + c] + (k > 0 ? sums.data[(k - 1) * outputDim + c] : 0)
                }
            }
            cumulativeB2 = sums
        } else {
            cumulativeB2 = nil
        }
        let net = weights.scoped("gating_network.net")
        var layers: [Linear] = []
        for j in 0..<config.gate.depth {
            let inputs = j == 0 ? inputDim : config.gate.hiddenDim
            let outputs = j == config.gate.depth - 1 ? config.numChoices : config.gate.hiddenDim
            layers.append(try Linear(inputs: inputs, outputs: outputs, weights: net.scoped("\(j)")))
        }
        gate = config.gate.activation == .identity && layers.count > 1 ? [foldLinear(layers, precision: precision)] : layers
        if gate.count == 1 && config.minChoice > 0 {
            // rows [0, choices) the gate's, then row choices + j the learners' column j of w1: [out, in]
            let choices = config.numChoices, first = config.minChoice * h
            let weight = Tensor(shape: [choices + first, inputDim]), bias = Tensor(shape: [choices + first])
            weight.data.update(from: gate[0].weight.data, count: choices * inputDim)
            let w1Matrix = w1.floatMatrix()
            withExtendedLifetime(w1Matrix) {
                transpose(
                    w1Matrix.data, rows: inputDim, columns: first, lda: n * h, out: weight.data + choices * inputDim,
                    ldOut: inputDim)
            }
            if let b = gate[0].bias { bias.data.update(from: b.data, count: choices) }
            if let b1 { (bias.data + choices).update(from: b1.data, count: first) }
            gateAndFirst = Linear(weight: weight, bias: bias, precision: precision)
        } else {
            gateAndFirst = nil
        }
    }

    /// One layer of the `gateAndFirst` layers of ACMs that read the same input (an attention block's q, k
    /// and v), stacked in order: one GEMM, wide enough to fill the vector units, instead of one narrow
    /// GEMM each. Each ACM's part of its output is then `forward`'s `gateAndFirstOutput`, at the offsets
    /// of `gateAndFirstWidth`. Nil unless every ACM has a `gateAndFirst` and they share an input width.
    public static func stackedGateAndFirst(_ layers: [ACMLayer]) -> Linear? {
        let parts = layers.compactMap(\.gateAndFirst)
        return parts.count == layers.count ? Linear.stacked(parts) : nil
    }

    /// The width of this ACM's part of a stacked gate's output (`stackedGateAndFirst`), if it has one.
    public var gateAndFirstWidth: Int? { gateAndFirst?.outputs }

    /// Multiply-adds ×2 of one learner for one token: the unit of the compute fraction.
    public var learnerFLOPs: Double { Double(2 * config.learnerDim * (inputDim + outputDim)) }

    /// Gate logits for `tokens` rows of `x`, [tokens, numChoices], in workspace memory.
    public func gateLogits(_ x: UnsafePointer<Float>, tokens: Int, workspace ws: ACMWorkspace)
        -> UnsafeMutablePointer<Float>
    {
        var input = UnsafePointer(x)
        var buffers = (ws.gateA, ws.gateB)
        for (j, layer) in gate.enumerated() {
            let out = buffers.0.reserve(tokens * layer.outputs)
            // [tokens, in] × [in, out]
            layer.forward(input, rows: tokens, out: out)
            if j < gate.count - 1 { config.gate.activation.apply(out, count: tokens * layer.outputs) }
            input = UnsafePointer(out)
            buffers = (buffers.1, buffers.0)
        }
        return UnsafeMutablePointer(mutating: input)
    }

    /// The ACM over a batch of sequences: chooses each token's k by its sequence's policy, then runs
    /// the learners grouped across the whole batch.
    ///
    /// - Parameters:
    ///   - x: [tokens, d_in], where tokens = the sum of the sequences' lengths.
    ///   - sequences: disjoint, covering token ranges; `policies[i]` applies to `sequences[i]`.
    ///   - out: [tokens, d_out], overwritten, or added to when `accumulate` (a residual stream).
    ///   - choices: out, each token's k.
    ///   - servedFirst: under a cap, how many leading tokens of each sequence the cap serves before the
    ///     rest (`chooseLearners`); nil: none.
    ///   - gateAndFirstOutput: x·`gateAndFirst` (before the learners' activation) and its row stride,
    ///     when the caller computed it in a GEMM stacked with other ACMs' (`stackedGateAndFirst`); used
    ///     when a policy needs the gate. Its learner columns are overwritten.
    public func forward(
        _ x: UnsafePointer<Float>, sequences: [Range<Int>], policies: [LearnerPolicy], servedFirst: [Int]? = nil,
        out: UnsafeMutablePointer<Float>, accumulate: Bool = false, choices: UnsafeMutablePointer<Int32>,
        workspace ws: ACMWorkspace, gateAndFirstOutput: (UnsafeMutablePointer<Float>, ld: Int)? = nil
    ) {
        precondition(sequences.count == policies.count && (servedFirst?.count ?? sequences.count) == sequences.count)
        let tokens = sequences.last?.upperBound ?? 0
        let usesGate = policies.contains(where: \.usesGate)
        var logits: UnsafePointer<Float>? = nil
        var stride = config.numChoices
        var firstHidden: (UnsafeMutablePointer<Float>, Int)? = nil
        if usesGate, let fused = gateAndFirst {
            // the gate's logits and the k_min learners' hidden layer in one GEMM:
            // [tokens, d_in] × [d_in, choices + k_min·h]
            let width = fused.outputs, choices = config.numChoices
            let f: UnsafeMutablePointer<Float>, ld: Int
            if let (given, givenLD) = gateAndFirstOutput {
                (f, ld) = (given, givenLD)
            } else {
                (f, ld) = (ws.gateA.reserve(tokens * width), width)
                fused.forward(x, rows: tokens, out: f)
            }
            config.activation.apply(f + choices, rows: tokens, columns: width - choices, bias: nil, ld: ld)
            logits = UnsafePointer(f)
            stride = ld
            firstHidden = (f + choices, ld)
        } else if usesGate {
            logits = UnsafePointer(gateLogits(x, tokens: tokens, workspace: ws))
        }
        // Each sequence's choice is its own; the workers take contiguous runs of sequences.
        ws.prepare()
        let gateOut = logits ?? UnsafePointer(out)
        Parallel.forEachChunk(sequences.count, minimumPerChunk: 2) { worker, range in
            let scratch = ws.chunks[worker]
            for i in range {
                let seq = sequences[i]
                chooseLearners(
                    policy: policies[i], logits: gateOut + seq.lowerBound * stride, stride: stride,
                    tokens: seq.count, minChoice: config.minChoice, numLearners: config.numLearners,
                    servedFirst: servedFirst?[i], ks: choices + seq.lowerBound, scratch: scratch.boundary)
            }
        }
        runLearners(
            x, tokens: tokens, choices: choices, out: out, accumulate: accumulate, workspace: ws, firstHidden: firstHidden)
    }

    /// Runs the learners for every token, each with its own k.
    ///
    /// The tokens are split into one contiguous block per worker, balanced by Σk; within a block,
    /// learner n runs as two dense GEMMs over the block's tokens that chose k > n (see `runBlock`).
    ///
    /// - Parameters:
    ///   - accumulate: add to `out` (a residual stream) rather than overwrite it.
    ///   - firstHidden: the k_min learners' hidden layer for every token, activation applied, and its row
    ///     stride, when `forward` computed it with the gate; nil to compute it here.
    public func runLearners(
        _ x: UnsafePointer<Float>, tokens: Int, choices: UnsafePointer<Int32>,
        out: UnsafeMutablePointer<Float>, accumulate: Bool = false, workspace ws: ACMWorkspace,
        firstHidden: (UnsafeMutablePointer<Float>, Int)? = nil
    ) {
        ws.prepare()
        let workers = max(1, min(Parallel.workers, tokens / Parallel.minimumRowsPerWorker))
        if workers == 1 {
            runBlock(
                x, tokens: tokens, choices: choices, out: out, accumulate: accumulate, scratch: ws.chunks[0],
                firstHidden: firstHidden)
            return
        }
        // Cut where the running work (k learners plus a little for the gather and scatter) crosses
        // each worker's share.
        var total = 0
        for t in 0..<tokens { total += 8 * Int(choices[t]) + 1 }
        var cuts = [0]
        var running = 0
        for t in 0..<tokens {
            running += 8 * Int(choices[t]) + 1
            if cuts.count < workers && running * workers >= total * cuts.count { cuts.append(t + 1) }
        }
        while cuts.count <= workers { cuts.append(tokens) }
        Parallel.run(workers) { i in
            let block = cuts[i]..<cuts[i + 1]
            runBlock(
                x + block.lowerBound * inputDim, tokens: block.count, choices: choices + block.lowerBound,
                out: out + block.lowerBound * outputDim, accumulate: accumulate, scratch: ws.chunks[i],
                firstHidden: firstHidden.map { ($0.0 + block.lowerBound * $0.1, $0.1) })
        }
    }

    /// Runs learner n as two dense GEMMs over the contiguous block of tokens whose k > n.
    ///
    /// The learners that every token of the block runs (the first k_min, or more where no token chose
    /// fewer: the block's k_floor) run on `x` and into `out` as they are. The tokens with k > k_floor are
    /// then ordered by k, high to low (a counting sort), and gathered; the tokens that run learner
    /// n ≥ k_floor are exactly the first c_n rows, where c_n = #{t : k_t > n}. The work is Σ_n c_n = Σ_t k_t
    /// learner evaluations. Their sums are scattered back (added to the k_floor learners' part), with the
    /// output bias of each token's k, in one pass. With `accumulate`, everything is added to what `out`
    /// holds.
    func runBlock(
        _ x: UnsafePointer<Float>, tokens: Int, choices: UnsafePointer<Int32>,
        out: UnsafeMutablePointer<Float>, accumulate accumulateOut: Bool = false, scratch ws: LearnerScratch,
        firstHidden: (UnsafeMutablePointer<Float>, Int)?
    ) {
        if tokens == 0 { return }
        let n = config.numLearners, h = config.learnerDim, kMin = config.minChoice
        let dIn = inputDim, dOut = outputDim

        /// ys[0..<rows] (+)= hidden·W2_n: [rows, h] × [h, d_out], the hidden rows `ld` apart
        func project(_ index: Int, _ hidden: UnsafePointer<Float>, ld: Int, _ ys: UnsafeMutablePointer<Float>, rows: Int, accumulate: Bool) {
            w2.multiply(
                m: rows, a: hidden, lda: ld, rows: index * h..<(index + 1) * h, beta: accumulate ? 1 : 0, c: ys, ldc: dOut)
        }
        /// ys[0..<rows] (+)= act(xs[0..<rows]·W1_n + b1_n)·W2_n, xs in float or (`rounded`) bfloat16
        func learner(
            _ index: Int, _ xs: UnsafePointer<Float>, rounded: UnsafePointer<UInt16>? = nil, _ ys: UnsafeMutablePointer<Float>,
            rows: Int, accumulate: Bool
        ) {
            if w1.precision == .bf16 && h % 2 == 0 && GEMMWeight.fusesActivation(config.activation) {
                // act(x·W1_n + b1_n) made and rounded tile by tile, then its product with W2_n
                let (_, hid16) = bf16Space(ws.hidden, floats: 0, count: rows * h)
                w1.multiplyActivated(
                    m: rows, a: rounded == nil ? xs : nil, rounded: rounded, lda: dIn, columns: index * h..<(index + 1) * h,
                    bias: b1.map { $0.data + index * h }, activation: config.activation, hidden: hid16, ldHidden: h)
                w2.multiply(
                    m: rows, rounded: hid16, lda: h, rows: index * h..<(index + 1) * h, beta: accumulate ? 1 : 0, c: ys,
                    ldc: dOut)
                return
            }
            let hid = ws.hidden.reserve(rows * h)
            // [rows, d_in] × [d_in, h]
            if let rounded {
                w1.multiply(m: rows, rounded: rounded, lda: dIn, columns: index * h..<(index + 1) * h, c: hid, ldc: h)
            } else {
                w1.multiply(m: rows, a: xs, lda: dIn, columns: index * h..<(index + 1) * h, c: hid, ldc: h)
            }
            config.activation.apply(hid, rows: rows, columns: h, bias: b1.map { $0.data + index * h })
            project(index, hid, ld: h, ys, rows: rows, accumulate: accumulate)
        }

        // counting sort of the tokens with k > kFloor by k, descending: order[p] is the token at position p.
        // kFloor is k_min raised to the fewest learners any token of the block chose: every token runs those.
        if ws.order.count < tokens {
            ws.order = [Int32](repeating: 0, count: tokens)
            ws.position = [Int32](repeating: 0, count: tokens)
        }
        if ws.counts.count < n + 1 { ws.counts = [Int](repeating: 0, count: n + 1) }
        var same: Int32 = 0
        var floor = Int32(kMin)
        let active = ws.order.withUnsafeMutableBufferPointer { order in
            ws.position.withUnsafeMutableBufferPointer { position in
                ws.counts.withUnsafeMutableBufferPointer { counts in
                    acm_order_by_k(
                        choices, tokens, &floor, Int32(n), counts.baseAddress!, order.baseAddress!, position.baseAddress!,
                        &same)
                }
            }
        }
        let kFloor = Int(floor)

        // the learners every token runs, in place: where every token chose more than k_min (an MLP block with no
        // token at k = 0), those learners' rows are neither gathered nor scattered
        for index in 0..<kFloor {
            if index < kMin, let (hidden, ld) = firstHidden {
                project(index, hidden + index * h, ld: ld, out, rows: tokens, accumulate: index > 0 || accumulateOut)
            } else {
                learner(index, x, out, rows: tokens, accumulate: index > 0 || accumulateOut)
            }
        }

        let identity = same != 0
        let counts = ws.counts

        if active > 0 {
            // When the sort left every token in place (e.g. all chose N), work on x and out directly.
            let xs: UnsafePointer<Float>
            let ys: UnsafeMutablePointer<Float>
            // in bf16, the rows rounded once, as they are gathered, for every learner's first product
            var rounded: UnsafeMutablePointer<UInt16>? = nil
            if w1.precision == .bf16 && dIn % 2 == 0 {
                let r = UnsafeMutableRawPointer(ws.rounded.reserve((active * dIn + 1) / 2))
                    .bindMemory(to: UInt16.self, capacity: active * dIn)
                ws.order.withUnsafeBufferPointer { order in
                    acm_gather_rows_bf16(r, x, identity ? nil : order.baseAddress!, active, dIn)
                }
                rounded = r
                xs = x  // unread
                ys = identity ? out : ws.output.reserve(active * dOut)
            } else if identity {
                xs = x
                ys = out
            } else {
                let g = ws.gathered.reserve(active * dIn)
                ws.order.withUnsafeBufferPointer { order in
                    gatherRows(g, from: x, order: order.baseAddress!, count: active, columns: dIn)
                }
                xs = UnsafePointer(g)
                ys = ws.output.reserve(active * dOut)
            }
            var rows = active
            for index in kFloor..<n {
                if index > kFloor { rows -= counts[index] }  // drop the tokens with k = index
                if rows == 0 { break }
                learner(
                    index, xs, rounded: rounded.map { UnsafePointer($0) }, ys, rows: rows,
                    accumulate: index > kFloor || (identity && (kFloor > 0 || accumulateOut)))
            }
            if !identity {
                // every token's row: the gathered sums added (or copied) and the output bias of its k; k = 0
                // tokens (k_min = 0) get zeros, or keep what `out` held
                ws.position.withUnsafeBufferPointer { position in
                    scatterRows(
                        out, from: ys, position: position.baseAddress!, ks: choices, above: kFloor, rows: tokens,
                        columns: dOut, accumulate: kFloor > 0 || accumulateOut, table: cumulativeB2?.data)
                }
                return
            }
        }

        // k = 0 tokens (k_min = 0) get zeros, or keep what `out` held; then every token the output bias of its k
        if kFloor == 0 && !accumulateOut {
            for t in 0..<tokens where choices[t] == 0 { (out + t * dOut).update(repeating: 0, count: dOut) }
        }
        if let cumulativeB2 { addIndexedRows(out, table: cumulativeB2.data, ks: choices, rows: tokens, columns: dOut) }
    }
}
