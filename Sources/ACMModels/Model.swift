import ACMCore
import Foundation

/// A model directory loaded for serving: `config.json` plus `model.safetensors` (docs/model-format.md).
public final class Model: @unchecked Sendable {
    public let directory: String
    public let config: ModelConfig
    public let vit: ViT

    public init(directory: String) throws {
        self.directory = directory
        config = try ModelConfig.load(path: "\(directory)/config.json")
        guard config.architecture == "vit", let vitConfig = config.vit else {
            throw ModelError.config("architecture '\(config.architecture)' is not supported (vit is), or the 'vit' section is missing")
        }
        if let labels = config.labels, labels.count != vitConfig.numClasses {
            throw ModelError.config("\(labels.count) labels for \(vitConfig.numClasses) classes")
        }
        let file = try SafeTensorsFile(path: "\(directory)/model.safetensors")
        vit = try ViT(config: vitConfig, acm: config.acm, weights: Weights(file: file))
    }

    /// The label of class `index`, or its number when the model has no labels.
    public func label(_ index: Int) -> String {
        if let labels = config.labels, labels.indices.contains(index) { return labels[index] }
        return "class \(index)"
    }
}
