import Foundation

/// NumPy's `.npy` format (https://numpy.org/doc/stable/reference/generated/numpy.lib.format.html),
/// enough for model inputs and labels: little-endian f4, f8, f2, i4, i8 or u1, C order, any shape,
/// read as Float (integers up to 2²⁴ exactly).
public enum Npy {
    public static func read(path: String) throws -> Tensor {
        guard let data = FileManager.default.contents(atPath: path) else {
            throw ModelError.io(path: path, reason: "no such file or not readable")
        }
        return try decode(data, path: path)
    }

    public static func decode(_ data: Data, path: String = "<npy>") throws -> Tensor {
        let bytes = [UInt8](data)
        func fail(_ reason: String) -> ModelError { .format(path: path, reason: reason) }
        guard bytes.count >= 10, bytes[0] == 0x93, Array(bytes[1...5]) == Array("NUMPY".utf8) else {
            throw fail("not a .npy file (bad magic)")
        }
        let major = bytes[6]
        let headerLength: Int
        let headerStart: Int
        switch major {
        case 1:
            headerLength = Int(bytes[8]) | Int(bytes[9]) << 8
            headerStart = 10
        case 2, 3:
            guard bytes.count >= 12 else { throw fail("truncated header") }
            headerLength = Int(bytes[8]) | Int(bytes[9]) << 8 | Int(bytes[10]) << 16 | Int(bytes[11]) << 24
            headerStart = 12
        default:
            throw fail("unsupported .npy version \(major)")
        }
        guard headerStart + headerLength <= bytes.count,
            let header = String(bytes: bytes[headerStart..<headerStart + headerLength], encoding: .ascii)
        else { throw fail("truncated header") }

        guard let descr = field("descr", in: header).map({ $0.trimmingCharacters(in: CharacterSet(charactersIn: "'\" ")) })
        else { throw fail("header has no 'descr'") }
        guard let order = field("fortran_order", in: header), order.trimmingCharacters(in: .whitespaces) == "False" else {
            throw fail("only C-order arrays are supported")
        }
        guard let shapeText = tupleField("shape", in: header) else { throw fail("header has no 'shape'") }
        let shape = try shapeText.split(separator: ",").map { $0.trimmingCharacters(in: .whitespaces) }
            .filter { !$0.isEmpty }
            .map { part -> Int in
                guard let v = Int(part), v >= 0 else { throw fail("bad shape '\(shapeText)'") }
                return v
            }

        let width: Int
        switch descr.dropFirst() {
        case "f4", "i4": width = 4
        case "f8", "i8": width = 8
        case "f2": width = 2
        case "u1": width = 1
        default: throw fail("dtype '\(descr)' is not supported; use float32")
        }
        guard descr.first == "<" || descr.first == "|" else { throw fail("dtype '\(descr)' is not little-endian") }
        let integer = descr.dropFirst().first == "i" || descr.dropFirst().first == "u"
        let tensor = Tensor(shape: shape)
        let dataStart = headerStart + headerLength
        guard bytes.count - dataStart == tensor.count * width else {
            throw fail("expected \(tensor.count * width) data bytes for shape \(shape), found \(bytes.count - dataStart)")
        }
        bytes.withUnsafeBytes { raw in
            let src = raw.baseAddress! + dataStart
            for i in 0..<tensor.count {
                switch (width, integer) {
                case (1, _): tensor.data[i] = Float(src.load(fromByteOffset: i, as: UInt8.self))
                case (4, true): tensor.data[i] = Float(Int32(littleEndian: src.loadUnaligned(fromByteOffset: 4 * i, as: Int32.self)))
                case (8, true): tensor.data[i] = Float(Int64(littleEndian: src.loadUnaligned(fromByteOffset: 8 * i, as: Int64.self)))
                case (4, _): tensor.data[i] = Float(bitPattern: UInt32(littleEndian: src.loadUnaligned(fromByteOffset: 4 * i, as: UInt32.self)))
                case (8, _): tensor.data[i] = Float(Double(bitPattern: UInt64(littleEndian: src.loadUnaligned(fromByteOffset: 8 * i, as: UInt64.self))))
                default: tensor.data[i] = halfToFloat(UInt16(littleEndian: src.loadUnaligned(fromByteOffset: 2 * i, as: UInt16.self)))
                }
            }
        }
        return tensor
    }

    /// Writes a float32 C-order array.
    public static func encode(_ tensor: Tensor) -> Data {
        let shape = tensor.shape.map(String.init).joined(separator: ", ") + (tensor.shape.count == 1 ? "," : "")
        var header = "{'descr': '<f4', 'fortran_order': False, 'shape': (\(shape)), }"
        while (10 + header.utf8.count + 1) % 64 != 0 { header += " " }
        header += "\n"
        var data = Data([0x93] + Array("NUMPY".utf8) + [1, 0])
        let n = header.utf8.count
        data.append(contentsOf: [UInt8(n & 0xFF), UInt8(n >> 8)])
        data.append(contentsOf: Array(header.utf8))
        for i in 0..<tensor.count {
            withUnsafeBytes(of: tensor.data[i].bitPattern.littleEndian) { data.append(contentsOf: $0) }
        }
        return data
    }

    private static func field(_ key: String, in header: String) -> String? {
        guard let r = header.range(of: "'\(key)':") else { return nil }
        let rest = header[r.upperBound...]
        let end = rest.firstIndex(of: ",") ?? rest.endIndex
        return String(rest[..<end])
    }

    private static func tupleField(_ key: String, in header: String) -> String? {
        guard let r = header.range(of: "'\(key)':"),
            let open = header[r.upperBound...].firstIndex(of: "("),
            let close = header[open...].firstIndex(of: ")")
        else { return nil }
        return String(header[header.index(after: open)..<close])
    }
}
