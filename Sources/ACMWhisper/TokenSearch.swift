import ACMCore
import CACMKernels
import Foundation

/// Whisper's token search over a batch of windows, apart from the network: it says which slots to run
/// next with which tokens, and turns their logits into the next tokens. English-only rules: every
/// sequence starts from `generation.prompt`; `suppress_tokens` are never chosen,
/// `begin_suppress_tokens` not as the first generated token; a sequence stops at the end token or after
/// `max_new_tokens` generated tokens.
///
/// At temperature 0 the search is greedy: ties go to the lower id (argmax's first maximum). Above 0 it
/// samples from softmax(logits / T), by the Gumbel-max trick with noise that is a function of the
/// temperature, the step and the token id alone (`gumbel`): a window's tokens do not depend on its slot,
/// its batch or the run, and the PyTorch reference draws the same (tools/acm_tools/whisper_ref.py).
struct TokenSearch {
    let generation: GenerationConfig
    let temperature: Double
    /// Each slot's generated tokens so far, the end token not included.
    private(set) var generated: [[Int]]
    /// Each slot's Σ log p(token) under the untempered softmax, over its generated tokens and the end
    /// token when it came (openai-whisper's sum_logprobs).
    private(set) var sumLogprobs: [Double]
    /// Slots still being decoded, in slot order.
    private(set) var live: [Int]
    private var steps = 0

    /// - Parameters:
    ///   - count: slots in the batch; `slots` (default all) are searched, the others left as they are.
    init(count: Int, slots: [Int]? = nil, generation: GenerationConfig, temperature: Double = 0) {
        precondition(temperature >= 0 && temperature.isFinite)
        self.generation = generation
        self.temperature = temperature
        generated = Array(repeating: [], count: count)
        sumLogprobs = Array(repeating: 0, count: count)
        live = slots ?? Array(0..<count)
    }

    var finished: Bool { live.isEmpty }

    /// The new tokens of each live slot for the next decoder pass: the prompt at first, then the last
    /// token chosen.
    var nextTokens: [[Int]] {
        live.map { steps == 0 ? generation.prompt : [generated[$0].last ?? generation.prompt[0]] }
    }

    /// Chooses each live slot's next token from its row of `logits` [live.count, vocab] (modified: the
    /// suppressed entries become −∞) and drops the slots that are done.
    mutating func advance(logits: Tensor) {
        precondition(logits.rows == live.count)
        let vocab = logits.columns
        var stillLive: [Int] = []
        for (r, slot) in live.enumerated() {
            let row = logits.row(r)
            for id in generation.suppressTokens { row[id] = -.infinity }
            if steps == 0 { for id in generation.beginSuppressTokens { row[id] = -.infinity } }
            var best = 0
            for c in 1..<vocab where row[c] > row[best] { best = c }
            let chosen = temperature == 0 ? best : sample(row, vocab: vocab, largest: row[best])
            // log-softmax of the chosen token: logit − max − log Σ e^(logit − max)
            let normaliser = Double(row[best]) + Double(log(acm_sum_exp(row, vocab, row[best])))
            sumLogprobs[slot] += Double(row[chosen]) - normaliser
            if chosen == generation.eosTokenId { continue }
            generated[slot].append(chosen)
            if generated[slot].count < generation.maxNewTokens { stillLive.append(slot) }
        }
        live = stillLive
        steps += 1
    }

    /// argmax over c of logit_c / T + g(T, step, c): a draw from softmax(logits / T). Only tokens within
    /// the noise's range (`TokenSearch.gumbelRange`) of the largest scaled logit can win, so the noise is
    /// drawn for those alone; ties go to the lower id.
    private func sample(_ row: UnsafeMutablePointer<Float>, vocab: Int, largest: Float) -> Int {
        let t = temperature
        let floor = Double(largest) - Self.gumbelRange * t
        var best = -1
        var bestScore = -Double.infinity
        for c in 0..<vocab where Double(row[c]) >= floor {
            let score = Double(row[c]) / t + Self.gumbel(temperature: temperature, step: steps, token: c)
            if score > bestScore {
                best = c
                bestScore = score
            }
        }
        return best
    }

    /// The width of `gumbel`'s range, [−log(−log 2⁻⁵⁴), −log(−log(1 − 2⁻⁵⁴))] ≈ [−3.62, 37.43], rounded up.
    static let gumbelRange = 41.1

