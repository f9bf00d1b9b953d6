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
        let (id, joinedAfter, backlog) = state.withLock { state in
            let id = state.nextID
            state.nextID += 1
            let backlog = SubscriberBacklog(lastQueued: state.lastPublished)
            state.subscribers[id] = Subscriber(filter: filter, continuation: continuation, backlog: backlog, bufferSize: max(1, bufferSize))
            return (id, state.lastPublished, backlog)
        }
        continuation.onTermination = { [weak self] _ in self?.remove(id) }
        return LiveSubscription(events: stream, joinedAfter: joinedAfter, backlog: backlog)
    }

    var subscriberCount: Int { state.withLock { $0.subscribers.count } }

    /// The newest sequence published.
    var lastPublished: EventSequence { state.withLock { $0.lastPublished } }

    /// Called by one publisher only (the commit loop, or the shared store's feed), one group at
    /// a time, in sequence order, so groups reach
    /// each subscriber in order. Filtering runs outside the hub's lock: a
    /// subscriber joining meanwhile replays these events from the store (they
    /// are committed, and it joins after `lastPublished`).
    func publish(_ events: [EventRecord]) {
        guard let last = events.last else { return }
        let subscribers = state.withLock { state in
            state.lastPublished = last.sequence
            return state.subscribers
        }
        var cutOff: [(id: Int, continuation: AsyncStream<[EventRecord]>.Continuation)] = []
        for (id, subscriber) in subscribers {
            // A subscriber that wants everything shares the commit's array instead of copying it.
            let matching = subscriber.filter.matchesEverything ? events : events.filter(subscriber.filter.matches)
            guard let newest = matching.last else { continue }
            if subscriber.backlog.add(matching.count, newest: newest.sequence, limit: subscriber.bufferSize) {
                subscriber.continuation.yield(matching)
            } else {
                // Everything queued before is still delivered; it resumes after the last of it.
                subscriber.backlog.markLagged()
                cutOff.append((id, subscriber.continuation))
            }
        }
        guard !cutOff.isEmpty else { return }
        state.withLock { state in
            for (id, _) in cutOff { state.subscribers[id] = nil }
        }
        // `finish()` runs `onTermination`, which takes the lock again: outside it.
        for (_, continuation) in cutOff { continuation.finish() }
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
        var lastQueued: EventSequence
        var laggedAt: EventSequence?
    }

    private let counts: Mutex<Counts>

    init(lastQueued: EventSequence) {
        counts = Mutex(Counts(lastQueued: lastQueued))
    }

    /// Counts `count` more events if that stays within `limit`. A subscriber
    /// that has taken everything always gets the next group, however large:
    /// one commit can carry more events than the limit, and a reader keeping
    /// up must not be cut off for it. Its backlog is then at most the limit
    /// plus one commit's events.
    func add(_ count: Int, newest: EventSequence, limit: Int) -> Bool {
        counts.withLock { counts in
            guard counts.queued == 0 || counts.queued + count <= limit else { return false }
            counts.queued += count
            counts.lastQueued = newest
            return true
        }
    }

    func taken(_ count: Int) { counts.withLock { $0.queued -= count } }
    /// Cut off after the last event queued.
    func markLagged() { counts.withLock { $0.laggedAt = $0.lastQueued } }
    var laggedAt: EventSequence? { counts.withLock { $0.laggedAt } }
}

struct LiveSubscription: Sendable {
    var events: AsyncStream<[EventRecord]>
    var joinedAfter: EventSequence
    var backlog: SubscriberBacklog
}
