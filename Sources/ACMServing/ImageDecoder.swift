// Image decoding: PNG through libpng's simplified API, JPEG through TurboJPEG. The only file that
// imports CPNG and CTurboJPEG; every C error becomes an `ImageError` here.
//
// The pixels match PIL's `Image.open(f).convert('RGB')`, which the models' training pipelines use:
// - alpha is dropped, not composited (libpng's PNG_FORMAT_RGB would composite onto black, so we read
//   RGBA and drop A ourselves);
// - gAMA chunks are ignored, as PIL does (libpng would gamma-correct to sRGB, so we remove them first);
// - 16-bit samples become round(v · 255 / 65535) (libpng's png_set_scale_16). Here PIL is no guide: it
//   takes the high byte of 16-bit RGB and clips 16-bit grey to 255.
// JPEG uses TurboJPEG's defaults (accurate integer IDCT, smooth chroma upsampling), as PIL's libjpeg does.
import CPNG
import CTurboJPEG
import Foundation

/// Why an encoded image could not be turned into a model input. Every message says what is wrong with
/// the image, so the HTTP front end can answer 400 with it as is.
public enum ImageError: Error, CustomStringConvertible, Equatable {
    /// The bytes start with neither the PNG nor the JPEG signature.
    case unknownFormat
    /// The header claims more pixels than the limit; rejected before any pixel memory is allocated.
    case tooLarge(width: Int, height: Int, maxPixels: Int)
    /// The decoder failed: corrupt, truncated or malformed data. `reason` is the library's message.
    case corrupt(format: String, reason: String)
    /// A valid image of a kind this server does not decode (CMYK JPEG).
    case unsupported(String)
    /// The centre crop is larger than the (resized) image.
    case cropTooLarge(crop: Int, width: Int, height: Int)
    /// After resize and crop the image is not the model's square input size.
    case wrongSize(width: Int, height: Int, imageSize: Int)

    public var description: String {
        switch self {
        case .unknownFormat: return "not a PNG or JPEG image"
        case let .tooLarge(width, height, maxPixels):
            return "image is too large: \(width)×\(height) is more than \(maxPixels) pixels"
        case let .corrupt(format, reason): return "cannot decode \(format) image: \(reason)"
        case let .unsupported(what): return "unsupported image: \(what)"
        case let .cropTooLarge(crop, width, height):
            return "centre crop \(crop)×\(crop) does not fit the \(width)×\(height) image"
        case let .wrongSize(width, height, imageSize):
            return "preprocessed image is \(width)×\(height), the model takes \(imageSize)×\(imageSize)"
        }
    }
}

/// An image decoded to 8-bit RGB: `height` rows of `width` pixels, 3 bytes (R, G, B) a pixel.
public struct RGBImage: Sendable, Equatable {
    public var width: Int
    public var height: Int
    public var pixels: [UInt8]

    public init(width: Int, height: Int, pixels: [UInt8]) {
        precondition(pixels.count == width * height * 3, "\(pixels.count) bytes for a \(width)×\(height) RGB image")
        self.width = width
        self.height = height
        self.pixels = pixels
    }
}

/// Decodes PNG and JPEG images to 8-bit RGB, as PIL's `convert('RGB')` does.
public enum ImageDecoder {
    /// The largest image decoded by default: 64 megapixels (256 MiB of RGBA while decoding). Guards the
    /// server against decompression bombs, small files that claim huge sizes.
    public static let defaultMaxPixels = 64 << 20

    /// Decodes one PNG or JPEG image, told apart by its signature. Throws `ImageError` for anything
    /// else, for corrupt or truncated data, and for images of zero or more than `maxPixels` pixels
    /// (checked from the header, before pixel memory is allocated).
    public static func decode(_ encoded: some ContiguousBytes, maxPixels: Int = defaultMaxPixels) throws -> RGBImage {
        try encoded.withUnsafeBytes { bytes in
            if bytes.starts(with: pngSignature) { return try decodePNG(bytes, maxPixels: maxPixels) }
            if bytes.starts(with: jpegSignature) { return try decodeJPEG(bytes, maxPixels: maxPixels) }
            throw ImageError.unknownFormat
        }
    }

    static let pngSignature: [UInt8] = [0x89, 0x50, 0x4E, 0x47, 0x0D, 0x0A, 0x1A, 0x0A]
    static let jpegSignature: [UInt8] = [0xFF, 0xD8, 0xFF]

    static func checkSize(format: String, width: Int, height: Int, maxPixels: Int) throws {
        // TurboJPEG reports 0×0 for a header cut short; libpng rejects a zero size itself.
        guard width > 0, height > 0 else {
            throw ImageError.corrupt(format: format, reason: "no image in the header (\(width)×\(height))")
        }
        guard width * height <= maxPixels else {
            throw ImageError.tooLarge(width: width, height: height, maxPixels: maxPixels)
        }
    }

    // MARK: PNG

    static func decodePNG(_ bytes: UnsafeRawBufferPointer, maxPixels: Int) throws -> RGBImage {
        if let stripped = withoutGamma(bytes) {
            return try stripped.withUnsafeBytes { try decodePNGStream($0, maxPixels: maxPixels) }
        }
        return try decodePNGStream(bytes, maxPixels: maxPixels)
    }

