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
    public var models: [String: ModelEntry] = [:]

    public struct Limits: Codable, Sendable, Equatable {
        public var maxBodyBytes = 32 << 20
        public var maxHeaderBytes = 16 << 10
        public var connectionLimit = 1000
        /// 0: no limit.
        public var perIPConnectionLimit = 0
        public var connectionTimeoutSeconds = 60

        public init() {}

        enum CodingKeys: String, CodingKey {
            case maxBodyBytes = "max_body_bytes"
            case maxHeaderBytes = "max_header_bytes"
            case connectionLimit = "connection_limit"
            case perIPConnectionLimit = "per_ip_connection_limit"
            case connectionTimeoutSeconds = "connection_timeout_seconds"
        }

        public init(from decoder: any Decoder) throws {
            self.init()
            let c = try decoder.container(keyedBy: CodingKeys.self)
            try c.update(&maxBodyBytes, .maxBodyBytes)
            try c.update(&maxHeaderBytes, .maxHeaderBytes)
            try c.update(&connectionLimit, .connectionLimit)
            try c.update(&perIPConnectionLimit, .perIPConnectionLimit)
            try c.update(&connectionTimeoutSeconds, .connectionTimeoutSeconds)
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

        public init(path: String) { self.path = path }

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
        }
    }

    public init() {}

    enum CodingKeys: String, CodingKey {
        case host, port
        case httpThreads = "http_threads"
        case computeThreads = "compute_threads"
        case logLevel = "log_level"
        case limits, models
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
        try c.update(&models, .models)
    }

    /// Reads a config file. Relative model paths are taken relative to the file's directory.
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
        for (name, entry) in config.models where !entry.path.hasPrefix("/") {
            config.models[name]?.path = base.appendingPathComponent(entry.path).standardizedFileURL.path
        }
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
        try check(limits.maxBodyBytes > 0 && limits.maxHeaderBytes > 0, "limits must be positive")
        try check(!models.isEmpty, "no models configured")
        for (name, m) in models {
            try check(!name.isEmpty && !name.contains("/"), "model name '\(name)' must be non-empty and contain no '/'")
            try check(m.maxBatchSize >= 1, "\(name): max_batch_size must be ≥ 1")
            try check(m.maxQueueDelayMicroseconds >= 0, "\(name): max_queue_delay_microseconds must be ≥ 0")
            try check(m.maxQueueSize >= 1, "\(name): max_queue_size must be ≥ 1")
            try check(m.maxAudioSeconds > 0, "\(name): max_audio_seconds must be > 0")
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
