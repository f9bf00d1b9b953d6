import FanoutCore
import FanoutStore
import Foundation
import Logging
import Synchronization

/// Group commit: changes from every part of the scheduler are collected here
/// and written by one loop, many per transaction. Events are published to
/// subscribers only after their transaction committed, so nothing a client
/// sees can be lost by a crash.
///
/// The same loop applies event retention: every `trimIntervalMs` at most, it
/// deletes the oldest events in steps of `rowsPerStep`, writing whatever was
/// queued meanwhile between two steps, so trimming never holds up a commit for
/// longer than one small step and never runs as part of a commit.
final class CommitQueue: Sendable {
    private struct State {
        var pending = ChangeSet()
        var callbacks: [@Sendable (Result<Void, any Error>) -> Void] = []
        /// Writes of their own to run on the commit thread (`start`), in order.
        var jobs: [Job] = []
        /// Whether the loop's thread was started (jobs queued without one are refused at close).
        var running = false
        var closed = false
        /// Producers waiting for the queue to shrink below `maxQueuedChanges`.
        var roomWaiters: [CheckedContinuation<Void, Never>] = []
        /// Set while commits fail (disk full, I/O error): since when, and why.
        var failing: StoreFailure?
        /// Events written since trimming last paused for a commit.
        var eventsSinceTrimSlice = 0
    }

    private let store: any StoreWriter
    private let hub: EventHub
    /// When set, committed events are not published here: this is told instead (the shared
    /// store's feed publishes every daemon's events in the store's order).
    private let eventsWritten: (@Sendable () -> Void)?
    private let logger: Logger
    let retention: EventRetention
    /// Producers that can wait (turn reports, window reads) do while more changes than this are queued.
    let maxQueuedChanges: Int
    /// How long to wait before trying a failed commit again.
    let retryBackoff: Backoff
    /// Wall-clock milliseconds; tests pass their own.
    private let now: @Sendable () -> Milliseconds
    private let state = Mutex(State())
    /// Told of the batches a commit ended, when the store decides that (`StoreWriter.commitReportingEnded`).
    private let endedBatchesHandler = Mutex<(@Sendable ([BatchRecord]) -> Void)?>(nil)
    /// The loop runs on a thread of its own: SQLite's writes block, and would hold up every
    /// stream and runner on the cooperative pool; and a submit wakes it directly, with no
    /// hop through the pool and back between a change and its commit.
    private let wakeup = ThreadWakeup()
    /// False when commits start failing, true when they succeed again; ends at `close()`.
    let healthChanges: AsyncStream<Bool>
    private let health: AsyncStream<Bool>.Continuation

    init(store: any StoreWriter, hub: EventHub, eventsWritten: (@Sendable () -> Void)? = nil,
         logger: Logger = Logger(label: "fanout.commit"),
         retention: EventRetention = EventRetention(), maxQueuedChanges: Int = 20_000,
         retryBackoff: Backoff = Backoff(baseMs: 50, maxMs: 2_000),
         now: @escaping @Sendable () -> Milliseconds = { WallClock.now }) {
        self.retryBackoff = retryBackoff
        self.maxQueuedChanges = max(1, maxQueuedChanges)
        self.store = store
        self.hub = hub
        self.eventsWritten = eventsWritten
        self.logger = logger
        self.retention = retention
        self.now = now
        (healthChanges, health) = AsyncStream.makeStream(of: Bool.self)
    }

