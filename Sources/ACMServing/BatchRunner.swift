// The model's loop thread, as the llama.cpp server keeps its model: HTTP threads only post jobs, and
// one thread owns the model's workspace, asks its `BatchQueue` what to do and does it. The runner is the
// same for every kind of model; a `BatchEngine` (ViTEngine.swift, SpeechEngine.swift) is what it runs.

import ACMCore
import Foundation

/// A model as its runner drives it: it checks one request's input, and runs the inputs of several
/// requests as one batch. Only the runner's loop thread calls `run`, so an engine keeps its scratch
/// buffers without locks.
public protocol BatchEngine: AnyObject, Sendable {
    /// One request's input, of `count` items (images, utterances).
    associatedtype Input: Sendable
    /// One request's part of a batch's output.
    associatedtype Output: Sendable
    /// What a request's items are, for messages: "images", "utterances".
    static var itemName: String { get }
    /// Why `input` cannot be `count` items of this model, or nil. Checked before queueing.
    func problem(with input: Input, count: Int) -> String?
    /// Runs the requests' inputs as one batch, request `i` with `counts[i]` items under `policies[i]`.
    /// Throws only on a fault that `problem` could not foresee; every request of the batch then fails.
    func run(_ inputs: [Input], counts: [Int], policies: [LearnerPolicy]) throws -> EngineBatch<Output>
}

/// What an engine's batch produced: each request's output, in order, and the learners that ran.
public struct EngineBatch<Output> {
    public var outputs: [Output]
    /// `learnerHistogram[i][k]`: tokens that ran k learners at ACM `acmPaths[i]`; empty without ACMs.
    public var learnerHistogram: [[Int]]
    public var acmPaths: [String]

    public init(outputs: [Output], learnerHistogram: [[Int]] = [], acmPaths: [String] = []) {
        self.outputs = outputs
        self.learnerHistogram = learnerHistogram
        self.acmPaths = acmPaths
    }
}

/// One request for a model: its input of `count` items and how their learners are chosen.
public struct BatchJob<Input: Sendable, Output: Sendable>: Sendable {
    public var input: Input
    /// The request's batch dimension, 1...maxBatchSize.
    public var count: Int
    public var policy: LearnerPolicy
    /// Whether the runner's adaptive budget may lower `policy` under load (the request set no budget of its own,
    /// or asked for "adaptive"); ignored by a runner without one.
    public var adaptive: Bool
    /// How long the job may wait in the queue before it is answered `.timedOut` instead of run; nil: no limit.
    public var timeoutNanoseconds: UInt64?
    /// Called once, on the runner's thread, with the answer. It must not block, nor call `shutdown()`.
    public var completion: @Sendable (BatchOutcome<Output>) -> Void

    public init(
        input: Input, count: Int, policy: LearnerPolicy, adaptive: Bool = false, timeoutNanoseconds: UInt64? = nil,
        completion: @escaping @Sendable (BatchOutcome<Output>) -> Void
    ) {
        self.input = input
        self.count = count
        self.policy = policy
        self.adaptive = adaptive
        self.timeoutNanoseconds = timeoutNanoseconds
        self.completion = completion
    }
}

/// What a job produced, for one request: the engine's output (whose fields read through, as
/// `result.logits`) and how its batch ran.
@dynamicMemberLookup
public struct RunResult<Output: Sendable>: Sendable {
    public var output: Output
    /// From submission to the start of its batch.
    public var queueSeconds: Double
    /// The forward pass of its whole batch.
    public var computeSeconds: Double
    /// Items (images, utterances) and requests in the batch it ran in.
    public var batchItems: Int
    public var batchRequests: Int
    /// The budget the adaptive controller ran an adaptive job at, when it lowered it; nil: the job's own policy.
    public var loweredBudget: ComputeBudget?

    public init(
        output: Output, queueSeconds: Double, computeSeconds: Double, batchItems: Int, batchRequests: Int,
        loweredBudget: ComputeBudget? = nil
    ) {
        self.output = output
        self.queueSeconds = queueSeconds
        self.computeSeconds = computeSeconds
        self.batchItems = batchItems
        self.batchRequests = batchRequests
        self.loweredBudget = loweredBudget
    }

    public subscript<T>(dynamicMember path: KeyPath<Output, T>) -> T { output[keyPath: path] }
}

