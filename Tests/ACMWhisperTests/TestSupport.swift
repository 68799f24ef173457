import ACMCore
import Foundation
import Testing

@testable import ACMWhisper

/// The repository root, found from this file, for `build/models/whisper-tiny.en`.
let repositoryRoot = URL(fileURLWithPath: #filePath)
    .deletingLastPathComponent().deletingLastPathComponent().deletingLastPathComponent().path
let whisperFixtures = URL(fileURLWithPath: #filePath).deletingLastPathComponent().appendingPathComponent("Fixtures").path
let realModelPath = "\(repositoryRoot)/build/models/whisper-tiny.en"

/// The real tiny.en model's directory; a missing model fails the test with what to run (never a skip).
func requireRealModel() throws -> String {
    guard FileManager.default.fileExists(atPath: "\(realModelPath)/model.safetensors") else {
        throw TestSetupError("\(realModelPath) is missing: run `make whisper-model`")
    }
    return realModelPath
}

func loadRealModel() throws -> WhisperModel { try WhisperModel(directory: try requireRealModel()) }

/// A fixture file, or a failure that says how to make it.
func fixturePath(_ name: String) throws -> String {
    let path = "\(whisperFixtures)/\(name)"
    guard FileManager.default.fileExists(atPath: path) else {
        throw TestSetupError("\(path) is missing: run `make whisper-fixtures` (needs `make whisper-model`)")
    }
    return path
}

struct TestSetupError: Error, CustomStringConvertible {
    let description: String
    init(_ description: String) { self.description = description }
}

func randomTensor(_ shape: [Int], scale: Float = 1, rng: inout SeededGenerator) -> Tensor {
    let t = Tensor(shape: shape)
    for i in 0..<t.count { t.data[i] = Float.random(in: -scale...scale, using: &rng) }
    return t
}

/// A temporary directory removed when the value goes away.
final class TemporaryDirectory {
    let path: String
    init() throws {
        path = NSTemporaryDirectory() + "acm-whisper-test-" + UUID().uuidString
        try FileManager.default.createDirectory(atPath: path, withIntermediateDirectories: true)
    }
    deinit { try? FileManager.default.removeItem(atPath: path) }
}

// MARK: - A tiny random Whisper

/// Token ids of the tiny model: 0..<12 are text, then the specials.
enum TinyTokens {
    static let eos = 12, sot = 13, noTimestamps = 14, vocab = 16
}

/// The tiny model's shapes: every dimension differs, so that a mixed-up index shows.
let tinyConfig = WhisperConfig(
    numMelBins: 6, dModel: 16, encoderLayers: 2, encoderAttentionHeads: 2, decoderLayers: 2,
    decoderAttentionHeads: 4, encoderFfnDim: 24, decoderFfnDim: 20, maxSourcePositions: 10,
    maxTargetPositions: 24, vocabSize: TinyTokens.vocab)

let tinyGeneration = GenerationConfig(
    decoderStartTokenId: TinyTokens.sot, eosTokenId: TinyTokens.eos, noTimestampsTokenId: TinyTokens.noTimestamps,
    prompt: [TinyTokens.sot, TinyTokens.noTimestamps], suppressTokens: [1, TinyTokens.sot, TinyTokens.noTimestamps, 15],
    beginSuppressTokens: [0, TinyTokens.eos], maxNewTokens: 14)

/// Random weights with Hugging Face's names for `config`; the MLPs at the `acm` paths are ACMs.
func tinyWeights(_ config: WhisperConfig, acm: [String: ACMConfig], seed: UInt64) -> [String: Tensor] {
    var rng = SeededGenerator(seed: seed)
    let d = config.dModel
    var t: [String: Tensor] = [:]
    func linear(_ name: String, _ outputs: Int, _ inputs: Int, bias: Bool = true, gain: Float = 1) {
        t["\(name).weight"] = randomTensor([outputs, inputs], scale: gain / Float(inputs).squareRoot(), rng: &rng)
        if bias { t["\(name).bias"] = randomTensor([outputs], scale: 0.2, rng: &rng) }
    }
    func norm(_ name: String) {
        let w = randomTensor([d], scale: 0.3, rng: &rng)
        for i in 0..<d { w.data[i] += 1 }
        t["\(name).weight"] = w
        t["\(name).bias"] = randomTensor([d], scale: 0.2, rng: &rng)
    }
    func attention(_ name: String, gain: Float = 1) {
        linear("\(name).q_proj", d, d, gain: gain)
        linear("\(name).k_proj", d, d, bias: false, gain: gain)
        linear("\(name).v_proj", d, d)
        linear("\(name).out_proj", d, d, gain: gain)
    }
    func mlp(_ path: String, ffn: Int) {
        guard let a = acm[path] else {
            linear("\(path).fc1", ffn, d)
            linear("\(path).fc2", d, ffn)
            return
        }
        let n = a.numLearners, h = a.learnerDim
        t["\(path).w1"] = randomTensor([d, n * h], scale: 0.4, rng: &rng)
        t["\(path).w2"] = randomTensor([n * h, d], scale: 0.4, rng: &rng)
        if a.hiddenBias { t["\(path).b1"] = randomTensor([n * h], scale: 0.2, rng: &rng) }
        if a.outputBias { t["\(path).b2"] = randomTensor([(n + 1) * d], scale: 0.2, rng: &rng) }
        for j in 0..<a.gate.depth {
            let inputs = j == 0 ? d : a.gate.hiddenDim
            let outputs = j == a.gate.depth - 1 ? a.numChoices : a.gate.hiddenDim
            linear("\(path).gating_network.net.\(j)", outputs, inputs)
        }
    }
    t["model.encoder.conv1.weight"] = randomTensor([d, config.numMelBins, 3], scale: 0.4, rng: &rng)
    t["model.encoder.conv1.bias"] = randomTensor([d], scale: 0.2, rng: &rng)
    t["model.encoder.conv2.weight"] = randomTensor([d, d, 3], scale: 0.2, rng: &rng)
    t["model.encoder.conv2.bias"] = randomTensor([d], scale: 0.2, rng: &rng)
    t["model.encoder.embed_positions.weight"] = randomTensor([config.maxSourcePositions, d], scale: 0.5, rng: &rng)
    for i in 0..<config.encoderLayers {
        let p = "model.encoder.layers.\(i)"
        attention("\(p).self_attn")
        norm("\(p).self_attn_layer_norm")
        mlp(p, ffn: config.encoderFfnDim)
        norm("\(p).final_layer_norm")
    }
    norm("model.encoder.layer_norm")
    t["model.decoder.embed_tokens.weight"] = randomTensor([config.vocabSize, d], scale: 1, rng: &rng)
    t["model.decoder.embed_positions.weight"] = randomTensor([config.maxTargetPositions, d], scale: 1, rng: &rng)
    for i in 0..<config.decoderLayers {
        let p = "model.decoder.layers.\(i)"
        attention("\(p).self_attn")
        norm("\(p).self_attn_layer_norm")
        // strong cross-attention, so that the output depends on the input
        attention("\(p).encoder_attn", gain: 3)
        norm("\(p).encoder_attn_layer_norm")
        mlp(p, ffn: config.decoderFfnDim)
        norm("\(p).final_layer_norm")
    }
    norm("model.decoder.layer_norm")
    return t
}

/// The byte-level BPE strings of the tiny vocabulary: "Ġ" is a space, "Ã©" the two bytes of "é".
let tinyVocab: [String: Int] = [
    "a": 0, "b": 1, "Ġhello": 2, "Ġworld": 3, "Ã": 4, "©": 5, ",": 6, "Ċ": 7, "Ġthe": 8, "!": 9, "x": 10, "Ġ": 11,
    "<|endoftext|>": TinyTokens.eos,
]

/// Writes a complete model directory: config.json, model.safetensors (F32), tokenizer.json.
func writeTinyModel(
    to dir: String, config: WhisperConfig = tinyConfig, acm: [String: ACMConfig] = [:], seed: UInt64 = 1,
    generation: GenerationConfig = tinyGeneration
) throws -> [String: Tensor] {
    let weights = tinyWeights(config, acm: acm, seed: seed)
    try SafeTensorsFile.write(weights, to: "\(dir)/model.safetensors")
    let encoder = JSONEncoder()
    let whisperJSON = try JSONSerialization.jsonObject(with: encoder.encode(config))
    let acmJSON = try JSONSerialization.jsonObject(with: encoder.encode(acm))
    let generationJSON = try JSONSerialization.jsonObject(with: encoder.encode(generation))
    let configJSON: [String: Any] = [
        "format": "acm-serve", "format_version": 1, "architecture": "whisper",
        "whisper": whisperJSON, "acm": acmJSON, "generation": generationJSON,
    ]
    try JSONSerialization.data(withJSONObject: configJSON, options: [.sortedKeys])
        .write(to: URL(fileURLWithPath: "\(dir)/config.json"))
    let added: [[String: Any]] = [
        ["id": TinyTokens.eos, "content": "<|endoftext|>", "special": true],
        ["id": TinyTokens.sot, "content": "<|startoftranscript|>", "special": true],
        ["id": TinyTokens.noTimestamps, "content": "<|notimestamps|>", "special": true],
        ["id": 15, "content": "<|0.00|>", "special": true],
    ]
    let tokenizer: [String: Any] = ["model": ["type": "BPE", "vocab": tinyVocab], "added_tokens": added]
    try JSONSerialization.data(withJSONObject: tokenizer).write(to: URL(fileURLWithPath: "\(dir)/tokenizer.json"))
    return weights
}

/// Random log-mels [count, mel, frames] in Whisper's value range.
func randomLogMels(_ config: WhisperConfig, count: Int, seed: UInt64) -> Tensor {
    var rng = SeededGenerator(seed: seed)
    return randomTensor([count, config.numMelBins, config.inputFrames], scale: 1, rng: &rng)
}

// MARK: - The model's definition, in Double

/// Whisper written out as plain loops in Double from the weights dictionary: the independent route
/// for the engine's encoder and decoder.
struct NaiveWhisper {
    let config: WhisperConfig
    let acm: [String: ACMConfig]
    let w: [String: Tensor]
    /// The k of every token at every ACM when the policy does not consult the gate.
    var fixedK: Int? = nil

    func tensor(_ name: String) -> Tensor {
        guard let t = w[name] else { fatalError("no tensor \(name)") }
        return t
    }

    func linear(_ x: [[Double]], _ name: String, bias: Bool = true) -> [[Double]] {
        let weight = tensor("\(name).weight"), outputs = weight.shape[0], inputs = weight.shape[1]
        let b = bias ? w["\(name).bias"] : nil
        return x.map { row in
            (0..<outputs).map { o in
                var s = b.map { Double($0.data[o]) } ?? 0
                for i in 0..<inputs { s += row[i] * Double(weight.data[o * inputs + i]) }
                return s
            }
        }
    }

    func norm(_ x: [[Double]], _ name: String) -> [[Double]] {
        let g = tensor("\(name).weight"), b = tensor("\(name).bias")
        return x.map { row in
            let mean = row.reduce(0, +) / Double(row.count)
            let variance = row.map { ($0 - mean) * ($0 - mean) }.reduce(0, +) / Double(row.count)
            let r = 1 / (variance + Double(config.layerNormEps)).squareRoot()
            return row.indices.map { (row[$0] - mean) * r * Double(g.data[$0]) + Double(b.data[$0]) }
        }
    }

    func gelu(_ x: Double) -> Double { 0.5 * x * (1 + erf(x / 2.0.squareRoot())) }

    func add(_ a: [[Double]], _ b: [[Double]]) -> [[Double]] { zip(a, b).map { zip($0, $1).map { $0 + $1 } } }

    /// q, k, v rows → attention output; `causalOffset` c: query i sees keys 0...c + i.
    func attend(_ q: [[Double]], _ k: [[Double]], _ v: [[Double]], heads: Int, causalOffset: Int?) -> [[Double]] {
        let d = q[0].count, hd = d / heads
        var out = [[Double]](repeating: [Double](repeating: 0, count: d), count: q.count)
        for h in 0..<heads {
            for i in q.indices {
                let visible = causalOffset.map { $0 + i + 1 } ?? k.count
                var s = (0..<visible).map { j in
                    (0..<hd).reduce(0.0) { $0 + q[i][h * hd + $1] * k[j][h * hd + $1] } / Double(hd).squareRoot()
                }
                let m = s.max() ?? 0
                s = s.map { exp($0 - m) }
                let total = s.reduce(0, +)
                for j in 0..<visible {
                    for c in 0..<hd { out[i][h * hd + c] += s[j] / total * v[j][h * hd + c] }
                }
            }
        }
        return out
    }

    func mlp(_ x: [[Double]], _ path: String) -> [[Double]] {
        guard let a = acm[path] else {
            return linear(linear(x, "\(path).fc1").map { $0.map(gelu) }, "\(path).fc2")
        }
        let d = config.dModel, n = a.numLearners, h = a.learnerDim
        let w1 = tensor("\(path).w1"), w2 = tensor("\(path).w2")
        return x.map { row in
            let k: Int
            if let fixedK {
                k = min(max(fixedK, a.minChoice), n)
            } else {
                // the gate: Linear layers, the activation between them; argmax, first of ties
                var g = [row]
                for j in 0..<a.gate.depth {
                    g = linear(g, "\(path).gating_network.net.\(j)")
                    if j < a.gate.depth - 1 {
                        g = g.map { $0.map { a.gate.activation == .gelu ? gelu($0) : a.gate.activation == .relu ? max(0, $0) : $0 } }
                    }
                }
                let logits = g[0]
                k = a.minChoice + logits.indices.max { logits[$0] < logits[$1] || (logits[$0] == logits[$1] && $0 > $1) }!
            }
            var out = [Double](repeating: 0, count: d)
            for learner in 0..<k {
                for u in 0..<h {
                    let col = learner * h + u
                    var z = w["\(path).b1"].map { Double($0.data[col]) } ?? 0
                    for i in 0..<d { z += row[i] * Double(w1.data[i * n * h + col]) }
                    let act = a.activation == .gelu ? gelu(z) : z
                    for c in 0..<d { out[c] += act * Double(w2.data[col * d + c]) }
                }
            }
            if let b2 = w["\(path).b2"] {
                for j in 0...k { for c in 0..<d { out[c] += Double(b2.data[j * d + c]) } }
            }
            return out
        }
    }

    /// [mel, frames] → [S, d].
    func encode(_ mel: UnsafePointer<Float>) -> [[Double]] {
        let d = config.dModel, mels = config.numMelBins, frames = config.inputFrames
        func conv(_ input: [[Double]], _ name: String, stride: Int) -> [[Double]] {
            // input [channels][time] → [out channels][time / stride], kernel 3, padding 1
            let weight = tensor("\(name).weight"), bias = tensor("\(name).bias")
            let cIn = input.count, length = input[0].count
            return (0..<d).map { o in
                (0..<(length / stride)).map { t in
                    var s = Double(bias.data[o])
                    for c in 0..<cIn {
                        for j in 0..<3 {
                            let src = t * stride + j - 1
                            if src >= 0 && src < length { s += input[c][src] * Double(weight.data[(o * cIn + c) * 3 + j]) }
                        }
                    }
                    return gelu(s)
                }
            }
        }
        let input = (0..<mels).map { c in (0..<frames).map { Double(mel[c * frames + $0]) } }
        let h = conv(conv(input, "model.encoder.conv1", stride: 1), "model.encoder.conv2", stride: 2)
        let pos = tensor("model.encoder.embed_positions.weight")
        var x = (0..<config.maxSourcePositions).map { t in (0..<d).map { h[$0][t] + Double(pos.data[t * d + $0]) } }
        for i in 0..<config.encoderLayers {
            let p = "model.encoder.layers.\(i)"
            let n1 = norm(x, "\(p).self_attn_layer_norm")
            let a = attend(
                linear(n1, "\(p).self_attn.q_proj"), linear(n1, "\(p).self_attn.k_proj", bias: false),
                linear(n1, "\(p).self_attn.v_proj"), heads: config.encoderAttentionHeads, causalOffset: nil)
            x = add(x, linear(a, "\(p).self_attn.out_proj"))
            x = add(x, mlp(norm(x, "\(p).final_layer_norm"), p))
        }
        return norm(x, "model.encoder.layer_norm")
    }

    /// Logits [tokens.count, vocab] of every position of `tokens`, recomputed from scratch (no cache).
    func decode(_ tokens: [Int], encoded: [[Double]]) -> [[Double]] {
        let d = config.dModel
        let embed = tensor("model.decoder.embed_tokens.weight"), pos = tensor("model.decoder.embed_positions.weight")
        var x = tokens.enumerated().map { t, id in (0..<d).map { Double(embed.data[id * d + $0]) + Double(pos.data[t * d + $0]) } }
        for i in 0..<config.decoderLayers {
            let p = "model.decoder.layers.\(i)"
            let n1 = norm(x, "\(p).self_attn_layer_norm")
            let a = attend(
                linear(n1, "\(p).self_attn.q_proj"), linear(n1, "\(p).self_attn.k_proj", bias: false),
                linear(n1, "\(p).self_attn.v_proj"), heads: config.decoderAttentionHeads, causalOffset: 0)
            x = add(x, linear(a, "\(p).self_attn.out_proj"))
            let n2 = norm(x, "\(p).encoder_attn_layer_norm")
            let c = attend(
                linear(n2, "\(p).encoder_attn.q_proj"), linear(encoded, "\(p).encoder_attn.k_proj", bias: false),
                linear(encoded, "\(p).encoder_attn.v_proj"), heads: config.decoderAttentionHeads, causalOffset: nil)
            x = add(x, linear(c, "\(p).encoder_attn.out_proj"))
            x = add(x, mlp(norm(x, "\(p).final_layer_norm"), p))
        }
        let y = norm(x, "model.decoder.layer_norm")
        return y.map { row in
            (0..<config.vocabSize).map { v in (0..<d).reduce(0.0) { $0 + row[$1] * Double(embed.data[v * d + $1]) } }
        }
    }
}

/// max |a − b| over two [rows][columns] tables, one of them in Float memory.
func maxAbsDiff(_ a: UnsafePointer<Float>, _ b: [[Double]]) -> Double {
    var m = 0.0
    let columns = b.first?.count ?? 0
    for (r, row) in b.enumerated() { for c in 0..<columns { m = max(m, abs(Double(a[r * columns + c]) - row[c])) } }
    return m
}
