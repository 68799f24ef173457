import ACMCore
import ACMModels
import Foundation
import Testing

@testable import ACMServing

/// Images, broken inputs and expected model inputs, written by
/// `PYTHONPATH=tools .venv/bin/python -m acm_tools.image_fixtures` (PIL + torch reference).
let imageFixtures = URL(fileURLWithPath: #filePath).deletingLastPathComponent()
    .appendingPathComponent("Fixtures/images").path

func fixtureBytes(_ name: String) throws -> [UInt8] {
    let path = "\(imageFixtures)/\(name)"
    guard let data = FileManager.default.contents(atPath: path) else { throw ModelError.io(path: path, reason: "missing") }
    return [UInt8](data)
}

/// One line of cases.json.
struct ImageCase: Decodable, Sendable, CustomTestStringConvertible {
    var name: String
    var file: String
    var preprocessing: Preprocessing
    var channels: Int
    var imageSize: Int

    enum CodingKeys: String, CodingKey {
        case name, file, preprocessing, channels
        case imageSize = "image_size"
    }

    var testDescription: String { name }

    static let all: [ImageCase] = {
        guard let data = FileManager.default.contents(atPath: "\(imageFixtures)/cases.json") else { return [] }
        return (try? JSONDecoder().decode([ImageCase].self, from: data)) ?? []
    }()
}

func preprocessing(_ json: String) -> Preprocessing {
    try! JSONDecoder().decode(Preprocessing.self, from: Data(json.utf8))
}

/// Catches the error `body` throws, or nil.
func thrownError(_ body: () throws -> Void) -> (any Error)? {
    do { try body() } catch { return error }
    return nil
}

@Suite struct ImageTests {
    /// Should find the fixture cases.
    @Test func fixturesArePresent() {
        #expect(ImageCase.all.count == 12)
    }

    /// Should match the PIL + torch reference: within 1e-5 for PNG, within 2/255/std for JPEG (IDCTs may differ).
    @Test(arguments: ImageCase.all)
    func matchesReference(_ c: ImageCase) throws {
        let pre = try ImagePreprocessor(config: c.preprocessing, channels: c.channels, imageSize: c.imageSize)
        let got = try pre.preprocess(try fixtureBytes(c.file))
        let expected = try SafeTensorsFile(path: "\(imageFixtures)/expected.safetensors")
            .tensor(c.name, shape: [c.channels, c.imageSize, c.imageSize])
        #expect(got.count == expected.count)
        let plane = c.imageSize * c.imageSize
        let jpeg = c.file.hasSuffix(".jpg")
        for ch in 0..<c.channels {
            let tolerance: Float = jpeg ? 2 / 255 / c.preprocessing.std[ch] : 1e-5
            var worst: Float = 0
            for i in ch * plane..<(ch + 1) * plane { worst = max(worst, abs(got[i] - expected.data[i])) }
            #expect(worst <= tolerance, "\(c.name) channel \(ch): max |Δ| \(worst)")
        }
    }

    /// Should give the same input from a decoded image as from its encoded bytes.
    @Test func preprocessesDecodedImages() throws {
        let bytes = try fixtureBytes("rgb_20x13.png")
        let image = try ImageDecoder.decode(bytes)
        #expect(image.width == 20 && image.height == 13 && image.pixels.count == 20 * 13 * 3)
        let pre = try ImagePreprocessor(
            config: preprocessing(#"{"color": "grey", "resize": 10, "crop": 10, "mean": [0.5], "std": [0.5]}"#),
            channels: 1, imageSize: 10)
        var out = [Float](repeating: .nan, count: pre.count)
        try out.withUnsafeMutableBufferPointer { try pre.preprocess(image, into: $0) }
        #expect(out == (try pre.preprocess(bytes)))
        #expect(image == (try ImageDecoder.decode(bytes)), "the caller's image is not converted to grey in place")
    }

    /// Should throw ImageError with a message, never crash, for truncated, corrupt, random and empty input.
    @Test(arguments: ["truncated.png", "truncated.jpg", "corrupt.png", "random.bin"])
    func brokenInputsThrow(_ file: String) throws {
        let error = thrownError { _ = try ImageDecoder.decode(try fixtureBytes(file)) }
        let imageError = try #require(error as? ImageError)
        switch (file, imageError) {
        case ("random.bin", .unknownFormat): break
        case ("truncated.png", .corrupt("PNG", _)), ("corrupt.png", .corrupt("PNG", _)): break
        case ("truncated.jpg", .corrupt("JPEG", _)): break
        default: Issue.record("\(file): unexpected \(imageError)")
        }
        #expect(!imageError.description.isEmpty)
    }

    /// Should reject inputs too short to hold an image: empty, signature only, a lone JPEG SOI.
    @Test func tinyInputsThrow() {
        let inputs: [[UInt8]] = [[], [0x89, 0x50, 0x4E], ImageDecoder.pngSignature, [0xFF, 0xD8, 0xFF], [0xFF, 0xD8, 0xFF, 0xD9]]
        for bytes in inputs {
            let error = thrownError { _ = try ImageDecoder.decode(bytes) }
            #expect(error is ImageError, "\(bytes)")
        }
        #expect(ImageError.unknownFormat.description == "not a PNG or JPEG image")
    }

    /// Should reject headers claiming more than the pixel limit before decoding (the files hold no such data).
    @Test func rejectsDecompressionBombs() throws {
        let limit = ImageDecoder.defaultMaxPixels
        #expect(throws: ImageError.tooLarge(width: 100000, height: 100000, maxPixels: limit)) {
            try ImageDecoder.decode(try fixtureBytes("bomb.png"))
        }
        #expect(throws: ImageError.tooLarge(width: 65000, height: 65000, maxPixels: limit)) {
            try ImageDecoder.decode(try fixtureBytes("bomb.jpg"))
        }
        #expect(throws: ImageError.tooLarge(width: 20, height: 13, maxPixels: 100)) {
            try ImageDecoder.decode(try fixtureBytes("rgb_20x13.png"), maxPixels: 100)
        }
        #expect(ImageError.tooLarge(width: 100000, height: 100000, maxPixels: limit).description.contains("100000×100000"))
    }

    /// Should refuse CMYK JPEGs with a message rather than guess their colours.
    @Test func rejectsCMYK() {
        #expect(throws: ImageError.unsupported("CMYK JPEG")) { try ImageDecoder.decode(try fixtureBytes("cmyk.jpg")) }
    }

    /// Should drop alpha like PIL's convert('RGB'): a fully transparent pixel keeps its colour.
    @Test func dropsAlpha() throws {
        let image = try ImageDecoder.decode(try fixtureBytes("rgba_9x17.png"))
        #expect(image.width == 9 && image.height == 17)
        #expect(image.pixels[0..<27].contains { $0 != 0 }, "the transparent first row is not composited onto black")
    }

    /// Should convert to grey with PIL's integer ITU-R 601-2 luma, bit for bit.
    @Test func lumaMatchesPIL() {
        var p: [UInt8] = [255, 0, 0, 0, 255, 0, 0, 0, 255, 1, 1, 1, 255, 255, 255, 12, 200, 99]
        p.withUnsafeMutableBufferPointer { toLuma($0.baseAddress!, into: $0.baseAddress!, count: 6) }
        // (R·19595 + G·38470 + B·7471 + 0x8000) >> 16
        #expect(Array(p[0..<6]) == [76, 150, 29, 1, 255, 132])  // PIL: Image.convert("L")
    }

    /// Should size and place the crop as torchvision: int(size·long/short), then round-half-even offsets.
    @Test func geometryFollowsTorchvision() throws {
        let rgb = #""color": "rgb", "mean": [0, 0, 0], "std": [1, 1, 1]"#
        let pre = try ImagePreprocessor(config: preprocessing(#"{\#(rgb), "resize": 7, "crop": 6}"#), channels: 3, imageSize: 6)
        // 9×17 → 7×13 (13.2 truncated); top round(3.5) = 4, left round(0.5) = 0
        #expect(try pre.geometry(width: 9, height: 17)
            == .init(resizedWidth: 7, resizedHeight: 13, top: 4, left: 0, width: 6, height: 6))
        // 17×9 → 13×7; left round(3.5) = 4, top round(0.5) = 0
        #expect(try pre.geometry(width: 17, height: 9)
            == .init(resizedWidth: 13, resizedHeight: 7, top: 0, left: 4, width: 6, height: 6))
        // 20×13 → 24×16 (24.6 truncated); left (24 − 6) / 2 = 9
        let wide = try ImagePreprocessor(config: preprocessing(#"{\#(rgb), "resize": 16, "crop": 6}"#), channels: 3, imageSize: 6)
        #expect(try wide.geometry(width: 20, height: 13).left == 9)
        #expect(try wide.geometry(width: 21, height: 16).left == 8)  // 21×16 → 21×16, round(7.5) = 8
    }

    /// Should throw a message naming both sizes when the result is not the model's image size.
    @Test func sizeMismatchThrows() throws {
        let pre = try ImagePreprocessor(
            config: preprocessing(#"{"color": "rgb", "mean": [0, 0, 0], "std": [1, 1, 1]}"#), channels: 3, imageSize: 13)
        let error = thrownError { _ = try pre.preprocess(try fixtureBytes("rgb_20x13.png")) }
        #expect(error as? ImageError == .wrongSize(width: 20, height: 13, imageSize: 13))
        #expect("\(error!)" == "preprocessed image is 20×13, the model takes 13×13")

        let crop = try ImagePreprocessor(
            config: preprocessing(#"{"color": "grey", "crop": 16, "mean": [0], "std": [1]}"#), channels: 1, imageSize: 16)
        #expect(throws: ImageError.cropTooLarge(crop: 16, width: 15, height: 15)) {
            try crop.preprocess(try fixtureBytes("grey_15x15.jpg"))
        }
    }

    /// Should reject a config that does not fit the model, naming the mismatch.
    @Test(arguments: [
        (#"{"color": "rgb", "mean": [0.5], "std": [0.5, 0.5, 0.5]}"#, 3, "mean has 1 value(s)"),
        (#"{"color": "rgb", "mean": [0, 0, 0], "std": [1, 1]}"#, 3, "std has 2 value(s)"),
        (#"{"color": "grey", "mean": [0.5], "std": [0.5]}"#, 3, "color 'grey' gives 1 channel(s), the model takes 3"),
        (#"{"color": "grey", "mean": [0.5], "std": [0]}"#, 1, "std [0.0] must be positive"),
        (#"{"color": "grey", "crop": 20, "mean": [0.5], "std": [0.5]}"#, 1, "crop 20 is not the model's image size 28"),
        (#"{"color": "grey", "resize": 0, "mean": [0.5], "std": [0.5]}"#, 1, "resize 0 must be in 1...16777216"),
        // Every image trapped (resize · longer side overflowed): the config fuzz target, docs/reliability.md.
        (#"{"color": "grey", "resize": 4611686018427387904, "mean": [0.5], "std": [0.5]}"#, 1, "must be in 1...16777216"),
    ])
    func badConfigThrows(_ json: String, channels: Int, message: String) {
        let error = thrownError { _ = try ImagePreprocessor(config: preprocessing(json), channels: channels, imageSize: 28) }
        guard case .config(let reason) = error as? ModelError else {
            Issue.record("expected ModelError.config, got \(String(describing: error))")
            return
        }
        #expect(reason.contains(message), "\(reason)")
    }

    /// Should resize a 375×500 RGB image to 256 on the short side and crop the centre 224², as a naive
    /// bilinear reference does.
    @Test func preprocessesImageNetSizes() throws {
        var pixels = [UInt8](repeating: 0, count: 375 * 500 * 3)
        for i in pixels.indices { pixels[i] = UInt8(truncatingIfNeeded: i &* 2654435761 >> 7) }
        let image = RGBImage(width: 375, height: 500, pixels: pixels)
        let pre = try ImagePreprocessor(
            config: preprocessing(#"{"color": "rgb", "resize": 256, "crop": 224, "mean": [0, 0, 0], "std": [1, 1, 1]}"#),
            channels: 3, imageSize: 224)
        var out = [Float](repeating: .nan, count: pre.count)
        try out.withUnsafeMutableBufferPointer { try pre.preprocess(image, into: $0) }
        // A naive reference: PyTorch's bilinear (align_corners=False, antialias=False) to 256×341
        // (torchvision's size rule: 256 · 500 / 375 = 341), then the centre 224² (top round(58.5) = 58,
        // left 16), over 255.
        let (inW, inH, outW, outH, top, left) = (375, 500, 256, 341, 58, 16)
        func source(_ o: Int, _ input: Int, _ output: Int) -> (Int, Int, Double) {
            let s = max(0, (Double(o) + 0.5) * Double(input) / Double(output) - 0.5)
            let i0 = min(Int(s), input - 1)
            return (i0, min(i0 + 1, input - 1), s - Double(i0))
        }
        var worst = 0.0
        for c in 0..<3 {
            for i in 0..<224 {
                let (y0, y1, ly) = source(top + i, inH, outH)
                for j in 0..<224 {
                    let (x0, x1, lx) = source(left + j, inW, outW)
                    func p(_ y: Int, _ x: Int) -> Double { Double(pixels[(y * inW + x) * 3 + c]) }
                    let want = ((1 - ly) * ((1 - lx) * p(y0, x0) + lx * p(y0, x1)) + ly * ((1 - lx) * p(y1, x0) + lx * p(y1, x1))) / 255
                    worst = max(worst, abs(Double(out[(c * 224 + i) * 224 + j]) - want))
                }
            }
        }
        // The engine, like PyTorch, computes source coordinates in Float; on a 500-pixel axis that is up to
        // ~3e-5 of the interpolation weight, times a neighbour difference of up to 255/255.
        #expect(worst <= 5e-5, "max |Δ| \(worst) against the naive bilinear resize and crop")
    }
}
