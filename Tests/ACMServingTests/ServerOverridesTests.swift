import ACMCore
import Foundation
import Testing

@testable import ACMServing

@Suite struct ServerOverridesTests {
    private func file() -> ServerConfig {
        var c = ServerConfig()
        c.port = 9000
        c.models = ["a": ServerConfig.ModelEntry(path: "/models/a"), "b": ServerConfig.ModelEntry(path: "/models/b")]
        return c
    }

    /// Should read every ACM_SERVE_ variable, and apply them over the file: the models replaced (their relative
    /// paths made absolute against the given directory), the per-model settings on each.
    @Test func readsTheEnvironment() throws {
        let env = [
            "ACM_SERVE_HOST": "127.0.0.1", "ACM_SERVE_PORT": "8080", "ACM_SERVE_HTTP_THREADS": "2",
            "ACM_SERVE_COMPUTE_THREADS": "1", "ACM_SERVE_LOG_LEVEL": "debug",
            "ACM_SERVE_MODELS": "fashion=models/f, speech=/abs/s", "ACM_SERVE_MAX_BATCH_SIZE": "8",
            "ACM_SERVE_MAX_QUEUE_DELAY_US": "100", "ACM_SERVE_MAX_QUEUE_SIZE": "7", "ACM_SERVE_MAX_BODY_BYTES": "1024",
            "ACM_SERVE_DEFAULT_BUDGET": "0.5", "ACM_SERVE_PRECISION": "bf16", "ACM_SERVE_API_KEYS_FILE": "keys.txt",
            "ACM_SERVE_METRICS_PUBLIC": "true", "ACM_SERVE_TLS_CERT": "c.pem", "ACM_SERVE_TLS_KEY": "/k.pem",
            "ACM_SERVE_SHUTDOWN_GRACE_SECONDS": "5", "ACM_SERVE_CONFIG": "/ignored/here", "PATH": "/bin",
        ]
        var c = file()
        try ServerOverrides(environment: env).apply(to: &c, directory: "/work")
        #expect(c.host == "127.0.0.1" && c.port == 8080 && c.httpThreads == 2 && c.computeThreads == 1)
        #expect(c.logLevel == "debug" && c.limits.maxBodyBytes == 1024 && c.shutdownGraceSeconds == 5)
        #expect(c.auth.apiKeysFile == "/work/keys.txt" && c.auth.metricsPublic)
        #expect(c.tls == ServerConfig.TLS(certFile: "/work/c.pem", keyFile: "/k.pem"))
        #expect(c.models.keys.sorted() == ["fashion", "speech"])
        #expect(c.models["fashion"]?.path == "/work/models/f" && c.models["speech"]?.path == "/abs/s")
        for m in c.models.values {
            #expect(m.batcher == BatcherConfig(maxBatchSize: 8, maxQueueDelayMicroseconds: 100, maxQueueSize: 7))
            #expect(m.defaultBudget?.value == 0.5 && m.precision == .bf16)
        }
        try c.validate()
    }

    /// Should skip the variables Kubernetes sets in every pod for a Service named acm-serve (service links), which
    /// are not settings, and still read a real ACM_SERVE_PORT.
    @Test func skipsKubernetesServiceLinks() throws {
        let links = [
            "ACM_SERVE_PORT": "tcp://10.96.0.12:8000", "ACM_SERVE_SERVICE_HOST": "10.96.0.12",
            "ACM_SERVE_SERVICE_PORT": "8000", "ACM_SERVE_SERVICE_PORT_HTTP": "8000",
            "ACM_SERVE_PORT_8000_TCP": "tcp://10.96.0.12:8000", "ACM_SERVE_PORT_8000_TCP_PROTO": "tcp",
            "ACM_SERVE_PORT_8000_TCP_PORT": "8000", "ACM_SERVE_PORT_8000_TCP_ADDR": "10.96.0.12",
        ]
        var c = file()
        try ServerOverrides(environment: links).apply(to: &c)
        #expect(c == file())
        try ServerOverrides(environment: ["ACM_SERVE_PORT": "8080"]).apply(to: &c)
        #expect(c.port == 8080)
    }

    /// Should list, not apply and not refuse, ACM_SERVE_ names it does not know (a typo, or another tool's).
    @Test func listsUnknownNames() throws {
        let o = try ServerOverrides(environment: ["ACM_SERVE_PROT": "8080", "ACM_SERVE_BIN": "/x", "ACM_SERVE_PORT": "9"])
        #expect(o.unknownVariables == ["ACM_SERVE_BIN", "ACM_SERVE_PROT"] && o.port == 9)
    }

    /// Should leave the file alone for unset and empty variables.
    @Test func keepsTheFileWithoutVariables() throws {
        var c = file()
        try ServerOverrides(environment: ["HOME": "/root", "ACM_SERVE_PORT": ""]).apply(to: &c)
        #expect(c == file())
    }

    /// Should refuse, naming the variable, values that do not parse, a misspelt ACM_SERVE_ name, and models that
    /// are not NAME=DIR or repeat a name.
    @Test(arguments: [
        ("ACM_SERVE_PORT", "80a", "ACM_SERVE_PORT='80a' is not an integer"),
        ("ACM_SERVE_DEFAULT_BUDGET", "2", "ACM_SERVE_DEFAULT_BUDGET"),
        ("ACM_SERVE_SHUTDOWN_GRACE_SECONDS", "nan", "is not a number"),
        ("ACM_SERVE_PRECISION", "fp16", "use f32 or bf16"),
        ("ACM_SERVE_METRICS_PUBLIC", "maybe", "use true or false"),
        ("ACM_SERVE_MODELS", "fashion", "a model is NAME=DIR, got 'fashion'"),
        ("ACM_SERVE_MODELS", "a=/x,a=/y", "model 'a' is given twice"),
        ("ACM_SERVE_TLS_CERT", "c.pem", "go together"),
    ])
    func refusesBadValues(name: String, value: String, message: String) throws {
        var c = file()
        let error = #expect(throws: ModelError.self) {
            try ServerOverrides(environment: [name: value]).apply(to: &c)
        }
        #expect(error.map { "\($0)".contains(message) } == true, "\(String(describing: error))")
    }

    /// Should let the command line's settings win over the environment's when both are applied in that order, as
    /// `serve` does.
    @Test func flagsWinOverTheEnvironment() throws {
        var c = file()
        try ServerOverrides(environment: ["ACM_SERVE_PORT": "8080", "ACM_SERVE_LOG_LEVEL": "debug"]).apply(to: &c)
        var flags = ServerOverrides()
        flags.port = 7000
        try flags.apply(to: &c)
        #expect(c.port == 7000 && c.logLevel == "debug")
    }

    /// Should refuse a model named "stats", which /v2/models/stats (every model's statistics) would hide.
    @Test func refusesAModelNamedStats() {
        var c = ServerConfig()
        c.models = ["stats": ServerConfig.ModelEntry(path: "/x")]
        #expect(throws: ModelError.self) { try c.validate() }
    }
}
