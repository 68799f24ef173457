import Foundation
import Testing

@testable import ACMCore

/// Builds a safetensors file by hand, so the reader is tested against bytes it did not write.
func rawSafeTensors(header: String, data: [UInt8], declaredLength: Int? = nil) -> Data {
    var out = Data()
    let json = Array(header.utf8)
    withUnsafeBytes(of: UInt64(declaredLength ?? json.count).littleEndian) { out.append(contentsOf: $0) }
    out.append(contentsOf: json)
    out.append(contentsOf: data)
    return out
}

@Suite struct SafeTensorsTests {
    func load(_ data: Data) throws -> SafeTensorsFile {
        let dir = TemporaryDirectory()
        let path = dir.path + "/t.safetensors"
        #expect(FileManager.default.createFile(atPath: path, contents: data))
        return try SafeTensorsFile(path: path)  // the mapping outlives the file's name
    }

    /// Should decode F32, F16 (normal, subnormal, negative) and BF16 to the same floats as NumPy/PyTorch.
    @Test func decodesAllDtypes() throws {
        // f16: 1.0 = 0x3C00, -2.5 = 0xC100, smallest subnormal 2^-24 = 0x0001, 65504 = 0x7BFF
        // bf16: 1.0 = 0x3F80, -0.15625 = 0xBE20
        let f32: [UInt8] = [0, 0, 0x80, 0x3F, 0, 0, 0x20, 0xC1]  // 1.0, -10.0
        let f16: [UInt8] = [0x00, 0x3C, 0x00, 0xC1, 0x01, 0x00, 0xFF, 0x7B]
        let bf16: [UInt8] = [0x80, 0x3F, 0x20, 0xBE]
        let header = """
            {"__metadata__":{"a":"b"},"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},\
            "b":{"dtype":"F16","shape":[2,2],"data_offsets":[8,16]},\
            "c":{"dtype":"BF16","shape":[2],"data_offsets":[16,20]}}
            """
        let file = try load(rawSafeTensors(header: header, data: f32 + f16 + bf16))
        #expect(try file.tensor("a", shape: [2]).array == [1, -10])
        #expect(try file.tensor("b", shape: [2, 2]).array == [1, -2.5, 0x1p-24, 65504])
        #expect(try file.tensor("c").array == [1, -0.15625])
        try file.checkAllUsed()
    }

    /// Should name the tensor when it is missing, has the wrong shape, an unknown dtype, or goes unused.
    @Test func strictErrorsNameTheTensor() throws {
        let header = """
            {"w":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},"i":{"dtype":"I64","shape":[1],"data_offsets":[8,16]}}
            """
        let file = try load(rawSafeTensors(header: header, data: Array(repeating: 0, count: 16)))
        #expect(throws: ModelError.missingTensor("x")) { try file.tensor("x", shape: [2]) }
        #expect(throws: ModelError.shape(tensor: "w", expected: [3], found: [2])) { try file.tensor("w", shape: [3]) }
        #expect(throws: ModelError.dtype(tensor: "i", dtype: "I64")) { try file.tensor("i") }
        let fresh = try load(rawSafeTensors(header: header, data: Array(repeating: 0, count: 16)))
        _ = try fresh.tensor("w", shape: [2])
        #expect(throws: ModelError.unusedTensors(["i"])) { try fresh.checkAllUsed() }
    }

