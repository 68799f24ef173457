/// The dynamic batcher's state: the jobs waiting, oldest first, the malformed ones still to answer, and
/// whether new jobs are taken. A value changed only by `submit`, `close` and `next`, which the runner
/// calls under its lock; it has no threads and no clock of its own, so its tests pass times as numbers.
public struct BatchQueue<Job> {
    /// A queued job and what the policy knows of it.
    public struct Entry {
        public var job: Job
        public var request: QueuedRequest
    }

    /// What the loop does next.
    public enum Action {
        /// Run these jobs as one batch, in order.
        case run([Entry])
        /// Answer these jobs as timed out; `now` is when they were found expired.
        case expire([Entry], now: UInt64)
        /// Answer these jobs as failed, each with why.
        case reject([(job: Job, problem: String)])
        /// Answer these jobs as not run: the server gave up on them at its shutdown deadline.
        case abandon([Entry])
        /// Nothing to do before this time (the clock's nanoseconds), unless a job arrives.
        case wait(until: UInt64)
        /// Nothing queued: wait for a job.
        case idle
        /// Closed and every accepted job answered: the loop ends.
        case finished
    }

    public let policy: BatchPolicy
    private var entries: [Entry] = []
    private var malformed: [(job: Job, problem: String)] = []
    private var abandoned: [Entry] = []
    /// False once `close` was called: `submit` refuses, and `next` runs what is left without waiting.
    public private(set) var isAccepting = true

    public init(_ config: BatcherConfig) {
        policy = BatchPolicy(config)
    }

    /// Jobs waiting to run (not counting malformed ones).
    public var count: Int { entries.count }
    /// Their images.
    public private(set) var images = 0

    /// When the oldest job waiting was queued; nil when none waits.
    public var oldestEnqueuedAt: UInt64? { entries.first?.request.enqueuedAt }

    /// Takes a job of `images` items at time `now`. A malformed job (`problem` says why) is taken too,
    /// to be answered `.reject` by `next`, so that every answer comes from the loop; only well-formed
    /// jobs count against `maxQueueSize`, and against `maxImages` (a job that finds the queue empty is taken
    /// whatever its size).
    public mutating func submit(
        _ job: Job, images: Int, timeoutNanoseconds: UInt64?, problem: String?, now: UInt64, maxImages: Int? = nil
    ) -> SubmitResult {
        guard isAccepting else { return .shuttingDown }
        if let problem {
            malformed.append((job, problem))
            return .accepted
        }
        let limit = policy.config.maxQueueSize
        if limit > 0 && entries.count >= limit { return .queueFull }
        if let maxImages, !entries.isEmpty, self.images + images > maxImages { return .queueFull }
        let deadline = timeoutNanoseconds.map { now.addingSaturating($0) }
        entries.append(Entry(job: job, request: QueuedRequest(images: images, enqueuedAt: now, deadline: deadline)))
        self.images += images
        return .accepted
    }

    /// Stops taking jobs; those already taken still run.
    public mutating func close() {
        isAccepting = false
    }

    /// Stops taking jobs, and gives up on those waiting: `next` answers them `.abandon`. Returns how many.
    public mutating func abandonWaiting() -> Int {
        isAccepting = false
        abandoned += entries
        entries.removeAll()
        images = 0
        return abandoned.count
    }

    /// The next action at time `now`, with its jobs taken off the queue: malformed jobs first, then what
    /// the policy decides.
    public mutating func next(now: UInt64) -> Action {
        if !malformed.isEmpty {
            defer { malformed.removeAll() }
            return .reject(malformed)
        }
        if !abandoned.isEmpty {
            defer { abandoned.removeAll() }
            return .abandon(abandoned)
        }
        switch policy.decide(queue: entries.map(\.request), now: now, draining: !isAccepting) {
        case let .run(n):
            let batch = Array(entries.prefix(n))
            entries.removeFirst(n)
            images -= batch.reduce(0) { $0 + $1.request.images }
            return .run(batch)
        case let .expire(indices):
            let expired = indices.map { entries[$0] }
            for i in indices.reversed() { entries.remove(at: i) }
            images -= expired.reduce(0) { $0 + $1.request.images }
            return .expire(expired, now: now)
        case let .wait(until):
            return .wait(until: until)
        case .idle:
            return isAccepting ? .idle : .finished
        }
    }
}
