import Testing

@testable import ACMServing

/// The queue as the runner's loop sees it, with times as plain numbers and no threads: jobs are names.
@Suite struct BatchQueueTests {
    private static let ms: UInt64 = 1_000_000

    /// A queue of 8 images per batch, a 1 ms delay and room for `size` waiting jobs.
    private func queue(size: Int = 3) -> BatchQueue<String> {
        BatchQueue(BatcherConfig(maxBatchSize: 8, maxQueueDelayMicroseconds: 1_000, maxQueueSize: size))
    }

    /// The jobs of a `.run`, or nil for any other action.
    private func ran(_ action: BatchQueue<String>.Action) -> [String]? {
        if case let .run(entries) = action { return entries.map(\.job) }
        return nil
    }

    /// Should hold a young, small batch until the oldest job's delay is up, then run the jobs in order.
    @Test func waitsForTheDelayThenRunsInOrder() {
        var q = queue()
        #expect(q.submit("a", images: 1, timeoutNanoseconds: nil, problem: nil, now: 0) == .accepted)
        #expect(q.submit("b", images: 2, timeoutNanoseconds: nil, problem: nil, now: Self.ms / 2) == .accepted)
        guard case let .wait(until) = q.next(now: Self.ms / 2) else { Issue.record("expected a wait"); return }
        #expect(until == Self.ms)
        #expect(ran(q.next(now: Self.ms)) == ["a", "b"])
        #expect(q.count == 0)
        guard case .idle = q.next(now: Self.ms) else { Issue.record("expected idle"); return }
    }

    /// Should refuse a well-formed job past maxQueueSize but still take a malformed one, and answer the
    /// malformed ones before anything runs.
    @Test func fullQueueRefusesAndMalformedGoFirst() {
        var q = queue(size: 2)
        for name in ["a", "b"] { #expect(q.submit(name, images: 4, timeoutNanoseconds: nil, problem: nil, now: 0) == .accepted) }
        #expect(q.submit("c", images: 1, timeoutNanoseconds: nil, problem: nil, now: 0) == .queueFull)
        #expect(q.submit("bad", images: 1, timeoutNanoseconds: nil, problem: "no input", now: 0) == .accepted)
        guard case let .reject(rejected) = q.next(now: 0) else { Issue.record("expected a reject"); return }
        #expect(rejected.map(\.job) == ["bad"] && rejected.map(\.problem) == ["no input"])
        // 4 + 4 images fill the batch: it runs without waiting
        #expect(ran(q.next(now: 0)) == ["a", "b"])
    }

    /// Should hold at most `maxImages` images (the adaptive budget's limit from its latency target), but always
    /// take a job into an empty queue; and count the images that leave by running or expiring.
    @Test func imageLimitRefusesBeyondIt() {
        var q = queue(size: 100)
        #expect(q.submit("big", images: 9, timeoutNanoseconds: nil, problem: nil, now: 0, maxImages: 6) == .accepted)
        #expect(q.submit("a", images: 1, timeoutNanoseconds: nil, problem: nil, now: 0, maxImages: 6) == .queueFull)
        #expect(q.images == 9 && ran(q.next(now: 0)) == ["big"] && q.images == 0)
        #expect(q.submit("a", images: 3, timeoutNanoseconds: 10, problem: nil, now: 0, maxImages: 6) == .accepted)
        #expect(q.submit("b", images: 3, timeoutNanoseconds: nil, problem: nil, now: 0, maxImages: 6) == .accepted)
        #expect(q.submit("c", images: 1, timeoutNanoseconds: nil, problem: nil, now: 0, maxImages: 6) == .queueFull)
        #expect(q.submit("c", images: 1, timeoutNanoseconds: nil, problem: nil, now: 0) == .accepted)  // no limit
        guard case .expire = q.next(now: 20) else { Issue.record("expected an expiry"); return }
        #expect(q.images == 4)
    }

    /// Should drop a job whose timeout passed, answering it at the time it was found, and run the rest.
    @Test func expiresTimedOutJobs() {
        var q = queue()
        _ = q.submit("slow", images: 1, timeoutNanoseconds: 10, problem: nil, now: 0)
        _ = q.submit("patient", images: 1, timeoutNanoseconds: nil, problem: nil, now: 0)
        guard case let .expire(expired, now) = q.next(now: 20) else { Issue.record("expected an expiry"); return }
        #expect(expired.map(\.job) == ["slow"] && now == 20)
        #expect(q.count == 1)
        #expect(ran(q.next(now: Self.ms)) == ["patient"])
    }

    /// Should, once closed, refuse new jobs, run the waiting ones without their delay, then finish.
    @Test func closeDrainsThenFinishes() {
        var q = queue()
        _ = q.submit("a", images: 1, timeoutNanoseconds: nil, problem: nil, now: 0)
        q.close()
        #expect(!q.isAccepting)
        #expect(q.submit("late", images: 1, timeoutNanoseconds: nil, problem: nil, now: 0) == .shuttingDown)
        #expect(ran(q.next(now: 0)) == ["a"])
        guard case .finished = q.next(now: 0) else { Issue.record("expected finished"); return }
    }

    /// Should answer every waiting job `.abandon` at the shutdown deadline, refuse new ones, and then finish.
    @Test func abandonsWaitingJobs() {
        var q = queue()
        for name in ["a", "b"] { _ = q.submit(name, images: 1, timeoutNanoseconds: nil, problem: nil, now: 0) }
        #expect(q.abandonWaiting() == 2)
        #expect(q.submit("late", images: 1, timeoutNanoseconds: nil, problem: nil, now: 0) == .shuttingDown)
        guard case let .abandon(entries) = q.next(now: 0) else { Issue.record("expected an abandon"); return }
        #expect(entries.map(\.job) == ["a", "b"] && q.count == 0)
        guard case .finished = q.next(now: 0) else { Issue.record("expected finished"); return }
    }
}
