/// A row-major Float32 tensor backed by one 64-byte-aligned buffer.
///
/// A class, so that weights and scratch buffers are shared rather than copied, and a forward pass can
/// write into buffers it does not own. Element access goes through `data`, an unsafe pointer: hot loops
/// index it directly.
public final class Tensor: @unchecked Sendable {
    public let shape: [Int]
    public let count: Int
    public let data: UnsafeMutablePointer<Float>

    /// A zero-filled tensor.
    public init(shape: [Int]) {
        precondition(shape.allSatisfy { $0 >= 0 }, "negative dimension in \(shape)")
        self.shape = shape
        self.count = shape.reduce(1, *)
        let raw = UnsafeMutableRawPointer.allocate(
            byteCount: max(count, 1) * MemoryLayout<Float>.stride, alignment: 64)
        self.data = raw.bindMemory(to: Float.self, capacity: max(count, 1))
        data.initialize(repeating: 0, count: max(count, 1))
    }

    /// A tensor holding a copy of `values`, which must have `shape`'s element count.
    public convenience init(shape: [Int], values: [Float]) {
        self.init(shape: shape)
        precondition(values.count == count, "\(values.count) values for shape \(shape)")
        values.withUnsafeBufferPointer { data.update(from: $0.baseAddress!, count: count) }
    }

    deinit {
        UnsafeMutableRawPointer(data).deallocate()
    }

    /// Rows of a 2-D view: the first dimension, with the rest flattened into columns.
    public var rows: Int { shape.first ?? 1 }
    public var columns: Int { shape.count <= 1 ? (shape.first ?? 1) : count / max(shape[0], 1) }

    public var array: [Float] { Array(UnsafeBufferPointer(start: data, count: count)) }

    public subscript(index: Int) -> Float {
        get { data[index] }
        set { data[index] = newValue }
    }

    /// The transpose of the 2-D view, [columns, rows].
    public func transposed() -> Tensor {
        let t = Tensor(shape: [columns, rows])
        transpose(data, rows: rows, columns: columns, lda: columns, out: t.data, ldOut: rows)
        return t
    }

    /// A pointer to row `row` of the 2-D view.
    public func row(_ row: Int) -> UnsafeMutablePointer<Float> { data + row * columns }
}

/// A growable scratch buffer: `reserve` reallocates only when more room is needed than ever before,
/// so steady-state forward passes allocate nothing.
public final class Scratch: @unchecked Sendable {
    public private(set) var capacity = 0
    public private(set) var data: UnsafeMutablePointer<Float>

    public init(capacity: Int = 0) {
        self.capacity = max(capacity, 16)
        data = UnsafeMutableRawPointer.allocate(
            byteCount: self.capacity * MemoryLayout<Float>.stride, alignment: 64
        ).bindMemory(to: Float.self, capacity: self.capacity)
    }

    deinit { UnsafeMutableRawPointer(data).deallocate() }

    /// Room for at least `count` floats; the contents are undefined afterwards.
    @discardableResult
    public func reserve(_ count: Int) -> UnsafeMutablePointer<Float> {
        if count > capacity {
            UnsafeMutableRawPointer(data).deallocate()
            capacity = max(count, capacity * 3 / 2)
            data = UnsafeMutableRawPointer.allocate(
                byteCount: capacity * MemoryLayout<Float>.stride, alignment: 64
            ).bindMemory(to: Float.self, capacity: capacity)
        }
        return data
    }
}

/// One `Scratch` per worker thread, so that parallel chunks never share a buffer.
public final class WorkerScratch: @unchecked Sendable {
    private var buffers: [Scratch] = []

    public init() {}

    /// Makes sure there is a buffer for every worker; call before a parallel region, not inside one.
    public func prepare() {
        while buffers.count < Parallel.workers { buffers.append(Scratch()) }
    }

    public subscript(worker: Int) -> Scratch { buffers[worker] }
}
