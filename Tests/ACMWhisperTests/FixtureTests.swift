import ACMCore
import Foundation
import Testing

@testable import ACMWhisper

/// One entry of Fixtures/clips.json: a clip and what CTranslate2 transcribed from it.
struct FixtureClip: Decodable {
    struct Result: Decodable {
        var ids: [Int]
        var text: String
    }
    var name: String
    var file: String
    var ct2: Result
}

func fixtureClips() throws -> [FixtureClip] {
    let data = try Data(contentsOf: URL(fileURLWithPath: try fixturePath("clips.json")))
    return try JSONDecoder().decode([FixtureClip].self, from: data)
}

/// The clips that have a `logmel_<clip>.npy` (README: one 16 kHz, one 22050 Hz stereo).
func logMelFixtureClips() throws -> [String] {
    let names = try FileManager.default.contentsOfDirectory(atPath: try fixturePath(""))
    return names.filter { $0.hasPrefix("logmel_") && $0.hasSuffix(".npy") }
        .map { String($0.dropFirst("logmel_".count).dropLast(".npy".count)) }.sorted()
}

/// The real model is loaded once: these tests share it.
let sharedRealModel = Result { try loadRealModel() }
/// The same in bf16, where the CPU has it.
let sharedRealModelBF16 = Result { try WhisperModel(directory: try requireRealModel(), precision: .bf16) }

/// Parity with the fixtures from CTranslate2 and the NumPy front end (tools/acm_tools/whisper_fixtures.py),
/// on the real tiny.en model (`make whisper-model`).
@Suite struct FixtureTests {
    /// Should compute the reference's log-mel from the WAV bytes (decode, downmix, resample, STFT, mel)
    /// within 1e-4.
    @Test func logMelMatchesReference() throws {
        let clips = try logMelFixtureClips()
        try #require(clips.count >= 2, "expected logmel_<clip>.npy for a 16 kHz and a 22050 Hz clip, found \(clips)")
        let front = LogMelSpectrogram()
        for clip in clips {
            let want = try Npy.read(path: try fixturePath("logmel_\(clip).npy"))
            try #require(want.shape == [80, 3000])
            let bytes = try [UInt8](Data(contentsOf: URL(fileURLWithPath: try fixturePath("clips/\(clip).wav"))))
            let got = front.compute(samples16k: try decodeAudio(bytes: bytes))
            var worst: Float = 0
            for i in 0..<got.count { worst = max(worst, abs(got.data[i] - want.data[i])) }
            print("log-mel \(clip): max |Δ| = \(worst)")
            #expect(worst <= 1e-4, "\(clip): log-mel max |Δ| \(worst)")
        }
    }

    /// Should compute CTranslate2's encoder output (its first 300 rows) within 1e-3 of its largest value.
    @Test func encoderMatchesCTranslate2() throws {
        let model = try sharedRealModel.get()
        let names = try FileManager.default.contentsOfDirectory(atPath: try fixturePath(""))
        let files = names.filter { $0.hasPrefix("encoder_") && $0.hasSuffix(".npy") }
        try #require(!files.isEmpty, "no encoder_<clip>.npy fixture")
        for file in files {
            let clip = String(file.dropFirst("encoder_".count).dropLast(".npy".count))
            let want = try Npy.read(path: try fixturePath(file))
            let mel = try Npy.read(path: try fixturePath("logmel_\(clip).npy"))
            let d = model.whisper.config.dModel
            let rows = want.shape[0]
            try #require(want.shape == [rows, d] && rows <= model.whisper.config.maxSourcePositions)
            let encoded = model.whisper.encode(logMels: mel.data, count: 1, policies: [.auto], workspace: WhisperWorkspace())
            var worst: Float = 0, scale: Float = 0
            for i in 0..<(rows * d) {
                worst = max(worst, abs(encoded.data[i] - want.data[i]))
                scale = max(scale, abs(want.data[i]))
            }
            print("encoder \(clip): max |Δ| = \(worst), max |ref| = \(scale), relative \(worst / scale)")
            #expect(worst / scale <= 1e-3, "\(clip): encoder max |Δ|/max |ref| = \(worst / scale)")
        }
    }

