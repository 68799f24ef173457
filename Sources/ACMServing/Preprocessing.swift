// Encoded image → model input, as a model's `preprocessing` config says (docs/model-format.md).
// Mirrors the reference in tools/acm_tools/image_fixtures.py: PIL's convert('RGB') / convert('L'),
// torchvision's Resize size rule with PyTorch's F.interpolate(mode='bilinear', align_corners=False,
// antialias=False), torchvision's CenterCrop offsets, then (x / 255 − mean) / std.
import ACMCore
import ACMModels
import Foundation

/// Turns encoded PNG or JPEG images into one model's float32 input, [C, H, W] row-major:
/// 1. decode to 8-bit RGB, and for `grey` to PIL's ITU-R 601-2 luma;
/// 2. when `resize` is set, scale so the shorter side is `resize` (the longer becomes
///    ⌊resize · long / short⌋, torchvision's rule), bilinear on the 0–255 values as PyTorch's
///    `F.interpolate(mode='bilinear', align_corners=False, antialias=False)`;
/// 3. when `crop` is set, cut the centre `crop`×`crop` square, offsets as torchvision's `CenterCrop`;
/// 4. scale to [0, 1] and normalise each channel: (x / 255 − mean[c]) / std[c].
///
/// Only the cropped window of the resized image is computed. Built once per model; `init` checks the
/// config against the model, so a bad config fails at load, and each image can then only fail with an
/// `ImageError`.
public struct ImagePreprocessor: Sendable {
    public let config: Preprocessing
    /// Input channels of the model: 1 (grey) or 3 (RGB).
    public let channels: Int
    /// The model's square input side.
    public let imageSize: Int
    /// Larger images are rejected before decoding.
    public let maxPixels: Int

    /// Floats in one preprocessed image: channels × imageSize × imageSize.
    public var count: Int { channels * imageSize * imageSize }

    /// Checks that `config` fits a model of `channels` input channels and `imageSize`×`imageSize` inputs:
    /// `color` matches the channels, one mean and one positive std per channel, positive sizes, and a
    /// crop, when set, of exactly `imageSize`. Throws `ModelError.config` naming the mismatch.
    public init(
        config: Preprocessing, channels: Int, imageSize: Int, maxPixels: Int = ImageDecoder.defaultMaxPixels
    ) throws {
        func fail(_ reason: String) -> ModelError { .config("preprocessing: \(reason)") }
        let expectedChannels = config.color == .grey ? 1 : 3
        guard channels == expectedChannels else {
            throw fail("color '\(config.color.rawValue)' gives \(expectedChannels) channel(s), the model takes \(channels)")
        }
        guard imageSize > 0 else { throw fail("image size \(imageSize) must be positive") }
        guard config.mean.count == channels else {
            throw fail("mean has \(config.mean.count) value(s), the model has \(channels) channel(s)")
        }
        guard config.std.count == channels else {
            throw fail("std has \(config.std.count) value(s), the model has \(channels) channel(s)")
        }
        guard config.mean.allSatisfy(\.isFinite) else { throw fail("mean \(config.mean) must be finite") }
        guard config.std.allSatisfy({ $0.isFinite && $0 > 0 }) else {
            throw fail("std \(config.std) must be positive and finite")
        }
        // Bounded as the model's sizes are: each image's resized side is resize · long side / short side.
        if let resize = config.resize, !(1...maxConfigSize).contains(resize) {
            throw fail("resize \(resize) must be in 1...\(maxConfigSize)")
        }
        if let crop = config.crop, crop != imageSize {
            throw fail("crop \(crop) is not the model's image size \(imageSize)")
        }
        guard maxPixels > 0 else { throw fail("maxPixels \(maxPixels) must be positive") }
        self.config = config
        self.channels = channels
        self.imageSize = imageSize
        self.maxPixels = maxPixels
    }

    /// Decodes and preprocesses one encoded PNG or JPEG image: `count` floats, [C, H, W].
    public func preprocess(_ encoded: some ContiguousBytes) throws -> [Float] {
        try [Float](unsafeUninitializedCapacity: count) { buffer, initialized in
            try preprocess(encoded, into: buffer)
            initialized = count
        }
    }

