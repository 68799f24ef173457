import ACMCore
import Foundation

/// Settings given beside the config file: `serve`'s flags, or `ACM_SERVE_*` environment variables
/// (docs/configuration.md, "Environment"). Flags win over the environment, which wins over the file, which wins
/// over the built-in defaults. Model paths given here are relative to the current directory.
public struct ServerOverrides: Sendable, Equatable {
    public var host: String?
    public var port: Int?
    public var httpThreads: Int?
    public var computeThreads: Int?
    public var logLevel: String?
    /// NAME=DIR pairs; when given, they replace the file's models.
    public var models: [String] = []
    public var maxBatchSize: Int?
    public var maxQueueDelayMicroseconds: Int?
    public var maxQueueSize: Int?
    public var maxBodyBytes: Int?
    public var defaultBudget: ComputeBudget?
    public var precision: Precision?
    public var apiKeysFile: String?
    public var metricsPublic: Bool?
    public var tlsCert: String?
    public var tlsKey: String?
    public var shutdownGraceSeconds: Double?

    public init() {}

    /// The prefix of every variable `init(environment:)` reads.
    public static let prefix = "ACM_SERVE_"

    /// The variables this reads, without `prefix`; `ACM_SERVE_CONFIG`, the config file, is read by `serve`.
    public static let variables = [
        "HOST", "PORT", "HTTP_THREADS", "COMPUTE_THREADS", "LOG_LEVEL", "MODELS", "MAX_BATCH_SIZE",
        "MAX_QUEUE_DELAY_US", "MAX_QUEUE_SIZE", "MAX_BODY_BYTES", "DEFAULT_BUDGET", "PRECISION", "API_KEYS_FILE",
        "METRICS_PUBLIC", "TLS_CERT", "TLS_KEY", "SHUTDOWN_GRACE_SECONDS",
    ]

    /// Whether `name` (without the prefix) and its value are what Kubernetes puts into every pod for a Service
    /// named `acm-serve` (`ACM_SERVE_SERVICE_HOST`, `ACM_SERVE_PORT=tcp://10.0.0.1:8000`, `ACM_SERVE_PORT_8000_TCP…`),
    /// not settings: they are skipped.
    static func isServiceLink(_ name: String, _ value: String) -> Bool {
        name.hasPrefix("SERVICE_") || name.hasPrefix("PORT_")
            || (name == "PORT" && (value.hasPrefix("tcp://") || value.hasPrefix("udp://") || value.hasPrefix("sctp://")))
    }

    /// `ACM_SERVE_` variables that are none of `variables` (nor service links): `serve` warns of them, as a typo
    /// would otherwise go unnoticed; other tools may use the prefix too (the test harness's `ACM_SERVE_BIN`).
    public private(set) var unknownVariables: [String] = []

