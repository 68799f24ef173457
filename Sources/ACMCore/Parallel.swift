import Dispatch
import Foundation
import Synchronization

/// Intra-op parallelism. The engine splits each large operation into one contiguous chunk per worker
/// and runs the chunks on their own cores, with the GEMM kernels single-threaded: measured here, two
/// single-threaded GEMMs over halves of the rows beat one two-threaded GEMM, most of all for the
/// mid-sized row blocks that grouped ACM learners produce, and the elementwise work between GEMMs
/// (GELU, gathers, scatters) is split too.
public enum Parallel {
    /// One worker per core this process may use (`availableCores`: its CPUs, fewer under a cgroup CPU quota) by
    /// default. The first use also makes OpenBLAS single-threaded.
    nonisolated(unsafe) private static var configuredWorkers: Int = {
        blasThreads = 1
        return availableCores()
    }()

    /// Worker threads per operation; set it before the first forward pass. Inside `serially` it is 1.
    public static var workers: Int {
        get { isSerial ? 1 : configuredWorkers }
        set { configuredWorkers = max(1, newValue) }
    }

    /// Whether this thread is inside `serially`.
    public static var isSerial: Bool { pthread_getspecific(serialKey) != nil }

    private static let serialKey: pthread_key_t = {
        var key = pthread_key_t()
        pthread_key_create(&key, nil)
        return key
    }()

    /// Runs `body` with every parallel operation it makes run inline on this thread: for work that is
    /// already one of several running side by side (a forward pass over part of a batch).
    public static func serially<T>(_ body: () -> T) -> T {
        let outer = pthread_getspecific(serialKey)
        pthread_setspecific(serialKey, UnsafeRawPointer(bitPattern: 1))
        defer { pthread_setspecific(serialKey, outer) }
        return body()
    }

    /// Rows below which an operation is not worth splitting.
    public static let minimumRowsPerWorker = 16

    /// The threads that run the chunks after the first, started on first use.
    nonisolated(unsafe) private static var pool: WorkerPool?
    private static let poolLock = NSLock()

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
    ///
    /// The caller and the pool's threads share the chunks out. A forward pass makes hundreds of
    /// these calls a millisecond apart, so the pool's threads spin a while before they sleep, and a call
    /// costs well under a microsecond instead of a thread wake-up. When the pool is busy (another model's
    /// loop thread, or a call from inside a chunk), the call goes to Dispatch instead.
    public static func run(_ count: Int, _ body: (Int) -> Void) {
        if count == 1 || isSerial {
            for i in 0..<count { body(i) }
            return
        }
        withoutActuallyEscaping(body) { body in
            let job = UncheckedSendable(body)
            if let pool = acquirePool() {
                pool.run(count, job)
                pool.release()
            } else {
                DispatchQueue.concurrentPerform(iterations: count) { job.value($0) }
            }
        }
    }

    /// The pool, with one thread per worker but the caller's: the chunks of a call are claimed as the
    /// threads get to them, so a call may have more chunks than threads, and more threads than cores
    /// would only take turns.
    private static func acquirePool() -> WorkerPool? {
        poolLock.lock()
        defer { poolLock.unlock() }
        let threads = max(1, configuredWorkers - 1)
        if pool == nil || pool!.threads < threads { pool = WorkerPool(threads: threads) }
        return pool!.tryAcquire() ? pool : nil
    }
}

