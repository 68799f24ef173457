// Whisper, an encoder-decoder speech recogniser, with MLPs that may be ACMs.
// Mirrors Hugging Face's WhisperForConditionalGeneration
// (https://github.com/huggingface/transformers/blob/v4.46.3/src/transformers/models/whisper/modeling_whisper.py):
// two convolutions and pre-norm encoder layers; pre-norm decoder layers with causal self-attention and
// cross-attention; k_proj without bias; logits tied to embed_tokens (no proj_out); no embedding scale.

import ACMCore

/// `self_attn`, `encoder_attn`: d → d projections; q is scaled by 1/√head_dim inside the attention.
struct Attention {
    let q: Linear  // q_proj
    let k: Linear  // k_proj (no bias)
    let v: Linear  // v_proj
    let out: Linear  // out_proj

    /// `keepHalf`: the decoder's, which runs a row per utterance and step (see `Linear`).
    init(dim d: Int, weights: Weights, keepHalf: Bool) throws {
        q = try Linear(inputs: d, outputs: d, weights: weights.scoped("q_proj"), keepHalf: keepHalf)
        k = try Linear(inputs: d, outputs: d, weights: weights.scoped("k_proj"), bias: false, keepHalf: keepHalf)
        v = try Linear(inputs: d, outputs: d, weights: weights.scoped("v_proj"), keepHalf: keepHalf)
        out = try Linear(inputs: d, outputs: d, weights: weights.scoped("out_proj"), keepHalf: keepHalf)
    }
}

/// `model.encoder.layers.{i}` or `model.decoder.layers.{i}`: the two differ only in the decoder's
/// cross-attention (as in candle's `ResidualAttentionBlock`).
struct Layer {
    let selfAttnLayerNorm: LayerNorm  // self_attn_layer_norm
    let selfAttn: Attention  // self_attn
    /// A decoder layer's; nil in the encoder.
    let cross: CrossAttention?
    let finalLayerNorm: LayerNorm  // final_layer_norm
    /// `fc1` (d → ffn), exact GELU, `fc2` (ffn → d); or the ACM at the layer's own path, its weights
    /// `w1`, `w2`, … there.
    let mlp: DenseOrACM

    struct CrossAttention {
        let layerNorm: LayerNorm  // encoder_attn_layer_norm
        let attention: Attention  // encoder_attn
    }

    init(dim d: Int, eps: Float, crossAttention: Bool, weights w: Weights, mlp: DenseOrACM) throws {
        selfAttnLayerNorm = try LayerNorm(dim: d, eps: eps, weights: w.scoped("self_attn_layer_norm"))
        // a decoder layer (the one with cross-attention) runs a row per utterance and step: it keeps F16 weights
        selfAttn = try Attention(dim: d, weights: w.scoped("self_attn"), keepHalf: crossAttention)
        cross = crossAttention
            ? CrossAttention(
                layerNorm: try LayerNorm(dim: d, eps: eps, weights: w.scoped("encoder_attn_layer_norm")),
                attention: try Attention(dim: d, weights: w.scoped("encoder_attn"), keepHalf: true))
            : nil
        finalLayerNorm = try LayerNorm(dim: d, eps: eps, weights: w.scoped("final_layer_norm"))
        self.mlp = mlp
    }
}

/// The scratch buffers of the encoder and the decoder steps, kept by the caller (the model's loop
/// thread) and reused.
public final class WhisperWorkspace: @unchecked Sendable {
    let columns = Scratch(), conv = Scratch()
    let x = Scratch(), normed = Scratch(), q = Scratch(), k = Scratch(), v = Scratch()
    let attended = Scratch(), blockOut = Scratch(), hidden = Scratch()
    let scores = WorkerScratch()
    let layers = ACMWorkspace()

    public init() {}
}

