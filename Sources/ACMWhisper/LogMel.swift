// Whisper's log-mel front end.
// Mirrors whisper/audio.py (https://github.com/openai/whisper/blob/v20231117/whisper/audio.py) and
// Hugging Face's WhisperFeatureExtractor, with the audio padded or trimmed to 30 s first:
// STFT (n_fft 400, hop 160, periodic Hann, centred with reflect padding), power spectrum, 80 Slaney
// mel filters (librosa.filters.mel), log10, a floor 8 below the maximum, then (x + 4)/4.

import ACMCore
import Foundation

/// The log-mel spectrogram of a 30-s window, [melBins, 3000].
///
/// The DFT (n_fft = 400 is not a power of two) is one GEMM: the frames [3000, 400] times a [400, 2·201]
/// matrix of Hann-windowed cosines and sines, computed in Double and stored as Float.
public final class LogMelSpectrogram: @unchecked Sendable {
    public static let sampleRate = 16_000
    public static let fftSize = 400
    public static let hopLength = 160
    /// 30 s of audio: the window the model hears.
    public static let windowSamples = 480_000
    /// STFT frames of a window, the last one dropped: 480000/160.
    public static let frames = 3_000
    /// Frequency bins of the one-sided spectrum: n_fft/2 + 1.
    public static let bins = fftSize / 2 + 1

    public let melBins: Int
    /// [melBins, bins]: librosa's Slaney filterbank.
    public let filters: Tensor
    /// [fftSize, 2·bins]: column k is w[n]·cos(2πkn/N), column bins + k is −w[n]·sin(2πkn/N).
    let dft: Tensor

    public init(melBins: Int = 80) {
        self.melBins = melBins
        filters = Self.melFilters(melBins: melBins)
        let n = Self.fftSize, bins = Self.bins
        dft = Tensor(shape: [n, 2 * bins])
        for i in 0..<n {
            // periodic Hann: torch.hann_window(400) / scipy's "hann" with sym=False
            let w = 0.5 - 0.5 * cos(2 * Double.pi * Double(i) / Double(n))
            for k in 0..<bins {
                // (k·i) mod n keeps the angle small, so cos and sin stay exact to a Double ulp
                let angle = 2 * Double.pi * Double((k * i) % n) / Double(n)
                dft.data[i * 2 * bins + k] = Float(w * cos(angle))
                dft.data[i * 2 * bins + bins + k] = Float(-w * sin(angle))
            }
        }
    }

    /// librosa.filters.mel(sr=16000, n_fft=400, n_mels=melBins, fmin=0, fmax=8000, htk=False,
    /// norm="slaney"), in Double and rounded to Float as librosa's float32 output is.
    public static func melFilters(melBins: Int) -> Tensor {
        let bins = Self.bins
        let sr = Double(sampleRate)
        // Slaney's mel scale: linear below 1 kHz (200/3 Hz per mel), logarithmic above.
        let fSp = 200.0 / 3, minLogHz = 1000.0, minLogMel = minLogHz / fSp, logStep = log(6.4) / 27
        func hzToMel(_ f: Double) -> Double { f >= minLogHz ? minLogMel + log(f / minLogHz) / logStep : f / fSp }
        func melToHz(_ m: Double) -> Double { m >= minLogMel ? minLogHz * exp(logStep * (m - minLogMel)) : fSp * m }
        let maxMel = hzToMel(sr / 2)
        // melBins + 2 band edges, equally spaced in mel (np.linspace)
        let edges = (0..<(melBins + 2)).map { melToHz(Double($0) * maxMel / Double(melBins + 1)) }
        let fftFreqs = (0..<bins).map { Double($0) * sr / Double(fftSize) }
        let filters = Tensor(shape: [melBins, bins])
        for m in 0..<melBins {
            let lowerWidth = edges[m + 1] - edges[m], upperWidth = edges[m + 2] - edges[m + 1]
            let norm = 2 / (edges[m + 2] - edges[m])  // Slaney: each filter has unit area
            for k in 0..<bins {
                let lower = (fftFreqs[k] - edges[m]) / lowerWidth
                let upper = (edges[m + 2] - fftFreqs[k]) / upperWidth
                filters.data[m * bins + k] = Float(max(0, min(lower, upper)) * norm)
            }
        }
        return filters
    }

    /// The log-mel spectrogram of 16-kHz mono samples, [melBins, 3000] (mel-major, as Whisper's conv
    /// takes it). The samples are padded with zeros or trimmed to 30 s first.
    public func compute(samples16k samples: [Float]) -> Tensor {
        let n = Self.fftSize, hop = Self.hopLength, bins = Self.bins, frames = Self.frames
        let length = Self.windowSamples, pad = n / 2

        // pad or trim to 30 s, then reflect-pad n/2 on both sides (torch.stft(center=True))
        var padded = [Float](repeating: 0, count: length + 2 * pad)
        let kept = min(samples.count, length)
        for i in 0..<kept { padded[pad + i] = samples[i] }
        for i in 1...pad {
            padded[pad - i] = padded[pad + i]
            padded[pad + length - 1 + i] = padded[pad + length - 1 - i]
        }

        // frames [3000, 400]: frame t starts at t·hop (the 3001st frame is dropped)
        let framed = Tensor(shape: [frames, n])
        padded.withUnsafeBufferPointer { p in
            for t in 0..<frames { framed.row(t).update(from: p.baseAddress! + t * hop, count: n) }
        }
        // spectrum [3000, 2·201] = frames [3000, 400] × dft [400, 402]; then |X|² [3000, 201] in place
        let spectrum = Tensor(shape: [frames, 2 * bins])
        Parallel.forEachChunk(frames) { _, r in
            gemm(
                m: r.count, n: 2 * bins, k: n, a: framed.row(r.lowerBound), lda: n,
                b: dft.data, ldb: 2 * bins, c: spectrum.row(r.lowerBound), ldc: 2 * bins)
            for t in r {
                let row = spectrum.row(t)
                for k in 0..<bins { row[k] = row[k] * row[k] + row[bins + k] * row[bins + k] }
            }
        }
        // mel [3000, melBins] = power [3000, 201] × filtersᵀ [201, melBins]
        let mel = Tensor(shape: [frames, melBins])
        gemm(
            m: frames, n: melBins, k: bins, a: spectrum.data, lda: 2 * bins,
            b: filters.data, ldb: bins, transB: true, c: mel.data, ldc: melBins)

        // log10, floored 8 below the maximum, scaled; transposed to [melBins, 3000]
        let out = Tensor(shape: [melBins, frames])
        var top = -Float.infinity
        for t in 0..<frames {
            for m in 0..<melBins {
                let v = log10(max(mel.data[t * melBins + m], 1e-10))
                out.data[m * frames + t] = v
                top = max(top, v)
            }
        }
        let floor = top - 8
        for i in 0..<out.count { out.data[i] = (max(out.data[i], floor) + 4) / 4 }
        return out
    }
}
