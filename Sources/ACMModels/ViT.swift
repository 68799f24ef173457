// Vision Transformer with ACM layers.
// Mirrors torchvision's VisionTransformer
// (https://github.com/pytorch/vision/blob/v0.16.0/torchvision/models/vision_transformer.py) as ACMized by
// https://github.com/bartwojcik/adaptive_computation_modules (architectures/acm.py at 6760ad64):
// attention split into q/k/v/o projections, each of which, and each MLP, may be an ACM.

import ACMCore
import Foundation

/// `encoder.layers.encoder_layer_{i}`
struct EncoderLayer {
    let ln1: LayerNorm  // ln_1
    // Each projection an `nn.Linear` (or a slice of the packed `in_proj_weight`) or an ACM.
    let q: DenseOrACM  // self_attention.q_proj
    let k: DenseOrACM  // self_attention.k_proj
    let v: DenseOrACM  // self_attention.v_proj
    let o: DenseOrACM  // self_attention.o_proj (torchvision: out_proj)
    let ln2: LayerNorm  // ln_2
    let mlp: DenseOrACM  // mlp: torchvision's `MLPBlock` (`mlp.0`, `mlp.3`) or an ACM
    /// q, k and v's gates (with their always-run learners) as one layer, when all three are ACMs that
    /// have one (`ACMLayer.stackedGateAndFirst`): they read the same ln_1 output.
    let qkvGate: Linear?
    /// q, k and v as one layer [3d outputs], when all three are dense: one GEMM three times as wide, and in bf16
    /// one rounding of ln_1's output instead of three.
    let qkv: Linear?
}

/// The scratch buffers of one forward pass, kept by the caller (the model's loop thread) and reused.
public final class ViTWorkspace: @unchecked Sendable {
    let x = Scratch(), normed = Scratch(), q = Scratch(), k = Scratch(), v = Scratch(), qkvGate = Scratch(), qkv = Scratch()
    /// A LayerNorm's output rounded to bfloat16, for the dense bf16 products that read only that.
    let normed16 = Scratch()
    let attended = Scratch(), blockOut = Scratch(), patches = Scratch()
    let scores = WorkerScratch()
    let layers = ACMWorkspace()
    /// One workspace per part, for batches split into parts (`ViT.forward`).
    var parts: [ViTWorkspace] = []

    public init() {}
}

/// What one forward pass computed for a batch of images.
public struct ViTOutput: Sendable {
    /// [images, classes]
    public var logits: Tensor
    /// Per image: executed learner FLOPs / all-learner FLOPs over the ACM layers (1 without ACMs).
    public var computeFraction: [Double]
    /// Per ACM (in `ViT.acmPaths` order): how many tokens of the batch ran each k = 0...N.
    public var learnerHistogram: [[Int]]
    /// Per ACM: every token's k, [images × sequenceLength], when asked for: image b's token t (0 the class
    /// token, 1 + r·grid + c the patch at row r, column c) is at b·sequenceLength + t, however the batch
    /// was split into parts.
    public var choices: [[Int32]]?
}

public final class ViT: @unchecked Sendable {
    public let config: ViTConfig
    /// Module path of each ACM, in execution order.
    public let acmPaths: [String]
    let acms: [ACMLayer]
    /// How a cap is spread over the ACMs.
    public let budgetSplit: BudgetSplit
    /// What the GEMMs run in (the weights' precision, `Weights.precision`).
    public let precision: Precision
    let patchWeight: GEMMWeight  // conv_proj.weight [d, C, p, p], kept transposed as [C·p·p, d]
    let patchBias: Tensor  // conv_proj.bias [d]
    let classToken: Tensor  // class_token [1, 1, d]
    let posEmbedding: Tensor  // encoder.pos_embedding [1, S, d]
    let layers: [EncoderLayer]
    let ln: LayerNorm  // encoder.ln
    let head: Linear  // heads.head

