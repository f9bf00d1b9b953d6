import FanoutCore
import FanoutStore

/// A subscriber fell behind its buffer and was cut off; resume with `since = lastSequence`.
public struct SubscriptionLagged: Error, Sendable, Hashable {
    public var lastSequence: EventSequence
}

/// Retention removed events the subscriber had not received: those after
/// `after` and before `firstAvailable`. The daemon cannot tell whether any of
/// them matched the subscriber's filter, so it says so instead of skipping
/// them. Subscribe again with `since = resumeSequence` to accept the loss and
/// continue from the oldest event still stored.
public struct SubscriptionGap: Error, Sendable, Hashable, CustomStringConvertible {
    /// The last sequence the subscriber had (its `since`, or the last event delivered).
    public var after: EventSequence
    /// The oldest event still stored (the next to be assigned when the log is empty).
    public var firstAvailable: EventSequence

    public init(after: EventSequence, firstAvailable: EventSequence) {
        self.after = after
        self.firstAvailable = firstAvailable
    }

    /// Where a deliberate resume starts: just before the oldest stored event.
    public var resumeSequence: EventSequence { firstAvailable - 1 }

    public var description: String {
        "events after \(after) were removed by retention; the oldest event still stored is \(firstAvailable); "
            + "subscribe with since=\(resumeSequence) to continue from there"
    }
}

/// Stored events after `since`, then live ones: no gap and no duplicate at
/// the seam, because the live subscription is registered before the replay
/// and the replay stops at the last sequence published before it joined.
///
/// `since = 0` means everything still stored. Any other `since` must not be
/// older than what retention kept: every replay page is read together with
/// the log's oldest sequence, and if events after the subscriber's position
/// are gone the stream throws `SubscriptionGap` rather than skip them.
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
                let page = try await offload { try store.eventPage(after: after, upTo: upTo, filter: filter, limit: EventStream.replayPage) }
                // Cursor 0 is `since = 0` with nothing delivered yet: start at whatever is stored.
                if after > 0 && after < page.firstAvailable - 1 {
                    throw SubscriptionGap(after: after, firstAvailable: page.firstAvailable)
                }
                replay = page.events
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
