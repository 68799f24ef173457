import ACMCore
import Foundation
import Testing

@testable import ACMServing

private let ms: UInt64 = 1_000_000

/// A 100-ms target, floor 0.25: the ladder auto, 0.75, 0.5, 0.35, 0.25.
private func controller(minBudget: Double = 0.25) -> AdaptiveBudget {
    AdaptiveBudget(AdaptiveBudgetConfig(targetSeconds: 0.1, minBudget: try! ComputeBudget(minBudget)))
}

private func seen(p95: Double?, oldestWait: Double? = nil, batch: Double = 0.01, fill: Double? = nil) -> AdaptiveBudget.Observation {
    AdaptiveBudget.Observation(windowP95: p95, oldestWait: oldestWait, batchSeconds: batch, queueFill: fill)
}

/// A batch of `images` that ran at a rung (the controller's, or `level`) in `seconds`, with low latency.
private func ran(
    _ seconds: Double, images: Int = 32, level: Int? = nil, p95: Double = 0.01
) -> AdaptiveBudget.Observation {
    AdaptiveBudget.Observation(
        windowP95: p95, oldestWait: nil, batchSeconds: seconds, rungImages: images, rungLevel: level)
}

@Suite struct AdaptiveBudgetTests {
    /// Should build the ladder from the rungs above the floor, then the floor; a floor of 1 leaves only auto.
    @Test func laddersEndAtTheFloor() throws {
        #expect(controller().ladder.map { $0?.value } == [nil, 0.75, 0.5, 0.35, 0.25])
        #expect(controller(minBudget: 0.4).ladder.map { $0?.value } == [nil, 0.75, 0.5, 0.4])
        #expect(controller(minBudget: 0.1).ladder.map { $0?.value } == [nil, 0.75, 0.5, 0.35, 0.25, 0.1])
        #expect(controller(minBudget: 1).ladder.map { $0?.value } == [nil])
    }

    /// Should step down one rung when the pressure passes 0.7 of the target, not again within the cooldown, and
    /// again after it while the pressure stays; and stop at the floor.
    @Test func lowersUnderPressureOneRungPerCooldown() {
        var c = controller()
        #expect(c.update(seen(p95: 0.05), now: 1000 * ms) == nil)  // half the target: nothing to do
        let change = c.update(seen(p95: 0.08), now: 1010 * ms)
        #expect(change == AdaptiveBudget.Change(from: nil, to: try! ComputeBudget(0.75), pressure: 0.08))
        #expect(c.update(seen(p95: 0.2), now: 1100 * ms) == nil)  // within the 200-ms cooldown
        #expect(c.update(seen(p95: 0.2), now: 1210 * ms)?.to?.value == 0.5)
        #expect(c.update(seen(p95: 0.2), now: 1420 * ms)?.to?.value == 0.35)
        #expect(c.update(seen(p95: 0.2), now: 1630 * ms)?.to?.value == 0.25)
        #expect(c.update(seen(p95: 0.2), now: 1840 * ms) == nil)  // the floor
        #expect(c.budget?.value == 0.25)
    }

    /// Should read the queue too: an empty window with a request that has waited most of the target is pressure.
    @Test func countsTheOldestQueuedRequest() {
        var c = controller()
        #expect(c.update(seen(p95: nil, oldestWait: 0.065, batch: 0.01), now: 1000 * ms)?.to?.value == 0.75)
    }

    /// Should wait out a cooldown of two batches when batches are longer than the 200-ms minimum.
    @Test func cooldownCoversTwoBatches() {
        var c = controller()
        #expect(c.update(seen(p95: 0.5, batch: 0.3), now: 1000 * ms) != nil)
        #expect(c.update(seen(p95: 0.5, batch: 0.3), now: 1500 * ms) == nil)  // 500 ms < 2 × 300 ms
        #expect(c.update(seen(p95: 0.5, batch: 0.3), now: 1600 * ms)?.to?.value == 0.5)
    }

    /// Should raise one rung only after the pressure has stayed under 0.35 of the target for 2 s since the last
    /// change, and hold in between the thresholds (the hysteresis).
    @Test func raisesAfterAQuietHold() {
        var c = controller()
        _ = c.update(seen(p95: 0.09), now: 1000 * ms)
        _ = c.update(seen(p95: 0.09), now: 1300 * ms)
        #expect(c.budget?.value == 0.5)
        #expect(c.update(seen(p95: 0.05), now: 2500 * ms) == nil)  // between 0.35 and 0.7 of the target: hold
        #expect(c.update(seen(p95: 0.01), now: 3200 * ms) == nil)  // quiet, but under 2 s since the change
        #expect(c.update(seen(p95: 0.01), now: 3400 * ms)?.to?.value == 0.75)
        #expect(c.update(seen(p95: 0.01), now: 4000 * ms) == nil)
        #expect(c.update(seen(p95: nil), now: 5500 * ms)?.to == nil)  // idle: back to the requests' own
        #expect(c.level == 0 && c.update(seen(p95: nil), now: 9000 * ms) == nil)
    }

