import ACMCore
import ACMServing
import Foundation

// The Open Inference Protocol's envelope (docs/http-api.md), whatever the model: the request's JSON
// header and binary tail, its input tensors, its output selection and batch checks, the response's
// envelope, and the model metadata and Triton configuration. What a model kind puts inside the envelope
// (its inputs' meaning, its outputs' values) is its endpoint's (ImageEndpoint.swift, SpeechEndpoint.swift).
// Parsing validates everything before a request reaches the model's queue: whatever gets there can run.

/// A request error, answered with `status` and `{"error": message}`.
struct ProtocolError: Error {
    let status: Int
    let message: String
    let reason: FailureReason

    static func bad(_ message: String) -> ProtocolError { ProtocolError(status: 400, message: message, reason: .badRequest) }
    static func notFound(_ message: String) -> ProtocolError { ProtocolError(status: 404, message: message, reason: .notFound) }
}

/// What every infer request has, whatever the model: the JSON header, `id`, the parameters, and the
/// binary tensor data after the header.
struct RequestEnvelope {
    let root: JSONView
    /// The body after the JSON header; each binary input takes its bytes off the front.
    var binary: ArraySlice<UInt8>
    let id: String?
    /// `compute_budget`, or the model's `default_budget`.
    let budget: ComputeBudget?
    /// Whether the model's adaptive budget may lower `budget` (docs/adaptive-budget.md): the request set none and
    /// the model has one, or it asked for `"adaptive"`.
    let adaptive: Bool
    let timeoutNanoseconds: UInt64?
    /// `binary_data_output`: the outputs' default.
    let binaryOutputs: Bool

    /// Parses a request body's JSON header and its parameters.
    init(body: [UInt8], headerLength: String?, defaultBudget: ComputeBudget?, adaptiveBudget: Bool = false) throws {
        let jsonLength: Int
        if let headerLength {
            guard let n = Int(headerLength), n >= 0, n <= body.count else {
                throw ProtocolError.bad("Inference-Header-Content-Length '\(headerLength)' does not fit the \(body.count)-byte body")
            }
            jsonLength = n
        } else {
            jsonLength = body.count
        }
        do {
            root = try body.withUnsafeBytes { try JSONDocument.parse(UnsafeRawBufferPointer(rebasing: $0[0..<jsonLength])) }
        } catch let error as JSONError {
            throw ProtocolError.bad(error.description)
        }
        guard root.isObject else { throw ProtocolError.bad("the request must be a JSON object") }
        binary = body[jsonLength...]

        if let v = root["id"] {
            guard let s = v.string else { throw ProtocolError.bad("'id' must be a string") }
            id = s
        } else {
            id = nil
        }
        var budget = defaultBudget
        var adaptive = adaptiveBudget
        var timeout: UInt64?
        var binaryOutputs = false
        if let params = root["parameters"] {
            guard params.isObject else { throw ProtocolError.bad("'parameters' must be an object") }
            if let b = params["compute_budget"] {
                if b.string == "adaptive" {
                    try requireAdaptive(adaptiveBudget)
                } else {
                    guard let value = b.number else {
                        throw ProtocolError.bad("'compute_budget' must be a number in (0, 1], or \"adaptive\"")
                    }
                    budget = try parseBudget(value)
                    adaptive = false
                }
            }
            if let t = params["timeout"] {
                guard let us = t.integer, us >= 0 else { throw ProtocolError.bad("'timeout' must be a non-negative integer (microseconds)") }
                // In nanoseconds, saturating: a timeout past 2⁶⁴ ns (584 years) is as good as none.
                let ns = UInt64(us).multipliedReportingOverflow(by: 1000)
                timeout = us > 0 ? (ns.overflow ? .max : ns.partialValue) : nil
            }
            if let b = params["binary_data_output"] {
                guard let flag = b.bool else { throw ProtocolError.bad("'binary_data_output' must be a boolean") }
                binaryOutputs = flag
            }
        }
        self.budget = budget
        self.adaptive = adaptive
        self.timeoutNanoseconds = timeout
        self.binaryOutputs = binaryOutputs
    }

