// libsndfile over a byte buffer: the one file that imports CSndFile.

import CSndFile
import Foundation

#if canImport(Glibc)
import Glibc
#endif

/// A file's samples as libsndfile decoded them, downmixed to mono, at the file's own rate.
struct SoundFileSamples {
    /// The mean of the channels, in [-1, 1) for integer formats (libsndfile's float normalisation).
    var mono: [Float]
    var channels: Int
    var sampleRate: Int
}

/// The bytes behind libsndfile's virtual I/O and the read position; reached through `user_data`.
final class MemoryReader {
    let bytes: [UInt8]
    var position = 0

    init(_ bytes: [UInt8]) { self.bytes = bytes }

    static func from(_ user: UnsafeMutableRawPointer?) -> MemoryReader? {
        user.map { Unmanaged<MemoryReader>.fromOpaque($0).takeUnretainedValue() }
    }
}

// libsndfile's virtual I/O callbacks. C calls them through plain function pointers, so they are
// top-level functions that find their buffer through `user_data`.

func memoryLength(_ user: UnsafeMutableRawPointer?) -> sf_count_t {
    sf_count_t(MemoryReader.from(user)?.bytes.count ?? 0)
}

func memorySeek(_ offset: sf_count_t, _ whence: Int32, _ user: UnsafeMutableRawPointer?) -> sf_count_t {
    guard let reader = MemoryReader.from(user) else { return -1 }
    let base: Int
    switch whence {
    case SEEK_SET: base = 0
    case SEEK_CUR: base = reader.position
    case SEEK_END: base = reader.bytes.count
    default: return -1
    }
    let target = base + Int(offset)
    guard target >= 0 else { return -1 }
    // Seeking past the end is allowed (as for a file); reads there return nothing.
    reader.position = target
    return sf_count_t(target)
}

func memoryRead(_ ptr: UnsafeMutableRawPointer?, _ count: sf_count_t, _ user: UnsafeMutableRawPointer?) -> sf_count_t {
    guard let reader = MemoryReader.from(user), let ptr, count > 0 else { return 0 }
    let n = max(0, min(Int(count), reader.bytes.count - reader.position))
    if n > 0 {
        reader.bytes.withUnsafeBytes { ptr.copyMemory(from: $0.baseAddress! + reader.position, byteCount: n) }
        reader.position += n
    }
    return sf_count_t(n)
}

func memoryWrite(_ ptr: UnsafeRawPointer?, _ count: sf_count_t, _ user: UnsafeMutableRawPointer?) -> sf_count_t { 0 }

func memoryTell(_ user: UnsafeMutableRawPointer?) -> sf_count_t {
    sf_count_t(MemoryReader.from(user)?.position ?? 0)
}

/// Decodes any format libsndfile reads (WAV PCM 16/24/32 and float, FLAC, Ogg Vorbis, AIFF, …) from
/// memory, the way an HTTP request body arrives, and downmixes it to mono.
///
/// - Parameter maximumSeconds: longer audio is refused before its samples are decoded.
func readSoundFile(bytes: [UInt8], maximumSeconds: Double) throws -> SoundFileSamples {
    guard !bytes.isEmpty else { throw WhisperInputError.unreadable("no audio bytes") }
    let reader = MemoryReader(bytes)
    let context = Unmanaged.passRetained(reader)
    defer { context.release() }
    var io = SF_VIRTUAL_IO(
        get_filelen: memoryLength, seek: memorySeek, read: memoryRead, write: memoryWrite, tell: memoryTell)
    var info = SF_INFO()
    guard let file = sf_open_virtual(&io, Int32(SFM_READ), &info, context.toOpaque()) else {
        throw WhisperInputError.unreadable(String(cString: sf_strerror(nil)))
    }
    defer { sf_close(file) }

    let channels = Int(info.channels), rate = Int(info.samplerate), frames = Int(info.frames)
    guard (1...64).contains(channels) else { throw WhisperInputError.unsupported("\(channels) channels") }
    guard (1_000...384_000).contains(rate) else { throw WhisperInputError.unsupported("sample rate \(rate) Hz") }
    guard frames > 0 else { throw WhisperInputError.empty }
    let seconds = Double(frames) / Double(rate)
    guard seconds <= maximumSeconds else { throw WhisperInputError.tooLong(seconds: seconds, limit: maximumSeconds) }

    // Read a block of frames at a time and downmix it, so that memory is one float per frame.
    var mono = [Float](repeating: 0, count: frames)
    let blockFrames = 16_384
    var block = [Float](repeating: 0, count: blockFrames * channels)
    var done = 0
    while done < frames {
        let want = min(blockFrames, frames - done)
        let got = Int(block.withUnsafeMutableBufferPointer { sf_readf_float(file, $0.baseAddress, sf_count_t(want)) })
        if got <= 0 { break }  // a truncated file reports more frames than it holds: keep what was there
        block.withUnsafeBufferPointer { b in
            for t in 0..<got {
                var sum: Float = 0
                for c in 0..<channels { sum += b[t * channels + c] }
                mono[done + t] = channels == 1 ? sum : sum / Float(channels)  // numpy's mean, not sum·(1/c)
            }
        }
        done += got
    }
    guard done > 0 else { throw WhisperInputError.empty }
    mono.removeLast(frames - done)
    return SoundFileSamples(mono: mono, channels: channels, sampleRate: rate)
}
