// Fuzz target: an infer request as the server parses it (RequestEnvelope, then the image endpoint's
// parseInfer: the JSON header, the inputs, the binary-data extension's tail, BYTES images decoded and
// preprocessed, the outputs asked for). The endpoint is the test fixture model vit_mixed (grey, 16×16,
// with preprocessing), loaded once; nothing is submitted to its runner.
//
// Input: the Inference-Header-Content-Length value, a newline, then the body; an empty first line means
// no header, and an input with no newline is all body (no header).
import ACMCore
import ACMModels
import ACMServing
import Foundation

@testable import ACMHTTP

/// The repository root, from this file (Tests/fuzz/Targets/infer-request/).
let repositoryRoot = URL(fileURLWithPath: #filePath)
    .deletingLastPathComponent().deletingLastPathComponent().deletingLastPathComponent()
    .deletingLastPathComponent().deletingLastPathComponent().path

let endpoint: ImageEndpoint = {
    let directory = "\(repositoryRoot)/Tests/ACMModelsTests/Fixtures/vit_mixed"
    do {
        var entry = ServerConfig.ModelEntry(path: directory)
        entry.maxBatchSize = 4
        return try ImageEndpoint(name: "fuzz", entry: entry, model: Model(directory: directory), metrics: ServingMetrics())
    } catch {
        fatalError("cannot load \(directory): \(error)")
    }
}()

@_cdecl("LLVMFuzzerTestOneInput")
func fuzzInferRequest(_ data: UnsafePointer<UInt8>?, _ size: Int) -> CInt {
    let input = UnsafeBufferPointer(start: data, count: size)
    var headerLength: String?
    var body = input[...]
    if let newline = input.firstIndex(of: UInt8(ascii: "\n")) {
        let line = input[..<newline]
        headerLength = line.isEmpty ? nil : String(decoding: line, as: UTF8.self)
        body = input[(newline + 1)...]
    }
    do {
        var envelope = try RequestEnvelope(body: Array(body), headerLength: headerLength, defaultBudget: nil)
        let submission = try endpoint.parseInfer(&envelope)
        // What reaches the queue must be runnable: one 1×16×16 image per item, within the batch limit.
        precondition((1...endpoint.entry.maxBatchSize).contains(submission.count))
        precondition(submission.input.images.count == submission.count * 256)
    } catch is ProtocolError {
        // a 400: the expected answer to a bad request
    } catch {
        fatalError("not a ProtocolError (the server would answer 500): \(error)")
    }
    return 0
}
