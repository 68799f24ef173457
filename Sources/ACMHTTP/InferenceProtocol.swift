import ACMCore
import ACMModels
import ACMServing
import Foundation

// The Open Inference Protocol's infer request and response (docs/http-api.md), with Triton's
// binary_tensor_data and classification extensions. Parsing validates everything before a request
// reaches the model's queue: whatever gets there can run.

/// A request error, answered with `status` and `{"error": message}`.
struct ProtocolError: Error {
    let status: Int
    let message: String
    let reason: FailureReason

    static func bad(_ message: String) -> ProtocolError { ProtocolError(status: 400, message: message, reason: .badRequest) }
    static func notFound(_ message: String) -> ProtocolError { ProtocolError(status: 404, message: message, reason: .notFound) }
}

/// An output the client asked for.
struct RequestedOutput {
    enum Kind { case logits, labels }
    let kind: Kind
    let binary: Bool
    /// Triton's classification extension: top-k "score:index:label" strings instead of logits.
    let classification: Int?
}

/// A validated infer request.
struct InferRequest {
    let id: String?
    /// [count, C, H, W], preprocessed.
    let images: [Float]
    let count: Int
    let budget: Double?
    let timeoutNanoseconds: UInt64?
    let outputs: [RequestedOutput]
}

/// Names of the model's input and outputs.
enum TensorName {
    static let input = "input"
    static let logits = "logits"
    static let labels = "labels"
}

/// The top labels returned per image by the `labels` output and the classify route.
let labelCount = 5

/// What every infer request has, whatever the model: the JSON header, `id`, the parameters, and the
/// binary tensor data after the header.
struct RequestEnvelope {
    let root: JSONView
    /// The body after the JSON header; each binary input takes its bytes off the front.
    var binary: ArraySlice<UInt8>
    let id: String?
    /// `compute_budget`, or the model's `default_budget`.
    let budget: Double?
    let timeoutNanoseconds: UInt64?
    /// `binary_data_output`: the outputs' default.
    let binaryOutputs: Bool

