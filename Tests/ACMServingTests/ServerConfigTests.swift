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
        let limits: [Int] = [l.maxBodyBytes, l.maxHeaderBytes, l.connectionLimit, l.perIPConnectionLimit, l.connectionTimeoutSeconds]
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
}
