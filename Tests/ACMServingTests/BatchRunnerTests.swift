import ACMCore
import ACMModels
import Foundation
import Testing

@testable import ACMServing

/// The ViT fixture with ACMs on attention projections and MLPs, shared with ACMModelsTests.
private let fixture = URL(fileURLWithPath: #filePath).deletingLastPathComponent()
    .appendingPathComponent("../ACMModelsTests/Fixtures/vit_mixed").standardized.path

/// The policies the tests mix in one queue.
private let mixedPolicies: [LearnerPolicy] = [.auto, .cap(0.25), .cap(0.5), .full, .uniform(2)]

/// `count` images of deterministic noise in [-2, 2].
private func noise(count: Int, model: Model, seed: UInt64) -> [Float] {
    var generator = SeededGenerator(seed: seed)
    return (0..<count * model.vit.inputCount).map { _ in Float.random(in: -2...2, using: &generator) }
}

/// A clock the test controls: it starts at 1 s and advances `step` ns at every reading (0: frozen).
private final class ManualClock: ServingClock, @unchecked Sendable {
    private let lock = NSLock()
    private var time: UInt64 = 1_000_000_000
    private let step: UInt64

    init(step: UInt64 = 0) { self.step = step }

    func now() -> UInt64 {
        lock.withLock {
            time += step
            return time
        }
    }
}

/// Collects each job's outcome by id, and how many times each completion ran.
private final class Outcomes: @unchecked Sendable {
    private let lock = NSLock()
    private var outcomes: [Int: BatchOutcome<ClassifierOutput>] = [:]
    private var calls: [Int: Int] = [:]
    private let group = DispatchGroup()

    /// Submits a job whose completion records its outcome under `id`.
    func submit(
        _ runner: BatchRunner<ViTEngine>, id: Int, images: [Float], count: Int, policy: LearnerPolicy = .auto,
        timeoutNanoseconds: UInt64? = nil
    ) -> SubmitResult {
        group.enter()
        let job = BatchJob<ImageBatchInput, ClassifierOutput>(
            input: ImageBatchInput(images), count: count, policy: policy, timeoutNanoseconds: timeoutNanoseconds
        ) {
            outcome in
            self.lock.withLock {
                self.outcomes[id] = outcome
                self.calls[id, default: 0] += 1
            }
            self.group.leave()
        }
        let result = runner.submit(job)
        if result != .accepted { group.leave() }
        return result
    }

    /// Waits (at most a generous 30 s, so a bug fails instead of hanging) for every accepted job.
    func waitForAll() -> Bool { group.wait(timeout: .now() + 30) == .success }

    var all: [Int: BatchOutcome<ClassifierOutput>] { lock.withLock { outcomes } }
    var completionCalls: [Int: Int] { lock.withLock { calls } }

    func result(_ id: Int) -> RunResult<ClassifierOutput>? {
        if case let .success(result) = all[id] { return result }
        return nil
    }
}

/// Records what the runner reports to its observer.
private final class RecordingObserver: RunnerObserver, @unchecked Sendable {
    private let lock = NSLock()
    private var batchImages: [Int] = []
    private var finished: [Bool] = []
    private var histogramTokens: [Int] = []

    func batchExecuted(
        model: String, images: Int, requests: Int, computeSeconds: Double, learnerHistogram: [[Int]],
        acmPaths: [String]
    ) {
        lock.withLock {
            batchImages.append(images)
            histogramTokens.append(contentsOf: learnerHistogram.map { $0.reduce(0, +) })
            precondition(learnerHistogram.count == acmPaths.count)
        }
    }

    func requestFinished(model: String, queueSeconds: Double, timedOut: Bool) {
        lock.withLock { finished.append(timedOut) }
    }

    var images: [Int] { lock.withLock { batchImages } }
    var timedOutFlags: [Bool] { lock.withLock { finished } }
    var tokensPerACM: [Int] { lock.withLock { histogramTokens } }
}

/// A runner of the fixture model with this batcher.
private func vitRunner(
    _ model: Model, maxBatchSize: Int, delayMicroseconds: Int, queueSize: Int = 0, clock: any ServingClock = SystemClock(),
    observer: (any RunnerObserver)? = nil
) -> BatchRunner<ViTEngine> {
    BatchRunner(
        name: "vit", engine: ViTEngine(model: model),
        config: BatcherConfig(maxBatchSize: maxBatchSize, maxQueueDelayMicroseconds: delayMicroseconds, maxQueueSize: queueSize),
        clock: clock, observer: observer)
}

@Suite struct ViTRunnerTests {
    /// Should answer jobs submitted concurrently with mixed policies with the logits and compute
    /// fractions each gets alone, while grouping several requests into one batch.
    @Test func concurrentMixedPoliciesMatchRunningAlone() throws {
        let model = try Model(directory: fixture)
        let classes = model.vit.config.numClasses
        let threads = 4, perThread = 10
        // (images, count, policy) per job; the reference logits are computed before the runner starts.
        let jobs = (0..<threads * perThread).map { id in
            let count = 1 + id % 3
            return (noise(count: count, model: model, seed: UInt64(id)), count, mixedPolicies[id % mixedPolicies.count])
        }
        let workspace = ViTWorkspace()
        let alone = jobs.map { images, count, policy in
            images.withUnsafeBufferPointer {
                model.vit.forward(
                    images: $0.baseAddress!, count: count, policies: Array(repeating: policy, count: count),
                    workspace: workspace)
            }
        }

        let runner = vitRunner(model, maxBatchSize: 8, delayMicroseconds: 20_000)
        let outcomes = Outcomes()
        DispatchQueue.concurrentPerform(iterations: threads) { t in
            for id in t * perThread..<(t + 1) * perThread {
                let (images, count, policy) = jobs[id]
                let submitted = outcomes.submit(runner, id: id, images: images, count: count, policy: policy)
                #expect(submitted == .accepted)
            }
        }
        #expect(outcomes.waitForAll())
        runner.shutdown()

        for (id, (_, count, policy)) in jobs.enumerated() {
            guard let result = outcomes.result(id) else {
                Issue.record("job \(id): \(String(describing: outcomes.all[id]))")
                continue
            }
            #expect(result.classes == classes && result.logits.count == count * classes)
            let want = alone[id].logits.array
            let diff = zip(result.logits, want).map { abs($0 - $1) }.max() ?? .infinity
            #expect(diff <= 1e-5, "job \(id) (\(policy), \(count) images): max diff \(diff)")
            #expect(result.computeFraction.count == count)
            for (got, expected) in zip(result.computeFraction, alone[id].computeFraction) {
                #expect(abs(got - expected) < 1e-9, "job \(id) fraction")
            }
            #expect(result.batchItems <= 8 && result.batchItems >= count)
        }
        #expect(outcomes.completionCalls.values.allSatisfy { $0 == 1 })
        #expect(jobs.indices.contains { outcomes.result($0).map { $0.batchRequests > 1 } ?? false })
    }

    /// Should refuse a job with .queueFull once maxQueueSize requests wait, and still answer every accepted job.
    @Test func queueFullRefusesAndAnswersTheAccepted() throws {
        let model = try Model(directory: fixture)
        // A frozen clock and a long delay: 1-image jobs never fill the batch of 8, so they stay queued.
        let runner = vitRunner(model, maxBatchSize: 8, delayMicroseconds: 60_000_000, queueSize: 3, clock: ManualClock())
        let outcomes = Outcomes()
        for id in 0..<3 {
            let submitted = outcomes.submit(runner, id: id, images: noise(count: 1, model: model, seed: 7), count: 1)
            #expect(submitted == .accepted)
        }
        #expect(runner.pendingRequests == 3)
        #expect(outcomes.submit(runner, id: 3, images: noise(count: 1, model: model, seed: 7), count: 1) == .queueFull)
        runner.shutdown()
        #expect(outcomes.waitForAll())
        #expect(Set(outcomes.all.keys) == [0, 1, 2])
        #expect((0..<3).allSatisfy { outcomes.result($0) != nil })
    }

    /// Should run every queued job to success on shutdown, return only once they are answered, and then
    /// refuse new jobs.
    @Test func shutdownFinishesQueuedJobs() throws {
        let model = try Model(directory: fixture)
        let observer = RecordingObserver()
        let runner = vitRunner(model, maxBatchSize: 4, delayMicroseconds: 60_000_000, clock: ManualClock(), observer: observer)
        let outcomes = Outcomes()
        let counts = [1, 2, 1, 3, 1, 1, 2]
        for (id, count) in counts.enumerated() {
            let submitted = outcomes.submit(
                runner, id: id, images: noise(count: count, model: model, seed: UInt64(id)), count: count,
                policy: mixedPolicies[id % mixedPolicies.count])
            #expect(submitted == .accepted)
        }
        runner.shutdown()
        // No waiting: shutdown returns after the last completion.
        #expect(outcomes.all.count == counts.count)
        #expect(counts.indices.allSatisfy { outcomes.result($0) != nil })
        #expect(runner.pendingRequests == 0)
        #expect(observer.images.reduce(0, +) == counts.reduce(0, +))
        #expect(observer.timedOutFlags == Array(repeating: false, count: counts.count))
        let tokens = model.vit.config.sequenceLength * counts.reduce(0, +)
        // every token of every image counted once per ACM in the learner histograms
        #expect(observer.tokensPerACM.reduce(0, +) == tokens * model.vit.acmPaths.count)

        let late = outcomes.submit(runner, id: 99, images: noise(count: 1, model: model, seed: 1), count: 1)
        #expect(late == .shuttingDown)
        runner.shutdown()  // idempotent
    }

    /// Should answer .timedOut to a job whose tiny timeout passes while it waits behind others.
    @Test func tinyTimeoutBehindOthersTimesOut() throws {
        let model = try Model(directory: fixture)
        let observer = RecordingObserver()
        // Every clock reading is 1 ms after the last, so a 100 µs timeout has always passed by the time
        // the loop looks at the job, whatever the real timing.
        let runner = vitRunner(model, maxBatchSize: 1, delayMicroseconds: 0, clock: ManualClock(step: 1_000_000), observer: observer)
        let outcomes = Outcomes()
        for id in 0..<3 {
            let submitted = outcomes.submit(runner, id: id, images: noise(count: 1, model: model, seed: 3), count: 1)
            #expect(submitted == .accepted)
        }
        let submitted = outcomes.submit(
            runner, id: 3, images: noise(count: 1, model: model, seed: 3), count: 1, timeoutNanoseconds: 100_000)
        #expect(submitted == .accepted)
        #expect(outcomes.waitForAll())
        runner.shutdown()
        #expect(outcomes.all[3] == .timedOut)
        #expect((0..<3).allSatisfy { outcomes.result($0) != nil })
        #expect(observer.timedOutFlags.filter { $0 }.count == 1)
    }

    /// Should answer .failed to malformed jobs (wrong input size, too many images) and keep serving good
    /// ones. (A bad budget cannot reach the runner: `ComputeBudget` refuses it.)
    @Test func malformedJobsFailWithoutStoppingTheLoop() throws {
        let model = try Model(directory: fixture)
        let runner = vitRunner(model, maxBatchSize: 2, delayMicroseconds: 0)
        let outcomes = Outcomes()
        let one = noise(count: 1, model: model, seed: 5)
        #expect(outcomes.submit(runner, id: 0, images: Array(one.dropLast()), count: 1) == .accepted)
        #expect(outcomes.submit(runner, id: 1, images: noise(count: 3, model: model, seed: 5), count: 3) == .accepted)
        #expect(outcomes.submit(runner, id: 2, images: one, count: 1) == .accepted)
        #expect(outcomes.waitForAll())
        runner.shutdown()
        for id in 0..<2 {
            guard case .failed = outcomes.all[id] else {
                Issue.record("job \(id): \(String(describing: outcomes.all[id]))")
                continue
            }
        }
        #expect(outcomes.result(2) != nil)
    }
}

/// An engine whose every batch fails, as a model fault would.
private final class FailingEngine: BatchEngine, @unchecked Sendable {
    struct Fault: Error, CustomStringConvertible { var description: String { "engine fault" } }
    static let itemName = "items"
    func problem(with input: Int, count: Int) -> String? { nil }
    func run(_ inputs: [Int], counts: [Int], policies: [LearnerPolicy]) throws -> EngineBatch<Int> { throw Fault() }
}

@Suite struct BatchRunnerTests {
    /// Should answer every job of a batch whose engine throws with .failed and the error, and keep running.
    @Test func engineFaultFailsTheBatch() {
        let runner = BatchRunner(
            name: "failing", engine: FailingEngine(),
            config: BatcherConfig(maxBatchSize: 4, maxQueueDelayMicroseconds: 0, maxQueueSize: 0))
        let group = DispatchGroup()
        let lock = NSLock()
        nonisolated(unsafe) var outcomes: [BatchOutcome<Int>] = []
        for i in 0..<3 {
            group.enter()
            let job = BatchJob<Int, Int>(input: i, count: 1, policy: .auto) { outcome in
                lock.withLock { outcomes.append(outcome) }
                group.leave()
            }
            #expect(runner.submit(job) == .accepted)
        }
        #expect(group.wait(timeout: .now() + 30) == .success)
        runner.shutdown()
        #expect(lock.withLock { outcomes } == Array(repeating: .failed("engine fault"), count: 3))
    }

    /// Should free the runner once shut down: its loop thread holds it only while it runs (LeakSanitizer found
    /// a runner and its thread keeping each other, and the model, alive).
    @Test func shutdownReleasesTheRunner() {
        weak var released: BatchRunner<FailingEngine>?
        do {
            let runner = BatchRunner(
                name: "released", engine: FailingEngine(),
                config: BatcherConfig(maxBatchSize: 1, maxQueueDelayMicroseconds: 0, maxQueueSize: 0))
            released = runner
            runner.shutdown()
        }
        // The thread lets go of its closure, and with it the runner, just after `shutdown` returns.
        let deadline = DispatchTime.now() + 10
        while released != nil && DispatchTime.now() < deadline { usleep(1_000) }
        #expect(released == nil)
    }

    /// Should tell a Whisper model directory from an image model's by its config's architecture.
    @Test func modelKindFromArchitecture() throws {
        let dir = FileManager.default.temporaryDirectory.appendingPathComponent("acm-kind-\(UUID().uuidString)")
        try FileManager.default.createDirectory(at: dir, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(at: dir) }
        try Data(#"{"format": "acm-serve", "architecture": "whisper"}"#.utf8).write(to: dir.appendingPathComponent("config.json"))
        #expect(ModelKind.of(directory: dir.path) == .speech)
        #expect(ModelKind.of(directory: fixture) == .image)
        #expect(ModelKind.of(directory: dir.appendingPathComponent("missing").path) == .image)
    }
}
