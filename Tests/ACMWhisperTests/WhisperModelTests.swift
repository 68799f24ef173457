import ACMCore
import Foundation
import Testing

@testable import ACMWhisper

/// A tiny random model on disk, loaded through the real loader.
/// Makes a log-mel [mel, frames] padding after its first `audioColumns` columns: every bin there at −2,
/// below the audio's values (which have at least one bin above −2 in each column).
func padLogMel(_ mel: Tensor, audioColumns: Int) {
    let frames = tinyConfig.inputFrames
    for c in 0..<tinyConfig.numMelBins {
        for t in 0..<frames { mel.data[c * frames + t] = t < audioColumns ? max(mel.data[c * frames + t], -1.9) : -2 }
    }
    for t in 0..<audioColumns { mel.data[t] = 1 }
}

struct TinyModel {
    let dir: TemporaryDirectory
    let model: WhisperModel
    let naive: NaiveWhisper

    init(acm: [String: ACMConfig] = [:], seed: UInt64 = 1, generation: GenerationConfig = tinyGeneration) throws {
        dir = try TemporaryDirectory()
        let weights = try writeTinyModel(to: dir.path, acm: acm, seed: seed, generation: generation)
        model = try WhisperModel(directory: dir.path)
        naive = NaiveWhisper(config: tinyConfig, acm: acm, w: weights)
    }

    /// One utterance's encoder output rows as a table.
    func encoded(_ t: Tensor, utterance b: Int) -> UnsafeMutablePointer<Float> {
        t.data + b * tinyConfig.maxSourcePositions * tinyConfig.dModel
    }
}

@Suite struct WhisperModelTests {
    /// Should compute the encoder (convolutions, attention, MLPs) as its definition does, for each
    /// utterance of a batch.
    @Test func encoderMatchesDefinition() throws {
        let tiny = try TinyModel()
        let mels = randomLogMels(tinyConfig, count: 2, seed: 7)
        let encoded = tiny.model.whisper.encode(
            logMels: mels.data, count: 2, policies: [.auto, .auto], workspace: WhisperWorkspace())
        for b in 0..<2 {
            let want = tiny.naive.encode(mels.row(b))
            let error = maxAbsDiff(tiny.encoded(encoded, utterance: b), want)
            #expect(error < 1e-4, "utterance \(b): max |Δ| \(error)")
        }
    }

    /// Should give, step by step through the KV cache, the logits of the decoder's definition, and the
    /// same logits as recomputing the whole prefix without a cache.
    @Test func decoderCacheMatchesFullPrefix() throws {
        let tiny = try TinyModel()
        let whisper = tiny.model.whisper
        let mels = randomLogMels(tinyConfig, count: 1, seed: 3)
        let ws = WhisperWorkspace()
        let encoded = whisper.encode(logMels: mels.data, count: 1, policies: [.auto], workspace: ws)
        let tokens = tinyGeneration.prompt + [2, 3, 5, 8, 0, 11, 4]
        let naiveEncoded = (0..<tinyConfig.maxSourcePositions).map { t in
            (0..<tinyConfig.dModel).map { Double(encoded.data[t * tinyConfig.dModel + $0]) }
        }
        let want = tiny.naive.decode(tokens, encoded: naiveEncoded)

        let cached = whisper.makeDecoderState(encoded: encoded, count: 1)
        var step = whisper.decode(tokens: [Array(tokens[0..<2])], slots: [0], state: cached, policies: [.auto], workspace: ws)
        for end in 2...tokens.count {
            if end > 2 {
                step = whisper.decode(tokens: [[tokens[end - 1]]], slots: [0], state: cached, policies: [.auto], workspace: ws)
            }
            let fresh = whisper.makeDecoderState(encoded: encoded, count: 1)
            let full = whisper.decode(
                tokens: [Array(tokens[0..<end])], slots: [0], state: fresh, policies: [.auto], workspace: ws)
            var cacheError: Float = 0
            for v in 0..<tinyConfig.vocabSize { cacheError = max(cacheError, abs(step.data[v] - full.data[v])) }
            #expect(cacheError <= 1e-5, "prefix \(end): cached vs full max |Δ| \(cacheError)")
            let definitionError = maxAbsDiff(step.data, [want[end - 1]])
            #expect(definitionError < 1e-4, "prefix \(end): vs definition max |Δ| \(definitionError)")
        }
        #expect(cached.lengths == [tokens.count])
    }