    /// Parses a request body's JSON header and its parameters.
    static func parse(body: [UInt8], headerLength: String?, defaultBudget: Double?) throws -> RequestEnvelope {
        let jsonLength: Int
        if let headerLength {
            guard let n = Int(headerLength), n >= 0, n <= body.count else {
                throw ProtocolError.bad("Inference-Header-Content-Length '\(headerLength)' does not fit the \(body.count)-byte body")
            }
            jsonLength = n
        } else {
            jsonLength = body.count
        }
        let root: JSONView
        do {
            root = try body.withUnsafeBytes { try JSONDocument.parse(UnsafeRawBufferPointer(rebasing: $0[0..<jsonLength])) }
        } catch let error as JSONError {
            throw ProtocolError.bad(error.description)
        }
        guard root.isObject else { throw ProtocolError.bad("the request must be a JSON object") }

        // id and parameters
        var id: String?
        if let v = root["id"] {
            guard let s = v.string else { throw ProtocolError.bad("'id' must be a string") }
            id = s
        }
        var budget = defaultBudget
        var timeout: UInt64?
        var binaryOutputs = false
        if let params = root["parameters"] {
            guard params.isObject else { throw ProtocolError.bad("'parameters' must be an object") }
            if let b = params["compute_budget"] {
                budget = try parseBudget(b.number, text: nil)
            }
            if let t = params["timeout"] {
                guard let us = t.integer, us >= 0 else { throw ProtocolError.bad("'timeout' must be a non-negative integer (microseconds)") }
                timeout = us > 0 ? UInt64(us) * 1000 : nil
            }
            if let b = params["binary_data_output"] {
                guard let flag = b.bool else { throw ProtocolError.bad("'binary_data_output' must be a boolean") }
                binaryOutputs = flag
            }
        }
        return RequestEnvelope(
            root: root, binary: body[jsonLength...], id: id, budget: budget, timeoutNanoseconds: timeout,
            binaryOutputs: binaryOutputs)
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
        let hasData = input["data"] != nil
        guard hasData != (binarySize != nil) else {
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

    /// The BYTES elements, `count` of them, from `data` or off the front of `binary`.
    func byteElements(count: Int, binary: inout ArraySlice<UInt8>) throws -> [[UInt8]] {
        var encoded: [[UInt8]] = []
        if let binarySize {
            encoded = try InferRequest.splitBytesElements(binary.prefix(binarySize), expected: count)
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

extension InferRequest {
    /// Parses a request body: the JSON header, then any binary tensor data.
    static func parse(
        body: [UInt8], headerLength: String?, model: Model, preprocessor: ImagePreprocessor?, maxBatchSize: Int,
        defaultBudget: Double?
    ) throws -> InferRequest {
        var envelope = try RequestEnvelope.parse(body: body, headerLength: headerLength, defaultBudget: defaultBudget)
        let root = envelope.root

        // inputs
        guard let inputs = root["inputs"]?.array else { throw ProtocolError.bad("'inputs' must be an array") }
        guard inputs.count == 1 else {
            throw ProtocolError.bad("expected 1 input named '\(TensorName.input)', got \(inputs.count)")
        }
        let input = inputs[0]
        guard let name = input["name"]?.string else { throw ProtocolError.bad("input has no 'name'") }
        guard name == TensorName.input else {
            throw ProtocolError.bad("unexpected input '\(name)': the model's input is '\(TensorName.input)'")
        }
        let tensor = try InputTensor(input, name: name, available: envelope.binary.count)
        let shape = tensor.shape

        let cfg = model.vit.config
        let imageShape = [cfg.numChannels, cfg.imageSize, cfg.imageSize]
        let perImage = imageShape.reduce(1, *)
        var images: [Float]
        let count: Int
        switch tensor.datatype {
        case "FP32":
            guard shape.count == 4, Array(shape.dropFirst()) == imageShape else {
                throw ProtocolError.bad("input '\(name)' has shape \(shape); the model takes [n, \(imageShape.map(String.init).joined(separator: ", "))]")
            }
            count = shape[0]
            try checkBatch(count, maxBatchSize)  // before any arithmetic or allocation that uses it
            images = try tensor.floats(elements: count * perImage, binary: &envelope.binary)
        case "BYTES":
            guard (shape.count == 1 || (shape.count == 2 && shape[1] == 1)), shape[0] >= 0 else {
                throw ProtocolError.bad("BYTES input '\(name)' must have shape [n] (n encoded images), got \(shape)")
            }
            count = shape[0]
            try checkBatch(count, maxBatchSize)
            let encoded = try tensor.byteElements(count: count, binary: &envelope.binary)
            images = []
            images.reserveCapacity(count * perImage)
            for (i, bytes) in encoded.enumerated() {
                images += try decodeImage(bytes, preprocessor: preprocessor, index: i)
            }
        default:
            throw ProtocolError.bad("input '\(name)' has datatype \(tensor.datatype); the model takes FP32 (or BYTES images)")
        }
        let binaryOutputs = envelope.binaryOutputs

        // outputs
        var outputs: [RequestedOutput] = []
        let hasLabels = model.config.labels != nil
        if let requested = root["outputs"] {
            guard let list = requested.array else { throw ProtocolError.bad("'outputs' must be an array") }
            for o in list {
                guard let oname = o["name"]?.string else { throw ProtocolError.bad("an output has no 'name'") }
                let p = o["parameters"]
                var isBinary = binaryOutputs
                if let b = p?["binary_data"] {
                    guard let flag = b.bool else { throw ProtocolError.bad("'binary_data' must be a boolean") }
                    isBinary = flag
                }
                var classification: Int?
                if let c = p?["classification"] {
                    guard let k = c.integer, k >= 1 else { throw ProtocolError.bad("'classification' must be a positive integer") }
                    classification = min(k, cfg.numClasses)
                }
                switch oname {
                case TensorName.logits:
                    outputs.append(RequestedOutput(kind: .logits, binary: isBinary, classification: classification))
                case TensorName.labels where hasLabels:
                    outputs.append(RequestedOutput(kind: .labels, binary: isBinary, classification: nil))
                default:
                    throw ProtocolError.bad("unknown output '\(oname)'; this model has \(hasLabels ? "'logits' and 'labels'" : "'logits'")")
                }
            }
        } else {
            outputs.append(RequestedOutput(kind: .logits, binary: binaryOutputs, classification: nil))
            if hasLabels { outputs.append(RequestedOutput(kind: .labels, binary: binaryOutputs, classification: nil)) }
        }
        return InferRequest(
            id: envelope.id, images: images, count: count, budget: envelope.budget,
            timeoutNanoseconds: envelope.timeoutNanoseconds, outputs: outputs)
    }

    /// A request's image count must be 1...max_batch_size (Triton's rule and message).
    static func checkBatch(_ count: Int, _ maxBatchSize: Int, items: String = "images") throws {
        guard count >= 1 else { throw ProtocolError.bad("the input holds no \(items) (batch dimension 0)") }
        guard count <= maxBatchSize else {
            throw ProtocolError.bad("inference request batch-size must be <= \(maxBatchSize) for this model, got \(count)")
        }
    }

    /// Triton's BYTES binary layout: each element is a 4-byte little-endian length and its bytes.
    static func splitBytesElements(_ data: ArraySlice<UInt8>, expected: Int) throws -> [[UInt8]] {
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

    /// One encoded image to the model's input, as its config's preprocessing says.
    static func decodeImage(_ bytes: [UInt8], preprocessor: ImagePreprocessor?, index: Int) throws -> [Float] {
        guard let preprocessor else {
            throw ProtocolError.bad("this model takes no encoded images: its config has no preprocessing")
        }
        do {
            return try preprocessor.preprocess(bytes)
        } catch {
            throw ProtocolError.bad("image \(index): \(error)")
        }
    }
}

/// A budget from a JSON number or a query string; absent stays absent.
func parseBudget(_ number: Double?, text: String?) throws -> Double {
    let value = number ?? text.flatMap(Double.init)
    guard let value else {
        throw ProtocolError.bad("'compute_budget' must be a number in (0, 1]")
    }
    guard value > 0, value <= 1 else {
        throw ProtocolError.bad("'compute_budget' must be in (0, 1], got \(value)")
    }
    return value
}

extension ClassifierOutput {
    /// Indices of the top `k` classes of image `b`, best first.
    func top(_ k: Int, image b: Int) -> [Int] {
        let row = logits[(b * classes)..<((b + 1) * classes)]
        return Array(row.indices.sorted { row[$0] > row[$1] || (row[$0] == row[$1] && $0 < $1) }.prefix(k)).map { $0 - b * classes }
    }

    /// Softmax probabilities of image `b`.
    func probabilities(image b: Int) -> [Double] {
        let row = logits[(b * classes)..<((b + 1) * classes)].map(Double.init)
        let m = row.max() ?? 0
        let e = row.map { Foundation.exp($0 - m) }
        let s = e.reduce(0, +)
        return e.map { $0 / s }
    }
}

/// The response to an infer request: JSON, then binary outputs when asked for.
func inferResponse(model name: String, request: InferRequest, result: InferenceResult, labels: [String]?) -> HTTPResponse {
    var fields: [(String, JSON)] = [("model_name", .string(name)), ("model_version", .string("1"))]
    if let id = request.id { fields.append(("id", .string(id))) }
    let fraction = result.computeFraction.reduce(0, +) / Double(max(result.computeFraction.count, 1))
    var params: [(String, JSON)] = [("compute_fraction", .number(fraction))]
    if let b = request.budget { params.append(("compute_budget", .number(b))) }
    fields.append(("parameters", .object(params)))

    var outputs: [EncodedOutput] = []
    let n = request.count
    for output in request.outputs {
        var entry: [(String, JSON)]
        var payload: JSON
        var blob: [UInt8]
        switch (output.kind, output.classification) {
        case (.logits, nil):
            entry = [("name", .string(TensorName.logits)), ("datatype", .string("FP32")), ("shape", .array([.integer(n), .integer(result.classes)]))]
            payload = .floats(result.logits)
            blob = result.logits.withUnsafeBytes { [UInt8]($0) }  // little-endian hosts only (x86-64, arm64)
        case let (.logits, k?):
            let strings = (0..<n).flatMap { b in
                result.output.top(k, image: b).map { c -> String in
                    let score = String(format: "%f", result.logits[b * result.classes + c])
                    return labels.map { "\(score):\(c):\($0[c])" } ?? "\(score):\(c)"
                }
            }
            entry = [("name", .string(TensorName.logits)), ("datatype", .string("BYTES")), ("shape", .array([.integer(n), .integer(k)]))]
            payload = .array(strings.map { .string($0) })
            blob = bytesElements(strings)
        case (.labels, _):
            let k = min(labelCount, result.classes)
            let strings = (0..<n).flatMap { b in result.output.top(k, image: b).map { labels?[$0] ?? "\($0)" } }
            entry = [("name", .string(TensorName.labels)), ("datatype", .string("BYTES")), ("shape", .array([.integer(n), .integer(k)]))]
            payload = .array(strings.map { .string($0) })
            blob = bytesElements(strings)
        }
        outputs.append(EncodedOutput(entry: entry, values: payload, bytes: blob, binary: output.binary))
    }
    return inferHTTPResponse(fields: fields, outputs: outputs)
}

/// One output tensor of an infer response: its name, datatype and shape, and its values both as JSON and
/// as the binary-data extension's bytes; `binary` says which one is sent.
struct EncodedOutput {
    var entry: [(String, JSON)]
    var values: JSON
    var bytes: [UInt8]
    var binary: Bool
}

/// An infer response: `fields`, then `outputs`; JSON alone, or JSON followed by the binary outputs.
func inferHTTPResponse(fields: [(String, JSON)], outputs: [EncodedOutput]) -> HTTPResponse {
    var blobs: [[UInt8]] = []
    var entries: [JSON] = []
    for output in outputs {
        var entry = output.entry
        if output.binary {
            entry.append(("parameters", .object([("binary_data_size", .integer(output.bytes.count))])))
            blobs.append(output.bytes)
        } else {
            entry.append(("data", output.values))
        }
        entries.append(.object(entry))
    }
    let header = JSON.object(fields + [("outputs", .array(entries))]).bytes
    if blobs.isEmpty {
        return HTTPResponse(status: 200, headers: [("Content-Type", "application/json")], body: header)
    }
    return HTTPResponse(
        status: 200,
        headers: [("Content-Type", "application/octet-stream"), ("Inference-Header-Content-Length", "\(header.count)")],
        body: header + blobs.joined())
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
