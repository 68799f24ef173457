import ACMCore
import ACMModels
import ACMServing
import ACMWhisper
import Foundation
import Logging

/// The Open Inference Protocol over HTTP (docs/http-api.md): routes requests, validates them, hands
/// inference to each model's `ModelRunner` and answers when the batch is done.
public final class InferenceServer: HTTPHandler, @unchecked Sendable {
    struct Served {
        let name: String
        let entry: ServerConfig.ModelEntry
        let kind: Kind

        /// The model, by kind (`ModelKind`), and the runner that owns it.
        enum Kind {
            /// `preprocessor`: built at load from the model's `preprocessing`, so that a bad one fails start-up.
            case image(model: Model, runner: ModelRunner, preprocessor: ImagePreprocessor?)
            case speech(model: WhisperModel, runner: SpeechRunner)
        }

        var pendingRequests: Int {
            switch kind {
            case let .image(_, runner, _): return runner.pendingRequests
            case let .speech(_, runner): return runner.pendingRequests
            }
        }

        func shutdown() {
            switch kind {
            case let .image(_, runner, _): runner.shutdown()
            case let .speech(_, runner): runner.shutdown()
            }
        }
    }

    public static let version = "0.1.0"
    let models: [String: Served]
    public let metrics: ServingMetrics
    let logger: Logger
    private let stateLock = NSLock()
    private var draining = false

    /// Loads every configured model and starts its runner.
    public init(config: ServerConfig, metrics: ServingMetrics = ServingMetrics(), logger: Logger) throws {
        self.metrics = metrics
        self.logger = logger
        var models: [String: Served] = [:]
        for (name, entry) in config.models.sorted(by: { $0.key < $1.key }) {
            let batcher = BatcherConfig(
                maxBatchSize: entry.maxBatchSize, maxQueueDelayMicroseconds: entry.maxQueueDelayMicroseconds,
                maxQueueSize: entry.maxQueueSize)
            if ModelKind.of(directory: entry.path) == .speech {
                let model = try WhisperModel(directory: entry.path)
                let runner = SpeechRunner(
                    name: name, speechModel: model, config: batcher,
                    observer: MetricsObserver(metrics: metrics, kind: .speech))
                metrics.registerSpeech(model: name)
                models[name] = Served(name: name, entry: entry, kind: .speech(model: model, runner: runner))
                logger.info(
                    "loaded model",
                    metadata: [
                        "model": "\(name)", "path": "\(entry.path)", "architecture": "whisper",
                        "max_batch_size": "\(entry.maxBatchSize)",
                    ])
                continue
            }
            let model = try Model(directory: entry.path)
            let preprocessor = try model.config.preprocessing.map {
                try ImagePreprocessor(config: $0, channels: model.vit.config.numChannels, imageSize: model.vit.config.imageSize)
            }
            let runner = ModelRunner(
                name: name, model: model, config: batcher, observer: MetricsObserver(metrics: metrics, kind: .image))
            metrics.register(
                model: name, acmPaths: model.vit.acmPaths,
                choices: model.vit.acmPaths.map { model.config.acm[$0]!.minChoice...model.config.acm[$0]!.numLearners })
            models[name] = Served(
                name: name, entry: entry, kind: .image(model: model, runner: runner, preprocessor: preprocessor))
            logger.info(
                "loaded model",
                metadata: [
                    "model": "\(name)", "path": "\(entry.path)", "acm_layers": "\(model.vit.acmPaths.count)",
                    "max_batch_size": "\(entry.maxBatchSize)",
                ])
        }
        self.models = models
    }

    var isDraining: Bool {
        stateLock.lock()
        defer { stateLock.unlock() }
        return draining
    }

    /// Refuses new inference (503) and finishes every accepted request; returns when all are answered
    /// by their runners.
    public func drain() {
        stateLock.lock()
        draining = true
        stateLock.unlock()
        for served in models.values { served.shutdown() }
    }

    // MARK: - HTTPHandler

    public func bodyTooLarge(_ exchange: HTTPExchange) -> HTTPResponse {
        if let name = modelName(in: exchange.path) { metrics.failure(model: name, reason: .tooLarge) }
        return error(413, "request body is larger than the server's max_body_bytes limit", connectionClose: true)
    }

