import ACMCore
import ACMModels
import Foundation
import Testing

@testable import ACMServing

/// The ViT fixture with ACMs on attention projections and MLPs (N = 4; k_min 1 or 0), shared with ACMModelsTests.
private let fixture = URL(fileURLWithPath: #filePath).deletingLastPathComponent()
    .appendingPathComponent("../ACMModelsTests/Fixtures/vit_mixed").standardized.path

/// `count` images of deterministic noise in [-2, 2].
private func noise(count: Int, model: Model, seed: UInt64) -> [Float] {
    var generator = SeededGenerator(seed: seed)
    return (0..<count * model.vit.inputCount).map { _ in Float.random(in: -2...2, using: &generator) }
}

/// The naive per-patch mean: for image `b`, patch `p` is token 1 + p of sequence b, at `b·S + 1 + p` in
/// each ACM's recorded choices; summed over the ACMs one by one, in Double.
private func naivePatchLearners(_ choices: [[Int32]], image b: Int, sequenceLength s: Int) -> [Float] {
    (0..<s - 1).map { p in
        var sum = 0.0
        for layer in choices { sum += Double(layer[b * s + 1 + p]) }
        return Float(sum / Double(choices.count))
    }
}

@Suite struct PatchLearnersTests {
    /// Should give each request that asked for it its images' per-patch mean learner counts, equal to a
    /// naive recomputation from the batch's recorded choices, and nothing to the requests that did not ask.
    @Test func engineMatchesNaiveRecomputation() throws {
        let model = try Model(directory: fixture)
        let vit = model.vit, s = vit.config.sequenceLength, patches = vit.config.gridSize * vit.config.gridSize
        // six images: enough for the batch to be split into parts on a machine with 2 or 3 workers
        let counts = [2, 3, 1]
        let policies: [LearnerPolicy] = [.auto, .cap(0.25), .cap(0.5)]
        let asks = [true, false, true]
        let images = counts.enumerated().map { i, n in noise(count: n, model: model, seed: UInt64(100 + i)) }
        let engine = ViTEngine(model: model)
        let batch = engine.run(
            zip(images, asks).map { ImageBatchInput($0, patchLearners: $1) }, counts: counts, policies: policies)

        let all = images.flatMap { $0 }
        let perImage = zip(counts, policies).flatMap { n, p in Array(repeating: p, count: n) }
        let reference = all.withUnsafeBufferPointer {
            vit.forward(
                images: $0.baseAddress!, count: all.count / vit.inputCount, policies: perImage, workspace: ViTWorkspace(),
                recordChoices: true)
        }
        let choices = try #require(reference.choices)
        #expect(choices.count == vit.acmPaths.count)
        var first = 0
        for (i, output) in batch.outputs.enumerated() {
            defer { first += counts[i] }
            guard asks[i] else {
                #expect(output.patchLearners == nil)
                continue
            }
            let values = try #require(output.patchLearners)
            #expect(values.count == counts[i] * patches)
            let expected = (first..<first + counts[i]).flatMap { naivePatchLearners(choices, image: $0, sequenceLength: s) }
            #expect(values == expected)
            #expect(values.allSatisfy { (0...4).contains($0) })
        }
    }

    /// Should map every value back to its own image and patch: under `.full` every token runs N = 4 and under
    /// `.uniform(2)` every token runs 2 (k_min ≤ 2), so a request's values are exactly those wherever its
    /// images sit in the batch; and an image's values equal its values run alone.
    @Test func valuesBelongToTheirImages() throws {
        let model = try Model(directory: fixture)
        let vit = model.vit, patches = vit.config.gridSize * vit.config.gridSize
        let counts = [1, 2, 3]
        let policies: [LearnerPolicy] = [.full, .auto, .uniform(2)]
        let images = counts.enumerated().map { i, n in noise(count: n, model: model, seed: UInt64(7 + i)) }
        let batch = ViTEngine(model: model).run(
            images.map { ImageBatchInput($0, patchLearners: true) }, counts: counts, policies: policies)
        #expect(batch.outputs[0].patchLearners == Array(repeating: 4, count: patches))
        #expect(batch.outputs[2].patchLearners == Array(repeating: 2, count: 3 * patches))

        // the auto request's two images, each alone
        let middle = try #require(batch.outputs[1].patchLearners)
        for b in 0..<2 {
            let alone = images[1].withUnsafeBufferPointer {
                vit.forward(
                    images: $0.baseAddress! + b * vit.inputCount, count: 1, policies: [.auto], workspace: ViTWorkspace(),
                    recordChoices: true)
            }
            let own = vit.patchLearners(choices: try #require(alone.choices), image: 0)
            #expect(Array(middle[(b * patches)..<((b + 1) * patches)]) == own)
        }
        // the gates do not choose the same k everywhere on noise
        #expect(Set(middle).count > 1)
    }

    /// Should give no per-patch counts to a batch in which no request asked for them.
    @Test func nothingRecordedUnlessAsked() throws {
        let model = try Model(directory: fixture)
        let batch = ViTEngine(model: model).run(
            [ImageBatchInput(noise(count: 2, model: model, seed: 3))], counts: [2], policies: [.auto])
        #expect(batch.outputs[0].patchLearners == nil)
    }
}
