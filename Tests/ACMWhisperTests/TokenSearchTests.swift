import ACMCore
import Foundation
import Testing

@testable import ACMWhisper

/// log softmax(row)[id] in Double, the slow way.
private func logSoftmax(_ row: [Float], _ id: Int) -> Double {
    let finite = row.filter(\.isFinite).map(Double.init)
    let top = finite.max()!
    return Double(row[id]) - top - log(finite.map { exp($0 - top) }.reduce(0, +))
}

/// A [rows, vocab] tensor of the given rows.
private func logitsTensor(_ rows: [[Float]]) -> Tensor {
    let t = Tensor(shape: [rows.count, rows[0].count])
    for (r, row) in rows.enumerated() { t.row(r).update(from: row, count: row.count) }
    return t
}

@Suite struct TokenSearchTests {
    /// Should suppress tokens, the blank ones only first, stop at the end token or the length limit, drop
    /// finished sequences from the next step, and sum the chosen tokens' log-probabilities (the end
    /// token's included) under the untempered softmax of the unsuppressed tokens.
    @Test func greedyRules() {
        var generation = tinyGeneration
        generation.maxNewTokens = 3
        var search = TokenSearch(count: 3, generation: generation)
        #expect(search.nextTokens == Array(repeating: generation.prompt, count: 3))
        var want = [Double](repeating: 0, count: 3)
        func step(_ rows: [[Float]]) {
            let logits = logitsTensor(rows)
            let live = search.live
            search.advance(logits: logits)
            // advance set the suppressed entries to −∞; the log-probabilities are over what is left
            for (r, slot) in live.enumerated() {
                let row = Array(UnsafeBufferPointer(start: logits.row(r), count: TinyTokens.vocab))
                let chosen = search.live.contains(slot) || search.generated[slot].count == generation.maxNewTokens
                    ? search.generated[slot].last! : generation.eosTokenId
                want[slot] += logSoftmax(row, chosen)
            }
        }
        func ranked(_ best: [[Int]]) -> [[Float]] {
            // each row ranks `best` from highest to lowest, above everything else, which varies a little
            best.enumerated().map { r, ids in
                var row = (0..<TinyTokens.vocab).map { Float(($0 * 7 + r * 3) % 5) * 0.1 }
                for (rank, id) in ids.enumerated() { row[id] = Float(10 - rank) }
                return row
            }
        }
        // slot 0 wants eos first (begin-suppressed) → 2; slot 1 wants a suppressed 1 → 3; slot 2: 0 is begin-suppressed → 4
        step(ranked([[TinyTokens.eos, 2], [1, 3], [0, 4]]))
        #expect(search.generated == [[2], [3], [4]])
        #expect(search.nextTokens == [[2], [3], [4]])
        // slot 1 ends; 0 is allowed now
        step(ranked([[0], [TinyTokens.eos], [9]]))
        #expect(search.live == [0, 2])
        #expect(search.nextTokens == [[0], [9]])
        // ties go to the lower id; then the length limit ends both
        var tied = [[Float]](repeating: [Float](repeating: 0, count: TinyTokens.vocab), count: 2)
        tied[0][5] = 1
        tied[0][7] = 1
        tied[1][TinyTokens.eos] = 1
        step(tied)
        #expect(search.generated == [[2, 0, 5], [3], [4, 9]])
        #expect(search.finished)
        for slot in 0..<3 {
            #expect(abs(search.sumLogprobs[slot] - want[slot]) < 1e-6, "slot \(slot): \(search.sumLogprobs[slot]) vs \(want[slot])")
        }
    }

