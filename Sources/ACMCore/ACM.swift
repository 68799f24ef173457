// Adaptive Computation Module: N learners and a gate, run grouped.
// Mirrors AdaptiveComputationMLP in https://github.com/bartwojcik/adaptive_computation_modules
// (architectures/acm.py at 6760ad64), without its forward_gated's min(k, kmax−1) batch dependence.

/// The gate: `depth` linear layers with `activation` between them (none after the last).
public struct GateConfig: Codable, Sendable, Equatable {
    public var depth: Int
    public var hiddenDim: Int
    public var activation: Activation

    public init(depth: Int = 3, hiddenDim: Int = 16, activation: Activation = .identity) {
        self.depth = depth
        self.hiddenDim = hiddenDim
        self.activation = activation
    }

    enum CodingKeys: String, CodingKey {
        case depth
        case hiddenDim = "hidden_dim"
        case activation
    }
}

/// One ACM's settings, as in `config.json` (docs/model-format.md).
public struct ACMConfig: Codable, Sendable, Equatable {
    public var numLearners: Int
    public var learnerDim: Int
    public var activation: Activation
    public var minChoice: Int
    public var hiddenBias: Bool
    public var outputBias: Bool
    public var gate: GateConfig
    /// The share of its learners the gate runs in auto mode, on average (nil: 1): a cap spreads its
    /// budget over the ACMs in these proportions.
    public var budgetShare: Double?

    public init(
        numLearners: Int, learnerDim: Int, activation: Activation, minChoice: Int,
        hiddenBias: Bool = true, outputBias: Bool = false, gate: GateConfig = GateConfig(),
        budgetShare: Double? = nil
    ) {
        self.numLearners = numLearners
        self.learnerDim = learnerDim
        self.activation = activation
        self.minChoice = minChoice
        self.hiddenBias = hiddenBias
        self.outputBias = outputBias
        self.gate = gate
        self.budgetShare = budgetShare
    }

    enum CodingKeys: String, CodingKey {
        case budgetShare = "budget_share"
        case numLearners = "num_learners"
        case learnerDim = "learner_dim"
        case activation
        case minChoice = "min_choice"
        case hiddenBias = "hidden_bias"
        case outputBias = "output_bias"
        case gate
    }

    /// The number of gate outputs: one per choice k_min..N.
    public var numChoices: Int { numLearners + 1 - minChoice }

    func validate(path: String) throws {
        guard numLearners >= 1, learnerDim >= 1 else {
            throw ModelError.config("\(path): num_learners and learner_dim must be ≥ 1")
        }
        guard (0...numLearners).contains(minChoice) else {
            throw ModelError.config("\(path): min_choice \(minChoice) is outside 0...\(numLearners)")
        }
        guard gate.depth >= 1, gate.hiddenDim >= 1 else {
            throw ModelError.config("\(path): gate depth and hidden_dim must be ≥ 1")
        }
        guard activation == .gelu || activation == .identity else {
            throw ModelError.config("\(path): learner activation must be gelu or identity")
        }
        if let share = budgetShare, !(0...1).contains(share) {
            throw ModelError.config("\(path): budget_share \(share) is outside 0...1")
        }
    }
}

/// The composition of linear layers with nothing between them, as one layer: x·W₀ᵀ·W₁ᵀ⋯ + the biases
/// carried through. Multiplied out in double precision, so the folded logits differ from the layer-by-layer
/// ones only by float rounding (docs/performance.md counts the gate decisions that moved).
func foldLinear(_ layers: [Linear]) -> Linear {
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
        bias: Tensor(shape: [rows], values: c.map { Float($0) }))
}

/// Scratch space shared by every ACM of a model; the layers run one at a time.
public final class ACMWorkspace: @unchecked Sendable {
    let gateA = Scratch(), gateB = Scratch()
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
    var order: [Int32] = []
    var position: [Int32] = []
    /// The cap's ranking scratch (`chooseLearners`).
    var units: [LearnerUnit] = []
}