    /// Sets what is told of batches the store ended in a commit; called on the commit thread,
    /// after the commit's events are published.
    func onBatchesEnded(_ handler: @escaping @Sendable ([BatchRecord]) -> Void) {
        endedBatchesHandler.withLock { $0 = handler }
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
            wakeup.raise()
        } else {
            onCommit?(.failure(FanoutError.unavailable("the scheduler has shut down")))
        }
    }

    /// Returns once every change submitted before the call is written: true, or false when the
    /// queue gave up on them (shutdown).
    func written() async -> Bool {
        await withCheckedContinuation { continuation in
            submit(ChangeSet()) { outcome in continuation.resume(returning: (try? outcome.get()) != nil) }
        }
    }

    /// Runs `work` on the commit thread, between two group commits, and hands back its result
    /// to await. For a write that leads to changes at once (an enqueue, which admits and starts
    /// tasks): they are queued on the thread that writes them, with no hop between the two.
    func start<T: Sendable>(_ work: @escaping @Sendable () throws -> T) -> PendingResult<T> {
        let pending = PendingResult<T>()
        let job = Job(run: { pending.resolve(Result { try work() }) }, refuse: { pending.resolve(.failure($0)) })
        let accepted = state.withLock { state -> Bool in
            guard !state.closed else { return false }
            state.jobs.append(job)
            return true
        }
        if accepted {
            wakeup.raise()
        } else {
            job.refuse(Self.shutDown)
        }
        return pending
    }

    private struct Job: Sendable {
        let run: @Sendable () -> Void
        let refuse: @Sendable (any Error) -> Void
    }

    private static let shutDown = FanoutError.unavailable("the scheduler has shut down")

    /// Set while the store refuses commits; the loop retries them with backoff until it accepts them.
    var storeFailure: StoreFailure? { state.withLock { $0.failing } }

    /// Changes waiting for the commit loop.
    var queuedChanges: Int { state.withLock { $0.pending.count } }

    /// Returns at once while fewer than `maxQueuedChanges` changes wait to be
    /// written, else when the commit loop has taken them. This is the
    /// backpressure for producers that can wait; decisions made under the
    /// scheduler's lock cannot, and are bounded by the concurrency limits.
    /// Returns whether it waited.
    @discardableResult
    func waitForRoom() async -> Bool {
        if state.withLock({ $0.closed || $0.pending.count < maxQueuedChanges }) { return false }
        await withCheckedContinuation { (continuation: CheckedContinuation<Void, Never>) in
            let hasRoom = state.withLock { state -> Bool in
                if state.closed || state.pending.count < maxQueuedChanges { return true }
                state.roomWaiters.append(continuation)
                return false
            }
            if hasRoom { continuation.resume() }
        }
        return true
    }

    /// Runs until `close()` and every queued change is written.
    func run() async {
        state.withLock { $0.running = true }
        await withCheckedContinuation { (done: CheckedContinuation<Void, Never>) in
            let thread = Thread { [self] in
                loop()
                done.resume()
            }
            thread.name = "fanout.commit"
            thread.start()
        }
    }

    private func loop() {
        let interval = max(1, retention.trimIntervalMs)
        // Due at once: the log may be over a limit lowered since the last run.
        var nextTrimAt = now()
        while true {
            runJobs()
            flush()
            if state.withLock({ $0.closed && $0.pending.isEmpty && $0.callbacks.isEmpty && $0.jobs.isEmpty }) { break }
            let startedAt = now()
            if retention.isLimited && startedAt >= nextTrimAt {
                // Counted from the start: the trim's own time does not delay the next one.
                nextTrimAt = startedAt + interval
                trimEvents()
            }
            // An idle daemon still wakes now and then to drop events past the age limit.
            wakeup.wait(until: retention.isLimited ? Date().addingTimeInterval(Double(interval) / 1000) : nil)
        }
        flush()
    }

    private func runJobs() {
        let jobs = state.withLock { state in
            defer { state.jobs = [] }
            return state.jobs
        }
        for job in jobs { job.run() }
    }

    /// Applies retention in bounded steps until nothing more is due; once a
    /// commit is queued, it goes first as soon as the steps have removed more
    /// events than were written since the last slice, so trimming always gains
    /// on the writers.
    private func trimEvents() {
        let cutoff = retention.maxAgeMs.map { now() - $0 }
        let step = max(1, retention.rowsPerStep)
        var total = 0
        while true {
            var deleted = 0
            var more = false
            do {
                let quota = state.withLock { state in
                    defer { state.eventsSinceTrimSlice = 0 }
                    return state.eventsSinceTrimSlice + step
                }
                while true {
                    let removed = try store.trimEvents(keepingLast: retention.maxEvents, olderThan: cutoff, limit: step)
                    deleted += removed
                    if removed < step { break }
                    let waiting = state.withLock { $0.closed || !$0.pending.isEmpty || !$0.jobs.isEmpty }
                    if waiting && deleted >= quota {
                        more = true
                        break
                    }
                }
            } catch {
                // Retention is housekeeping: try again at the next interval.
                logger.warning("event log trim failed", metadata: ["error": "\(error)"])
                break
            }
            total += deleted
            if !more || state.withLock({ $0.closed }) { break }
            // Enqueues and commits queued meanwhile go before the next step.
            runJobs()
            flush()
        }
        if total > 0 { logger.debug("trimmed the event log", metadata: ["events": "\(total)"]) }
    }

    /// Stops the loop after what is queued has been written.
    func close() {
        let (waiters, orphans) = state.withLock { state in
            state.closed = true
            defer { state.roomWaiters = [] }
            // Without a loop nothing would ever run them.
            let orphans = state.running ? [] : state.jobs
            if !state.running { state.jobs = [] }
            return (state.roomWaiters, orphans)
        }
        for waiter in waiters { waiter.resume() }
        for job in orphans { job.refuse(Self.shutDown) }
        wakeup.raise()
        health.finish()
    }

    private func flush() {
        while true {
            let (changes, callbacks, waiters) = state.withLock { state in
                defer {
                    state.pending = ChangeSet()
                    state.callbacks = []
                    state.roomWaiters = []
                }
                return (state.pending, state.callbacks, state.roomWaiters)
            }
            // The queue is empty again: producers may fill it while this group is written.
            for waiter in waiters { waiter.resume() }
            if changes.isEmpty && callbacks.isEmpty { return }
            let outcome = commitUntilDurable(changes)
            for callback in callbacks { callback(outcome) }
        }
    }

    /// Writes one group, retrying with backoff for as long as the store fails:
    /// nothing is acknowledged or published before it is committed, and
    /// nothing queued is dropped. Only a shutdown stops the retries (after
    /// `retriesAfterClose`); what was not written then runs again after a
    /// restart, as after a crash.
    private func commitUntilDurable(_ changes: ChangeSet) -> Result<Void, any Error> {
        var failures = 0
        while true {
            do {
                let (events, endedBatches) = try store.commitReportingEnded(changes)
                state.withLock { $0.eventsSinceTrimSlice += events.count }
                if failures > 0 {
                    state.withLock { $0.failing = nil }
                    health.yield(true)
                    logger.notice("the store accepts commits again", metadata: ["failed_attempts": "\(failures)"])
                }
                if let eventsWritten {
                    if !events.isEmpty { eventsWritten() }
                } else {
                    hub.publish(events)
                }
                if !endedBatches.isEmpty, let handler = endedBatchesHandler.withLock({ $0 }) { handler(endedBatches) }
                return .success(())
            } catch {
                failures += 1
                let (closed, first) = state.withLock { state -> (Bool, Bool) in
                    let first = state.failing == nil
                    if first { state.failing = StoreFailure(since: now(), message: "\(error)") }
                    return (state.closed, first)
                }
                if first { health.yield(false) }
                // Every failure at first, then now and then: a full disk can last.
                if failures <= 3 || failures % 20 == 0 {
                    logger.error("store commit failed; retrying", metadata: ["error": "\(error)", "attempt": "\(failures)"])
                }
                if closed && failures > Self.retriesAfterClose {
                    logger.critical("shutting down with changes the store would not take; they are redone after a restart",
                                    metadata: ["changes": "\(changes.count)"])
                    return .failure(error)
                }
                // Enqueues queued meanwhile run now (an insert fails at once on the same error, and its
                // client hears UNAVAILABLE) rather than wait for the disk behind this group.
                runJobs()
                Thread.sleep(forTimeInterval: Double(retryBackoff.delay(beforeAttempt: failures + 1, jitter: 1)) / 1000)
            }
        }
    }

    static let retriesAfterClose = 5
}

/// The store refuses commits: since when (wall-clock ms) and the first error.
public struct StoreFailure: Sendable, Hashable {
    public var since: Milliseconds
    public var message: String
}
