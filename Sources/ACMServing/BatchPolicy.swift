// The dynamic batcher's decision, kept apart from the loop that carries it out, as Triton's
// dynamic_batch_scheduler.cc does
// (https://github.com/triton-inference-server/core/blob/r24.01/src/dynamic_batch_scheduler.cc):
// given the queue and the time, run the first n requests now, drop the timed-out ones, or wait.

import Dispatch

/// How a model's requests are grouped into batches; Triton's `dynamic_batching` settings.
public struct BatcherConfig: Sendable, Equatable {
    /// Images per batch, summed over its requests; a request of more images is refused before it is queued.
    public var maxBatchSize: Int
    /// How long the oldest queued request may wait for others to join its batch; 0 runs whatever is
    /// queued at once.
    public var maxQueueDelayMicroseconds: Int
    /// Requests that may wait in the queue (the batch running is not counted); 0 means no limit, as in Triton.
    public var maxQueueSize: Int

    public init(maxBatchSize: Int, maxQueueDelayMicroseconds: Int, maxQueueSize: Int) {
        self.maxBatchSize = maxBatchSize
        self.maxQueueDelayMicroseconds = maxQueueDelayMicroseconds
        self.maxQueueSize = maxQueueSize
    }
}

/// What the policy needs to know of one queued request.
public struct QueuedRequest: Sendable, Equatable {
    /// The request's batch dimension, 1...maxBatchSize.
    public var images: Int
    /// When it was queued, in the clock's nanoseconds.
    public var enqueuedAt: UInt64
    /// When it stops being worth running (its `timeout`), in the clock's nanoseconds; nil: never.
    public var deadline: UInt64?

    public init(images: Int, enqueuedAt: UInt64, deadline: UInt64? = nil) {
        self.images = images
        self.enqueuedAt = enqueuedAt
        self.deadline = deadline
    }
}

/// What the loop should do next.
public enum BatchAction: Sendable, Equatable {
    /// Run the first `requests` queued requests as one batch.
    case run(requests: Int)
    /// Remove these queued requests (indices, ascending) and answer them as timed out; then ask again.
    case expire(indices: [Int])
    /// Nothing to do before this time (the clock's nanoseconds), unless a request arrives.
    case wait(until: UInt64)
    /// The queue is empty: wait for a request.
    case idle
}

/// The dynamic batcher's decision: a pure function of the queue and the time.
public struct BatchPolicy: Sendable, Equatable {
    public let config: BatcherConfig

    public init(_ config: BatcherConfig) {
        precondition(config.maxBatchSize >= 1, "maxBatchSize must be at least 1")
        precondition(config.maxQueueDelayMicroseconds >= 0, "maxQueueDelayMicroseconds must not be negative")
        precondition(config.maxQueueSize >= 0, "maxQueueSize must not be negative")
        self.config = config
    }

    /// The next action for `queue` (oldest first) at time `now`.
    ///
    /// Timed-out requests are dropped before anything runs. Then the requests that fit in one batch are
    /// taken in order; they run at once if the batch is full (the next request would not fit, or the
    /// images reach `maxBatchSize`), if the oldest has waited `maxQueueDelay`, or when `draining` (the
    /// runner is shutting down and nothing more will come). Otherwise the loop sleeps until the oldest's
    /// delay is up or a request's deadline passes, whichever is first.
    public func decide(queue: [QueuedRequest], now: UInt64, draining: Bool = false) -> BatchAction {
        guard let oldest = queue.first else { return .idle }

        let expired = queue.indices.filter { i in queue[i].deadline.map { now >= $0 } ?? false }
        if !expired.isEmpty { return .expire(indices: expired) }

        // The FIFO prefix that fits; at least one request, so an oversized one can never stall the queue.
        var images = oldest.images
        var taken = 1
        while taken < queue.count, images + queue[taken].images <= config.maxBatchSize {
            images += queue[taken].images
            taken += 1
        }
        let full = images >= config.maxBatchSize || taken < queue.count
        let delay = UInt64(config.maxQueueDelayMicroseconds).multipliedReportingOverflow(by: 1_000)
        let due = delay.overflow ? UInt64.max : oldest.enqueuedAt.addingSaturating(delay.partialValue)
        if full || draining || now >= due { return .run(requests: taken) }

        // Wake for the first deadline too, so a timed-out request is answered when its time is up.
        let firstDeadline = queue.lazy.compactMap(\.deadline).min() ?? .max
        return .wait(until: min(due, firstDeadline))
    }
}

extension UInt64 {
    /// `self + other`, or `.max` where that would overflow: a far-off time stays far off.
    func addingSaturating(_ other: UInt64) -> UInt64 {
        let (sum, overflow) = addingReportingOverflow(other)
        return overflow ? .max : sum
    }
}

/// Monotonic time in nanoseconds; injected so that the batcher can be tested with a mock clock.
public protocol ServingClock: Sendable {
    func now() -> UInt64
}

/// The system's monotonic clock (`DispatchTime`, which is `CLOCK_MONOTONIC` on Linux).
public struct SystemClock: ServingClock {
    public init() {}

    public func now() -> UInt64 { DispatchTime.now().uptimeNanoseconds }
}
