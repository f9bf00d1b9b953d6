import FanoutClient
import Foundation
import Testing

/// A consumer that stops reading a subscription is cut off by the client
/// itself (bounded memory), with the same lagged error and resume point as
/// a daemon-side cut.
@Suite struct ClientSubscriptionBufferTests {
    static func storedEventCount(_ batchID: UInt64, on client: FanoutClient) async throws -> Int {
        try await client.subscribe(batchID: batchID, since: 0, follow: false).reduce(0) { count, _ in count + 1 }
    }

    @Test func pausedConsumerIsCutOffWithItsLastSequenceAndResumesWithoutGap() async throws {
        try await withTestDaemon { daemon in
            try await withClient(daemon.socketPath) { client in
                try await withDeadline(.seconds(30)) {
                    let batch = try await client.enqueueBatch(
                        ownerID: "pause", agent: "echo",
                        tasks: (0..<200).map { TaskSpec(customID: "t\($0)", payload: Array("{\"delay_ms\":1}".utf8)) })
                    var iterator = client.subscribe(ownerID: "pause", batchID: batch.id, subscriberBuffer: 5).makeAsyncIterator()
                    let first = try #require(try await iterator.next())
                    // Stop reading until the batch is done: far more than 5 events arrive meanwhile.
                    while try await client.batch(batch.id).status != .completed {
                        try await Task.sleep(for: .milliseconds(20))
                    }
                    var received = [first]
                    var cut: FanoutClientError?
                    do {
                        while let event = try await iterator.next() { received.append(event) }
                    } catch let error as FanoutClientError {
                        cut = error
                    }
                    let lagged = try #require(cut, "the paused subscription must be cut off")
                    #expect(lagged.lagged)
                    #expect(lagged.code == .resourceExhausted)
                    #expect(lagged.lastSequence == received.last?.sequence)
                    // The client holds the buffer's 5 frames plus what one or two socket reads brought
                    // (frames are routed a read at a time): far fewer than the batch's events.
                    let total = try await Self.storedEventCount(batch.id, on: client)
                    #expect(received.count < total / 2, "\(received.count) of \(total) events held before the cut")

                    // Resuming from the cut misses nothing and repeats nothing.
                    for try await event in client.subscribe(ownerID: "pause", batchID: batch.id, since: lagged.lastSequence) {
                        received.append(event)
                        if event.type == .batchCompleted { break }
                    }
                    let stored = try await events(of: batch.id, owner: "pause", on: client)
                    #expect(received.map(\.sequence) == stored.map(\.sequence))
                    #expect(received.filter { $0.type == .taskCompleted }.count == 200)
                    // The connection still serves other calls after the cut.
                    #expect(try await client.batch(batch.id).counts.completed == 200)
                }
            }
        }
    }
}
