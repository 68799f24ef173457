import Dispatch
import Foundation

/// Intra-op parallelism. The engine splits each large operation into one contiguous chunk per worker
/// and runs the chunks on their own cores, with OpenBLAS itself single-threaded: measured here, two
/// single-threaded GEMMs over halves of the rows beat one two-threaded GEMM, most of all for the
/// mid-sized row blocks that grouped ACM learners produce, and the elementwise work between GEMMs
/// (GELU, gathers, scatters) is split too.
public enum Parallel {
    /// One worker per core by default. The first use also makes OpenBLAS single-threaded.
    nonisolated(unsafe) private static var configuredWorkers: Int = {
        blasThreads = 1
        return ProcessInfo.processInfo.activeProcessorCount
    }()

    /// Worker threads per operation; set it before the first forward pass.
    public static var workers: Int {
        get { configuredWorkers }
        set { configuredWorkers = max(1, newValue) }
    }

    /// Rows below which an operation is not worth splitting.
    public static let minimumRowsPerWorker = 16

    /// Runs `body(worker, range)` for `workers` contiguous, near-equal pieces of 0..<count, in parallel.
    /// Small counts run inline as one piece.
    public static func forEachChunk(_ count: Int, minimumPerChunk: Int = minimumRowsPerWorker, _ body: (Int, Range<Int>) -> Void) {
        let chunks = max(1, min(workers, count / max(minimumPerChunk, 1)))
        if chunks == 1 {
            body(0, 0..<count)
            return
        }
        run(chunks) { i in body(i, (i * count / chunks)..<((i + 1) * count / chunks)) }
    }

    /// Runs `body(i)` for i in 0..<count concurrently and waits for all of them.
    public static func run(_ count: Int, _ body: (Int) -> Void) {
        if count == 1 {
            body(0)
            return
        }
        withoutActuallyEscaping(body) { body in
            let box = UncheckedSendable(body)
            DispatchQueue.concurrentPerform(iterations: count) { box.value($0) }
        }
    }
}

/// Carries a value across a concurrency boundary that the caller has made safe: each worker touches
/// only its own rows.
struct UncheckedSendable<T>: @unchecked Sendable {
    let value: T
    init(_ value: T) { self.value = value }
}
