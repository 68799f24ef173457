import ACMCore
import Foundation
import Logging
import Prometheus
import Synchronization

/// Why a request failed, as the `reason` label of `acm_request_failure_total`.
public enum FailureReason: String, Sendable, CaseIterable {
    case badRequest = "bad_request"
    case notFound = "not_found"
    case tooLarge = "too_large"
    case queueFull = "queue_full"
    case timeout
    case shuttingDown = "shutting_down"
    case internalError = "internal"
}

/// Why the HTTP front end refused a request before any model saw it (`acm_http_refused_total`).
public enum HTTPRefusalReason: String, Sendable, CaseIterable {
    case unauthorized
    case uriTooLong = "uri_too_long"
    case headersTooLarge = "headers_too_large"
    /// The cap on request bodies buffered at once was reached (503).
    case bodyBudgetExhausted = "body_budget"
    /// A connection's request headers did not arrive in time; it was closed.
    case headerTimeout = "header_timeout"
    /// An HTTP/1.1 request without a Host header field (400).
    case missingHost = "missing_host"
}

/// The server's Prometheus metrics (docs/metrics.md): one registry, every name prefixed `acm_`, every
/// series labelled by model. Thread-safe: the collectors are atomic.
public final class ServingMetrics: Sendable {
    public let registry = PrometheusCollectorRegistry()
    /// The same events as Triton's statistics extension reports them (`/v2/models/NAME/stats`).
    public let statistics = ModelStatistics()

    /// Seconds: from 100 µs to 10 s.
    static let durationBuckets: [Double] = [
        0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10,
    ]
    static let fractionBuckets: [Double] = [0.1, 0.2, 0.25, 0.3, 0.4, 0.5, 0.6, 0.7, 0.75, 0.8, 0.9, 1.0]
    static let batchBuckets: [Double] = [1, 2, 4, 8, 16, 32, 64, 128, 256]

    /// Each registered model's collectors, looked up in the registry once: its `make…` calls build the metric's
    /// name, check its help text and hash its labels on every call, which at 1,300 requests/s (the bundled ACM model
    /// at its floor, on one core) came to about 1.5% of the server's CPU, as much as the HTTP handler's own work.
    private let collectors = Mutex<[String: ModelCollectors]>([:])

    public init() {}

    private func collectors(_ model: String) -> ModelCollectors? { collectors.withLock { $0[model] } }

    private func name(_ metric: String, _ unit: String, _ help: String) -> MetricNameDescriptor {
        MetricNameDescriptor(namespace: "acm", metricName: metric, unitName: unit, helpText: help)
    }

    /// Registers every per-model series at zero, so that dashboards see them before the first request:
    /// those of requests, queue and batches (batch sizes in images or utterances, by `kind`), the compute
    /// fraction, budget and budget mode, and the tokens per k of each ACM (`acmPaths`, each with its
    /// `choices` of k).
    public func register(model: String, kind: ModelKind, acmPaths: [String], choices: [ClosedRange<Int>]) {
        statistics.register(model: model)
        for reason in FailureReason.allCases { failure(model: model, reason: reason, count: 0) }
        // Every other series is registered, at zero, as its collector is looked up.
        let m = [("model", model)]
        let found = ModelCollectors(
            success: registry.makeCounter(descriptor: successDescriptor, labels: m),
            inferences: registry.makeCounter(descriptor: inferencesDescriptor, labels: m),
            batches: registry.makeCounter(descriptor: batchesDescriptor, labels: m),
            modeAuto: registry.makeCounter(descriptor: modeDescriptor, labels: m + [("mode", "auto")]),
            modeBudget: registry.makeCounter(descriptor: modeDescriptor, labels: m + [("mode", "budget")]),
            requestDuration: registry.makeValueHistogram(descriptor: requestDurationDescriptor, labels: m, buckets: Self.durationBuckets),
            queueDuration: registry.makeValueHistogram(descriptor: queueDurationDescriptor, labels: m, buckets: Self.durationBuckets),
            computeDuration: registry.makeValueHistogram(descriptor: computeDurationDescriptor, labels: m, buckets: Self.durationBuckets),
            fraction: registry.makeValueHistogram(descriptor: fractionDescriptor, labels: m, buckets: Self.fractionBuckets),
            budget: registry.makeValueHistogram(descriptor: budgetDescriptor, labels: m, buckets: Self.fractionBuckets),
            batchSize: registry.makeValueHistogram(descriptor: batchSizeDescriptor(kind), labels: m, buckets: Self.batchBuckets),
            pending: registry.makeGauge(descriptor: pendingDescriptor, labels: m),
            acmPaths: acmPaths,
            tokens: zip(acmPaths, choices).map { path, ks in
                (ks.lowerBound, ks.map { registry.makeCounter(descriptor: tokensDescriptor, labels: m + [("layer", path), ("k", "\($0)")]) })
            })
        collectors.withLock { $0[model] = found }
        pending(model: model, 0)
    }

