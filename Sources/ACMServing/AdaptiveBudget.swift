import ACMCore

// Degrade compute, not availability (docs/adaptive-budget.md): under load, a model with `adaptive_budget` lowers
// the compute budget of the requests that set none, down a ladder, instead of letting its queue grow into 503s.
// The decision is a pure function of a window of recent latencies, the queue and the clock, as the batch policy
// is, so that it can be tested with a mock clock.

/// A model's adaptive-budget settings (`adaptive_budget`, `latency_target_ms`, `min_budget` in its config).
public struct AdaptiveBudgetConfig: Sendable, Equatable {
    /// The p99 of queue plus compute time to keep requests under, in seconds.
    public var targetSeconds: Double
    /// The lowest budget the controller applies.
    public var minBudget: ComputeBudget

    /// The rungs below the model's own choice (the gates alone, or its `default_budget`): 0.75, 0.5, 0.35 and
    /// 0.25, those above `minBudget`, then `minBudget`.
    public static let rungs: [Double] = [0.75, 0.5, 0.35, 0.25]

    public init(targetSeconds: Double, minBudget: ComputeBudget) {
        self.targetSeconds = targetSeconds
        self.minBudget = minBudget
    }

    /// The ladder: nil first (the request's own policy), then ever lower caps, ending at `minBudget`.
    public var ladder: [ComputeBudget?] {
        let lower = Self.rungs.filter { $0 > minBudget.value }.compactMap { try? ComputeBudget($0) }
        return [nil] + lower + (minBudget.value < 1 ? [minBudget] : [])
    }
}

/// Recent requests' latencies (queue plus compute, in seconds), each with the time it finished: what the
/// controller watches. Entries older than `span` are dropped as new ones arrive.
public struct LatencyWindow: Sendable {
    public let spanNanoseconds: UInt64
    private(set) var entries: [(at: UInt64, seconds: Double)] = []

    public init(spanNanoseconds: UInt64 = 1_000_000_000) { self.spanNanoseconds = spanNanoseconds }

    public mutating func add(_ seconds: Double, at now: UInt64) {
        entries.append((now, seconds))
        prune(now)
    }

    public mutating func prune(_ now: UInt64) {
        let oldest = now > spanNanoseconds ? now - spanNanoseconds : 0
        if let keep = entries.firstIndex(where: { $0.at >= oldest }) {
            if keep > 0 { entries.removeFirst(keep) }
        } else {
            entries.removeAll()
        }
    }

    /// The latency that `q` of the window's requests stayed under (nearest rank); nil when the window is empty.
    public func quantile(_ q: Double) -> Double? {
        guard !entries.isEmpty else { return nil }
        let sorted = entries.map(\.seconds).sorted()
        let rank = Int((q * Double(sorted.count)).rounded(.up)) - 1
        return sorted[min(max(rank, 0), sorted.count - 1)]
    }
}

/// The controller: which rung of the ladder the model's adaptive requests run at.
///
/// After every batch it looks at the *pressure*, the larger of the window's p95 latency and what the oldest request
/// still queued will see at best (its wait so far plus one batch). Above `lowerAt` × target it steps one rung down,
/// at most once per `cooldown` (long enough for a batch at the new rung to show in the window). Below `raiseAt` ×
/// target, held for `raiseAfter` since the last change, it steps one rung up. The gap between the two thresholds
/// and the longer hold upward are the hysteresis: a rung that keeps the latency between them is kept.
public struct AdaptiveBudget: Sendable, Equatable {
    public let config: AdaptiveBudgetConfig
    public let ladder: [ComputeBudget?]
    /// Fractions of the target.
    public var lowerAt = 0.7, raiseAt = 0.35
    public var cooldownNanoseconds: UInt64 = 200_000_000
    public var raiseAfterNanoseconds: UInt64 = 2_000_000_000
    public private(set) var level = 0
    private var lastChange: UInt64?

    public init(_ config: AdaptiveBudgetConfig) {
        self.config = config
        ladder = config.ladder
    }

    /// The budget adaptive requests run at now: nil at the top rung (their own policy).
    public var budget: ComputeBudget? { ladder[level] }

    /// What the controller saw after a batch.
    public struct Observation: Sendable, Equatable {
        /// p95 of the window's latencies, nil when it is empty.
        public var windowP95: Double?
        /// How long the oldest request still queued has waited; nil when none waits.
        public var oldestWait: Double?
        /// The forward pass of the batch just run.
        public var batchSeconds: Double

        public init(windowP95: Double?, oldestWait: Double?, batchSeconds: Double) {
            self.windowP95 = windowP95
            self.oldestWait = oldestWait
            self.batchSeconds = batchSeconds
        }

        /// The larger of the window's p95 and the oldest queued request's best case.
        public var pressure: Double { max(windowP95 ?? 0, oldestWait.map { $0 + batchSeconds } ?? 0) }
    }

    /// A change of rung.
    public struct Change: Sendable, Equatable {
        public var from: ComputeBudget?, to: ComputeBudget?
        public var pressure: Double
    }

    /// Moves at most one rung for `observation` at `now` (nanoseconds), and says so.
    public mutating func update(_ observation: Observation, now: UInt64) -> Change? {
        let pressure = observation.pressure
        let since = lastChange.map { now >= $0 ? now - $0 : 0 } ?? .max
        let target = config.targetSeconds
        var next = level
        // The cooldown covers at least two batches, so that one at the new rung has finished before the next look.
        let cooldown = max(cooldownNanoseconds, UInt64(2 * observation.batchSeconds * 1e9))
        if pressure > lowerAt * target, level < ladder.count - 1, since >= cooldown {
            next = level + 1
        } else if pressure < raiseAt * target, level > 0, since >= raiseAfterNanoseconds {
            next = level - 1
        }
        guard next != level else { return nil }
        let change = Change(from: ladder[level], to: ladder[next], pressure: pressure)
        level = next
        lastChange = now
        return change
    }
}