    /// Should draw each token about as often as softmax(logits / T) says, over many steps (the noise is a
    /// function of the step), for temperatures below and at 1.
    @Test(arguments: [0.5, 1.0])
    func samplesTheTemperedSoftmax(temperature: Double) {
        let steps = 20000
        var generation = tinyGeneration
        generation.suppressTokens = []
        generation.beginSuppressTokens = []
        generation.maxNewTokens = steps + 1
        let logits: [Float] = [1.0, 0.2, -0.5, 0.8, 0.0, -3, 0.5, 0.3, -1, 0.9, 0.1, -0.2, -60, -0.7, 0.6, -2]
        var search = TokenSearch(count: 1, generation: generation, temperature: temperature)
        for _ in 0..<steps { search.advance(logits: logitsTensor([logits])) }
        #expect(search.generated[0].count == steps, "the end token (logit −60) was drawn")
        let scaled = logits.map { Double($0) / temperature }
        let total = scaled.map { exp($0) }.reduce(0, +)
        for id in 0..<logits.count where id != TinyTokens.eos {
            let p = exp(scaled[id]) / total
            let seen = Double(search.generated[0].filter { $0 == id }.count) / Double(steps)
            let sigma = (p * (1 - p) / Double(steps)).squareRoot()
            #expect(abs(seen - p) <= 4.5 * sigma + 1e-4, "token \(id): drawn \(seen), softmax \(p)")
        }
    }

    /// Should draw the token that a Gumbel-max over the whole vocabulary draws: the noise is drawn only
    /// for tokens near the top, which must never change the winner, at any spread of logits.
    @Test func samplingSkipsOnlyTokensThatCannotWin() {
        var generation = tinyGeneration
        generation.suppressTokens = []
        generation.beginSuppressTokens = []
        generation.maxNewTokens = 1000
        for temperature in [0.2, 1.0, 3.0] {
            var rng = SeededGenerator(seed: 17)
            var search = TokenSearch(count: 1, generation: generation, temperature: temperature)
            var near = 0
            for step in 0..<400 {
                // logits spread over about ±45·T, so that the range cut-off (41.1·T) falls inside them
                var row = (0..<TinyTokens.vocab).map { _ in Float(Double(Float.random(in: -45...0, using: &rng)) * temperature) }
                row[TinyTokens.eos] = -1e4
                row[Int.random(in: 0..<TinyTokens.eos, using: &rng)] = 0
                let want = (0..<TinyTokens.vocab).max { a, b in
                    let sa = Double(row[a]) / temperature + TokenSearch.gumbel(temperature: temperature, step: step, token: a)
                    let sb = Double(row[b]) / temperature + TokenSearch.gumbel(temperature: temperature, step: step, token: b)
                    return sa < sb
                }!
                if row.filter({ Double($0) < -TokenSearch.gumbelRange * temperature }).count > 0 { near += 1 }
                search.advance(logits: logitsTensor([row]))
                #expect(search.generated[0].last == want, "T \(temperature), step \(step)")
            }
            #expect(near > 300, "too few steps had tokens outside the range: \(near)")
        }
    }

    /// Should give standard Gumbel noise from SplitMix64 keyed by (temperature, step, token): the
    /// published first output of SplitMix64 from seed 0, and a mean near the Euler–Mascheroni constant.
    @Test func gumbelNoise() {
        var zero = SeededGenerator(seed: 0)
        #expect(zero.next() == 0xE220_A839_7B1D_CDAF)
        // key 0 is temperature 0, step 0, token 0: u from SplitMix64(0)'s first output
        let u = (Double(UInt64(0xE220_A839_7B1D_CDAF) >> 11) + 0.5) * 0x1p-53
        #expect(TokenSearch.gumbel(temperature: 0, step: 0, token: 0) == -log(-log(u)))
        var sum = 0.0
        let n = 100_000
        for i in 0..<n { sum += TokenSearch.gumbel(temperature: 0.4, step: i >> 8, token: i & 255) }
        #expect(abs(sum / Double(n) - 0.5772156649) < 0.02, "mean \(sum / Double(n))")
        #expect(TokenSearch.gumbel(temperature: 0.4, step: 1, token: 2) != TokenSearch.gumbel(temperature: 0.6, step: 1, token: 2))
        #expect(TokenSearch.gumbel(temperature: 0.4, step: 1, token: 2) != TokenSearch.gumbel(temperature: 0.4, step: 2, token: 1))
    }