/// Threads that help run the chunks of `Parallel.run`. Each chunk is claimed by exactly one thread, the
/// caller included, so a call never waits for a pool thread the OS has not scheduled (more threads than
/// cores): the caller takes the unclaimed chunks itself. Between jobs a pool thread spins on the job
/// word for about `spinIterations` loads (yielding the core now and then), then sleeps on a condition
/// variable.
final class WorkerPool: @unchecked Sendable {
    let threads: Int
    /// The current job: its serial number times 256 plus its chunk count, in one word so that a thread
    /// never pairs one job's number with another's count.
    private let state = Atomic<Int>(0)
    /// The current job's serial number times 256 plus the chunks claimed so far.
    private let claims = Atomic<Int>(0)
    /// Chunks of the current job not finished yet; the caller waits for 0 before it starts another job.
    private let pending = Atomic<Int>(0)
    /// Threads asleep (or about to be), so that `run` knows to signal.
    private let sleepers = Atomic<Int>(0)
    /// Held by the caller of the current job.
    private let busy = Atomic<Bool>(false)
    private let condition = NSCondition()
    /// Written before the job is published; read only by a thread that has claimed one of its chunks,
    /// which the caller waits for.
    nonisolated(unsafe) private var job: UncheckedSendable<(Int) -> Void>?
    static let spinIterations = 20_000
    /// Spins between yields of the core (`sched_yield`, which returns at once when nothing else waits).
    static let yieldAfter = 2_000

    init(threads: Int) {
        precondition(threads < 255)
        self.threads = threads
        for index in 0..<threads {
            let thread = Thread { [unowned self] in self.loop() }
            thread.name = "acm-worker-\(index + 1)"
            thread.stackSize = 8 << 20
            thread.start()
        }
    }

    func tryAcquire() -> Bool {
        busy.compareExchange(expected: false, desired: true, ordering: .acquiring).exchanged
    }

    func release() { busy.store(false, ordering: .releasing) }

    /// Runs chunks 0..<count on the calling thread and the pool; returns when all are done.
    func run(_ count: Int, _ body: UncheckedSendable<(Int) -> Void>) {
        precondition(count < 256)
        job = body
        let serial = state.load(ordering: .relaxed) >> 8 + 1
        pending.store(count, ordering: .relaxed)
        claims.store(serial << 8, ordering: .relaxed)
        state.store(serial << 8 | count, ordering: .sequentiallyConsistent)
        if sleepers.load(ordering: .sequentiallyConsistent) > 0 {
            condition.lock()
            condition.broadcast()
            condition.unlock()
        }
        work(serial: serial, count: count)
        // The chunks other threads claimed are about as long as this thread's; past a few microseconds
        // such a thread is likely not running, so give the core up while waiting.
        var spins = 0
        while pending.load(ordering: .acquiring) > 0 {
            spins += 1
            if spins > Self.yieldAfter { sched_yield() }
        }
        job = nil
    }

    /// Claims and runs chunks of job `serial` until none is left.
    private func work(serial: Int, count: Int) {
        var claimed = claims.load(ordering: .acquiring)
        while claimed >> 8 == serial && claimed & 255 < count {
            let (exchanged, original) = claims.compareExchange(
                expected: claimed, desired: claimed + 1, ordering: .acquiringAndReleasing)
            if exchanged {
                runChunk(claimed & 255)
                pending.subtract(1, ordering: .releasing)
                claimed += 1
            } else {
                claimed = original
            }
        }
    }

    /// Runs one chunk of the current job. A function of its own so that this thread's reference to the
    /// job is gone when it reports the chunk done: `Parallel.run` checks that its closure did not escape.
    @inline(never)
    private func runChunk(_ chunk: Int) {
        job?.value(chunk)
    }

    private func loop() {
        flushDenormalsToZero()
        // 0, not the current state: the first job may be published before this thread gets here.
        var seen = 0
        while true {
            var spins = 0
            var current = state.load(ordering: .acquiring)
            while current == seen && spins < Self.spinIterations {
                spins += 1
                if spins % Self.yieldAfter == 0 { sched_yield() }
                current = state.load(ordering: .acquiring)
            }
            if current == seen {
                condition.lock()
                sleepers.add(1, ordering: .sequentiallyConsistent)
                while state.load(ordering: .sequentiallyConsistent) == seen { condition.wait() }
                sleepers.subtract(1, ordering: .sequentiallyConsistent)
                condition.unlock()
                current = state.load(ordering: .acquiring)
            }
            seen = current
            work(serial: current >> 8, count: current & 255)
        }
    }
}

/// Carries a value across a concurrency boundary that the caller has made safe: each worker touches
/// only its own rows.
struct UncheckedSendable<T>: @unchecked Sendable {
    let value: T
    init(_ value: T) { self.value = value }
}