    private var successDescriptor: MetricNameDescriptor {
        name("request_success", "total", "Inference requests answered with 200.")
    }
    private var failureDescriptor: MetricNameDescriptor {
        name("request_failure", "total", "Inference requests answered with an error, by reason.")
    }
    private var inferencesDescriptor: MetricNameDescriptor {
        name("inference", "total", "Images (or utterances, for a speech model) inferred; a request may carry several.")
    }
    private var batchesDescriptor: MetricNameDescriptor {
        name("batch_execution", "total", "Batches the model ran.")
    }
    private var requestDurationDescriptor: MetricNameDescriptor {
        name("request_duration", "seconds", "Time from a request's arrival to its answer being ready.")
    }
    private var queueDurationDescriptor: MetricNameDescriptor {
        name("queue_duration", "seconds", "Time a request waited in the model's queue.")
    }
    private var computeDurationDescriptor: MetricNameDescriptor {
        name("compute_duration", "seconds", "Time the model took for the batch a request ran in.")
    }
    private func batchSizeDescriptor(_ kind: ModelKind) -> MetricNameDescriptor {
        switch kind {
        case .image: return name("batch_size", "images", "Images per executed batch.")
        case .speech: return name("batch_size", "utterances", "Utterances per executed batch of a speech model.")
        }
    }
    private var pendingDescriptor: MetricNameDescriptor {
        name("pending_requests", "", "Requests waiting in the model's queue.")
    }
    private var tokensDescriptor: MetricNameDescriptor {
        name("layer_tokens", "total", "Tokens that ran k learners at an ACM layer.")
    }
    private var fractionDescriptor: MetricNameDescriptor {
        name("compute_fraction", "ratio", "Compute fraction used per request: executed over all-learner FLOPs.")
    }
    private var budgetDescriptor: MetricNameDescriptor {
        name("compute_budget", "ratio", "compute_budget asked for, per request that set one.")
    }
    private var modeDescriptor: MetricNameDescriptor {
        name("budget_mode_requests", "total", "Requests by how learners were chosen: the gates alone (auto) or under a budget.")
    }

    public func success(model: String, seconds: Double, fraction: Double, budget: Double?) {
        if let c = collectors(model) {
            c.success.increment()
            c.requestDuration.record(seconds)
            c.fraction.record(fraction)
            (budget == nil ? c.modeAuto : c.modeBudget).increment()
            if let budget { c.budget.record(budget) }
            return
        }
        let m = [("model", model)]
        registry.makeCounter(descriptor: successDescriptor, labels: m).increment()
        registry.makeValueHistogram(descriptor: requestDurationDescriptor, labels: m, buckets: Self.durationBuckets)
            .record(seconds)
        registry.makeValueHistogram(descriptor: fractionDescriptor, labels: m, buckets: Self.fractionBuckets)
            .record(fraction)
        registry.makeCounter(descriptor: modeDescriptor, labels: m + [("mode", budget == nil ? "auto" : "budget")])
            .increment()
        if let budget {
            registry.makeValueHistogram(descriptor: budgetDescriptor, labels: m, buckets: Self.fractionBuckets)
                .record(budget)
        }
    }

    private var httpRefusedDescriptor: MetricNameDescriptor {
        name("http_refused", "total", "Requests or connections the HTTP front end refused before routing, by reason.")
    }

    /// The front end's series, at zero.
    public func registerHTTPSeries() {
        for reason in HTTPRefusalReason.allCases { httpRefused(reason, count: 0) }
    }

    public func httpRefused(_ reason: HTTPRefusalReason, count: Int = 1) {
        registry.makeCounter(descriptor: httpRefusedDescriptor, labels: [("reason", reason.rawValue)])
            .increment(by: Int64(count))
    }

    /// `count` requests of `model` failed for `reason`, after `seconds` each (0: refused on arrival).
    public func failure(model: String, reason: FailureReason, count: Int = 1, seconds: Double = 0) {
        registry.makeCounter(descriptor: failureDescriptor, labels: [("model", model), ("reason", reason.rawValue)])
            .increment(by: Int64(count))
        for _ in 0..<count { statistics.failure(model: model, seconds: seconds) }
    }

    public func queued(model: String, seconds: Double) {
        if let c = collectors(model) { return c.queueDuration.record(seconds) }
        registry.makeValueHistogram(
            descriptor: queueDurationDescriptor, labels: [("model", model)], buckets: Self.durationBuckets
        ).record(seconds)
    }