    /// Should refuse truncated and malformed files with a message, not crash.
    @Test func malformedFiles() throws {
        /// A file whose 8-byte length is `length`, whatever the header's.
        func header(length: UInt64, _ json: String) -> Data {
            var out = Data()
            withUnsafeBytes(of: length.littleEndian) { out.append(contentsOf: $0) }
            return out + Data(json.utf8)
        }
        /// One F32 tensor "w" of `shape` with 8 bytes of data.
        func tensorW(shape: String) -> Data {
            rawSafeTensors(header: #"{"w":{"dtype":"F32","shape":\#(shape),"data_offsets":[0,8]}}"#, data: Array(repeating: 0, count: 8))
        }
        let good = #"{"w":{"dtype":"F32","shape":[2],"data_offsets":[0,8]}}"#
        let cases: [(Data, String)] = [
            (Data([1, 2, 3]), "too short"),
            (rawSafeTensors(header: good, data: [0, 0, 0]), "truncated"),
            (rawSafeTensors(header: good, data: [], declaredLength: 1 << 40), "does not fit"),
            (rawSafeTensors(header: "{not json", data: []), "not a JSON object"),
            (rawSafeTensors(header: #"{"w":{"dtype":"F32","shape":[3],"data_offsets":[0,8]}}"#, data: Array(repeating: 0, count: 8)), "bytes for shape"),
            (rawSafeTensors(header: #"{"w":{"dtype":"F32"}}"#, data: []), "malformed"),
            // From the safetensors fuzz target (docs/reliability.md): the first three trapped (an Int
            // conversion or multiplication overflowed); the next two were read as shape [2], 2.5 rounded
            // down and "x" dropped.
            (header(length: 1 << 63 | 8, "{}      "), "does not fit"),
            (tensorW(shape: "[4294967296, 4294967296]"), "bytes for shape"),
            (tensorW(shape: "[1e300]"), "malformed"),
            (tensorW(shape: "[2.5]"), "malformed"),
            (tensorW(shape: #"[2, "x"]"#), "malformed"),
        ]
        for (data, message) in cases {
            do {
                _ = try load(data)
                Issue.record("accepted a bad file (\(message))")
            } catch let error as ModelError {
                #expect(error.description.contains(message), "\(error)")
            }
        }
        #expect(throws: ModelError.self) { try SafeTensorsFile(path: "/nonexistent/x.safetensors") }
    }

    /// Should read back what `write` wrote.
    @Test func writeRoundTrip() throws {
        let dir = TemporaryDirectory()
        var rng = SplitMix64(seed: 1)
        let a = randomTensor([3, 4], rng: &rng), b = randomTensor([5], rng: &rng)
        try SafeTensorsFile.write(["a": a, "b": b], to: dir.path + "/x.safetensors")
        let file = try SafeTensorsFile(path: dir.path + "/x.safetensors")
        #expect(try file.tensor("a", shape: [3, 4]).array == a.array)
        #expect(try file.tensor("b", shape: [5]).array == b.array)
    }
}

@Suite struct NpyTests {
    /// Should read what it writes, for 1-D to 4-D shapes.
    @Test func roundTrip() throws {
        var rng = SplitMix64(seed: 2)
        for shape in [[5], [2, 3], [1, 2, 3, 4]] {
            let t = randomTensor(shape, rng: &rng)
            let back = try Npy.decode(Npy.encode(t))
            #expect(back.shape == shape)
            #expect(back.array == t.array)
        }
    }

    /// Should read a file as NumPy 2 writes it (float64 converts to float32).
    @Test func readsNumPyFloat64() throws {
        var header = "{'descr': '<f8', 'fortran_order': False, 'shape': (2,), }"
        while (10 + header.count + 1) % 64 != 0 { header += " " }
        header += "\n"
        var data = Data([0x93] + Array("NUMPY".utf8) + [1, 0, UInt8(header.count), 0])
        data.append(contentsOf: Array(header.utf8))
        for v in [1.5, -2.25] { withUnsafeBytes(of: v.bitPattern.littleEndian) { data.append(contentsOf: $0) } }
        let t = try Npy.decode(data)
        #expect(t.shape == [2] && t.array == [1.5, -2.25])
    }

    /// Should read integer arrays (labels) as NumPy writes them.
    @Test func readsIntegers() throws {
        func file(_ descr: String, _ payload: [UInt8]) -> Data {
            var header = "{'descr': '\(descr)', 'fortran_order': False, 'shape': (3,), }"
            while (10 + header.count + 1) % 64 != 0 { header += " " }
            header += "\n"
            var data = Data([0x93] + Array("NUMPY".utf8) + [1, 0, UInt8(header.count), 0])
            data.append(contentsOf: Array(header.utf8))
            data.append(contentsOf: payload)
            return data
        }
        #expect(try Npy.decode(file("|u1", [0, 7, 255])).array == [0, 7, 255])
        #expect(try Npy.decode(file("<i4", [9, 0, 0, 0, 0xFF, 0xFF, 0xFF, 0xFF, 1, 1, 0, 0])).array == [9, -1, 257])
        let i8: [UInt8] = [3, 0, 0, 0, 0, 0, 0, 0] + [0xFE] + [UInt8](repeating: 0xFF, count: 7) + [0, 0, 1, 0, 0, 0, 0, 0]
        #expect(try Npy.decode(file("<i8", i8)).array == [3, -2, 65536])
    }

    /// Should reject other dtypes, Fortran order, and short data with a message.
    @Test func rejectsBadFiles() {
        func file(_ dict: String, payload: Int) -> Data {
            var data = Data([0x93] + Array("NUMPY".utf8) + [1, 0, UInt8(dict.count), 0])
            data.append(contentsOf: Array(dict.utf8))
            data.append(contentsOf: [UInt8](repeating: 0, count: payload))
            return data
        }
        #expect(throws: ModelError.self) { try Npy.decode(file("{'descr': '>f4', 'fortran_order': False, 'shape': (2,), }\n", payload: 8)) }
        #expect(throws: ModelError.self) { try Npy.decode(file("{'descr': '<c8', 'fortran_order': False, 'shape': (2,), }\n", payload: 16)) }
        #expect(throws: ModelError.self) { try Npy.decode(file("{'descr': '<f4', 'fortran_order': True, 'shape': (2,), }\n", payload: 8)) }
        #expect(throws: ModelError.self) { try Npy.decode(file("{'descr': '<f4', 'fortran_order': False, 'shape': (3,), }\n", payload: 8)) }
        #expect(throws: ModelError.self) { try Npy.decode(Data("hello".utf8)) }
    }
}