    /// Standard Gumbel noise, −log(−log u), with u in (0, 1) from SplitMix64's output for the key
    /// milli-temperature << 40 | step << 20 | token: (top 53 bits + ½) · 2⁻⁵³.
    static func gumbel(temperature: Double, step: Int, token: Int) -> Double {
        let milli = UInt64((temperature * 1000).rounded())
        let key = milli << 40 | UInt64(step) << 20 | UInt64(token)
        var generator = SeededGenerator(seed: key)
        let u = (Double(generator.next() >> 11) + 0.5) * 0x1p-53
        return -log(-log(u))
    }
}

/// One window's decoding: its tokens and how sure the model was of them.
public struct DecodedWindow: Sendable, Equatable {
    /// The generated token ids, the end token excluded.
    public var tokens: [Int]
    /// The temperature they were decoded at: 0 for greedy, else the fallback that was kept.
    public var temperature: Double
    /// Σ log p over the tokens and the end token, divided by their count (openai-whisper's avg_logprob).
    public var averageLogprob: Double
    /// The UTF-8 bytes of the window's text over their zlib-compressed size; high for repetitive text.
    public var compressionRatio: Double
    /// The decodings the window took: 1 when greedy decoding passed; more when the fallback ran, even if
    /// greedy decoding was kept in the end.
    public var attempts = 1
}

/// One utterance's result: the generated token ids (prompt and end token excluded) and their text.
public struct Transcription: Sendable, Equatable {
    public var tokens: [Int]
    public var text: String
    /// Executed over all learner FLOPs of the model's ACMs, encoder and decoder steps together; 1 for a
    /// model without ACMs.
    public var computeFraction: Double
    /// The highest temperature any of its windows was decoded at: 0 when greedy decoding was kept for
    /// every window.
    public var temperature: Double

    public init(tokens: [Int], text: String, computeFraction: Double = 1, temperature: Double = 0) {
        self.tokens = tokens
        self.text = text
        self.computeFraction = computeFraction
        self.temperature = temperature
    }
}

extension Whisper {
    /// Decodes some slots of a decoder state from the prompt, at one temperature: every decoder pass runs
    /// all live slots together, one row each (the prompt's rows at the first pass), and finished slots
    /// drop out. The searched slots' caches start over; the other slots are not touched.
    ///
    /// - Parameters:
    ///   - slots: the slots to decode (default all), each utterance b of `policies` in slot b.
    ///   - policies: each slot's learner policy at the decoder's ACM MLPs.
    ///   - learners: where the ACMs count their learners, slot b as item `items[b]` (default b).
    /// - Returns: each slot's generated tokens (the end token excluded) and Σ log p, indexed by slot;
    ///   empty for slots not searched.
    func search(
        state: WhisperDecoderState, slots: [Int]? = nil, generation: GenerationConfig, temperature: Double = 0,
        policies: [LearnerPolicy], workspace ws: WhisperWorkspace, learners: LearnerCounts? = nil,
        items: [Int]? = nil
    ) -> (tokens: [[Int]], sumLogprobs: [Double]) {
        var search = TokenSearch(count: state.slots, slots: slots, generation: generation, temperature: temperature)
        for slot in search.live { state.lengths[slot] = 0 }
        while !search.finished {
            let logits = decode(
                tokens: search.nextTokens, slots: search.live, state: state, policies: policies, workspace: ws,
                learners: learners, items: items)
            search.advance(logits: logits)
        }
        return (search.generated, search.sumLogprobs)
    }

    /// Greedy decoding of a batch, without the temperature fallback (`WhisperModel.decode` has it).
    ///
    /// - Parameters:
    ///   - encoded: [count·S, d] from `encode`.
    /// - Returns: each utterance's generated tokens, the end token excluded.
    public func greedyDecode(
        encoded: Tensor, count: Int, generation: GenerationConfig, policies: [LearnerPolicy],
        workspace ws: WhisperWorkspace, learners: LearnerCounts? = nil, items: [Int]? = nil
    ) -> [[Int]] {
        search(
            state: makeDecoderState(encoded: encoded, count: count), generation: generation, policies: policies,
            workspace: ws, learners: learners, items: items
        ).tokens
    }
}