    /// In bf16, should transcribe every clip, all in one batch, to CTranslate2's (float) greedy token ids, and
    /// compute its encoder output within 2% of the largest value (measured: 0.6%; float is within 1e-3).
    @Test(.enabled(if: BF16.available, "no AVX-512 BF16 on this CPU"))
    func bf16TranscriptsMatchCTranslate2() throws {
        let model = try sharedRealModelBF16.get()
        #expect(model.precision == .bf16)
        let clips = try fixtureClips()
        try #require(!clips.isEmpty)
        let audio = try clips.map { clip in
            try decodeAudio(bytes: [UInt8](Data(contentsOf: URL(fileURLWithPath: try fixturePath(clip.file)))))
        }
        let results = try model.transcribe(samples16k: audio)
        try #require(results.count == clips.count)
        for (clip, result) in zip(clips, results) {
            #expect(result.tokens == clip.ct2.ids, "\(clip.name): \"\(result.text)\" vs \"\(clip.ct2.text)\"")
        }
        let want = try Npy.read(path: try fixturePath("encoder_flite_slt_stella.npy"))
        let mel = try Npy.read(path: try fixturePath("logmel_flite_slt_stella.npy"))
        let encoded = model.whisper.encode(logMels: mel.data, count: 1, policies: [.auto], workspace: WhisperWorkspace())
        var worst: Float = 0, scale: Float = 0
        for i in 0..<want.count {
            worst = max(worst, abs(encoded.data[i] - want.data[i]))
            scale = max(scale, abs(want.data[i]))
        }
        print("bf16 encoder: max |Δ|/max |ref| = \(worst / scale)")
        #expect(worst / scale <= 0.02, "bf16 encoder max |Δ|/max |ref| = \(worst / scale)")
        #expect(worst / scale > 1e-3, "the bf16 encoder equals the float one: bf16 did not run")
    }

    /// Should transcribe every clip, from its WAV bytes and all in one batch, to CTranslate2's greedy
    /// token ids and text.
    @Test func transcriptsMatchCTranslate2() throws {
        let model = try sharedRealModel.get()
        let clips = try fixtureClips()
        try #require(!clips.isEmpty)
        let audio = try clips.map { clip in
            try decodeAudio(bytes: [UInt8](Data(contentsOf: URL(fileURLWithPath: try fixturePath(clip.file)))))
        }
        let results = try model.transcribe(samples16k: audio)
        try #require(results.count == clips.count, "\(results.count) transcriptions of \(clips.count) clips")
        var matched = 0
        for (clip, result) in zip(clips, results) {
            #expect(result.tokens == clip.ct2.ids, "\(clip.name): tokens")
            #expect(result.text == clip.ct2.text, "\(clip.name): \"\(result.text)\" vs \"\(clip.ct2.text)\"")
            if result.tokens == clip.ct2.ids && result.text == clip.ct2.text { matched += 1 }
        }
        print("transcripts: \(matched)/\(clips.count) clips equal CTranslate2's")
    }

    /// Should transcribe a 2-minute recording window by window: four clips, one at the start of each
    /// 30-s window, give CTranslate2's tokens for each clip alone, in order (each window is that clip
    /// padded with silence, as its 30-s input alone is); in one batch with a short clip beside it.
    @Test func longRecordingMatchesCTranslate2ByWindow() throws {
        let model = try sharedRealModel.get()
        let clips = try fixtureClips().filter { !$0.name.contains("stereo") }
        let chosen = Array(clips.prefix(4))
        var recording = [Float](repeating: 0, count: 16_000 * 120)
        for (w, clip) in chosen.enumerated() {
            let samples = try decodeAudio(bytes: [UInt8](Data(contentsOf: URL(fileURLWithPath: try fixturePath(clip.file)))))
            for (i, v) in samples.enumerated() { recording[w * 480_000 + i] = v }
        }
        let short = try decodeAudio(bytes: [UInt8](Data(contentsOf: URL(fileURLWithPath: try fixturePath(clips[5].file)))))
        #expect(model.logMelWindows(samples16k: recording).count == 4)
        let results = try model.transcribe(samples16k: [recording, short])
        try #require(results.count == 2)
        #expect(results[0].tokens == chosen.flatMap(\.ct2.ids))
        #expect(results[0].text == chosen.map(\.ct2.text).joined())
        #expect(results[1].tokens == clips[5].ct2.ids)
    }
}
