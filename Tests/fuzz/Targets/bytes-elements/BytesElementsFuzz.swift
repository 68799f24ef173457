// Fuzz target: the binary-data extension's BYTES layout (splitBytesElements): each element a 4-byte
// little-endian length and its bytes. The input is the binary tail of a body, taken as a slice that does
// not start at index 0, as the server's does. Whatever splits must encode back to the same bytes.
import Foundation

@testable import ACMHTTP

@_cdecl("LLVMFuzzerTestOneInput")
func fuzzBytesElements(_ data: UnsafePointer<UInt8>?, _ size: Int) -> CInt {
    let header = Array("{}".utf8)
    let body = header + UnsafeBufferPointer(start: data, count: size)
    let elements: [[UInt8]]
    do {
        elements = try splitBytesElements(body[header.count...])
    } catch is ProtocolError {
        return 0
    } catch {
        fatalError("not a ProtocolError: \(error)")
    }
    var encoded: [UInt8] = []
    for element in elements {
        withUnsafeBytes(of: UInt32(element.count).littleEndian) { encoded.append(contentsOf: $0) }
        encoded += element
    }
    precondition(encoded[...] == body[header.count...], "split and encoded again, the bytes differ")
    return 0
}