/// An ACM layer: learner n is `act(x·w1[:, n·h..<(n+1)·h] + b1[n·h..<(n+1)·h])·w2[n·h..<(n+1)·h, :]`,
/// and a token that runs k learners gets the sum of the first k, plus Σ_{j≤k} b2[j] when present.
public final class ACMLayer: @unchecked Sendable {
    public let config: ACMConfig
    public let inputDim: Int
    public let outputDim: Int
    /// `w1` [d_in, N·h]
    let w1: Tensor
    /// `b1` [N·h]
    let b1: Tensor?
    /// `w2` [N·h, d_out]
    let w2: Tensor
    /// Running sums of `b2` [(N+1)·d_out]: row k is Σ_{j≤k} b2[j].
    let cumulativeB2: Tensor?
    /// `gating_network.net.{j}`; a gate with no activation between its layers is one linear map, and is
    /// kept as that one layer (`foldLinear`): one GEMM of [tokens, d_in] × [d_in, choices] instead of three.
    public let gate: [Linear]

    public init(config: ACMConfig, inputDim: Int, outputDim: Int, weights: Weights) throws {
        try config.validate(path: weights.prefix)
        self.config = config
        self.inputDim = inputDim
        self.outputDim = outputDim
        let n = config.numLearners, h = config.learnerDim
        w1 = try weights.tensor("w1", shape: [inputDim, n * h])
        b1 = config.hiddenBias ? try weights.tensor("b1", shape: [n * h]) : nil
        w2 = try weights.tensor("w2", shape: [n * h, outputDim])
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
        gate = config.gate.activation == .identity && layers.count > 1 ? [foldLinear(layers)] : layers
    }

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
    ///   - out: [tokens, d_out], overwritten.
    ///   - choices: out, each token's k.
    public func forward(
        _ x: UnsafePointer<Float>, sequences: [Range<Int>], policies: [LearnerPolicy],
        out: UnsafeMutablePointer<Float>, choices: UnsafeMutablePointer<Int32>, workspace ws: ACMWorkspace
    ) {
        precondition(sequences.count == policies.count)
        let tokens = sequences.last?.upperBound ?? 0
        let logits: UnsafeMutablePointer<Float>? =
            policies.contains(where: \.usesGate) ? gateLogits(x, tokens: tokens, workspace: ws) : nil
        // Each sequence's choice is its own; the workers take contiguous runs of sequences.
        ws.prepare()
        let gateOut = UnsafePointer(logits ?? out)
        Parallel.forEachChunk(sequences.count, minimumPerChunk: 2) { worker, range in
            let scratch = ws.chunks[worker]
            for i in range {
                let seq = sequences[i]
                chooseLearners(
                    policy: policies[i], logits: gateOut + seq.lowerBound * config.numChoices,
                    tokens: seq.count, minChoice: config.minChoice, numLearners: config.numLearners,
                    ks: choices + seq.lowerBound, units: &scratch.units)
            }
        }
        runLearners(x, tokens: tokens, choices: choices, out: out, workspace: ws)
    }

