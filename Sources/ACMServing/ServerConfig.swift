import ACMCore
import Foundation

/// The server's configuration file (config/acm-serve.json; docs/configuration.md). Every field has a
/// default, so a file need only name its models.
public struct ServerConfig: Codable, Sendable, Equatable {
    public var host = "0.0.0.0"
    public var port = 8000
    /// Threads of libmicrohttpd's pool: they parse requests and write answers, never run models.
    public var httpThreads = 4
    /// Engine worker threads per model (one per core by default).
    public var computeThreads: Int?
    public var logLevel = "info"
    public var limits = Limits()
    public var auth = Auth()
    /// HTTPS when set.
    public var tls: TLS?
    /// After SIGTERM, how long accepted requests have to finish; those still queued then get 503. Keep it below
    /// Kubernetes' `terminationGracePeriodSeconds` (30 by default).
    public var shutdownGraceSeconds = 25.0
    public var models: [String: ModelEntry] = [:]

    public struct Limits: Codable, Sendable, Equatable {
        public var maxBodyBytes = 32 << 20
        public var maxHeaderBytes = 16 << 10
        /// The path plus its query string.
        public var maxURIBytes = 8 << 10
        /// Request bodies buffered at once, over all requests; a body that would cross it gets 503.
        public var maxInflightBodyBytes = 512 << 20
        /// nil: as many as the open-file limit allows (raised to its hard limit at start), less a reserve.
        public var connectionLimit: Int?
        /// 0: no limit.
        public var perIPConnectionLimit = 0
        /// A connection with no traffic this long is closed (`connection_timeout_seconds`, its older name, works too).
        public var idleTimeoutSeconds = 60
        /// A request's headers must be in this long after its connection opened.
        public var headerTimeoutSeconds = 10

        public init() {}

        enum CodingKeys: String, CodingKey {
            case maxBodyBytes = "max_body_bytes"
            case maxHeaderBytes = "max_header_bytes"
            case maxURIBytes = "max_uri_bytes"
            case maxInflightBodyBytes = "max_inflight_body_bytes"
            case connectionLimit = "connection_limit"
            case perIPConnectionLimit = "per_ip_connection_limit"
            case idleTimeoutSeconds = "idle_timeout_seconds"
            case connectionTimeoutSeconds = "connection_timeout_seconds"
            case headerTimeoutSeconds = "header_timeout_seconds"
        }

        public init(from decoder: any Decoder) throws {
            self.init()
            let c = try decoder.container(keyedBy: CodingKeys.self)
            try c.update(&maxBodyBytes, .maxBodyBytes)
            try c.update(&maxHeaderBytes, .maxHeaderBytes)
            try c.update(&maxURIBytes, .maxURIBytes)
            try c.update(&maxInflightBodyBytes, .maxInflightBodyBytes)
            try c.update(&connectionLimit, .connectionLimit)
            try c.update(&perIPConnectionLimit, .perIPConnectionLimit)
            try c.update(&idleTimeoutSeconds, .connectionTimeoutSeconds)
            try c.update(&idleTimeoutSeconds, .idleTimeoutSeconds)
            try c.update(&headerTimeoutSeconds, .headerTimeoutSeconds)
        }

        public func encode(to encoder: any Encoder) throws {
            var c = encoder.container(keyedBy: CodingKeys.self)
            try c.encode(maxBodyBytes, forKey: .maxBodyBytes)
            try c.encode(maxHeaderBytes, forKey: .maxHeaderBytes)
            try c.encode(maxURIBytes, forKey: .maxURIBytes)
            try c.encode(maxInflightBodyBytes, forKey: .maxInflightBodyBytes)
            try c.encodeIfPresent(connectionLimit, forKey: .connectionLimit)
            try c.encode(perIPConnectionLimit, forKey: .perIPConnectionLimit)
            try c.encode(idleTimeoutSeconds, forKey: .idleTimeoutSeconds)
            try c.encode(headerTimeoutSeconds, forKey: .headerTimeoutSeconds)
        }
    }

    /// Who may call the server: with `api_keys_file` set, every route but `/v2/health/*` needs
    /// `Authorization: Bearer KEY` (and `/metrics` too, unless `metrics_public`).
    public struct Auth: Codable, Sendable, Equatable {
        /// One key per line; re-read on SIGHUP.
        public var apiKeysFile: String?
        public var metricsPublic = false

        public init() {}

        enum CodingKeys: String, CodingKey {
            case apiKeysFile = "api_keys_file"
            case metricsPublic = "metrics_public"
        }