    /// The `ACM_SERVE_*` variables of `environment`. An empty variable counts as unset; one that does not parse
    /// throws with its name. Unknown names are listed in `unknownVariables`, and Kubernetes' service links for a
    /// Service named `acm-serve` are skipped (`isServiceLink`).
    public init(environment: [String: String]) throws {
        var env: [String: String] = [:]
        for (key, value) in environment where key.hasPrefix(Self.prefix) && !value.isEmpty {
            let name = String(key.dropFirst(Self.prefix.count))
            if Self.isServiceLink(name, value) { continue }
            guard Self.variables.contains(name) || name == "CONFIG" else {
                unknownVariables.append(key)
                continue
            }
            env[name] = value
        }
        unknownVariables.sort()
        func int(_ name: String) throws -> Int? {
            guard let text = env[name] else { return nil }
            guard let value = Int(text.trimmingCharacters(in: .whitespaces)) else {
                throw ModelError.config("\(Self.prefix)\(name)='\(text)' is not an integer")
            }
            return value
        }
        func double(_ name: String) throws -> Double? {
            guard let text = env[name] else { return nil }
            guard let value = Double(text.trimmingCharacters(in: .whitespaces)), value.isFinite else {
                throw ModelError.config("\(Self.prefix)\(name)='\(text)' is not a number")
            }
            return value
        }
        host = env["HOST"]
        port = try int("PORT")
        httpThreads = try int("HTTP_THREADS")
        computeThreads = try int("COMPUTE_THREADS")
        logLevel = env["LOG_LEVEL"]
        models = (env["MODELS"] ?? "").split(separator: ",").map { $0.trimmingCharacters(in: .whitespaces) }
            .filter { !$0.isEmpty }
        maxBatchSize = try int("MAX_BATCH_SIZE")
        maxQueueDelayMicroseconds = try int("MAX_QUEUE_DELAY_US")
        maxQueueSize = try int("MAX_QUEUE_SIZE")
        maxBodyBytes = try int("MAX_BODY_BYTES")
        if let value = try double("DEFAULT_BUDGET") {
            do {
                defaultBudget = try ComputeBudget(value)
            } catch {
                throw ModelError.config("\(Self.prefix)DEFAULT_BUDGET: \(error)")
            }
        }
        if let text = env["PRECISION"] {
            guard let value = Precision(rawValue: text) else {
                throw ModelError.config("\(Self.prefix)PRECISION='\(text)': use f32 or bf16")
            }
            precision = value
        }
        apiKeysFile = env["API_KEYS_FILE"]
        if let text = env["METRICS_PUBLIC"] {
            switch text.lowercased() {
            case "1", "true", "yes", "on": metricsPublic = true
            case "0", "false", "no", "off": metricsPublic = false
            default: throw ModelError.config("\(Self.prefix)METRICS_PUBLIC='\(text)': use true or false")
            }
        }
        tlsCert = env["TLS_CERT"]
        tlsKey = env["TLS_KEY"]
        shutdownGraceSeconds = try double("SHUTDOWN_GRACE_SECONDS")
    }

    /// Applies these settings over `config`. Model, key and certificate paths are made absolute against
    /// `directory` (the current one), so that the logs and errors name the files read.
    public func apply(to config: inout ServerConfig, directory: String = FileManager.default.currentDirectoryPath) throws {
        func absolute(_ path: String) -> String {
            path.hasPrefix("/") ? path : URL(fileURLWithPath: directory).appendingPathComponent(path).standardizedFileURL.path
        }
        if let host { config.host = host }
        if let port { config.port = port }
        if let httpThreads { config.httpThreads = httpThreads }
        if let computeThreads { config.computeThreads = computeThreads }
        if let logLevel { config.logLevel = logLevel }
        if let maxBodyBytes {
            config.limits.maxBodyBytes = maxBodyBytes
            // The cap on bodies in flight must hold one: raise it with a larger body limit rather than refuse to start.
            config.limits.maxInflightBodyBytes = max(config.limits.maxInflightBodyBytes, maxBodyBytes)
        }
        if let apiKeysFile { config.auth.apiKeysFile = absolute(apiKeysFile) }
        if let metricsPublic { config.auth.metricsPublic = metricsPublic }
        switch (tlsCert, tlsKey) {
        case let (cert?, key?): config.tls = ServerConfig.TLS(certFile: absolute(cert), keyFile: absolute(key))
        case (nil, nil): break
        default: throw ModelError.config("a TLS certificate and its key go together (--tls-cert and --tls-key)")
        }
        if let shutdownGraceSeconds { config.shutdownGraceSeconds = shutdownGraceSeconds }
        if !models.isEmpty {
            config.models = [:]
            for spec in models {
                let parts = spec.split(separator: "=", maxSplits: 1).map(String.init)
                guard parts.count == 2, !parts[0].isEmpty, !parts[1].isEmpty else {
                    throw ModelError.config("a model is NAME=DIR, got '\(spec)'")
                }
                guard config.models[parts[0]] == nil else { throw ModelError.config("model '\(parts[0])' is given twice") }
                config.models[parts[0]] = ServerConfig.ModelEntry(path: absolute(parts[1]))
            }
        }
        for name in config.models.keys {
            if let maxBatchSize { config.models[name]!.maxBatchSize = maxBatchSize }
            if let maxQueueDelayMicroseconds { config.models[name]!.maxQueueDelayMicroseconds = maxQueueDelayMicroseconds }
            if let maxQueueSize { config.models[name]!.maxQueueSize = maxQueueSize }
            if let defaultBudget { config.models[name]!.defaultBudget = defaultBudget }
            if let precision { config.models[name]!.precision = precision }
        }
    }
}
