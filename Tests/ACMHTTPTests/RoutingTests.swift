import ACMCore
import ACMServing
import Foundation
import Logging
import Testing

@testable import ACMHTTP

/// The ViT fixture with ACMs, shared with ACMModelsTests.
private let fixture = URL(fileURLWithPath: #filePath).deletingLastPathComponent()
    .appendingPathComponent("../ACMModelsTests/Fixtures/vit_mixed").standardized.path

/// A request without a socket: what the handler reads, and the answer it gives later, if it keeps it.
private final class FakeRequest: HTTPRequest, @unchecked Sendable {
    let method: String, path: String, body: [UInt8]
    let arrived = DispatchTime.now().uptimeNanoseconds
    private let headers: [String: String], queries: [String: String]
    private let answered = DispatchSemaphore(value: 0)
    private(set) var answer: HTTPResponse?

    init(_ method: String, _ path: String, body: [UInt8] = [], headers: [String: String] = [:], query: [String: String] = [:]) {
        self.method = method
        self.path = path
        self.body = body
        self.headers = headers
        self.queries = query
    }

    func header(_ name: String) -> String? { headers.first { $0.key.lowercased() == name.lowercased() }?.value }
    func query(_ name: String) -> String? { queries[name] }

    func complete(_ response: HTTPResponse) {
        answer = response
        answered.signal()
    }

    /// The later answer, waiting at most 30 s.
    func awaitAnswer() -> HTTPResponse? { answered.wait(timeout: .now() + 30) == .success ? answer : nil }
}

/// A server on the fixture, named "vit", without HTTP.
private func server(precision: Precision = .f32) throws -> InferenceServer {
    var config = ServerConfig()
    var entry = ServerConfig.ModelEntry(path: fixture)
    entry.maxBatchSize = 4
    entry.precision = precision
    config.models = ["vit": entry]
    return try InferenceServer(config: config, logger: Logger(label: "test"))
}

/// The JSON object of a response body.
private func json(_ r: HTTPResponse?) -> [String: Any] {
    (r.flatMap { try? JSONSerialization.jsonObject(with: Data($0.body)) } as? [String: Any]) ?? [:]
}

/// The value of a metrics series, from the text exposition.
private func sample(_ s: InferenceServer, _ series: String) -> Double? {
    String(decoding: s.metrics.render(), as: UTF8.self).split(separator: "\n")
        .first { $0.hasPrefix(series + " ") }.flatMap { Double($0.split(separator: " ").last!) }
}

@Suite struct RoutingTests {
    /// Should answer health, server and model metadata, and config at once, and refuse other methods
    /// with 405 and Allow.
    @Test func answersMetadataRoutes() throws {
        let s = try server()
        defer { s.drain() }
        // JSON bodies, as KServe's client parses them (tritonclient reads only the status).
        let live = s.respond(to: FakeRequest("GET", "/v2/health/live"))
        #expect(live?.status == 200 && json(live)["live"] as? Bool == true)
        let ready = s.respond(to: FakeRequest("GET", "/v2/health/ready"))
        #expect(ready?.status == 200 && json(ready)["ready"] as? Bool == true)
        let modelReady = s.respond(to: FakeRequest("GET", "/v2/models/vit/ready"))
        #expect(modelReady?.status == 200 && json(modelReady)["ready"] as? Bool == true && json(modelReady)["name"] as? String == "vit")
        #expect(json(s.respond(to: FakeRequest("GET", "/v2")))["name"] as? String == "acm-serve")
        let metadata = json(s.respond(to: FakeRequest("GET", "/v2/models/vit/versions/1")))
        #expect(metadata["name"] as? String == "vit")
        #expect(((metadata["inputs"] as? [[String: Any]])?.first?["shape"] as? [Int]) == [-1, 1, 16, 16])
        let config = json(s.respond(to: FakeRequest("GET", "/v2/models/vit/config")))
        #expect(config["max_batch_size"] as? Int == 4)
        let refused = s.respond(to: FakeRequest("POST", "/v2/models/vit"))
        #expect(refused?.status == 405 && refused?.headers.contains { $0 == ("Allow", "GET") } == true)
    }

    /// Should report the precision the model runs in, in its metadata's parameters and as a Triton model
    /// parameter in its config: bf16 where asked for and this CPU has it, else f32.
    @Test(arguments: [Precision.f32, .bf16])
    func reportsPrecision(asked: Precision) throws {
        let s = try server(precision: asked)
        defer { s.drain() }
        let metadata = json(s.respond(to: FakeRequest("GET", "/v2/models/vit")))
        #expect((metadata["parameters"] as? [String: Any])?["precision"] as? String == asked.effective.rawValue)
        let config = json(s.respond(to: FakeRequest("GET", "/v2/models/vit/config")))
        let parameters = config["parameters"] as? [String: [String: String]]
        #expect(parameters?["precision"]?["string_value"] == asked.effective.rawValue)
    }

    /// Should answer 404 for unknown paths, models and versions and the other kind's curl route, and
    /// count those of a known model as not_found.
    @Test func refusesWhatIsNotThere() throws {
        let s = try server()
        defer { s.drain() }
        #expect(s.respond(to: FakeRequest("GET", "/v2/nothing"))?.status == 404)
        #expect(s.respond(to: FakeRequest("GET", "/v2/models/other"))?.status == 404)
        #expect(s.respond(to: FakeRequest("GET", "/v2/models/vit/versions/2"))?.status == 404)
        let wrongKind = s.respond(to: FakeRequest("POST", "/v2/models/vit/transcribe"))
        #expect(wrongKind?.status == 404)
        #expect((json(wrongKind)["error"] as? String)?.contains("is an image model: it has no /transcribe") == true)
        #expect(sample(s, #"acm_request_failure_total{model="vit",reason="not_found"}"#) == 2)
    }

    /// Should serve the demo page at / as HTML that lists the models, without a key even where keys are
    /// required, but then without the model list; and refuse other methods.
    @Test func servesTheDemoPage() throws {
        let s = try server()
        defer { s.drain() }
        let page = try #require(s.respond(to: FakeRequest("GET", "/")))
        #expect(page.status == 200)
        #expect(page.headers.contains { $0 == ("Content-Type", "text/html; charset=utf-8") })
        let text = String(decoding: page.body, as: UTF8.self)
        #expect(text.hasPrefix("<!doctype html>") && text.contains(#"{"name":"vit","kind":"image","acm":true}"#))
        #expect(text.contains("\"images\":[{\"index\":"))  // the bundled samples, inline
        #expect(s.respond(to: FakeRequest("POST", "/"))?.status == 405)

        let dir = FileManager.default.temporaryDirectory.appendingPathComponent("acm-demo-keys-\(getpid())")
        try FileManager.default.createDirectory(at: dir, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(at: dir) }
        let keys = dir.appendingPathComponent("keys.txt").path
        try "demo-test-key-0123456789abcdef\n".write(toFile: keys, atomically: true, encoding: .utf8)
        var config = ServerConfig()
        config.models = ["vit": ServerConfig.ModelEntry(path: fixture)]
        let guarded = try InferenceServer(config: config, logger: Logger(label: "test"), apiKeys: try APIKeys(path: keys))
        defer { guarded.drain() }
        #expect(guarded.authenticate(FakeRequest("GET", "/")) == nil)
        #expect(guarded.authenticate(FakeRequest("GET", "/v2"))?.status == 401)
        let keyed = String(decoding: try #require(guarded.respond(to: FakeRequest("GET", "/"))).body, as: UTF8.self)
        #expect(keyed.contains(#""models":[]"#) && keyed.contains(#""keys":true"#))
    }

    /// Should queue a well-formed infer request (no answer yet), then answer it from the runner with the
    /// logits, the compute fraction and the budget; and refuse a malformed one at once, counted.
    @Test func infersThroughTheRunner() throws {
        let s = try server()
        defer { s.drain() }
        let values = (0..<256).map { Float($0 % 17) / 17 }
        let header = Array(#"{"id": "a", "inputs": [{"name": "input", "shape": [1, 1, 16, 16], "datatype": "FP32", "parameters": {"binary_data_size": 1024}}], "outputs": [{"name": "logits"}], "parameters": {"compute_budget": 0.5}}"#.utf8)
        let bytes = values.flatMap { v in withUnsafeBytes(of: v.bitPattern.littleEndian) { Array($0) } }
        let request = FakeRequest(
            "POST", "/v2/models/vit/infer", body: header + bytes,
            headers: ["Inference-Header-Content-Length": "\(header.count)"])
        #expect(s.respond(to: request) == nil)
        let answer = request.awaitAnswer()
        #expect(answer?.status == 200)
        let body = json(answer)
        #expect(body["id"] as? String == "a")
        let parameters = body["parameters"] as? [String: Any]
        #expect(parameters?["compute_budget"] as? Double == 0.5)
        #expect((parameters?["compute_fraction"] as? Double).map { $0 > 0 && $0 <= 0.5 + 1e-9 } == true)
        let logits = (body["outputs"] as? [[String: Any]])?.first
        #expect(logits?["shape"] as? [Int] == [1, 10] && (logits?["data"] as? [Double])?.count == 10)

        let bad = FakeRequest("POST", "/v2/models/vit/infer", body: Array(#"{"inputs": []}"#.utf8))
        #expect(s.respond(to: bad)?.status == 400)
        #expect(sample(s, #"acm_request_failure_total{model="vit",reason="bad_request"}"#) == 1)
        #expect(sample(s, #"acm_request_success_total{model="vit"}"#) == 1)
    }

    /// Should answer an image whose logits overflow (finite inputs of 3e38) with a JSON 400 that says so, never
    /// with `null` logits, counted as a bad request; the other image of the same request's batch as usual; and
    /// the same image, when its logits are asked for as binary FP32, with their IEEE values (perf_analyzer's
    /// random inputs).
    @Test func refusesNonFiniteOutputs() throws {
        let s = try server()
        defer { s.drain() }
        func infer(_ value: Float, id: String, binary: Bool = false) -> FakeRequest {
            let outputs = binary ? #", "outputs": [{"name": "logits", "parameters": {"binary_data": true}}]"# : ""
            let header = Array(#"{"id": "\#(id)", "inputs": [{"name": "input", "shape": [1, 1, 16, 16], "datatype": "FP32", "parameters": {"binary_data_size": 1024}}]\#(outputs)}"#.utf8)
            let bytes = (0..<256).flatMap { i in
                withUnsafeBytes(of: (i % 2 == 0 ? value : -value).bitPattern.littleEndian) { Array($0) }
            }
            return FakeRequest(
                "POST", "/v2/models/vit/infer", body: header + bytes,
                headers: ["Inference-Header-Content-Length": "\(header.count)"])
        }
        let huge = infer(3e38, id: "huge"), normal = infer(0.5, id: "normal")
        #expect(s.respond(to: huge) == nil && s.respond(to: normal) == nil)
        let refused = huge.awaitAnswer(), answered = normal.awaitAnswer()
        #expect(refused?.status == 400)
        #expect((json(refused)["error"] as? String)?.contains("the model's output is not finite for this input") == true)
        #expect(answered?.status == 200)
        let logits = (json(answered)["outputs"] as? [[String: Any]])?.first?["data"] as? [Double]
        #expect(logits?.count == 10 && logits?.allSatisfy(\.isFinite) == true)
        #expect(sample(s, #"acm_request_failure_total{model="vit",reason="bad_request"}"#) == 1)
        #expect(sample(s, #"acm_request_success_total{model="vit"}"#) == 1)

        let binary = infer(3e38, id: "binary", binary: true)
        #expect(s.respond(to: binary) == nil)
        let raw = binary.awaitAnswer()
        #expect(raw?.status == 200)
        let body = raw?.body ?? []
        let headerLength = raw?.headers.first { $0.0 == "Inference-Header-Content-Length" }.flatMap { Int($0.1) } ?? body.count
        let values = stride(from: headerLength, to: body.count, by: 4).map { i in
            Float(bitPattern: UInt32(body[i]) | UInt32(body[i + 1]) << 8 | UInt32(body[i + 2]) << 16 | UInt32(body[i + 3]) << 24)
        }
        #expect(values.count == 10 && values.contains { !$0.isFinite })
    }

    /// Should count requests as Triton's statistics extension does: two requests run in one batch of two images
    /// (each charged the batch's compute time), one failure; per model and for all models at /v2/models/stats.
    @Test func reportsStatistics() throws {
        var config = ServerConfig()
        var entry = ServerConfig.ModelEntry(path: fixture)
        entry.maxBatchSize = 4
        entry.maxQueueDelayMicroseconds = 2_000_000  // the two requests wait for each other
        config.models = ["vit": entry]
        let s = try InferenceServer(config: config, logger: Logger(label: "test"))
        defer { s.drain() }
        func stats(_ path: String) -> [String: Any]? {
            let r = s.respond(to: FakeRequest("GET", path))
            return (json(r)["model_stats"] as? [[String: Any]])?.first
        }
        let before = stats("/v2/models/vit/stats")
        #expect(before?["name"] as? String == "vit" && before?["version"] as? String == "1")
        #expect(before?["inference_count"] as? Int == 0 && before?["execution_count"] as? Int == 0)

        let header = Array(#"{"inputs": [{"name": "input", "shape": [1, 1, 16, 16], "datatype": "FP32", "parameters": {"binary_data_size": 1024}}]}"#.utf8)
        let bytes = (0..<256).flatMap { i in withUnsafeBytes(of: Float(i % 7).bitPattern.littleEndian) { Array($0) } }
        let requests = (0..<2).map { _ in
            FakeRequest("POST", "/v2/models/vit/infer", body: header + bytes, headers: ["Inference-Header-Content-Length": "\(header.count)"])
        }
        for r in requests { #expect(s.respond(to: r) == nil) }
        let answers = requests.map { $0.awaitAnswer()?.status }
        #expect(answers == [200, 200])
        #expect(s.respond(to: FakeRequest("POST", "/v2/models/vit/infer", body: Array("{".utf8)))?.status == 400)

        let after = try #require(stats("/v2/models/vit/versions/1/stats"))
        #expect(after["inference_count"] as? Int == 2 && after["execution_count"] as? Int == 1)
        #expect((after["last_inference"] as? Int).map { $0 > 1_700_000_000_000 } == true)
        let inference = try #require(after["inference_stats"] as? [String: [String: Int]])
        #expect(inference["success"]?["count"] == 2 && inference["fail"]?["count"] == 1)
        #expect(inference["queue"]?["count"] == 2 && inference["compute_infer"]?["count"] == 2)
        #expect(inference["compute_input"]?["count"] == 2 && inference["compute_output"]?["count"] == 2)
        // Both waited for the batch to fill, then were charged its whole forward pass.
        #expect((inference["success"]?["ns"] ?? 0) >= (inference["compute_infer"]?["ns"] ?? .max))
        let batches = try #require(after["batch_stats"] as? [[String: Any]])
        #expect(batches.count == 1 && batches[0]["batch_size"] as? Int == 2)
        #expect((batches[0]["compute_infer"] as? [String: Int])?["count"] == 1)
        #expect(stats("/v2/models/stats")?["inference_count"] as? Int == 2)
    }

    /// Should refuse inference with 503 once draining, and say it is not ready.
    @Test func drainingRefuses() throws {
        let s = try server()
        s.drain()
        let ready = s.respond(to: FakeRequest("GET", "/v2/health/ready"))
        #expect(ready?.status == 400 && json(ready)["ready"] as? Bool == false)
        let header = Array(#"{"inputs": [{"name": "input", "shape": [1, 1, 16, 16], "datatype": "FP32", "data": [0]}]}"#.utf8)
        // parsed first (a 400 wins over a 503), so a well-formed body
        let data = "[" + Array(repeating: "0", count: 256).joined(separator: ",") + "]"
        let ok = Array(String(decoding: header, as: UTF8.self).replacingOccurrences(of: "[0]", with: data).utf8)
        #expect(s.respond(to: FakeRequest("POST", "/v2/models/vit/infer", body: ok))?.status == 503)
    }
}