/// The decoder's state for a batch of utterances, one slot each: the self-attention keys and values
/// of the tokens so far (the KV cache), and the cross-attention keys and values, computed once from
/// the encoder output. Finished slots are simply no longer stepped.
public final class WhisperDecoderState: @unchecked Sendable {
    public let slots: Int
    /// Per decoder layer, [slots, max_target_positions, d].
    let selfK: [Tensor], selfV: [Tensor]
    /// Per decoder layer, [slots, max_source_positions, d].
    let crossK: [Tensor], crossV: [Tensor]
    /// Tokens in each slot's cache.
    public internal(set) var lengths: [Int]

    init(selfK: [Tensor], selfV: [Tensor], crossK: [Tensor], crossV: [Tensor], slots: Int) {
        self.slots = slots
        self.selfK = selfK
        self.selfV = selfV
        self.crossK = crossK
        self.crossV = crossV
        lengths = Array(repeating: 0, count: slots)
    }
}

public final class Whisper: @unchecked Sendable {
    public let config: WhisperConfig
    /// Module path of each ACM, in execution order (encoder layers, then decoder layers).
    public let acmPaths: [String]
    /// Each ACM, in `acmPaths` order.
    public let acms: [ACMLayer]
    /// How a request's cap is spread over `acms` (docs/compute-budget.md): by budget share and cost
    /// per token, as for the ViT, whether an ACM runs in the encoder or at every decoder step.
    let budgetSplit: BudgetSplit
    /// What the GEMMs run in (the weights' precision, `Weights.precision`).
    public let precision: Precision
    let conv1Weight: GEMMWeight  // model.encoder.conv1.weight [d, mel, 3], kept transposed as [mel·3, d]
    let conv1Bias: Tensor  // model.encoder.conv1.bias [d]
    let conv2Weight: GEMMWeight  // model.encoder.conv2.weight [d, d, 3], kept transposed as [d·3, d]
    let conv2Bias: Tensor  // model.encoder.conv2.bias [d]
    let encoderPositions: Tensor  // model.encoder.embed_positions.weight [S, d]
    let encoderLayers: [Layer]  // model.encoder.layers.{i}
    let encoderLayerNorm: LayerNorm  // model.encoder.layer_norm
    let embedTokens: TokenEmbedding  // model.decoder.embed_tokens.weight [vocab, d], also the output projection
    let decoderPositions: Tensor  // model.decoder.embed_positions.weight [max_target_positions, d]
    let decoderLayers: [Layer]  // model.decoder.layers.{i}
    let decoderLayerNorm: LayerNorm  // model.decoder.layer_norm

