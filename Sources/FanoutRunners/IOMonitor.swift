import CFanoutSpawn
import Foundation
#if canImport(Glibc)
import Glibc
#endif
import Synchronization

/// One thread, blocked in epoll, that wakes the tasks waiting on the exec
/// runner's descriptors (pipes and pidfds) and fires its kill timers.
///
/// Readiness only: the waiting task does its own non-blocking read or write,
/// so nothing is buffered here and a slow consumer slows the child down.
/// A hundred children cost one thread, not a hundred blocked in waitpid.
final class IOMonitor: Sendable {
    enum Readiness: Sendable { case readable, writable }

    /// Made on first use; a failure (out of descriptors) is reported to each run instead of crashing the daemon.
    static let shared = Result { try IOMonitor() }

    private struct Waiter {
        var id: UInt64
        var continuation: CheckedContinuation<Void, any Error>
    }

    private struct Timer {
        var deadline: ContinuousClock.Instant
        var action: @Sendable () -> Void
    }

    private struct State {
        /// At most one waiter per descriptor: each descriptor has one owning task.
        var waiters: [Int32: Waiter] = [:]
        /// Waits cancelled before they parked; removed when the wait returns.
        var cancelled: Set<UInt64> = []
        var timers: [UInt64: Timer] = [:]
        var lastID: UInt64 = 0

        mutating func makeID() -> UInt64 {
            lastID += 1
            return lastID
        }
    }

    private let epoll: Int32
    /// An eventfd that interrupts epoll_wait when a timer is added.
    private let wakeup: Int32
    private let state = Mutex(State())

    private init() throws(SystemCallError) {
        let epoll = fanout_epoll_create()
        guard epoll >= 0 else { throw SystemCallError("epoll_create1", negated: epoll) }
        let wakeup = fanout_eventfd()
        guard wakeup >= 0 else {
            Glibc.close(epoll)
            throw SystemCallError("eventfd", negated: wakeup)
        }
        let added = fanout_epoll_add_persistent(epoll, wakeup)
        guard added == 0 else {
            Glibc.close(epoll)
            Glibc.close(wakeup)
            throw SystemCallError("epoll_ctl", negated: added)
        }
        self.epoll = epoll
        self.wakeup = wakeup
        let thread = Thread { [self] in loop() }
        thread.name = "fanout-exec-io"
        thread.start()
    }

    /// Returns when `fd` is ready (or may be: callers retry on EAGAIN).
    /// A cancellable wait throws `CancellationError` when its task is
    /// cancelled; the other kind ignores cancellation, for a process that
    /// must be waited for whatever happens.
    func wait(for readiness: Readiness, on fd: Int32, cancellable: Bool = true) async throws {
        let id = state.withLock { $0.makeID() }
        guard cancellable else { return try await park(fd, readiness, id) }
        defer { state.withLock { _ = $0.cancelled.remove(id) } }
        try await withTaskCancellationHandler {
            try await park(fd, readiness, id)
        } onCancel: {
            let waiter = state.withLock { state -> Waiter? in
                if let waiter = state.waiters[fd], waiter.id == id {
                    state.waiters[fd] = nil
                    return waiter
                }
                state.cancelled.insert(id)
                return nil
            }
            waiter?.continuation.resume(throwing: CancellationError())
        }
    }

    private func park(_ fd: Int32, _ readiness: Readiness, _ id: UInt64) async throws {
        try await withCheckedThrowingContinuation { (continuation: CheckedContinuation<Void, any Error>) in
            let parked = state.withLock { state -> Bool in
                if state.cancelled.contains(id) { return false }
                state.waiters[fd] = Waiter(id: id, continuation: continuation)
                return true
            }
            guard parked else { return continuation.resume(throwing: CancellationError()) }
            let armed = fanout_epoll_arm(epoll, fd, readiness == .writable ? 1 : 0)
            guard armed != 0 else { return }
            let waiter = state.withLock { state -> Waiter? in
                guard state.waiters[fd]?.id == id else { return nil }
                return state.waiters.removeValue(forKey: fd)
            }
            waiter?.continuation.resume(throwing: SystemCallError("epoll_ctl", negated: armed))
        }
    }

    /// Runs `action` on the monitor thread after `delay`, unless cancelled first.
    func schedule(after delay: Duration, _ action: @escaping @Sendable () -> Void) -> UInt64 {
        let id = state.withLock { state in
            let id = state.makeID()
            state.timers[id] = Timer(deadline: .now + delay, action: action)
            return id
        }
        fanout_eventfd_signal(wakeup)
        return id
    }

    func cancelTimer(_ id: UInt64) {
        state.withLock { _ = $0.timers.removeValue(forKey: id) }
    }

    /// Closes a descriptor nobody waits on any more.
    func close(_ fd: Int32) {
        _ = fanout_epoll_remove(epoll, fd)
        _ = Glibc.close(fd)
    }

    private func loop() {
        var ready = [Int32](repeating: -1, count: 64)
        while true {
            let timeout = state.withLock { Self.milliseconds(until: $0.timers.values.map(\.deadline).min()) }
            let count = ready.withUnsafeMutableBufferPointer {
                fanout_epoll_wait(epoll, $0.baseAddress, Int32($0.count), timeout)
            }
            for fd in ready.prefix(Int(max(count, 0))) {
                if fd == wakeup {
                    fanout_eventfd_drain(wakeup)
                    continue
                }
                // Nobody there: a cancelled wait's leftover notification.
                state.withLock { $0.waiters.removeValue(forKey: fd) }?.continuation.resume()
            }
            let now = ContinuousClock.now
            let due = state.withLock { state in
                let ids = state.timers.filter { $0.value.deadline <= now }.keys
                return ids.compactMap { state.timers.removeValue(forKey: $0)?.action }
            }
            for action in due { action() }
        }
    }

    /// epoll_wait's timeout for the next deadline, rounded up so a timer never fires early.
    private static func milliseconds(until deadline: ContinuousClock.Instant?) -> Int32 {
        guard let deadline else { return -1 }
        let left = deadline - .now
        guard left > .zero else { return 0 }
        let (seconds, attoseconds) = left.components
        let milliseconds = seconds * 1_000 + (attoseconds + 999_999_999_999_999) / 1_000_000_000_000_000
        return Int32(clamping: milliseconds)
    }
}
