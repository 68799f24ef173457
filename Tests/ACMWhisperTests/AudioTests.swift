import ACMCore
import Foundation
import Testing

@testable import ACMWhisper

/// A RIFF/WAVE file: PCM (format 1) for 16, 24 or 32 bits, IEEE float (format 3) for `float`.
enum WAVSample { case pcm16, pcm24, pcm32, float }

func makeWAV(_ samples: [[Float]], rate: Int, as kind: WAVSample) -> [UInt8] {
    let channels = samples.count, frames = samples.first?.count ?? 0
    let width = kind == .pcm16 ? 2 : kind == .pcm24 ? 3 : 4
    var data: [UInt8] = []
    func le(_ v: UInt32, _ bytes: Int) -> [UInt8] { (0..<bytes).map { UInt8((v >> (8 * $0)) & 0xFF) } }
    for t in 0..<frames {
        for c in 0..<channels {
            let x = samples[c][t]
            switch kind {
            case .pcm16: data += le(UInt32(bitPattern: Int32(Int16(clamping: Int((x * 32768).rounded())))), 2)
            case .pcm24: data += le(UInt32(bitPattern: Int32(clamping: Int((x * 8_388_608).rounded()))), 3)
            case .pcm32: data += le(UInt32(bitPattern: Int32(clamping: Int64((Double(x) * 2_147_483_648).rounded()))), 4)
            case .float: data += le(x.bitPattern, 4)
            }
        }
    }
    var out = Array("RIFF".utf8) + le(UInt32(36 + data.count), 4) + Array("WAVE".utf8)
    out += Array("fmt ".utf8) + le(16, 4) + le(kind == .float ? 3 : 1, 2) + le(UInt32(channels), 2)
    out += le(UInt32(rate), 4) + le(UInt32(rate * channels * width), 4) + le(UInt32(channels * width), 2)
    out += le(UInt32(8 * width), 2)
    out += Array("data".utf8) + le(UInt32(data.count), 4) + data
    return out
}

/// A test signal: two tones and a little deterministic noise.
func testSignal(count: Int, rate: Int, seed: UInt64 = 1) -> [Float] {
    var rng = SeededGenerator(seed: seed)
    return (0..<count).map { i in
        let t = Double(i) / Double(rate)
        return Float(0.3 * sin(2 * .pi * 440 * t) + 0.2 * sin(2 * .pi * 1234.5 * t)) + Float.random(in: -0.01...0.01, using: &rng)
    }
}

@Suite struct AudioTests {
    /// Should decode 16-bit PCM exactly as value/32768, and 24-bit, 32-bit and float WAV to the same signal.
    @Test(arguments: [WAVSample.pcm16, .pcm24, .pcm32, .float])
    func decodesWAV(kind: WAVSample) throws {
        let x = testSignal(count: 1600, rate: 16000)
        let decoded = try decodeAudio(bytes: makeWAV([x], rate: 16000, as: kind))
        #expect(decoded.count == x.count)
        let tolerance: Float = kind == .pcm16 ? 1 / 65536 : 1e-6
        let worst = zip(decoded, x).map { abs($0 - $1) }.max() ?? 0
        #expect(worst <= tolerance, "max |Δ| \(worst)")
        if kind == .pcm16 {
            for i in 0..<x.count { #expect(decoded[i] == Float(Int((x[i] * 32768).rounded())) / 32768) }
        }
    }

    /// Should downmix to the mean of the channels.
    @Test func downmixesToMean() throws {
        let left = testSignal(count: 800, rate: 16000, seed: 2), right = testSignal(count: 800, rate: 16000, seed: 3)
        let decoded = try decodeAudio(bytes: makeWAV([left, right.map { -$0 * 0.5 }], rate: 16000, as: .float))
        var worst: Float = 0
        for i in 0..<800 {
            let mean: Float = (left[i] + -right[i] * 0.5) / 2
            worst = max(worst, abs(decoded[i] - mean))
        }
        #expect(worst == 0)
    }

    /// Should resample to 16 kHz without audible error: the tones of a 22050-Hz signal, away from the
    /// edges, to 1e-3.
    @Test func resamplesTo16k() throws {
        let rate = 22050, count = 22050
        let x = (0..<count).map { Float(0.5 * sin(2 * .pi * 440 * Double($0) / Double(rate))) }
        let decoded = try decodeAudio(bytes: makeWAV([x], rate: rate, as: .float))
        #expect(abs(decoded.count - 16000) <= 1)
        var worst: Float = 0
        for i in 1000..<15000 {
            worst = max(worst, abs(decoded[i] - Float(0.5 * sin(2 * .pi * 440 * Double(i) / 16000))))
        }
        #expect(worst <= 1e-3, "max |Δ| \(worst)")
    }

    /// Should refuse bytes that are not audio, audio without samples, and audio over the length limit,
    /// saying which.
    @Test func refusesBadAudio() throws {
        #expect(throws: WhisperInputError.self) { try decodeAudio(bytes: []) }
        do {
            _ = try decodeAudio(bytes: Array("this is not a sound file at all, just text".utf8))
            Issue.record("text decoded as audio")
        } catch let error as WhisperInputError {
            guard case .unreadable = error else { throw error }
            #expect(error.description.hasPrefix("cannot decode audio"))
        }
        #expect(throws: WhisperInputError.empty) { try decodeAudio(bytes: makeWAV([[]], rate: 16000, as: .pcm16)) }
        // a file cut short keeps the frames it has
        let whole = makeWAV([testSignal(count: 1000, rate: 16000)], rate: 16000, as: .pcm16)
        #expect(try decodeAudio(bytes: Array(whole.prefix(44 + 2 * 600))).count == 600)
        #expect(throws: WhisperInputError.unsupported("sample rate 500 Hz")) {
            try decodeAudio(bytes: makeWAV([[0.1, 0.2]], rate: 500, as: .pcm16))
        }
        let tenSeconds = makeWAV([[Float](repeating: 0.1, count: 80000)], rate: 8000, as: .pcm16)
        #expect(throws: WhisperInputError.tooLong(seconds: 10, limit: 5)) {
            try decodeAudio(bytes: tenSeconds, maximumSeconds: 5)
        }
    }
}