        public init(from decoder: any Decoder) throws {
            self.init()
            let c = try decoder.container(keyedBy: CodingKeys.self)
            try c.update(&apiKeysFile, .apiKeysFile)
            try c.update(&metricsPublic, .metricsPublic)
        }
    }

    /// HTTPS: a PEM certificate (chain) and its PEM private key, unencrypted.
    public struct TLS: Codable, Sendable, Equatable {
        public var certFile: String
        public var keyFile: String

        public init(certFile: String, keyFile: String) {
            self.certFile = certFile
            self.keyFile = keyFile
        }

        enum CodingKeys: String, CodingKey {
            case certFile = "cert_file"
            case keyFile = "key_file"
        }
    }

    /// One served model: its directory and its batcher.
    public struct ModelEntry: Codable, Sendable, Equatable {
        public var path: String
        public var maxBatchSize = 32
        public var maxQueueDelayMicroseconds = 2000
        public var maxQueueSize = 256
        /// Applied to requests that set no `compute_budget`; nil: the gates choose.
        public var defaultBudget: ComputeBudget?
        /// A speech model's longest audio file, in seconds, transcribed in consecutive 30-s windows.
        public var maxAudioSeconds = 600.0
        /// What the model's GEMMs run in; bf16 falls back to f32 where the CPU has no bfloat16 instructions.
        public var precision = Precision.f32
        /// Lower the budget of requests that set none when the latency target is about to be missed
        /// (docs/adaptive-budget.md).
        public var adaptiveBudget = false
        /// The p99 queue-plus-compute time the adaptive budget aims for, in ms; needed with `adaptiveBudget`.
        public var latencyTargetMilliseconds: Double?
        /// The adaptive budget's floor.
        public var minBudget: ComputeBudget = 0.25

        public init(path: String) { self.path = path }

        /// The adaptive budget's settings, when it is on.
        public var adaptive: AdaptiveBudgetConfig? {
            guard adaptiveBudget, let ms = latencyTargetMilliseconds else { return nil }
            return AdaptiveBudgetConfig(targetSeconds: ms / 1000, minBudget: minBudget)
        }

        /// Its batcher's settings.
        public var batcher: BatcherConfig {
            BatcherConfig(
                maxBatchSize: maxBatchSize, maxQueueDelayMicroseconds: maxQueueDelayMicroseconds, maxQueueSize: maxQueueSize)
        }

        enum CodingKeys: String, CodingKey {
            case path
            case maxBatchSize = "max_batch_size"
            case maxQueueDelayMicroseconds = "max_queue_delay_microseconds"
            case maxQueueSize = "max_queue_size"
            case defaultBudget = "default_budget"
            case maxAudioSeconds = "max_audio_seconds"
            case precision
            case adaptiveBudget = "adaptive_budget"
            case latencyTargetMilliseconds = "latency_target_ms"
            case minBudget = "min_budget"
        }

        public init(from decoder: any Decoder) throws {
            let c = try decoder.container(keyedBy: CodingKeys.self)
            self.init(path: try c.decode(String.self, forKey: .path))
            try c.update(&maxBatchSize, .maxBatchSize)
            try c.update(&maxQueueDelayMicroseconds, .maxQueueDelayMicroseconds)
            try c.update(&maxQueueSize, .maxQueueSize)
            try c.update(&defaultBudget, .defaultBudget)
            try c.update(&maxAudioSeconds, .maxAudioSeconds)
            try c.update(&precision, .precision)
            try c.update(&adaptiveBudget, .adaptiveBudget)
            try c.update(&latencyTargetMilliseconds, .latencyTargetMilliseconds)
            try c.update(&minBudget, .minBudget)
        }
    }

    public init() {}

    enum CodingKeys: String, CodingKey {
        case host, port
        case httpThreads = "http_threads"
        case computeThreads = "compute_threads"
        case logLevel = "log_level"
        case limits, auth, tls
        case shutdownGraceSeconds = "shutdown_grace_seconds"
        case models
    }

    public init(from decoder: any Decoder) throws {
        self.init()
        let c = try decoder.container(keyedBy: CodingKeys.self)
        try c.update(&host, .host)
        try c.update(&port, .port)
        try c.update(&httpThreads, .httpThreads)
        try c.update(&computeThreads, .computeThreads)
        try c.update(&logLevel, .logLevel)
        try c.update(&limits, .limits)
        try c.update(&auth, .auth)
        try c.update(&tls, .tls)
        try c.update(&shutdownGraceSeconds, .shutdownGraceSeconds)
        try c.update(&models, .models)
    }

