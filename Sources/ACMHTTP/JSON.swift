import CJansson
import Foundation

// The only file that imports jansson. Parsing gives read-only views of jansson's tree (no copy of
// large `data` arrays into Swift values); writing builds a `JSON` value and has jansson serialise it.

/// A parse error: the message and the position jansson reports.
struct JSONError: Error, CustomStringConvertible {
    let description: String
}

/// Owns a parsed jansson tree; the views into it keep it alive.
final class JSONDocument: @unchecked Sendable {
    fileprivate let root: UnsafeMutablePointer<json_t>

    private init(root: UnsafeMutablePointer<json_t>) { self.root = root }

    deinit { json_decref(root) }

    /// Parses one JSON value from `bytes`.
    static func parse(_ bytes: UnsafeRawBufferPointer) throws -> JSONView {
        var error = json_error_t()
        guard let base = bytes.baseAddress?.assumingMemoryBound(to: CChar.self),
            let root = json_loadb(base, bytes.count, 0, &error)
        else {
            let text = withUnsafeBytes(of: error.text) { String(decoding: $0.prefix { $0 != 0 }, as: UTF8.self) }
            throw JSONError(description: "malformed JSON at line \(error.line), column \(error.column): \(text)")
        }
        let document = JSONDocument(root: root)
        return JSONView(node: root, document: document)
    }
}

/// A read-only view of one node of a parsed document.
struct JSONView {
    fileprivate let node: UnsafeMutablePointer<json_t>
    fileprivate let document: JSONDocument

    private var type: json_type { node.pointee.type }

    var isObject: Bool { type == JSON_OBJECT }
    var isArray: Bool { type == JSON_ARRAY }

    subscript(key: String) -> JSONView? {
        guard isObject, let child = json_object_get(node, key) else { return nil }
        return JSONView(node: child, document: document)
    }

    var count: Int { isArray ? json_array_size(node) : 0 }

    subscript(index: Int) -> JSONView {
        JSONView(node: json_array_get(node, index), document: document)
    }

    var array: [JSONView]? { isArray ? (0..<count).map { self[$0] } : nil }

    var string: String? { type == JSON_STRING ? String(cString: json_string_value(node)) : nil }

    /// String bytes, which may contain NULs.
    var stringBytes: [UInt8]? {
        guard type == JSON_STRING, let p = json_string_value(node) else { return nil }
        return [UInt8](UnsafeRawBufferPointer(start: p, count: json_string_length(node)))
    }

    /// A number (integer or real).
    var number: Double? { type == JSON_INTEGER || type == JSON_REAL ? json_number_value(node) : nil }

    /// An integer: a JSON integer, or a real with no fraction.
    var integer: Int? {
        if type == JSON_INTEGER { return Int(json_integer_value(node)) }
        if type == JSON_REAL, let v = number, v == v.rounded(), abs(v) < 1e15 { return Int(v) }
        return nil
    }

    var bool: Bool? {
        switch type {
        case JSON_TRUE: return true
        case JSON_FALSE: return false
        default: return nil
        }
    }

    /// Appends every number of a flat or arbitrarily nested array, depth first; throws on anything
    /// that is not a number. Used for tensor `data`.
    func flattenNumbers(into out: inout [Float]) throws {
        switch type {
        case JSON_INTEGER: out.append(Float(json_integer_value(node)))
        case JSON_REAL: out.append(Float(json_real_value(node)))
        case JSON_ARRAY:
            for i in 0..<json_array_size(node) {
                try JSONView(node: json_array_get(node, i), document: document).flattenNumbers(into: &out)
            }
        default: throw JSONError(description: "tensor data must hold only numbers")
        }
    }

    /// The strings of a flat or nested array, as bytes.
    func flattenStrings(into out: inout [[UInt8]]) throws {
        if let bytes = stringBytes {
            out.append(bytes)
        } else if isArray {
            for i in 0..<count { try self[i].flattenStrings(into: &out) }
        } else {
            throw JSONError(description: "BYTES tensor data must hold only strings")
        }
    }
}

/// A JSON value to serialise.
enum JSON {
    case object([(String, JSON)])
    case array([JSON])
    case string(String)
    case number(Double)
    case integer(Int)
    case bool(Bool)
    /// A flat array of floats, printed with 9 significant digits (enough for any Float).
    case floats([Float])

    /// Compact UTF-8 text.
    var bytes: [UInt8] {
        let root = makeNode()
        defer { json_decref(root) }
        guard let text = json_dumps(root, acm_json_dump_flags()) else { return Array("null".utf8) }
        defer { free(text) }
        return [UInt8](UnsafeRawBufferPointer(start: text, count: strlen(text)))
    }

    private func makeNode() -> UnsafeMutablePointer<json_t> {
        switch self {
        case let .object(fields):
            let node = json_object()!
            for (key, value) in fields { json_object_set_new(node, key, value.makeNode()) }
            return node
        case let .array(values):
            let node = json_array()!
            for value in values { json_array_append_new(node, value.makeNode()) }
            return node
        case let .string(s):
            return s.utf8.withContiguousStorageIfAvailable { buf in
                buf.withMemoryRebound(to: CChar.self) { json_stringn($0.baseAddress, $0.count) }
            }.flatMap { $0 } ?? json_string(s)
        case let .number(v): return v.isFinite ? json_real(v) : json_null()
        case let .integer(v): return json_integer(json_int_t(v))
        case let .bool(v): return v ? json_true() : json_false()
        case let .floats(values):
            let node = json_array()!
            for v in values { json_array_append_new(node, v.isFinite ? json_real(Double(v)) : json_null()) }
            return node
        }
    }
}

/// jansson's version string, e.g. "2.14", as the linked library reports it.
public let janssonVersion = String(cString: jansson_version_str())
