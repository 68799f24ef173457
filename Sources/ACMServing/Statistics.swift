import Foundation

/// Per-model counts and cumulative durations in the shape of Triton's statistics extension
/// (`GET /v2/models[/NAME]/stats`, which tritonclient's `get_inference_statistics` reads; docs/http-api.md).
/// Durations are nanoseconds. As in Triton, a batched request is charged its whole batch's compute time, and a
/// request's queue and compute entries are added together once it is answered, so that their counts always agree
/// (perf_analyzer checks that they do).
public final class ModelStatistics: @unchecked Sendable {
    /// A count and its cumulative duration.
    public struct Duration: Sendable, Equatable {
        public var count = 0
        public var nanoseconds: UInt64 = 0

        public init() {}

        mutating func add(_ seconds: Double) {
            count += 1
            nanoseconds &+= UInt64(max(0, seconds) * 1e9)
        }
    }

    /// One model's figures.
    public struct Snapshot: Sendable, Equatable {
        /// Milliseconds since the epoch of the last batch run; 0 before the first.
        public var lastInference: UInt64 = 0
        /// Images (or utterances) run, over all batches.
        public var inferenceCount = 0
        /// Batches run.
        public var executionCount = 0
        /// Requests answered 200, arrival to answer.
        public var success = Duration()
        /// Requests answered with an error, arrival to answer.
        public var fail = Duration()
        /// Time in the queue, per request that left it to run.
        public var queue = Duration()
        /// Parsing and decoding the request (before it is queued).
        public var computeInput = Duration()
        /// The batch's forward pass, per request in it.
        public var computeInfer = Duration()
        /// Encoding the answer.
        public var computeOutput = Duration()
        /// Per batch size (in items): batches of that size and their forward passes' time.
        public var batches: [Int: Duration] = [:]
    }

    private let lock = PThreadMutex()
    private var models: [String: Snapshot] = [:]

    public init() {}

    /// Adds `model` with zero counts, so that it is listed before its first request.
    public func register(model: String) {
        lock.withLock { if models[model] == nil { models[model] = Snapshot() } }
    }

    private func update(_ model: String, _ body: (inout Snapshot) -> Void) {
        lock.withLock { body(&models[model, default: Snapshot()]) }
    }

    public func failure(model: String, seconds: Double) { update(model) { $0.fail.add(seconds) } }

    /// A request answered 200 from its batch: arrival to answer, its time in the queue, parsing it, its batch's
    /// forward pass and encoding its answer, added at once.
    public func answered(model: String, total: Double, queue: Double, input: Double, infer: Double, output: Double) {
        update(model) { s in
            s.success.add(total)
            s.queue.add(queue)
            s.computeInput.add(input)
            s.computeInfer.add(infer)
            s.computeOutput.add(output)
        }
    }

    /// One forward pass over `items` images or utterances.
    public func batch(model: String, items: Int, seconds: Double, now: Date = Date()) {
        update(model) { s in
            s.executionCount += 1
            s.inferenceCount += items
            s.batches[items, default: Duration()].add(seconds)
            s.lastInference = UInt64(max(0, now.timeIntervalSince1970 * 1000))
        }
    }

    /// The figures of `model`, or nil for a model never registered.
    public func snapshot(model: String) -> Snapshot? { lock.withLock { models[model].map(Self.detached) } }

    /// `s` with a dictionary of its own, built under the lock: a copy that shared the live one's storage would be
    /// read by the HTTP thread while the runner's next batch updates it (ThreadSanitizer reports that access).
    private static func detached(_ s: Snapshot) -> Snapshot {
        var copy = s
        copy.batches = Dictionary(uniqueKeysWithValues: s.batches.map { ($0.key, $0.value) })
        return copy
    }
}