    /// Decodes and preprocesses one encoded image into `output` (`count` floats, e.g. one image's slot
    /// of a batch buffer). Throws `ImageError`.
    public func preprocess(_ encoded: some ContiguousBytes, into output: UnsafeMutableBufferPointer<Float>) throws {
        var image = try ImageDecoder.decode(encoded, maxPixels: maxPixels)
        let g = try geometry(width: image.width, height: image.height)
        let (width, height) = (image.width, image.height)
        image.pixels.withUnsafeMutableBufferPointer { pixels in
            let p = pixels.baseAddress!
            // The decoded image is ours: convert it to grey in place.
            if config.color == .grey { toLuma(p, into: p, count: width * height) }
            resample(p, width: width, height: height, geometry: g, into: output)
        }
    }

    /// Preprocesses an already decoded image into `output` (`count` floats). Throws `ImageError`.
    public func preprocess(_ image: RGBImage, into output: UnsafeMutableBufferPointer<Float>) throws {
        let g = try geometry(width: image.width, height: image.height)
        let (width, height) = (image.width, image.height)
        image.pixels.withUnsafeBufferPointer { pixels in
            guard config.color == .grey else {
                return resample(pixels.baseAddress!, width: width, height: height, geometry: g, into: output)
            }
            let luma = [UInt8](unsafeUninitializedCapacity: width * height) { buffer, initialized in
                toLuma(pixels.baseAddress!, into: buffer.baseAddress!, count: width * height)
                initialized = width * height
            }
            luma.withUnsafeBufferPointer {
                resample($0.baseAddress!, width: width, height: height, geometry: g, into: output)
            }
        }
    }

    /// The size after resize, and the crop window in it.
    struct Geometry: Equatable {
        var resizedWidth: Int, resizedHeight: Int
        var top: Int, left: Int
        var width: Int, height: Int
    }

    /// Where the resize and crop take an image of `width`×`height`; throws if the result is not
    /// `imageSize`×`imageSize`.
    func geometry(width: Int, height: Int) throws -> Geometry {
        var (w, h) = (width, height)
        if let resize = config.resize {
            // torchvision's _compute_resized_output_size: int(size * long / short), in doubles as Python.
            let (short, long) = (min(w, h), max(w, h))
            let newLong = Int(Double(resize * long) / Double(short))
            (w, h) = w <= h ? (resize, newLong) : (newLong, resize)
        }
        var g = Geometry(resizedWidth: w, resizedHeight: h, top: 0, left: 0, width: w, height: h)
        if let crop = config.crop {
            guard crop <= w, crop <= h else { throw ImageError.cropTooLarge(crop: crop, width: w, height: h) }
            // torchvision's CenterCrop: int(round((h - crop) / 2.0)), Python's round half to even.
            g.top = Int((Double(h - crop) / 2).rounded(.toNearestOrEven))
            g.left = Int((Double(w - crop) / 2).rounded(.toNearestOrEven))
            (g.width, g.height) = (crop, crop)
        }
        guard g.width == imageSize, g.height == imageSize else {
            throw ImageError.wrongSize(width: g.width, height: g.height, imageSize: imageSize)
        }
        return g
    }

