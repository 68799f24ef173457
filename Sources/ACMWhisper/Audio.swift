import Foundation

/// Why audio could not be turned into Whisper's input. Each case says what is wrong with the audio, so
/// that the HTTP front end can return the message as it is.
public enum WhisperInputError: Error, CustomStringConvertible, Equatable {
    /// libsndfile could not read the bytes (its message).
    case unreadable(String)
    /// The audio holds no samples.
    case empty
    case tooLong(seconds: Double, limit: Double)
    /// A channel count or sample rate outside what we accept.
    case unsupported(String)
    case resampling(String)
    /// A log-mel input of the wrong shape.
    case shape(expected: [Int], found: [Int])

    public var description: String {
        switch self {
        case let .unreadable(reason): return "cannot decode audio: \(reason)"
        case .empty: return "the audio has no samples"
        case let .tooLong(seconds, limit):
            return "the audio is \(String(format: "%.1f", seconds)) s long; at most \(String(format: "%.0f", limit)) s is accepted"
        case let .unsupported(what): return "unsupported audio: \(what)"
        case let .resampling(reason): return "cannot resample the audio: \(reason)"
        case let .shape(expected, found): return "log-mel input has shape \(found), expected \(expected)"
        }
    }
}

/// Decodes an audio file held in memory to Whisper's input signal: mono (the mean of the channels),
/// 16 kHz (libsoxr, very high quality), float samples in [-1, 1].
///
/// - Parameters:
///   - bytes: a whole file in any format libsndfile reads (WAV PCM 16/24/32 or float, FLAC, …).
///   - maximumSeconds: longer audio is refused before it is decoded. Whisper only hears the first
///     30 s; the limit bounds the memory and work a request can cause (one float per input frame).
public func decodeAudio(bytes: [UInt8], maximumSeconds: Double = 300) throws -> [Float] {
    let file = try readSoundFile(bytes: bytes, maximumSeconds: maximumSeconds)
    return try resample(file.mono, from: file.sampleRate, to: LogMelSpectrogram.sampleRate)
}

/// `decodeAudio(bytes:)` for a `Data` body.
public func decodeAudio(data: Data, maximumSeconds: Double = 300) throws -> [Float] {
    try decodeAudio(bytes: [UInt8](data), maximumSeconds: maximumSeconds)
}
