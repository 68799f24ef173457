import ACMCore

/// Whisper's greedy search over a batch of utterances, apart from the network: it says which slots to
/// run next with which tokens, and turns their logits into the next tokens. English-only rules: every
/// sequence starts from `generation.prompt`; `suppress_tokens` are never chosen,
/// `begin_suppress_tokens` not as the first generated token; a sequence stops at the end token or after
/// `max_new_tokens` generated tokens. Ties go to the lower id (argmax's first maximum).
struct GreedySearch {
    let generation: GenerationConfig
    /// Each slot's generated tokens so far, the end token not included.
    private(set) var generated: [[Int]]
    /// Slots still being decoded, in slot order.
    private(set) var live: [Int]
    private var steps = 0

    init(count: Int, generation: GenerationConfig) {
        self.generation = generation
        generated = Array(repeating: [], count: count)
        live = Array(0..<count)
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
            if best == generation.eosTokenId { continue }
            generated[slot].append(best)
            if generated[slot].count < generation.maxNewTokens { stillLive.append(slot) }
        }
        live = stillLive
        steps += 1
    }
}

/// One utterance's result: the generated token ids (prompt and end token excluded) and their text.
public struct Transcription: Sendable, Equatable {
    public var tokens: [Int]
    public var text: String
    /// Executed over all learner FLOPs of the model's ACMs, encoder and decoder steps together; 1 for a
    /// model without ACMs.
    public var computeFraction: Double

    public init(tokens: [Int], text: String, computeFraction: Double = 1) {
        self.tokens = tokens
        self.text = text
        self.computeFraction = computeFraction
    }
}

extension Whisper {
    /// Greedy decoding of a batch: every decoder pass runs all live utterances together, one row each
    /// (the prompt's rows at the first pass), and finished utterances drop out.
    ///
    /// - Parameters:
    ///   - encoded: [count·S, d] from `encode`.
    ///   - policies: each utterance's learner policy at the decoder's ACM MLPs.
    ///   - learners: where the ACMs count their learners, utterance b as item `items[b]` (default b).
    /// - Returns: each utterance's generated tokens, the end token excluded.
    public func greedyDecode(
        encoded: Tensor, count: Int, generation: GenerationConfig, policies: [LearnerPolicy],
        workspace ws: WhisperWorkspace, learners: LearnerCounts? = nil, items: [Int]? = nil
    ) -> [[Int]] {
        let state = makeDecoderState(encoded: encoded, count: count)
        var search = GreedySearch(count: count, generation: generation)
        while !search.finished {
            let logits = decode(
                tokens: search.nextTokens, slots: search.live, state: state, policies: policies, workspace: ws,
                learners: learners, items: items)
            search.advance(logits: logits)
        }
        return search.generated
    }
}