    /// Bilinear resize of the crop window, then normalisation, into `output` [C, side, side]. `src` is
    /// `height` rows of `width` pixels of `channels` bytes. Separable: each source row the window
    /// needs is blended horizontally once, into a float row per channel; each output row is then a
    /// vertical blend of two such rows. Allocates nothing on the heap.
    func resample(
        _ src: UnsafePointer<UInt8>, width: Int, height: Int, geometry g: Geometry,
        into output: UnsafeMutableBufferPointer<Float>
    ) {
        precondition(output.count >= count, "output holds \(output.count) floats, an image needs \(count)")
        let side = imageSize, channels = channels
        let rowBytes = width * channels
        withUnsafeTemporaryAllocation(of: Tap.self, capacity: 2 * side) { taps in
            let rows = taps.baseAddress!, cols = rows + side
            fillTaps(rows, inSize: height, outSize: g.resizedHeight, start: g.top, count: side, stride: rowBytes)
            fillTaps(cols, inSize: width, outSize: g.resizedWidth, start: g.left, count: side, stride: channels)
            // Two horizontally resized source rows, [C, side] each, and the per-channel affine map.
            withUnsafeTemporaryAllocation(of: Float.self, capacity: 2 * channels * side + 2 * channels) { scratch in
                var upper = scratch.baseAddress!, lower = upper + channels * side
                let scale = lower + channels * side, bias = scale + channels
                for c in 0..<channels {
                    // (x / 255 − mean) / std as one multiply-add.
                    scale[c] = 1 / (255 * config.std[c])
                    bias[c] = -config.mean[c] / config.std[c]
                }
                var upperOffset = -1, lowerOffset = -1  // source row (byte offset) each buffer holds

                /// Source row at `offset`, resized horizontally: [C, side]. Unrolled per channel count,
                /// the hot loop of the whole preprocessing.
                func blendRow(_ offset: Int, into row: UnsafeMutablePointer<Float>) {
                    let line = src + offset
                    if channels == 1 {
                        for x in 0..<side {
                            let t = cols[x]
                            row[x] = t.weight0 * Float(line[t.offset0]) + t.weight1 * Float(line[t.offset1])
                        }
                        return
                    }
                    let (r, g, b) = (row, row + side, row + 2 * side)
                    for x in 0..<side {
                        let t = cols[x]
                        let p = line + t.offset0, q = line + t.offset1
                        r[x] = t.weight0 * Float(p[0]) + t.weight1 * Float(q[0])
                        g[x] = t.weight0 * Float(p[1]) + t.weight1 * Float(q[1])
                        b[x] = t.weight0 * Float(p[2]) + t.weight1 * Float(q[2])
                    }
                }

                let out = output.baseAddress!
                for y in 0..<side {
                    let t = rows[y]
                    // Source rows only move down as y grows: reuse what the buffers hold.
                    if upperOffset != t.offset0 {
                        if lowerOffset == t.offset0 {
                            swap(&upper, &lower)
                            swap(&upperOffset, &lowerOffset)
                        } else {
                            blendRow(t.offset0, into: upper)
                            upperOffset = t.offset0
                        }
                    }
                    if lowerOffset != t.offset1 {
                        blendRow(t.offset1, into: lower)
                        lowerOffset = t.offset1
                    }
                    for c in 0..<channels {
                        let u = upper + c * side, l = lower + c * side
                        let dst = out + (c * side + y) * side
                        let (s, b) = (scale[c], bias[c])
                        for x in 0..<side { dst[x] = (t.weight0 * u[x] + t.weight1 * l[x]) * s + b }
                    }
                }
            }
        }
    }
}

/// One output index's two source samples along an axis: byte offsets and bilinear weights.
struct Tap {
    var offset0: Int, offset1: Int
    var weight0: Float, weight1: Float
}

/// Bilinear taps for outputs start..<start+count of an axis resized from inSize to outSize, as PyTorch's
/// `compute_source_index_and_lambda` (UpSample.h) computes them in float: half-pixel centres, the
/// source index clamped at 0 and the last pixel repeated; equal sizes copy.
func fillTaps(_ taps: UnsafeMutablePointer<Tap>, inSize: Int, outSize: Int, start: Int, count: Int, stride: Int) {
    let ratio = Float(inSize) / Float(outSize)
    for i in 0..<count {
        let o = start + i
        var i0 = o, lambda1: Float = 0
        if inSize != outSize {
            let real = max(ratio * (Float(o) + 0.5) - 0.5, 0)
            i0 = min(Int(real.rounded(.down)), inSize - 1)
            lambda1 = min(max(real - Float(i0), 0), 1)
        }
        let i1 = i0 < inSize - 1 ? i0 + 1 : i0
        taps[i] = Tap(offset0: i0 * stride, offset1: i1 * stride, weight0: 1 - lambda1, weight1: lambda1)
    }
}

/// RGB → PIL's "L": L = (R·19595 + G·38470 + B·7471 + 0x8000) >> 16, ITU-R 601-2 luma in 16-bit
/// fixed point, bit for bit as PIL's Convert.c. `dst` may be `src`: byte i is written after bytes
/// 3i..3i+2 are read.
func toLuma(_ src: UnsafePointer<UInt8>, into dst: UnsafeMutablePointer<UInt8>, count: Int) {
    for i in 0..<count {
        let r = UInt32(src[3 * i]), g = UInt32(src[3 * i + 1]), b = UInt32(src[3 * i + 2])
        dst[i] = UInt8(truncatingIfNeeded: (r * 19595 + g * 38470 + b * 7471 + 0x8000) >> 16)
    }
}

/// One encoded PNG or JPEG image → a model's float32 input [channels, imageSize, imageSize], as `config`
/// says (see `ImagePreprocessor`, which this builds and runs once). Throws `ModelError.config` when
/// the config does not fit the model, `ImageError` when the image cannot be used.
public func preprocessImage(
    _ encoded: some ContiguousBytes, config: Preprocessing, channels: Int, imageSize: Int,
    maxPixels: Int = ImageDecoder.defaultMaxPixels
) throws -> [Float] {
    try ImagePreprocessor(config: config, channels: channels, imageSize: imageSize, maxPixels: maxPixels)
        .preprocess(encoded)
}
