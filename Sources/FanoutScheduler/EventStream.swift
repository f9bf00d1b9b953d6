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
        return Iterator(stream: self, live: live, cursor: since)
    }

    public struct Iterator: AsyncIteratorProtocol {
        let stream: EventStream
        let live: LiveSubscription?
        var liveIterator: AsyncStream<[EventRecord]>.AsyncIterator?
        var cursor: EventSequence
        /// Events read (a replay page or a live batch) and not handed out yet.
        var buffered: [EventRecord] = []
        var bufferedIndex = 0
        var replayDone = false

        init(stream: EventStream, live: LiveSubscription?, cursor: EventSequence) {
            self.stream = stream
            self.live = live
            liveIterator = live?.events.makeAsyncIterator()
            self.cursor = cursor
        }

        public mutating func next() async throws -> EventRecord? {
            if bufferedIndex == buffered.count {
                guard let batch = try await nextBatch() else { return nil }
                buffered = batch
                bufferedIndex = 0
            }
            defer { bufferedIndex += 1 }
            return buffered[bufferedIndex]
        }

        /// The next events as they come: a replay page, or what one commit
        /// published. Never empty; nil at the end. Lets a writer send a
        /// whole group in one write.
        public mutating func nextBatch() async throws -> [EventRecord]? {
            if bufferedIndex < buffered.count {
                defer { bufferedIndex = buffered.count }
                return Array(buffered[bufferedIndex...])
            }
            while !replayDone {
                let upTo = live?.joinedAfter
                let (store, filter, after) = (stream.store, stream.filter, cursor)
                let page = try await store.eventPage(after: after, upTo: upTo, filter: filter, limit: EventStream.replayPage)
                // Cursor 0 is `since = 0` with nothing delivered yet: start at whatever is stored.
                if after > 0 && after < page.firstAvailable - 1 {
                    throw SubscriptionGap(after: after, firstAvailable: page.firstAvailable)
                }
                if let last = page.events.last {
                    cursor = last.sequence
                    return page.events
                }
                replayDone = true
                // Without follow, the replay reads up to whatever is stored now.
                if live == nil { return nil }
                if let upTo { cursor = Swift.max(cursor, upTo) }
            }
            guard let live else { return nil }
            while let batch = await liveIterator?.next() {
                live.backlog.taken(batch.count)
                // Only the seam with the replay can overlap; later groups pass through uncopied.
                let fresh = (batch.first?.sequence ?? 0) > cursor ? batch : batch.filter { $0.sequence > cursor }
                guard let last = fresh.last else { continue }
                cursor = last.sequence
                return fresh
            }
            // Everything queued before the cut was delivered, so the client has all up to `cursor`.
            if live.backlog.laggedAt != nil { throw SubscriptionLagged(lastSequence: cursor) }
            return nil
        }
    }
}
