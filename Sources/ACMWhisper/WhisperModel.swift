import ACMCore
import CZlib
import Foundation

/// A Whisper model directory loaded for serving (docs/whisper.md): `config.json`, `model.safetensors`
/// and `tokenizer.json`.
public final class WhisperModel: @unchecked Sendable {
    public let directory: String
    public let config: WhisperModelConfig
    public let whisper: Whisper
    public let tokenizer: WhisperTokenizer
    public let frontEnd: LogMelSpectrogram
    /// What the GEMMs run in: the precision asked for where this CPU has it (`Precision.effective`).
    public let precision: Precision

    /// - Parameter precision: what the GEMMs run in; bf16 falls back to f32 where the CPU has no bfloat16
    ///   instructions (`precision` then says f32).
    public init(directory: String, precision: Precision = .f32) throws {
        self.directory = directory
        config = try WhisperModelConfig.load(path: "\(directory)/config.json")
        let file = try SafeTensorsFile(path: "\(directory)/model.safetensors")
        self.precision = precision.effective
        whisper = try Whisper(config: config.whisper, acm: config.acm, weights: Weights(file: file, precision: self.precision))
        tokenizer = try WhisperTokenizer(path: "\(directory)/tokenizer.json", firstSpecial: config.generation.eosTokenId)
        frontEnd = LogMelSpectrogram(melBins: config.whisper.numMelBins)
    }

    /// The log-mel spectrogram of 16-kHz mono samples, [num_mel_bins, 3000]: the first 30 s, zero-padded.
    public func logMel(samples16k: [Float]) -> Tensor { frontEnd.compute(samples16k: samples16k) }

    /// The log-mels of consecutive 30-s windows of 16-kHz mono samples, the last zero-padded; one window
    /// for 30 s or less (none shorter than that is dropped, so silence still gets its window).
    public func logMelWindows(samples16k: [Float]) -> [Tensor] {
        let window = LogMelSpectrogram.windowSamples
        let count = max(1, (samples16k.count + window - 1) / window)
        return (0..<count).map { w in
            logMel(samples16k: Array(samples16k[(w * window)..<min((w + 1) * window, samples16k.count)]))
        }
    }

    /// Transcribes a batch of log-mel spectrograms, each [num_mel_bins, 2·max_source_positions] (one 30-s
    /// window), by greedy decoding with the temperature fallback (`decode`); the encoder and every decoder step run over the whole batch.
    ///
    /// - Parameters:
    ///   - policies: each utterance's learner policy at the ACMs, a cap spread over them as for the ViT
    ///     (models without ACMs ignore it); nil: the gates choose (`.auto`) for every utterance.
    ///   - learners: where the ACMs count their learners, over the encoder and every decoder step;
    ///     utterance b is item b. Each transcription's compute fraction comes from these counts.
    public func transcribe(
        logMels: [Tensor], policies: [LearnerPolicy]? = nil, workspace: WhisperWorkspace = WhisperWorkspace(),
        learners: LearnerCounts? = nil
    ) throws -> [Transcription] {
        try transcribe(windows: logMels.map { [$0] }, policies: policies, workspace: workspace, learners: learners)
    }

    /// Transcribes utterances of any length, each given as its consecutive 30-s windows' log-mels
    /// (`logMelWindows`): every window of every utterance runs in one batch, each under its utterance's
    /// policy, and an utterance's transcription is its windows' tokens one after the other. Each window
    /// is decoded on its own, from the prompt, as Whisper decodes a 30-s input; words cut by a window's
    /// edge are heard in halves.
    ///
    /// - Parameters:
    ///   - policies: each utterance's learner policy; nil: `.auto` for every utterance.
    ///   - learners: where the ACMs count their learners; utterance u (all its windows) is item u.
    public func transcribe(
        windows: [[Tensor]], policies: [LearnerPolicy]? = nil, workspace: WhisperWorkspace = WhisperWorkspace(),
        learners: LearnerCounts? = nil
    ) throws -> [Transcription] {
        let policies = policies ?? Array(repeating: .auto, count: windows.count)
        precondition(policies.count == windows.count, "\(policies.count) policies for \(windows.count) utterances")
        if windows.isEmpty { return [] }
        // window b of the batch belongs to utterance owner[b]
        let owner = windows.indices.flatMap { u in repeatElement(u, count: windows[u].count) }
        let mels = windows.flatMap { $0 }
        let shape = [config.whisper.numMelBins, config.whisper.inputFrames]
        let n = whisper.inputCount
        let batch = Tensor(shape: [mels.count, n])
        for (b, mel) in mels.enumerated() {
            guard mel.shape == shape || (mel.shape == [1] + shape) else {
                throw WhisperInputError.shape(expected: shape, found: mel.shape)
            }
            batch.row(b).update(from: mel.data, count: n)
        }
        let counts = learners ?? LearnerCounts(acms: whisper.acms, items: windows.count)
        let windowPolicies = owner.map { policies[$0] }
        let encoded = whisper.encode(
            logMels: batch.data, count: mels.count, policies: windowPolicies, workspace: workspace, learners: counts,
            items: owner)
        let perWindow = decode(
            encoded: encoded, count: mels.count, policies: windowPolicies, workspace: workspace, learners: counts,
            items: owner)
        var tokens = [[Int]](repeating: [], count: windows.count)
        var temperatures = [Double](repeating: 0, count: windows.count)
        for (b, u) in owner.enumerated() {
            tokens[u] += perWindow[b].tokens
            temperatures[u] = max(temperatures[u], perWindow[b].temperature)
        }
        let fractions = counts.computeFraction
        return tokens.enumerated().map { u, ids in
            Transcription(
                tokens: ids, text: tokenizer.decode(ids), computeFraction: fractions[u], temperature: temperatures[u])
        }
    }

