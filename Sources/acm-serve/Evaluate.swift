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
    @OptionGroup var precision: PrecisionOption
    @Flag(
        name: .customLong("compare-f32"),
        help: "Also run the model in f32 on the same batches; report its accuracy and the share of gate decisions and predictions that differ.")
    var compareF32 = false
    @Option(help: "Images per forward pass.") var batch = 256
    @Option(name: .customLong("kmap-images"), help: "Also report every token's mean learner count for the first n images.")
    var kmapImages = 0
    @Flag(help: "Print one JSON object instead of text.") var json = false

    func run() throws {
        let m: Model
        let reference: Model?
        let x: Tensor
        let y: Tensor
        do {
            m = try Model(directory: model, precision: precision.precision)
            reference = compareF32 ? try Model(directory: model, precision: .f32) : nil
            x = try Npy.read(path: images)
            y = try Npy.read(path: labels)
        } catch let error as ModelError {
            throw ValidationError(error.description)
        }
        precision.noteFallback(m.precision)
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
        // with --compare-f32: the f32 model's correct answers, and the decisions and predictions that differ
        let referenceWorkspace = ViTWorkspace()
        var referenceCorrect = 0, decisions = 0, changedDecisions = 0, changedPredictions = 0
        var start = 0
        while start < count {
            let b = min(batch, count - start)
            let wantMaps = max(0, min(kmapImages - start, b))
            let t0 = DispatchTime.now().uptimeNanoseconds
            let out = m.vit.forward(
                images: x.data + start * n, count: b, policies: Array(repeating: policy.policy, count: b), workspace: ws,
                recordChoices: wantMaps > 0 || reference != nil)
            seconds += Double(DispatchTime.now().uptimeNanoseconds - t0) / 1e9
            func predicted(_ logits: Tensor, _ i: Int) -> Int {
                let row = logits.row(i)
                var best = 0
                for c in 1..<m.vit.config.numClasses where row[c] > row[best] { best = c }
                return best
            }
            for i in 0..<b {
                if predicted(out.logits, i) == Int(y[start + i]) { correct += 1 }
                fraction += out.computeFraction[i]
            }
            if let reference {
                let other = reference.vit.forward(
                    images: x.data + start * n, count: b, policies: Array(repeating: policy.policy, count: b),
                    workspace: referenceWorkspace, recordChoices: true)
                for i in 0..<b {
                    let p = predicted(other.logits, i)
                    if p == Int(y[start + i]) { referenceCorrect += 1 }
                    if p != predicted(out.logits, i) { changedPredictions += 1 }
                }
                for (mine, theirs) in zip(out.choices ?? [], other.choices ?? []) {
                    decisions += mine.count
                    changedDecisions += zip(mine, theirs).filter { $0 != $1 }.count
                }
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
            fields["precision"] = m.precision.rawValue
            if kmapImages > 0 { fields["kmaps"] = kmaps }
            if reference != nil {
                fields["f32_accuracy"] = Double(referenceCorrect) / Double(count)
                fields["changed_decisions"] = decisions > 0 ? Double(changedDecisions) / Double(decisions) : 0
                fields["changed_predictions"] = Double(changedPredictions) / Double(count)
            }
            let data = try JSONSerialization.data(withJSONObject: fields, options: [.sortedKeys])
            print(String(decoding: data, as: UTF8.self))
        } else {
            print("\(model) (\(policy.policy), \(m.precision)): \(count) images")
            print(String(format: "  accuracy %.4f, compute fraction %.4f, %.4f GFLOPs/image, %.0f images/s",
                         accuracy, meanFraction, gflops, Double(count) / seconds))
            for (p, k) in zip(paths, meanLearners) { print(String(format: "  %@: %.3f learners per token", p, k)) }
            if reference != nil {
                print(String(
                    format: "  f32: accuracy %.4f; %.3f%% of %d gate decisions and %d of %d predictions differ",
                    Double(referenceCorrect) / Double(count),
                    decisions > 0 ? 100 * Double(changedDecisions) / Double(decisions) : 0, decisions,
                    changedPredictions, count))
            }
        }
    }
}
