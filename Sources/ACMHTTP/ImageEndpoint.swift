import ACMCore
import ACMModels
import ACMServing
import Foundation

/// An image classifier over HTTP (docs/http-api.md): one input, `input` (FP32 [n, C, H, W], preprocessed,
/// or BYTES [n], encoded images); outputs `logits` (FP32 [n, classes], or Triton's classification strings)
/// and `labels` (BYTES [n, 5], when the model has labels), and on a model with ACMs, only when asked for by
/// name, `patch_learners` (FP32 [n, patches]: each patch's mean learner count); the curl route `classify`.
final class ImageEndpoint: Endpoint, @unchecked Sendable {
    static let curlRoute = "classify"
    static let curlBody = "an image"
    static let kindName = "an image model"
    static let input = "input", logits = "logits", labels = "labels", patchLearners = "patch_learners"
    /// The top labels returned per image by the `labels` output and the classify route.
    static let labelCount = 5

    let name: String
    let entry: ServerConfig.ModelEntry
    let model: Model
    var precision: Precision { model.precision }
    let runner: BatchRunner<ViTEngine>
    /// Built at load from the model's `preprocessing`, so that a bad one fails start-up; nil: the model
    /// takes no encoded images.
    let preprocessor: ImagePreprocessor?
    let metrics: ServingMetrics

    init(name: String, entry: ServerConfig.ModelEntry, model: Model, metrics: ServingMetrics) throws {
        self.name = name
        self.entry = entry
        self.model = model
        self.metrics = metrics
        preprocessor = try model.config.preprocessing.map {
            try ImagePreprocessor(config: $0, channels: model.vit.config.numChannels, imageSize: model.vit.config.imageSize)
        }
        runner = BatchRunner(
            name: name, engine: ViTEngine(model: model), config: entry.batcher,
            observer: MetricsObserver(metrics: metrics, kind: .image), adaptive: entry.adaptive)
        metrics.register(
            model: name, kind: .image, acmPaths: model.vit.acmPaths,
            choices: model.vit.acmPaths.map { model.config.acm[$0]!.minChoice...model.config.acm[$0]!.numLearners })
    }

    private var imageShape: [Int] {
        let c = model.vit.config
        return [c.numChannels, c.imageSize, c.imageSize]
    }
    private var classes: Int { model.vit.config.numClasses }
    private var hasLabels: Bool { model.config.labels != nil }
    /// Whether the model has ACMs, and so a `patch_learners` output.
    var hasACMs: Bool { !model.vit.acmPaths.isEmpty }
    private var patches: Int { model.vit.config.gridSize * model.vit.config.gridSize }

    var inputs: [TensorSpec] { [TensorSpec(name: Self.input, datatype: "FP32", dims: imageShape)] }

    var outputs: [TensorSpec] {
        [TensorSpec(name: Self.logits, datatype: "FP32", dims: [classes])]
            + (hasLabels ? [TensorSpec(name: Self.labels, datatype: "BYTES", dims: [min(Self.labelCount, classes)])] : [])
            + (hasACMs ? [TensorSpec(name: Self.patchLearners, datatype: "FP32", dims: [patches])] : [])
    }

    enum Output { case logits, labels, patchLearners }

    /// The 400 for asking a model without ACMs for its patches' learner counts.
    private var noPatchLearners: ProtocolError {
        .bad("model '\(name)' is dense (it has no ACM layers), so it has no per-patch learner counts ('\(Self.patchLearners)', heatmap)")
    }

