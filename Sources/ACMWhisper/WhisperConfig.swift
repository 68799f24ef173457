import ACMCore
import Foundation

/// `config.json` of a Whisper model directory (docs/whisper.md): architecture "whisper".
public struct WhisperModelConfig: Decodable, Sendable, ModelConfigHeader {
    public var format: String
    public var formatVersion: Int
    public var architecture: String
    public var whisper: WhisperConfig
    /// Module path (`model.encoder.layers.{i}`, `model.decoder.layers.{i}`) → ACM settings of that
    /// layer's MLP; layers not listed are dense.
    public var acm: [String: ACMConfig] = [:]
    public var generation: GenerationConfig

    enum CodingKeys: String, CodingKey {
        case format
        case formatVersion = "format_version"
        case architecture, whisper, acm, generation
    }

    public init(from decoder: any Decoder) throws {
        let c = try decoder.container(keyedBy: CodingKeys.self)
        format = try c.decode(String.self, forKey: .format)
        formatVersion = try c.decode(Int.self, forKey: .formatVersion)
        architecture = try c.decode(String.self, forKey: .architecture)
        whisper = try c.decode(WhisperConfig.self, forKey: .whisper)
        try c.update(&acm, .acm)
        generation = try c.decode(GenerationConfig.self, forKey: .generation)
    }

    /// Reads and checks `config.json`; every failure names the file and the problem.
    public static func load(path: String) throws -> WhisperModelConfig {
        let config = try loadModelConfig(WhisperModelConfig.self, path: path, architecture: "whisper")
        try config.whisper.validate()
        try config.generation.validate(config.whisper)
        return config
    }
}

/// Hugging Face `WhisperConfig` fields, verbatim names.
public struct WhisperConfig: Codable, Sendable, Equatable {
    public var numMelBins: Int
    public var dModel: Int
    public var encoderLayers: Int
    public var encoderAttentionHeads: Int
    public var decoderLayers: Int
    public var decoderAttentionHeads: Int
    public var encoderFfnDim: Int
    public var decoderFfnDim: Int
    /// Encoder positions: the conv stack halves 2·this many log-mel frames to this many.
    public var maxSourcePositions: Int
    public var maxTargetPositions: Int
    public var vocabSize: Int
    public var layerNormEps: Float

    public init(
        numMelBins: Int, dModel: Int, encoderLayers: Int, encoderAttentionHeads: Int, decoderLayers: Int,
        decoderAttentionHeads: Int, encoderFfnDim: Int, decoderFfnDim: Int, maxSourcePositions: Int,
        maxTargetPositions: Int, vocabSize: Int, layerNormEps: Float = defaultLayerNormEps
    ) {
        self.numMelBins = numMelBins
        self.dModel = dModel
        self.encoderLayers = encoderLayers
        self.encoderAttentionHeads = encoderAttentionHeads
        self.decoderLayers = decoderLayers
        self.decoderAttentionHeads = decoderAttentionHeads
        self.encoderFfnDim = encoderFfnDim
        self.decoderFfnDim = decoderFfnDim
        self.maxSourcePositions = maxSourcePositions
        self.maxTargetPositions = maxTargetPositions
        self.vocabSize = vocabSize
        self.layerNormEps = layerNormEps
    }

    enum CodingKeys: String, CodingKey {
        case numMelBins = "num_mel_bins"
        case dModel = "d_model"
        case encoderLayers = "encoder_layers"
        case encoderAttentionHeads = "encoder_attention_heads"
        case decoderLayers = "decoder_layers"
        case decoderAttentionHeads = "decoder_attention_heads"
        case encoderFfnDim = "encoder_ffn_dim"
        case decoderFfnDim = "decoder_ffn_dim"
        case maxSourcePositions = "max_source_positions"
        case maxTargetPositions = "max_target_positions"
        case vocabSize = "vocab_size"
        case layerNormEps = "layer_norm_eps"
    }