    public func handle(_ exchange: HTTPExchange) -> HTTPResponse? {
        let parts = exchange.path.split(separator: "/", omittingEmptySubsequences: true).map(String.init)
        let get = exchange.method == "GET" || exchange.method == "HEAD"
        let post = exchange.method == "POST"
        switch parts {
        case ["v2", "health", "live"]:
            return get ? HTTPResponse(status: 200) : methodNotAllowed("GET")
        case ["v2", "health", "ready"]:
            return get ? HTTPResponse(status: isDraining ? 400 : 200) : methodNotAllowed("GET")
        case ["v2"]:
            return get ? json(200, serverMetadata) : methodNotAllowed("GET")
        case ["metrics"]:
            guard get else { return methodNotAllowed("GET") }
            for served in models.values { metrics.pending(model: served.name, served.pendingRequests) }
            return HTTPResponse(
                status: 200, headers: [("Content-Type", "text/plain; version=0.0.4; charset=utf-8")], body: metrics.render())
        default:
            break
        }
        guard parts.count >= 3, parts[0] == "v2", parts[1] == "models" else {
            return error(404, "no route for \(exchange.method) \(exchange.path)")
        }
        let name = parts[2]
        var rest = Array(parts.dropFirst(3))
        guard let served = models[name] else { return error(404, "unknown model '\(name)'") }
        if rest.count >= 2, rest[0] == "versions" {
            guard rest[1] == "1" else { return error(404, "model '\(name)' has no version '\(rest[1])'; its version is 1") }
            rest.removeFirst(2)
        }
        switch (rest, served.kind) {
        case ([], let .image(model, _, _)):
            return get ? json(200, modelMetadata(served, model)) : methodNotAllowed("GET")
        case ([], let .speech(model, _)):
            return get ? json(200, speechModelMetadata(name: name, model: model)) : methodNotAllowed("GET")
        case (["ready"], _):
            return get ? HTTPResponse(status: isDraining ? 400 : 200) : methodNotAllowed("GET")
        case (["config"], let .image(model, _, _)):
            return get ? json(200, modelConfig(served, model)) : methodNotAllowed("GET")
        case (["config"], let .speech(model, _)):
            return get ? json(200, speechModelConfig(name: name, model: model, entry: served.entry)) : methodNotAllowed("GET")
        case (["infer"], let .image(model, runner, preprocessor)):
            return post ? infer(exchange, served, model, runner, preprocessor) : methodNotAllowed("POST")
        case (["infer"], let .speech(model, runner)):
            return post ? speechInfer(exchange, served, model, runner) : methodNotAllowed("POST")
        case (["classify"], let .image(model, runner, preprocessor)):
            return post ? classify(exchange, served, model, runner, preprocessor) : methodNotAllowed("POST")
        case (["transcribe"], let .speech(model, runner)):
            return post ? transcribe(exchange, served, model, runner) : methodNotAllowed("POST")
        case (["classify"], .speech):
            return error(404, "model '\(name)' is a speech model: it has no /classify; POST audio to /v2/models/\(name)/transcribe, or use /infer")
        case (["transcribe"], .image):
            return error(404, "model '\(name)' is an image model: it has no /transcribe; POST an image to /v2/models/\(name)/classify, or use /infer")
        default:
            return error(404, "no route for \(exchange.method) \(exchange.path)")
        }
    }

    // MARK: - Inference

    private func infer(
        _ exchange: HTTPExchange, _ served: Served, _ model: Model, _ runner: ModelRunner, _ preprocessor: ImagePreprocessor?
    ) -> HTTPResponse? {
        let request: InferRequest
        do {
            request = try InferRequest.parse(
                body: exchange.body, headerLength: exchange.header("Inference-Header-Content-Length"),
                model: model, preprocessor: preprocessor, maxBatchSize: served.entry.maxBatchSize,
                defaultBudget: served.entry.defaultBudget)
        } catch {
            return fail(served.name, error)
        }
        let labels = model.config.labels
        return submit(exchange, served, images: request.images, count: request.count, budget: request.budget,
                      timeout: request.timeoutNanoseconds, id: request.id, runner: runner) { result in
            inferResponse(model: served.name, request: request, result: result, labels: labels)
        }
    }

