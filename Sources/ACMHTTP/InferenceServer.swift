import ACMCore
import ACMModels
import ACMServing
import ACMWhisper
import Foundation
import Logging

/// The Open Inference Protocol over HTTP (docs/http-api.md): routes each request to its model's
/// endpoint, submits what the endpoint parsed to the model's runner, and answers when the batch is done.
public final class InferenceServer: HTTPHandler, @unchecked Sendable {
    public static let version = "0.1.0"
    let endpoints: [String: any Endpoint]
    public let metrics: ServingMetrics
    let logger: Logger
    /// nil: no authentication.
    let apiKeys: APIKeys?
    let metricsPublic: Bool
    private let stateLock = NSLock()
    private var draining = false

    /// Loads every configured model and starts its runner. With `apiKeys`, every route but the health checks
    /// (and `/metrics`, with `auth.metrics_public`) needs one of the keys.
    public init(
        config: ServerConfig, metrics: ServingMetrics = ServingMetrics(), logger: Logger, apiKeys: APIKeys? = nil
    ) throws {
        self.metrics = metrics
        self.logger = logger
        self.apiKeys = apiKeys
        self.metricsPublic = config.auth.metricsPublic
        metrics.registerHTTPSeries()
        var endpoints: [String: any Endpoint] = [:]
        for (name, entry) in config.models.sorted(by: { $0.key < $1.key }) {
            var details: Logger.Metadata
            switch ModelKind.of(directory: entry.path) {
            case .speech:
                endpoints[name] = SpeechEndpoint(
                    name: name, entry: entry, model: try WhisperModel(directory: entry.path, precision: entry.precision), metrics: metrics)
                details = ["architecture": "whisper"]
            case .image:
                let model = try Model(directory: entry.path, precision: entry.precision)
                endpoints[name] = try ImageEndpoint(name: name, entry: entry, model: model, metrics: metrics)
                details = ["acm_layers": "\(model.vit.acmPaths.count)"]
            }
            if let adaptive = entry.adaptive {
                guard endpoints[name]!.hasACMs else {
                    throw ModelError.config("\(name): adaptive_budget needs a model with ACM layers; this one is dense")
                }
                metrics.registerAdaptive(model: name, ladder: adaptive.ladder)
                details["adaptive_budget"] = "target \(adaptive.targetSeconds * 1000) ms, floor \(adaptive.minBudget.value)"
            }
            let precision = endpoints[name]!.precision
            details.merge([
                "model": "\(name)", "path": "\(entry.path)", "max_batch_size": "\(entry.maxBatchSize)",
                "precision": "\(precision)",
            ]) { a, _ in a }
            logger.info("loaded model", metadata: details)
            if precision != entry.precision {
                logger.warning(
                    "\(entry.precision) is not available here; the model runs in \(precision)",
                    metadata: ["model": "\(name)", "bf16": "\(BF16.description)"])
            }
        }
        self.endpoints = endpoints
    }

    var isDraining: Bool {
        stateLock.withLock { draining }
    }

    /// Refuses new inference (503) and finishes every accepted request; returns when all are answered
    /// by their runners.
    public func drain() {
        beginDrain()
        waitForRunners()
    }

    /// Refuses new inference (503) from now on; the runners go on with what they accepted.
    public func beginDrain() {
        stateLock.withLock { draining = true }
        for endpoint in endpoints.values { endpoint.close() }
    }

    /// Answers every request still waiting in a queue with 503; the batches running finish. Returns how many.
    @discardableResult
    public func abandonQueued() -> Int {
        endpoints.values.reduce(0) { $0 + $1.abandonQueued() }
    }

    /// Returns when every runner has answered what it accepted (after `beginDrain`).
    public func waitForRunners() {
        for endpoint in endpoints.values { endpoint.shutdown() }
    }

    // MARK: - HTTPHandler

    public func admit(_ exchange: HTTPExchange) -> HTTPResponse? {
        authenticate(exchange)
    }

