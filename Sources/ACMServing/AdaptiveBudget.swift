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
/// still queued will see at best (its wait so far plus one batch), and at how full the queue is. With the pressure
/// above `lowerAt` × target, or the queue more than `lowerAtFill` full, it steps one rung down, at most once per
/// `cooldown` (long enough for a batch at the new rung to show in the window): a queue that fills before the
/// latency reaches the target (`max_queue_size` holding less work than the target's worth) would otherwise answer
/// 503s while the latency still looked fine. A queue `floorAtFill` full is about to answer 503s: the controller goes
/// straight to the floor then, cooldown or not. With the pressure below `raiseAt` × target and the queue less than
/// `raiseAtFill` full, held for `raiseHold` since the last change, it steps one rung up. The gap between the two thresholds
/// and the longer hold upward are the hysteresis: a rung that keeps the latency between them is kept. A step up
/// that has to be taken back (the next change is a step down) doubles the hold before the next try, up to
/// `maxRaiseAfterNanoseconds`, and one that holds (the next change is another step up) resets it: under a steady
/// overload that the lower rung just carries, the controller stops probing the rung above every two seconds,
/// each probe a burst of queueing.
public struct AdaptiveBudget: Sendable, Equatable {
    public let config: AdaptiveBudgetConfig
    public let ladder: [ComputeBudget?]
    /// Fractions of the target.
    public var lowerAt = 0.7, raiseAt = 0.35
    /// Fractions of the queue's capacity.
    public var lowerAtFill = 0.5, raiseAtFill = 0.25, floorAtFill = 0.75
    public var cooldownNanoseconds: UInt64 = 200_000_000
    public var raiseAfterNanoseconds: UInt64 = 2_000_000_000
    public var maxRaiseAfterNanoseconds: UInt64 = 16_000_000_000
    public private(set) var level = 0
    private var lastChange: UInt64?
    /// Steps up taken back in a row, each doubling the hold before the next; whether the last change was a step up.
    private var failedRaises = 0
    private var lastWasRaise = false

    /// How long the pressure must stay low, since the last change, before a step up.
    public var raiseHold: UInt64 {
        let cap = max(maxRaiseAfterNanoseconds, raiseAfterNanoseconds)
        return raiseAfterNanoseconds > cap >> failedRaises ? cap : raiseAfterNanoseconds << failedRaises
    }

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
        /// The requests waiting over the queue's capacity (`max_queue_size`); nil when it has none.
        public var queueFill: Double?

        public init(windowP95: Double?, oldestWait: Double?, batchSeconds: Double, queueFill: Double? = nil) {
            self.windowP95 = windowP95
            self.oldestWait = oldestWait
            self.batchSeconds = batchSeconds
            self.queueFill = queueFill
        }

        /// The larger of the window's p95 and the oldest queued request's best case.
        public var pressure: Double { max(windowP95 ?? 0, oldestWait.map { $0 + batchSeconds } ?? 0) }
    }

    /// A change of rung.
    public struct Change: Sendable, Equatable {
        public var from: ComputeBudget?, to: ComputeBudget?
        public var pressure: Double
        public var queueFill: Double? = nil
    }

    /// Moves at most one rung for `observation` at `now` (nanoseconds), and says so.
    public mutating func update(_ observation: Observation, now: UInt64) -> Change? {
        let pressure = observation.pressure
        let since = lastChange.map { now >= $0 ? now - $0 : 0 } ?? .max
        let target = config.targetSeconds
        var next = level
        // The cooldown covers at least two batches, so that one at the new rung has finished before the next look.
        let cooldown = max(cooldownNanoseconds, UInt64(2 * observation.batchSeconds * 1e9))
        let fill = observation.queueFill ?? 0
        if fill >= floorAtFill, level < ladder.count - 1 {
            next = ladder.count - 1
        } else if pressure > lowerAt * target || fill > lowerAtFill, level < ladder.count - 1, since >= cooldown {
            next = level + 1
        } else if pressure < raiseAt * target, fill < raiseAtFill, level > 0, since >= raiseHold {
            next = level - 1
        }
        guard next != level else { return nil }
        if next > level {
            if lastWasRaise { failedRaises = min(failedRaises + 1, 16) }
            lastWasRaise = false
        } else {
            if lastWasRaise { failedRaises = 0 }
            lastWasRaise = true
        }
        let change = Change(from: ladder[level], to: ladder[next], pressure: pressure, queueFill: observation.queueFill)
        level = next
        lastChange = now
        return change
    }
}