    /// Should measure repetition as openai-whisper does: UTF-8 bytes over zlib's compressed size, the
    /// text trimmed (figures from Python's zlib.compress).
    @Test func compressionRatio() {
        #expect(WhisperModel.compressionRatio("") == 0)
        #expect(WhisperModel.compressionRatio(" the quick brown fox jumps over the lazy dog\n") == 43.0 / 50)
        let loop = "A-2-B-" + String(repeating: "1-", count: 100)
        #expect(WhisperModel.compressionRatio(loop) == 206.0 / 17)
    }

    /// Should read the fallback settings as absent (the defaults), null (no such check) or given, and
    /// refuse temperatures that do not rise within (0, 10] and a compression ratio threshold that is not positive
    /// (JSON has no infinities).
    @Test func fallbackSettings() throws {
        let base = try JSONEncoder().encode(tinyGeneration)
        var object = try #require(try JSONSerialization.jsonObject(with: base) as? [String: Any])
        for key in ["temperature_fallback", "compression_ratio_threshold", "logprob_threshold"] { object[key] = nil }
        func decode(_ o: [String: Any]) throws -> GenerationConfig {
            try JSONDecoder().decode(GenerationConfig.self, from: JSONSerialization.data(withJSONObject: o))
        }
        let absent = try decode(object)
        #expect(absent.temperatureFallback == [0.2, 0.4, 0.6, 0.8, 1.0])
        #expect(absent.compressionRatioThreshold == 2.4)
        #expect(absent.logprobThreshold == nil)
        object["compression_ratio_threshold"] = NSNull()
        object["logprob_threshold"] = -1.0
        object["temperature_fallback"] = [0.5]
        let given = try decode(object)
        #expect(given.compressionRatioThreshold == nil)
        #expect(given.logprobThreshold == -1)
        #expect(given.temperatureFallback == [0.5])
        #expect(try JSONDecoder().decode(GenerationConfig.self, from: JSONEncoder().encode(given)) == given)

        let dir = try TemporaryDirectory()
        for (bad, message) in [
            ({ (g: inout GenerationConfig) in g.temperatureFallback = [0.4, 0.2] }, "temperature_fallback must rise"),
            ({ g in g.temperatureFallback = [0, 0.2] }, "temperature_fallback must rise"),
            ({ g in g.temperatureFallback = [11] }, "temperature_fallback must rise"),
            ({ g in g.compressionRatioThreshold = -1 }, "compression_ratio_threshold must be positive"),
            ({ g in g.compressionRatioThreshold = 0 }, "compression_ratio_threshold must be positive"),
        ] {
            var generation = tinyGeneration
            bad(&generation)
            _ = try writeTinyModel(to: dir.path, generation: generation)
            do {
                _ = try WhisperModel(directory: dir.path)
                Issue.record("loaded \(generation)")
            } catch {
                #expect("\(error)".contains(message), "\(error)")
            }
        }
    }

