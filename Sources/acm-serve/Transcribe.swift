import ACMCore
import ACMWhisper
import ArgumentParser
import Foundation

/// Speech to text with a Whisper model directory, through the engine the server runs.
struct Transcribe: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Transcribe audio files (or log-mel .npy inputs) with a Whisper model; print text and token ids.",
        discussion: "All inputs run as one batch. Audio is decoded with libsndfile (WAV, FLAC, ...), downmixed, "
            + "resampled to 16 kHz with libsoxr, and padded or trimmed to 30 s. See docs/whisper.md.")

    @Option(help: "Whisper model directory (config.json, model.safetensors, tokenizer.json).") var model: String
    @Option(help: "An audio file; repeat for a batch.") var audio: [String] = []
    @Option(name: .customLong("log-mel"), help: "A float32 .npy log-mel [80, 3000]; repeat for a batch.")
    var logMel: [String] = []
    @OptionGroup var policy: PolicyOptions
    @OptionGroup var precision: PrecisionOption
    @Flag(help: "Print the seconds spent in each stage to standard error.") var timing = false
    @Flag(help: "Print one JSON object per input (input, text, tokens, compute_fraction, temperature, avg_logprob, compression_ratio, attempts) instead of text lines.")
    var json = false
    @Option(help: "Run the batch this many times, reusing the buffers, and time the last run (steady state).")
    var repeats = 1
    @Option(
        help: ArgumentHelp(
            "The temperature to decode at first: 0 is greedy, above 0 samples (the same draws on every run).",
            discussion: "A window that fails the model's fallback checks is decoded again at each of its fallback "
                + "temperatures above this one (docs/whisper.md#decoding)."))
    var temperature: Double = 0
    @Flag(help: "Decode at --temperature only: no fallback for repetitive or unlikely text.")
    var noFallback = false

    func validate() throws {
        if audio.isEmpty && logMel.isEmpty { throw ValidationError("give at least one --audio or --log-mel input") }
        if repeats < 1 { throw ValidationError("--repeats must be ≥ 1") }
        if !(0...10).contains(temperature) { throw ValidationError("--temperature must be in [0, 10]") }
    }

    func run() throws {
        func seconds(since start: UInt64) -> Double { Double(DispatchTime.now().uptimeNanoseconds - start) / 1e9 }
        let m: WhisperModel
        var mels: [Tensor] = []
        var t0 = DispatchTime.now().uptimeNanoseconds
        do {
            m = try WhisperModel(directory: model, precision: precision.precision)
            precision.noteFallback(m.precision)
            let loaded = seconds(since: t0)
            t0 = DispatchTime.now().uptimeNanoseconds
            for path in audio {
                guard let data = FileManager.default.contents(atPath: path) else {
                    throw ValidationError("cannot read \(path)")
                }
                mels.append(m.logMel(samples16k: try decodeAudio(data: data)))
            }
            for path in logMel { mels.append(try Npy.read(path: path)) }
            if timing {
                FileHandle.standardError.write(
                    "model loaded in \(String(format: "%.3f", loaded)) s; \(mels.count) input(s) decoded and log-mel'd in \(String(format: "%.3f", seconds(since: t0))) s\n"
                        .data(using: .utf8) ?? Data())
            }
        } catch let error as ModelError {
            throw ValidationError(error.description)
        } catch let error as WhisperInputError {
            throw ValidationError(error.description)
        }
        let shape = [m.config.whisper.numMelBins, m.config.whisper.inputFrames]
        for (i, mel) in mels.enumerated() where mel.shape != shape {
            throw ValidationError("input \(i) has shape \(mel.shape); the model takes \(shape)")
        }

        // The stages one by one (what `WhisperModel.transcribe` does), to time them.
        let count = mels.count
        let batch = Tensor(shape: [count, m.whisper.inputCount])
        for (b, mel) in mels.enumerated() { batch.row(b).update(from: mel.data, count: m.whisper.inputCount) }
        let policies = Array(repeating: policy.policy, count: count)
        let ws = WhisperWorkspace()
        let temperatures = [temperature] + (noFallback ? [] : m.config.generation.temperatureFallback.filter { $0 > temperature })
        var windows: [DecodedWindow] = []
        var encodeSeconds = 0.0, decodeSeconds = 0.0
        var learners = LearnerCounts(acms: m.whisper.acms, items: count)
        for _ in 0..<repeats {
            learners = LearnerCounts(acms: m.whisper.acms, items: count)
            t0 = DispatchTime.now().uptimeNanoseconds
            let encoded = m.whisper.encode(
                logMels: batch.data, count: count, policies: policies, workspace: ws, learners: learners)
            encodeSeconds = seconds(since: t0)
            t0 = DispatchTime.now().uptimeNanoseconds
            windows = m.decode(
                encoded: encoded, count: count, policies: policies, workspace: ws, learners: learners,
                temperatures: temperatures)
            decodeSeconds = seconds(since: t0)
        }
        let tokens = windows.map(\.tokens)
        let names = audio + logMel
        for (b, ids) in tokens.enumerated() where json {
            let line = TranscriptLine(
                input: names[b], text: m.tokenizer.decode(ids).trimmingCharacters(in: .whitespaces), tokens: ids,
                computeFraction: m.whisper.acms.isEmpty ? nil : learners.computeFraction[b],
                temperature: windows[b].temperature, averageLogprob: windows[b].averageLogprob,
                compressionRatio: windows[b].compressionRatio, attempts: windows[b].attempts)
            let encoder = JSONEncoder()
            encoder.outputFormatting = [.sortedKeys, .withoutEscapingSlashes]
            print(String(decoding: try encoder.encode(line), as: UTF8.self))
        }
        for (b, ids) in tokens.enumerated() where !json {
            print("\(names[b]): \(m.tokenizer.decode(ids).trimmingCharacters(in: .whitespaces))")
            print("  tokens: \(ids)")
            if windows[b].attempts > 1 {
                print("  decoded \(windows[b].attempts) times; kept the decoding at temperature \(windows[b].temperature)")
            }
            if !m.whisper.acms.isEmpty { print(String(format: "  compute fraction: %.4f", learners.computeFraction[b])) }
        }
        if timing {
            let generated = tokens.reduce(0) { $0 + $1.count }
            FileHandle.standardError.write(
                String(
                    format: "encoder %.3f s (%.3f s per input); decoder %.3f s for %d tokens (%d inputs)\n",
                    encodeSeconds, encodeSeconds / Double(count), decodeSeconds, generated, count
                ).data(using: .utf8) ?? Data())
        }
    }
}

/// One input's result under `transcribe --json`.
private struct TranscriptLine: Encodable {
    let input: String
    let text: String
    let tokens: [Int]
    let computeFraction: Double?
    let temperature: Double
    let averageLogprob: Double
    let compressionRatio: Double
    let attempts: Int

    enum CodingKeys: String, CodingKey {
        case input, text, tokens, temperature, attempts
        case computeFraction = "compute_fraction"
        case averageLogprob = "avg_logprob"
        case compressionRatio = "compression_ratio"
    }
}