    /// The request's one input, which must be named one of `names`; `help` says what the model takes.
    func singleInput(named names: [String], help: String) throws -> InputTensor {
        guard let inputs = root["inputs"]?.array else { throw ProtocolError.bad("'inputs' must be an array") }
        guard inputs.count == 1 else {
            let given = Set(inputs.compactMap { $0["name"]?.string })
            if names.count > 1 && given.isSuperset(of: names) {
                throw ProtocolError.bad("give \(names.map { "'\($0)'" }.joined(separator: " or ")), not both")
            }
            throw ProtocolError.bad("expected 1 input, \(help); got \(inputs.count)")
        }
        let input = inputs[0]
        guard let name = input["name"]?.string else { throw ProtocolError.bad("input has no 'name'") }
        guard names.contains(name) else { throw ProtocolError.bad("unexpected input '\(name)': the model takes \(help)") }
        return try InputTensor(input, name: name, available: binary.count)
    }

    /// The outputs the request asks for, in its order, each mapped to `O` by `kind` (nil: not an output
    /// of this model, which `unknown` describes); none asked: `defaults`, in the request's binary mode.
    /// `classification` says whether an output may take Triton's classification parameter.
    func requestedOutputs<O: Sendable>(
        kind: (String) -> O?, defaults: [O], unknown: String, classification: (O) -> Bool
    ) throws -> [RequestedOutput<O>] {
        guard let requested = root["outputs"] else {
            return defaults.map { RequestedOutput(kind: $0, binary: binaryOutputs, classification: nil) }
        }
        guard let list = requested.array else { throw ProtocolError.bad("'outputs' must be an array") }
        return try list.map { o in
            guard let name = o["name"]?.string else { throw ProtocolError.bad("an output has no 'name'") }
            guard let k = kind(name) else { throw ProtocolError.bad("unknown output '\(name)'; \(unknown)") }
            let p = o["parameters"]
            var isBinary = binaryOutputs
            if let b = p?["binary_data"] {
                guard let flag = b.bool else { throw ProtocolError.bad("'binary_data' must be a boolean") }
                isBinary = flag
            }
            var top: Int?
            if let c = p?["classification"] {
                guard classification(k) else { throw ProtocolError.bad("output '\(name)' takes no 'classification'") }
                guard let n = c.integer, n >= 1 else { throw ProtocolError.bad("'classification' must be a positive integer") }
                top = n
            }
            return RequestedOutput(kind: k, binary: isBinary, classification: top)
        }
    }
}

/// An output the client asked for.
struct RequestedOutput<Kind: Sendable>: Sendable {
    let kind: Kind
    let binary: Bool
    /// Triton's classification extension: the top-k "score:index:label" strings instead of the values.
    let classification: Int?
}

/// A budget from a request's JSON number or query string, as a 400 that names `compute_budget` when
/// `ComputeBudget` refuses it.
func parseBudget(_ value: Double) throws -> ComputeBudget {
    do {
        return try ComputeBudget(value)
    } catch {
        throw ProtocolError.bad("'compute_budget' must be in (0, 1], got \(value)")
    }
}

/// A curl route's budget: its `compute_budget` query parameter, else `defaultBudget`; and whether the model's
/// adaptive budget may lower it (no parameter and `adaptiveBudget`, or `compute_budget=adaptive`).
func queryBudget(
    _ request: any HTTPRequest, default defaultBudget: ComputeBudget?, adaptive adaptiveBudget: Bool = false
) throws -> (budget: ComputeBudget?, adaptive: Bool) {
    guard let text = request.query("compute_budget") else { return (defaultBudget, adaptiveBudget) }
    if text == "adaptive" {
        try requireAdaptive(adaptiveBudget)
        return (defaultBudget, true)
    }
    guard let value = Double(text) else { throw ProtocolError.bad("'compute_budget' must be a number in (0, 1], or \"adaptive\"") }
    return (try parseBudget(value), false)
}

/// An answer's budget parameters: `compute_budget`, the budget its learners ran under (none: the gates alone), and
/// for a request the adaptive budget served, `adaptive_budget: true`.
func budgetParameters(_ budget: ComputeBudget?, adaptive: Bool) -> [(String, JSON)] {
    (budget.map { [("compute_budget", JSON.number($0.value))] } ?? []) + (adaptive ? [("adaptive_budget", .bool(true))] : [])
}

