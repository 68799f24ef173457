import ACMCore
import ACMServing
import ACMWhisper

/// A speech recogniser over HTTP (docs/http-api.md, "Speech models"): one input, `log_mel` (FP32
/// [n, mels, 3000]) or `audio` (BYTES [n], audio files); outputs `text` (BYTES [n]) and `tokens` (INT32
/// [n, L], padded with -1); the curl route `transcribe`. Audio is decoded while parsing, on the HTTP
/// thread, so that a bad file is a 400 before anything is queued.
final class SpeechEndpoint: Endpoint, @unchecked Sendable {
    static let curlRoute = "transcribe"
    static let curlBody = "audio"
    static let kindName = "a speech model"
    static let logMel = "log_mel", audio = "audio", text = "text", tokens = "tokens"
    /// The padding of the `tokens` output's shorter rows.
    static let tokenPadding: Int32 = -1

    let name: String
    let entry: ServerConfig.ModelEntry
    let model: WhisperModel
    var precision: Precision { model.precision }
    let runner: BatchRunner<SpeechEngine>
    let metrics: ServingMetrics

    init(name: String, entry: ServerConfig.ModelEntry, model: WhisperModel, metrics: ServingMetrics) {
        self.name = name
        self.entry = entry
        self.model = model
        self.metrics = metrics
        runner = BatchRunner(
            name: name, engine: SpeechEngine(model: model), config: entry.batcher,
            observer: MetricsObserver(metrics: metrics, kind: .speech), adaptive: entry.adaptive)
        let whisper = model.whisper
        metrics.register(
            model: name, kind: .speech, acmPaths: whisper.acmPaths,
            choices: whisper.acms.map { $0.config.minChoice...$0.config.numLearners })
        metrics.registerDecoding(model: name, temperatures: model.config.generation.temperatureFallback)
    }

    /// Whether the model has ACMs, so that a budget applies.
    var hasACMs: Bool { !model.whisper.acms.isEmpty }

    private var melShape: [Int] { [model.config.whisper.numMelBins, model.config.whisper.inputFrames] }

    var inputs: [TensorSpec] {
        [
            TensorSpec(name: Self.logMel, datatype: "FP32", dims: melShape, optional: true),
            TensorSpec(name: Self.audio, datatype: "BYTES", dims: [], optional: true),
        ]
    }

    var outputs: [TensorSpec] {
        [TensorSpec(name: Self.text, datatype: "BYTES", dims: []), TensorSpec(name: Self.tokens, datatype: "INT32", dims: [-1])]
    }

    enum Output { case text, tokens }

    func parseInfer(_ envelope: inout RequestEnvelope) throws -> Submission<SpeechEngine> {
        let dims = melShape.map(String.init).joined(separator: ", ")
        let tensor = try envelope.singleInput(
            named: [Self.logMel, Self.audio],
            help: "'\(Self.logMel)' (FP32 [n, \(dims)]) or '\(Self.audio)' (BYTES [n], audio files)")
        let name = tensor.name, shape = tensor.shape
        var utterances: [[Tensor]] = []
        if name == Self.logMel {
            guard tensor.datatype == "FP32" else {
                throw ProtocolError.bad("input '\(name)' has datatype \(tensor.datatype); it must be FP32")
            }
            let count: Int
            if shape == melShape {
                count = 1
            } else if shape.count == 3, Array(shape.dropFirst()) == melShape {
                count = shape[0]
            } else {
                throw ProtocolError.bad("input '\(name)' has shape \(shape); the model takes [n, \(dims)] (or [\(dims)] for one)")
            }
            try checkBatch(count, entry.maxBatchSize, items: "utterances")  // before any allocation that uses it
            let per = melShape.reduce(1, *)
            let values = try tensor.floats(elements: count * per, binary: &envelope.binary)
            values.withUnsafeBufferPointer { v in
                for b in 0..<count {
                    let mel = Tensor(shape: melShape)
                    mel.data.update(from: v.baseAddress! + b * per, count: per)
                    utterances.append([mel])
                }
            }
        } else {
            guard tensor.datatype == "BYTES" else {
                throw ProtocolError.bad("input '\(name)' has datatype \(tensor.datatype); it must be BYTES (one audio file per element)")
            }
            let files = try tensor.byteElements(
                what: "audio files", items: "utterances", maxBatchSize: entry.maxBatchSize, binary: &envelope.binary)
            utterances = try files.enumerated().map { i, bytes in try decode(bytes, index: i) }
        }
        let outputs = try envelope.requestedOutputs(
            kind: { (name: String) -> Output? in name == Self.text ? .text : (name == Self.tokens ? .tokens : nil) },
            defaults: [.text, .tokens], unknown: "this model has 'text' and 'tokens'", classification: { _ in false })
        let (modelName, id, budget, applied, adaptive) = (self.name, envelope.id, envelope.budget, hasACMs, envelope.adaptive)
        return Submission(
            input: utterances, count: utterances.count, budget: budget, adaptive: adaptive,
            timeoutNanoseconds: envelope.timeoutNanoseconds, id: id
        ) { result in
            Self.response(
                model: modelName, id: id,
                parameters: Self.parameters(
                    fraction: Self.fraction(result.output), temperature: Self.temperature(result.output),
                    applied: applied, budget: result.loweredBudget ?? budget, adaptive: adaptive),
                outputs: outputs, transcriptions: result.output)
        }
    }