    static func decodePNGStream(_ bytes: UnsafeRawBufferPointer, maxPixels: Int) throws -> RGBImage {
        var image = png_image()
        image.version = UInt32(PNG_IMAGE_VERSION)
        // Reads the chunks up to the first IDAT: the size is known, no pixel is decoded yet.
        guard png_image_begin_read_from_memory(&image, bytes.baseAddress, bytes.count) != 0 else {
            throw ImageError.corrupt(format: "PNG", reason: message(image))  // libpng freed the image
        }
        let width = Int(image.width), height = Int(image.height)
        do {
            try checkSize(format: "PNG", width: width, height: height, maxPixels: maxPixels)
        } catch {
            png_image_free(&image)
            throw error
        }
        // RGBA, not RGB: libpng would composite the alpha onto black, where PIL drops it.
        image.format = UInt32(PNG_FORMAT_FLAG_COLOR | PNG_FORMAT_FLAG_ALPHA)  // PNG_FORMAT_RGBA: not importable
        // Without this flag libpng takes 16-bit samples as linear light and converts them to sRGB.
        image.flags |= UInt32(PNG_IMAGE_FLAG_16BIT_sRGB)
        let count = width * height
        var failure: String?
        var pixels = [UInt8](unsafeUninitializedCapacity: 4 * count) { buffer, initialized in
            // png_image_finish_read frees the image whether it succeeds or not.
            if png_image_finish_read(&image, nil, buffer.baseAddress, 0, nil) == 0 {
                failure = message(image)
                buffer.initialize(repeating: 0)
            }
            initialized = 4 * count
        }
        if let failure { throw ImageError.corrupt(format: "PNG", reason: failure) }
        // RGBA → RGB in place: byte 3i is written after bytes 4i..4i+2 were read, and 3i ≤ 4i.
        pixels.withUnsafeMutableBufferPointer { p in
            for i in 0..<count {
                p[3 * i] = p[4 * i]
                p[3 * i + 1] = p[4 * i + 1]
                p[3 * i + 2] = p[4 * i + 2]
            }
        }
        pixels.removeLast(count)
        return RGBImage(width: width, height: height, pixels: pixels)
    }

    /// libpng's error message, from the fixed-size C string in the image struct.
    static func message(_ image: png_image) -> String {
        withUnsafeBytes(of: image.message) { raw in
            String(decoding: raw.prefix { $0 != 0 }, as: UTF8.self)
        }
    }

    /// The PNG without its gAMA chunks, or nil when it has none. PIL ignores gAMA; libpng would
    /// gamma-correct the pixels to sRGB (by up to 72 levels for a gamma-1.0 file). gAMA must come before
    /// the first IDAT, so only the header chunks are scanned. A chunk is length (4 bytes, big-endian),
    /// type (4), data, CRC (4); dropping a whole chunk leaves every other CRC valid. Malformed chunks
    /// are left for libpng to report.
    static func withoutGamma(_ bytes: UnsafeRawBufferPointer) -> [UInt8]? {
        var gamma: [Range<Int>] = []
        var offset = pngSignature.count
        while offset + 8 <= bytes.count {
            let length = bytes[offset..<offset + 4].reduce(0) { $0 << 8 | Int($1) }
            let type = bytes[offset + 4..<offset + 8]
            let end = offset + 12 + length
            guard end <= bytes.count, !type.elementsEqual("IDAT".utf8) else { break }
            if type.elementsEqual("gAMA".utf8) { gamma.append(offset..<end) }
            offset = end
        }
        guard !gamma.isEmpty else { return nil }
        var out = [UInt8]()
        out.reserveCapacity(bytes.count)
        var start = 0
        for chunk in gamma {
            out.append(contentsOf: bytes[start..<chunk.lowerBound])
            start = chunk.upperBound
        }
        out.append(contentsOf: bytes[start...])
        return out
    }

    // MARK: JPEG

    static func decodeJPEG(_ bytes: UnsafeRawBufferPointer, maxPixels: Int) throws -> RGBImage {
        guard let handle = tjInitDecompress() else {
            throw ImageError.corrupt(format: "JPEG", reason: "cannot start the TurboJPEG decompressor")
        }
        defer { tjDestroy(handle) }
        let jpeg = bytes.bindMemory(to: UInt8.self)
        var w: Int32 = 0, h: Int32 = 0, subsampling: Int32 = 0, colorspace: Int32 = 0
        guard tjDecompressHeader3(handle, jpeg.baseAddress, UInt(jpeg.count), &w, &h, &subsampling, &colorspace) == 0
        else {
            throw ImageError.corrupt(format: "JPEG", reason: errorString(handle))
        }
        let width = Int(w), height = Int(h)
        try checkSize(format: "JPEG", width: width, height: height, maxPixels: maxPixels)
        guard colorspace != Int32(TJCS_CMYK.rawValue), colorspace != Int32(TJCS_YCCK.rawValue) else {
            throw ImageError.unsupported("CMYK JPEG")
        }
        // A warning (truncated data, corrupt entropy segment) fails the decode, as truncation does in
        // PIL; LIMITSCANS rejects progressive files with absurd scan counts (a CPU bomb).
        let flags = TJFLAG_STOPONWARNING | TJFLAG_LIMITSCANS
        var failure: String?
        let pixels = [UInt8](unsafeUninitializedCapacity: 3 * width * height) { buffer, initialized in
            if tjDecompress2(
                handle, jpeg.baseAddress, UInt(jpeg.count), buffer.baseAddress, w, 0, h, Int32(TJPF_RGB.rawValue), flags)
                != 0
            {
                failure = errorString(handle)
                buffer.initialize(repeating: 0)
            }
            initialized = 3 * width * height
        }
        if let failure { throw ImageError.corrupt(format: "JPEG", reason: failure) }
        return RGBImage(width: width, height: height, pixels: pixels)
    }

    static func errorString(_ handle: tjhandle) -> String {
        guard let s = tjGetErrorStr2(handle) else { return "unknown TurboJPEG error" }
        return String(cString: s)
    }
}
