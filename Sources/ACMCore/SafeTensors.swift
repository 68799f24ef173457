#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif
import Foundation

/// A memory-mapped safetensors file (https://github.com/huggingface/safetensors): an 8-byte
/// little-endian header length, a JSON header mapping names to `{dtype, shape, data_offsets}`, then the
/// raw little-endian data. Tensors are converted to fp32 on request; the file records which names were
/// asked for, so a loader can reject files with tensors it never used.
public final class SafeTensorsFile: @unchecked Sendable {
    public struct Entry: Sendable {
        public let dtype: String
        public let shape: [Int]
        /// Byte range within the data section.
        public let range: Range<Int>
    }

    public let path: String
    public let entries: [String: Entry]
    private let base: UnsafeRawPointer
    private let mappedLength: Int
    private let dataStart: Int
    private var used = Set<String>()

    private static let dtypeSizes = ["F32": 4, "F16": 2, "BF16": 2, "I32": 4]

    public init(path: String) throws {
        self.path = path
        let fd = open(path, O_RDONLY)
        guard fd >= 0 else { throw ModelError.io(path: path, reason: String(cString: strerror(errno))) }
        defer { close(fd) }
        var st = stat()
        guard fstat(fd, &st) == 0 else {
            throw ModelError.io(path: path, reason: String(cString: strerror(errno)))
        }
        let size = Int(st.st_size)
        guard size >= 8 else {
            throw ModelError.format(path: path, reason: "file is \(size) bytes, too short for a safetensors header")
        }
        guard let map = mmap(nil, size, PROT_READ, MAP_PRIVATE, fd, 0), map != MAP_FAILED else {
            throw ModelError.io(path: path, reason: "mmap failed: \(String(cString: strerror(errno)))")
        }
        base = UnsafeRawPointer(map)
        mappedLength = size
        do {
            (entries, dataStart) = try Self.parseHeader(base, size: size, path: path)
        } catch {
            munmap(map, size)
            throw error
        }
    }

    deinit { munmap(UnsafeMutableRawPointer(mutating: base), mappedLength) }

    /// The tensor entries and the data section's offset of the `size`-byte file at `base` (at least 8
    /// bytes); `path` is for messages. Internal, not private: the fuzz target (Tests/fuzz) calls it on bytes.
    static func parseHeader(
        _ base: UnsafeRawPointer, size: Int, path: String
    ) throws -> ([String: Entry], Int) {
        precondition(size >= 8, "a safetensors file is at least 8 bytes")
        // Compared as read: a length of 2⁶³ or more is no Int.
        let declaredLength = UInt64(littleEndian: base.loadUnaligned(as: UInt64.self))
        guard declaredLength > 0, declaredLength <= UInt64(size - 8) else {
            throw ModelError.format(
                path: path, reason: "header length \(declaredLength) does not fit in a \(size)-byte file (truncated?)")
        }
        let headerLength = Int(declaredLength)
        let headerData = Data(bytes: base + 8, count: headerLength)
        guard let json = try? JSONSerialization.jsonObject(with: headerData) as? [String: Any] else {
            throw ModelError.format(path: path, reason: "header is not a JSON object")
        }
        let dataStart = 8 + headerLength
        let dataLength = size - dataStart
        var entries: [String: Entry] = [:]
        for (name, value) in json where name != "__metadata__" {
            guard let info = value as? [String: Any],
                let dtype = info["dtype"] as? String,
                let shape = naturals(info["shape"]),
                let offsets = naturals(info["data_offsets"]),
                offsets.count == 2
            else {
                throw ModelError.format(path: path, reason: "header entry '\(name)' is malformed")
            }
            guard offsets[0] <= offsets[1], offsets[1] <= dataLength else {
                throw ModelError.format(
                    path: path,
                    reason: "tensor '\(name)' lies at bytes \(offsets[0])..<\(offsets[1]) but the data section has \(dataLength) (truncated?)")
            }
            if let width = dtypeSizes[dtype] {
                guard offsets[1] - offsets[0] == byteCount(shape, width: width) else {
                    throw ModelError.format(
                        path: path, reason: "tensor '\(name)' has \(offsets[1] - offsets[0]) bytes for shape \(shape) of \(dtype)")
                }
            }
            entries[name] = Entry(dtype: dtype, shape: shape, range: offsets[0]..<offsets[1])
        }
        return (entries, dataStart)
    }