/// `compute_budget: "adaptive"` needs a model whose config turns the adaptive budget on.
private func requireAdaptive(_ on: Bool) throws {
    guard on else {
        throw ProtocolError.bad(
            "'compute_budget' is \"adaptive\", but this model has no adaptive budget (its config sets adaptive_budget "
                + "and latency_target_ms)")
    }
}

/// A curl route's on-off query parameter: `1` or `true` on, `0` or `false` (or absent) off; else 400.
func queryFlag(_ request: any HTTPRequest, _ name: String) throws -> Bool {
    switch request.query(name) {
    case nil, "0", "false": return false
    case "1", "true", "": return true
    case let other?: throw ProtocolError.bad("'\(name)' must be 1 or 0 (true or false), got '\(other)'")
    }
}

/// A request's batch dimension must be 1...max_batch_size (Triton's rule and message).
func checkBatch(_ count: Int, _ maxBatchSize: Int, items: String) throws {
    guard count >= 1 else { throw ProtocolError.bad("the input holds no \(items) (batch dimension 0)") }
    guard count <= maxBatchSize else {
        throw ProtocolError.bad("inference request batch-size must be <= \(maxBatchSize) for this model, got \(count)")
    }
}

/// One input as the request declares it: its shape, datatype, and where its data is (`data`, or
/// `binary_data_size` bytes of the binary tail).
struct InputTensor {
    let json: JSONView
    let name: String
    let shape: [Int]
    let datatype: String
    let binarySize: Int?

    /// Reads the declaration of `input`, named `name` (which the caller has checked); `available` is
    /// the binary bytes left in the body.
    init(_ input: JSONView, name: String, available: Int) throws {
        guard let shapeNode = input["shape"]?.array else { throw ProtocolError.bad("input '\(name)' has no 'shape' array") }
        shape = try shapeNode.map { v -> Int in
            guard let d = v.integer, d >= 0 else { throw ProtocolError.bad("input shape must hold non-negative integers") }
            return d
        }
        guard let datatype = input["datatype"]?.string else { throw ProtocolError.bad("input '\(name)' has no 'datatype'") }
        var binarySize: Int?
        if let p = input["parameters"], let size = p["binary_data_size"] {
            guard let n = size.integer, n >= 0 else { throw ProtocolError.bad("'binary_data_size' must be a non-negative integer") }
            guard n <= available else {
                throw ProtocolError.bad("input '\(name)' declares \(n) binary bytes but the body holds \(available)")
            }
            binarySize = n
        }
        guard (input["data"] != nil) != (binarySize != nil) else {
            throw ProtocolError.bad("input '\(name)' needs exactly one of 'data' and parameters.binary_data_size")
        }
        self.json = input
        self.name = name
        self.datatype = datatype
        self.binarySize = binarySize
    }

    /// The FP32 values, `elements` of them (the shape's product, which the caller has bounded), taken
    /// from `data` or off the front of `binary`; NaN and infinities are refused.
    func floats(elements: Int, binary: inout ArraySlice<UInt8>) throws -> [Float] {
        var values: [Float]
        if let binarySize {
            guard binarySize == elements * 4 else {
                throw ProtocolError.bad("input '\(name)': \(binarySize) binary bytes for \(elements) FP32 values")
            }
            values = [Float](repeating: 0, count: elements)
            let chunk = binary.prefix(binarySize)
            values.withUnsafeMutableBytes { dst in chunk.withUnsafeBytes { src in dst.copyMemory(from: src) } }
            for i in values.indices { values[i] = Float(bitPattern: UInt32(littleEndian: values[i].bitPattern)) }
            binary = binary.dropFirst(binarySize)
        } else {
            values = []
            values.reserveCapacity(elements)
            do { try json["data"]!.flattenNumbers(into: &values) } catch let e as JSONError { throw ProtocolError.bad(e.description) }
            guard values.count == elements else {
                throw ProtocolError.bad("input '\(name)' has \(values.count) values for shape \(shape) (\(elements) expected)")
            }
        }
        guard values.allSatisfy({ $0.isFinite }) else { throw ProtocolError.bad("input '\(name)' holds NaN or infinite values") }
        return values
    }