    /// Decodes a batch of encoded windows as openai-whisper's transcribe does each window: greedily, then
    /// each window that fails a check of `config.generation` (a compression ratio above its threshold: a
    /// repetition loop; an average log-probability below its threshold) again from the prompt, sampled at
    /// each fallback temperature in turn, until one passes. The windows decoded again at a temperature
    /// run together, in the same decoder passes. When every attempt fails, a window keeps the attempt
    /// with the highest average log-probability among those that pass the compression check, or the
    /// least repetitive one when none does (openai-whisper keeps its last attempt).
    ///
    /// - Parameters:
    ///   - encoded: [count·S, d] from `Whisper.encode`.
    ///   - policies: each window's learner policy at the decoder's ACMs.
    ///   - learners: where the ACMs count their learners (every attempt's steps count), window b as item
    ///     `items[b]` (default b).
    ///   - temperatures: the temperatures to try, in turn (default 0, then `temperatureFallback`).
    public func decode(
        encoded: Tensor, count: Int, policies: [LearnerPolicy], workspace: WhisperWorkspace,
        learners: LearnerCounts? = nil, items: [Int]? = nil, temperatures: [Double]? = nil
    ) -> [DecodedWindow] {
        let generation = config.generation
        let state = whisper.makeDecoderState(encoded: encoded, count: count)
        var attempts = [[DecodedWindow]](repeating: [], count: count)
        var pending = Array(0..<count)
        for temperature in temperatures ?? [0] + generation.temperatureFallback where !pending.isEmpty {
            let result = whisper.search(
                state: state, slots: pending, generation: generation, temperature: temperature, policies: policies,
                workspace: workspace, learners: learners, items: items)
            pending = pending.filter { slot in
                let ids = result.tokens[slot]
                let window = DecodedWindow(
                    tokens: ids, temperature: temperature,
                    averageLogprob: result.sumLogprobs[slot] / Double(ids.count + 1),
                    compressionRatio: Self.compressionRatio(tokenizer.decode(ids)))
                attempts[slot].append(window)
                return !passesFallbackChecks(window)
            }
        }
        return attempts.map { tried in
            var kept: DecodedWindow
            let unrepeated = tried.filter(passesCompressionCheck)
            if let last = tried.last, passesFallbackChecks(last) {
                kept = last
            } else if unrepeated.isEmpty {
                kept = tried.min { $0.compressionRatio < $1.compressionRatio }!
            } else {
                kept = unrepeated.max { $0.averageLogprob < $1.averageLogprob }!
            }
            kept.attempts = tried.count
            return kept
        }
    }

    private func passesCompressionCheck(_ window: DecodedWindow) -> Bool {
        window.compressionRatio <= config.generation.compressionRatioThreshold ?? .infinity
    }

    private func passesFallbackChecks(_ window: DecodedWindow) -> Bool {
        passesCompressionCheck(window) && window.averageLogprob >= config.generation.logprobThreshold ?? -.infinity
    }

    /// openai-whisper's compression ratio of a window's text: its UTF-8 bytes (whitespace trimmed) over
    /// their size compressed by zlib at the default level; 0 for no text.
    public static func compressionRatio(_ text: String) -> Double {
        let bytes = Array(text.trimmingCharacters(in: .whitespacesAndNewlines).utf8)
        var size = compressBound(uLong(bytes.count))
        var out = [UInt8](repeating: 0, count: Int(size))
        let status = compress2(&out, &size, bytes, uLong(bytes.count), Z_DEFAULT_COMPRESSION)
        precondition(status == Z_OK, "zlib compress2 failed: \(status)")
        return Double(bytes.count) / Double(size)
    }

    /// Transcribes 16-kHz mono signals (e.g. from `decodeAudio(bytes:)`) of any length, window by window.
    public func transcribe(
        samples16k: [[Float]], policies: [LearnerPolicy]? = nil, workspace: WhisperWorkspace = WhisperWorkspace()
    ) throws -> [Transcription] {
        try transcribe(windows: samples16k.map { logMelWindows(samples16k: $0) }, policies: policies, workspace: workspace)
    }
}
