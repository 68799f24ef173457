import ACMCore
import ACMModels
import ArgumentParser
import Foundation

/// The engine's own throughput on a model directory: batches of random images straight through
/// `ViT.forward`, no HTTP and no batcher. The peer of the server benchmark (BENCHMARKS.md).
struct ModelBench: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "model", abstract: "Images per second through the engine alone, per batch size and budget.")

    @Option(help: "Model directory.") var model: String
    @Option(help: "Batch sizes to time.") var batch: [Int] = [1, 8, 32]
    @Option(help: "Budgets to time; 0 means auto (the gates choose).") var budget: [Double] = [0, 0.5]
    @Option(help: "Seconds per measurement.") var seconds = 3.0
    @Option(help: "Worker threads (0 = one per core).") var threads = 0

    func run() throws {
        reexecWithTunedBLASIfNeeded()
        if threads > 0 { Parallel.workers = threads }
        let m = try Model(directory: model)
        let n = m.vit.inputCount
        var rng = SeededGenerator(seed: 1)
        let workspace = ViTWorkspace()
        print("engine: \(model), workers=\(Parallel.workers), BLAS core=\(blasCoreName)")
        print("| batch | budget | images/s | ms/batch | compute fraction |")
        print("| --- | --- | --- | --- | --- |")
        for b in batch {
            let images = Tensor(shape: [b, n])
            for i in 0..<images.count { images.data[i] = Float.random(in: -1...1, using: &rng) }
            for beta in budget {
                let policies = [LearnerPolicy](repeating: beta > 0 ? .cap(beta) : .auto, count: b)
                _ = m.vit.forward(images: images.data, count: b, policies: policies, workspace: workspace)
                var runs = 0
                var fraction = 0.0
                let start = DispatchTime.now().uptimeNanoseconds
                var elapsed = 0.0
                while elapsed < seconds {
                    let out = m.vit.forward(images: images.data, count: b, policies: policies, workspace: workspace)
                    fraction += out.computeFraction.reduce(0, +) / Double(b)
                    runs += 1
                    elapsed = Double(DispatchTime.now().uptimeNanoseconds - start) / 1e9
                }
                print(String(
                    format: "| %d | %@ | %.0f | %.2f | %.3f |", b, beta > 0 ? String(beta) : "auto",
                    Double(runs * b) / elapsed, elapsed / Double(runs) * 1000, fraction / Double(runs)))
            }
        }
    }
}
