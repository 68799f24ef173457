// Fuzz target: audio decoding as the speech endpoint runs it: libsndfile over memory (readSoundFile: the
// virtual I/O callbacks, the channel, rate and length checks, the block-wise downmix), then the
// resampling to 16 kHz (libsoxr). libsndfile reads WAV and every other format it knows from the same bytes.
import Foundation

@testable import ACMWhisper

/// The server's default `max_audio_seconds`.
let maximumSeconds = 600.0

@_cdecl("LLVMFuzzerTestOneInput")
func fuzzWAV(_ data: UnsafePointer<UInt8>?, _ size: Int) -> CInt {
    let bytes = Array(UnsafeBufferPointer(start: data, count: size))
    do {
        let file = try readSoundFile(bytes: bytes, maximumSeconds: maximumSeconds)
        precondition(!file.mono.isEmpty && (1...64).contains(file.channels))
        precondition(Double(file.mono.count) / Double(file.sampleRate) <= maximumSeconds)
        let samples = try resample(file.mono, from: file.sampleRate, to: LogMelSpectrogram.sampleRate)
        _ = samples.count
    } catch is WhisperInputError {
        // a 400
    } catch {
        fatalError("not a WhisperInputError: \(error)")
    }
    return 0
}
