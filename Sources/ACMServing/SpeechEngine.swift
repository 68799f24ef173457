import ACMCore
import ACMWhisper

/// A Whisper model as its runner drives it: a request's input is `count` utterances, each the log-mels
/// of its consecutive 30-s windows ([num_mel_bins, 3000] each; one for a log-mel input or audio up to
/// 30 s); a batch is ONE call of `WhisperModel.transcribe`, whose encoder runs over every window of the
/// batch and whose decoder steps all unfinished ones together.
///
/// Each utterance runs under its request's policy (a cap spread over the ACMs as for the ViT), so a
/// request's result does not depend on the rest of its batch. The batch's learner counts, when the model
/// has ACMs, go into its `EngineBatch`.
public final class SpeechEngine: BatchEngine, @unchecked Sendable {
    public static let itemName = "utterances"
    public let model: WhisperModel
    // The loop thread's alone.
    private let workspace = WhisperWorkspace()

    public init(model: WhisperModel) { self.model = model }

    /// [num_mel_bins, 3000]: one 30-s window's log-mel.
    public var logMelShape: [Int] { [model.config.whisper.numMelBins, model.config.whisper.inputFrames] }

    public func problem(with utterances: [[Tensor]], count: Int) -> String? {
        guard utterances.count == count else { return "\(utterances.count) utterances' log-mels for \(count) utterances" }
        if utterances.contains(where: \.isEmpty) { return "an utterance has no log-mel window" }
        if let bad = utterances.joined().first(where: { $0.shape != logMelShape }) {
            return "a log-mel input has shape \(bad.shape); expected \(logMelShape)"
        }
        return nil
    }

    public func run(_ inputs: [[[Tensor]]], counts: [Int], policies: [LearnerPolicy]) throws -> EngineBatch<[Transcription]> {
        let utterances = inputs.flatMap { $0 }
        let learners = LearnerCounts(acms: model.whisper.acms, items: utterances.count)
        let utterancePolicies = zip(counts, policies).flatMap { count, policy in repeatElement(policy, count: count) }
        let all = try model.transcribe(windows: utterances, policies: utterancePolicies, workspace: workspace, learners: learners)
        var outputs: [[Transcription]] = []
        var first = 0
        for count in counts {
            outputs.append(Array(all[first..<first + count]))
            first += count
        }
        return EngineBatch(outputs: outputs, learnerHistogram: learners.histogram, acmPaths: model.whisper.acmPaths)
    }
}

extension WhisperModel {
    /// The log-mels of one encoded audio file (WAV, FLAC, … as libsndfile reads), window by window:
    /// decoded, downmixed, resampled to 16 kHz, cut into consecutive 30-s windows, the last padded.
    /// Throws `WhisperInputError` for audio that is undecodable, empty, longer than `maximumSeconds`, or
    /// holds NaN or infinite samples (a float WAV can).
    public func logMelWindows(audio bytes: [UInt8], maximumSeconds: Double) throws -> [Tensor] {
        let samples = try decodeAudio(bytes: bytes, maximumSeconds: maximumSeconds)
        guard samples.allSatisfy({ $0.isFinite }) else { throw WhisperInputError.unsupported("NaN or infinite samples") }
        return logMelWindows(samples16k: samples)
    }
}
