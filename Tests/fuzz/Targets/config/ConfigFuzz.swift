// Fuzz target: a model directory's config.json as the loaders read it: decoding and the header checks
// (decodeModelConfig, which loadModelConfig runs on the file's bytes) for the ViT's ModelConfig and
// Whisper's WhisperModelConfig, then every check the loaders run on the values before any weight is read
// (ViTConfig, ACMConfig, WhisperConfig and GenerationConfig validation, the preprocessing against the
// model), then the sizes the models derive from a config that passed them, and the preprocessing's
// resize and crop geometry for the extreme image sizes.
import Foundation

@testable import ACMCore
@testable import ACMModels
@testable import ACMServing
@testable import ACMWhisper

/// Anything but a ModelError is a crash: the loaders only throw those.
func expectModelError(_ body: () throws -> Void) {
    do {
        try body()
    } catch is ModelError {
    } catch {
        fatalError("not a ModelError: \(error)")
    }
}

func checkACMs(_ acm: [String: ACMConfig]) {
    for (path, config) in acm {
        expectModelError {
            try config.validate(path: path)
            _ = config.numChoices
        }
    }
}

@_cdecl("LLVMFuzzerTestOneInput")
func fuzzConfig(_ data: UnsafePointer<UInt8>?, _ size: Int) -> CInt {
    let bytes = Data(UnsafeBufferPointer(start: data, count: size))
    expectModelError {
        let config = try decodeModelConfig(ModelConfig.self, from: bytes, path: "config.json", architecture: nil)
        checkACMs(config.acm)
        guard let vit = config.vit else { return }
        try vit.validate()
        _ = vit.sequenceLength
        if let preprocessing = config.preprocessing {
            let preprocessor = try ImagePreprocessor(config: preprocessing, channels: vit.numChannels, imageSize: vit.imageSize)
            // The geometry of the squarest and the longest images the pixel limit lets through, as each
            // request computes it.
            let limit = preprocessor.maxPixels
            for (width, height) in [(1, 1), (1, limit), (limit, 1), (1 << 13, 1 << 13)] {
                do {
                    _ = try preprocessor.geometry(width: width, height: height)
                } catch is ImageError {}
            }
        }
    }
    expectModelError {
        let config = try decodeModelConfig(WhisperModelConfig.self, from: bytes, path: "config.json", architecture: "whisper")
        // WhisperModelConfig.load's checks
        try config.whisper.validate()
        try config.generation.validate(config.whisper)
        checkACMs(config.acm)
        _ = config.whisper.inputFrames
    }
    return 0
}