    /// Runs the learners for every token, each with its own k.
    ///
    /// The tokens are split into one contiguous block per worker, balanced by Σk; within a block,
    /// learner n runs as two dense GEMMs over the block's tokens that chose k > n (see `runBlock`).
    public func runLearners(
        _ x: UnsafePointer<Float>, tokens: Int, choices: UnsafePointer<Int32>,
        out: UnsafeMutablePointer<Float>, workspace ws: ACMWorkspace
    ) {
        ws.prepare()
        let workers = max(1, min(Parallel.workers, tokens / Parallel.minimumRowsPerWorker))
        if workers == 1 {
            runBlock(x, tokens: tokens, choices: choices, out: out, scratch: ws.chunks[0])
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
                out: out + block.lowerBound * outputDim, scratch: ws.chunks[i])
        }
    }

    /// Runs learner n as two dense GEMMs over the contiguous block of tokens whose k > n.
    ///
    /// Tokens are ordered by k, high to low (a counting sort), and gathered; then the tokens that run
    /// learner n are exactly the first c_n rows, where c_n = #{t : k_t > n}. The work is Σ_n c_n = Σ_t k_t
    /// learner evaluations. Results are scattered back, with the output bias of each token's k.
    func runBlock(
        _ x: UnsafePointer<Float>, tokens: Int, choices: UnsafePointer<Int32>,
        out: UnsafeMutablePointer<Float>, scratch ws: LearnerScratch
    ) {
        if tokens == 0 { return }
        let n = config.numLearners, h = config.learnerDim
        let dIn = inputDim, dOut = outputDim

        // counting sort by k, descending: order[p] is the token at sorted position p
        var counts = [Int](repeating: 0, count: n + 1)
        for t in 0..<tokens { counts[Int(choices[t])] += 1 }
        var start = [Int](repeating: 0, count: n + 1)  // start[k]: first position of tokens with this k
        var acc = 0
        for k in stride(from: n, through: 0, by: -1) {
            start[k] = acc
            acc += counts[k]
        }
        if ws.order.count < tokens {
            ws.order = [Int32](repeating: 0, count: tokens)
            ws.position = [Int32](repeating: 0, count: tokens)
        }
        var identity = true
        ws.order.withUnsafeMutableBufferPointer { order in
            ws.position.withUnsafeMutableBufferPointer { position in
                for t in 0..<tokens {
                    let k = Int(choices[t])
                    let p = start[k]
                    start[k] += 1
                    order[p] = Int32(t)
                    position[t] = Int32(p)
                    if p != t { identity = false }
                }
            }
        }
        let active = tokens - counts[0]  // c_0: tokens that run at least one learner

        // When the sort left every token in place (e.g. all tokens chose N), work on x and out directly.
        let xs: UnsafePointer<Float>
        let ys: UnsafeMutablePointer<Float>
        if identity {
            xs = x
            ys = out
        } else {
            let g = ws.gathered.reserve(active * dIn)
            ws.order.withUnsafeBufferPointer { order in
                for p in 0..<active { (g + p * dIn).update(from: x + Int(order[p]) * dIn, count: dIn) }
            }
            xs = UnsafePointer(g)
            ys = ws.output.reserve(active * dOut)
        }

        let hid = ws.hidden.reserve(active * h)
        var rows = active
        for learner in 0..<n {
            if learner > 0 { rows -= counts[learner] }  // drop the tokens with k = learner
            if rows == 0 { break }
            // hidden = act(xs[0..<rows] · w1[:, learner·h..<(learner+1)·h] + b1): [rows, d_in] × [d_in, h]
            gemm(
                m: rows, n: h, k: dIn,
                a: xs, lda: dIn, b: w1.data + learner * h, ldb: n * h,
                c: hid, ldc: h)
            config.activation.apply(hid, rows: rows, columns: h, bias: b1.map { $0.data + learner * h })
            // ys[0..<rows] += hidden · w2[learner·h..<(learner+1)·h, :]: [rows, h] × [h, d_out]
            gemm(
                m: rows, n: dOut, k: h,
                a: hid, lda: h, b: w2.data + learner * h * dOut, ldb: dOut,
                beta: learner == 0 ? 0 : 1,
                c: ys, ldc: dOut)
        }

        // scatter back; k = 0 tokens get zeros (or b2[0])
        ws.position.withUnsafeBufferPointer { position in
            for t in 0..<tokens {
                let k = Int(choices[t])
                let row = out + t * dOut
                if k == 0 {
                    if let cumulativeB2 {
                        row.update(from: cumulativeB2.data, count: dOut)
                    } else {
                        row.update(repeating: 0, count: dOut)
                    }
                    continue
                }
                if !identity { row.update(from: ys + Int(position[t]) * dOut, count: dOut) }
                if let cumulativeB2 {
                    let bias = cumulativeB2.data + k * dOut
                    for c in 0..<dOut { row[c] += bias[c] }
                }
            }
        }
    }
}
