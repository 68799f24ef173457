import ACMCore
import ACMServing
import ACMWhisper

// The Open Inference Protocol for a speech model (docs/http-api.md, "Speech models"): one input,
// `log_mel` (FP32 [n, mels, 3000]) or `audio` (BYTES [n], audio files); outputs `text` (BYTES [n]) and
// `tokens` (INT32 [n, L], padded with -1). As for an image model, parsing validates everything, audio
// decoding and the log-mel included, before a request reaches the model's queue.

/// Names of a speech model's inputs and outputs.
enum SpeechTensorName {
    static let logMel = "log_mel"
    static let audio = "audio"
    static let text = "text"
    static let tokens = "tokens"
}

/// The padding of the `tokens` output's shorter rows.
let tokenPadding: Int32 = -1

/// An output of a speech request.
struct SpeechOutput {
    enum Kind { case text, tokens }
    let kind: Kind
    let binary: Bool
}

/// A validated infer request for a speech model.
struct SpeechRequest {
    let id: String?
    /// One log-mel spectrogram per utterance, [mels, 3000] each.
    let mels: [Tensor]
    /// Validated and echoed, not applied (`SpeechEngine`).
    let budget: Double?
    let timeoutNanoseconds: UInt64?
    let outputs: [SpeechOutput]

    /// What the inputs are, for messages.
    static func inputsHelp(_ shape: [Int]) -> String {
        "'\(SpeechTensorName.logMel)' (FP32 [n, \(shape.map(String.init).joined(separator: ", "))]) or '\(SpeechTensorName.audio)' (BYTES [n], audio files)"
    }

    /// Parses a request body: the JSON header, then any binary tensor data. Audio is decoded here, on
    /// the HTTP thread, so that a bad file is a 400 before anything is queued.
    static func parse(
        body: [UInt8], headerLength: String?, model: WhisperModel, maxBatchSize: Int, defaultBudget: Double?
    ) throws -> SpeechRequest {
        var envelope = try RequestEnvelope.parse(body: body, headerLength: headerLength, defaultBudget: defaultBudget)
        let root = envelope.root
        let melShape = [model.config.whisper.numMelBins, model.config.whisper.inputFrames]

        // inputs
        guard let inputs = root["inputs"]?.array else { throw ProtocolError.bad("'inputs' must be an array") }
        guard inputs.count == 1 else {
            let names = Set(inputs.compactMap { $0["name"]?.string })
            if names.isSuperset(of: [SpeechTensorName.logMel, SpeechTensorName.audio]) {
                throw ProtocolError.bad("give '\(SpeechTensorName.logMel)' or '\(SpeechTensorName.audio)', not both")
            }
            throw ProtocolError.bad("expected 1 input, \(inputsHelp(melShape)); got \(inputs.count)")
        }
        let input = inputs[0]
        guard let name = input["name"]?.string else { throw ProtocolError.bad("input has no 'name'") }
        guard name == SpeechTensorName.logMel || name == SpeechTensorName.audio else {
            throw ProtocolError.bad("unexpected input '\(name)': this speech model takes \(inputsHelp(melShape))")
        }
        let tensor = try InputTensor(input, name: name, available: envelope.binary.count)
        let shape = tensor.shape
        var mels: [Tensor] = []
        if name == SpeechTensorName.logMel {
            guard tensor.datatype == "FP32" else {
                throw ProtocolError.bad("input '\(name)' has datatype \(tensor.datatype); it must be FP32")
            }
            let count: Int
            if shape == melShape {
                count = 1
            } else if shape.count == 3, Array(shape.dropFirst()) == melShape {
                count = shape[0]
            } else {
                let dims = melShape.map(String.init).joined(separator: ", ")
                throw ProtocolError.bad("input '\(name)' has shape \(shape); the model takes [n, \(dims)] (or [\(dims)] for one)")
            }
            try InferRequest.checkBatch(count, maxBatchSize, items: "utterances")  // before any allocation that uses it
            let per = melShape.reduce(1, *)
            let values = try tensor.floats(elements: count * per, binary: &envelope.binary)
            values.withUnsafeBufferPointer { v in
                for b in 0..<count {
                    let mel = Tensor(shape: melShape)
                    mel.data.update(from: v.baseAddress! + b * per, count: per)
                    mels.append(mel)
                }
            }
        } else {
            guard tensor.datatype == "BYTES" else {
                throw ProtocolError.bad("input '\(name)' has datatype \(tensor.datatype); it must be BYTES (one audio file per element)")
            }
            guard shape.count == 1 || (shape.count == 2 && shape[1] == 1) else {
                throw ProtocolError.bad("BYTES input '\(name)' must have shape [n] (n audio files), got \(shape)")
            }
            let count = shape[0]
            try InferRequest.checkBatch(count, maxBatchSize, items: "utterances")
            for (i, bytes) in try tensor.byteElements(count: count, binary: &envelope.binary).enumerated() {
                mels.append(try decodeAudio(bytes, model: model, index: i))
            }
        }

        // outputs
        var outputs: [SpeechOutput] = []
        if let requested = root["outputs"] {
            guard let list = requested.array else { throw ProtocolError.bad("'outputs' must be an array") }
            for o in list {
                guard let oname = o["name"]?.string else { throw ProtocolError.bad("an output has no 'name'") }
                let p = o["parameters"]
                var isBinary = envelope.binaryOutputs
                if let b = p?["binary_data"] {
                    guard let flag = b.bool else { throw ProtocolError.bad("'binary_data' must be a boolean") }
                    isBinary = flag
                }
                if p?["classification"] != nil {
                    throw ProtocolError.bad("'classification' is for an image model's logits; this speech model's outputs are 'text' and 'tokens'")
                }
                switch oname {
                case SpeechTensorName.text: outputs.append(SpeechOutput(kind: .text, binary: isBinary))
                case SpeechTensorName.tokens: outputs.append(SpeechOutput(kind: .tokens, binary: isBinary))
                default: throw ProtocolError.bad("unknown output '\(oname)'; this model has 'text' and 'tokens'")
                }
            }
        } else {
            outputs = [
                SpeechOutput(kind: .text, binary: envelope.binaryOutputs),
                SpeechOutput(kind: .tokens, binary: envelope.binaryOutputs),
            ]
        }
        return SpeechRequest(
            id: envelope.id, mels: mels, budget: envelope.budget, timeoutNanoseconds: envelope.timeoutNanoseconds,
            outputs: outputs)
    }