    public init(from decoder: any Decoder) throws {
        let c = try decoder.container(keyedBy: CodingKeys.self)
        numMelBins = try c.decode(Int.self, forKey: .numMelBins)
        dModel = try c.decode(Int.self, forKey: .dModel)
        encoderLayers = try c.decode(Int.self, forKey: .encoderLayers)
        encoderAttentionHeads = try c.decode(Int.self, forKey: .encoderAttentionHeads)
        decoderLayers = try c.decode(Int.self, forKey: .decoderLayers)
        decoderAttentionHeads = try c.decode(Int.self, forKey: .decoderAttentionHeads)
        encoderFfnDim = try c.decode(Int.self, forKey: .encoderFfnDim)
        decoderFfnDim = try c.decode(Int.self, forKey: .decoderFfnDim)
        maxSourcePositions = try c.decode(Int.self, forKey: .maxSourcePositions)
        maxTargetPositions = try c.decode(Int.self, forKey: .maxTargetPositions)
        vocabSize = try c.decode(Int.self, forKey: .vocabSize)
        layerNormEps = Self.defaultLayerNormEps
        try c.update(&layerNormEps, .layerNormEps)
    }

    /// Hugging Face's `layer_norm_eps` default for Whisper.
    public static let defaultLayerNormEps: Float = 1e-5

    /// Log-mel frames the encoder takes: two per encoder position (conv2 has stride 2).
    public var inputFrames: Int { 2 * maxSourcePositions }

    func validate() throws {
        let sizes = [
            numMelBins, dModel, encoderLayers, encoderAttentionHeads, decoderLayers, decoderAttentionHeads,
            encoderFfnDim, decoderFfnDim, maxSourcePositions, maxTargetPositions, vocabSize,
        ]
        guard sizes.allSatisfy({ (1...maxConfigSize).contains($0) }) else {
            throw ModelError.config("whisper sizes must be in 1...\(maxConfigSize)")
        }
        guard dModel % encoderAttentionHeads == 0, dModel % decoderAttentionHeads == 0 else {
            throw ModelError.config("d_model \(dModel) is not a multiple of the attention head counts")
        }
    }
}

/// How decoding starts, what it may not emit, when it stops (Whisper's English-only rules), and when a
/// window is decoded again at a higher temperature (openai-whisper's fallback, docs/whisper.md#decoding).
public struct GenerationConfig: Codable, Sendable, Equatable {
    public var decoderStartTokenId: Int
    public var eosTokenId: Int
    public var noTimestampsTokenId: Int
    /// The tokens every sequence starts from: `<|startoftranscript|><|notimestamps|>` for tiny.en.
    public var prompt: [Int]
    /// Never emitted.
    public var suppressTokens: [Int]
    /// Not emitted as the first generated token (a blank, or an immediate end).
    public var beginSuppressTokens: [Int]
    /// Generated tokens at most, the end token included.
    public var maxNewTokens: Int
    /// The temperatures a window is sampled at, in turn, while its greedy decoding (and each sample
    /// before) fails a check below; empty: greedy only. openai-whisper's 0.2, 0.4, …, 1.0 by default.
    public var temperatureFallback: [Double]
    /// Decode again when the text's compression ratio (`DecodedWindow.compressionRatio`) is above this:
    /// a repetition loop. nil: no such check. 2.4 by default, as openai-whisper.
    public var compressionRatioThreshold: Double?
    /// Decode again when the average log-probability of the tokens is below this. nil (the default): no
    /// such check.
    public var logprobThreshold: Double?

    public static let defaultTemperatureFallback: [Double] = [0.2, 0.4, 0.6, 0.8, 1.0]
    public static let defaultCompressionRatioThreshold = 2.4

    public init(
        decoderStartTokenId: Int, eosTokenId: Int, noTimestampsTokenId: Int, prompt: [Int],
        suppressTokens: [Int], beginSuppressTokens: [Int], maxNewTokens: Int,
        temperatureFallback: [Double] = Self.defaultTemperatureFallback,
        compressionRatioThreshold: Double? = Self.defaultCompressionRatioThreshold, logprobThreshold: Double? = nil
    ) {
        self.decoderStartTokenId = decoderStartTokenId
        self.eosTokenId = eosTokenId
        self.noTimestampsTokenId = noTimestampsTokenId
        self.prompt = prompt
        self.suppressTokens = suppressTokens
        self.beginSuppressTokens = beginSuppressTokens
        self.maxNewTokens = maxNewTokens
        self.temperatureFallback = temperatureFallback
        self.compressionRatioThreshold = compressionRatioThreshold
        self.logprobThreshold = logprobThreshold
    }

