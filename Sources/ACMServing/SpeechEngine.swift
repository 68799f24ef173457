import ACMCore
import ACMWhisper

/// A Whisper model as its runner drives it: a request's input is `count` log-mel spectrograms, each
/// [num_mel_bins, 3000]; a batch is ONE call of `WhisperModel.transcribe`, whose encoder runs over all
/// the batch's utterances and whose decoder steps all unfinished ones together.
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

    /// [num_mel_bins, 3000]: one utterance's log-mel.
    public var logMelShape: [Int] { [model.config.whisper.numMelBins, model.config.whisper.inputFrames] }

    public func problem(with mels: [Tensor], count: Int) -> String? {
        guard mels.count == count else { return "\(mels.count) log-mel inputs for \(count) utterances" }
        if let bad = mels.first(where: { $0.shape != logMelShape }) {
            return "a log-mel input has shape \(bad.shape); expected \(logMelShape)"
        }
        return nil
    }

    public func run(_ inputs: [[Tensor]], counts: [Int], policies: [LearnerPolicy]) throws -> EngineBatch<[Transcription]> {
        let mels = inputs.flatMap { $0 }
        let learners = LearnerCounts(acms: model.whisper.acms, items: mels.count)
        let utterancePolicies = zip(counts, policies).flatMap { count, policy in repeatElement(policy, count: count) }
        let all = try model.transcribe(logMels: mels, policies: utterancePolicies, workspace: workspace, learners: learners)
        var outputs: [[Transcription]] = []
        var first = 0
        for count in counts {
            outputs.append(Array(all[first..<first + count]))
            first += count
        }
        return EngineBatch(outputs: outputs, learnerHistogram: learners.histogram, acmPaths: model.whisper.acmPaths)
    }
}

/// The longest audio a request may carry, in seconds. Whisper hears one 30-s window; this server does
/// not transcribe longer audio window by window, so it refuses it rather than answer for a part of it.
public let maximumAudioSeconds = 30.0

extension WhisperModel {
    /// The log-mel input of one encoded audio file (WAV, FLAC, … as libsndfile reads): decoded,
    /// downmixed, resampled to 16 kHz, padded to 30 s. Throws `WhisperInputError` for audio that is
    /// undecodable, empty, longer than `maximumAudioSeconds`, or holds NaN or infinite samples (a float
    /// WAV can).
    public func logMel(audio bytes: [UInt8]) throws -> Tensor {
        let samples = try decodeAudio(bytes: bytes, maximumSeconds: maximumAudioSeconds)
        guard samples.allSatisfy({ $0.isFinite }) else { throw WhisperInputError.unsupported("NaN or infinite samples") }
        return logMel(samples16k: samples)
    }
}