    /// One audio file to the model's log-mel input; a file that cannot be used is a 400 that says why.
    static func decodeAudio(_ bytes: [UInt8], model: WhisperModel, index: Int) throws -> Tensor {
        do {
            return try model.logMel(audio: bytes)
        } catch let error as WhisperInputError {
            throw ProtocolError.bad("audio \(index): \(error)")
        }
    }
}

/// The response parameters of every speech answer: Whisper has no ACM layers yet, so the whole model
/// ran and a `compute_budget` was not applied.
func speechParameters(budget: Double?) -> [(String, JSON)] {
    var params: [(String, JSON)] = [("compute_fraction", .number(1.0)), ("compute_budget_applied", .bool(false))]
    if let budget { params.append(("compute_budget", .number(budget))) }
    return params
}

/// The response to a speech infer request: JSON, then binary outputs when asked for.
func speechResponse(model name: String, request: SpeechRequest, result: SpeechResult) -> HTTPResponse {
    var fields: [(String, JSON)] = [("model_name", .string(name)), ("model_version", .string("1"))]
    if let id = request.id { fields.append(("id", .string(id))) }
    fields.append(("parameters", .object(speechParameters(budget: request.budget))))

    let transcriptions = result.output
    let n = transcriptions.count
    var outputs: [EncodedOutput] = []
    for output in request.outputs {
        var entry: [(String, JSON)]
        let payload: JSON
        let blob: [UInt8]
        switch output.kind {
        case .text:
            let texts = transcriptions.map(\.text)
            entry = [("name", .string(SpeechTensorName.text)), ("datatype", .string("BYTES")), ("shape", .array([.integer(n)]))]
            payload = .array(texts.map { .string($0) })
            blob = bytesElements(texts)
        case .tokens:
            // [n, L]: L is the longest transcription's length, and shorter rows are padded
            let length = transcriptions.map(\.tokens.count).max() ?? 0
            var ids: [Int32] = []
            ids.reserveCapacity(n * length)
            for t in transcriptions {
                ids += t.tokens.map { Int32($0) }
                ids += repeatElement(tokenPadding, count: length - t.tokens.count)
            }
            entry = [
                ("name", .string(SpeechTensorName.tokens)), ("datatype", .string("INT32")),
                ("shape", .array([.integer(n), .integer(length)])),
            ]
            payload = .array(ids.map { .integer(Int($0)) })
            blob = ids.withUnsafeBytes { [UInt8]($0) }  // little-endian hosts only (x86-64, arm64)
        }
        outputs.append(EncodedOutput(entry: entry, values: payload, bytes: blob, binary: output.binary))
    }
    return inferHTTPResponse(fields: fields, outputs: outputs)
}