    /// Builds the model from its config and weights; every tensor in `weights.file` must be used.
    public init(config: ViTConfig, acm: [String: ACMConfig], weights: Weights) throws {
        // Everything that can throw happens before the first stored property is set.
        try config.validate()
        let d = config.hiddenDim, p = config.patchSize, c = config.numChannels
        let eps = config.layerNormEps
        let layerNames = (0..<config.numLayers).map { "encoder.layers.encoder_layer_\($0)" }
        let projNames = ["q_proj", "k_proj", "v_proj", "o_proj"]
        let modules = Set(layerNames.flatMap { name in projNames.map { "\(name).self_attention.\($0)" } + ["\(name).mlp"] })
        var acms = try ModelACMs(configs: acm, modules: modules, noun: "a module of this ViT")

        let conv = weights.scoped("conv_proj")
        let patchWeight = try conv.tensor("weight", shape: [d, c, p, p])
        let patchBias = try conv.tensor("bias", shape: [d])
        let classToken = try weights.tensor("class_token", shape: [1, 1, d])
        let posEmbedding = try weights.scoped("encoder").tensor("pos_embedding", shape: [1, config.sequenceLength, d])

        var layers: [EncoderLayer] = []
        for name in layerNames {
            let w = weights.scoped(name)
            let attn = w.scoped("self_attention")
            var proj: [DenseOrACM?] = []
            for n in projNames { proj.append(try acms.layer(at: "\(name).self_attention.\(n)", dim: d, weights: weights)) }
            if attn.contains("in_proj_weight") {
                // torchvision's packed layout: rows [0, d) are q, [d, 2d) k, [2d, 3d) v.
                guard proj.allSatisfy({ $0 == nil }) else {
                    throw ModelError.config("\(name): packed in_proj_weight cannot be mixed with ACM projections")
                }
                let packedW = try attn.tensor("in_proj_weight", shape: [3 * d, d])
                let packedB = try attn.tensor("in_proj_bias", shape: [3 * d])
                for j in 0..<3 {
                    let wj = Tensor(shape: [d, d]), bj = Tensor(shape: [d])
                    wj.data.update(from: packedW.data + j * d * d, count: d * d)
                    bj.data.update(from: packedB.data + j * d, count: d)
                    proj[j] = .linear(Linear(weight: wj, bias: bj, precision: weights.precision))
                }
                proj[3] = .linear(try Linear(inputs: d, outputs: d, weights: attn.scoped("out_proj")))
            } else {
                for j in 0..<4 where proj[j] == nil {
                    proj[j] = .linear(try Linear(inputs: d, outputs: d, weights: attn.scoped(projNames[j])))
                }
            }
            let mlp = try acms.layer(at: "\(name).mlp", dim: d, weights: weights)
                ?? .mlp(try DenseMLP(dim: d, hidden: config.mlpDim, weights: w, fc1: "mlp.0", fc2: "mlp.3"))
            layers.append(
                EncoderLayer(
                    ln1: try LayerNorm(dim: d, eps: eps, weights: w.scoped("ln_1")),
                    q: proj[0]!, k: proj[1]!, v: proj[2]!, o: proj[3]!,
                    ln2: try LayerNorm(dim: d, eps: eps, weights: w.scoped("ln_2")),
                    mlp: mlp, qkvGate: Self.stackedGate(proj[0]!, proj[1]!, proj[2]!),
                    qkv: Self.stackedDense(proj[0]!, proj[1]!, proj[2]!)))
        }
        let ln = try LayerNorm(dim: d, eps: eps, weights: weights.scoped("encoder.ln"))
        let head = try Linear(inputs: d, outputs: config.numClasses, weights: weights.scoped("heads.head"))
        try weights.file.checkAllUsed()

        self.config = config
        self.precision = weights.precision
        self.patchWeight = GEMMWeight(patchWeight.transposed(), precision: weights.precision)
        self.patchBias = patchBias
        self.classToken = classToken
        self.posEmbedding = posEmbedding
        self.layers = layers
        self.ln = ln
        self.head = head
        self.acmPaths = acms.paths
        self.acms = acms.layers
        self.budgetSplit = BudgetSplit(paths: acms.paths, acms: acms.layers)
    }

    /// The stacked gate of three ACM projections (`EncoderLayer.qkvGate`), or nil.
    private static func stackedGate(_ blocks: DenseOrACM...) -> Linear? {
        var layers: [ACMLayer] = []
        for case let .acm(_, layer) in blocks { layers.append(layer) }
        return layers.count == blocks.count ? ACMLayer.stackedGateAndFirst(layers) : nil
    }

    /// Three dense projections of the same input as one layer (`EncoderLayer.qkv`), or nil.
    private static func stackedDense(_ blocks: DenseOrACM...) -> Linear? {
        var parts: [Linear] = []
        for case let .linear(layer) in blocks { parts.append(layer) }
        return parts.count == blocks.count ? Linear.stacked(parts) : nil
    }

