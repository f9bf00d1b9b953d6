import FanoutCore
import FanoutStore
import Logging

/// On a store other daemons share, the events of every daemon reach this
/// daemon's subscribers. The commit loop does not publish what it writes:
/// this feed reads the store's events back in sequence order, up to the newest
/// committed one, and is the hub's only publisher, so local and remote events
/// interleave as the store numbered them, with no gap and no duplicate. It
/// reads when a local commit wrote events, when the store notifies that some
/// daemon did, and every `pollMs` in case a notification was missed (while
/// the listening connection reconnects).
final class SharedEventFeed: Sendable {
    private let store: any Store
    private let hub: EventHub
    private let logger: Logger
    private let signals: AsyncStream<Void>
    private let signal: AsyncStream<Void>.Continuation

    init(store: any Store, hub: EventHub, logger: Logger) {
        self.store = store
        self.hub = hub
        self.logger = logger
        // One pending wake-up is enough: a read takes everything committed so far.
        (signals, signal) = AsyncStream.makeStream(of: Void.self, bufferingPolicy: .bufferingNewest(1))
    }

    /// New events may be in the store.
    func poke() {
        signal.yield()
    }

    /// Runs until the calling task is cancelled.
    func run(pollMs: Int64, pageSize: Int) async {
        await withTaskGroup(of: Void.self) { group in
            group.addTask { [store, logger] in
                while !Task.isCancelled {
                    do {
                        try await store.listenForCommittedEvents { [weak self] in self?.poke() }
                    } catch is CancellationError {
                        return
                    } catch {
                        logger.warning("listening for other daemons' events failed; listening again", metadata: ["error": "\(error)"])
                    }
                    // After a failure (or a listener that returned), wait before trying again: reads go on meanwhile.
                    try? await Task.sleep(for: .seconds(1))
                }
            }
            group.addTask { [weak self] in
                while !Task.isCancelled {
                    try? await Task.sleep(for: .milliseconds(max(10, pollMs)))
                    self?.poke()
                }
            }
            group.addTask { [weak self, signals] in
                for await _ in signals {
                    guard let self else { return }
                    await self.publishCommitted(pageSize: pageSize)
                }
            }
            await group.next()
            group.cancelAll()
        }
    }

    /// Publishes everything committed since the last published event, page by page.
    private func publishCommitted(pageSize: Int) async {
        while !Task.isCancelled {
            let page: [EventRecord]
            do {
                page = try await store.committedEvents(after: hub.lastPublished, limit: pageSize)
            } catch {
                if !(error is CancellationError) {
                    logger.warning("reading committed events failed; trying again at the next wake-up", metadata: ["error": "\(error)"])
                }
                return
            }
            hub.publish(page)
            if page.count < pageSize { return }
        }
    }
}