    /// The curl route: the body is one encoded image; answers the top labels.
    private func classify(
        _ exchange: HTTPExchange, _ served: Served, _ model: Model, _ runner: ModelRunner, _ preprocessor: ImagePreprocessor?
    ) -> HTTPResponse? {
        let image: [Float]
        let budget: Double?
        do {
            budget = try queryBudget(exchange, served)
            guard !exchange.body.isEmpty else { throw ProtocolError.bad("the body must be a PNG or JPEG image") }
            image = try InferRequest.decodeImage(exchange.body, preprocessor: preprocessor, index: 0)
        } catch {
            return fail(served.name, error)
        }
        return submit(exchange, served, images: image, count: 1, budget: budget, timeout: nil, id: nil, runner: runner) { result in
            let p = result.output.probabilities(image: 0)
            let top = result.output.top(min(labelCount, result.classes), image: 0).map { c -> JSON in
                .object([("label", .string(model.label(c))), ("index", .integer(c)), ("probability", .number(p[c]))])
            }
            var fields: [(String, JSON)] = [
                ("model_name", .string(served.name)), ("labels", .array(top)),
                ("compute_fraction", .number(result.computeFraction[0])),
            ]
            if let budget { fields.append(("compute_budget", .number(budget))) }
            return HTTPResponse(status: 200, headers: [("Content-Type", "application/json")], body: JSON.object(fields).bytes)
        }
    }

    /// Queues the images on the model's runner; the exchange is answered from the runner's thread.
    private func submit(
        _ exchange: HTTPExchange, _ served: Served, images: [Float], count: Int, budget: Double?,
        timeout: UInt64?, id: String?, runner: ModelRunner, render: @escaping @Sendable (InferenceResult) -> HTTPResponse
    ) -> HTTPResponse? {
        let metrics = self.metrics, name = served.name
        return submit(
            exchange, name: name, runner: runner, input: images, count: count, budget: budget, timeout: timeout, id: id,
            succeeded: { result, seconds in
                let fraction = result.computeFraction.reduce(0, +) / Double(max(count, 1))
                metrics.success(model: name, seconds: seconds, fraction: fraction, budget: budget)
                return fraction
            }, render: render)
    }

    /// Queues a job on a model's runner; the exchange is answered from the runner's thread.
    /// `succeeded` records a success's metrics and returns the compute fraction to log, if any.
    private func submit<Engine: BatchEngine>(
        _ exchange: HTTPExchange, name: String, runner: BatchRunner<Engine>, input: Engine.Input, count: Int,
        budget: Double?, timeout: UInt64?, id: String?,
        succeeded: @escaping @Sendable (RunResult<Engine.Output>, Double) -> Double?,
        render: @escaping @Sendable (RunResult<Engine.Output>) -> HTTPResponse
    ) -> HTTPResponse? {
        if isDraining {
            return fail(name, ProtocolError(status: 503, message: "the server is shutting down", reason: .shuttingDown), id: id)
        }
        let started = exchange.arrived
        let metrics = self.metrics, logger = self.logger
        let job = BatchJob<Engine.Input, Engine.Output>(
            input: input, count: count, policy: budget.map { .cap($0) } ?? .auto, timeoutNanoseconds: timeout
        ) { outcome in
            let seconds = Double(DispatchTime.now().uptimeNanoseconds - started) / 1e9
            let response: HTTPResponse
            switch outcome {
            case let .success(result):
                response = render(result)
                let fraction = succeeded(result, seconds)
                logger.debug(
                    "infer", metadata: requestMetadata(id, name, 200, seconds, fraction, batch: result.batchItems))
            case .timedOut:
                response = errorResponse(503, "request timeout expired in the queue", retryAfter: true)
                metrics.failure(model: name, reason: .timeout)
                logger.debug("infer", metadata: requestMetadata(id, name, 503, seconds, nil, batch: nil))
            case .shuttingDown:
                response = errorResponse(503, "the server is shutting down", retryAfter: false)
                metrics.failure(model: name, reason: .shuttingDown)
                logger.debug("infer", metadata: requestMetadata(id, name, 503, seconds, nil, batch: nil))
            case let .failed(message):
                response = errorResponse(500, message, retryAfter: false)
                metrics.failure(model: name, reason: .internalError)
                logger.error("infer failed: \(message)", metadata: requestMetadata(id, name, 500, seconds, nil, batch: nil))
            }
            exchange.complete(response)
        }
        switch runner.submit(job) {
        case .accepted:
            return nil
        case .queueFull:
            metrics.failure(model: name, reason: .queueFull)
            logger.debug("infer", metadata: requestMetadata(id, name, 503, 0, nil, batch: nil))
            return errorResponse(503, "the queue of model '\(name)' is full; retry later", retryAfter: true)
        case .shuttingDown:
            metrics.failure(model: name, reason: .shuttingDown)
            return errorResponse(503, "the server is shutting down", retryAfter: false)
        }
    }

    // MARK: - Speech

