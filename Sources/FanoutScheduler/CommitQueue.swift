import FanoutCore
import FanoutStore
import Logging
import Synchronization

/// Group commit: changes from every part of the scheduler are collected here
/// and written by one loop, many per transaction. Events are published to
/// subscribers only after their transaction committed, so nothing a client
/// sees can be lost by a crash.
final class CommitQueue: Sendable {
    private struct State {
        var pending = ChangeSet()
        var callbacks: [@Sendable (Result<Void, any Error>) -> Void] = []
        var closed = false
    }

    private let store: any Store
    private let hub: EventHub
    private let logger: Logger
    private let state = Mutex(State())
    private let wakeups: AsyncStream<Void>
    private let wake: AsyncStream<Void>.Continuation

    init(store: any Store, hub: EventHub, logger: Logger) {
        self.store = store
        self.hub = hub
        self.logger = logger
        (wakeups, wake) = AsyncStream.makeStream(of: Void.self, bufferingPolicy: .bufferingNewest(1))
    }

    /// Queues changes; `onCommit` runs once they are durable (or failed for good).
    func submit(_ changes: ChangeSet, onCommit: (@Sendable (Result<Void, any Error>) -> Void)? = nil) {
        guard !changes.isEmpty || onCommit != nil else { return }
        let accepted = state.withLock { state -> Bool in
            // After close the loop may be gone: nothing more is written, and waiters hear so at once.
            guard !state.closed else { return false }
            state.pending.merge(changes)
            if let onCommit { state.callbacks.append(onCommit) }
            return true
        }
        if accepted {
            wake.yield()
        } else {
            onCommit?(.failure(FanoutError.unavailable("the scheduler has shut down")))
        }
    }

    /// Runs until `close()` and every queued change is written.
    func run() async {
        for await _ in wakeups {
            await flush()
            if state.withLock({ $0.closed && $0.pending.isEmpty && $0.callbacks.isEmpty }) { break }
        }
        await flush()
    }

    /// Stops the loop after what is queued has been written.
    func close() {
        state.withLock { $0.closed = true }
        wake.yield()
        wake.finish()
    }

    private func flush() async {
        while true {
            let (changes, callbacks) = state.withLock { state in
                defer {
                    state.pending = ChangeSet()
                    state.callbacks = []
                }
                return (state.pending, state.callbacks)
            }
            if changes.isEmpty && callbacks.isEmpty { return }
            var failures = 0
            while true {
                do {
                    let events = try store.commit(changes)
                    hub.publish(events)
                    for callback in callbacks { callback(.success(())) }
                    break
                } catch {
                    failures += 1
                    // A full or locked disk may recover; the changes stay queued meanwhile.
                    logger.error("store commit failed, retrying", metadata: ["error": "\(error)", "attempt": "\(failures)"])
                    if failures >= 50 || state.withLock({ $0.closed }) {
                        for callback in callbacks { callback(.failure(error)) }
                        break
                    }
                    try? await Task.sleep(for: .milliseconds(min(100 * failures, 2_000)))
                }
            }
        }
    }
}
