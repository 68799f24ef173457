import CACMKernels
import Foundation

/// A map of each token that a model may have dense or as an ACM: an attention projection or an MLP
/// (the ViT's q/k/v/o projections and MLPs, Whisper's MLPs).
public enum DenseOrACM: Sendable {
    /// An `nn.Linear` projection.
    case linear(Linear)
    /// `fc1` (d → D), exact GELU, `fc2` (D → d).
    case mlp(DenseMLP)
    /// An ACM in either's place; `index` is its position among the model's ACMs (its `acmPaths`).
    case acm(index: Int, ACMLayer)

    /// The position of the ACM among the model's ACMs; nil when dense.
    public var acmIndex: Int? {
        if case let .acm(index, _) = self { return index }
        return nil
    }

    /// FLOPs (2 per multiply-add) per token of everything but an ACM's learners: all of a dense layer,
    /// an ACM's gate.
    public var fixedFLOPsPerToken: Double {
        switch self {
        case let .linear(l): return 2 * Double(l.inputs * l.outputs)
        case let .mlp(m): return 2 * Double(m.fc1.inputs * m.fc1.outputs + m.fc2.inputs * m.fc2.outputs)
        case let .acm(_, a): return 2 * a.gate.reduce(0.0) { $0 + Double($1.inputs * $1.outputs) }
        }
    }

    /// The layer over a batch of sequences, each token its own row: an ACM chooses each token's k by its
    /// sequence's policy and runs the learners grouped across the batch (`ACMLayer.forward`).
    ///
    /// - Parameters:
    ///   - x: [tokens, d_in], where tokens = the sum of the sequences' lengths.
    ///   - sequences: disjoint, covering token ranges; `policies[i]` applies to `sequences[i]`
    ///     (ignored by a dense layer).
    ///   - out: [tokens, d_out], overwritten, or added to when `accumulate` (a residual stream: one pass
    ///     over it fewer than adding a separate output).
    ///   - learners: where an ACM counts the learners its tokens ran, sequence i for item `items[i]`
    ///     (default i).
    ///   - servedFirst: under a cap, how many leading tokens of each sequence an ACM serves first
    ///     (`ACMLayer.forward`); nil: none.
    ///   - fewRows: how a dense layer runs a few rows (`FewRows`).
    ///   - gateAndFirstOutput: an ACM's part of a stacked gate's output (`ACMLayer.forward`).
    public func forward(
        _ x: UnsafePointer<Float>, sequences: [Range<Int>], policies: [LearnerPolicy], servedFirst: [Int]? = nil,
        out: UnsafeMutablePointer<Float>, accumulate: Bool = false, workspace ws: ACMWorkspace,
        learners: LearnerCounts? = nil, items: [Int]? = nil, fewRows: FewRows = .oneWorker,
        gateAndFirstOutput: (UnsafeMutablePointer<Float>, ld: Int)? = nil
    ) {
        let tokens = sequences.last?.upperBound ?? 0
        switch self {
        case let .linear(linear):
            linear.forward(x, rows: tokens, out: out, accumulate: accumulate, fewRows: fewRows)
        case let .mlp(mlp):
            mlp.forward(x, rows: tokens, out: out, accumulate: accumulate, scratch: ws.mlpHidden, fewRows: fewRows)
        case let .acm(index, layer):
            if ws.choices.count < tokens { ws.choices = [Int32](repeating: 0, count: tokens) }
            ws.choices.withUnsafeMutableBufferPointer { ks in
                layer.forward(
                    x, sequences: sequences, policies: policies, servedFirst: servedFirst, out: out, accumulate: accumulate,
                    choices: ks.baseAddress!, workspace: ws, gateAndFirstOutput: gateAndFirstOutput)
                learners?.add(acm: index, layer: layer, choices: UnsafeBufferPointer(ks), sequences: sequences, items: items)
            }
        }
    }
}

extension DenseOrACM {
    /// Whether `forward(rounded:...)` takes `rows` rows: a dense MLP in bf16 that takes them (`DenseMLP.takesRounded`).
    public func takesRounded(rows: Int) -> Bool {
        if case let .mlp(mlp) = self { return mlp.takesRounded(rows: rows) }
        return false
    }