    /// A header array of non-negative integers (`shape`, `data_offsets`), or nil: a fraction, a string or a
    /// number past Int makes the entry malformed rather than being rounded, dropped or wrapped.
    private static func naturals(_ value: Any?) -> [Int]? {
        guard let array = value as? [Any] else { return nil }
        let numbers = array.compactMap { $0 as? Int }  // exact: 2.5 and 2⁶⁴ are no Int
        guard numbers.count == array.count, numbers.allSatisfy({ $0 >= 0 }) else { return nil }
        return numbers
    }

    /// The bytes of a tensor of `shape` with `width`-byte elements, or nil when that is more than an Int holds
    /// (a header's shape can be anything).
    private static func byteCount(_ shape: [Int], width: Int) -> Int? {
        var bytes = width
        for dimension in shape {
            let (product, overflow) = bytes.multipliedReportingOverflow(by: dimension)
            if overflow { return nil }
            bytes = product
        }
        return bytes
    }

    /// The tensor `name` as fp32, checked against `shape`. Marks the name used.
    public func tensor(_ name: String, shape: [Int]) throws -> Tensor {
        guard let entry = entries[name] else { throw ModelError.missingTensor(name) }
        guard entry.shape == shape else { throw ModelError.shape(tensor: name, expected: shape, found: entry.shape) }
        used.insert(name)
        return try convert(name, entry)
    }

    /// The tensor `name` as fp32 in whatever shape the file gives. Marks the name used.
    public func tensor(_ name: String) throws -> Tensor {
        guard let entry = entries[name] else { throw ModelError.missingTensor(name) }
        used.insert(name)
        return try convert(name, entry)
    }

    private func convert(_ name: String, _ entry: Entry) throws -> Tensor {
        let out = Tensor(shape: entry.shape)
        let src = base + dataStart + entry.range.lowerBound
        let n = out.count
        switch entry.dtype {
        case "F32":
            for i in 0..<n { out.data[i] = Float(bitPattern: UInt32(littleEndian: src.loadUnaligned(fromByteOffset: 4 * i, as: UInt32.self))) }
        case "F16":
            for i in 0..<n {
                let bits = UInt16(littleEndian: src.loadUnaligned(fromByteOffset: 2 * i, as: UInt16.self))
                out.data[i] = halfToFloat(bits)
            }
        case "BF16":
            for i in 0..<n {
                let bits = UInt16(littleEndian: src.loadUnaligned(fromByteOffset: 2 * i, as: UInt16.self))
                out.data[i] = Float(bitPattern: UInt32(bits) << 16)
            }
        default:
            throw ModelError.dtype(tensor: name, dtype: entry.dtype)
        }
        return out
    }

    /// The 2-D `F16` tensor `name` as it is stored, checked against `shape`, or nil when the file stores
    /// it in another dtype (read it with `tensor` then). Marks the name used.
    public func halfMatrix(_ name: String, shape: [Int]) throws -> HalfMatrix? {
        guard let entry = entries[name] else { throw ModelError.missingTensor(name) }
        guard entry.shape == shape else { throw ModelError.shape(tensor: name, expected: shape, found: entry.shape) }
        guard entry.dtype == "F16", shape.count == 2 else { return nil }
        used.insert(name)
        let matrix = HalfMatrix(rows: shape[0], columns: shape[1])
        let src = base + dataStart + entry.range.lowerBound
        for i in 0..<shape[0] * shape[1] {
            matrix.bits[i] = UInt16(littleEndian: src.loadUnaligned(fromByteOffset: 2 * i, as: UInt16.self))
        }
        return matrix
    }