    private func speechInfer(
        _ exchange: HTTPExchange, _ served: Served, _ model: WhisperModel, _ runner: SpeechRunner
    ) -> HTTPResponse? {
        let request: SpeechRequest
        do {
            request = try SpeechRequest.parse(
                body: exchange.body, headerLength: exchange.header("Inference-Header-Content-Length"), model: model,
                maxBatchSize: served.entry.maxBatchSize, defaultBudget: served.entry.defaultBudget)
        } catch {
            return fail(served.name, error)
        }
        return submitSpeech(
            exchange, served, runner, mels: request.mels, budget: request.budget, timeout: request.timeoutNanoseconds,
            id: request.id
        ) { result in
            speechResponse(model: served.name, request: request, result: result)
        }
    }

    /// The curl route of a speech model: the body is one audio file; answers its text and tokens.
    private func transcribe(
        _ exchange: HTTPExchange, _ served: Served, _ model: WhisperModel, _ runner: SpeechRunner
    ) -> HTTPResponse? {
        let mel: Tensor
        let budget: Double?
        do {
            budget = try queryBudget(exchange, served)
            guard !exchange.body.isEmpty else { throw ProtocolError.bad("the body must be an audio file (WAV, FLAC, ...)") }
            mel = try SpeechRequest.decodeAudio(exchange.body, model: model, index: 0)
        } catch {
            return fail(served.name, error)
        }
        return submitSpeech(exchange, served, runner, mels: [mel], budget: budget, timeout: nil, id: nil) { result in
            transcribeResponse(model: served.name, budget: budget, transcription: result.output[0])
        }
    }

    private func submitSpeech(
        _ exchange: HTTPExchange, _ served: Served, _ runner: SpeechRunner, mels: [Tensor], budget: Double?,
        timeout: UInt64?, id: String?, render: @escaping @Sendable (SpeechResult) -> HTTPResponse
    ) -> HTTPResponse? {
        let metrics = self.metrics, name = served.name
        return submit(
            exchange, name: name, runner: runner, input: mels, count: mels.count, budget: budget, timeout: timeout,
            id: id,
            succeeded: { _, seconds in
                metrics.speechSuccess(model: name, seconds: seconds)
                return nil
            }, render: render)
    }

    /// A curl route's budget: its `compute_budget` query parameter, else the model's default.
    private func queryBudget(_ exchange: HTTPExchange, _ served: Served) throws -> Double? {
        try exchange.query("compute_budget").map { try parseBudget(nil, text: $0) } ?? served.entry.defaultBudget
    }

    /// A request that could not be parsed: a `ProtocolError` is answered as it says, anything else as 500.
    private func fail(_ model: String, _ error: any Error) -> HTTPResponse {
        let e = error as? ProtocolError ?? ProtocolError(status: 500, message: "\(error)", reason: .internalError)
        return fail(model, e, id: nil)
    }

    private func fail(_ model: String, _ e: ProtocolError, id: String?) -> HTTPResponse {
        metrics.failure(model: model, reason: e.reason)
        logger.debug("infer", metadata: requestMetadata(id, model, e.status, 0, nil, batch: nil).merging(["error": "\(e.message)"]) { a, _ in a })
        return errorResponse(e.status, e.message, retryAfter: e.status == 503)
    }

    // MARK: - Metadata

    private var serverMetadata: JSON {
        .object([
            ("name", .string("acm-serve")), ("version", .string(Self.version)),
            ("extensions", .array(["binary_tensor_data", "classification", "model_configuration", "compute_budget"].map { .string($0) })),
        ])
    }

    private func inputDims(_ model: Model) -> [Int] {
        let c = model.vit.config
        return [c.numChannels, c.imageSize, c.imageSize]
    }

    private func modelMetadata(_ served: Served, _ model: Model) -> JSON {
        let classes = model.vit.config.numClasses
        var outputs: [JSON] = [
            .object([("name", .string(TensorName.logits)), ("datatype", .string("FP32")), ("shape", .array([.integer(-1), .integer(classes)]))])
        ]
        if model.config.labels != nil {
            outputs.append(
                .object([("name", .string(TensorName.labels)), ("datatype", .string("BYTES")),
                         ("shape", .array([.integer(-1), .integer(min(labelCount, classes))]))]))
        }
        return .object([
            ("name", .string(served.name)), ("versions", .array([.string("1")])), ("platform", .string("acm-serve")),
            ("inputs", .array([.object([
                ("name", .string(TensorName.input)), ("datatype", .string("FP32")),
                ("shape", .array(([-1] + inputDims(model)).map { .integer($0) })),
            ])])),
            ("outputs", .array(outputs)),
        ])
    }

