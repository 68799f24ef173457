import ACMCore
import ACMModels

/// An image classifier's part of a batch: one request's rows.
public struct ClassifierOutput: Sendable, Equatable {
    /// [count, classes]
    public var logits: [Float]
    public var classes: Int
    /// Per image: executed learner FLOPs / all-learner FLOPs (docs/compute-budget.md).
    public var computeFraction: [Double]
    /// [count, patches]: each patch's mean learner count over the ACMs (`ViT.patchLearners`), when the
    /// request asked for it and the model has ACMs; else nil.
    public var patchLearners: [Float]?

    public init(logits: [Float], classes: Int, computeFraction: [Double], patchLearners: [Float]? = nil) {
        self.logits = logits
        self.classes = classes
        self.computeFraction = computeFraction
        self.patchLearners = patchLearners
    }
}

/// One request's images for a ViT: [count, C, H, W], preprocessed, in the model's layout; and whether it
/// wants its per-patch learner counts.
public struct ImageBatchInput: Sendable {
    public var images: [Float]
    public var patchLearners: Bool

    public init(_ images: [Float], patchLearners: Bool = false) {
        self.images = images
        self.patchLearners = patchLearners
    }
}

/// A ViT as its runner drives it: a request's input is [count, C, H, W], preprocessed, in the model's
/// layout (`ImageBatchInput`); a batch is ONE forward pass over all its requests' images.
public final class ViTEngine: BatchEngine, @unchecked Sendable {
    public static let itemName = "images"
    public let model: Model
    // The loop thread's alone.
    private let workspace = ViTWorkspace()
    private let input = Scratch()
    private var policies: [LearnerPolicy] = []

    public init(model: Model) { self.model = model }

    public func problem(with input: ImageBatchInput, count: Int) -> String? {
        let expected = count * model.vit.inputCount
        guard input.images.count == expected else {
            return "\(input.images.count) input values for \(count) images; expected \(expected)"
        }
        return nil
    }

    public func run(_ inputs: [ImageBatchInput], counts: [Int], policies requestPolicies: [LearnerPolicy]) -> EngineBatch<ClassifierOutput> {
        let vit = model.vit
        let perImage = vit.inputCount
        let images = counts.reduce(0, +)

        // concatenate the requests' images: [images, C, H, W]
        let buffer = input.reserve(images * perImage)
        policies.removeAll(keepingCapacity: true)
        var offset = 0
        for (job, (count, policy)) in zip(inputs, zip(counts, requestPolicies)) {
            job.images.withUnsafeBufferPointer { (buffer + offset).update(from: $0.baseAddress!, count: $0.count) }
            offset += job.images.count
            for _ in 0..<count { policies.append(policy) }
        }

        // Every token's k is recorded only for a batch in which some request asked for its patches' learner
        // counts: recording copies each ACM's choices into arrays the batch then drops, work and allocation
        // that the other batches need not do.
        let record = !vit.acmPaths.isEmpty && inputs.contains(where: \.patchLearners)
        let output = vit.forward(images: buffer, count: images, policies: policies, workspace: workspace, recordChoices: record)

        // split the [images, classes] logits back per request
        let classes = vit.config.numClasses
        var first = 0
        var outputs: [ClassifierOutput] = []
        outputs.reserveCapacity(counts.count)
        for (job, count) in zip(inputs, counts) {
            let logits = UnsafeBufferPointer(start: output.logits.data + first * classes, count: count * classes)
            var patchLearners: [Float]?
            if job.patchLearners, let choices = output.choices {
                patchLearners = (first..<first + count).flatMap { vit.patchLearners(choices: choices, image: $0) }
            }
            outputs.append(
                ClassifierOutput(
                    logits: Array(logits), classes: classes,
                    computeFraction: Array(output.computeFraction[first..<first + count]), patchLearners: patchLearners))
            first += count
        }
        return EngineBatch(outputs: outputs, learnerHistogram: output.learnerHistogram, acmPaths: vit.acmPaths)
    }
}
