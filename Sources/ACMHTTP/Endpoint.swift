import ACMCore
import ACMServing
import Foundation

/// One served model as the HTTP front end sees it: its kind's input decoding, output encoding, metadata
/// and curl route, around the model's runner. `InferenceServer` only routes to it, submits what it
/// parses and answers with what it renders.
protocol Endpoint: AnyObject, Sendable {
    associatedtype Engine: BatchEngine

    var name: String { get }
    var entry: ServerConfig.ModelEntry { get }
    var runner: BatchRunner<Engine> { get }
    var inputs: [TensorSpec] { get }
    var outputs: [TensorSpec] { get }
    /// The kind's curl route (`classify`, `transcribe`) and what its body is, for the other kind's 404.
    static var curlRoute: String { get }
    static var curlBody: String { get }
    /// "an image model", "a speech model": what the other kind's 404 calls this model.
    static var kindName: String { get }
    /// What the model's GEMMs run in (its entry's precision where this CPU has it).
    var precision: Precision { get }
    /// Whether the model has ACM layers, so that a budget applies.
    var hasACMs: Bool { get }

    /// An infer request's job, from its envelope.
    func parseInfer(_ envelope: inout RequestEnvelope) throws -> Submission<Engine>
    /// The curl route's job: the body is one encoded input.
    func parseCurl(_ request: any HTTPRequest) throws -> Submission<Engine>
    /// Records a success in the metrics; returns the compute fraction to log, if the kind has one.
    func recordSuccess(_ result: RunResult<Engine.Output>, seconds: Double, budget: ComputeBudget?) -> Double?
}

/// A parsed request, ready for the runner: its input, how its learners are chosen, and how to answer.
struct Submission<Engine: BatchEngine> {
    var input: Engine.Input
    var count: Int
    var budget: ComputeBudget?
    /// Whether the model's adaptive budget may lower `budget`.
    var adaptive = false
    var timeoutNanoseconds: UInt64?
    var id: String?
    /// The answer to the request once its batch has run; called on the runner's thread.
    var render: @Sendable (RunResult<Engine.Output>) -> HTTPResponse
    /// Why the request must be refused although its batch ran (its answer cannot be encoded), or nil; asked
    /// before `render`.
    var refusal: (@Sendable (RunResult<Engine.Output>) -> ProtocolError?)? = nil

    /// The request's learner policy: its budget, or the gates alone.
    var policy: LearnerPolicy { budget.map { .cap($0) } ?? .auto }
}

extension Endpoint {
    var metadata: JSON { modelMetadata(name: name, precision: precision, inputs: inputs, outputs: outputs) }
    var config: JSON { tritonConfig(name: name, entry: entry, precision: precision, inputs: inputs, outputs: outputs) }
    var pendingRequests: Int { runner.pendingRequests }
    func shutdown() { runner.shutdown() }
    func close() { runner.close() }
    func abandonQueued() -> Int { runner.abandonQueued() }
}