    /// `forward` on rows already rounded to bfloat16 (e.g. a LayerNorm's output, rounded as it was made), where
    /// `takesRounded`.
    public func forward(
        rounded x: UnsafePointer<UInt16>, rows: Int, out: UnsafeMutablePointer<Float>, accumulate: Bool = false,
        workspace ws: ACMWorkspace
    ) {
        guard case let .mlp(mlp) = self else { preconditionFailure("only a dense MLP takes rounded rows") }
        mlp.forward(rounded: x, rows: rows, out: out, accumulate: accumulate, scratch: ws.mlpHidden)
    }
}

/// A model's ACMs, gathered as its init builds its layers: the config's `acm` entries, checked against
/// the model's modules, and each ACM found, in execution order.
public struct ModelACMs {
    public let configs: [String: ACMConfig]
    /// The module path of each ACM built so far (the model's `acmPaths`).
    public private(set) var paths: [String] = []
    public private(set) var layers: [ACMLayer] = []

    /// Throws for an `acm` entry that is not in `modules`, the model's module paths: "acm entry 'P' is not
    /// `noun`".
    public init(configs: [String: ACMConfig], modules: Set<String>, noun: String) throws {
        if let unknown = configs.keys.filter({ !modules.contains($0) }).sorted().first {
            throw ModelError.config("acm entry '\(unknown)' is not \(noun)")
        }
        self.configs = configs
    }

    /// The ACM the config names at `path`, d → d, its weights under `weights`' `path`, as the model's
    /// next ACM; nil when the module at `path` is dense.
    public mutating func layer(at path: String, dim d: Int, weights: Weights) throws -> DenseOrACM? {
        guard let settings = configs[path] else { return nil }
        layers.append(try ACMLayer(config: settings, inputDim: d, outputDim: d, weights: weights.scoped(path)))
        paths.append(path)
        return .acm(index: layers.count - 1, layers.last!)
    }
}

/// How many learners the tokens ran at each ACM of a model, over one forward pass or several (a
/// transcription's encoder pass and decoder steps), and each item's learner FLOPs (an item is an
/// image or an utterance). Filled in by `DenseOrACM.forward`.
public final class LearnerCounts {
    /// Per ACM (the model's `acmPaths` order): `histogram[i][k]` tokens ran k = 0...N learners.
    public private(set) var histogram: [[Int]]
    /// Per item: the learner FLOPs run, and those of every learner.
    public private(set) var executedFLOPs: [Double], possibleFLOPs: [Double]
    /// Per ACM, when recording: every token's k, in the order the tokens ran.
    public private(set) var choices: [[Int32]]?

    /// Counts for the model's ACMs (`acms`, in order) over `items` items.
    public init(acms: [ACMLayer], items: Int, recordChoices: Bool = false) {
        histogram = acms.map { [Int](repeating: 0, count: $0.config.numLearners + 1) }
        executedFLOPs = Array(repeating: 0, count: items)
        possibleFLOPs = Array(repeating: 0, count: items)
        choices = recordChoices ? acms.map { _ in [] } : nil
    }

    /// Per item: executed / possible learner FLOPs, 1 for an item that ran no ACM.
    public var computeFraction: [Double] {
        zip(executedFLOPs, possibleFLOPs).map { $1 > 0 ? $0 / $1 : 1 }
    }

    /// Counts `choices`, each token's k at ACM `index` (`layer`); sequence i belongs to item `items[i]`
    /// (default i).
    func add(acm index: Int, layer: ACMLayer, choices ks: UnsafeBufferPointer<Int32>, sequences: [Range<Int>], items: [Int]?) {
        let cost = layer.learnerFLOPs, n = layer.config.numLearners
        // one access to the histogram row for all tokens, not an exclusivity check and a uniqueness
        // check for each
        histogram[index].withUnsafeMutableBufferPointer { counts in
            for (i, seq) in sequences.enumerated() {
                let sum = seq.isEmpty ? 0 : acm_count_k(ks.baseAddress! + seq.lowerBound, seq.count, Int32(n), counts.baseAddress!)
                let item = items?[i] ?? i
                executedFLOPs[item] += cost * Double(sum)
                possibleFLOPs[item] += cost * Double(seq.count * n)
            }
        }
        choices?[index].append(contentsOf: ks[0..<(sequences.last?.upperBound ?? 0)])
    }
}