    /// Should read how full the queue is: a step down past half full with the latency still low, straight to the
    /// floor at three quarters (cooldown or not), and no step up until it is under a quarter full.
    @Test func readsTheQueuesFill() {
        var c = controller()
        #expect(c.update(seen(p95: 0.01, fill: 0.5), now: 1000 * ms) == nil)  // half full: not more than half
        #expect(c.update(seen(p95: 0.01, fill: 0.55), now: 1010 * ms)?.to?.value == 0.75)
        #expect(c.update(seen(p95: 0.01, fill: 0.6), now: 1100 * ms) == nil)  // the cooldown
        let jump = c.update(seen(p95: 0.01, fill: 0.8), now: 1150 * ms)  // about to shed: the floor, at once
        #expect(jump == AdaptiveBudget.Change(from: try! ComputeBudget(0.75), to: try! ComputeBudget(0.25), pressure: 0.01, queueFill: 0.8))
        #expect(c.update(seen(p95: 0.01, fill: 0.3), now: 5000 * ms) == nil)  // quiet latency, but the queue is not
        #expect(c.update(seen(p95: 0.01, fill: 0.2), now: 5100 * ms)?.to?.value == 0.35)
    }

    /// Should double the hold before the next step up each time one is taken back, up to 16 s, and reset it after
    /// a step up that held.
    @Test func backsOffAfterAFailedStepUp() {
        var c = controller()
        var t: UInt64 = 1000 * ms
        for _ in 0..<4 { _ = c.update(seen(p95: 0.2), now: t); t += 300 * ms }  // down to the floor
        #expect(c.budget?.value == 0.25 && c.raiseHold == 2000 * ms)
        t += 2000 * ms
        #expect(c.update(seen(p95: 0.01), now: t)?.to?.value == 0.35)  // a probe
        t += 300 * ms
        #expect(c.update(seen(p95: 0.09), now: t)?.to?.value == 0.25)  // taken back
        #expect(c.raiseHold == 4000 * ms)
        #expect(c.update(seen(p95: 0.01), now: t + 3900 * ms) == nil)  // the longer hold
        t += 4000 * ms
        #expect(c.update(seen(p95: 0.01), now: t)?.to?.value == 0.35)
        for _ in 0..<4 {
            t += 300 * ms
            _ = c.update(seen(p95: 0.09), now: t)  // taken back again (and again, the next times)
            t += c.raiseHold
            _ = c.update(seen(p95: 0.01), now: t)
        }
        #expect(c.raiseHold == 16000 * ms)  // the cap
        t += 16000 * ms
        #expect(c.update(seen(p95: 0.01), now: t)?.to?.value == 0.5)  // the step up held: another
        #expect(c.raiseHold == 2000 * ms)
    }

    /// Should learn each rung's seconds per image from the batches that ran at it (their median, so that one slow
    /// batch does not move it), and not from batches with other requests in them.
    @Test func learnsWhatEachRungCosts() {
        var c = controller()
        for (i, seconds) in [0.032, 0.032, 0.5, 0.032].enumerated() {  // the third paid for new kernels
            _ = c.update(ran(seconds), now: UInt64(1000 + i) * ms)
        }
        _ = c.update(ran(9, images: 0), now: 1010 * ms)
        #expect(c.costPerImage[0] == 0.001 && c.costPerImage[1...].allSatisfy { $0 == nil })
        #expect(c.utilization(at: 0, arrivalRate: 500) == 0.5 && c.utilization(at: 1, arrivalRate: 500) == nil)
        #expect(c.admissibleImages(batchImages: 32) == nil)  // the floor has not run
    }

    /// Should not take one batch for a rung's cost: a server's first batch at a rung pays for its kernels, and had
    /// that cost stuck, a rung left under load would never be tried again. Two batches give the cheaper of them.
    @Test func oneBatchIsNoMeasure() {
        var c = controller()
        _ = c.update(ran(0.068), now: 1000 * ms)
        #expect(c.costPerImage[0] == nil && c.utilization(at: 0, arrivalRate: 500) == nil)
        _ = c.update(ran(0.032), now: 1001 * ms)
        #expect(c.costPerImage[0] == 0.001)
    }

