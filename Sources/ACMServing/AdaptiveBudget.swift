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

/// Images offered to a runner per second (accepted or refused), over the last second: counted in eighths of a second,
/// so that the rate is right whether or not batches ran meanwhile.
public struct ArrivalRate: Sendable {
    static let slots = 8
    static let slotNanoseconds: UInt64 = 125_000_000
    private var counts = [Int](repeating: 0, count: slots)
    /// The slot (clock time / `slotNanoseconds`) of the newest count.
    private var newest: UInt64 = 0

    public init() {}

    public mutating func add(_ images: Int, at now: UInt64) {
        advance(to: now)
        counts[Int(newest % UInt64(Self.slots))] += images
    }

    /// Images per second: the counts of the current slot and the seven before it, over the time they span.
    public mutating func perSecond(at now: UInt64) -> Double {
        advance(to: now)
        let span = Double(Self.slots - 1) * Double(Self.slotNanoseconds) + Double(now % Self.slotNanoseconds)
        return Double(counts.reduce(0, +)) / (span / 1e9)
    }

    private mutating func advance(to now: UInt64) {
        let slot = now / Self.slotNanoseconds
        guard slot > newest else { return }
        for i in 1...min(slot - newest, UInt64(Self.slots)) { counts[Int((newest + i) % UInt64(Self.slots))] = 0 }
        newest = slot
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
///
/// It also learns what each rung costs: the compute seconds per image of the batches that ran at it (all of whose
/// requests were adaptive, or all of which set that rung's budget themselves), and, given the rate at which images
/// arrive (those refused included), predicts how busy the loop would be at another rung. A step up to a rung whose
/// cost it knows is taken only when that rung would keep the loop at most `raiseAtUtilization` busy, and then after
/// the plain `raiseAfterNanoseconds`, however many probes failed before: under an overload the rung above cannot
/// carry, it is never tried; once the load falls, the budget climbs back as soon as the rung above fits. A step down
/// goes straight to the highest known rung that fits under `lowerToUtilization`, rather than one rung per cooldown.
/// Rungs it has not seen run are probed as before.
public struct AdaptiveBudget: Sendable, Equatable {
    public let config: AdaptiveBudgetConfig
    public let ladder: [ComputeBudget?]
    /// Fractions of the target.
    public var lowerAt = 0.7, raiseAt = 0.35
    /// The fraction of the target that the queue's images may take to run at the floor (`admissibleImages`).
    public var admitAt = 0.9
    /// Fractions of the queue's capacity.
    public var lowerAtFill = 0.5, raiseAtFill = 0.25, floorAtFill = 0.75
    public var cooldownNanoseconds: UInt64 = 200_000_000
    public var raiseAfterNanoseconds: UInt64 = 2_000_000_000
    public var maxRaiseAfterNanoseconds: UInt64 = 16_000_000_000
    /// Predicted busy fractions of the loop (arrival rate × a rung's seconds per image): the most a step up may
    /// lead to, and what a step down aims under.
    public var raiseAtUtilization = 0.75, lowerToUtilization = 0.85
    public private(set) var level = 0
    /// Each rung's compute seconds per image: the median of its last `costSamples` batches' (a batch that paid
    /// for new kernels or buffers does not move it; of an even count, the lower of the middle two); nil until two
    /// have run. One batch alone is no measure: a server's first batch at a rung pays for its kernels (68 ms for
    /// 32 images that `acm-bench model` runs in 18-22), and a rung the controller then left under load would keep
    /// that cost and never be tried again.
    public var costPerImage: [Double?] { ladder.indices.map { cost(at: $0) } }
    static let costSamples = 9, minCostSamples = 2
    private var recentCosts: [[Double]]
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
        recentCosts = Array(repeating: [], count: ladder.count)
    }

    private func cost(at level: Int) -> Double? {
        let costs = recentCosts[level]
        return costs.count < Self.minCostSamples ? nil : costs.sorted()[(costs.count - 1) / 2]
    }

    /// How busy the loop would be at `level`, at `arrivalRate` images per second; nil where either is unknown.
    public func utilization(at level: Int, arrivalRate: Double?) -> Double? {
        guard let arrivalRate, let cost = cost(at: level) else { return nil }
        return arrivalRate * cost
    }

    /// How many images the queue may hold so that the last of them, run at the floor, still finishes within
    /// `admitAt` of the target behind a batch of `batchImages` in flight (the rest of the target is for what the
    /// batches' compute time does not show: the HTTP work on the same cores, the batching delay); nil until the floor
    /// has run. The queue is then bounded by time, not by a count that may hold less (or more) than the target's
    /// worth: a request is refused only when even the floor could not run it in time.
    public func admissibleImages(batchImages: Int) -> Int? {
        guard let cost = cost(at: ladder.count - 1), cost > 0 else { return nil }
        let images = admitAt * config.targetSeconds / cost
        return images >= Double(Int.max / 2) ? Int.max / 2 : max(batchImages, Int(images) - batchImages)
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
        /// Images in the batch just run, when all of its requests ran at one rung's policy (0: not a measure of a
        /// rung's cost).
        public var rungImages: Int
        /// The rung those images ran at, when not the controller's own: a batch of requests that set that rung's
        /// budget themselves measures its cost as well as one the controller lowered.
        public var rungLevel: Int?
        /// Images arriving per second, refused ones included, over the last second or so; nil when not measured.
        public var arrivalRate: Double?

        public init(
            windowP95: Double?, oldestWait: Double?, batchSeconds: Double, queueFill: Double? = nil,
            rungImages: Int = 0, rungLevel: Int? = nil, arrivalRate: Double? = nil
        ) {
            self.windowP95 = windowP95
            self.oldestWait = oldestWait
            self.batchSeconds = batchSeconds
            self.queueFill = queueFill
            self.rungImages = rungImages
            self.rungLevel = rungLevel
            self.arrivalRate = arrivalRate
        }

        /// The larger of the window's p95 and the oldest queued request's best case.
        public var pressure: Double { max(windowP95 ?? 0, oldestWait.map { $0 + batchSeconds } ?? 0) }
    }

    /// A change of rung.
    public struct Change: Sendable, Equatable {
        public var from: ComputeBudget?, to: ComputeBudget?
        public var pressure: Double
        public var queueFill: Double? = nil
        /// The loop's predicted busy fraction at the new rung, when the change was decided by it.
        public var predictedUtilization: Double? = nil
        /// Images arriving per second, and the two rungs' seconds per image, where known: what the prediction
        /// read, for the log.
        public var arrivalRate: Double? = nil
        public var fromCost: Double? = nil, toCost: Double? = nil
    }

    /// Whether high latencies in the window are a stall that has passed rather than load: the rung is known to
    /// fit the load (at most `lowerToUtilization` busy), the queue is under `raiseAtFill` and its oldest request is
    /// within `lowerAt` of the target. One slow batch would otherwise keep the window's p95 up for a second and
    /// step the budget down a rung every cooldown meanwhile.
    func passing(_ observation: Observation) -> Bool {
        guard let u = utilization(at: level, arrivalRate: observation.arrivalRate), u <= lowerToUtilization else {
            return false
        }
        let waiting = observation.oldestWait.map { $0 + observation.batchSeconds } ?? 0
        return (observation.queueFill ?? 0) < raiseAtFill && waiting <= lowerAt * config.targetSeconds
    }

    /// Moves at most one rung for `observation` at `now` (nanoseconds), and says so.
    public mutating func update(_ observation: Observation, now: UInt64) -> Change? {
        if observation.rungImages > 0 {
            let measured = observation.rungLevel.map { min(max($0, 0), ladder.count - 1) } ?? level
            if recentCosts[measured].count == Self.costSamples { recentCosts[measured].removeFirst() }
            recentCosts[measured].append(observation.batchSeconds / Double(observation.rungImages))
        }
        let pressure = observation.pressure
        let since = lastChange.map { now >= $0 ? now - $0 : 0 } ?? .max
        let target = config.targetSeconds
        let floor = ladder.count - 1
        var next = level
        var predicted: Double? = nil
        // The cooldown covers at least two batches, so that one at the new rung has finished before the next look.
        let cooldown = max(cooldownNanoseconds, UInt64(2 * observation.batchSeconds * 1e9))
        let fill = observation.queueFill ?? 0
        if fill >= floorAtFill, level < floor {
            next = floor
        } else if (pressure > lowerAt * target && !passing(observation)) || fill > lowerAtFill
            || utilization(at: level, arrivalRate: observation.arrivalRate).map({ $0 > 1 }) == true,
            level < floor, since >= cooldown
        {
            next = level + 1
            // Past rungs known not to fit, to the highest that does (or the floor), in one step.
            let rate = observation.arrivalRate
            while next < floor, let u = utilization(at: next, arrivalRate: rate), u > lowerToUtilization { next += 1 }
            predicted = utilization(at: next, arrivalRate: rate)
        } else if pressure < raiseAt * target, fill < raiseAtFill, level > 0 {
            if let u = utilization(at: level - 1, arrivalRate: observation.arrivalRate) {
                if u <= raiseAtUtilization, since >= raiseAfterNanoseconds {
                    next = level - 1
                    predicted = u
                }
            } else if since >= raiseHold {
                next = level - 1
            }
        }
        guard next != level else { return nil }
        if next > level {
            if lastWasRaise { failedRaises = min(failedRaises + 1, 16) }
            lastWasRaise = false
        } else {
            if lastWasRaise { failedRaises = 0 }
            lastWasRaise = true
        }
        let change = Change(
            from: ladder[level], to: ladder[next], pressure: pressure, queueFill: observation.queueFill,
            predictedUtilization: predicted, arrivalRate: observation.arrivalRate, fromCost: cost(at: level),
            toCost: cost(at: next))
        level = next
        lastChange = now
        return change
    }
}
