import Foundation

/// How a sequence's learner counts are chosen at every ACM layer (docs/compute-budget.md).
public enum LearnerPolicy: Sendable, Equatable, CustomStringConvertible {
    /// The gate's argmax, ties to the smaller k.
    case auto
    /// The gate's choice, trimmed so that the sequence's Σk ≤ max(k_min·T, ⌊β·N·T⌋); β ∈ (0, 1].
    /// A model applies this per ACM with that ACM's share of the request's budget (`splitBudget`).
    case cap(Double)
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

/// One learner unit (token t, learner j) that a cap may take away; ranked by j, then by its survival
/// probability.
struct LearnerUnit {
    var survival: Double
    var token: Int32
    var learner: Int32
}

/// The learner count of each token of one sequence, per docs/compute-budget.md.
///
/// - Parameters:
///   - logits: [tokens, numLearners + 1 − minChoice] gate logits (row stride = that width); unused for
///     `.uniform` and `.full`.
///   - ks: out, one count per token.
///   - units: scratch, reused across calls.
func chooseLearners(
    policy: LearnerPolicy, logits: UnsafePointer<Float>, tokens: Int,
    minChoice: Int, numLearners: Int,
    ks: UnsafeMutablePointer<Int32>, units: inout [LearnerUnit]
) {
    let choices = numLearners + 1 - minChoice
    switch policy {
    case .full:
        ks.update(repeating: Int32(numLearners), count: tokens)
        return
    case let .uniform(k):
        ks.update(repeating: Int32(min(max(k, minChoice), numLearners)), count: tokens)
        return
    case .auto, .cap:
        for t in 0..<tokens {
            let row = logits + t * choices
            var best = 0
            // strict > keeps the first (smallest k) of tied logits
            for c in 1..<choices where row[c] > row[best] { best = c }
            ks[t] = Int32(minChoice + best)
        }
    }
    guard case let .cap(beta) = policy else { return }

    let floorUnits = minChoice * tokens
    let cap = max(floorUnits, Int((beta * Double(numLearners * tokens) + 1e-9).rounded(.down)))
    var total = 0
    for t in 0..<tokens { total += Int(ks[t]) }
    if total <= cap { return }

    // Rank every unit above the k_min floor: lower j first (the water level), then the higher survival
    // probability S_t(j) = P(K_t ≥ j), then the earlier token.
    units.removeAll(keepingCapacity: true)
    var p = [Double](repeating: 0, count: choices)
    for t in 0..<tokens {
        let row = logits + t * choices
        var m = -Double.infinity
        for c in 0..<choices { m = max(m, Double(row[c])) }
        var sum = 0.0
        for c in 0..<choices {
            p[c] = Foundation.exp(Double(row[c]) - m)
            sum += p[c]
        }
        var survival = 0.0
        var j = Int(ks[t])
        // Accumulate from the top choice down so S_t(j) = Σ_{k ≥ j} p(k).
        for c in stride(from: choices - 1, through: 0, by: -1) {
            survival += p[c] / sum
            let k = minChoice + c
            if k == j && j > minChoice {
                units.append(LearnerUnit(survival: survival, token: Int32(t), learner: Int32(j)))
                j -= 1
            }
        }
    }
    units.sort { a, b in
        if a.learner != b.learner { return a.learner < b.learner }
        if a.survival != b.survival { return a.survival > b.survival }
        return a.token < b.token
    }
    ks.update(repeating: Int32(minChoice), count: tokens)
    for unit in units.prefix(cap - floorUnits) { ks[Int(unit.token)] += 1 }
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