    /// Should transcribe an utterance alone and in a batch of three whose outputs have different lengths
    /// to the same tokens, with logits within 1e-5 at every step.
    @Test func batchInvariance() throws {
        // A random model seldom says its end token, so make the end token one it does say, at different
        // steps for different inputs: the greedy steps before its first appearance do not change.
        let probe = try TinyModel()
        let candidates = (UInt64(100)..<UInt64(124)).map { randomLogMels(tinyConfig, count: 1, seed: $0) }
        let probed = try probe.model.transcribe(logMels: candidates.map { $0.reshaped() }).map(\.tokens)
        func stops(_ end: Int) -> [Int] { probed.map { $0.firstIndex(of: end) ?? $0.count } }
        let end = try #require((0..<TinyTokens.eos).max { Set(stops($0)).count < Set(stops($1)).count })
        var generation = tinyGeneration
        generation.eosTokenId = end
        let tiny = try TinyModel(generation: generation)
        let whisper = tiny.model.whisper

        // three inputs whose transcripts have different lengths
        var chosen: [(mel: Tensor, tokens: [Int])] = []
        var lengths = Set<Int>()
        for (mel, tokens) in zip(candidates, probed) where chosen.count < 3 {
            let stop = tokens.firstIndex(of: end) ?? tokens.count
            if lengths.insert(stop).inserted { chosen.append((mel, Array(tokens[..<stop]))) }
        }
        try #require(chosen.count == 3, "found only output lengths \(lengths.sorted())")
        for c in chosen { #expect(try tiny.model.transcribe(logMels: [c.mel.reshaped()])[0].tokens == c.tokens) }

        let batch = try tiny.model.transcribe(logMels: chosen.map { $0.mel.reshaped() })
        for (b, c) in chosen.enumerated() { #expect(batch[b].tokens == c.tokens, "utterance \(b)") }

        // the logits of every step, alone and batched, teacher-forced on the batch's own tokens
        let ws = WhisperWorkspace()
        let mels = Tensor(shape: [3, whisper.inputCount])
        for b in 0..<3 { mels.row(b).update(from: chosen[b].mel.data, count: whisper.inputCount) }
        let policies = [LearnerPolicy](repeating: .auto, count: 3)
        let encoded = whisper.encode(logMels: mels.data, count: 3, policies: policies, workspace: ws)
        let state = whisper.makeDecoderState(encoded: encoded, count: 3)
        var alone: [(Tensor, WhisperDecoderState)] = []
        for b in 0..<3 {
            let e = whisper.encode(logMels: chosen[b].mel.data, count: 1, policies: [.auto], workspace: ws)
            alone.append((e, whisper.makeDecoderState(encoded: e, count: 1)))
        }
        var worst: Float = 0
        let steps = chosen.map { $0.tokens.count }.max() ?? 0
        for step in 0...steps {
            let live = (0..<3).filter { step <= chosen[$0].tokens.count }
            let inputs = live.map { step == 0 ? tinyGeneration.prompt : [chosen[$0].tokens[step - 1]] }
            let logits = whisper.decode(tokens: inputs, slots: live, state: state, policies: policies, workspace: ws)
            for (r, b) in live.enumerated() {
                let single = whisper.decode(tokens: [inputs[r]], slots: [0], state: alone[b].1, policies: [.auto], workspace: ws)
                for v in 0..<tinyConfig.vocabSize { worst = max(worst, abs(single.data[v] - logits.row(r)[v])) }
            }
        }
        #expect(worst <= 1e-5, "max |Δlogit| alone vs batched: \(worst)")
    }

    /// Should run ACM MLPs (encoder and decoder) as the ACM definition says, under a fixed k and under
    /// the gate's choice.
    @Test(arguments: [LearnerPolicy.full, .uniform(1), .auto])
    func acmMLPsMatchDefinition(policy: LearnerPolicy) throws {
        let settings = ACMConfig(
            numLearners: 3, learnerDim: 5, activation: .gelu, minChoice: 0, hiddenBias: true, outputBias: true,
            gate: GateConfig(depth: 2, hiddenDim: 6, activation: .identity))
        let acm = ["model.encoder.layers.0": settings, "model.decoder.layers.1": settings]
        var tiny = try TinyModel(acm: acm, seed: 5)
        switch policy {
        case .full: tiny = TinyModel(copying: tiny, fixedK: 3)
        case let .uniform(k): tiny = TinyModel(copying: tiny, fixedK: k)
        default: break
        }
        let whisper = tiny.model.whisper
        #expect(whisper.acmPaths == ["model.encoder.layers.0", "model.decoder.layers.1"])
        let mels = randomLogMels(tinyConfig, count: 1, seed: 11)
        let ws = WhisperWorkspace()
        let encoded = whisper.encode(logMels: mels.data, count: 1, policies: [policy], workspace: ws)
        let want = tiny.naive.encode(mels.data)
        let encoderError = maxAbsDiff(encoded.data, want)
        #expect(encoderError < 1e-4, "encoder max |Δ| \(encoderError)")

        let tokens = tinyGeneration.prompt + [2, 9, 3]
        let state = whisper.makeDecoderState(encoded: encoded, count: 1)
        let logits = whisper.decode(tokens: [tokens], slots: [0], state: state, policies: [policy], workspace: ws)
        let naiveEncoded = (0..<tinyConfig.maxSourcePositions).map { t in
            (0..<tinyConfig.dModel).map { Double(encoded.data[t * tinyConfig.dModel + $0]) }
        }
        let decoderError = maxAbsDiff(logits.data, [tiny.naive.decode(tokens, encoded: naiveEncoded).last ?? []])
        #expect(decoderError < 1e-4, "decoder max |Δ| \(decoderError)")
    }

    /// Should count, over a transcription, the learners of every token at each ACM: the encoder's rows
    /// and every decoder step's (the prompt first, then one per generated token), per utterance.
    @Test(arguments: [LearnerPolicy.full, .uniform(1), .auto])
    func countsLearners(policy: LearnerPolicy) throws {
        let settings = ACMConfig(numLearners: 3, learnerDim: 5, activation: .gelu, minChoice: 1)
        let tiny = try TinyModel(acm: ["model.encoder.layers.1": settings, "model.decoder.layers.0": settings], seed: 6)
        let mels = (0..<3).map { randomLogMels(tinyConfig, count: 1, seed: 30 + UInt64($0)).reshaped() }
        let learners = LearnerCounts(acms: tiny.model.whisper.acms, items: 3)
        let results = try tiny.model.transcribe(
            logMels: mels, policies: Array(repeating: policy, count: mels.count), learners: learners)
        let decoderRows = results.map { result in
            // a step for each generated token, and one for the end token unless the length limit came first
            let steps = result.tokens.count + (result.tokens.count < tinyGeneration.maxNewTokens ? 1 : 0)
            return tinyGeneration.prompt.count + steps - 1
        }
        #expect(learners.histogram[0].reduce(0, +) == 3 * tinyConfig.maxSourcePositions)
        #expect(learners.histogram[1].reduce(0, +) == decoderRows.reduce(0, +))
        let fraction = learners.computeFraction
        switch policy {
        case .full:
            #expect(learners.histogram.allSatisfy { $0[0..<3].allSatisfy { $0 == 0 } })
            #expect(fraction == [1, 1, 1])
        case .uniform:
            #expect(learners.histogram.allSatisfy { $0[0] == 0 && $0[2] == 0 && $0[3] == 0 })
            #expect(fraction.allSatisfy { abs($0 - 1.0 / 3) < 1e-12 })
        default:
            #expect(fraction.allSatisfy { (1.0 / 3...1).contains($0) })
        }
        let possible = results.indices.map { b in
            tiny.model.whisper.acms[0].learnerFLOPs * 3 * Double(tinyConfig.maxSourcePositions + decoderRows[b])
        }
        #expect(learners.possibleFLOPs == possible)
    }

    /// Should give each utterance of a batch with mixed budgets what it gets alone: the same tokens, an
    /// encoder output within 1e-5, and the same compute fraction, never over a cap; a cap spread over
    /// the ACMs as the ViT spreads it.
    @Test func mixedBudgetsMatchRunningAlone() throws {
        let settings = ACMConfig(
            numLearners: 4, learnerDim: 5, activation: .gelu, minChoice: 0,
            gate: GateConfig(depth: 1, hiddenDim: 4, activation: .identity))
        let tiny = try TinyModel(
            acm: ["model.encoder.layers.0": settings, "model.encoder.layers.1": settings, "model.decoder.layers.0": settings],
            seed: 8)
        let model = tiny.model
        let policies: [LearnerPolicy] = [.cap(0.25), .auto, .cap(0.5), .full, .cap(0.25), .uniform(1)]
        let mels = policies.indices.map { randomLogMels(tinyConfig, count: 1, seed: 50 + UInt64($0)).reshaped() }
        // utterances 0 and 2 end in padding, so that their caps serve their audio first
        for (b, audio) in [(0, 7), (2, 12)] { padLogMel(mels[b], audioColumns: audio) }
        #expect(mels.map { model.whisper.contentFrames(logMel: $0.data) } == [5, 10, 7, 10, 10, 10])
        let together = try model.transcribe(logMels: mels, policies: policies)
        let ws = WhisperWorkspace()
        let batch = Tensor(shape: [mels.count, model.whisper.inputCount])
        for (b, mel) in mels.enumerated() { batch.row(b).update(from: mel.data, count: model.whisper.inputCount) }
        let encoded = model.whisper.encode(logMels: batch.data, count: mels.count, policies: policies, workspace: ws)
        for (b, policy) in policies.enumerated() {
            let alone = try model.transcribe(logMels: [mels[b]], policies: [policy])[0]
            #expect(together[b].tokens == alone.tokens, "utterance \(b) (\(policy))")
            #expect(abs(together[b].computeFraction - alone.computeFraction) < 1e-12, "utterance \(b) (\(policy))")
            if case let .cap(beta) = policy { #expect(together[b].computeFraction <= beta.value + 1e-9) }
            let one = model.whisper.encode(logMels: mels[b].data, count: 1, policies: [policy], workspace: WhisperWorkspace())
            let rows = tinyConfig.maxSourcePositions * tinyConfig.dModel
            let inBatch = tiny.encoded(encoded, utterance: b)
            var error: Float = 0
            for i in 0..<rows { error = max(error, abs(one.data[i] - inBatch[i])) }
            #expect(error <= 1e-5, "utterance \(b) encoder max |Δ| \(error)")
        }
        #expect(together[3].computeFraction == 1)
        #expect(abs(together[5].computeFraction - 0.25) < 1e-12)
        // the cap is spread by the same rule as the ViT's
        let shares: [Double] = model.whisper.budgetSplit.shares(0.5)
        let costs: [Double] = model.whisper.acms.map { $0.learnerFLOPs * Double($0.config.numLearners) }
        var spent = 0.0, total = 0.0
        for (share, cost) in zip(shares, costs) {
            spent += share * cost
            total += cost
        }
        #expect(abs(spent / total - 0.5) < 1e-9)
    }

    /// Should count the encoder frames whose receptive field (log-mel columns 2t − 2 … 2t + 2) holds a
    /// column of audio, padding being the trailing columns at the spectrogram's least value in every bin.
    @Test func contentFramesFollowTheReceptiveField() throws {
        let whisper = try TinyModel().model.whisper
        let frames = tinyConfig.inputFrames, s = tinyConfig.maxSourcePositions
        for audio in 0...frames {
            let mel = randomLogMels(tinyConfig, count: 1, seed: 70 + UInt64(audio)).reshaped()
            padLogMel(mel, audioColumns: audio)
            let expected = (0..<s).filter { t in (max(0, 2 * t - 2)...(2 * t + 2)).contains { $0 < audio } }.count
            #expect(whisper.contentFrames(logMel: mel.data) == expected, "audio in \(audio) columns")
        }
        // a column of audio at the least value in every bin still counts when audio follows it
        let mel = randomLogMels(tinyConfig, count: 1, seed: 99).reshaped()
        padLogMel(mel, audioColumns: 9)
        for c in 0..<tinyConfig.numMelBins { mel.data[c * frames + 4] = -2 }
        #expect(whisper.contentFrames(logMel: mel.data) == 6)
    }

    /// Should refuse an `acm` entry that is not a layer, and name missing and unused tensors.
    @Test func strictLoading() throws {
        let dir = try TemporaryDirectory()
        var weights = try writeTinyModel(to: dir.path)
        func loadError() -> String {
            do {
                _ = try WhisperModel(directory: dir.path)
                return ""
            } catch {
                return "\(error)"
            }
        }
        weights["model.decoder.layers.1.fc2.bias"] = nil
        try SafeTensorsFile.write(weights, to: "\(dir.path)/model.safetensors")
        #expect(loadError().contains("missing tensor 'model.decoder.layers.1.fc2.bias'"))

        weights = tinyWeights(tinyConfig, acm: [:], seed: 1)
        weights["model.decoder.layers.0.encoder_attn.k_proj.bias"] = Tensor(shape: [tinyConfig.dModel])
        try SafeTensorsFile.write(weights, to: "\(dir.path)/model.safetensors")
        #expect(loadError().contains("'model.decoder.layers.0.encoder_attn.k_proj.bias'"))

        let other = try TemporaryDirectory()
        _ = try writeTinyModel(to: other.path)
        let config = try String(contentsOfFile: "\(other.path)/config.json", encoding: .utf8)
        try config.replacingOccurrences(of: "\"acm\":{}", with: "\"acm\":{\"model.encoder.layers.7\":{}}")
            .write(toFile: "\(other.path)/config.json", atomically: true, encoding: .utf8)
        do {
            _ = try WhisperModel(directory: other.path)
            Issue.record("a config with a bad acm path loaded")
        } catch {
            #expect("\(error)".contains("model.encoder.layers.7"))
        }
        try config.replacingOccurrences(of: "\"whisper\"", with: "\"vit\"", options: [], range: config.range(of: "\"architecture\":\"whisper\""))
            .write(toFile: "\(other.path)/config.json", atomically: true, encoding: .utf8)
        do {
            _ = try WhisperModel(directory: other.path)
            Issue.record("a non-Whisper config loaded")
        } catch {
            #expect("\(error)".contains("architecture is 'vit'"))
        }
    }

    /// Should refuse generation settings that do not fit the model, naming the field.
    @Test func refusesBadGeneration() throws {
        let dir = try TemporaryDirectory()
        var generation = tinyGeneration
        generation.maxNewTokens = tinyConfig.maxTargetPositions
        _ = try writeTinyModel(to: dir.path, generation: generation)
        #expect(throws: ModelError.config(
            "generation: 2 prompt tokens + max_new_tokens 24 must fit in max_target_positions 24")) {
            try WhisperModel(directory: dir.path)
        }
        generation.maxNewTokens = .max  // trapped: prompt.count + max_new_tokens overflowed (docs/reliability.md)
        _ = try writeTinyModel(to: dir.path, generation: generation)
        #expect(throws: ModelError.config(
            "generation: 2 prompt tokens + max_new_tokens \(Int.max) must fit in max_target_positions 24")) {
            try WhisperModel(directory: dir.path)
        }
        generation = tinyGeneration
        generation.suppressTokens.append(TinyTokens.vocab)
        _ = try writeTinyModel(to: dir.path, generation: generation)
        #expect(throws: ModelError.config("generation: token id 16 is outside the vocabulary 0..<16")) {
            try WhisperModel(directory: dir.path)
        }
    }

    /// Should refuse sizes past maxConfigSize, whose products the model computes (the config fuzz target:
    /// the input frames, 2 · max_source_positions, trapped).
    @Test func refusesHugeSizes() throws {
        var config = tinyConfig
        config.maxSourcePositions = .max
        #expect(throws: ModelError.config("whisper sizes must be in 1...16777216")) { try config.validate() }
    }
}

extension TinyModel {
    /// The same model with the naive reference running a fixed k at every ACM.
    init(copying other: TinyModel, fixedK: Int) {
        dir = other.dir
        model = other.model
        var naive = other.naive
        naive.fixedK = fixedK
        self.naive = naive
    }
}

extension Tensor {
    /// A [mel, frames] view of a [1, mel, frames] tensor (a copy).
    func reshaped() -> Tensor {
        let t = Tensor(shape: Array(shape.dropFirst()))
        t.data.update(from: data, count: count)
        return t
    }
}