    private var adaptiveBudgetDescriptor: MetricNameDescriptor {
        name("adaptive_budget", "ratio", "The budget the adaptive controller runs requests that set none at; 1: their own (auto).")
    }
    private var adaptiveSecondsDescriptor: MetricNameDescriptor {
        name("adaptive_budget", "seconds_total", "Seconds the adaptive controller spent at each budget (auto: the requests' own).")
    }
    private var loweredDescriptor: MetricNameDescriptor {
        name("adaptive_lowered_requests", "total", "Requests the adaptive controller ran below their own budget.")
    }

    /// A model with an adaptive budget: its series, at the top rung.
    public func registerAdaptive(model: String, ladder: [ComputeBudget?]) {
        let m = [("model", model)]
        registry.makeGauge(descriptor: adaptiveBudgetDescriptor, labels: m).set(Double(1))
        for budget in ladder {
            _ = registry.makeCounter(descriptor: adaptiveSecondsDescriptor, labels: m + [("budget", Self.label(budget))])
        }
        _ = registry.makeCounter(descriptor: loweredDescriptor, labels: m)
    }

    /// `seconds` at `budget` (nil: the top rung), `lowered` requests run below their own, and the rung now.
    public func adaptive(model: String, budget: ComputeBudget?, seconds: Double, lowered: Int, now: ComputeBudget?) {
        let m = [("model", model)]
        registry.makeCounter(descriptor: adaptiveSecondsDescriptor, labels: m + [("budget", Self.label(budget))])
            .increment(by: max(0, seconds))
        if lowered > 0 { registry.makeCounter(descriptor: loweredDescriptor, labels: m).increment(by: Int64(lowered)) }
        registry.makeGauge(descriptor: adaptiveBudgetDescriptor, labels: m).set(now?.value ?? 1)
    }

    static func label(_ budget: ComputeBudget?) -> String { budget.map { "\($0.value)" } ?? "auto" }

    private var decodesDescriptor: MetricNameDescriptor {
        name("speech_decodes", "total",
             "Utterances by the highest temperature their windows were decoded at: 0 greedy; above, the fallback sampled again.")
    }

    /// A speech model's decoding series, at zero: greedy (0) and each of its fallback temperatures.
    public func registerDecoding(model: String, temperatures: [Double]) {
        for t in [0] + temperatures { decoded(model: model, temperature: t, count: 0) }
    }

    /// `count` utterances of `model` whose windows were decoded at `temperature` at most.
    public func decoded(model: String, temperature: Double, count: Int = 1) {
        let label = temperature == 0 ? "0" : "\(temperature)"
        registry.makeCounter(descriptor: decodesDescriptor, labels: [("model", model), ("temperature", label)])
            .increment(by: Int64(count))
    }

    public func pending(model: String, _ count: Int) {
        if let c = collectors(model) { return c.pending.set(Double(count)) }
        registry.makeGauge(descriptor: pendingDescriptor, labels: [("model", model)]).set(Double(count))
    }

    /// One executed batch of `items` images or utterances: its size, its compute time, and how many
    /// tokens ran each k at each ACM.
    public func batch(
        model: String, kind: ModelKind, items: Int, seconds: Double, acmPaths: [String], histogram: [[Int]]
    ) {
        countBatch(model: model, inputs: items, seconds: seconds, sizeDescriptor: batchSizeDescriptor(kind))
        statistics.batch(model: model, items: items, seconds: seconds)
        countLayerTokens(model: model, acmPaths: acmPaths, histogram: histogram)
    }

    /// `histogram[i][k]` tokens ran k learners at ACM `acmPaths[i]`.
    private func countLayerTokens(model: String, acmPaths: [String], histogram: [[Int]]) {
        let c = collectors(model)
        let known = c.map { $0.acmPaths == acmPaths } ?? false
        let m = [("model", model)]
        for (i, (path, counts)) in zip(acmPaths, histogram).enumerated() {
            for (k, count) in counts.enumerated() where count > 0 {
                if known, let c {
                    let (lowest, counters) = c.tokens[i]
                    if k >= lowest, k - lowest < counters.count {
                        counters[k - lowest].increment(by: Int64(count))
                        continue
                    }
                }
                registry.makeCounter(descriptor: tokensDescriptor, labels: m + [("layer", path), ("k", "\(k)")])
                    .increment(by: Int64(count))
            }
        }
    }

