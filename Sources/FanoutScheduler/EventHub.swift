import FanoutCore
import Synchronization

/// Fans committed events out to live subscribers.
///
/// A subscriber gets each commit's matching events as one array, so a
/// commit of thousands of events costs it one wake-up, not thousands. Each
/// has a bounded number of undelivered events; one that falls behind is
/// ended with a `lagged` mark instead of slowing the scheduler, and can
/// resume from the last sequence it received.
final class EventHub: Sendable {
    private struct State {
        var subscribers: [Int: Subscriber] = [:]
        var nextID = 0
        var lastPublished: EventSequence
    }

    private struct Subscriber {
        var filter: EventFilter
        var continuation: AsyncStream<[EventRecord]>.Continuation
        var lastQueued: EventSequence
        var backlog: SubscriberBacklog
        var bufferSize: Int
    }

    private let state: Mutex<State>

    init(lastSequence: EventSequence) {
        state = Mutex(State(lastPublished: lastSequence))
    }

    /// Registers a subscriber; events published from now on reach it. Returns
    /// the last sequence published before it joined, where a replay must stop.
    func subscribe(filter: EventFilter, bufferSize: Int) -> LiveSubscription {
        // Unbounded as a stream: the bound is `bufferSize` events, counted by the backlog.
        let (stream, continuation) = AsyncStream.makeStream(of: [EventRecord].self, bufferingPolicy: .unbounded)
        let backlog = SubscriberBacklog()
        let (id, joinedAfter) = state.withLock { state in
            let id = state.nextID
            state.nextID += 1
            state.subscribers[id] = Subscriber(filter: filter, continuation: continuation, lastQueued: state.lastPublished,
                                               backlog: backlog, bufferSize: max(1, bufferSize))
            return (id, state.lastPublished)
        }
        continuation.onTermination = { [weak self] _ in self?.remove(id) }
        return LiveSubscription(events: stream, joinedAfter: joinedAfter, backlog: backlog)
    }

    var subscriberCount: Int { state.withLock { $0.subscribers.count } }

    func publish(_ events: [EventRecord]) {
        guard let last = events.last else { return }
        // Finished outside the lock: `finish()` runs the stream's `onTermination`
        // synchronously, which calls `remove(_:)` and takes the lock again.
        let cutOff = state.withLock { state -> [AsyncStream<[EventRecord]>.Continuation] in
            var cutOff: [AsyncStream<[EventRecord]>.Continuation] = []
            state.lastPublished = last.sequence
            for (id, subscriber) in state.subscribers {
                let matching = events.filter(subscriber.filter.matches)
                guard let newest = matching.last else { continue }
                if subscriber.backlog.add(matching.count, limit: subscriber.bufferSize) {
                    subscriber.continuation.yield(matching)
                    state.subscribers[id]?.lastQueued = newest.sequence
                } else {
                    // Everything queued before is still delivered; it resumes after the last of it.
                    subscriber.backlog.markLagged(lastSequence: subscriber.lastQueued)
                    cutOff.append(subscriber.continuation)
                    state.subscribers[id] = nil
                }
            }
            return cutOff
        }
        for continuation in cutOff { continuation.finish() }
    }

    /// Ends every subscription (daemon shutdown).
    func finishAll() {
        let subscribers = state.withLock { state in
            defer { state.subscribers = [:] }
            return state.subscribers.values
        }
        for subscriber in subscribers { subscriber.continuation.finish() }
    }

    private func remove(_ id: Int) {
        _ = state.withLock { $0.subscribers.removeValue(forKey: id) }
    }
}

/// Events queued for one subscriber and not yet taken by it, and whether it
/// was cut off for letting too many pile up.
final class SubscriberBacklog: Sendable {
    private struct Counts {
        var queued = 0
        var laggedAt: EventSequence?
    }

    private let counts = Mutex(Counts())

    /// Counts `count` more events if that stays within `limit`. A subscriber
    /// that has taken everything always gets the next group, however large:
    /// one commit can carry more events than the limit, and a reader keeping
    /// up must not be cut off for it. Its backlog is then at most the limit
    /// plus one commit's events.
    func add(_ count: Int, limit: Int) -> Bool {
        counts.withLock { counts in
            guard counts.queued == 0 || counts.queued + count <= limit else { return false }
            counts.queued += count
            return true
        }
    }

    func taken(_ count: Int) { counts.withLock { $0.queued -= count } }
    func markLagged(lastSequence: EventSequence) { counts.withLock { $0.laggedAt = lastSequence } }
    var laggedAt: EventSequence? { counts.withLock { $0.laggedAt } }
}

struct LiveSubscription: Sendable {
    var events: AsyncStream<[EventRecord]>
    var joinedAfter: EventSequence
    var backlog: SubscriberBacklog
}
