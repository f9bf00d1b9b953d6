import FanoutCore
import FanoutStore

/// A subscriber fell behind its buffer and was cut off; resume with `since = lastSequence`.
public struct SubscriptionLagged: Error, Sendable, Hashable {
    public var lastSequence: EventSequence
}

/// Stored events after `since`, then live ones: no gap and no duplicate at
/// the seam, because the live subscription is registered before the replay
/// and the replay stops at the last sequence published before it joined.
public struct EventStream: AsyncSequence, Sendable {
    public typealias Element = EventRecord

    let store: any Store
    let hub: EventHub
    let filter: EventFilter
    let since: EventSequence
    let follow: Bool
    let bufferSize: Int
    static let replayPage = 1_000

    public func makeAsyncIterator() -> Iterator {
        let live = follow ? hub.subscribe(filter: filter, bufferSize: bufferSize) : nil
        return Iterator(stream: self, live: live, liveIterator: live?.events.makeAsyncIterator(), cursor: since)
    }

    public struct Iterator: AsyncIteratorProtocol {
        let stream: EventStream
        let live: LiveSubscription?
        var liveIterator: AsyncStream<EventRecord>.AsyncIterator?
        var cursor: EventSequence
        var replay: [EventRecord] = []
        var replayIndex = 0
        var replayDone = false

        public mutating func next() async throws -> EventRecord? {
            while !replayDone {
                if replayIndex < replay.count {
                    let event = replay[replayIndex]
                    replayIndex += 1
                    cursor = event.sequence
                    return event
                }
                let upTo = live?.joinedAfter
                let (store, filter, after) = (stream.store, stream.filter, cursor)
                replay = try await offload { try store.events(after: after, upTo: upTo, filter: filter, limit: EventStream.replayPage) }
                replayIndex = 0
                if replay.isEmpty {
                    replayDone = true
                    // Without follow, the replay reads up to whatever is stored now.
                    if live == nil { return nil }
                    if let upTo { cursor = Swift.max(cursor, upTo) }
                }
            }
            guard live != nil else { return nil }
            while let event = await liveIterator?.next() {
                guard event.sequence > cursor else { continue }
                cursor = event.sequence
                return event
            }
            // Everything buffered before the cut was delivered, so the client has all up to `cursor`.
            if live?.lag.laggedAt != nil { throw SubscriptionLagged(lastSequence: cursor) }
            return nil
        }
    }
}
