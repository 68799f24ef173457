import ACMCore
import Foundation

/// `config.json` of a model directory (docs/model-format.md).
public struct ModelConfig: Codable, Sendable, ModelConfigHeader {
    public var format: String
    public var formatVersion: Int
    public var architecture: String
    public var vit: ViTConfig?
    /// Module path → ACM settings; modules not listed are dense.
    public var acm: [String: ACMConfig] = [:]
    public var preprocessing: Preprocessing?
    public var labels: [String]?

    enum CodingKeys: String, CodingKey {
        case format
        case formatVersion = "format_version"
        case architecture, vit, acm, preprocessing, labels
    }

    public init(from decoder: any Decoder) throws {
        let c = try decoder.container(keyedBy: CodingKeys.self)
        format = try c.decode(String.self, forKey: .format)
        formatVersion = try c.decode(Int.self, forKey: .formatVersion)
        architecture = try c.decode(String.self, forKey: .architecture)
        vit = try c.decodeIfPresent(ViTConfig.self, forKey: .vit)
        try c.update(&acm, .acm)
        preprocessing = try c.decodeIfPresent(Preprocessing.self, forKey: .preprocessing)
        labels = try c.decodeIfPresent([String].self, forKey: .labels)
    }

    /// Reads and checks `config.json`; every failure names the file and the problem.
    public static func load(path: String) throws -> ModelConfig {
        try loadModelConfig(ModelConfig.self, path: path)
    }
}

/// torchvision `VisionTransformer` arguments, verbatim, plus `num_channels` and `layer_norm_eps`.
public struct ViTConfig: Codable, Sendable, Equatable {
    public var imageSize: Int
    public var patchSize: Int
    public var numChannels: Int
    public var hiddenDim: Int
    public var numLayers: Int
    public var numHeads: Int
    public var mlpDim: Int
    public var numClasses: Int
    public var layerNormEps: Float

    /// `numChannels` and `layerNormEps` as torchvision's defaults: RGB, and its ViT's LayerNorm epsilon.
    public init(
        imageSize: Int, patchSize: Int, numChannels: Int = 3, hiddenDim: Int, numLayers: Int,
        numHeads: Int, mlpDim: Int, numClasses: Int, layerNormEps: Float = 1e-6
    ) {
        self.imageSize = imageSize
        self.patchSize = patchSize
        self.numChannels = numChannels
        self.hiddenDim = hiddenDim
        self.numLayers = numLayers
        self.numHeads = numHeads
        self.mlpDim = mlpDim
        self.numClasses = numClasses
        self.layerNormEps = layerNormEps
    }

    enum CodingKeys: String, CodingKey {
        case imageSize = "image_size"
        case patchSize = "patch_size"
        case numChannels = "num_channels"
        case hiddenDim = "hidden_dim"
        case numLayers = "num_layers"
        case numHeads = "num_heads"
        case mlpDim = "mlp_dim"
        case numClasses = "num_classes"
        case layerNormEps = "layer_norm_eps"
    }

    public init(from decoder: any Decoder) throws {
        let c = try decoder.container(keyedBy: CodingKeys.self)
        self.init(
            imageSize: try c.decode(Int.self, forKey: .imageSize), patchSize: try c.decode(Int.self, forKey: .patchSize),
            hiddenDim: try c.decode(Int.self, forKey: .hiddenDim), numLayers: try c.decode(Int.self, forKey: .numLayers),
            numHeads: try c.decode(Int.self, forKey: .numHeads), mlpDim: try c.decode(Int.self, forKey: .mlpDim),
            numClasses: try c.decode(Int.self, forKey: .numClasses))
        try c.update(&numChannels, .numChannels)
        try c.update(&layerNormEps, .layerNormEps)
    }

    /// Patches per side.
    public var gridSize: Int { imageSize / patchSize }
    /// Tokens per image: the patches plus the class token.
    public var sequenceLength: Int { gridSize * gridSize + 1 }

    func validate() throws {
        let sizes = [imageSize, patchSize, numChannels, hiddenDim, numLayers, numHeads, mlpDim, numClasses]
        guard sizes.allSatisfy({ (1...maxConfigSize).contains($0) }) else {
            throw ModelError.config("vit sizes must be in 1...\(maxConfigSize)")
        }
        guard imageSize % patchSize == 0 else {
            throw ModelError.config("image_size \(imageSize) is not a multiple of patch_size \(patchSize)")
        }
        guard hiddenDim % numHeads == 0 else {
            throw ModelError.config("hidden_dim \(hiddenDim) is not a multiple of num_heads \(numHeads)")
        }
    }
}

/// How the HTTP front end turns an encoded image into the model's input.
public struct Preprocessing: Codable, Sendable, Equatable {
    public enum Color: String, Codable, Sendable { case grey, rgb }
    public var color: Color
    public var resize: Int?
    public var crop: Int?
    public var mean: [Float]
    public var std: [Float]
}