@Suite struct LogMelTests {
    /// Should build librosa's Slaney filterbank (values from `librosa.filters.mel(sr=16000, n_fft=400,
    /// n_mels=80)` as float32).
    @Test func melFiltersMatchLibrosa() {
        let f = LogMelSpectrogram.melFilters(melBins: 80)
        let known: [(Int, Int, Float)] = [
            (0, 1, 0.02486259490251541), (0, 2, 0), (10, 10, 0.019908219575881958), (10, 11, 0.004954375326633453),
            (40, 42, 0.00541110523045063), (40, 43, 0.014735565520823002), (40, 44, 0.006518189795315266),
            (79, 186, 0.000366741674952209), (79, 188, 0.0012993983691558242), (79, 199, 0.00044875903404317796),
        ]
        for (m, k, want) in known { #expect(abs(f.data[m * 201 + k] - want) <= 1e-9, "filter \(m), bin \(k)") }
    }

    /// Should compute with a float GEMM what a direct DFT in Double computes, to 1e-4 after the log.
    @Test func floatDFTMatchesDoubleDFT() {
        // 1.5 s of signal then silence: most frames are zero (cheap for the slow reference), and the
        // floor at max − 8 is reached.
        let samples = testSignal(count: 24000, rate: 16000, seed: 9).enumerated().map { i, x in x * Float(1 + i % 7) / 4 }
        let front = LogMelSpectrogram()
        let got = front.compute(samples16k: samples)
        #expect(got.shape == [80, 3000])

        let n = 400, hop = 160, bins = 201
        var padded = [Double](repeating: 0, count: 480_000 + n)
        for (i, x) in samples.enumerated() { padded[200 + i] = Double(x) }
        for i in 1...200 { padded[200 - i] = padded[200 + i] }  // the tail reflects zeros
        let window = (0..<n).map { 0.5 - 0.5 * cos(2 * Double.pi * Double($0) / Double(n)) }
        var mel = [[Double]](repeating: [Double](repeating: 0, count: 3000), count: 80)
        for t in 0..<3000 {
            let frame = (0..<n).map { padded[t * hop + $0] * window[$0] }
            if frame.allSatisfy({ $0 == 0 }) { continue }
            let power = (0..<bins).map { k -> Double in
                var re = 0.0, im = 0.0
                for i in 0..<n {
                    let angle = 2 * Double.pi * Double(k * i % n) / Double(n)
                    re += frame[i] * cos(angle)
                    im -= frame[i] * sin(angle)
                }
                return re * re + im * im
            }
            for m in 0..<80 {
                var s = 0.0
                for k in 0..<bins { s += Double(front.filters.data[m * bins + k]) * power[k] }
                mel[m][t] = s
            }
        }
        let logs = mel.map { $0.map { log10(max($0, 1e-10)) } }
        let top = logs.flatMap { $0 }.max() ?? 0
        var worst = 0.0
        for m in 0..<80 {
            for t in 0..<3000 {
                let want = (max(logs[m][t], top - 8) + 4) / 4
                worst = max(worst, abs(Double(got.data[m * 3000 + t]) - want))
            }
        }
        #expect(worst <= 1e-4, "max |Δ| \(worst)")
    }

    /// Should pad short audio and trim long audio to 30 s.
    @Test func padsAndTrims() {
        let front = LogMelSpectrogram()
        let short = testSignal(count: 16000, rate: 16000)
        let long = short + [Float](repeating: 0, count: 464_000) + testSignal(count: 50000, rate: 16000, seed: 5)
        #expect(front.compute(samples16k: short).array == front.compute(samples16k: long).array)
    }
}

@Suite struct TokenizerTests {
    /// Should map byte-level BPE strings to bytes and UTF-8 text, skip special ids and replace bytes
    /// that are not UTF-8.
    @Test func decodesTinyVocabulary() throws {
        let dir = try TemporaryDirectory()
        _ = try writeTinyModel(to: dir.path)
        let tokenizer = try WhisperTokenizer(path: "\(dir.path)/tokenizer.json", firstSpecial: TinyTokens.eos)
        #expect(tokenizer.decode([2, 3, 6, 11, 4, 5, 9]) == " hello world, é!")
        #expect(tokenizer.decode([TinyTokens.sot, 8, TinyTokens.eos, 7, 15]) == " the\n")
        #expect(tokenizer.decode([0, 4, 1]) == "a\u{FFFD}b")
        #expect(tokenizer.bytes(of: TinyTokens.noTimestamps) == Array("<|notimestamps|>".utf8))
    }

    /// Should decode tiny.en's real vocabulary: " Hello world", "Hello", " café"; specials skipped.
    @Test func decodesRealVocabulary() throws {
        let tokenizer = try WhisperTokenizer(path: "\(try requireRealModel())/tokenizer.json", firstSpecial: 50256)
        #expect(tokenizer.decode([50257, 50362, 18435, 995, 50256]) == " Hello world")
        #expect(tokenizer.decode([15496]) == "Hello")
        #expect(tokenizer.decode([40304]) == " café")
        #expect(tokenizer.bytes(of: 50257) == Array("<|startoftranscript|>".utf8))
    }
}