extension RunResult: Equatable where Output: Equatable {}

/// How a job ended.
public enum BatchOutcome<Output: Sendable>: Sendable {
    case success(RunResult<Output>)
    /// It waited longer than its timeout; HTTP answers 503.
    case timedOut
    /// The job was malformed (a caller's bug): wrong input size or count; or the engine failed.
    case failed(String)
    /// The job never ran: it was still queued when the server gave up at its shutdown deadline.
    case abandoned
}

extension BatchOutcome: Equatable where Output: Equatable {}

/// Whether `submit` took the job; only `.accepted` jobs get a completion.
public enum SubmitResult: Sendable, Equatable {
    case accepted
    /// `maxQueueSize` requests are waiting; HTTP answers 503 with `Retry-After`.
    case queueFull
    case shuttingDown
}

/// Hooks for metrics, called on the runner's thread before the jobs' completions.
public protocol RunnerObserver: AnyObject, Sendable {
    /// One forward pass ran over `images` items; `learnerHistogram[i][k]` tokens ran k learners at ACM
    /// `acmPaths[i]`.
    func batchExecuted(
        model: String, images: Int, requests: Int, computeSeconds: Double, learnerHistogram: [[Int]],
        acmPaths: [String])
    /// A queued request left the queue: run, or dropped because its timeout passed.
    func requestFinished(model: String, queueSeconds: Double, timedOut: Bool)
    /// After each batch of a runner with an adaptive budget: the rung it ran at (nil: the requests' own policy)
    /// for the `seconds` since the last call, how many of its requests ran lowered, and the change made after it.
    func adaptiveBudget(
        model: String, budget: ComputeBudget?, seconds: Double, loweredRequests: Int, change: AdaptiveBudget.Change?)
}

extension RunnerObserver {
    public func adaptiveBudget(
        model: String, budget: ComputeBudget?, seconds: Double, loweredRequests: Int, change: AdaptiveBudget.Change?
    ) {}
}

/// Owns one model (its engine) and the thread that runs it: jobs are queued by `submit` from any
/// thread and run in dynamic batches, each as ONE call of the engine, so that the ACM layers group the
/// tokens of all the batch's requests by learner count.
public final class BatchRunner<Engine: BatchEngine>: @unchecked Sendable {
    public typealias Job = BatchJob<Engine.Input, Engine.Output>

    public let name: String
    public let engine: Engine
    public let config: BatcherConfig
    private let clock: any ServingClock
    private let observer: (any RunnerObserver)?

    // Guarded by `lock`.
    private let lock = PThreadMutex()
    /// Signalled on every submit and on shutdown; the loop thread is its only waiter.
    private let workArrived = PThreadCondition()
    /// Broadcast when the loop thread has finished.
    private let loopEnded = PThreadCondition()
    private var queue: BatchQueue<Job>
    private var ended = false
    /// Images offered, refused ones included: the adaptive budget's measure of load.
    private var arrivals = ArrivalRate()
    /// Whether the runner has an adaptive budget (`controller` is the loop thread's).
    private let measuresArrivals: Bool
    /// With an adaptive budget: the images the queue may hold, from the controller (`admissibleImages`).
    private var admissibleImages: Int?

    // The adaptive budget, touched only by the loop thread.
    private var controller: AdaptiveBudget?
    private var window = LatencyWindow()
    private var accountedAt: UInt64 = 0

    /// Weak: the thread's closure holds the runner, so a strong reference here would be a cycle that keeps the
    /// runner and its model alive after `shutdown()`. Foundation keeps a `Thread` alive while it runs.
    private weak var thread: Thread?

    /// Starts the loop thread, which owns the engine's workspace from then on. The thread keeps the
    /// runner alive until `shutdown()`.
    public init(
        name: String, engine: Engine, config: BatcherConfig, clock: any ServingClock = SystemClock(),
        observer: (any RunnerObserver)? = nil, adaptive: AdaptiveBudgetConfig? = nil
    ) {
        self.name = name
        self.engine = engine
        self.config = config
        self.queue = BatchQueue(config)
        self.clock = clock
        self.observer = observer
        self.controller = adaptive.map { AdaptiveBudget($0) }
        self.measuresArrivals = adaptive != nil
        self.accountedAt = clock.now()
        let thread = Thread { [self] in loop() }
        thread.name = String("acm \(name)".prefix(15))  // Linux thread names are at most 15 bytes
        self.thread = thread
        thread.start()
    }