    func parseCurl(_ request: any HTTPRequest) throws -> Submission<SpeechEngine> {
        let (budget, adaptive) = try queryBudget(request, default: entry.defaultBudget, adaptive: entry.adaptive != nil)
        guard !request.body.isEmpty else { throw ProtocolError.bad("the body must be an audio file (WAV, FLAC, ...)") }
        let windows = try decode(request.body, index: 0)
        let (modelName, applied) = (name, hasACMs)
        return Submission(input: [windows], count: 1, budget: budget, adaptive: adaptive) { result in
            let transcription = result.output[0]
            let fields: [(String, JSON)] =
                [
                    ("model_name", .string(modelName)), ("text", .string(transcription.text)),
                    ("tokens", .array(transcription.tokens.map { .integer($0) })),
                ]
                + Self.parameters(
                    fraction: transcription.computeFraction, temperature: transcription.temperature, applied: applied,
                    budget: result.loweredBudget ?? budget, adaptive: adaptive)
            return jsonResponse(200, JSON.object(fields).bytes)
        }
    }

    func recordSuccess(_ result: RunResult<[Transcription]>, seconds: Double, budget: ComputeBudget?) -> Double? {
        let fraction = Self.fraction(result.output)
        for t in result.output { metrics.decoded(model: name, temperature: t.temperature) }
        metrics.success(model: name, seconds: seconds, fraction: fraction, budget: budget?.value)
        return fraction
    }

    /// A request's compute fraction: its utterances' mean.
    static func fraction(_ transcriptions: [Transcription]) -> Double {
        transcriptions.reduce(0) { $0 + $1.computeFraction } / Double(max(transcriptions.count, 1))
    }

    /// One audio file to its windows' log-mels; a file that cannot be used is a 400 that says why.
    private func decode(_ bytes: [UInt8], index: Int) throws -> [Tensor] {
        do {
            return try model.logMelWindows(audio: bytes, maximumSeconds: entry.maxAudioSeconds)
        } catch let error as WhisperInputError {
            throw ProtocolError.bad("audio \(index): \(error)")
        }
    }

    /// A request's decoding temperature: the highest any of its windows was decoded at (0: greedy for all).
    static func temperature(_ transcriptions: [Transcription]) -> Double {
        transcriptions.map(\.temperature).max() ?? 0
    }

    /// The parameters of every speech answer: the realized compute fraction, the temperature the fallback
    /// reached (docs/whisper.md#decoding), whether a budget can apply (the model has ACMs; a dense model
    /// runs whole whatever the budget), and the budget asked for.
    static func parameters(
        fraction: Double, temperature: Double, applied: Bool, budget: ComputeBudget?, adaptive: Bool = false
    ) -> [(String, JSON)] {
        [
            ("compute_fraction", .number(fraction)), ("temperature", .number(temperature)),
            ("compute_budget_applied", .bool(applied)),
        ] + budgetParameters(budget, adaptive: adaptive)
    }

    /// The infer response: the outputs asked for.
    static func response(
        model: String, id: String?, parameters: [(String, JSON)], outputs: [RequestedOutput<Output>],
        transcriptions: [Transcription]
    ) -> HTTPResponse {
        let n = transcriptions.count
        let encoded = outputs.map { output -> EncodedOutput in
            switch output.kind {
            case .text:
                return EncodedOutput(name: Self.text, shape: [n], strings: transcriptions.map(\.text), binary: output.binary)
            case .tokens:
                // [n, L]: L is the longest transcription's length, and shorter rows are padded
                let length = transcriptions.map(\.tokens.count).max() ?? 0
                var ids: [Int32] = []
                ids.reserveCapacity(n * length)
                for t in transcriptions {
                    ids += t.tokens.map { Int32($0) }
                    ids += repeatElement(tokenPadding, count: length - t.tokens.count)
                }
                return EncodedOutput(
                    name: Self.tokens, datatype: "INT32", shape: [n, length], values: .array(ids.map { .integer(Int($0)) }),
                    bytes: ids.withUnsafeBytes { [UInt8]($0) },  // little-endian hosts only (x86-64, arm64)
                    binary: output.binary)
            }
        }
        return inferResponse(model: model, id: id, parameters: parameters, outputs: encoded)
    }
}
