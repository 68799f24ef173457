import ACMCore
import ACMModels
import ArgumentParser
import Foundation

/// The engine's own throughput on a model directory: batches of random images straight through
/// `ViT.forward`, no HTTP and no batcher. The peer of the server benchmark and of `make bench-peers`
/// (BENCHMARKS.md).
struct ModelBench: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "model", abstract: "Images per second through the engine alone, per batch size and learner policy.")

    @Option(help: "Model directory.") var model: String
    @Option(help: "Batch sizes to time.") var batch: [Int] = [1, 8, 32]
    @Option(help: "Budgets to time; 0 means auto (the gates choose). Default: 0 and 0.5 unless --uniform-k is given.")
    var budget: [Double] = []
    @Option(help: "Also time the static baseline: every token runs k learners.") var uniformK: [Int] = []
    @Option(help: "Seconds per measurement.") var seconds = 3.0
    @Option(help: "Worker threads (0 = one per core).") var threads = 0
    @Option(help: "What the GEMMs run in: f32, or bf16 where the CPU has AVX-512 BF16 (else f32).")
    var precision: Precision = .f32
    @Flag(help: "One JSON object per measurement instead of the table.") var json = false
    @Flag(
        help: """
            Time the policies of each batch size in turn, one batch each, for --seconds per policy, and report each \
            one's median batch: a ratio between policies that the machine's changes of speed move less.
            """)
    var interleave = false
    @Option(
        help: """
            Also time this model directory (e.g. the dense teacher of --model) at each batch size, as the policy \
            'baseline' (all its learners where it has ACMs): with --interleave, in the same turns.
            """)
    var baseline: String?

    func run() throws {
        reexecWithTunedBLASIfNeeded()
        if threads > 0 { Parallel.workers = threads }
        let m = try Model(directory: model, precision: precision)
        let n = m.vit.inputCount
        var rng = SeededGenerator(seed: 1)
        let budgets = budget.isEmpty && uniformK.isEmpty ? [0, 0.5] : budget
        var variants = try budgets.map { beta in
            beta > 0
                ? Variant(name: "cap \(beta)", model: m, policy: .cap(try ComputeBudget(beta)))
                : Variant(name: "auto", model: m, policy: .auto)
        }
        variants += uniformK.map { Variant(name: "uniform \($0)", model: m, policy: .uniform($0)) }
        if let baseline {
            let other = try Model(directory: baseline, precision: precision)
            guard other.vit.inputCount == n else {
                throw ValidationError("--baseline \(baseline) takes \(other.vit.inputCount) values an image, --model \(n)")
            }
            variants.append(Variant(name: "baseline", model: other, policy: .full))
        }
        if !json {
            print("engine: \(model), workers=\(Parallel.workers), precision=\(m.precision), GEMM=\(m.precision.kernelName)")
            print("| batch | policy | images/s | ms/batch | compute fraction |")
            print("| --- | --- | --- | --- | --- |")
        }
        for b in batch {
            let images = Tensor(shape: [b, n])
            for i in 0..<images.count { images.data[i] = Float.random(in: -1...1, using: &rng) }
            if interleave {
                timeInterleaved(images: images, batch: b, variants: variants)
                continue
            }
            for variant in variants {
                let (name, m, workspace) = (variant.name, variant.model, variant.workspace)
                let batchPolicies = [LearnerPolicy](repeating: variant.policy, count: b)
                _ = m.vit.forward(images: images.data, count: b, policies: batchPolicies, workspace: workspace)
                var runs = 0
                var fraction = 0.0
                let start = DispatchTime.now().uptimeNanoseconds
                var elapsed = 0.0
                let cpuStart = processCPUSeconds()
                while elapsed < seconds {
                    let out = m.vit.forward(images: images.data, count: b, policies: batchPolicies, workspace: workspace)
                    fraction += out.computeFraction.reduce(0, +) / Double(b)
                    runs += 1
                    elapsed = Double(DispatchTime.now().uptimeNanoseconds - start) / 1e9
                }
                let rate = Double(runs * b) / elapsed, ms = elapsed / Double(runs) * 1000
                let cpuPerImage = (processCPUSeconds() - cpuStart) / Double(runs * b) * 1e6
                fraction /= Double(runs)
                if json {
                    print(String(
                        format: #"{"batch": %d, "policy": "%@", "precision": "%@", "images_per_s": %.2f, "ms_per_batch": %.4f, "compute_fraction": %.5f, "cpu_us_per_image": %.1f}"#,
                        b, name, m.precision.rawValue, rate, ms, fraction, cpuPerImage))
                } else {
                    print(String(format: "| %d | %@ | %.0f | %.2f | %.3f |", b, name, rate, ms, fraction))
                }
            }
        }
    }
}

extension ModelBench {
    /// `--interleave`: one batch of each variant in turn until each has had `seconds`; per variant, images/s at
    /// its median and at its best batch.
    func timeInterleaved(images: Tensor, batch b: Int, variants: [Variant]) {
        let batchPolicies = variants.map { [LearnerPolicy](repeating: $0.policy, count: b) }
        var times = variants.map { _ in [Double]() }
        var fractions = variants.map { _ in 0.0 }
        for i in variants.indices {
            let p = variants[i]
            _ = p.model.vit.forward(images: images.data, count: b, policies: batchPolicies[i], workspace: p.workspace)
        }
        var total = 0.0
        while total < seconds * Double(variants.count) {
            for i in variants.indices {
                let start = DispatchTime.now().uptimeNanoseconds
                let p = variants[i]
                let out = p.model.vit.forward(images: images.data, count: b, policies: batchPolicies[i], workspace: p.workspace)
                let t = Double(DispatchTime.now().uptimeNanoseconds - start) / 1e9
                times[i].append(t)
                total += t
                fractions[i] += out.computeFraction.reduce(0, +) / Double(b)
            }
        }
        for (i, p) in variants.enumerated() {
            let sorted = times[i].sorted()
            let median = sorted[sorted.count / 2], best = sorted[0]
            let fraction = fractions[i] / Double(sorted.count)
            if json {
                print(String(
                    format: #"{"batch": %d, "policy": "%@", "precision": "%@", "images_per_s": %.2f, "best_images_per_s": %.2f, "ms_per_batch": %.4f, "compute_fraction": %.5f, "batches": %d}"#,
                    b, p.name, p.model.precision.rawValue, Double(b) / median, Double(b) / best, median * 1000, fraction,
                    sorted.count))
            } else {
                print(String(format: "| %d | %@ | %.0f | %.2f | %.3f |", b, p.name, Double(b) / median, median * 1000, fraction))
            }
        }
    }
}

/// One row of the table: a model under one policy, with its own buffers.
struct Variant {
    let name: String
    let model: Model
    let policy: LearnerPolicy
    let workspace = ViTWorkspace()
}

/// User + system CPU seconds of this process, all its threads.
private func processCPUSeconds() -> Double {
    var usage = rusage()
    getrusage(RUSAGE_SELF.rawValue, &usage)
    func seconds(_ t: timeval) -> Double { Double(t.tv_sec) + Double(t.tv_usec) / 1e6 }
    return seconds(usage.ru_utime) + seconds(usage.ru_stime)
}