    /// Triton's model configuration, which perf_analyzer reads.
    private func modelConfig(_ served: Served, _ model: Model) -> JSON {
        let classes = model.vit.config.numClasses
        var outputs: [JSON] = [
            .object([("name", .string(TensorName.logits)), ("data_type", .string("TYPE_FP32")), ("dims", .array([.integer(classes)]))])
        ]
        if model.config.labels != nil {
            outputs.append(.object([
                ("name", .string(TensorName.labels)), ("data_type", .string("TYPE_STRING")),
                ("dims", .array([.integer(min(labelCount, classes))])),
            ]))
        }
        return .object([
            ("name", .string(served.name)), ("platform", .string("acm-serve")), ("backend", .string("acm")),
            ("version_policy", .object([("latest", .object([("num_versions", .integer(1))]))])),
            ("max_batch_size", .integer(served.entry.maxBatchSize)),
            ("input", .array([.object([
                ("name", .string(TensorName.input)), ("data_type", .string("TYPE_FP32")), ("format", .string("FORMAT_NONE")),
                ("dims", .array(inputDims(model).map { .integer($0) })),
            ])])),
            ("output", .array(outputs)),
            ("dynamic_batching", .object([
                ("max_queue_delay_microseconds", .integer(served.entry.maxQueueDelayMicroseconds)),
                ("default_queue_policy", .object([("max_queue_size", .integer(served.entry.maxQueueSize))])),
            ])),
        ])
    }

    // MARK: - Helpers

    private func modelName(in path: String) -> String? {
        let parts = path.split(separator: "/").map(String.init)
        guard parts.count >= 3, parts[0] == "v2", parts[1] == "models", models[parts[2]] != nil else { return nil }
        return parts[2]
    }

    private func json(_ status: Int, _ value: JSON) -> HTTPResponse {
        HTTPResponse(status: status, headers: [("Content-Type", "application/json")], body: value.bytes)
    }

    private func error(_ status: Int, _ message: String, connectionClose: Bool = false) -> HTTPResponse {
        var r = errorResponse(status, message, retryAfter: false)
        if connectionClose { r.headers.append(("Connection", "close")) }
        return r
    }

    private func methodNotAllowed(_ allowed: String) -> HTTPResponse {
        var r = errorResponse(405, "method not allowed; use \(allowed)", retryAfter: false)
        r.headers.append(("Allow", allowed))
        return r
    }
}

/// `{"error": message}` with the status; 503s that are worth retrying say when.
func errorResponse(_ status: Int, _ message: String, retryAfter: Bool) -> HTTPResponse {
    var headers = [("Content-Type", "application/json")]
    if retryAfter { headers.append(("Retry-After", "1")) }
    return HTTPResponse(status: status, headers: headers, body: JSON.object([("error", .string(message))]).bytes)
}

/// The fields of the one log line per request.
func requestMetadata(_ id: String?, _ model: String, _ status: Int, _ seconds: Double, _ fraction: Double?, batch: Int?)
    -> Logger.Metadata
{
    var m: Logger.Metadata = [
        "model": "\(model)", "status": "\(status)", "latency_ms": "\(String(format: "%.2f", seconds * 1000))",
    ]
    if let id { m["id"] = "\(id)" }
    if let fraction { m["compute_fraction"] = "\(String(format: "%.4f", fraction))" }
    if let batch { m["batch_images"] = "\(batch)" }
    return m
}

/// Feeds the runner's batch and queue events into the Prometheus metrics.
final class MetricsObserver: RunnerObserver, @unchecked Sendable {
    let metrics: ServingMetrics
    let kind: ModelKind
    init(metrics: ServingMetrics, kind: ModelKind) {
        self.metrics = metrics
        self.kind = kind
    }

    func batchExecuted(
        model: String, images: Int, requests: Int, computeSeconds: Double, learnerHistogram: [[Int]], acmPaths: [String]
    ) {
        switch kind {
        case .image:
            metrics.batch(model: model, images: images, seconds: computeSeconds, acmPaths: acmPaths, histogram: learnerHistogram)
        case .speech:
            metrics.speechBatch(model: model, utterances: images, seconds: computeSeconds)
        }
    }

    func requestFinished(model: String, queueSeconds: Double, timedOut: Bool) {
        metrics.queued(model: model, seconds: queueSeconds)
    }
}