    /// The 401 for a request that needs a key and has none that is valid, or nil.
    func authenticate(_ request: any HTTPRequest) -> HTTPResponse? {
        guard let apiKeys else { return nil }
        let parts = request.path.split(separator: "/", omittingEmptySubsequences: true)
        if parts.count == 3, parts[0] == "v2", parts[1] == "health" { return nil }
        if metricsPublic, parts == ["metrics"] { return nil }
        if parts.isEmpty { return nil }  // the demo page: its model list is left out, and its calls need a key
        let presented = request.header("Authorization")
        if apiKeys.authorizes(presented) { return nil }
        metrics.httpRefused(.unauthorized)
        logger.debug("unauthorized", metadata: ["path": "\(request.path)", "method": "\(request.method)"])
        let (message, challenge) =
            presented == nil
            ? ("this server needs an API key: send Authorization: Bearer KEY", #"Bearer realm="acm-serve""#)
            : ("the API key is not valid", #"Bearer realm="acm-serve", error="invalid_token""#)
        var r = errorResponse(401, message)
        r.headers += [("WWW-Authenticate", challenge), ("Connection", "close")]
        return r
    }

    public func refuse(_ exchange: HTTPExchange, _ refusal: HTTPRefusal) -> HTTPResponse {
        var r: HTTPResponse
        switch refusal {
        case .uriTooLong:
            metrics.httpRefused(.uriTooLong)
            r = errorResponse(414, "the request's path and query are longer than the server's max_uri_bytes limit")
        case .headersTooLarge:
            metrics.httpRefused(.headersTooLarge)
            r = errorResponse(431, "the request's header fields are larger than the server's max_header_bytes limit")
        case .bodyTooLarge:
            if let name = modelName(in: exchange.path) { metrics.failure(model: name, reason: .tooLarge) }
            r = errorResponse(413, "request body is larger than the server's max_body_bytes limit")
        case .missingHost:
            metrics.httpRefused(.missingHost)
            r = errorResponse(400, "an HTTP/1.1 request must carry a Host header field")
        case .bodyBudgetExhausted:
            metrics.httpRefused(.bodyBudgetExhausted)
            r = errorResponse(
                503, "the server is buffering as many request bodies as its max_inflight_body_bytes allows; retry later",
                retryAfter: true)
        }
        r.headers.append(("Connection", "close"))
        return r
    }

    public func headerDeadlineExpired() {
        metrics.httpRefused(.headerTimeout)
    }

    public func handle(_ exchange: HTTPExchange) -> HTTPResponse? {
        respond(to: exchange)
    }

    /// The answer to `request` now, or nil when a runner will answer it (`HTTPRequest.complete`).
    func respond(to request: any HTTPRequest) -> HTTPResponse? {
        let parts = request.path.split(separator: "/", omittingEmptySubsequences: true).map(String.init)
        let get = request.method == "GET" || request.method == "HEAD"
        switch parts {
        case ["v2", "health", "live"]:
            return get ? jsonResponse(200, JSON.object([("live", .bool(true))]).bytes) : methodNotAllowed("GET")
        case ["v2", "health", "ready"]:
            // Not ready while draining, so that load balancers stop sending before the listener closes.
            return get
                ? jsonResponse(isDraining ? 400 : 200, JSON.object([("ready", .bool(!isDraining))]).bytes)
                : methodNotAllowed("GET")
        case ["v2", "models", "stats"]:
            return get ? jsonResponse(200, statistics(endpoints.keys.sorted()).bytes) : methodNotAllowed("GET")
        case ["v2"]:
            return get ? jsonResponse(200, serverMetadata.bytes) : methodNotAllowed("GET")
        case ["metrics"]:
            guard get else { return methodNotAllowed("GET") }
            for (name, endpoint) in endpoints { metrics.pending(model: name, endpoint.pendingRequests) }
            return HTTPResponse(
                status: 200, headers: [("Content-Type", "text/plain; version=0.0.4; charset=utf-8")], body: metrics.render())
        case []:
            return get ? demoPage() : methodNotAllowed("GET")
        default:
            break
        }
        guard parts.count >= 3, parts[0] == "v2", parts[1] == "models" else {
            return errorResponse(404, "no route for \(request.method) \(request.path)")
        }
        guard let endpoint = endpoints[parts[2]] else { return errorResponse(404, "unknown model '\(parts[2])'") }
        return route(endpoint, Array(parts.dropFirst(3)), request)
    }

    /// A request under `/v2/models/NAME[/versions/1]`.
    private func route<E: Endpoint>(_ endpoint: E, _ rest: [String], _ request: any HTTPRequest) -> HTTPResponse? {
        var rest = rest
        let name = endpoint.name
        if rest.count >= 2, rest[0] == "versions" {
            guard rest[1] == "1" else {
                return fail(name, .notFound("model '\(name)' has no version '\(rest[1])'; its version is 1"), id: nil)
            }
            rest.removeFirst(2)
        }
        let get = request.method == "GET" || request.method == "HEAD"
        let post = request.method == "POST"
        switch rest {
        case []:
            return get ? jsonResponse(200, endpoint.metadata.bytes) : methodNotAllowed("GET")
        case ["ready"]:
            return get
                ? jsonResponse(isDraining ? 400 : 200, JSON.object([("name", .string(name)), ("ready", .bool(!isDraining))]).bytes)
                : methodNotAllowed("GET")
        case ["stats"]:
            return get ? jsonResponse(200, statistics([name]).bytes) : methodNotAllowed("GET")
        case ["config"]:
            return get ? jsonResponse(200, endpoint.config.bytes) : methodNotAllowed("GET")
        case ["infer"]:
            guard post else { return methodNotAllowed("POST") }
            return submit(endpoint, request) {
                var envelope = try RequestEnvelope(
                    body: request.body, headerLength: request.header("Inference-Header-Content-Length"),
                    defaultBudget: endpoint.entry.defaultBudget, adaptiveBudget: endpoint.entry.adaptive != nil)
                return try endpoint.parseInfer(&envelope)
            }
        case [E.curlRoute]:
            guard post else { return methodNotAllowed("POST") }
            return submit(endpoint, request) { try endpoint.parseCurl(request) }
        case [ImageEndpoint.curlRoute], [SpeechEndpoint.curlRoute]:
            return fail(
                name,
                .notFound(
                    "model '\(name)' is \(E.kindName): it has no /\(rest[0]); POST \(E.curlBody) to "
                        + "/v2/models/\(name)/\(E.curlRoute), or use /infer"),
                id: nil)
        default:
            return fail(name, .notFound("no route for \(request.method) \(request.path)"), id: nil)
        }
    }

    // MARK: - Inference

    /// Parses a request with `parse` and queues it on the endpoint's runner; the request is answered from
    /// the runner's thread.
    private func submit<E: Endpoint>(
        _ endpoint: E, _ request: any HTTPRequest, parse: () throws -> Submission<E.Engine>
    ) -> HTTPResponse? {
        let name = endpoint.name
        let submission: Submission<E.Engine>
        let parseStart = DispatchTime.now().uptimeNanoseconds
        do {
            submission = try parse()
        } catch {
            let e = error as? ProtocolError ?? ProtocolError(status: 500, message: "\(error)", reason: .internalError)
            return fail(name, e, id: nil)
        }
        let parseSeconds = secondsSince(parseStart)
        if isDraining {
            return fail(name, ProtocolError(status: 503, message: "the server is shutting down", reason: .shuttingDown), id: submission.id)
        }
        let started = request.arrived
        let (metrics, logger, id, budget, render) = (self.metrics, self.logger, submission.id, submission.budget, submission.render)
        let refusal = submission.refusal
        let job = BatchJob<E.Engine.Input, E.Engine.Output>(
            input: submission.input, count: submission.count, policy: submission.policy, adaptive: submission.adaptive,
            timeoutNanoseconds: submission.timeoutNanoseconds
        ) { outcome in
            let seconds = secondsSince(started)
            let response: HTTPResponse
            switch outcome {
            case let .success(result):
                if let refused = refusal?(result) {
                    response = errorResponse(refused.status, refused.message)
                    metrics.failure(model: name, reason: refused.reason, seconds: seconds)
                    logger.debug("infer", metadata: requestMetadata(id, name, refused.status, seconds, nil, batch: result.batchItems))
                    break
                }
                let renderStart = DispatchTime.now().uptimeNanoseconds
                response = render(result)
                metrics.statistics.answered(
                    model: name, total: seconds, queue: result.queueSeconds, input: parseSeconds,
                    infer: result.computeSeconds, output: secondsSince(renderStart))
                let fraction = endpoint.recordSuccess(result, seconds: seconds, budget: budget)
                logger.debug("infer", metadata: requestMetadata(id, name, 200, seconds, fraction, batch: result.batchItems))
            case .timedOut:
                response = errorResponse(503, "request timeout expired in the queue", retryAfter: true)
                metrics.failure(model: name, reason: .timeout, seconds: seconds)
                logger.debug("infer", metadata: requestMetadata(id, name, 503, seconds, nil, batch: nil))
            case .abandoned:
                response = errorResponse(503, "the server is shutting down; the request was not run")
                metrics.failure(model: name, reason: .shuttingDown, seconds: seconds)
                logger.debug("infer", metadata: requestMetadata(id, name, 503, seconds, nil, batch: nil))
            case let .failed(message):
                response = errorResponse(500, message)
                metrics.failure(model: name, reason: .internalError, seconds: seconds)
                logger.error("infer failed: \(message)", metadata: requestMetadata(id, name, 500, seconds, nil, batch: nil))
            }
            request.complete(response)
        }
        switch endpoint.runner.submit(job) {
        case .accepted:
            return nil
        case .queueFull:
            let e = ProtocolError(status: 503, message: "the queue of model '\(name)' is full; retry later", reason: .queueFull)
            return fail(name, e, id: id)
        case .shuttingDown:
            return fail(name, ProtocolError(status: 503, message: "the server is shutting down", reason: .shuttingDown), id: id)
        }
    }

    /// Counts and logs a refused request, and answers it as `e` says (503s with Retry-After, but for a
    /// shutdown).
    private func fail(_ model: String, _ e: ProtocolError, id: String?) -> HTTPResponse {
        metrics.failure(model: model, reason: e.reason)
        logger.debug("infer", metadata: requestMetadata(id, model, e.status, 0, nil, batch: nil).merging(["error": "\(e.message)"]) { a, _ in a })
        return errorResponse(e.status, e.message, retryAfter: e.status == 503 && e.reason != .shuttingDown)
    }

    // MARK: - Helpers

    private var serverMetadata: JSON {
        .object([
            ("name", .string("acm-serve")), ("version", .string(Self.version)),
            ("extensions", .array(["binary_tensor_data", "classification", "model_configuration", "statistics", "compute_budget"].map { .string($0) })),
        ])
    }

    /// Triton's statistics extension: the `model_stats` of `models`, each at version 1.
    private func statistics(_ models: [String]) -> JSON {
        func duration(_ d: ModelStatistics.Duration) -> JSON {
            .object([("count", .integer(d.count)), ("ns", .integer(Int(clamping: d.nanoseconds)))])
        }
        let none = duration(ModelStatistics.Duration())
        let stats = models.compactMap { name -> JSON? in
            guard let s = metrics.statistics.snapshot(model: name) else { return nil }
            return .object([
                ("name", .string(name)), ("version", .string("1")),
                ("last_inference", .integer(Int(clamping: s.lastInference))),
                ("inference_count", .integer(s.inferenceCount)), ("execution_count", .integer(s.executionCount)),
                (
                    "inference_stats",
                    .object([
                        ("success", duration(s.success)), ("fail", duration(s.fail)), ("queue", duration(s.queue)),
                        ("compute_input", duration(s.computeInput)), ("compute_infer", duration(s.computeInfer)),
                        ("compute_output", duration(s.computeOutput)), ("cache_hit", none), ("cache_miss", none),
                    ])
                ),
                (
                    "batch_stats",
                    .array(
                        s.batches.sorted { $0.key < $1.key }.map { size, d in
                            // The forward pass is not split into input, infer and output here: all of it is infer.
                            let untimed = JSON.object([("count", .integer(d.count)), ("ns", .integer(0))])
                            return .object([
                                ("batch_size", .integer(size)), ("compute_input", untimed), ("compute_infer", duration(d)),
                                ("compute_output", untimed),
                            ])
                        })
                ),
                ("memory_usage", .array([])),
            ])
        }
        return .object([("model_stats", .array(stats))])
    }

    private func modelName(in path: String) -> String? {
        let parts = path.split(separator: "/").map(String.init)
        guard parts.count >= 3, parts[0] == "v2", parts[1] == "models", endpoints[parts[2]] != nil else { return nil }
        return parts[2]
    }

    private func methodNotAllowed(_ allowed: String) -> HTTPResponse {
        var r = errorResponse(405, "method not allowed; use \(allowed)")
        r.headers.append(("Allow", allowed))
        return r
    }
}

/// The fields of the one log line per request.
/// Seconds from `start` (a `DispatchTime` reading in nanoseconds) to now.
private func secondsSince(_ start: UInt64) -> Double { Double(DispatchTime.now().uptimeNanoseconds - start) / 1e9 }

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
