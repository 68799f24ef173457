// The runner's lock and condition variable: pthread's, because a condition variable's timed wait must
// run on the monotonic clock (NSCondition's runs on the wall clock, which an NTP step could stretch).

#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#elseif canImport(Darwin)
import Darwin
#endif

/// A pthread mutex. Its storage is allocated once, since a pthread mutex must not move.
final class PThreadMutex: @unchecked Sendable {
    let mutex = UnsafeMutablePointer<pthread_mutex_t>.allocate(capacity: 1)

    init() { pthread_mutex_init(mutex, nil) }

    deinit {
        pthread_mutex_destroy(mutex)
        mutex.deallocate()
    }

    func withLock<T>(_ body: () throws -> T) rethrows -> T {
        pthread_mutex_lock(mutex)
        defer { pthread_mutex_unlock(mutex) }
        return try body()
    }
}

/// A pthread condition variable whose timed waits run on the monotonic clock.
final class PThreadCondition: @unchecked Sendable {
    let condition = UnsafeMutablePointer<pthread_cond_t>.allocate(capacity: 1)

    init() {
        #if os(Linux)
        var attributes = pthread_condattr_t()
        pthread_condattr_init(&attributes)
        pthread_condattr_setclock(&attributes, CLOCK_MONOTONIC)
        pthread_cond_init(condition, &attributes)
        pthread_condattr_destroy(&attributes)
        #else
        pthread_cond_init(condition, nil)
        #endif
    }

    deinit {
        pthread_cond_destroy(condition)
        condition.deallocate()
    }

    func signal() { pthread_cond_signal(condition) }

    func broadcast() { pthread_cond_broadcast(condition) }

    /// Waits for a signal; `lock` must be held. It may also return spuriously.
    func wait(_ lock: PThreadMutex) { pthread_cond_wait(condition, lock.mutex) }

    /// Waits for a signal or for `nanoseconds` to pass; `lock` must be held. It may also return early.
    func wait(_ lock: PThreadMutex, timeoutNanoseconds nanoseconds: UInt64) {
        // A day at most keeps tv_sec from overflowing; the caller asks again when it wakes.
        let wait = min(nanoseconds, 86_400 * 1_000_000_000)
        #if os(Linux)
        var now = timespec()
        clock_gettime(CLOCK_MONOTONIC, &now)
        let total = UInt64(now.tv_nsec) + wait % 1_000_000_000
        var deadline = timespec(
            tv_sec: now.tv_sec + Int(wait / 1_000_000_000) + Int(total / 1_000_000_000),
            tv_nsec: Int(total % 1_000_000_000))
        pthread_cond_timedwait(condition, lock.mutex, &deadline)
        #else
        var relative = timespec(tv_sec: Int(wait / 1_000_000_000), tv_nsec: Int(wait % 1_000_000_000))
        pthread_cond_timedwait_relative_np(condition, lock.mutex, &relative)
        #endif
    }
}