    /// What every executed batch counts: one batch, its inputs, its size in `sizeDescriptor`'s histogram,
    /// and its compute time.
    private func countBatch(model: String, inputs: Int, seconds: Double, sizeDescriptor: MetricNameDescriptor) {
        if let c = collectors(model) {
            c.batches.increment()
            c.inferences.increment(by: Int64(inputs))
            c.batchSize.record(Double(inputs))
            c.computeDuration.record(seconds)
            return
        }
        let m = [("model", model)]
        registry.makeCounter(descriptor: batchesDescriptor, labels: m).increment()
        registry.makeCounter(descriptor: inferencesDescriptor, labels: m).increment(by: Int64(inputs))
        registry.makeValueHistogram(descriptor: sizeDescriptor, labels: m, buckets: Self.batchBuckets)
            .record(Double(inputs))
        registry.makeValueHistogram(descriptor: computeDurationDescriptor, labels: m, buckets: Self.durationBuckets)
            .record(seconds)
    }

    /// The exposition text, format 0.0.4.
    public func render() -> [UInt8] { registry.emitToBuffer() }
}

/// One model's collectors, as `ServingMetrics.register` found them in the registry.
final class ModelCollectors: Sendable {
    let success, inferences, batches, modeAuto, modeBudget: Counter
    let requestDuration, queueDuration, computeDuration, fraction, budget, batchSize: ValueHistogram
    let pending: Gauge
    let acmPaths: [String]
    /// Per ACM (in `acmPaths`' order): its lowest k, and its counters from that k up.
    let tokens: [(lowest: Int, counters: [Counter])]

    init(
        success: Counter, inferences: Counter, batches: Counter, modeAuto: Counter, modeBudget: Counter,
        requestDuration: ValueHistogram, queueDuration: ValueHistogram, computeDuration: ValueHistogram,
        fraction: ValueHistogram, budget: ValueHistogram, batchSize: ValueHistogram, pending: Gauge,
        acmPaths: [String], tokens: [(Int, [Counter])]
    ) {
        self.success = success
        self.inferences = inferences
        self.batches = batches
        self.modeAuto = modeAuto
        self.modeBudget = modeBudget
        self.requestDuration = requestDuration
        self.queueDuration = queueDuration
        self.computeDuration = computeDuration
        self.fraction = fraction
        self.budget = budget
        self.batchSize = batchSize
        self.pending = pending
        self.acmPaths = acmPaths
        self.tokens = tokens.map { (lowest: $0.0, counters: $0.1) }
    }
}

/// Feeds a runner's batch and queue events into the Prometheus metrics.
public final class MetricsObserver: RunnerObserver, Sendable {
    let metrics: ServingMetrics
    let kind: ModelKind
    /// The adaptive budget's changes, one line each.
    let logger = Logger(label: "acm-serve")

    public init(metrics: ServingMetrics, kind: ModelKind) {
        self.metrics = metrics
        self.kind = kind
    }

    public func batchExecuted(
        model: String, images: Int, requests: Int, computeSeconds: Double, learnerHistogram: [[Int]], acmPaths: [String]
    ) {
        metrics.batch(
            model: model, kind: kind, items: images, seconds: computeSeconds, acmPaths: acmPaths, histogram: learnerHistogram)
    }

    public func requestFinished(model: String, queueSeconds: Double, timedOut: Bool) {
        metrics.queued(model: model, seconds: queueSeconds)
    }

    public func adaptiveBudget(
        model: String, budget: ComputeBudget?, seconds: Double, loweredRequests: Int, change: AdaptiveBudget.Change?
    ) {
        func micros(_ seconds: Double?) -> String { seconds.map { "\(Int(($0 * 1e6).rounded()))" } ?? "-" }
        metrics.adaptive(model: model, budget: budget, seconds: seconds, lowered: loweredRequests, now: change.map(\.to) ?? budget)
        if let change {
            let direction = (change.to?.value ?? 1) < (change.from?.value ?? 1) ? "lowered" : "raised"
            logger.notice(
                "adaptive budget \(direction)",
                metadata: [
                    "model": "\(model)", "from": "\(ServingMetrics.label(change.from))", "to": "\(ServingMetrics.label(change.to))",
                    "pressure_ms": "\((change.pressure * 1000).rounded())",
                    "queue_fill": "\(change.queueFill.map { "\(($0 * 100).rounded() / 100)" } ?? "-")",
                    "predicted_load": "\(change.predictedUtilization.map { "\(($0 * 100).rounded() / 100)" } ?? "-")",
                    "images_per_s": "\(change.arrivalRate.map { "\(Int($0.rounded()))" } ?? "-")",
                    "us_per_image": "\(micros(change.fromCost))->\(micros(change.toCost))",
                ])
        }
    }
}