    func parseInfer(_ envelope: inout RequestEnvelope) throws -> Submission<ViTEngine> {
        let dims = imageShape.map(String.init).joined(separator: ", ")
        let tensor = try envelope.singleInput(
            named: [Self.input], help: "'\(Self.input)' (FP32 [n, \(dims)], or BYTES [n] encoded images)")
        let name = tensor.name, shape = tensor.shape
        let images: [Float]
        let count: Int
        switch tensor.datatype {
        case "FP32":
            guard shape.count == 4, Array(shape.dropFirst()) == imageShape else {
                throw ProtocolError.bad("input '\(name)' has shape \(shape); the model takes [n, \(dims)]")
            }
            count = shape[0]
            try checkBatch(count, entry.maxBatchSize, items: "images")  // before any arithmetic or allocation that uses it
            images = try tensor.floats(elements: count * imageShape.reduce(1, *), binary: &envelope.binary)
        case "BYTES":
            let encoded = try tensor.byteElements(
                what: "encoded images", items: "images", maxBatchSize: entry.maxBatchSize, binary: &envelope.binary)
            count = encoded.count
            images = try encoded.enumerated().flatMap { i, bytes in try decode(bytes, index: i) }
        default:
            throw ProtocolError.bad("input '\(name)' has datatype \(tensor.datatype); the model takes FP32 (or BYTES images)")
        }
        if !hasACMs, envelope.root["outputs"]?.array?.contains(where: { $0["name"]?.string == Self.patchLearners }) == true {
            throw noPatchLearners
        }
        let outputs = try envelope.requestedOutputs(
            kind: { (name: String) -> Output? in
                switch name {
                case Self.logits: return .logits
                case Self.labels where self.hasLabels: return .labels
                case Self.patchLearners where self.hasACMs: return .patchLearners
                default: return nil
                }
            },
            // patch_learners only when asked for by name: existing clients' answers do not change
            defaults: hasLabels ? [.logits, .labels] : [.logits],
            unknown: "this model has " + self.outputs.map { "'\($0.name)'" }.joined(separator: ", "),
            classification: { $0 == .logits })
        let (modelName, labels, id, budget, adaptive) = (
            self.name, model.config.labels, envelope.id, envelope.budget, envelope.adaptive
        )
        let wantsPatches = outputs.contains { $0.kind == .patchLearners }
        var submission = Submission<ViTEngine>(
            input: ImageBatchInput(images, patchLearners: wantsPatches), count: count, budget: budget, adaptive: adaptive,
            timeoutNanoseconds: envelope.timeoutNanoseconds, id: id
        ) { result in
            Self.response(
                model: modelName, id: id, budget: result.loweredBudget ?? budget, adaptive: adaptive, outputs: outputs,
                result: result, labels: labels)
        }
        if !outputs.allSatisfy(\.binary) {
            submission.refusal = Self.nonFinite
        }
        return submission
    }

    func parseCurl(_ request: any HTTPRequest) throws -> Submission<ViTEngine> {
        let (budget, adaptive) = try queryBudget(request, default: entry.defaultBudget, adaptive: entry.adaptive != nil)
        let heatmap = try queryFlag(request, "heatmap")
        if heatmap && !hasACMs { throw noPatchLearners }
        guard !request.body.isEmpty else { throw ProtocolError.bad("the body must be a PNG or JPEG image") }
        let image = try decode(request.body, index: 0)
        let (modelName, model) = (self.name, self.model)
        let grid = model.vit.config.gridSize
        let learnersMax = model.vit.acmPaths.map { model.config.acm[$0]!.numLearners }.max() ?? 0
        let learnersMin = model.vit.acmPaths.map { model.config.acm[$0]!.minChoice }.min() ?? 0
        var submission = Submission<ViTEngine>(
            input: ImageBatchInput(image, patchLearners: heatmap), count: 1, budget: budget, adaptive: adaptive
        ) { result in
            let p = result.output.probabilities(image: 0)
            let top = result.output.top(min(Self.labelCount, result.classes), image: 0).map { c -> JSON in
                .object([("label", .string(model.label(c))), ("index", .integer(c)), ("probability", .number(p[c]))])
            }
            var fields: [(String, JSON)] = [
                ("model_name", .string(modelName)), ("labels", .array(top)),
                ("compute_fraction", .number(result.computeFraction[0])),
            ]
            fields += budgetParameters(result.loweredBudget ?? budget, adaptive: adaptive)
            if heatmap, let values = result.output.patchLearners {
                // grid rows of grid columns, the image's patches in reading order
                let rows = (0..<grid).map { r in JSON.array(values[(r * grid)..<((r + 1) * grid)].map { .number(Double($0)) }) }
                fields += [
                    ("patch_learners", .array(rows)), ("learners_min", .integer(learnersMin)),
                    ("learners_max", .integer(learnersMax)),
                ]
            }
            return jsonResponse(200, JSON.object(fields).bytes)
        }
        submission.refusal = Self.nonFinite
        return submission
    }