    /// Builds the model from its config and weights; every tensor in `weights.file` must be used.
    public init(config: WhisperConfig, acm: [String: ACMConfig], weights: Weights) throws {
        try config.validate()
        let d = config.dModel, eps = config.layerNormEps
        let encoderNames = (0..<config.encoderLayers).map { "model.encoder.layers.\($0)" }
        let decoderNames = (0..<config.decoderLayers).map { "model.decoder.layers.\($0)" }
        var acms = try ModelACMs(
            configs: acm, modules: Set(encoderNames + decoderNames),
            noun: "a layer of this Whisper (model.{encoder,decoder}.layers.{i})")
        /// The layer at `path`, its MLP the ACM the config names there, else dense `fc1`/`fc2`.
        func layer(_ path: String, ffn: Int, crossAttention: Bool) throws -> Layer {
            let w = weights.scoped(path)
            let mlp = try acms.layer(at: path, dim: d, weights: weights)
                ?? .mlp(try DenseMLP(dim: d, hidden: ffn, weights: w, fc1: "fc1", fc2: "fc2", keepHalf: crossAttention))
            return try Layer(dim: d, eps: eps, crossAttention: crossAttention, weights: w, mlp: mlp)
        }

        let encoder = weights.scoped("model.encoder")
        let conv1Weight = try encoder.tensor("conv1.weight", shape: [d, config.numMelBins, 3])
        let conv1Bias = try encoder.tensor("conv1.bias", shape: [d])
        let conv2Weight = try encoder.tensor("conv2.weight", shape: [d, d, 3])
        let conv2Bias = try encoder.tensor("conv2.bias", shape: [d])
        let encoderPositions = try encoder.tensor("embed_positions.weight", shape: [config.maxSourcePositions, d])
        let encoderLayers = try encoderNames.map { try layer($0, ffn: config.encoderFfnDim, crossAttention: false) }
        let encoderLayerNorm = try LayerNorm(dim: d, eps: eps, weights: encoder.scoped("layer_norm"))

        let decoder = weights.scoped("model.decoder")
        let embedTokens = try TokenEmbedding(decoder, "embed_tokens.weight", shape: [config.vocabSize, d])
        let decoderPositions = try decoder.tensor("embed_positions.weight", shape: [config.maxTargetPositions, d])
        let decoderLayers = try decoderNames.map { try layer($0, ffn: config.decoderFfnDim, crossAttention: true) }
        let decoderLayerNorm = try LayerNorm(dim: d, eps: eps, weights: decoder.scoped("layer_norm"))
        try weights.file.checkAllUsed()

        self.config = config
        self.acmPaths = acms.paths
        self.acms = acms.layers
        self.budgetSplit = BudgetSplit(paths: acms.paths, acms: acms.layers)
        self.precision = weights.precision
        self.conv1Weight = GEMMWeight(conv1Weight.transposed(), precision: weights.precision)
        self.conv1Bias = conv1Bias
        self.conv2Weight = GEMMWeight(conv2Weight.transposed(), precision: weights.precision)
        self.conv2Bias = conv2Bias
        self.encoderPositions = encoderPositions
        self.encoderLayers = encoderLayers
        self.encoderLayerNorm = encoderLayerNorm
        self.embedTokens = embedTokens
        self.decoderPositions = decoderPositions
        self.decoderLayers = decoderLayers
        self.decoderLayerNorm = decoderLayerNorm
    }

    /// Floats of one log-mel input: [num_mel_bins, 2·max_source_positions].
    public var inputCount: Int { config.numMelBins * config.inputFrames }

    // MARK: - Encoder

    /// How many of the encoder's frames see the audio of a log-mel spectrogram [num_mel_bins, 2S], not only
    /// the padding after it (docs/compute-budget.md, "Audio before padding").
    ///
    /// Padding is the run of trailing columns whose every bin is the spectrogram's least value: Whisper's
    /// log-mel of zero samples, clamped to the maximum − 8 and then scaled as every column is. Encoder frame
    /// t reads log-mel columns 2t − 2 … 2t + 2 (two convolutions of width 3, the second of stride 2), so
    /// with audio in columns 0 ..< c the first ⌊(c + 1) / 2⌋ + 1 frames see it (none for c = 0, all S for c = 2S).
    public func contentFrames(logMel: UnsafePointer<Float>) -> Int {
        let mels = config.numMelBins, frames = config.inputFrames
        var least = Float.infinity
        for i in 0..<(mels * frames) { least = min(least, logMel[i]) }
        var audio = frames  // columns 0 ..< audio hold audio: the last one with a bin above `least`, plus one
        while audio > 0 && (0..<mels).allSatisfy({ logMel[$0 * frames + audio - 1] == least }) { audio -= 1 }
        return audio == 0 ? 0 : min(config.maxSourcePositions, (audio + 1) / 2 + 1)
    }

