import Dispatch

/// Runs blocking work (SQLite calls) off the cooperative thread pool and
/// resumes the caller with its result.
///
/// Swift concurrency's pool has one thread per core: a blocking call there
/// stalls every task queued behind it. `shared` hands the work to Dispatch's
/// global queue. (The commit loop and the enqueues it runs have a thread of
/// their own, `CommitQueue`.)
public final class BlockingQueue: Sendable {
    private let queue: DispatchQueue

    private init(queue: DispatchQueue) {
        self.queue = queue
    }

    /// Dispatch's global concurrent queue, for independent reads.
    public static let shared = BlockingQueue(queue: .global())

    public func run<T: Sendable>(_ work: @escaping @Sendable () throws -> T) async throws -> T {
        try await withCheckedThrowingContinuation { continuation in
            queue.async { continuation.resume(with: Result { try work() }) }
        }
    }
}