    enum CodingKeys: String, CodingKey {
        case decoderStartTokenId = "decoder_start_token_id"
        case eosTokenId = "eos_token_id"
        case noTimestampsTokenId = "no_timestamps_token_id"
        case prompt
        case suppressTokens = "suppress_tokens"
        case beginSuppressTokens = "begin_suppress_tokens"
        case maxNewTokens = "max_new_tokens"
        case temperatureFallback = "temperature_fallback"
        case compressionRatioThreshold = "compression_ratio_threshold"
        case logprobThreshold = "logprob_threshold"
    }

    /// The fallback's keys may be absent (the defaults) or null (no such check), so configs written
    /// before the fallback existed decode unchanged.
    public init(from decoder: any Decoder) throws {
        let c = try decoder.container(keyedBy: CodingKeys.self)
        decoderStartTokenId = try c.decode(Int.self, forKey: .decoderStartTokenId)
        eosTokenId = try c.decode(Int.self, forKey: .eosTokenId)
        noTimestampsTokenId = try c.decode(Int.self, forKey: .noTimestampsTokenId)
        prompt = try c.decode([Int].self, forKey: .prompt)
        suppressTokens = try c.decode([Int].self, forKey: .suppressTokens)
        beginSuppressTokens = try c.decode([Int].self, forKey: .beginSuppressTokens)
        maxNewTokens = try c.decode(Int.self, forKey: .maxNewTokens)
        temperatureFallback =
            try c.decodeIfPresent([Double].self, forKey: .temperatureFallback) ?? Self.defaultTemperatureFallback
        compressionRatioThreshold =
            c.contains(.compressionRatioThreshold)
            ? try c.decodeIfPresent(Double.self, forKey: .compressionRatioThreshold)
            : Self.defaultCompressionRatioThreshold
        logprobThreshold = try c.decodeIfPresent(Double.self, forKey: .logprobThreshold)
    }

    public func encode(to encoder: any Encoder) throws {
        var c = encoder.container(keyedBy: CodingKeys.self)
        try c.encode(decoderStartTokenId, forKey: .decoderStartTokenId)
        try c.encode(eosTokenId, forKey: .eosTokenId)
        try c.encode(noTimestampsTokenId, forKey: .noTimestampsTokenId)
        try c.encode(prompt, forKey: .prompt)
        try c.encode(suppressTokens, forKey: .suppressTokens)
        try c.encode(beginSuppressTokens, forKey: .beginSuppressTokens)
        try c.encode(maxNewTokens, forKey: .maxNewTokens)
        try c.encode(temperatureFallback, forKey: .temperatureFallback)
        try c.encode(compressionRatioThreshold, forKey: .compressionRatioThreshold)
        try c.encode(logprobThreshold, forKey: .logprobThreshold)
    }

    func validate(_ model: WhisperConfig) throws {
        let vocab = 0..<model.vocabSize
        let ids = [decoderStartTokenId, eosTokenId, noTimestampsTokenId] + prompt + suppressTokens + beginSuppressTokens
        if let bad = ids.first(where: { !vocab.contains($0) }) {
            throw ModelError.config("generation: token id \(bad) is outside the vocabulary 0..<\(model.vocabSize)")
        }
        guard !prompt.isEmpty else { throw ModelError.config("generation: prompt is empty") }
        // Subtracted, not added: max_new_tokens can be any Int (the model's sizes are validated).
        guard maxNewTokens >= 1, maxNewTokens <= model.maxTargetPositions - prompt.count else {
            throw ModelError.config(
                "generation: \(prompt.count) prompt tokens + max_new_tokens \(maxNewTokens) must fit in max_target_positions \(model.maxTargetPositions)")
        }
        guard temperatureFallback.allSatisfy({ $0 > 0 && $0 <= 10 }), zip(temperatureFallback, temperatureFallback.dropFirst()).allSatisfy({ $0 < $1 })
        else {
            throw ModelError.config("generation: temperature_fallback must rise, each in (0, 10]; got \(temperatureFallback)")
        }
        guard (compressionRatioThreshold.map { $0.isFinite && $0 > 0 } ?? true), (logprobThreshold?.isFinite ?? true) else {
            throw ModelError.config("generation: compression_ratio_threshold must be positive and logprob_threshold finite")
        }
    }
}