    /// A request whose logits are not all finite gets 400 where its answer would carry them in JSON (`null`s,
    /// "nan" scores, labels ranked by NaN): its input's values were large enough to overflow the network (a finite
    /// 3e38 does). Outputs all asked for as binary data pass through, the logits as the IEEE values they are, as
    /// any framework's would (perf_analyzer's random inputs overflow so). The other requests of the batch are not
    /// touched: each image's computation is its own.
    @Sendable static func nonFinite(_ result: RunResult<ClassifierOutput>) -> ProtocolError? {
        let classes = result.classes
        guard let row = (0..<result.computeFraction.count).first(where: { b in
            !result.logits[(b * classes)..<((b + 1) * classes)].allSatisfy(\.isFinite)
        }) else { return nil }
        return .bad(
            "image \(row): the model's output is not finite for this input: its values are too large for the network "
                + "(keep them in the range the model's preprocessing gives, a few units)")
    }

    func recordSuccess(_ result: RunResult<ClassifierOutput>, seconds: Double, budget: ComputeBudget?) -> Double? {
        let fraction = result.computeFraction.reduce(0, +) / Double(max(result.computeFraction.count, 1))
        metrics.success(model: name, seconds: seconds, fraction: fraction, budget: budget?.value)
        return fraction
    }

    /// One encoded image to the model's input, as its config's preprocessing says.
    private func decode(_ bytes: [UInt8], index: Int) throws -> [Float] {
        guard let preprocessor else {
            throw ProtocolError.bad("this model takes no encoded images: its config has no preprocessing")
        }
        do {
            return try preprocessor.preprocess(bytes)
        } catch {
            throw ProtocolError.bad("image \(index): \(error)")
        }
    }

    /// The infer response: the compute fraction (and budget), then the outputs asked for.
    static func response(
        model: String, id: String?, budget: ComputeBudget?, adaptive: Bool = false, outputs: [RequestedOutput<Output>],
        result: RunResult<ClassifierOutput>, labels: [String]?
    ) -> HTTPResponse {
        let fraction = result.computeFraction.reduce(0, +) / Double(max(result.computeFraction.count, 1))
        let parameters: [(String, JSON)] = [("compute_fraction", .number(fraction))] + budgetParameters(budget, adaptive: adaptive)
        let n = result.computeFraction.count, classes = result.classes
        let encoded = outputs.map { output -> EncodedOutput in
            switch (output.kind, output.classification) {
            case (.logits, nil):
                return EncodedOutput(
                    name: Self.logits, datatype: "FP32", shape: [n, classes], values: .floats(result.logits),
                    bytes: result.logits.withUnsafeBytes { [UInt8]($0) },  // little-endian hosts only (x86-64, arm64)
                    binary: output.binary)
            case let (.logits, k?):
                let k = min(k, classes)
                let strings = (0..<n).flatMap { b in
                    result.output.top(k, image: b).map { c -> String in
                        let score = String(format: "%f", result.logits[b * classes + c])
                        return labels.map { "\(score):\(c):\($0[c])" } ?? "\(score):\(c)"
                    }
                }
                return EncodedOutput(name: Self.logits, shape: [n, k], strings: strings, binary: output.binary)
            case (.labels, _):
                let k = min(Self.labelCount, classes)
                let strings = (0..<n).flatMap { b in result.output.top(k, image: b).map { labels?[$0] ?? "\($0)" } }
                return EncodedOutput(name: Self.labels, shape: [n, k], strings: strings, binary: output.binary)
            case (.patchLearners, _):
                // asked for, so the engine recorded it (ViTEngine.run)
                let values = result.output.patchLearners ?? []
                return EncodedOutput(
                    name: Self.patchLearners, datatype: "FP32", shape: [n, values.count / max(n, 1)], values: .floats(values),
                    bytes: values.withUnsafeBytes { [UInt8]($0) },  // little-endian hosts only (x86-64, arm64)
                    binary: output.binary)
            }
        }
        return inferResponse(model: model, id: id, parameters: parameters, outputs: encoded)
    }
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
