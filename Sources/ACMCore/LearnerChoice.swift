import CACMKernels
import Foundation

/// How a sequence's learner counts are chosen at every ACM layer (docs/compute-budget.md).
public enum LearnerPolicy: Sendable, Equatable, CustomStringConvertible {
    /// The gate's argmax, ties to the smaller k.
    case auto
    /// The gate's choice, trimmed so that the sequence's Σk ≤ max(k_min·T, ⌊β·N·T⌋).
    /// A model applies this per ACM with that ACM's share of the request's budget (`splitBudget`).
    case cap(ComputeBudget)
    /// Every token runs k learners, clamped to [k_min, N]: the static baseline.
    case uniform(Int)
    /// Every token runs all N learners.
    case full

    /// Whether the gate's logits are needed.
    public var usesGate: Bool {
        switch self {
        case .auto, .cap: return true
        case .uniform, .full: return false
        }
    }

    public var description: String {
        switch self {
        case .auto: return "auto"
        case let .cap(beta): return "cap \(beta)"
        case let .uniform(k): return "uniform k=\(k)"
        case .full: return "full"
        }
    }
}

/// The cap's ranking buffers of one worker, reused across calls (`acm_choose_under_cap`'s scratch): the
/// tokens that reach the boundary level, their survival probabilities there and the selection's space.
final class BoundaryScratch {
    private(set) var doubles = UnsafeMutablePointer<Double>.allocate(capacity: 0)
    private(set) var tokens = UnsafeMutablePointer<Int32>.allocate(capacity: 0)
    private var doubleCapacity = 0, tokenCapacity = 0

    /// Room for a sequence of `count` tokens and `choices` logits each.
    func reserve(tokens count: Int, choices: Int) {
        let needed = acm_choose_scratch(count, choices)
        if needed > doubleCapacity {
            doubles.deallocate()
            doubles = .allocate(capacity: needed)
            doubleCapacity = needed
        }
        if count > tokenCapacity {
            tokens.deallocate()
            tokens = .allocate(capacity: count)
            tokenCapacity = count
        }
    }

    deinit {
        doubles.deallocate()
        tokens.deallocate()
    }
}

/// The learner count of each token of one sequence, per docs/compute-budget.md.
///
/// The cap keeps units level by level (every token's j-th learner before any token's (j+1)-th), so
/// only the one level where the budget runs out needs ranking: levels below it are kept whole, levels
/// above it dropped, and at that level the tokens are ranked by survival probability. That is the
/// same result as ranking every unit, in O(T·choices) on average (quickselect) instead of a sort of all
/// units.
///
/// - Parameters:
///   - logits: [tokens, numLearners + 1 − minChoice] gate logits, rows `stride` apart (at least that
///     width); unused for `.uniform` and `.full`.
///   - servedFirst: under a cap, how many leading tokens are served before the others (a Whisper
///     window's audio before its padding, docs/compute-budget.md "Audio before padding"): they share the
///     sequence's cap less the others' k_min floor, by the cap's rule among themselves, and the others
///     share what they leave. nil, 0 or `tokens`: one ranking of the whole sequence.
///   - ks: out, one count per token.
///   - scratch: the ranking's buffers, reused across calls.
func chooseLearners(
    policy: LearnerPolicy, logits: UnsafePointer<Float>, stride: Int? = nil, tokens: Int,
    minChoice: Int, numLearners: Int, servedFirst: Int? = nil,
    ks: UnsafeMutablePointer<Int32>, scratch: BoundaryScratch
) {
    let choices = numLearners + 1 - minChoice
    let rowStride = stride ?? choices
    var cap: Int? = nil
    switch policy {
    case .full:
        ks.update(repeating: Int32(numLearners), count: tokens)
        return
    case let .uniform(k):
        ks.update(repeating: Int32(min(max(k, minChoice), numLearners)), count: tokens)
        return
    case .auto:
        break
    case let .cap(beta):
        cap = max(minChoice * tokens, Int((beta.value * Double(numLearners * tokens) + 1e-9).rounded(.down)))
        if cap == minChoice * tokens {
            // no unit above the floor fits (an attention projection's share of a cap of 0.25 with N = 4): every
            // token gets k_min, which is what ranking the gate's choices would leave
            ks.update(repeating: Int32(minChoice), count: tokens)
            return
        }
    }
    if let cap, let first = servedFirst, first > 0 && first < tokens {
        let used = chooseUnderCap(
            cap - minChoice * (tokens - first), logits: logits, stride: rowStride, tokens: first, minChoice: minChoice,
            numLearners: numLearners, ks: ks, scratch: scratch)
        chooseUnderCap(
            cap - used, logits: logits + first * rowStride, stride: rowStride, tokens: tokens - first,
            minChoice: minChoice, numLearners: numLearners, ks: ks + first, scratch: scratch)
    } else {
        chooseUnderCap(
            cap, logits: logits, stride: rowStride, tokens: tokens, minChoice: minChoice, numLearners: numLearners,
            ks: ks, scratch: scratch)
    }
}

