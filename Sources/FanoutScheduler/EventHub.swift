import FanoutCore
import Synchronization

/// Fans committed events out to live subscribers.
///
/// Each subscriber has a bounded buffer. One that falls behind is ended with
/// a `lagged` mark instead of slowing the scheduler; it can resume from the
/// last sequence it received.
final class EventHub: Sendable {
    private struct State {
        var subscribers: [Int: Subscriber] = [:]
        var nextID = 0
        var lastPublished: EventSequence
    }

    private struct Subscriber {
        var filter: EventFilter
        var continuation: AsyncStream<EventRecord>.Continuation
        var lastQueued: EventSequence
        var lagState: LagState
    }

    private let state: Mutex<State>

    init(lastSequence: EventSequence) {
        state = Mutex(State(lastPublished: lastSequence))
    }

    /// Registers a subscriber; events published from now on reach it. Returns
    /// the last sequence published before it joined, where a replay must stop.
    func subscribe(filter: EventFilter, bufferSize: Int) -> LiveSubscription {
        let (stream, continuation) = AsyncStream.makeStream(of: EventRecord.self, bufferingPolicy: .bufferingOldest(max(1, bufferSize)))
        let lag = LagState()
        let (id, joinedAfter) = state.withLock { state in
            let id = state.nextID
            state.nextID += 1
            state.subscribers[id] = Subscriber(filter: filter, continuation: continuation, lastQueued: state.lastPublished, lagState: lag)
            return (id, state.lastPublished)
        }
        continuation.onTermination = { [weak self] _ in self?.remove(id) }
        return LiveSubscription(events: stream, joinedAfter: joinedAfter, lag: lag)
    }

    var subscriberCount: Int { state.withLock { $0.subscribers.count } }

    func publish(_ events: [EventRecord]) {
        guard let last = events.last else { return }
        // Finished outside the lock: `finish()` runs the stream's `onTermination`
        // synchronously, which calls `remove(_:)` and takes the lock again.
        let cutOff = state.withLock { state -> [AsyncStream<EventRecord>.Continuation] in
            var cutOff: [AsyncStream<EventRecord>.Continuation] = []
            state.lastPublished = last.sequence
            for (id, subscriber) in state.subscribers {
                var subscriber = subscriber
                var lagged = false
                for event in events where subscriber.filter.matches(event) {
                    if case .dropped = subscriber.continuation.yield(event) {
                        lagged = true
                        break
                    }
                    subscriber.lastQueued = event.sequence
                }
                if lagged {
                    subscriber.lagState.mark(lastSequence: subscriber.lastQueued)
                    cutOff.append(subscriber.continuation)
                    state.subscribers[id] = nil
                } else {
                    state.subscribers[id] = subscriber
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

/// Set when a subscriber was cut off for falling behind.
final class LagState: Sendable {
    private let lastSequence = Mutex<EventSequence?>(nil)

    func mark(lastSequence value: EventSequence) { lastSequence.withLock { $0 = value } }
    var laggedAt: EventSequence? { lastSequence.withLock { $0 } }
}

struct LiveSubscription: Sendable {
    var events: AsyncStream<EventRecord>
    var joinedAfter: EventSequence
    var lag: LagState
}
