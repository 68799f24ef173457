// libsoxr: the one file that imports CSoxr.

import CSoxr

/// Resamples mono float samples from `inputRate` to `outputRate` with libsoxr's one-shot API at its
/// "very high quality" setting (SOXR_VHQ: 28-bit precision, linear phase, 95% passband).
func resample(_ samples: [Float], from inputRate: Int, to outputRate: Int) throws -> [Float] {
    if inputRate == outputRate || samples.isEmpty { return samples }
    let ratio = Double(outputRate) / Double(inputRate)
    let capacity = Int((Double(samples.count) * ratio).rounded(.up)) + 1
    var output = [Float](repeating: 0, count: capacity)
    var inputDone = 0, outputDone = 0
    var io = soxr_io_spec(SOXR_FLOAT32_I, SOXR_FLOAT32_I)
    var quality = soxr_quality_spec(UInt(SOXR_VHQ), 0)
    let error = samples.withUnsafeBufferPointer { input in
        output.withUnsafeMutableBufferPointer { out in
            soxr_oneshot(
                Double(inputRate), Double(outputRate), 1,
                input.baseAddress, input.count, &inputDone,
                out.baseAddress, out.count, &outputDone,
                &io, &quality, nil)
        }
    }
    if let error { throw WhisperInputError.resampling(String(cString: error)) }
    output.removeLast(capacity - outputDone)
    return output
}
