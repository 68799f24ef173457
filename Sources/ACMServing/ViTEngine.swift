import ACMCore
import ACMModels

/// An image classifier's part of a batch: one request's rows.
public struct ClassifierOutput: Sendable, Equatable {
    /// [count, classes]
    public var logits: [Float]
    public var classes: Int
    /// Per image: executed learner FLOPs / all-learner FLOPs (docs/compute-budget.md).
    public var computeFraction: [Double]

    public init(logits: [Float], classes: Int, computeFraction: [Double]) {
        self.logits = logits
        self.classes = classes
        self.computeFraction = computeFraction
    }
}

/// A ViT as its runner drives it: a request's input is [count, C, H, W], preprocessed, in the model's
/// layout; a batch is ONE forward pass over all its requests' images.
public final class ViTEngine: BatchEngine, @unchecked Sendable {
    public static let itemName = "images"
    public let model: Model
    // The loop thread's alone.
    private let workspace = ViTWorkspace()
    private let input = Scratch()
    private var policies: [LearnerPolicy] = []

    public init(model: Model) { self.model = model }

    public func problem(with images: [Float], count: Int) -> String? {
        let expected = count * model.vit.inputCount
        guard images.count == expected else {
            return "\(images.count) input values for \(count) images; expected \(expected)"
        }
        return nil
    }

    public func run(_ inputs: [[Float]], counts: [Int], policies requestPolicies: [LearnerPolicy]) -> EngineBatch<ClassifierOutput> {
        let vit = model.vit
        let perImage = vit.inputCount
        let images = counts.reduce(0, +)

        // concatenate the requests' images: [images, C, H, W]
        let buffer = input.reserve(images * perImage)
        policies.removeAll(keepingCapacity: true)
        var offset = 0
        for (job, (count, policy)) in zip(inputs, zip(counts, requestPolicies)) {
            job.withUnsafeBufferPointer { (buffer + offset).update(from: $0.baseAddress!, count: $0.count) }
            offset += job.count
            for _ in 0..<count { policies.append(policy) }
        }

        let output = vit.forward(images: buffer, count: images, policies: policies, workspace: workspace)

        // split the [images, classes] logits back per request
        let classes = vit.config.numClasses
        var first = 0
        var outputs: [ClassifierOutput] = []
        outputs.reserveCapacity(counts.count)
        for count in counts {
            let logits = UnsafeBufferPointer(start: output.logits.data + first * classes, count: count * classes)
            outputs.append(
                ClassifierOutput(
                    logits: Array(logits), classes: classes,
                    computeFraction: Array(output.computeFraction[first..<first + count])))
            first += count
        }
        return EngineBatch(outputs: outputs, learnerHistogram: output.learnerHistogram, acmPaths: vit.acmPaths)
    }
}