/// The gate's argmax (ties to the smaller k) for each token, trimmed to at most `cap` learners in all
/// (≥ k_min·tokens) by the cap's rule; nil: no cap. Returns the learners kept. The ranking is
/// `acm_choose_under_cap`: at the boundary level, the tokens that reach it by S_t(j) = P(K_t ≥ j) =
/// Σ_{k ≥ j} p_t(k), high to low, ties to the earlier token, summed from the top choice down in double
/// precision, as the reference does.
@discardableResult
private func chooseUnderCap(
    _ cap: Int?, logits: UnsafePointer<Float>, stride rowStride: Int, tokens: Int, minChoice: Int, numLearners: Int,
    ks: UnsafeMutablePointer<Int32>, scratch: BoundaryScratch
) -> Int {
    precondition(rowStride >= numLearners + 1 - minChoice)
    scratch.reserve(tokens: tokens, choices: numLearners + 1 - minChoice)
    return acm_choose_under_cap(
        logits, rowStride, tokens, Int32(minChoice), Int32(numLearners), cap ?? -1, ks, scratch.doubles, scratch.tokens)
}

/// Spreads a sequence's cap β over a model's ACMs (docs/compute-budget.md, "Spreading the budget"):
/// β_l = min(1, max(floor_l, s·w_l)) with the largest s, found by 100 halvings, at which
/// Σ_l β_l·cost_l ≤ β·Σ_l cost_l. The arrays are in the ACMs' sorted-path order, so that the sums
/// are the same floating-point operations as in the reference (`acm_tools.acm.split_budget`).
///
/// - Parameters:
///   - shares: w_l, the share of its learners each ACM's gate runs on average (nil: 1).
///   - floors: k_min/N of each ACM.
///   - costs: N·F of each ACM (its learner FLOPs per token).
/// - Returns: β_l for each ACM, in the same order.
public func splitBudget(_ beta: Double, shares: [Double?], floors: [Double], costs: [Double]) -> [Double] {
    precondition(shares.count == floors.count && floors.count == costs.count)
    if shares.isEmpty { return [] }
    let w = shares.map { $0 ?? 1 }
    var total = 0.0
    for c in costs { total += c }
    func level(_ s: Double, _ l: Int) -> Double { min(1, max(floors[l], s * w[l])) }
    func spent(_ s: Double) -> Double {
        var used = 0.0
        for l in w.indices { used += level(s, l) * costs[l] }
        return used / total
    }
    var hi = 0.0
    for wl in w where wl > 0 { hi = max(hi, 1 / wl) }
    var s = hi
    if spent(hi) > beta {
        var a = 0.0, b = hi
        for _ in 0..<budgetBisections {
            let mid = (a + b) / 2
            if spent(mid) > beta { b = mid } else { a = mid }
        }
        s = a
    }
    return w.indices.map { level(s, $0) }
}

/// Halvings of the bisection in `splitBudget`.
let budgetBisections = 100