    /// The encoder over a batch of log-mel spectrograms.
    ///
    /// - Parameters:
    ///   - logMels: [count, num_mel_bins, 2·S], S = max_source_positions (3000 frames for Whisper).
    ///   - policies: each utterance's learner policy at the ACM MLPs (ignored by dense ones).
    ///   - learners: where the ACMs count their learners, utterance b as item `items[b]` (default b).
    /// - Returns: [count·S, d], utterance b in rows b·S..<(b+1)·S.
    public func encode(
        logMels: UnsafePointer<Float>, count: Int, policies: [LearnerPolicy], workspace ws: WhisperWorkspace,
        learners: LearnerCounts? = nil, items: [Int]? = nil
    ) -> Tensor {
        precondition(policies.count == count)
        let acmPolicies = budgetSplit.layerPolicies(policies)
        let d = config.dModel, mels = config.numMelBins, s = config.maxSourcePositions, frames = config.inputFrames
        let tokens = count * s
        let sequences = (0..<count).map { $0 * s..<($0 + 1) * s }

        // conv1 (k 3, pad 1) by im2col: row (b, t), column c·3 + j holds mel[b, c, t + j − 1]
        let columns1 = ws.columns.reserve(count * frames * mels * 3)
        for b in 0..<count {
            let mel = logMels + b * mels * frames
            for t in 0..<frames {
                let row = columns1 + (b * frames + t) * mels * 3
                for c in 0..<mels {
                    for j in 0..<3 {
                        let source = t + j - 1
                        row[c * 3 + j] = source >= 0 && source < frames ? mel[c * frames + source] : 0
                    }
                }
            }
        }
        // [count·2S, mel·3] × [mel·3, d], then GELU(· + bias)
        let h = ws.conv.reserve(count * frames * d)
        Parallel.forEachChunk(count * frames) { _, r in
            conv1Weight.multiply(m: r.count, a: columns1 + r.lowerBound * mels * 3, lda: mels * 3, c: h + r.lowerBound * d, ldc: d)
            Activation.gelu.apply(h + r.lowerBound * d, rows: r.count, columns: d, bias: conv1Bias.data)
        }

        // conv2 (k 3, stride 2, pad 1): row (b, t), column c·3 + j holds h[b, 2t + j − 1, c]
        let columns2 = ws.columns.reserve(tokens * d * 3)
        for b in 0..<count {
            for t in 0..<s {
                let row = columns2 + (b * s + t) * d * 3
                for j in 0..<3 {
                    let source = 2 * t + j - 1
                    if source >= 0 && source < frames {
                        let hRow = h + (b * frames + source) * d
                        for c in 0..<d { row[c * 3 + j] = hRow[c] }
                    } else {
                        for c in 0..<d { row[c * 3 + j] = 0 }
                    }
                }
            }
        }
        // [count·S, d·3] × [d·3, d], then GELU(· + bias), + embed_positions
        let x = ws.x.reserve(tokens * d)
        Parallel.forEachChunk(tokens) { _, r in
            conv2Weight.multiply(m: r.count, a: columns2 + r.lowerBound * d * 3, lda: d * 3, c: x + r.lowerBound * d, ldc: d)
            Activation.gelu.apply(x + r.lowerBound * d, rows: r.count, columns: d, bias: conv2Bias.data)
            for row in r {
                let pos = encoderPositions.data + (row % s) * d
                let xr = x + row * d
                for c in 0..<d { xr[c] += pos[c] }
            }
        }

        // under a cap, each window's audio is served before its padding
        let capped = !acms.isEmpty && policies.contains { if case .cap = $0 { true } else { false } }
        let content = capped ? (0..<count).map { contentFrames(logMel: logMels + $0 * mels * frames) } : nil

        let normed = ws.normed.reserve(tokens * d)
        let q = ws.q.reserve(tokens * d), k = ws.k.reserve(tokens * d), v = ws.v.reserve(tokens * d)
        let attended = ws.attended.reserve(tokens * d)
        let heads = config.encoderAttentionHeads
        for layer in encoderLayers {
            // self-attention: x = x + out(attention(q, k, v)) on self_attn_layer_norm(x)
            layer.selfAttnLayerNorm.forward(x, rows: tokens, out: normed)
            layer.selfAttn.q.forward(normed, rows: tokens, out: q)
            layer.selfAttn.k.forward(normed, rows: tokens, out: k)
            layer.selfAttn.v.forward(normed, rows: tokens, out: v)
            multiHeadAttention(
                q: q, k: k, v: v, ld: d, out: attended, ldOut: d,
                sequences: sequences, heads: heads, headDim: d / heads, scores: ws.scores, precision: precision)
            layer.selfAttn.out.forward(attended, rows: tokens, out: x, accumulate: true)

            // mlp: x = x + fc2(gelu(fc1(final_layer_norm(x))))
            layer.finalLayerNorm.forward(x, rows: tokens, out: normed)
            layer.mlp.forward(
                normed, sequences: sequences, policies: layer.mlp.acmIndex.map { acmPolicies[$0] } ?? policies,
                servedFirst: content, out: x, accumulate: true, workspace: ws.layers, learners: learners, items: items)
        }
        let encoded = Tensor(shape: [tokens, d])
        encoderLayerNorm.forward(x, rows: tokens, out: encoded.data)
        return encoded
    }