    /// The BYTES elements of an input of shape [n] (or [n, 1]): n and each element's bytes, from `data`
    /// or off the front of `binary`. `what` names the elements for messages ("encoded images"); the
    /// batch dimension is checked before any element is read.
    func byteElements(
        what: String, items: String, maxBatchSize: Int, binary: inout ArraySlice<UInt8>
    ) throws -> [[UInt8]] {
        guard shape.count == 1 || (shape.count == 2 && shape[1] == 1) else {
            throw ProtocolError.bad("BYTES input '\(name)' must have shape [n] (n \(what)), got \(shape)")
        }
        let count = shape[0]
        try checkBatch(count, maxBatchSize, items: items)
        var encoded: [[UInt8]] = []
        if let binarySize {
            encoded = try splitBytesElements(binary.prefix(binarySize))
            binary = binary.dropFirst(binarySize)
        } else {
            do { try json["data"]!.flattenStrings(into: &encoded) } catch let e as JSONError { throw ProtocolError.bad(e.description) }
        }
        guard encoded.count == count else {
            throw ProtocolError.bad("BYTES input '\(name)' has \(encoded.count) elements for shape \(shape)")
        }
        return encoded
    }
}

/// Triton's BYTES binary layout: each element is a 4-byte little-endian length and its bytes.
func splitBytesElements(_ data: ArraySlice<UInt8>) throws -> [[UInt8]] {
    var out: [[UInt8]] = []
    var i = data.startIndex
    while i < data.endIndex {
        guard data.endIndex - i >= 4 else { throw ProtocolError.bad("BYTES binary data is truncated") }
        let n = Int(data[i]) | Int(data[i + 1]) << 8 | Int(data[i + 2]) << 16 | Int(data[i + 3]) << 24
        i += 4
        guard n <= data.endIndex - i else { throw ProtocolError.bad("BYTES element of \(n) bytes overruns the data") }
        out.append(Array(data[i..<i + n]))
        i += n
    }
    return out
}

/// Triton's BYTES binary layout for strings.
func bytesElements(_ strings: [String]) -> [UInt8] {
    var out: [UInt8] = []
    for s in strings {
        let u = Array(s.utf8)
        withUnsafeBytes(of: UInt32(u.count).littleEndian) { out.append(contentsOf: $0) }
        out += u
    }
    return out
}

// MARK: - Responses

/// One output tensor of an infer response: its name, datatype and shape, and its values both as JSON
/// and as the binary-data extension's bytes; `binary` says which one is sent.
struct EncodedOutput {
    var name: String
    var datatype: String
    var shape: [Int]
    var values: JSON
    var bytes: [UInt8]
    var binary: Bool

    /// A BYTES output of strings.
    init(name: String, shape: [Int], strings: [String], binary: Bool) {
        self.init(
            name: name, datatype: "BYTES", shape: shape, values: .array(strings.map { .string($0) }),
            bytes: bytesElements(strings), binary: binary)
    }

    init(name: String, datatype: String, shape: [Int], values: JSON, bytes: [UInt8], binary: Bool) {
        self.name = name
        self.datatype = datatype
        self.shape = shape
        self.values = values
        self.bytes = bytes
        self.binary = binary
    }
}

/// An infer response: the model's name and version, the request's id, `parameters`, then `outputs`;
/// JSON alone, or JSON followed by the binary outputs.
func inferResponse(model: String, id: String?, parameters: [(String, JSON)], outputs: [EncodedOutput]) -> HTTPResponse {
    var fields: [(String, JSON)] = [("model_name", .string(model)), ("model_version", .string("1"))]
    if let id { fields.append(("id", .string(id))) }
    fields.append(("parameters", .object(parameters)))
    var blobs: [[UInt8]] = []
    var entries: [JSON] = []
    for output in outputs {
        var entry: [(String, JSON)] = [
            ("name", .string(output.name)), ("datatype", .string(output.datatype)),
            ("shape", .array(output.shape.map { .integer($0) })),
        ]
        if output.binary {
            entry.append(("parameters", .object([("binary_data_size", .integer(output.bytes.count))])))
            blobs.append(output.bytes)
        } else {
            entry.append(("data", output.values))
        }
        entries.append(.object(entry))
    }
    let header = JSON.object(fields + [("outputs", .array(entries))]).bytes
    if blobs.isEmpty { return jsonResponse(200, header) }
    return HTTPResponse(
        status: 200,
        headers: [("Content-Type", "application/octet-stream"), ("Inference-Header-Content-Length", "\(header.count)")],
        body: header + blobs.joined())
}

