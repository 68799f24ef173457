import ACMCore
import Foundation

typealias SplitMix64 = SeededGenerator

func randomTensor(_ shape: [Int], scale: Float = 1, rng: inout SplitMix64) -> Tensor {
    let t = Tensor(shape: shape)
    for i in 0..<t.count { t.data[i] = Float.random(in: -scale...scale, using: &rng) }
    return t
}

func maxAbsDiff(_ a: UnsafePointer<Float>, _ b: UnsafePointer<Float>, count: Int) -> Float {
    var m: Float = 0
    for i in 0..<count { m = max(m, abs(a[i] - b[i])) }
    return m
}

func maxAbsDiff(_ a: [Float], _ b: [Float]) -> Float {
    precondition(a.count == b.count)
    return zip(a, b).map { abs($0 - $1) }.max() ?? 0
}

/// Naive C = op(A)·op(B) on [rows][cols] arrays, in Double.
func naiveMatmul(_ a: [[Float]], _ b: [[Float]]) -> [[Float]] {
    let m = a.count, k = b.count, n = b[0].count
    precondition(a[0].count == k)
    return (0..<m).map { i in
        (0..<n).map { j in Float((0..<k).reduce(0.0) { $0 + Double(a[i][$1]) * Double(b[$1][j]) }) }
    }
}

func matrix(_ t: UnsafePointer<Float>, rows: Int, columns: Int, ld: Int? = nil) -> [[Float]] {
    (0..<rows).map { r in (0..<columns).map { t[r * (ld ?? columns) + $0] } }
}

func transpose(_ a: [[Float]]) -> [[Float]] {
    (0..<a[0].count).map { j in a.map { $0[j] } }
}

func exactGELU(_ x: Double) -> Double { 0.5 * x * (1 + erf(x / 2.0.squareRoot())) }

/// A temporary directory removed when the value goes away.
final class TemporaryDirectory {
    let path: String
    init() {
        path = NSTemporaryDirectory() + "acm-test-" + UUID().uuidString
        try! FileManager.default.createDirectory(atPath: path, withIntermediateDirectories: true)
    }
    deinit { try? FileManager.default.removeItem(atPath: path) }
}
