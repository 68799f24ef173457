import ACMCore
import ACMModels
import ArgumentParser
import Foundation

/// Accuracy, compute and speed of a model on a labelled set, through the engine users run.
struct Evaluate: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Measure accuracy, compute fraction, GFLOPs per image and images/s on a labelled .npy set.")

    @Option(help: "Model directory.") var model: String
    @Option(help: "float32 .npy images [N, C, H, W], preprocessed.") var images: String
    @Option(help: ".npy labels [N] (integer or float).") var labels: String
    @OptionGroup var policy: PolicyOptions
    @Option(help: "Images per forward pass.") var batch = 256
    @Option(name: .customLong("kmap-images"), help: "Also report every token's mean learner count for the first n images.")
    var kmapImages = 0
    @Flag(help: "Print one JSON object instead of text.") var json = false

    func run() throws {
        let m: Model
        let x: Tensor
        let y: Tensor
        do {
            m = try Model(directory: model)
            x = try Npy.read(path: images)
            y = try Npy.read(path: labels)
        } catch let error as ModelError {
            throw ValidationError(error.description)
        }
        let n = m.vit.inputCount
        guard x.shape.count == 4, x.shape[0] == y.count, x.count == x.shape[0] * n else {
            throw ValidationError("images \(x.shape) and labels \(y.shape) do not fit the model's [N, \(n)] input")
        }
        let count = x.shape[0]
        let ws = ViTWorkspace()
        var correct = 0
        var fraction = 0.0
        let paths = m.vit.acmPaths
        var learnerSums = [Double](repeating: 0, count: paths.count)
        var kmaps: [[Double]] = []
        let s = m.vit.config.sequenceLength
        var seconds = 0.0
        var start = 0
        while start < count {
            let b = min(batch, count - start)
            let wantMaps = max(0, min(kmapImages - start, b))
            let t0 = DispatchTime.now().uptimeNanoseconds
            let out = m.vit.forward(
                images: x.data + start * n, count: b, policies: Array(repeating: policy.policy, count: b), workspace: ws,
                recordChoices: wantMaps > 0)
            seconds += Double(DispatchTime.now().uptimeNanoseconds - t0) / 1e9
            for i in 0..<b {
                let row = out.logits.row(i)
                var best = 0
                for c in 1..<m.vit.config.numClasses where row[c] > row[best] { best = c }
                if best == Int(y[start + i]) { correct += 1 }
                fraction += out.computeFraction[i]
            }
            for (l, histogram) in out.learnerHistogram.enumerated() {
                learnerSums[l] += Double(histogram.enumerated().reduce(0) { $0 + $1.offset * $1.element })
            }
            if let choices = out.choices {
                for i in 0..<wantMaps {
                    kmaps.append((0..<s).map { t in
                        Double(choices.reduce(0) { $0 + Int($1[i * s + t]) }) / Double(max(choices.count, 1))
                    })
                }
            }
            start += b
        }
        let meanFraction = fraction / Double(count)
        let accuracy = Double(correct) / Double(count)
        let gflops = m.vit.flops(computeFraction: meanFraction) / 1e9
        let meanLearners = learnerSums.map { $0 / Double(count * s) }
        if json {
            var fields: [String: Any] = [
                "model": model, "policy": "\(policy.policy)", "images": count, "accuracy": accuracy,
                "compute_fraction": meanFraction, "gflops_per_image": gflops,
                "images_per_second": Double(count) / seconds, "seconds": seconds,
                "mean_learners": Dictionary(uniqueKeysWithValues: zip(paths, meanLearners)),
            ]
            if kmapImages > 0 { fields["kmaps"] = kmaps }
            let data = try JSONSerialization.data(withJSONObject: fields, options: [.sortedKeys])
            print(String(decoding: data, as: UTF8.self))
        } else {
            print("\(model) (\(policy.policy)): \(count) images")
            print(String(format: "  accuracy %.4f, compute fraction %.4f, %.4f GFLOPs/image, %.0f images/s",
                         accuracy, meanFraction, gflops, Double(count) / seconds))
            for (p, k) in zip(paths, meanLearners) { print(String(format: "  %@: %.3f learners per token", p, k)) }
        }
    }
}
