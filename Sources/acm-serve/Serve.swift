import ACMCore
import ACMHTTP
import ACMServing
import ArgumentParser
import Foundation
import Logging

struct Serve: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Serve models over HTTP (Open Inference Protocol) until SIGTERM or SIGINT.",
        discussion: "Flags override the config file. See docs/configuration.md and docs/http-api.md.")

    @Option(help: "Server config file (JSON).") var config = "config/acm-serve.json"
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

    func run() throws {
        var config: ServerConfig
        do {
            config = try ServerConfig.load(path: self.config)
            try apply(to: &config)
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
        if let threads = config.computeThreads { Parallel.workers = threads }

        let server: InferenceServer
        do {
            server = try InferenceServer(config: config, logger: logger)
        } catch {
            logger.critical("cannot load models: \(error)")
            throw ExitCode(1)
        }
        let http = HTTPServer(
            options: HTTPServerOptions(
                host: config.host, port: config.port, threads: config.httpThreads,
                maxBodyBytes: config.limits.maxBodyBytes, maxHeaderBytes: config.limits.maxHeaderBytes,
                connectionLimit: config.limits.connectionLimit, perIPConnectionLimit: config.limits.perIPConnectionLimit,
                connectionTimeoutSeconds: config.limits.connectionTimeoutSeconds),
            handler: server)

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

        do {
            try http.start()
        } catch {
            logger.critical("\(error)")
            throw ExitCode(1)
        }
        logger.notice(
            "listening",
            metadata: [
                "address": "\(config.host):\(config.port)", "models": "\(config.models.keys.sorted().joined(separator: ","))",
                "compute_threads": "\(Parallel.workers)", "gemm": "\(gemmKernelName)", "bf16": "\(BF16.description)",
            ])
        stop.wait()

        // Quiesce: no new connections; refuse new requests on open ones; answer every accepted request.
        logger.notice("shutting down: finishing accepted requests")
        http.quiesce()
        server.drain()
        let deadline = DispatchTime.now().uptimeNanoseconds + 30_000_000_000
        while http.openExchanges > 0 && DispatchTime.now().uptimeNanoseconds < deadline { usleep(5_000) }
        http.stop()
        withExtendedLifetime(sources) {}
        logger.notice("stopped")
    }

    /// Command-line flags over the file's settings.
    private func apply(to config: inout ServerConfig) throws {
        if let host { config.host = host }
        if let port { config.port = port }
        if let httpThreads { config.httpThreads = httpThreads }
        if let computeThreads { config.computeThreads = computeThreads }
        if let logLevel { config.logLevel = logLevel }
        if let maxBodyBytes { config.limits.maxBodyBytes = maxBodyBytes }
        if !models.isEmpty {
            config.models = [:]
            for spec in models {
                let parts = spec.split(separator: "=", maxSplits: 1).map(String.init)
                guard parts.count == 2 else { throw ValidationError("--model takes NAME=DIR, got '\(spec)'") }
                config.models[parts[0]] = ServerConfig.ModelEntry(path: parts[1])
            }
        }
        for name in config.models.keys {
            if let maxBatchSize { config.models[name]!.maxBatchSize = maxBatchSize }
            if let maxQueueDelayUs { config.models[name]!.maxQueueDelayMicroseconds = maxQueueDelayUs }
            if let maxQueueSize { config.models[name]!.maxQueueSize = maxQueueSize }
            if let defaultBudget { config.models[name]!.defaultBudget = defaultBudget }
            if let precision { config.models[name]!.precision = precision }
        }
    }
}