    /// Should learn a rung's cost from batches of requests that set its budget themselves (`rungLevel`), at
    /// whatever rung the controller is.
    @Test func learnsFromRequestsThatSetARungsBudget() {
        var c = controller()
        for i in 0..<3 {
            _ = c.update(ran(0.0112, level: 4), now: UInt64(1000 + i) * ms)
        }
        #expect(c.level == 0 && c.costPerImage[0] == nil && c.costPerImage[4] == 0.00035)
        #expect(c.admissibleImages(batchImages: 32) == Int(0.9 * 0.1 / 0.00035) - 32)
    }

    /// Should not probe a rung whose cost says it cannot carry the load, however long the latency stays low; and,
    /// once the load falls, step up after the plain 2-s hold even after failed probes.
    @Test func stepsUpOnlyToARungThatFits() {
        var c = controller()
        var t: UInt64 = 1000 * ms
        func batch(p95: Double, cost: Double, rate: Double, fill: Double = 0) -> AdaptiveBudget.Change? {
            defer { t += 100 * ms }
            return c.update(AdaptiveBudget.Observation(
                windowP95: p95, oldestWait: p95 > 0.07 ? p95 : nil, batchSeconds: cost * 32, queueFill: fill, rungImages: 32,
                arrivalRate: rate), now: t)
        }
        // Each rung down costs less: auto 1 ms an image, 0.75 0.8, 0.5 0.6, 0.35 0.45, 0.25 0.35.
        let costs = [0.001, 0.0008, 0.0006, 0.00045, 0.00035]
        for level in 0..<4 {
            #expect(c.level == level)
            _ = batch(p95: 0.01, cost: costs[level], rate: 500)
            t += 300 * ms
            #expect(batch(p95: 0.09, cost: costs[level], rate: 500)?.to == c.ladder[level + 1])
        }
        _ = batch(p95: 0.01, cost: costs[4], rate: 2000)  // the floor: 0.7 busy at 2,000 images/s
        #expect(c.admissibleImages(batchImages: 32) == nil)  // one batch is no measure
        _ = batch(p95: 0.01, cost: costs[4], rate: 2000)
        #expect(c.admissibleImages(batchImages: 32) == Int(0.9 * 0.1 / 0.00035) - 32)  // admitAt of the 100-ms target
        // 0.35 would be 0.9 busy (more than 0.75): no step up, 20 s of low latency or not.
        for _ in 0..<200 { #expect(batch(p95: 0.01, cost: costs[4], rate: 2000) == nil) }
        // The load falls to 1,200 images/s: 0.35 is then 0.54 busy, 0.5 0.72, 0.75 0.96: up to 0.5, 2 s apart.
        let up1 = batch(p95: 0.01, cost: costs[4], rate: 1200)
        #expect(up1?.to?.value == 0.35 && up1?.predictedUtilization.map { abs($0 - 0.54) < 1e-9 } == true)
        for _ in 0..<19 { #expect(batch(p95: 0.01, cost: costs[3], rate: 1200) == nil) }
        #expect(batch(p95: 0.01, cost: costs[3], rate: 1200)?.to?.value == 0.5)
        for _ in 0..<40 { #expect(batch(p95: 0.01, cost: costs[2], rate: 1200) == nil) }
    }

    /// Should step down past the rungs known not to fit, to the highest that does, in one change; and step down
    /// when the rung it is at cannot keep up, before the latency shows it.
    @Test func stepsDownToTheHighestRungThatFits() {
        var c = controller()
        var t: UInt64 = 1000 * ms
        let costs = [0.001, 0.0008, 0.0006, 0.00045, 0.00035]
        for level in 0..<4 {  // learn every rung's cost on the way down, two batches each
            _ = c.update(ran(costs[level] * 32), now: t)
            _ = c.update(ran(costs[level] * 32, p95: 0.09), now: t)
            t += 300 * ms
        }
        for _ in 0..<2 {
            _ = c.update(ran(costs[4] * 32), now: t)
        }
        while c.level > 0 {  // back up at a light load
            t += 2000 * ms
            _ = c.update(AdaptiveBudget.Observation(windowP95: 0.01, oldestWait: nil, batchSeconds: 0.01, arrivalRate: 100), now: t)
        }
        // 1,500 images/s: auto 1.5 busy, 0.75 1.2, 0.5 0.9, 0.35 0.675: straight to 0.35, with the latency still low.
        t += 2000 * ms
        let down = c.update(AdaptiveBudget.Observation(
            windowP95: 0.01, oldestWait: nil, batchSeconds: 0.032, rungImages: 32, arrivalRate: 1500), now: t)
        #expect(down?.from == nil && down?.to?.value == 0.35)
    }

    /// Should hold when the window's latencies are high but the rung is known to fit the load and the queue is
    /// short and fresh (a stall that has passed); step down when the queue's oldest request is late, or when the
    /// rung's cost is not known.
    @Test func holdsThroughAPassedStall() {
        var c = controller()
        for _ in 0..<2 {
            _ = c.update(ran(0.016), now: 1000 * ms)
        }
        func seenAfterStall(oldestWait: Double?, rate: Double?) -> AdaptiveBudget.Observation {
            AdaptiveBudget.Observation(windowP95: 0.09, oldestWait: oldestWait, batchSeconds: 0.004, queueFill: 0.05, arrivalRate: rate)
        }
        #expect(c.update(seenAfterStall(oldestWait: 0.002, rate: 1000), now: 1300 * ms) == nil)  // 0.5 busy
        #expect(c.update(seenAfterStall(oldestWait: 0.08, rate: 1000), now: 1600 * ms)?.to?.value == 0.75)  // late
        var d = controller()
        #expect(d.update(seenAfterStall(oldestWait: 0.002, rate: 1000), now: 1000 * ms)?.to?.value == 0.75)  // no cost
    }

    /// Should count the images offered over the last second, in eighths of a second, whether or not anything
    /// asked in between.
    @Test func arrivalRateCountsTheLastSecond() {
        var r = ArrivalRate()
        for i in 0..<1000 { r.add(2, at: 10_000 * ms + UInt64(i) * ms) }  // 2,000 images/s for a second
        #expect(abs(r.perSecond(at: 11_000 * ms) - 2000) < 300)
        #expect(r.perSecond(at: 11_500 * ms) < 1100)  // half of it has left the window
        #expect(r.perSecond(at: 13_000 * ms) == 0)
        r.add(10, at: 20_000 * ms)
        #expect(r.perSecond(at: 20_000 * ms) == 10 / 0.875)
    }

    /// Should keep the window's latencies of the last second only, and give nearest-rank quantiles.
    @Test func windowKeepsOneSecond() {
        var w = LatencyWindow()
        #expect(w.quantile(0.95) == nil)
        for i in 1...100 { w.add(Double(i) / 1000, at: 1000 * ms + UInt64(i) * ms) }
        #expect(w.quantile(0.95) == 0.095 && w.quantile(0.5) == 0.05)
        w.add(0.5, at: 2050 * ms)  // drops the first 49
        #expect(w.quantile(0) == 0.05 && w.quantile(1) == 0.5)
        w.prune(5000 * ms)
        #expect(w.quantile(0.5) == nil)
    }
}

/// A stand-in engine: records each batch's policies and takes `seconds(policy)` of a manual clock per batch.
private final class PolicyEngine: BatchEngine, @unchecked Sendable {
    static let itemName = "items"
    let clock: SteppedClock
    let lock = NSLock()
    private(set) var batches: [[LearnerPolicy]] = []

    init(clock: SteppedClock) { self.clock = clock }

    func problem(with input: Int, count: Int) -> String? { nil }

    func run(_ inputs: [Int], counts: [Int], policies: [LearnerPolicy]) throws -> EngineBatch<Int> {
        lock.withLock { batches.append(policies) }
        // A batch at full compute takes 60 ms of the test's clock, at budget β, 60·β.
        let fraction = policies.map { p -> Double in if case let .cap(b) = p { return b.value } else { return 1 } }.max() ?? 1
        clock.advance(UInt64(60 * fraction) * ms)
        return EngineBatch(outputs: inputs)
    }
}

/// A clock that moves only when told.
private final class SteppedClock: ServingClock, @unchecked Sendable {
    private let lock = NSLock()
    private var time: UInt64 = 1_000 * ms
    func now() -> UInt64 { lock.withLock { time } }
    func advance(_ ns: UInt64) { lock.withLock { time += ns } }
}

/// Each job's result by id.
private final class ResultBox: @unchecked Sendable {
    private let lock = NSLock()
    private var results: [Int: RunResult<Int>] = [:]
    func set(_ i: Int, _ r: RunResult<Int>) { lock.withLock { results[i] = r } }
    var all: [Int: RunResult<Int>] { lock.withLock { results } }
}

/// Records the adaptive budget's reports.
private final class AdaptiveObserver: RunnerObserver, @unchecked Sendable {
    let lock = NSLock()
    private(set) var changes: [AdaptiveBudget.Change] = []
    private(set) var lowered = 0
    func batchExecuted(
        model: String, images: Int, requests: Int, computeSeconds: Double, learnerHistogram: [[Int]], acmPaths: [String]
    ) {}
    func requestFinished(model: String, queueSeconds: Double, timedOut: Bool) {}
    func adaptiveBudget(
        model: String, budget: ComputeBudget?, seconds: Double, loweredRequests: Int, change: AdaptiveBudget.Change?
    ) {
        lock.withLock {
            lowered += loweredRequests
            if let change { changes.append(change) }
        }
    }
}

@Suite struct AdaptiveRunnerTests {
    /// Should measure a rung's cost from batches of requests that set its budget themselves, and only those: the
    /// floor's cost bounds the queue.
    @Test func requestsAtARungsBudgetMeasureIt() throws {
        let clock = SteppedClock()
        let runner = BatchRunner(
            name: "m", engine: PolicyEngine(clock: clock),
            config: BatcherConfig(maxBatchSize: 4, maxQueueDelayMicroseconds: 0, maxQueueSize: 0), clock: clock,
            adaptive: AdaptiveBudgetConfig(targetSeconds: 0.1, minBudget: try ComputeBudget(0.25)))
        defer { runner.shutdown() }
        func runAlone(_ budget: Double) throws {
            let done = DispatchSemaphore(value: 0)
            let policy = LearnerPolicy.cap(try ComputeBudget(budget))
            let job = BatchJob<Int, Int>(input: 0, count: 4, policy: policy, adaptive: false) { _ in done.signal() }
            #expect(runner.submit(job) == .accepted)
            #expect(done.wait(timeout: .now() + 10) == .success)
        }
        for _ in 0..<3 { try runAlone(0.3) }  // not a rung
        #expect(runner.admissibleQueueImages == nil)
        try runAlone(0.25)
        #expect(runner.admissibleQueueImages == nil)  // one batch is no measure
        try runAlone(0.25)
        // 15 ms a batch of 4 at the floor: 3.75 ms an image, 0.9 of the 100-ms target for 24, less a batch in flight.
        #expect(runner.admissibleQueueImages == 20)
    }

    /// Should run adaptive jobs at the controller's rung once the queue backs up, never above a job's own cap,
    /// and leave jobs with their own budget alone; each lowered result says the budget it ran at.
    @Test func lowersAdaptiveJobsOnly() throws {
        let clock = SteppedClock()
        let engine = PolicyEngine(clock: clock)
        let observer = AdaptiveObserver()
        let runner = BatchRunner(
            name: "m", engine: engine, config: BatcherConfig(maxBatchSize: 4, maxQueueDelayMicroseconds: 0, maxQueueSize: 0),
            clock: clock, observer: observer,
            adaptive: AdaptiveBudgetConfig(targetSeconds: 0.1, minBudget: try ComputeBudget(0.25)))
        defer { runner.shutdown() }
        let box = ResultBox()
        let group = DispatchGroup()
        // 40 requests queued at once: each batch of 4 takes 60 ms, so the later ones wait far past the target.
        for i in 0..<40 {
            group.enter()
            let policy: LearnerPolicy = i % 4 == 3 ? .cap(try ComputeBudget(0.9)) : (i % 4 == 2 ? .cap(try ComputeBudget(0.3)) : .auto)
            let job = BatchJob<Int, Int>(input: i, count: 1, policy: policy, adaptive: i % 4 != 3) { outcome in
                if case let .success(r) = outcome { box.set(i, r) }
                group.leave()
            }
            #expect(runner.submit(job) == .accepted)
        }
        #expect(group.wait(timeout: .now() + 30) == .success)
        let lowered = observer.lock.withLock { observer.changes }
        #expect(!lowered.isEmpty && lowered.allSatisfy { ($0.to?.value ?? 1) < ($0.from?.value ?? 1) })
        let results = box.all
        do {
            #expect(results.count == 40)
            // The first batch runs before any change: job 0 (the first queued, so in it) as it came. (How many more
            // joined it depends on how fast the loop thread woke.)
            #expect(results[0]?.loweredBudget == nil)
            let last = results[36]!.loweredBudget
            #expect(last != nil && last!.value < 1)
            for (i, r) in results {
                if i % 4 == 3 { #expect(r.loweredBudget == nil) }  // its own 0.9: not adaptive
                if i % 4 == 2, let b = r.loweredBudget { #expect(b.value < 0.3) }  // never above its own 0.3
            }
        }
        let policies = engine.lock.withLock { engine.batches }.flatMap { $0 }
        #expect(policies.contains(.cap(try ComputeBudget(0.9))))
        #expect(observer.lock.withLock { observer.lowered } == results.values.filter { $0.loweredBudget != nil }.count)
    }
}