    /// FLOPs (2 per multiply-add) per image of everything but the ACMs' learners: patch embedding,
    /// attention, dense layers, gates and head. LayerNorm and softmax are not counted.
    public var fixedFLOPs: Double {
        let c = config
        let t = Double(c.sequenceLength), d = Double(c.hiddenDim), patches = Double(c.gridSize * c.gridSize)
        var total = 2 * patches * Double(c.numChannels * c.patchSize * c.patchSize) * d  // patch embedding
        total += 2 * d * Double(c.numClasses)  // head, on the class token
        for layer in layers {
            total += 2 * 2 * t * t * d  // q·kᵀ and softmax·v over all heads
            for block in [layer.q, layer.k, layer.v, layer.o, layer.mlp] { total += t * block.fixedFLOPsPerToken }
        }
        return total
    }

    /// FLOPs per image of every ACM learner: the denominator of the compute fraction.
    public var allLearnerFLOPs: Double {
        acms.reduce(0.0) { $0 + $1.learnerFLOPs * Double(config.sequenceLength * $1.config.numLearners) }
    }

    /// FLOPs per image at a compute fraction.
    public func flops(computeFraction: Double) -> Double { fixedFLOPs + computeFraction * allLearnerFLOPs }

    /// Per patch of image `b` (row-major over the grid, the class token left out): its token's learner
    /// count k averaged over the ACMs, from a forward pass's `choices`. In [min k_min, max N]; empty without ACMs.
    public func patchLearners(choices: [[Int32]], image b: Int) -> [Float] {
        guard !choices.isEmpty else { return [] }
        let s = config.sequenceLength
        var sums = [Int](repeating: 0, count: s - 1)
        for ks in choices {
            for t in 1..<s { sums[t - 1] += Int(ks[b * s + t]) }
        }
        return sums.map { Float(Double($0) / Double(choices.count)) }
    }

    /// Number of input floats per image: [C, H, W].
    public var inputCount: Int { config.numChannels * config.imageSize * config.imageSize }

    /// A batch of at least this many images per worker is split into parts that each run the whole
    /// network on one core.
    public static let minimumImagesPerWorker = 2
    /// The most images a part has. A part's activations then stay in its core's L2 cache from one layer to
    /// the next (8 images: 400 tokens, a 0.8-MB MLP hidden layer), so a batch runs faster in parts than whole,
    /// even on one core. Measured on the Zen 4 VM at cap 0.25 on one thread: 2,485 and 2,624 images/s at
    /// batches of 4 and 8, 2,113 at 32 in one part (docs/performance.md).
    public static let imagesPerPart = 8

    /// How many parts `forward` cuts a batch of `images` into on `workers` cores: a multiple of the workers, so
    /// that no core is left with a last part to run alone (24 images on 2 workers: 4 parts of 6, not 3 of 8),
    /// each of at most `imagesPerPart` images where that takes at most 128 parts; 1 for a batch too small to give
    /// every worker `minimumImagesPerWorker` images, whose operations are split over the workers instead.
    public static func partCount(images: Int, workers: Int) -> Int {
        guard workers == 1 || images >= workers * minimumImagesPerWorker else { return 1 }
        let perRound = workers * imagesPerPart
        let rounds = min((images + perRound - 1) / perRound, max(1, 128 / workers))
        return max(1, workers * rounds)
    }

    /// Classifies a batch of images, each under its own learner policy.
    ///
    /// The batch is cut into contiguous parts (`partCount`), and each part runs the whole network on one core: no
    /// operation waits for another core, and each part's ACMs still group the tokens of all its images. The
    /// workers claim the parts as they go, so a core the OS gives to something else for a while only takes fewer
    /// of them. A batch too small for parts runs as one, with each operation split over the workers. An image's
    /// result is the same either way.
    ///
    /// - Parameters:
    ///   - images: [count, C, H, W]
    ///   - policies: one per image.
    ///   - recordChoices: also return every token's k at every ACM.
    public func forward(
        images: UnsafePointer<Float>, count: Int, policies: [LearnerPolicy],
        workspace ws: ViTWorkspace, recordChoices: Bool = false
    ) -> ViTOutput {
        precondition(policies.count == count)
        let workers = Parallel.workers
        let parts = Self.partCount(images: count, workers: workers)
        guard parts > 1 else {
            return forwardPart(images: images, count: count, policies: policies, workspace: ws, recordChoices: recordChoices)
        }
        // One workspace per core, not per part: a part starts on buffers the core's previous part left in its cache.
        let slots = min(workers, parts)
        while ws.parts.count < slots { ws.parts.append(ViTWorkspace()) }
        let free = FreeSlots(slots)
        let bounds = (0...parts).map { $0 * count / parts }
        let results = (0..<parts).map { _ in PartResult() }
        let runPart = { (i: Int) in
            // Dispatch, which runs the parts when another model holds the pool, may run more at once than there
            // are workers: a part beyond them gets a workspace of its own.
            let slot = free.take()
            defer { if let slot { free.give(slot) } }
            let range = bounds[i]..<bounds[i + 1]
            results[i].output = Parallel.serially {
                self.forwardPart(
                    images: images + range.lowerBound * self.inputCount, count: range.count,
                    policies: Array(policies[range]), workspace: slot.map { ws.parts[$0] } ?? ViTWorkspace(),
                    recordChoices: recordChoices)
            }
        }
        if workers == 1 {
            for i in 0..<parts { runPart(i) }
        } else {
            Parallel.run(parts, runPart)
        }
        // the parts' outputs, one after the other
        let outputs = results.map { $0.output! }
        let classes = config.numClasses
        let logits = Tensor(shape: [count, classes])
        for (i, part) in outputs.enumerated() {
            (logits.data + bounds[i] * classes).update(from: part.logits.data, count: part.logits.count)
        }
        var histogram = outputs[0].learnerHistogram
        for part in outputs.dropFirst() {
            for l in histogram.indices { for k in histogram[l].indices { histogram[l][k] += part.learnerHistogram[l][k] } }
        }
        let choices = recordChoices ? acms.indices.map { l in outputs.flatMap { $0.choices![l] } } : nil
        return ViTOutput(
            logits: logits, computeFraction: outputs.flatMap(\.computeFraction), learnerHistogram: histogram,
            choices: choices)
    }

