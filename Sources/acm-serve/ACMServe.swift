import ACMCore
import ACMHTTP
import ACMModels
import ArgumentParser
import Foundation

@main
struct ACMServe: ParsableCommand {
    static func main() {
        reexecWithTunedBLASIfNeeded()
        flushDenormalsToZero()  // before any thread starts, so that every thread inherits it
        Self.main(nil)
    }

    static let configuration = CommandConfiguration(
        commandName: "acm-serve",
        abstract: "An inference server for transformers built from Adaptive Computation Modules.",
        subcommands: [Serve.self, Predict.self, Evaluate.self, Transcribe.self, Version.self])
}

/// A `--budget` or `--default-budget` argument: a number that `ComputeBudget` accepts.
func parseBudget(_ text: String) throws -> ComputeBudget {
    guard let value = Double(text) else { throw ValidationError("'\(text)' is not a number") }
    do {
        return try ComputeBudget(value)
    } catch {
        throw ValidationError(error.description)
    }
}

extension Precision: ExpressibleByArgument {}

/// What the GEMMs run in, from the command line.
struct PrecisionOption: ParsableArguments {
    @Option(help: "What the GEMMs run in: f32, or bf16 where the CPU has AVX-512 BF16 (else f32, with a note).")
    var precision: Precision = .f32

    /// Tells on standard error when `precision` is not what the model runs in.
    func noteFallback(_ effective: Precision) {
        if effective != precision {
            FileHandle.standardError.write(Data("note: \(precision) unavailable (\(BF16.description)); running \(effective)\n".utf8))
        }
    }
}

/// How learner counts are chosen, from the command line (docs/compute-budget.md).
struct PolicyOptions: ParsableArguments {
    @Option(
        help: "Compute budget β in (0, 1]: cap each image's learners at β of the ACM layers' full cost.",
        transform: parseBudget)
    var budget: ComputeBudget?

    @Option(name: .customLong("uniform-k"), help: "Run exactly k learners for every token (the static baseline).")
    var uniformK: Int?

    @Flag(help: "Run every learner.")
    var full = false

    func validate() throws {
        if [budget != nil, uniformK != nil, full].filter({ $0 }).count > 1 {
            throw ValidationError("choose at most one of --budget, --uniform-k and --full")
        }
        if let uniformK, uniformK < 0 { throw ValidationError("--uniform-k must be ≥ 0") }
    }

    var policy: LearnerPolicy {
        if let budget { return .cap(budget) }
        if let uniformK { return .uniform(uniformK) }
        return full ? .full : .auto
    }
}

struct Predict: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Classify images from a .npy file and print the top classes and the compute used.")

    @Option(help: "Model directory (config.json + model.safetensors).")
    var model: String

    @Option(help: "float32 .npy input, [C, H, W] or [N, C, H, W], already preprocessed.")
    var input: String

    @OptionGroup var policy: PolicyOptions
    @OptionGroup var precision: PrecisionOption

    @Option(help: "How many classes to print per image.")
    var top = 5

    func run() throws {
        let model: Model
        let images: Tensor
        do {
            model = try Model(directory: self.model, precision: precision.precision)
            images = try Npy.read(path: input)
        } catch let error as ModelError {
            throw ValidationError(error.description)
        }
        precision.noteFallback(model.precision)
        let cfg = model.vit.config
        let imageShape = [cfg.numChannels, cfg.imageSize, cfg.imageSize]
        let count: Int
        if images.shape == imageShape {
            count = 1
        } else if images.shape.count == 4, Array(images.shape.dropFirst()) == imageShape {
            count = images.shape[0]
        } else {
            throw ValidationError("input has shape \(images.shape); the model takes \(imageShape) or [N] + \(imageShape)")
        }
        let output = model.vit.forward(
            images: images.data, count: count, policies: Array(repeating: policy.policy, count: count),
            workspace: ViTWorkspace())
        for b in 0..<count {
            let logits = Array(UnsafeBufferPointer(start: output.logits.row(b), count: cfg.numClasses))
            let m = logits.max() ?? 0
            let e = logits.map { Foundation.exp(Double($0 - m)) }
            let total = e.reduce(0, +)
            print("image \(b): compute fraction \(String(format: "%.4f", output.computeFraction[b])) (\(policy.policy))")
            let ranked = logits.indices.sorted { logits[$0] > logits[$1] }.prefix(top)
            for (rank, c) in ranked.enumerated() {
                let name = model.label(c).padding(toLength: 20, withPad: " ", startingAt: 0)
                print("  \(rank + 1). \(name) p=\(String(format: "%.4f", e[c] / total))  logit=\(String(format: "%.4f", logits[c]))  (class \(c))")
            }
        }
    }
}

struct Version: ParsableCommand {
    static let configuration = CommandConfiguration(abstract: "Print the versions of acm-serve and its C libraries.")

    func run() {
        print("acm-serve 0.1.0")
        print("libmicrohttpd \(microhttpdVersion)")
        print("jansson \(janssonVersion)")
        print("GEMM kernels: \(gemmKernelName)")
        print("bf16 GEMM: \(BF16.description)")
        print("cores: \(availableCores()) (the compute threads' default: the CPU affinity mask, capped by a cgroup CPU quota)")
    }
}
