import ACMCore
import Foundation

/// A model directory loaded for serving: `config.json` plus `model.safetensors` (docs/model-format.md).
public final class Model: @unchecked Sendable {
    public let directory: String
    public let config: ModelConfig
    public let vit: ViT
    /// What the GEMMs run in: the precision asked for where this CPU has it (`Precision.effective`).
    public let precision: Precision

    /// - Parameter precision: what the GEMMs run in; bf16 falls back to f32 where the CPU has no bfloat16
    ///   instructions (`precision` then says f32).
    public init(directory: String, precision: Precision = .f32) throws {
        self.directory = directory
        config = try ModelConfig.load(path: "\(directory)/config.json")
        guard config.architecture == "vit", let vitConfig = config.vit else {
            throw ModelError.config("architecture '\(config.architecture)' is not supported (vit is), or the 'vit' section is missing")
        }
        if let labels = config.labels, labels.count != vitConfig.numClasses {
            throw ModelError.config("\(labels.count) labels for \(vitConfig.numClasses) classes")
        }
        let file = try SafeTensorsFile(path: "\(directory)/model.safetensors")
        self.precision = precision.effective
        vit = try ViT(config: vitConfig, acm: config.acm, weights: Weights(file: file, precision: self.precision))
    }

    /// The label of class `index`, or its number when the model has no labels.
    public func label(_ index: Int) -> String {
        if let labels = config.labels, labels.indices.contains(index) { return labels[index] }
        return "class \(index)"
    }
}
