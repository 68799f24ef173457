// Fuzz target: the safetensors header reader (SafeTensorsFile.parseHeader, which SafeTensorsFile(path:)
// runs on the mapped file), on a heap copy of the input so that AddressSanitizer sees every read. What it
// accepts must be safe to read: every entry inside the data section, and for the dtypes the reader
// converts, exactly the bytes its shape needs.
import Foundation

@testable import ACMCore

let widths = ["F32": 4, "F16": 2, "BF16": 2, "I32": 4]

@_cdecl("LLVMFuzzerTestOneInput")
func fuzzSafeTensors(_ data: UnsafePointer<UInt8>?, _ size: Int) -> CInt {
    guard size >= 8 else { return 0 }  // SafeTensorsFile(path:) refuses shorter files before parsing
    let bytes = Array(UnsafeBufferPointer(start: data, count: size))
    do {
        let (entries, dataStart) = try bytes.withUnsafeBytes {
            try SafeTensorsFile.parseHeader($0.baseAddress!, size: size, path: "fuzz.safetensors")
        }
        precondition(dataStart >= 8 && dataStart <= size)
        for (name, entry) in entries {
            precondition(entry.range.lowerBound >= 0 && entry.range.upperBound <= size - dataStart, "\(name) outside the data")
            if let width = widths[entry.dtype] {
                precondition(entry.shape.allSatisfy { $0 >= 0 }, "\(name): negative dimension")
                precondition(entry.range.count == entry.shape.reduce(1, *) * width, "\(name): size does not match its shape")
            }
        }
    } catch is ModelError {
        // the loader's error
    } catch {
        fatalError("not a ModelError: \(error)")
    }
    return 0
}
