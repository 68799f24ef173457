// Fuzz target: PNG and JPEG decoding (ImageDecoder: libpng's simplified API, TurboJPEG, the gAMA
// stripper) and preprocessing (resize, centre crop, grey conversion, normalisation) as the image
// endpoint runs them. Each decoded image goes through four preprocessings that cover each geometry
// (resize then crop, crop alone, neither) in grey and RGB; the endpoint's path, which decodes and
// converts to grey in place, must give what the decoded-image path gives.
import Foundation

@testable import ACMModels
@testable import ACMServing

/// A smaller limit than the server's (64 Mpx) so that each run stays fast; the check is the same code.
let maxPixels = 1 << 20

func preprocessor(_ color: Preprocessing.Color, resize: Int?, crop: Int?, side: Int) -> ImagePreprocessor {
    let channels = color == .grey ? 1 : 3
    let config = Preprocessing(
        color: color, resize: resize, crop: crop, mean: Array(repeating: 0.5, count: channels),
        std: Array(repeating: 0.25, count: channels))
    return try! ImagePreprocessor(config: config, channels: channels, imageSize: side, maxPixels: maxPixels)
}

/// vit_mixed's preprocessing (the infer-request target's model), then the other geometries.
let preprocessors = [
    preprocessor(.grey, resize: 16, crop: 16, side: 16),
    preprocessor(.rgb, resize: 11, crop: 7, side: 7),
    preprocessor(.rgb, resize: nil, crop: 5, side: 5),
    preprocessor(.grey, resize: 9, crop: nil, side: 9),
]

@_cdecl("LLVMFuzzerTestOneInput")
func fuzzImage(_ data: UnsafePointer<UInt8>?, _ size: Int) -> CInt {
    let encoded = Array(UnsafeBufferPointer(start: data, count: size))
    let image: RGBImage
    do {
        image = try ImageDecoder.decode(encoded, maxPixels: maxPixels)
    } catch is ImageError {
        return 0
    } catch {
        fatalError("not an ImageError: \(error)")
    }
    precondition(image.width > 0 && image.height > 0 && image.width * image.height <= maxPixels)
    for (i, p) in preprocessors.enumerated() {
        var fromImage = [Float](repeating: .nan, count: p.count)
        do {
            try fromImage.withUnsafeMutableBufferPointer { try p.preprocess(image, into: $0) }
        } catch is ImageError {
            continue  // the geometry does not fit this image
        } catch {
            fatalError("not an ImageError: \(error)")
        }
        precondition(fromImage.allSatisfy(\.isFinite), "preprocessing \(i) left values unset or not finite")
        if i == 0 {
            let fromBytes = try! p.preprocess(encoded)
            precondition(fromBytes == fromImage, "the endpoint's path and the decoded image's differ")
        }
    }
    return 0
}