    /// Should keep a window's greedy decoding while it passes the checks, else decode it again at each
    /// fallback temperature until one passes, else keep the likeliest attempt that is not repetitive
    /// (the least repetitive when all are); and decode each window alike alone and in a batch.
    @Test func fallbackRule() throws {
        let temperatures: [Double] = [0, 2, 5, 9]  // the random model is sure of itself: only high ones change its tokens
        let mels = (0..<6).map { randomLogMels(tinyConfig, count: 1, seed: 300 + UInt64($0)) }
        let batch = Tensor(shape: [6, mels[0].count])
        for (b, m) in mels.enumerated() { batch.row(b).update(from: m.data, count: m.count) }
        let policies = [LearnerPolicy](repeating: .auto, count: 6)

        // every window's attempt at each temperature, alone
        let plain = try TinyModel(seed: 9)
        let ws = WhisperWorkspace()
        func encode(_ model: WhisperModel, _ m: Tensor, _ n: Int) -> Tensor {
            model.whisper.encode(logMels: m.data, count: n, policies: Array(policies.prefix(n)), workspace: ws)
        }
        let attempts = mels.map { m in
            temperatures.map { t in
                plain.model.decode(encoded: encode(plain.model, m, 1), count: 1, policies: [.auto], workspace: ws, temperatures: [t])[0]
            }
        }
        for tried in attempts { for (a, t) in zip(tried, temperatures) { #expect(a.temperature == t) } }
        let sampled = attempts.flatMap { $0.dropFirst() }
        let greedy = attempts.map { $0[0] }
        #expect(sampled.contains { s in !greedy.contains { $0.tokens == s.tokens } }, "sampling never changed a window")

        // thresholds under which every greedy decoding passes; under which some windows pass at the first
        // fallback temperature and some at none; and which nothing passes
        let ratios = attempts.flatMap { $0.map(\.compressionRatio) }
        let first = attempts.map(\.[1].averageLogprob).sorted()
        let settings: [(compression: Double, logprob: Double?)] = [
            (ratios.max()! + 1, nil), (2.4, (first[2] + first[3]) / 2), (ratios.filter { $0 > 0 }.min()! / 2, nil),
        ]
        var kinds = Set<String>()
        var kept: [DecodedWindow] = []
        var model: WhisperModel?
        for (compression, threshold) in settings {
            var generation = tinyGeneration
            generation.temperatureFallback = Array(temperatures.dropFirst())
            generation.logprobThreshold = threshold
            generation.compressionRatioThreshold = compression
            let checked = try TinyModel(seed: 9, generation: generation)
            let got = checked.model.decode(encoded: encode(checked.model, batch, 6), count: 6, policies: policies, workspace: ws)
            for (b, tried) in attempts.enumerated() {
                func repeats(_ a: DecodedWindow) -> Bool { a.compressionRatio > compression }
                var want: DecodedWindow
                if let index = tried.firstIndex(where: { !repeats($0) && $0.averageLogprob >= threshold ?? -.infinity }) {
                    let first = tried[index]
                    want = first
                    want.attempts = index + 1
                    kinds.insert(first.temperature == 0 ? "greedy" : "fallback")
                } else if let likeliest = tried.filter({ !repeats($0) }).max(by: { $0.averageLogprob < $1.averageLogprob }) {
                    want = likeliest
                    want.attempts = tried.count
                    kinds.insert("likeliest")
                } else {
                    want = tried.min { $0.compressionRatio < $1.compressionRatio }!
                    want.attempts = tried.count
                    kinds.insert("least repetitive")
                }
                let setting = "window \(b), thresholds \(compression), \(threshold ?? -.infinity)"
                #expect(got[b].tokens == want.tokens, "\(setting)")
                #expect(got[b].temperature == want.temperature, "\(setting)")
                #expect(abs(got[b].averageLogprob - want.averageLogprob) < 1e-4, "\(setting)")
                #expect(got[b].compressionRatio == want.compressionRatio, "\(setting)")
                #expect(got[b].attempts == want.attempts, "\(setting)")
            }
            (kept, model) = (got, checked.model)
        }
        #expect(kinds == ["greedy", "fallback", "likeliest", "least repetitive"],
                "branches taken: \(kinds); attempts (avg logprob, ratio): \(attempts.map { $0.map { ($0.averageLogprob, $0.compressionRatio) } })")

        // transcribe reports the temperature kept
        let transcripts = try #require(model).transcribe(logMels: mels.map { $0.reshaped() })
        #expect(transcripts.map(\.tokens) == kept.map(\.tokens))
        #expect(transcripts.map(\.temperature) == kept.map(\.temperature))
    }
}