/// The per-ACM policies of the caps a `BudgetSplit` has split, shared by the threads that run its model. Caps
/// come from requests, so there may be many: past `capacity` the cache starts again.
private final class PolicyCache: @unchecked Sendable {
    private let lock = NSLock()
    private var entries: [ComputeBudget: [LearnerPolicy]] = [:]
    static let capacity = 256

    func policies(_ beta: ComputeBudget) -> [LearnerPolicy]? {
        lock.withLock { entries[beta] }
    }

    func insert(_ beta: ComputeBudget, _ policies: [LearnerPolicy]) {
        lock.withLock {
            if entries.count >= Self.capacity { entries.removeAll(keepingCapacity: true) }
            entries[beta] = policies
        }
    }
}

/// A cap spread over a model's ACMs (docs/compute-budget.md, "Spreading the budget"): each ACM gets
/// its share of a request's β by its `budget_share`, its k_min floor and its cost. The same for every
/// kind of model; an ACM's cost is its learners' FLOPs per token.
public struct BudgetSplit: Sendable {
    /// In the model's ACM order; `order` lists them by path, the order the reference sums in.
    let acms: [ACMLayer]
    let order: [Int]
    /// Each cap's policies per ACM, as `layerPolicies` made them: the split's bisection runs once per cap,
    /// not once for every batch (at batch 1 it cost about 2% of a pass).
    private let cache = PolicyCache()

    public init(paths: [String], acms: [ACMLayer]) {
        precondition(paths.count == acms.count)
        self.acms = acms
        order = paths.indices.sorted { paths[$0] < paths[$1] }
    }

    /// Each ACM's share of a cap β, in the model's ACM order.
    public func shares(_ beta: Double) -> [Double] {
        let split = splitBudget(
            beta,
            shares: order.map { acms[$0].config.budgetShare },
            floors: order.map { Double(acms[$0].config.minChoice) / Double(acms[$0].config.numLearners) },
            costs: order.map { acms[$0].learnerFLOPs * Double(acms[$0].config.numLearners) })
        var budgets = [Double](repeating: 1, count: acms.count)
        for (position, index) in order.enumerated() { budgets[index] = split[position] }
        return budgets
    }

    /// The policy of each sequence at each ACM, `[acm][sequence]`: a cap becomes that ACM's share of it,
    /// any other policy stays as it is. A share at the ACM's k_min floor becomes `.uniform(k_min)`.
    public func layerPolicies(_ policies: [LearnerPolicy]) -> [[LearnerPolicy]] {
        var splits: [ComputeBudget: [LearnerPolicy]] = [:]
        for case let .cap(beta) in policies where splits[beta] == nil {
            if let known = cache.policies(beta) {
                splits[beta] = known
                continue
            }
            // A share at or below the floor k_min/N (the split raises every share to it; below it only when
            // the floors alone exceed the budget, as a share of 0) leaves no learner above k_min: the cap
            // max(k_min·T, ⌊β·N·T⌋) is k_min·T, and every token runs k_min learners. `.uniform(k_min)` gives
            // the same, without the gate's logits or the choice.
            splits[beta] = zip(shares(beta.value), acms).map { share, acm in
                let minChoice = acm.config.minChoice
                if share * Double(acm.config.numLearners) <= Double(minChoice) { return .uniform(minChoice) }
                return (try? ComputeBudget(share)).map { .cap($0) } ?? .uniform(minChoice)
            }
            cache.insert(beta, splits[beta]!)
        }
        return acms.indices.map { l in
            policies.map { policy in
                if case let .cap(beta) = policy { return splits[beta]![l] }
                return policy
            }
        }
    }
}