    // MARK: - Decoder

    /// A decoder state for `count` utterances, with each decoder layer's cross-attention keys and values
    /// computed from `encoded` ([count·S, d], from `encode`).
    public func makeDecoderState(encoded: Tensor, count: Int) -> WhisperDecoderState {
        let d = config.dModel, s = config.maxSourcePositions, t = config.maxTargetPositions
        precondition(encoded.shape == [count * s, d])
        var crossK: [Tensor] = [], crossV: [Tensor] = []
        for layer in decoderLayers {
            // [count·S, d] × [d, d], once per utterance rather than once per step
            let k = Tensor(shape: [count, s, d]), v = Tensor(shape: [count, s, d])
            layer.cross!.attention.k.forward(encoded.data, rows: count * s, out: k.data)
            layer.cross!.attention.v.forward(encoded.data, rows: count * s, out: v.data)
            crossK.append(k)
            crossV.append(v)
        }
        return WhisperDecoderState(
            selfK: decoderLayers.map { _ in Tensor(shape: [count, t, d]) },
            selfV: decoderLayers.map { _ in Tensor(shape: [count, t, d]) },
            crossK: crossK, crossV: crossV, slots: count)
    }

    /// One decoder pass over new tokens of some slots: appends them to those slots' caches and returns
    /// the logits of each slot's last new token.
    ///
    /// - Parameters:
    ///   - tokens: `tokens[i]` (at least one) continue slot `slots[i]`, at positions
    ///     `state.lengths[slots[i]]...`. All rows of all slots run through each GEMM together.
    ///   - policies: each slot's learner policy at the ACM MLPs, indexed by slot.
    ///   - learners: where the ACMs count their learners, the utterance in slot i as item `items[i]`
    ///     (default i).
    /// - Returns: [slots.count, vocab_size].
    public func decode(
        tokens: [[Int]], slots: [Int], state: WhisperDecoderState, policies: [LearnerPolicy],
        workspace ws: WhisperWorkspace, learners: LearnerCounts? = nil, items: [Int]? = nil
    ) -> Tensor {
        precondition(tokens.count == slots.count && policies.count == state.slots)
        let d = config.dModel, maxT = config.maxTargetPositions, s = config.maxSourcePositions
        let heads = config.decoderAttentionHeads, headDim = d / heads
        var sequences: [Range<Int>] = []
        var rows = 0
        for (i, slot) in slots.enumerated() {
            precondition(!tokens[i].isEmpty && state.lengths[slot] + tokens[i].count <= maxT)
            sequences.append(rows..<rows + tokens[i].count)
            rows += tokens[i].count
        }
        let rowPolicies = slots.map { policies[$0] }
        // each slot's policy at each ACM: a cap spread over the ACMs as for the ViT
        let acmPolicies = budgetSplit.layerPolicies(rowPolicies)

        // token embedding + learned position
        let x = ws.x.reserve(rows * d)
        for (i, slot) in slots.enumerated() {
            for (j, token) in tokens[i].enumerated() {
                precondition((0..<config.vocabSize).contains(token), "token id \(token) outside the vocabulary")
                let row = x + (sequences[i].lowerBound + j) * d
                embedTokens.row(token, into: row)
                let p = decoderPositions.data + (state.lengths[slot] + j) * d
                for c in 0..<d { row[c] += p[c] }
            }
        }

        let normed = ws.normed.reserve(rows * d)
        let q = ws.q.reserve(rows * d), k = ws.k.reserve(rows * d), v = ws.v.reserve(rows * d)
        let attended = ws.attended.reserve(rows * d), blockOut = ws.blockOut.reserve(rows * d)
        // each slot's keys: its cache, up to and including the new tokens; its encoder output
        let cachedKeys = slots.indices.map { i in
            slots[i] * maxT..<slots[i] * maxT + state.lengths[slots[i]] + sequences[i].count
        }
        let encoderKeys = slots.map { $0 * s..<($0 + 1) * s }
        for (l, layer) in decoderLayers.enumerated() {
            // self-attention over the cache and the new tokens, causal
            let attention = layer.selfAttn
            layer.selfAttnLayerNorm.forward(x, rows: rows, out: normed)
            attention.q.forward(normed, rows: rows, out: q, fewRows: .splitColumns)
            attention.k.forward(normed, rows: rows, out: k, fewRows: .splitColumns)
            attention.v.forward(normed, rows: rows, out: v, fewRows: .splitColumns)
            let cacheK = state.selfK[l], cacheV = state.selfV[l]
            for (i, slot) in slots.enumerated() {
                let at = (slot * maxT + state.lengths[slot]) * d
                (cacheK.data + at).update(from: k + sequences[i].lowerBound * d, count: sequences[i].count * d)
                (cacheV.data + at).update(from: v + sequences[i].lowerBound * d, count: sequences[i].count * d)
            }
            multiHeadAttention(
                q: q, k: cacheK.data, v: cacheV.data, ld: d, out: attended, ldOut: d,
                sequences: sequences, keys: cachedKeys, causal: true, heads: heads, headDim: headDim,
                scores: ws.scores)
            attention.out.forward(attended, rows: rows, out: blockOut, fewRows: .splitColumns)
            addInPlace(x, blockOut, count: rows * d)

            // cross-attention over the utterance's encoder output
            let cross = layer.cross!
            cross.layerNorm.forward(x, rows: rows, out: normed)
            cross.attention.q.forward(normed, rows: rows, out: q, fewRows: .splitColumns)
            multiHeadAttention(
                q: q, k: state.crossK[l].data, v: state.crossV[l].data, ld: d, out: attended, ldOut: d,
                sequences: sequences, keys: encoderKeys, heads: heads, headDim: headDim, scores: ws.scores)
            cross.attention.out.forward(attended, rows: rows, out: blockOut, fewRows: .splitColumns)
            addInPlace(x, blockOut, count: rows * d)

            // mlp
            layer.finalLayerNorm.forward(x, rows: rows, out: normed)
            layer.mlp.forward(
                normed, sequences: sequences, policies: layer.mlp.acmIndex.map { acmPolicies[$0] } ?? rowPolicies,
                out: blockOut, workspace: ws.layers, learners: learners, items: slots.map { items?[$0] ?? $0 },
                fewRows: .splitColumns)
            addInPlace(x, blockOut, count: rows * d)
        }
        for (i, slot) in slots.enumerated() { state.lengths[slot] += tokens[i].count }

        // layer_norm on each slot's last row only (it is per row), then logits = x · embed_tokensᵀ
        let last = ws.hidden.reserve(slots.count * d)
        for (i, seq) in sequences.enumerated() { (last + i * d).update(from: x + (seq.upperBound - 1) * d, count: d) }
        decoderLayerNorm.forward(last, rows: slots.count, out: last)
        let vocab = config.vocabSize
        let logits = Tensor(shape: [slots.count, vocab])
        // [live, d] × [d, vocab]
        embedTokens.timesTransposed(last, rows: slots.count, out: logits.data)
        return logits
    }
}