    /// With an adaptive budget, the images the queue admits now (nil: no bound yet but `max_queue_size`).
    var admissibleQueueImages: Int? {
        lock.withLock { admissibleImages }
    }

    /// Requests waiting in the queue, not counting the batch running.
    public var pendingRequests: Int {
        lock.withLock { queue.count }
    }

    /// Queues `job`. Its completion is called later on the runner's thread, once, unless the answer is
    /// not `.accepted`.
    public func submit(_ job: Job) -> SubmitResult {
        let problem = validate(job)
        return lock.withLock {
            let now = clock.now()
            let result = queue.submit(
                job, images: job.count, timeoutNanoseconds: job.timeoutNanoseconds, problem: problem, now: now,
                maxImages: admissibleImages)
            if result == .accepted { workArrived.signal() }
            if measuresArrivals, result == .accepted || result == .queueFull { arrivals.add(job.count, at: now) }
            return result
        }
    }

    /// Stops accepting jobs, runs every job already accepted, and returns when the loop thread has
    /// ended. Idempotent; safe from several threads; not from a completion.
    public func shutdown() {
        precondition(Thread.current !== thread, "shutdown() called from a completion would wait for itself")
        lock.withLock {
            queue.close()
            workArrived.signal()
            while !ended { loopEnded.wait(lock) }
        }
    }

    /// Stops accepting jobs; those accepted still run. Returns at once.
    public func close() {
        lock.withLock {
            queue.close()
            workArrived.signal()
        }
    }

    /// Stops accepting jobs and answers those still waiting `.abandoned`, from the loop thread; the batch
    /// running, if any, finishes. Returns how many were waiting.
    @discardableResult
    public func abandonQueued() -> Int {
        lock.withLock {
            let count = queue.abandonWaiting()
            workArrived.signal()
            return count
        }
    }

    /// Why `job` cannot run, or nil. Checked before queueing, so a bad job never reaches the engine.
    private func validate(_ job: Job) -> String? {
        guard job.count >= 1, job.count <= config.maxBatchSize else {
            return "\(job.count) \(Engine.itemName); this model takes 1...\(config.maxBatchSize) per request"
        }
        return engine.problem(with: job.input, count: job.count)
    }

    // MARK: - The loop thread

    /// The loop thread's body: take the next action off the queue under the lock, and carry it out
    /// outside it.
    private func loop() {
        flushDenormalsToZero()
        while let action = nextAction() {
            switch action {
            case let .run(entries):
                runBatch(entries.map(\.job), entries.map(\.request))
            case let .expire(entries, now):
                for entry in entries {
                    let queued = seconds(from: entry.request.enqueuedAt, to: now)
                    observer?.requestFinished(model: name, queueSeconds: queued, timedOut: true)
                    entry.job.completion(.timedOut)
                }
            case let .reject(rejected):
                for (job, problem) in rejected { job.completion(.failed(problem)) }
            case let .abandon(entries):
                for entry in entries { entry.job.completion(.abandoned) }
            case .wait, .idle, .finished:
                preconditionFailure("nextAction waits these out")
            }
        }
    }

    /// Blocks until there is work, and takes it off the queue; nil when shut down and drained.
    private func nextAction() -> BatchQueue<Job>.Action? {
        lock.withLock {
            while true {
                let action = queue.next(now: clock.now())
                switch action {
                case let .wait(until):
                    // Relative to the injected clock, so a mock clock's time is respected too.
                    let current = clock.now()
                    if until > current { workArrived.wait(lock, timeoutNanoseconds: until - current) }
                case .idle:
                    workArrived.wait(lock)
                case .finished:
                    ended = true
                    loopEnded.broadcast()
                    return nil
                case .run, .expire, .reject, .abandon:
                    return action
                }
            }
        }
    }