    /// Reads a config file. Relative paths (models, keys, certificates) are taken relative to the file's directory.
    public static func load(path: String) throws -> ServerConfig {
        guard let data = FileManager.default.contents(atPath: path) else {
            throw ModelError.io(path: path, reason: "no such file or not readable")
        }
        var config: ServerConfig
        do {
            config = try JSONDecoder().decode(ServerConfig.self, from: data)
        } catch {
            throw ModelError.format(path: path, reason: "not a valid server config: \(error)")
        }
        let base = URL(fileURLWithPath: path).deletingLastPathComponent()
        func resolve(_ path: String) -> String {
            path.hasPrefix("/") ? path : base.appendingPathComponent(path).standardizedFileURL.path
        }
        for (name, entry) in config.models { config.models[name]?.path = resolve(entry.path) }
        config.auth.apiKeysFile = config.auth.apiKeysFile.map(resolve)
        if let tls = config.tls { config.tls = TLS(certFile: resolve(tls.certFile), keyFile: resolve(tls.keyFile)) }
        return config
    }

    /// Checks ranges, so that a bad file fails at start-up with a message rather than misbehaving.
    public func validate() throws {
        func check(_ ok: Bool, _ message: String) throws {
            if !ok { throw ModelError.config(message) }
        }
        try check((0...65535).contains(port), "port \(port) is out of range")
        try check(httpThreads >= 1, "http_threads must be ≥ 1")
        try check(computeThreads.map { $0 >= 1 } ?? true, "compute_threads must be ≥ 1")
        try check(
            limits.maxBodyBytes > 0 && limits.maxHeaderBytes > 0 && limits.maxURIBytes > 0 && limits.maxInflightBodyBytes > 0,
            "limits must be positive")
        try check(
            limits.maxInflightBodyBytes >= limits.maxBodyBytes,
            "max_inflight_body_bytes (\(limits.maxInflightBodyBytes)) must be at least max_body_bytes (\(limits.maxBodyBytes))")
        try check(limits.connectionLimit.map { $0 >= 1 } ?? true, "connection_limit must be ≥ 1")
        try check(limits.perIPConnectionLimit >= 0, "per_ip_connection_limit must be ≥ 0 (0: no limit)")
        try check(limits.idleTimeoutSeconds >= 1, "idle_timeout_seconds must be ≥ 1")
        try check(limits.headerTimeoutSeconds >= 1, "header_timeout_seconds must be ≥ 1")
        try check(shutdownGraceSeconds >= 0, "shutdown_grace_seconds must be ≥ 0")
        try check(!models.isEmpty, "no models configured")
        for (name, m) in models {
            try check(!name.isEmpty && !name.contains("/"), "model name '\(name)' must be non-empty and contain no '/'")
            try check(name != "stats", "a model cannot be named 'stats': /v2/models/stats is the statistics of all models")
            try check(m.maxBatchSize >= 1, "\(name): max_batch_size must be ≥ 1")
            try check(m.maxQueueDelayMicroseconds >= 0, "\(name): max_queue_delay_microseconds must be ≥ 0")
            try check(m.maxQueueSize >= 1, "\(name): max_queue_size must be ≥ 1")
            try check(m.maxAudioSeconds > 0, "\(name): max_audio_seconds must be > 0")
            try check(
                !m.adaptiveBudget || (m.latencyTargetMilliseconds.map { $0 > 0 && $0.isFinite } ?? false),
                "\(name): adaptive_budget needs latency_target_ms > 0")
            try check(
                m.latencyTargetMilliseconds.map { $0 > 0 && $0.isFinite } ?? true, "\(name): latency_target_ms must be > 0")
        }
    }
}

/// The kinds of model the server serves, told apart by `architecture` in the model directory's
/// `config.json`.
public enum ModelKind: String, Sendable {
    /// An image classifier (`"vit"`).
    case image
    /// A speech recogniser (`"whisper"`).
    case speech

    /// The kind of the model in `directory`. A directory that is not a Whisper model is taken for an
    /// image model, whose loading then says what is wrong with it.
    public static func of(directory: String) -> ModelKind {
        struct Header: Decodable { var architecture: String? }
        guard let data = FileManager.default.contents(atPath: "\(directory)/config.json"),
            let header = try? JSONDecoder().decode(Header.self, from: data)
        else { return .image }
        return header.architecture == "whisper" ? .speech : .image
    }
}