/// The answer of the curl route: `{"model_name", "text", "tokens", ...parameters}`.
func transcribeResponse(model name: String, budget: Double?, transcription: Transcription) -> HTTPResponse {
    let fields: [(String, JSON)] =
        [
            ("model_name", .string(name)), ("text", .string(transcription.text)),
            ("tokens", .array(transcription.tokens.map { .integer($0) })),
        ] + speechParameters(budget: budget)
    return HTTPResponse(status: 200, headers: [("Content-Type", "application/json")], body: JSON.object(fields).bytes)
}

/// Model metadata of a speech model: both inputs (a request gives one of them), both outputs.
func speechModelMetadata(name: String, model: WhisperModel) -> JSON {
    let mel = [model.config.whisper.numMelBins, model.config.whisper.inputFrames]
    func tensor(_ name: String, _ datatype: String, _ shape: [Int]) -> JSON {
        .object([("name", .string(name)), ("datatype", .string(datatype)), ("shape", .array(shape.map { .integer($0) }))])
    }
    return .object([
        ("name", .string(name)), ("versions", .array([.string("1")])), ("platform", .string("acm-serve")),
        ("inputs", .array([tensor(SpeechTensorName.logMel, "FP32", [-1] + mel), tensor(SpeechTensorName.audio, "BYTES", [-1])])),
        ("outputs", .array([tensor(SpeechTensorName.text, "BYTES", [-1]), tensor(SpeechTensorName.tokens, "INT32", [-1, -1])])),
    ])
}

/// Triton's model configuration of a speech model. Both inputs are `optional`: a request gives one.
func speechModelConfig(name: String, model: WhisperModel, entry: ServerConfig.ModelEntry) -> JSON {
    let mel = [model.config.whisper.numMelBins, model.config.whisper.inputFrames]
    func tensor(_ name: String, _ type: String, _ dims: [Int], optional: Bool = false) -> JSON {
        var fields: [(String, JSON)] = [
            ("name", .string(name)), ("data_type", .string(type)), ("dims", .array(dims.map { .integer($0) })),
        ]
        if optional { fields.append(("optional", .bool(true))) }
        return .object(fields)
    }
    return .object([
        ("name", .string(name)), ("platform", .string("acm-serve")), ("backend", .string("acm")),
        ("version_policy", .object([("latest", .object([("num_versions", .integer(1))]))])),
        ("max_batch_size", .integer(entry.maxBatchSize)),
        ("input", .array([
            tensor(SpeechTensorName.logMel, "TYPE_FP32", mel, optional: true),
            tensor(SpeechTensorName.audio, "TYPE_STRING", [1], optional: true),
        ])),
        ("output", .array([tensor(SpeechTensorName.text, "TYPE_STRING", [1]), tensor(SpeechTensorName.tokens, "TYPE_INT32", [-1])])),
        ("dynamic_batching", .object([
            ("max_queue_delay_microseconds", .integer(entry.maxQueueDelayMicroseconds)),
            ("default_queue_policy", .object([("max_queue_size", .integer(entry.maxQueueSize))])),
        ])),
    ])
}
