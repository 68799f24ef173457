import ACMCore
import Foundation

/// A Whisper model directory loaded for serving (docs/whisper.md): `config.json`, `model.safetensors`
/// and `tokenizer.json`.
public final class WhisperModel: @unchecked Sendable {
    public let directory: String
    public let config: WhisperModelConfig
    public let whisper: Whisper
    public let tokenizer: WhisperTokenizer
    public let frontEnd: LogMelSpectrogram

    public init(directory: String) throws {
        self.directory = directory
        config = try WhisperModelConfig.load(path: "\(directory)/config.json")
        let file = try SafeTensorsFile(path: "\(directory)/model.safetensors")
        whisper = try Whisper(config: config.whisper, acm: config.acm, weights: Weights(file: file))
        tokenizer = try WhisperTokenizer(path: "\(directory)/tokenizer.json", firstSpecial: config.generation.eosTokenId)
        frontEnd = LogMelSpectrogram(melBins: config.whisper.numMelBins)
    }

    /// The log-mel spectrogram of 16-kHz mono samples, [num_mel_bins, 3000]: the first 30 s, zero-padded.
    public func logMel(samples16k: [Float]) -> Tensor { frontEnd.compute(samples16k: samples16k) }

    /// Transcribes a batch of log-mel spectrograms, each [num_mel_bins, 2·max_source_positions], by
    /// greedy decoding; the encoder and every decoder step run over the whole batch.
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
        if logMels.isEmpty { return [] }
        let policies = policies ?? Array(repeating: .auto, count: logMels.count)
        precondition(policies.count == logMels.count, "\(policies.count) policies for \(logMels.count) utterances")
        let shape = [config.whisper.numMelBins, config.whisper.inputFrames]
        let n = whisper.inputCount
        let batch = Tensor(shape: [logMels.count, n])
        for (b, mel) in logMels.enumerated() {
            guard mel.shape == shape || (mel.shape == [1] + shape) else {
                throw WhisperInputError.shape(expected: shape, found: mel.shape)
            }
            batch.row(b).update(from: mel.data, count: n)
        }
        let counts = learners ?? LearnerCounts(acms: whisper.acms, items: logMels.count)
        let encoded = whisper.encode(
            logMels: batch.data, count: logMels.count, policies: policies, workspace: workspace, learners: counts)
        let tokens = whisper.greedyDecode(
            encoded: encoded, count: logMels.count, generation: config.generation, policies: policies,
            workspace: workspace, learners: counts)
        let fractions = counts.computeFraction
        return tokens.enumerated().map { b, ids in
            Transcription(tokens: ids, text: tokenizer.decode(ids), computeFraction: fractions[b])
        }
    }

    /// Transcribes 16-kHz mono signals (e.g. from `decodeAudio(bytes:)`): the first 30 s of each.
    public func transcribe(
        samples16k: [[Float]], policies: [LearnerPolicy]? = nil, workspace: WhisperWorkspace = WhisperWorkspace()
    ) throws -> [Transcription] {
        try transcribe(logMels: samples16k.map { logMel(samples16k: $0) }, policies: policies, workspace: workspace)
    }
}
