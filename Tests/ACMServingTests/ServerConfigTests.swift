import ACMCore
import Foundation
import Testing

@testable import ACMServing

@Suite struct ServerConfigTests {
    private func decode(_ json: String) throws -> ServerConfig {
        try JSONDecoder().decode(ServerConfig.self, from: Data(json.utf8))
    }

    /// Should take every field a file leaves out from the types' own defaults.
    @Test func fillsDefaults() throws {
        let c = try decode(#"{"models": {"m": {"path": "/x"}}}"#)
        var want = ServerConfig()
        want.models = ["m": ServerConfig.ModelEntry(path: "/x")]
        #expect(c == want)
        #expect(c.port == 8000 && c.limits.maxBodyBytes == 32 << 20 && c.models["m"]?.maxBatchSize == 32)
        #expect(c.models["m"]?.defaultBudget == nil)
    }

    /// Should read every field a file gives, nested ones too.
    @Test func readsEveryField() throws {
        let c = try decode(
            #"{"host": "127.0.0.1", "port": 9, "http_threads": 2, "compute_threads": 1, "log_level": "debug","#
                + #""limits": {"max_body_bytes": 10, "max_header_bytes": 11, "connection_limit": 12,"#
                + #""per_ip_connection_limit": 13, "connection_timeout_seconds": 14},"#
                + #""models": {"m": {"path": "/x", "max_batch_size": 3, "max_queue_delay_microseconds": 4,"#
                + #""max_queue_size": 5, "default_budget": 0.5, "precision": "bf16"}}}"#)
        #expect(c.host == "127.0.0.1" && c.port == 9 && c.httpThreads == 2 && c.computeThreads == 1 && c.logLevel == "debug")
        let l = c.limits
        let limits: [Int?] = [l.maxBodyBytes, l.maxHeaderBytes, l.connectionLimit, l.perIPConnectionLimit, l.idleTimeoutSeconds]
        #expect(limits == [10, 11, 12, 13, 14])
        let m = try #require(c.models["m"])
        #expect(m.batcher == BatcherConfig(maxBatchSize: 3, maxQueueDelayMicroseconds: 4, maxQueueSize: 5))
        #expect(m.defaultBudget?.value == 0.5)
        #expect(m.precision == .bf16)
    }

    /// Should default a model's precision to f32 and refuse one it does not know.
    @Test func readsPrecision() throws {
        #expect(try decode(#"{"models": {"m": {"path": "/x"}}}"#).models["m"]?.precision == .f32)
        #expect(throws: DecodingError.self) { _ = try decode(#"{"models": {"m": {"path": "/x", "precision": "fp8"}}}"#) }
    }

    /// Should refuse a default_budget outside (0, 1] with ComputeBudget's message.
    @Test func refusesABadDefaultBudget() {
        let error = #expect(throws: DecodingError.self) { _ = try decode(#"{"models": {"m": {"path": "/x", "default_budget": 1.5}}}"#) }
        #expect(error.map { "\($0)" }?.contains("must be in (0, 1], got 1.5") == true)
    }

    /// Should read the security and shutdown settings, with their defaults when absent.
    @Test func readsSecuritySettings() throws {
        let defaults = try decode(#"{"models": {"m": {"path": "/x"}}}"#)
        #expect(defaults.auth == ServerConfig.Auth() && defaults.auth.apiKeysFile == nil && !defaults.auth.metricsPublic)
        #expect(defaults.tls == nil && defaults.shutdownGraceSeconds == 25)
        #expect(defaults.limits.connectionLimit == nil && defaults.limits.maxInflightBodyBytes == 512 << 20)
        #expect(defaults.limits.headerTimeoutSeconds == 10 && defaults.limits.idleTimeoutSeconds == 60)
        #expect(defaults.limits.maxURIBytes == 8 << 10)
        let c = try decode(
            #"{"auth": {"api_keys_file": "/k", "metrics_public": true}, "tls": {"cert_file": "/c", "key_file": "/k2"},"#
                + #""shutdown_grace_seconds": 3.5, "limits": {"max_inflight_body_bytes": 99, "header_timeout_seconds": 2,"#
                + #""idle_timeout_seconds": 7, "max_uri_bytes": 100}, "models": {"m": {"path": "/x"}}}"#)
        #expect(c.auth.apiKeysFile == "/k" && c.auth.metricsPublic)
        #expect(c.tls == ServerConfig.TLS(certFile: "/c", keyFile: "/k2") && c.shutdownGraceSeconds == 3.5)
        #expect(c.limits.maxInflightBodyBytes == 99 && c.limits.headerTimeoutSeconds == 2 && c.limits.idleTimeoutSeconds == 7)
        #expect(c.limits.maxURIBytes == 100)
    }

    /// Should resolve the keys file and the certificate paths against the config file's folder, as model paths.
    @Test func resolvesRelativePathsAgainstTheFile() throws {
        let dir = FileManager.default.temporaryDirectory.appendingPathComponent("acm-config-\(UInt32.random(in: 0...UInt32.max))")
        try FileManager.default.createDirectory(at: dir, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(at: dir) }
        let file = dir.appendingPathComponent("c.json")
        try Data(
            (#"{"auth": {"api_keys_file": "keys.txt"}, "tls": {"cert_file": "tls/cert.pem", "key_file": "/abs/key.pem"},"#
                + #""models": {"m": {"path": "../m"}}}"#).utf8
        ).write(to: file)
        let c = try ServerConfig.load(path: file.path)
        #expect(c.auth.apiKeysFile == dir.appendingPathComponent("keys.txt").path)
        #expect(c.tls?.certFile == dir.appendingPathComponent("tls/cert.pem").path && c.tls?.keyFile == "/abs/key.pem")
        #expect(c.models["m"]?.path == dir.deletingLastPathComponent().appendingPathComponent("m").path)
    }

    /// Should refuse a cap on buffered bodies below max_body_bytes (no body could ever be read) and bad timeouts.
    @Test func validatesTheNewLimits() throws {
        var c = try decode(#"{"models": {"m": {"path": "/x"}}}"#)
        try c.validate()
        c.limits.maxInflightBodyBytes = c.limits.maxBodyBytes - 1
        #expect(throws: ModelError.self) { try c.validate() }
        c = try decode(#"{"limits": {"header_timeout_seconds": 0}, "models": {"m": {"path": "/x"}}}"#)
        #expect(throws: ModelError.self) { try c.validate() }
        c = try decode(#"{"shutdown_grace_seconds": -1, "models": {"m": {"path": "/x"}}}"#)
        #expect(throws: ModelError.self) { try c.validate() }
    }
}
