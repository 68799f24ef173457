import ACMCore
import Foundation
import Testing

@testable import ACMModels

/// The repository root, for the bundled models.
let repositoryRoot = URL(fileURLWithPath: #filePath)
    .deletingLastPathComponent().deletingLastPathComponent().deletingLastPathComponent().path

@Suite struct BundledModelTests {
    /// Should agree with PyTorch on the bundled Fashion-MNIST ACM model: logits within 1e-3 on the
    /// first 100 test images, in auto mode and at cap 0.5 (fixture: `python -m acm_tools.parity`).
    @Test(arguments: ["auto", "cap_0.5"])
    func fashionACMMatchesPyTorch(mode: String) throws {
        let model = try Model(directory: "\(repositoryRoot)/models/fashion-vit-acm")
        let fixture = try SafeTensorsFile(path: "\(fixtures)/fashion_parity/parity.safetensors")
        let input = try fixture.tensor("input")
        let count = input.shape[0]
        let classes = model.vit.config.numClasses
        let want = try fixture.tensor("logits.\(mode)", shape: [count, classes])
        let policy: LearnerPolicy = mode == "auto" ? .auto : .cap(0.5)
        let out = model.vit.forward(
            images: input.data, count: count, policies: Array(repeating: policy, count: count), workspace: ViTWorkspace())
        var worst: Float = 0
        for b in 0..<count { worst = max(worst, maxAbsDiff(out.logits.row(b), want.row(b), count: classes)) }
        #expect(worst <= 1e-3, "max |Δlogit| over \(count) images: \(worst)")
    }
}