    /// Runs `batch` as one call of the engine and answers each job with its output.
    private func runBatch(_ batch: [Job], _ requests: [QueuedRequest]) {
        let items = batch.reduce(0) { $0 + $1.count }
        let start = clock.now()
        // Adaptive jobs run at the controller's rung, never above their own cap.
        let rung = controller?.budget
        let lowered: [ComputeBudget?] = batch.map { job in
            guard job.adaptive, let rung else { return nil }
            if case let .cap(own) = job.policy, own <= rung { return nil }
            return rung
        }
        let policies = zip(batch, lowered).map { job, budget in budget.map { LearnerPolicy.cap($0) } ?? job.policy }
        let output: EngineBatch<Engine.Output>
        do {
            output = try engine.run(batch.map(\.input), counts: batch.map(\.count), policies: policies)
            precondition(output.outputs.count == batch.count, "the engine answered \(output.outputs.count) of \(batch.count) requests")
        } catch {
            for (job, request) in zip(batch, requests) {
                observer?.requestFinished(model: name, queueSeconds: seconds(from: request.enqueuedAt, to: start), timedOut: false)
                job.completion(.failed("\(error)"))
            }
            return
        }
        let computeSeconds = seconds(from: start, to: clock.now())
        observer?.batchExecuted(
            model: name, images: items, requests: batch.count, computeSeconds: computeSeconds,
            learnerHistogram: output.learnerHistogram, acmPaths: output.acmPaths)

        if let controller {
            // The rung this batch measures: the controller's, when every request was adaptive; else a rung whose
            // budget every request set itself.
            var atRung = 0, rungLevel: Int? = nil
            if batch.allSatisfy(\.adaptive) {
                atRung = items
            } else if case let .cap(budget) = policies[0], policies.allSatisfy({ $0 == policies[0] }),
                let level = controller.ladder.firstIndex(of: budget)  // never the top rung: that one is nil
            {
                atRung = items
                rungLevel = level
            }
            adapt(
                requests: requests, computeSeconds: computeSeconds, lowered: lowered, rungImages: atRung,
                rungLevel: rungLevel)
        }

        for (i, (job, request)) in zip(batch, requests).enumerated() {
            let result = RunResult(
                output: output.outputs[i],
                queueSeconds: seconds(from: request.enqueuedAt, to: start),
                computeSeconds: computeSeconds,
                batchItems: items,
                batchRequests: batch.count,
                loweredBudget: lowered[i])
            observer?.requestFinished(model: name, queueSeconds: result.queueSeconds, timedOut: false)
            job.completion(.success(result))
        }
    }

    /// The adaptive budget's turn after a batch: the batch's latencies into the window, then one decision on them
    /// and the queue left behind.
    private func adapt(
        requests: [QueuedRequest], computeSeconds: Double, lowered: [ComputeBudget?], rungImages: Int, rungLevel: Int?
    ) {
        let now = clock.now()
        for request in requests { window.add(seconds(from: request.enqueuedAt, to: now), at: now) }  // add prunes
        let (oldest, waiting, queuedImages, admissible, rate) = lock.withLock {
            (queue.oldestEnqueuedAt, queue.count, queue.images, admissibleImages, arrivals.perSecond(at: now))
        }
        // How full the queue is: against max_queue_size, or against the images the latency target admits.
        let capacity = config.maxQueueSize
        let fills = [
            capacity > 0 ? Double(waiting) / Double(capacity) : nil,
            admissible.map { Double(queuedImages) / Double(max($0, 1)) },
        ].compactMap { $0 }
        let observation = AdaptiveBudget.Observation(
            windowP95: window.quantile(0.95), oldestWait: oldest.map { seconds(from: $0, to: now) },
            batchSeconds: computeSeconds, queueFill: fills.max(), rungImages: rungImages, rungLevel: rungLevel,
            arrivalRate: rate)
        let ranAt = controller!.budget
        let change = controller!.update(observation, now: now)
        let admits = controller!.admissibleImages(batchImages: config.maxBatchSize)
        lock.withLock { admissibleImages = admits }
        observer?.adaptiveBudget(
            model: name, budget: ranAt, seconds: seconds(from: accountedAt, to: now),
            loweredRequests: lowered.filter { $0 != nil }.count, change: change)
        accountedAt = now
    }
}

/// Seconds between two clock readings; 0 if the clock went backwards (only a mock clock can).
private func seconds(from start: UInt64, to end: UInt64) -> Double {
    end > start ? Double(end - start) / 1e9 : 0
}
