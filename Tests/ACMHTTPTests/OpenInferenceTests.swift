import ACMCore
import Foundation
import Testing

@testable import ACMHTTP

/// A request body: the JSON header, then `binary`; and the header's length, for the
/// Inference-Header-Content-Length header.
private func body(_ header: String, binary: [UInt8] = []) -> (body: [UInt8], length: String) {
    let h = Array(header.utf8)
    return (h + binary, "\(h.count)")
}

/// The bytes of `values` as little-endian FP32, as a client sends them.
private func fp32(_ values: [Float]) -> [UInt8] {
    values.flatMap { v in withUnsafeBytes(of: v.bitPattern.littleEndian) { Array($0) } }
}

/// The 400 message `body` throws, or nil when it does not throw a ProtocolError.
private func badRequest(_ body: () throws -> Void) -> String? {
    do {
        try body()
        return nil
    } catch let e as ProtocolError {
        return e.status == 400 ? e.message : nil
    } catch {
        return nil
    }
}

@Suite struct RequestEnvelopeTests {
    /// Should read id, compute_budget, timeout and binary_data_output, and fall back to the model's
    /// default budget.
    @Test func readsTheParameters() throws {
        let (b, _) = body(#"{"id": "r1", "parameters": {"compute_budget": 0.25, "timeout": 1500, "binary_data_output": true}}"#)
        let e = try RequestEnvelope(body: b, headerLength: nil, defaultBudget: 0.5)
        #expect(e.id == "r1" && e.budget == 0.25 && e.timeoutNanoseconds == 1_500_000 && e.binaryOutputs)
        let plain = try RequestEnvelope(body: Array("{}".utf8), headerLength: nil, defaultBudget: 0.5)
        #expect(plain.id == nil && plain.budget == 0.5 && plain.timeoutNanoseconds == nil && !plain.binaryOutputs)
    }

    /// Should refuse each malformed envelope with a 400 that names the problem.
    @Test(arguments: [
        (#"{"parameters": {"compute_budget": 1.5}}"#, "'compute_budget' must be in (0, 1], got 1.5"),
        (#"{"parameters": {"compute_budget": 0}}"#, "'compute_budget' must be in (0, 1], got 0.0"),
        (#"{"parameters": {"compute_budget": "abc"}}"#, "'compute_budget' must be a number"),
        (#"{"parameters": {"timeout": -1}}"#, "'timeout' must be a non-negative integer"),
        (#"{"parameters": {"binary_data_output": 1}}"#, "'binary_data_output' must be a boolean"),
        (#"{"parameters": []}"#, "'parameters' must be an object"),
        (#"{"id": 7}"#, "'id' must be a string"),
        (#"[1, 2]"#, "the request must be a JSON object"),
        (#"{"inputs": "#, "line 1"),
    ])
    func refusesMalformedEnvelopes(header: String, says: String) {
        let message = badRequest { _ = try RequestEnvelope(body: Array(header.utf8), headerLength: nil, defaultBudget: nil) }
        #expect(message?.contains(says) == true, "\(String(describing: message))")
    }

    /// Should take a timeout too large for nanoseconds as the longest one, not trap (docs/reliability.md,
    /// Tests/fuzz/corpus/infer-request/crash-timeout-overflow).
    @Test func saturatesAHugeTimeout() throws {
        for us in ["18446744073709552", "9223372036854775807"] {
            let b = Array(#"{"parameters": {"timeout": \#(us)}}"#.utf8)
            #expect(try RequestEnvelope(body: b, headerLength: nil, defaultBudget: nil).timeoutNanoseconds == .max)
        }
    }

    /// Should split the body at Inference-Header-Content-Length, and refuse a length past the body.
    @Test func splitsTheBinaryTail() throws {
        let (b, length) = body(#"{"inputs": []}"#, binary: [1, 2, 3])
        let e = try RequestEnvelope(body: b, headerLength: length, defaultBudget: nil)
        #expect(Array(e.binary) == [1, 2, 3])
        #expect(badRequest { _ = try RequestEnvelope(body: b, headerLength: "\(b.count + 1)", defaultBudget: nil) } != nil)
        #expect(badRequest { _ = try RequestEnvelope(body: b, headerLength: "-1", defaultBudget: nil) } != nil)
    }
}

@Suite struct InputTensorTests {
    /// The one input of a request whose header is `header` and binary tail `binary`.
    private func input(_ header: String, binary: [UInt8] = []) throws -> (InputTensor, RequestEnvelope) {
        let (b, length) = body(header, binary: binary)
        let e = try RequestEnvelope(body: b, headerLength: length, defaultBudget: nil)
        return (try e.singleInput(named: ["x"], help: "'x'"), e)
    }

    /// Should read FP32 values from the binary tail (little-endian) and from JSON `data`, the same.
    @Test func readsFloatsFromBinaryAndJSON() throws {
        let values: [Float] = [1.5, -2, 0.25, 3e-8]
        var (tensor, envelope) = try input(
            #"{"inputs": [{"name": "x", "shape": [1, 4], "datatype": "FP32", "parameters": {"binary_data_size": 16}}]}"#,
            binary: fp32(values) + [9])
        #expect(try tensor.floats(elements: 4, binary: &envelope.binary) == values)
        #expect(Array(envelope.binary) == [9])  // only its own bytes were taken
        (tensor, envelope) = try input(#"{"inputs": [{"name": "x", "shape": [1, 4], "datatype": "FP32", "data": [[1.5, -2, 0.25, 3e-8]]}]}"#)
        #expect(try tensor.floats(elements: 4, binary: &envelope.binary) == values)
    }

    /// Should refuse a binary size that does not match the shape, a count that does not, and NaN.
    @Test func refusesMismatchesAndNaN() throws {
        var (tensor, envelope) = try input(
            #"{"inputs": [{"name": "x", "shape": [1, 4], "datatype": "FP32", "parameters": {"binary_data_size": 12}}]}"#,
            binary: fp32([1, 2, 3]))
        #expect(badRequest { _ = try tensor.floats(elements: 4, binary: &envelope.binary) }?.contains("12 binary bytes for 4") == true)
        (tensor, envelope) = try input(#"{"inputs": [{"name": "x", "shape": [1, 4], "datatype": "FP32", "data": [1, 2, 3]}]}"#)
        #expect(badRequest { _ = try tensor.floats(elements: 4, binary: &envelope.binary) }?.contains("3 values") == true)
        (tensor, envelope) = try input(
            #"{"inputs": [{"name": "x", "shape": [1, 2], "datatype": "FP32", "parameters": {"binary_data_size": 8}}]}"#,
            binary: fp32([1, .nan]))
        #expect(badRequest { _ = try tensor.floats(elements: 2, binary: &envelope.binary) }?.contains("NaN") == true)
        #expect(badRequest { _ = try input(#"{"inputs": [{"name": "x", "shape": [1], "datatype": "FP32", "data": [1], "parameters": {"binary_data_size": 4}}]}"#, binary: fp32([1])) }?.contains("exactly one") == true)
        #expect(badRequest { _ = try input(#"{"inputs": [{"name": "y", "shape": [1], "datatype": "FP32", "data": [1]}]}"#) }?.contains("unexpected input 'y'") == true)
        #expect(badRequest { _ = try input(#"{"inputs": []}"#) }?.contains("expected 1 input") == true)
    }

    /// Should split BYTES elements by their 4-byte little-endian lengths, and refuse truncated or
    /// overrunning data, a count that differs from the shape, and a batch over the limit.
    @Test func splitsBytesElements() throws {
        let data: [UInt8] = [3, 0, 0, 0, 97, 98, 99, 0, 0, 0, 0, 1, 0, 0, 0, 255]
        #expect(try splitBytesElements(data[...]) == [[97, 98, 99], [], [255]])
        #expect(bytesElements(["abc", "", "\u{FF}"]).count == 4 + 3 + 4 + 4 + 2)
        #expect(badRequest { _ = try splitBytesElements([3, 0, 0][...]) }?.contains("truncated") == true)
        #expect(badRequest { _ = try splitBytesElements([9, 0, 0, 0, 1][...]) }?.contains("overruns") == true)
        var (tensor, envelope) = try input(
            #"{"inputs": [{"name": "x", "shape": [2], "datatype": "BYTES", "parameters": {"binary_data_size": 16}}]}"#, binary: data)
        #expect(badRequest { _ = try tensor.byteElements(what: "files", items: "files", maxBatchSize: 8, binary: &envelope.binary) }?
            .contains("3 elements for shape [2]") == true)
        (tensor, envelope) = try input(#"{"inputs": [{"name": "x", "shape": [9], "datatype": "BYTES", "data": []}]}"#)
        #expect(badRequest { _ = try tensor.byteElements(what: "files", items: "files", maxBatchSize: 8, binary: &envelope.binary) }?
            .contains("batch-size must be <= 8") == true)
    }
}

@Suite struct OutputSelectionTests {
    enum Kind: Sendable, Equatable { case a, b }

    private func outputs(_ header: String) throws -> [RequestedOutput<Kind>] {
        let e = try RequestEnvelope(body: Array(header.utf8), headerLength: nil, defaultBudget: nil)
        return try e.requestedOutputs(
            kind: { ["a": Kind.a, "b": .b][$0] }, defaults: [.a, .b], unknown: "this model has 'a' and 'b'",
            classification: { $0 == .a })
    }

    /// Should give the defaults in the request's binary mode when none are asked for, else those asked
    /// for in order with their own binary flag and classification.
    @Test func readsTheSelection() throws {
        let defaults = try outputs(#"{"parameters": {"binary_data_output": true}}"#)
        #expect(defaults.map(\.kind) == [.a, .b] && defaults.allSatisfy(\.binary))
        let asked = try outputs(#"{"outputs": [{"name": "b"}, {"name": "a", "parameters": {"binary_data": true, "classification": 3}}]}"#)
        #expect(asked.map(\.kind) == [.b, .a] && asked.map(\.binary) == [false, true] && asked.map(\.classification) == [nil, 3])
    }

    /// Should refuse an unknown output, classification where it does not apply, and bad parameters.
    @Test func refusesBadSelections() {
        #expect(badRequest { _ = try outputs(#"{"outputs": [{"name": "c"}]}"#) }?.contains("unknown output 'c'") == true)
        #expect(badRequest { _ = try outputs(#"{"outputs": [{"name": "b", "parameters": {"classification": 2}}]}"#) }?
            .contains("classification") == true)
        #expect(badRequest { _ = try outputs(#"{"outputs": [{"name": "a", "parameters": {"classification": 0}}]}"#) } != nil)
        #expect(badRequest { _ = try outputs(#"{"outputs": [{"name": "a", "parameters": {"binary_data": "yes"}}]}"#) } != nil)
        #expect(badRequest { _ = try outputs(#"{"outputs": {"name": "a"}}"#) } != nil)
    }
}