    /// An `I32` tensor's values (labels, token ids, recorded choices). Marks the name used.
    public func int32Values(_ name: String) throws -> [Int32] {
        guard let entry = entries[name] else { throw ModelError.missingTensor(name) }
        guard entry.dtype == "I32" else { throw ModelError.dtype(tensor: name, dtype: entry.dtype) }
        used.insert(name)
        let src = base + dataStart + entry.range.lowerBound
        return (0..<entry.shape.reduce(1, *)).map {
            Int32(littleEndian: src.loadUnaligned(fromByteOffset: 4 * $0, as: Int32.self))
        }
    }

    public func contains(_ name: String) -> Bool { entries[name] != nil }

    /// Names in the file that no `tensor` call asked for, sorted.
    public var unusedNames: [String] { entries.keys.filter { !used.contains($0) }.sorted() }

    /// Throws if any tensor in the file went unused.
    public func checkAllUsed() throws {
        let unused = unusedNames
        if !unused.isEmpty { throw ModelError.unusedTensors(unused) }
    }
}

/// IEEE 754 binary16 to binary32, subnormals and infinities included.
@inline(__always) func halfToFloat(_ h: UInt16) -> Float {
    let sign = UInt32(h & 0x8000) << 16
    let exponent = Int((h >> 10) & 0x1F)
    let mantissa = UInt32(h & 0x3FF)
    if exponent == 0 {
        // zero or subnormal: mantissa · 2⁻²⁴
        let magnitude = Float(mantissa) * 0x1p-24
        return sign == 0 ? magnitude : -magnitude
    }
    if exponent == 31 {
        return Float(bitPattern: sign | 0x7F80_0000 | (mantissa << 13))
    }
    return Float(bitPattern: sign | UInt32(exponent + 112) << 23 | (mantissa << 13))
}

/// A view of a weights file under a key prefix, so that a layer built from `weights.scoped("ln_1")`
/// asks for `weight` and gets `…ln_1.weight`: the struct nesting is the checkpoint key path.
public struct Weights: Sendable {
    public let file: SafeTensorsFile
    public let prefix: String
    /// What the layers built from these weights run their GEMMs in (`GEMMWeight`).
    public let precision: Precision

    public init(file: SafeTensorsFile, prefix: String = "", precision: Precision = .f32) {
        self.file = file
        self.prefix = prefix
        self.precision = precision
    }

    public func key(_ name: String) -> String { prefix.isEmpty ? name : "\(prefix).\(name)" }

    public func scoped(_ name: String) -> Weights { Weights(file: file, prefix: key(name), precision: precision) }

    public func tensor(_ name: String, shape: [Int]) throws -> Tensor {
        try file.tensor(key(name), shape: shape)
    }

    public func halfMatrix(_ name: String, shape: [Int]) throws -> HalfMatrix? {
        try file.halfMatrix(key(name), shape: shape)
    }

    public func contains(_ name: String) -> Bool { file.contains(key(name)) }
}

extension SafeTensorsFile {
    /// Writes `tensors` as an F32 safetensors file, names sorted (the layout the Python package uses).
    public static func write(_ tensors: [String: Tensor], to path: String) throws {
        var header: [String: Any] = [:]
        var offset = 0
        let names = tensors.keys.sorted()
        for name in names {
            let t = tensors[name]!
            header[name] = ["dtype": "F32", "shape": t.shape, "data_offsets": [offset, offset + 4 * t.count]]
            offset += 4 * t.count
        }
        var json = try JSONSerialization.data(withJSONObject: header, options: [.sortedKeys])
        while json.count % 8 != 0 { json.append(0x20) }
        var data = Data()
        withUnsafeBytes(of: UInt64(json.count).littleEndian) { data.append(contentsOf: $0) }
        data.append(json)
        for name in names {
            let t = tensors[name]!
            data.append(Data(bytes: t.data, count: 4 * t.count))
        }
        guard FileManager.default.createFile(atPath: path, contents: data) else {
            throw ModelError.io(path: path, reason: "cannot create file")
        }
    }
}
