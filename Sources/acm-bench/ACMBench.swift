import ACMCore
import ArgumentParser
import Foundation

@main
struct ACMBench: ParsableCommand {
    static func main() {
        flushDenormalsToZero()  // as acm-serve does
        Self.main(nil)
    }

    static let configuration = CommandConfiguration(
        commandName: "acm-bench", abstract: "acm-serve's benchmarks (BENCHMARKS.md).",
        subcommands: [LayerBench.self, ModelBench.self, GEMMBench.self], defaultSubcommand: LayerBench.self)
}

/// Times one ACM MLP layer against the dense MLP it replaces, in the same run, and prints the ratio
/// time(ACM at mean fraction β) / time(dense). Runs alternate between the two so machine noise hits both.
struct LayerBench: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "layer",
        abstract: "Benchmark a grouped ACM MLP layer against the dense MLP (ViT-B shapes by default).")

    @Option(help: "Model width d.") var hidden = 768
    @Option(help: "Dense MLP width (N·h for the ACM).") var mlp = 3072
    @Option(help: "Learners N.") var learners = 4
    @Option(help: "Sequences in the batch.") var batch = 8
    @Option(help: "Tokens per sequence.") var sequence = 197
    @Option(help: "Timed repetitions of each variant.") var reps = 25
    @Option(help: "Worker threads (0 = one per core).") var threads = 0
    @Option(help: "Mean compute fractions to time.") var fractions: [Double] = [0.25, 0.5, 0.75, 1.0]
    @Flag(help: "Also time the gate and the learners on their own.") var breakdown = false
    @Option(help: "What the GEMMs run in: f32, or bf16 where the CPU has AVX-512 BF16 (else f32).")
    var precision: Precision = .f32

    func run() throws {
        reexecWithTunedBLASIfNeeded()
        if threads > 0 { Parallel.workers = threads }
        let tokens = batch * sequence, d = hidden, h = mlp / learners
        var rng = SeededGenerator(seed: 42)
        func random(_ shape: [Int], _ scale: Float) -> Tensor {
            let t = Tensor(shape: shape)
            for i in 0..<t.count { t.data[i] = Float.random(in: -scale...scale, using: &rng) }
            return t
        }

        // The dense MLP: [tokens, d] × [d, D] → GELU → [tokens, D] × [D, d]
        let fc1 = Linear(weight: random([mlp, d], 0.03), bias: random([mlp], 0.03), precision: precision)
        let fc2 = Linear(weight: random([d, mlp], 0.03), bias: random([d], 0.03), precision: precision)
        let x = random([tokens, d], 1)
        let denseMLP = DenseMLP(fc1: fc1, fc2: fc2)
        let hidden = WorkerScratch(), out = Tensor(shape: [tokens, d])
        func dense() { denseMLP.forward(x.data, rows: tokens, out: out.data, scratch: hidden) }

        // The ACM with the paper's gate (3 layers, 16 wide), loaded through a real weights file.
        let config = ACMConfig(numLearners: learners, learnerDim: h, activation: .gelu, minChoice: 0)
        let dir = NSTemporaryDirectory() + "acm-bench-\(getpid())"
        try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(atPath: dir) }
        var tensors = ["w1": random([d, learners * h], 0.03), "b1": random([learners * h], 0.03), "w2": random([learners * h, d], 0.03)]
        for j in 0..<3 {
            let shape = [j == 2 ? learners + 1 : 16, j == 0 ? d : 16]
            tensors["gating_network.net.\(j).weight"] = random(shape, 0.1)
            tensors["gating_network.net.\(j).bias"] = random([shape[0]], 0.1)
        }
        try SafeTensorsFile.write(tensors, to: dir + "/acm.safetensors")
        let acm = try ACMLayer(
            config: config, inputDim: d, outputDim: d,
            weights: Weights(file: try SafeTensorsFile(path: dir + "/acm.safetensors"), precision: precision))
        let workspace = ACMWorkspace()

        print("ACM MLP vs dense MLP: d=\(d), d_ff=\(mlp), N=\(learners), h=\(h), tokens=\(batch)×\(sequence)=\(tokens), workers=\(Parallel.workers), precision=\(fc1.precision), GEMM=\(fc1.precision.kernelName)")
        print("beta  realized  acm_ms  dense_ms  ratio  target   (ms: medians; ratio: median of paired runs)")
        for beta in fractions {
            // Random gates with mean fraction β: k ~ Binomial(N, β) per token.
            let ks: [Int32] = (0..<tokens).map { _ in
                Int32((0..<learners).filter { _ in Double.random(in: 0..<1, using: &rng) < beta }.count)
            }
            let realized = Double(ks.reduce(0) { $0 + Int($1) }) / Double(learners * tokens)
            func gated() {
                // The gate runs as in serving; its argmax is replaced by the drawn choices.
                _ = acm.gateLogits(x.data, tokens: tokens, workspace: workspace)
                ks.withUnsafeBufferPointer {
                    acm.runLearners(x.data, tokens: tokens, choices: $0.baseAddress!, out: out.data, workspace: workspace)
                }
            }
            dense()
            gated()
            var denseTimes: [Double] = [], acmTimes: [Double] = []
            for _ in 0..<reps {
                denseTimes.append(time(dense))
                acmTimes.append(time(gated))
            }
            // Each ACM run is paired with the dense run just before it, so both see the same machine noise;
            // the ratio reported is the median of the paired ratios.
            let ratio = median(zip(acmTimes, denseTimes).map { $0 / $1 })
            let a = median(acmTimes), b = median(denseTimes)
            print(String(format: "%.2f  %.4f    %6.2f  %7.2f   %.3f  ≤ %.2f", beta, realized, a * 1e3, b * 1e3, ratio, beta + 0.05))
            if breakdown {
                let gate = median((0..<reps).map { _ in time { _ = acm.gateLogits(x.data, tokens: tokens, workspace: workspace) } })
                let learners = median((0..<reps).map { _ in
                    time {
                        ks.withUnsafeBufferPointer {
                            acm.runLearners(x.data, tokens: tokens, choices: $0.baseAddress!, out: out.data, workspace: workspace)
                        }
                    }
                })
                print(String(format: "      gate %.2f ms, learners %.2f ms", gate * 1e3, learners * 1e3))
            }
        }
    }
}

func time(_ body: () -> Void) -> Double {
    let start = DispatchTime.now().uptimeNanoseconds
    body()
    return Double(DispatchTime.now().uptimeNanoseconds - start) / 1e9
}

func median(_ xs: [Double]) -> Double {
    let s = xs.sorted()
    return s.count % 2 == 1 ? s[s.count / 2] : (s[s.count / 2 - 1] + s[s.count / 2]) / 2
}

extension Precision: ExpressibleByArgument {}
