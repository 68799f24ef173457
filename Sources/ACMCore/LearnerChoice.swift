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

/// A token's claim on one learner at the cap's boundary level: its survival probability there.
struct LearnerUnit {
    var survival: Double
    var token: Int32
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
///   - ks: out, one count per token.
///   - units: scratch, reused across calls.
func chooseLearners(
    policy: LearnerPolicy, logits: UnsafePointer<Float>, stride: Int? = nil, tokens: Int,
    minChoice: Int, numLearners: Int,
    ks: UnsafeMutablePointer<Int32>, units: inout [LearnerUnit]
) {
    let choices = numLearners + 1 - minChoice
    let rowStride = stride ?? choices
    switch policy {
    case .full:
        ks.update(repeating: Int32(numLearners), count: tokens)
        return
    case let .uniform(k):
        ks.update(repeating: Int32(min(max(k, minChoice), numLearners)), count: tokens)
        return
    case .auto, .cap:
        for t in 0..<tokens {
            let row = logits + t * rowStride
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

    // Units above the k_min floor at each level j: the tokens whose auto k reaches j. Keep whole levels
    // from the bottom while the budget lasts; `boundary` is the level where it runs out.
    var left = cap - floorUnits
    var boundary = minChoice + 1
    withUnsafeTemporaryAllocation(of: Int.self, capacity: numLearners + 2) { levels in
        // levels[j] = #{t : k_t ≥ j}: a histogram of k, summed from the top
        levels.initialize(repeating: 0)
        for t in 0..<tokens { levels[Int(ks[t])] += 1 }
        for j in Swift.stride(from: numLearners - 1, through: 0, by: -1) { levels[j] += levels[j + 1] }
        while boundary <= numLearners && levels[boundary] <= left {
            left -= levels[boundary]
            boundary += 1
        }
    }
    if left == 0 || boundary > numLearners {
        // every token keeps its learners below the boundary level, and none reaches it
        for t in 0..<tokens { ks[t] = min(ks[t], Int32(boundary - 1)) }
        return
    }

    // At the boundary level, rank the tokens that reach it by S_t(j) = P(K_t ≥ j) = Σ_{k ≥ j} p_t(k),
    // high to low, ties to the earlier token, and give the first `left` of them their j-th learner.
    // The sums run from the top choice down in double precision, as the reference does.
    let top = boundary - minChoice  // the choice index of k = boundary
    if units.count < tokens { units = [LearnerUnit](repeating: LearnerUnit(survival: 0, token: 0), count: tokens) }
    units.withUnsafeMutableBufferPointer { u in
        withUnsafeTemporaryAllocation(of: Double.self, capacity: 2 * tokens * choices) { buffer in
            // the reaching tokens' shifted logits z − max z, then their exponentials, in one pass each
            let shifted = buffer.baseAddress!, e = shifted + tokens * choices
            var reaching = 0
            for t in 0..<tokens where Int(ks[t]) >= boundary {
                let row = logits + t * rowStride
                var m = -Double.infinity
                for c in 0..<choices { m = max(m, Double(row[c])) }
                for c in 0..<choices { shifted[reaching * choices + c] = Double(row[c]) - m }
                u[reaching].token = Int32(t)
                reaching += 1
            }
            expInPlace(shifted, out: e, count: reaching * choices)
            for r in 0..<reaching {
                let er = e + r * choices
                var sum = 0.0
                for c in 0..<choices { sum += er[c] }
                var survival = 0.0
                for c in Swift.stride(from: choices - 1, through: top, by: -1) { survival += er[c] / sum }
                u[r].survival = survival
            }
            // every token keeps its learners below the boundary level, the first `left` ranked one more
            for t in 0..<tokens { ks[t] = min(ks[t], Int32(boundary - 1)) }
            if left < reaching { selectBest(UnsafeMutableBufferPointer(rebasing: u[0..<reaching]), left) }
            for unit in u[0..<min(left, reaching)] { ks[Int(unit.token)] += 1 }
        }
    }
}

/// Moves the `k` best units to the front, in no particular order: the higher survival probability first,
/// then the earlier token (a strict order, as tokens are distinct). Quickselect: O(n) on average, where a
/// sort of the boundary level took a tenth of a capped forward pass.
func selectBest(_ u: UnsafeMutableBufferPointer<LearnerUnit>, _ k: Int) {
    @inline(__always) func better(_ a: LearnerUnit, _ b: LearnerUnit) -> Bool {
        a.survival != b.survival ? a.survival > b.survival : a.token < b.token
    }
    var lo = 0, hi = u.count - 1
    let target = k - 1
    while lo < hi {
        // the median of the first, middle and last as the pivot
        let mid = lo + (hi - lo) / 2
        if better(u[mid], u[lo]) { u.swapAt(mid, lo) }
        if better(u[hi], u[lo]) { u.swapAt(hi, lo) }
        if better(u[hi], u[mid]) { u.swapAt(hi, mid) }
        let pivot = u[mid]
        // Hoare partition: [lo, j] are no worse than the pivot, [i, hi] no better
        var i = lo, j = hi
        while i <= j {
            while better(u[i], pivot) { i += 1 }
            while better(pivot, u[j]) { j -= 1 }
            if i <= j {
                u.swapAt(i, j)
                i += 1
                j -= 1
            }
        }
        if target <= j {
            hi = j
        } else if target >= i {
            lo = i
        } else {
            return
        }
    }
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
