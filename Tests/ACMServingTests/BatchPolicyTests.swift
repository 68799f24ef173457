import Testing

@testable import ACMServing

/// 1 ms in nanoseconds, the queue delay of most tests below.
private let ms: UInt64 = 1_000_000

/// A policy of 8 images per batch and a 1 ms queue delay, unless told otherwise.
private func policy(maxBatchSize: Int = 8, delayMicroseconds: Int = 1_000) -> BatchPolicy {
    BatchPolicy(
        BatcherConfig(maxBatchSize: maxBatchSize, maxQueueDelayMicroseconds: delayMicroseconds, maxQueueSize: 16))
}

/// A queued request of `images` images, queued at `at` ns.
private func request(_ images: Int, at: UInt64, deadline: UInt64? = nil) -> QueuedRequest {
    QueuedRequest(images: images, enqueuedAt: at, deadline: deadline)
}

@Suite struct BatchPolicyTests {
    /// Should have nothing to do when the queue is empty.
    @Test func emptyQueueIsIdle() {
        #expect(policy().decide(queue: [], now: 5 * ms) == .idle)
    }

    /// Should wait until the oldest request's delay is up while the batch is under-full and young.
    @Test func underFullAndYoungWaitsForTheOldest() {
        let queue = [request(2, at: 10 * ms), request(3, at: 10 * ms + 300_000)]
        #expect(policy().decide(queue: queue, now: 10 * ms + 400_000) == .wait(until: 11 * ms))
    }

    /// Should run at once when the queued images fill the batch exactly.
    @Test func fullBatchRunsAtOnce() {
        let queue = [request(3, at: 10 * ms), request(5, at: 10 * ms)]
        #expect(policy().decide(queue: queue, now: 10 * ms) == .run(requests: 2))
    }

    /// Should run the prefix that fits when the next request would overflow the batch, leaving it queued.
    @Test func wouldOverflowRunsThePrefixThatFits() {
        let queue = [request(3, at: 10 * ms), request(4, at: 10 * ms), request(2, at: 10 * ms), request(1, at: 10 * ms)]
        #expect(policy().decide(queue: queue, now: 10 * ms) == .run(requests: 2))
    }

    /// Should run an under-full batch once the oldest request has waited the queue delay, to the nanosecond.
    @Test func oldestWaitedTheDelayRuns() {
        let queue = [request(1, at: 10 * ms), request(2, at: 10 * ms + 900_000)]
        #expect(policy().decide(queue: queue, now: 11 * ms - 1) == .wait(until: 11 * ms))
        #expect(policy().decide(queue: queue, now: 11 * ms) == .run(requests: 2))
        #expect(policy().decide(queue: queue, now: 50 * ms) == .run(requests: 2))
    }

    /// Should run whatever is queued immediately when the queue delay is 0.
    @Test func zeroDelayRunsImmediately() {
        let p = policy(delayMicroseconds: 0)
        #expect(p.decide(queue: [request(1, at: 10 * ms)], now: 10 * ms) == .run(requests: 1))
        #expect(p.decide(queue: [request(2, at: 10 * ms), request(3, at: 10 * ms)], now: 10 * ms) == .run(requests: 2))
    }

    /// Should drop every request whose deadline has passed, wherever it is queued, before running anything.
    @Test func expiredTimeoutsAreDropped() {
        let queue = [
            request(1, at: 10 * ms, deadline: 10 * ms + 500_000), request(8, at: 10 * ms),
            request(1, at: 10 * ms, deadline: 10 * ms + 200_000), request(1, at: 10 * ms, deadline: 20 * ms),
        ]
        #expect(policy().decide(queue: queue, now: 10 * ms + 500_000) == .expire(indices: [0, 2]))
        // Exactly at the deadline counts as passed; just before does not.
        #expect(policy().decide(queue: [queue[2]], now: 10 * ms + 200_000) == .expire(indices: [0]))
        #expect(policy().decide(queue: [queue[2]], now: 10 * ms + 199_999) == .wait(until: 10 * ms + 200_000))
    }

    /// Should wake for a queued request's deadline when it comes before the oldest's delay is up.
    @Test func waitsForAnEarlierDeadline() {
        let queue = [request(1, at: 10 * ms), request(1, at: 10 * ms, deadline: 10 * ms + 300_000)]
        #expect(policy().decide(queue: queue, now: 10 * ms) == .wait(until: 10 * ms + 300_000))
    }

    /// Should take requests strictly in arrival order: a small later request never jumps a big earlier one.
    @Test func fifoOrderIsPreserved() {
        // 6 + 4 overflows, so only the first runs, though the third (2 images) would fit beside it.
        let queue = [request(6, at: 10 * ms), request(4, at: 11 * ms), request(2, at: 12 * ms)]
        #expect(policy().decide(queue: queue, now: 10 * ms) == .run(requests: 1))
        // After it, the next two run together once the (new) oldest has waited.
        let rest = Array(queue.dropFirst())
        #expect(policy().decide(queue: rest, now: 11 * ms + 500_000) == .wait(until: 12 * ms))
        #expect(policy().decide(queue: rest, now: 12 * ms) == .run(requests: 2))
    }

    /// Should run an under-full batch without waiting while draining for shutdown.
    @Test func drainingRunsWithoutWaiting() {
        let queue = [request(1, at: 10 * ms)]
        #expect(policy().decide(queue: queue, now: 10 * ms, draining: true) == .run(requests: 1))
    }

    /// Should never wrap around when the queue delay is huge.
    @Test func hugeDelaySaturates() {
        let p = policy(delayMicroseconds: Int.max)
        #expect(p.decide(queue: [request(1, at: 10 * ms)], now: 10 * ms) == .wait(until: .max))
    }
}