/// A JSON answer.
func jsonResponse(_ status: Int, _ body: [UInt8]) -> HTTPResponse {
    HTTPResponse(status: status, headers: [("Content-Type", "application/json")], body: body)
}

/// `{"error": message}` with the status; 503s that are worth retrying say when.
func errorResponse(_ status: Int, _ message: String, retryAfter: Bool = false) -> HTTPResponse {
    var r = jsonResponse(status, JSON.object([("error", .string(message))]).bytes)
    if retryAfter { r.headers.append(("Retry-After", "1")) }
    return r
}

// MARK: - Model metadata and configuration

/// One input or output of a model, as its metadata and its Triton configuration describe it.
struct TensorSpec {
    let name: String
    /// The protocol's datatype: FP32, INT32, BYTES.
    let datatype: String
    /// Without the batch dimension; -1 for a variable one.
    let dims: [Int]
    /// Triton's `optional`: a request may leave it out (a model that takes one of several inputs).
    var optional = false

    /// Triton's `data_type` of the datatype.
    var tritonType: String {
        switch datatype {
        case "BYTES": return "TYPE_STRING"
        default: return "TYPE_\(datatype)"
        }
    }
}

/// The protocol's model metadata, with the precision the model runs in under `parameters`.
func modelMetadata(name: String, precision: Precision, inputs: [TensorSpec], outputs: [TensorSpec]) -> JSON {
    func tensor(_ t: TensorSpec) -> JSON {
        .object([("name", .string(t.name)), ("datatype", .string(t.datatype)), ("shape", .array(([-1] + t.dims).map { .integer($0) }))])
    }
    return .object([
        ("name", .string(name)), ("versions", .array([.string("1")])), ("platform", .string("acm-serve")),
        ("inputs", .array(inputs.map(tensor))), ("outputs", .array(outputs.map(tensor))),
        ("parameters", .object([("precision", .string(precision.rawValue))])),
    ])
}

/// Triton's model configuration, which perf_analyzer reads, with the precision the model runs in as a
/// Triton model parameter.
func tritonConfig(
    name: String, entry: ServerConfig.ModelEntry, precision: Precision, inputs: [TensorSpec], outputs: [TensorSpec]
) -> JSON {
    func tensor(_ t: TensorSpec, input: Bool) -> JSON {
        var fields: [(String, JSON)] = [("name", .string(t.name)), ("data_type", .string(t.tritonType))]
        if input && t.datatype != "BYTES" { fields.append(("format", .string("FORMAT_NONE"))) }
        // a per-item scalar (a string) is [1] to Triton, which takes no empty dims
        fields.append(("dims", .array((t.dims.isEmpty ? [1] : t.dims).map { .integer($0) })))
        if t.optional { fields.append(("optional", .bool(true))) }
        return .object(fields)
    }
    return .object([
        ("name", .string(name)), ("platform", .string("acm-serve")), ("backend", .string("acm")),
        ("version_policy", .object([("latest", .object([("num_versions", .integer(1))]))])),
        ("max_batch_size", .integer(entry.maxBatchSize)),
        ("input", .array(inputs.map { tensor($0, input: true) })),
        ("output", .array(outputs.map { tensor($0, input: false) })),
        ("dynamic_batching", .object([
            ("max_queue_delay_microseconds", .integer(entry.maxQueueDelayMicroseconds)),
            ("default_queue_policy", .object([("max_queue_size", .integer(entry.maxQueueSize))])),
        ])),
        ("parameters", .object([("precision", .object([("string_value", .string(precision.rawValue))]))])),
    ])
}
