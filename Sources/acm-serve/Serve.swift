import ACMCore
import ACMHTTP
import ACMServing
import ArgumentParser
import Foundation
import Logging

struct Serve: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Serve models over HTTP (Open Inference Protocol) until SIGTERM or SIGINT.",
        discussion: "Flags override ACM_SERVE_* environment variables, which override the config file. See docs/configuration.md and docs/http-api.md.")

    @Option(help: "Server config file (JSON; or ACM_SERVE_CONFIG). Without one, the built-in defaults, with the models of --model.")
    var config: String?
    @Option(help: "Address to listen on (IPv4 or IPv6).") var host: String?
    @Option(help: "Port to listen on.") var port: Int?
    @Option(name: .customLong("http-threads"), help: "libmicrohttpd worker threads.") var httpThreads: Int?
    @Option(name: .customLong("compute-threads"), help: "Engine threads per batch (default: one per core).")
    var computeThreads: Int?
    @Option(name: .customLong("log-level"), help: "trace, debug, info, notice, warning, error or critical.")
    var logLevel: String?
    @Option(name: .customLong("model"), help: "NAME=DIR; repeat to serve several. Replaces the config file's models.")
    var models: [String] = []
    @Option(name: .customLong("max-batch-size"), help: "Images per batch, for every model.") var maxBatchSize: Int?
    @Option(name: .customLong("max-queue-delay-us"), help: "Longest wait for a batch to fill, in µs.") var maxQueueDelayUs: Int?
    @Option(name: .customLong("max-queue-size"), help: "Requests waiting per model before 503.") var maxQueueSize: Int?
    @Option(name: .customLong("max-body-bytes"), help: "Largest request body; larger ones get 413.") var maxBodyBytes: Int?
    @Option(
        name: .customLong("default-budget"), help: "compute_budget for requests that set none, for every model.",
        transform: parseBudget)
    var defaultBudget: ComputeBudget?
    @Option(help: "What every model's GEMMs run in: f32, or bf16 where the CPU has AVX-512 BF16 (else f32, with a warning).")
    var precision: Precision?
    @Option(
        name: .customLong("api-keys-file"),
        help: "File of API keys, one per line (re-read on SIGHUP): every route but /v2/health/* then needs Authorization: Bearer KEY.")
    var apiKeysFile: String?
    @Option(name: .customLong("tls-cert"), help: "PEM certificate (chain): serve HTTPS. Needs --tls-key.") var tlsCert: String?
    @Option(name: .customLong("tls-key"), help: "PEM private key of --tls-cert (unencrypted).") var tlsKey: String?
    @Option(
        name: .customLong("shutdown-grace-seconds"),
        help: "After SIGTERM, how long accepted requests have to finish; those still queued then get 503.")
    var shutdownGraceSeconds: Double?

    func run() throws {
        var config: ServerConfig
        let overrides: ServerOverrides
        do {
            let environment = ProcessInfo.processInfo.environment
            let path = self.config ?? environment["ACM_SERVE_CONFIG"].flatMap { $0.isEmpty ? nil : $0 }
            config = try path.map { try ServerConfig.load(path: $0) } ?? ServerConfig()
            overrides = try ServerOverrides(environment: environment)
            try overrides.apply(to: &config)
            try flags().apply(to: &config)
            if config.models.isEmpty {
                throw ModelError.config(
                    "no models to serve: give --model NAME=DIR (or ACM_SERVE_MODELS=NAME=DIR,...), or a config file with --config")
            }
            try config.validate()
        } catch let error as ModelError {
            throw ValidationError(error.description)
        }
        guard let level = Logger.Level(rawValue: config.logLevel) else {
            throw ValidationError("unknown log level '\(config.logLevel)'")
        }
        LoggingSystem.bootstrap { label in
            var handler = StreamLogHandler.standardError(label: label)
            handler.logLevel = level
            return handler
        }
        let logger = Logger(label: "acm-serve")
        if !overrides.unknownVariables.isEmpty {
            logger.warning(
                "ignoring environment variables acm-serve does not read (a typo?)",
                metadata: [
                    "variables": "\(overrides.unknownVariables.joined(separator: ","))",
                    "known": "ACM_SERVE_CONFIG,\(ServerOverrides.variables.map { ServerOverrides.prefix + $0 }.joined(separator: ","))",
                ])
        }
        if let threads = config.computeThreads { Parallel.workers = threads }

        let apiKeys: APIKeys?
        var tls: TLSCredentials?
        do {
            apiKeys = try config.auth.apiKeysFile.map { try APIKeys(path: $0) }
            if let files = config.tls { tls = try Self.readTLS(files) }
        } catch {
            throw ValidationError("\(error)")
        }

        let server: InferenceServer
        do {
            server = try InferenceServer(config: config, logger: logger, apiKeys: apiKeys)
        } catch {
            logger.critical("cannot load models: \(error)")
            throw ExitCode(1)
        }
        var options = HTTPServerOptions(
            host: config.host, port: config.port, threads: config.httpThreads,
            maxBodyBytes: config.limits.maxBodyBytes, maxHeaderBytes: config.limits.maxHeaderBytes,
            connectionLimit: Self.connectionLimit(config.limits.connectionLimit, logger: logger),
            perIPConnectionLimit: config.limits.perIPConnectionLimit, idleTimeoutSeconds: config.limits.idleTimeoutSeconds)
        options.maxURIBytes = config.limits.maxURIBytes
        options.maxInflightBodyBytes = config.limits.maxInflightBodyBytes
        options.headerTimeoutSeconds = config.limits.headerTimeoutSeconds
        options.tls = tls
        let http = HTTPServer(options: options, handler: server)

        // Signals arrive on a dispatch queue, not in a handler: nothing async-signal-unsafe runs in one.
        signal(SIGPIPE, SIG_IGN)
        let stop = DispatchSemaphore(value: 0)
        var sources: [any DispatchSourceSignal] = []
        for sig in [SIGTERM, SIGINT] {
            signal(sig, SIG_IGN)
            let source = DispatchSource.makeSignalSource(signal: sig, queue: .global())
            source.setEventHandler { stop.signal() }
            source.resume()
            sources.append(source)
        }
        signal(SIGHUP, SIG_IGN)
        let hangUp = DispatchSource.makeSignalSource(signal: SIGHUP, queue: .global())
        hangUp.setEventHandler {
            guard let apiKeys else {
                logger.notice("SIGHUP: no api_keys_file to re-read")
                return
            }
            do {
                let count = try apiKeys.reload()
                logger.notice("SIGHUP: API keys re-read", metadata: ["keys": "\(count)", "file": "\(apiKeys.path)"])
            } catch {
                logger.error("SIGHUP: the API keys file is not valid; the keys in force are kept: \(error)")
            }
        }
        hangUp.resume()
        sources.append(hangUp)

        do {
            try http.start()
        } catch {
            logger.critical("\(error)")
            throw ExitCode(1)
        }
        logger.notice(
            "listening",
            metadata: [
                "address": "\(tls == nil ? "http" : "https")://\(config.host):\(config.port)",
                "models": "\(config.models.keys.sorted().joined(separator: ","))",
                "compute_threads": "\(Parallel.workers)", "gemm": "\(gemmKernelName)", "bf16": "\(BF16.description)",
                "api_keys": "\(apiKeys.map { "\($0.count)" } ?? "off")", "connection_limit": "\(options.connectionLimit)",
            ])
        stop.wait()

        // Quiesce: no new connections; refuse new requests on open ones; answer every accepted request within the
        // grace period, and those still queued at its end with 503.
        logger.notice("shutting down: finishing accepted requests", metadata: ["grace_seconds": "\(config.shutdownGraceSeconds)"])
        http.quiesce()
        server.beginDrain()
        func waitForAnswers(seconds: Double) {
            let deadline = DispatchTime.now().uptimeNanoseconds + UInt64(seconds * 1e9)
            while http.openExchanges > 0 && DispatchTime.now().uptimeNanoseconds < deadline { usleep(5_000) }
        }
        waitForAnswers(seconds: config.shutdownGraceSeconds)
        let abandoned = server.abandonQueued()
        if abandoned > 0 {
            logger.warning("shutdown grace period over: requests still queued get 503", metadata: ["requests": "\(abandoned)"])
        }
        server.waitForRunners()
        // The answers just made still have to be written.
        waitForAnswers(seconds: 5)
        http.stop()
        withExtendedLifetime(sources) {}
        logger.notice("stopped")
    }

    /// The certificate and key files' text; throws with the file's name if one cannot be read.
    static func readTLS(_ files: ServerConfig.TLS) throws -> TLSCredentials {
        func read(_ path: String, _ what: String) throws -> String {
            guard let data = FileManager.default.contents(atPath: path), let text = String(data: data, encoding: .utf8),
                text.contains("-----BEGIN")
            else { throw ValidationError("cannot read the TLS \(what) \(path) as PEM") }
            return text
        }
        return TLSCredentials(certificatePEM: try read(files.certFile, "certificate"), keyPEM: try read(files.keyFile, "key"))
    }

    /// The connection limit: the configured one, or as many as the open-file limit allows (after raising it to
    /// its hard limit), less descriptors kept for everything else.
    static func connectionLimit(_ configured: Int?, logger: Logger) -> Int {
        let reserve = 128
        let files = raiseOpenFileLimit()
        let available = max(16, files - reserve)
        guard let configured else { return available }
        if configured > available {
            logger.warning(
                "connection_limit is more than the open-file limit allows; using \(available)",
                metadata: ["connection_limit": "\(configured)", "open_files": "\(files)"])
            return available
        }
        return configured
    }

    /// The command line's settings, which win over the environment's and the file's.
    private func flags() -> ServerOverrides {
        var flags = ServerOverrides()
        flags.host = host
        flags.port = port
        flags.httpThreads = httpThreads
        flags.computeThreads = computeThreads
        flags.logLevel = logLevel
        flags.models = models
        flags.maxBatchSize = maxBatchSize
        flags.maxQueueDelayMicroseconds = maxQueueDelayUs
        flags.maxQueueSize = maxQueueSize
        flags.maxBodyBytes = maxBodyBytes
        flags.defaultBudget = defaultBudget
        flags.precision = precision
        flags.apiKeysFile = apiKeysFile
        flags.tlsCert = tlsCert
        flags.tlsKey = tlsKey
        flags.shutdownGraceSeconds = shutdownGraceSeconds
        return flags
    }
}
