import DequeModule
import Dispatch
import Foundation
import Synchronization

/// Runs blocking work (SQLite calls) off the cooperative thread pool and
/// resumes the caller with its result.
///
/// Swift concurrency's pool has one thread per core: a blocking call there
/// stalls every task queued behind it. A serial `BlockingQueue` owns one
/// thread of its own for its whole life, so its work (the commit loop's
/// writes) never waits for a thread from a busy pool either; `shared` hands
/// independent reads to Dispatch's global queue.
public final class BlockingQueue: Sendable {
    private enum Kind {
        case thread(WorkerThread)
        case dispatch(DispatchQueue)
    }

    private let kind: Kind

    /// A serial queue on a thread of its own.
    public init(label: String) {
        kind = .thread(WorkerThread(name: label))
    }

    private init(queue: DispatchQueue) {
        kind = .dispatch(queue)
    }

    /// Dispatch's global concurrent queue, for independent reads.
    public static let shared = BlockingQueue(queue: .global())

    public func run<T: Sendable>(_ work: @escaping @Sendable () throws -> T) async throws -> T {
        try await withCheckedThrowingContinuation { continuation in
            let job: @Sendable () -> Void = { continuation.resume(with: Result { try work() }) }
            switch kind {
            case .thread(let thread): thread.submit(job)
            case .dispatch(let queue): queue.async(execute: job)
            }
        }
    }

    deinit {
        if case .thread(let thread) = kind { thread.stop() }
    }
}

/// One thread running submitted jobs in order until stopped.
private final class WorkerThread: Sendable {
    private struct Jobs {
        var queue = Deque<@Sendable () -> Void>()
        var stopped = false
    }

    // Guards `jobs` together with `Mutex` (which Swift's checker sees); NSCondition is thread-safe.
    private let condition = NSCondition()
    private let jobs = Mutex(Jobs())

    init(name: String) {
        let thread = Thread { [self] in loop() }
        thread.name = name
        thread.start()
    }

    func submit(_ job: @escaping @Sendable () -> Void) {
        condition.lock()
        jobs.withLock { $0.queue.append(job) }
        condition.signal()
        condition.unlock()
    }

    func stop() {
        condition.lock()
        jobs.withLock { $0.stopped = true }
        condition.signal()
        condition.unlock()
    }

    private func loop() {
        while true {
            condition.lock()
            var next = jobs.withLock { $0.queue.popFirst() }
            while next == nil {
                if jobs.withLock({ $0.stopped }) {
                    condition.unlock()
                    return
                }
                condition.wait()
                next = jobs.withLock { $0.queue.popFirst() }
            }
            condition.unlock()
            next?()
        }
    }
}