    /// One part's output, written by the worker that ran it.
    private final class PartResult: @unchecked Sendable {
        var output: ViTOutput?
    }

    /// `forward` on one part of a batch: every operation split over the workers (or inline, inside
    /// `Parallel.serially`).
    func forwardPart(
        images: UnsafePointer<Float>, count: Int, policies: [LearnerPolicy],
        workspace ws: ViTWorkspace, recordChoices: Bool
    ) -> ViTOutput {
        let d = config.hiddenDim, s = config.sequenceLength, g = config.gridSize, p = config.patchSize
        let c = config.numChannels, size = config.imageSize
        let patchLength = c * p * p
        let tokens = count * s
        let sequences = (0..<count).map { $0 * s..<($0 + 1) * s }

        let x = ws.x.reserve(tokens * d)
        let normed = ws.normed.reserve(tokens * d)
        let learners = LearnerCounts(acms: acms, items: count, recordChoices: recordChoices)
        let acmPolicies = budgetSplit.layerPolicies(policies)

        // patch embedding: im2col, then [images·g², C·p·p] × [C·p·p, d]
        let patches = ws.patches.reserve(count * g * g * patchLength)
        extractPatches(images, count: count, channels: c, size: size, patch: p, out: patches)
        let embedded = ws.blockOut.reserve(count * g * g * d)
        patchWeight.multiply(m: count * g * g, a: patches, lda: patchLength, c: embedded, ldc: d)
        // class token first, then the patches; plus the position embedding
        for b in 0..<count {
            for t in 0..<s {
                let row = x + (b * s + t) * d
                let pos = posEmbedding.data + t * d
                if t == 0 {
                    for j in 0..<d { row[j] = classToken.data[j] + pos[j] }
                } else {
                    let e = embedded + ((b * g * g) + t - 1) * d
                    for j in 0..<d { row[j] = e[j] + patchBias.data[j] + pos[j] }
                }
            }
        }

        /// Runs `block` on `input` [tokens, in] into `output` [tokens, out] (added to it when `accumulate`);
        /// an ACM with its part of a stacked gate's output, if given.
        func run(
            _ block: DenseOrACM, _ input: UnsafePointer<Float>, _ output: UnsafeMutablePointer<Float>,
            accumulate: Bool = false, gateAndFirst: (UnsafeMutablePointer<Float>, ld: Int)? = nil
        ) {
            block.forward(
                input, sequences: sequences, policies: block.acmIndex.map { acmPolicies[$0] } ?? policies,
                out: output, accumulate: accumulate, workspace: ws.layers, learners: learners,
                gateAndFirstOutput: gateAndFirst)
        }

        // room for a LayerNorm's output rounded to bfloat16, in bf16 only
        let normed16 = precision.effective == .bf16
            ? UnsafeMutableRawPointer(ws.normed16.reserve((tokens * d + 1) / 2))
                .bindMemory(to: UInt16.self, capacity: tokens * d)
            : nil
        let q = ws.q.reserve(tokens * d), k = ws.k.reserve(tokens * d), v = ws.v.reserve(tokens * d)
        let attended = ws.attended.reserve(tokens * d)
        let headDim = d / config.numHeads
        for layer in layers {
            // self-attention: x = x + o(attention(q, k, v)), on ln_1(x)
            if let normed16, let qkv = layer.qkv, qkv.precision == .bf16, headDim % 2 == 0,
                attentionTakesRounded(0..<s)
            {
                // in bf16, ln_1(x) and then q, k and v rounded as they are made: each product reads nothing else
                let f = ws.qkv.reserve((tokens * 3 * d + 1) / 2)
                let rounded = UnsafeMutableRawPointer(f).bindMemory(to: UInt16.self, capacity: tokens * 3 * d)
                layer.ln1.forward(x, rows: tokens, rounded: normed16)
                qkv.forwardRounded(rounded: normed16, rows: tokens, out: rounded)
                multiHeadAttention(
                    rounded: rounded, k: rounded + d, v: rounded + 2 * d, ld: 3 * d, out: attended, ldOut: d,
                    sequences: sequences, heads: config.numHeads, headDim: headDim, scores: ws.scores)
            } else {
                layer.ln1.forward(x, rows: tokens, out: normed)
                if let stacked = layer.qkvGate, case let .acm(qIndex, qLayer) = layer.q, case let .acm(_, kLayer) = layer.k,
                    acmPolicies[qIndex].contains(where: \.usesGate)
                {
                    // the three gates (and learner 0 of each) in one GEMM over ln_1's output
                    let width = stacked.outputs, f = ws.qkvGate.reserve(tokens * width)
                    stacked.forward(normed, rows: tokens, out: f)
                    let kOffset = qLayer.gateAndFirstWidth!, vOffset = kOffset + kLayer.gateAndFirstWidth!
                    run(layer.q, normed, q, gateAndFirst: (f, width))
                    run(layer.k, normed, k, gateAndFirst: (f + kOffset, width))
                    run(layer.v, normed, v, gateAndFirst: (f + vOffset, width))
                } else if layer.qkv == nil {
                    run(layer.q, normed, q)
                    run(layer.k, normed, k)
                    run(layer.v, normed, v)
                }
                var (qs, ks, vs, ld) = (q, k, v, d)
                if let qkv = layer.qkv {
                    // [tokens, d] × [d, 3d]: row t is q_t, k_t, v_t
                    let f = ws.qkv.reserve(tokens * 3 * d)
                    qkv.forward(normed, rows: tokens, out: f)
                    (qs, ks, vs, ld) = (f, f + d, f + 2 * d, 3 * d)
                }
                multiHeadAttention(
                    q: qs, k: ks, v: vs, ld: ld, out: attended, ldOut: d,
                    sequences: sequences, heads: config.numHeads, headDim: headDim, scores: ws.scores,
                    precision: precision)
            }
            run(layer.o, attended, x, accumulate: true)

            // mlp: x = x + mlp(ln_2(x)); in bf16, for a dense MLP, ln_2(x) rounded as it is made (the MLP reads nothing
            // else)
            if let normed16, layer.mlp.takesRounded(rows: tokens) {
                layer.ln2.forward(x, rows: tokens, rounded: normed16)
                layer.mlp.forward(rounded: normed16, rows: tokens, out: x, accumulate: true, workspace: ws.layers)
            } else {
                layer.ln2.forward(x, rows: tokens, out: normed)
                run(layer.mlp, normed, x, accumulate: true)
            }
        }

        // head on the class tokens: LayerNorm is per row, so only those rows need it
        for b in 0..<count { (normed + b * d).update(from: x + b * s * d, count: d) }
        ln.forward(normed, rows: count, out: normed)
        let logits = Tensor(shape: [count, config.numClasses])
        head.forward(normed, rows: count, out: logits.data)

        return ViTOutput(
            logits: logits, computeFraction: learners.computeFraction, learnerHistogram: learners.histogram,
            choices: learners.choices)
    }
}

/// The workspace slots `ViT.forward`'s parts take and give back, under a pthread mutex (NSLock). The standard
/// library's `Mutex` hands a contended lock over inside a Linux futex, where ThreadSanitizer cannot see it, so
/// `make test-sanitizers` reported these updates as a race.
private final class FreeSlots: @unchecked Sendable {
    private let lock = NSLock()
    private var slots: [Int]

    init(_ count: Int) { slots = Array(0..<count) }

    func take() -> Int? {
        lock.lock()
        defer { lock.unlock() }
        return slots.popLast()
    }

    func give(_ slot: Int) {
        lock.lock()
        defer { lock.unlock() }
        slots.append(slot)
    }
}
