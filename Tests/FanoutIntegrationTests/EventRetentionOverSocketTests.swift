#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#elseif canImport(Darwin)
import Darwin
#endif
import FanoutClient
import FanoutScheduler
import FanoutServer
import FanoutWire
import Foundation
import Testing

/// A subscriber asking for events that retention already removed, through the real socket.
@Suite struct EventRetentionOverSocketTests {
    func replay(_ client: FanoutClient, since: UInt64, follow: Bool = false) async throws -> [Event] {
        var events: [Event] = []
        for try await event in client.subscribe(ownerID: "keeper", since: since, follow: follow) {
            events.append(event)
            if follow && event.type == .batchCompleted { break }
        }
        return events
    }

    @Test func sinceOlderThanTheLogEndsWithOutOfRange() async throws {
        try await withTestDaemon { daemon in
            try await withClient(daemon.socketPath) { client in
                try await withDeadline(.seconds(20)) {
                    let batch = try await client.enqueueBatch(
                        ownerID: "keeper", agent: "echo",
                        tasks: (0..<12).map { TaskSpec(customID: "k\($0)", payload: Array("{}".utf8)) })
                    let all = try await replay(client, since: 0, follow: true)
                    #expect(all.last?.type == .batchCompleted)
                    #expect(all.last?.batchID == batch.id)

                    // What the daemon's commit loop does with a small retention, done at once.
                    let keep = 6
                    #expect(try daemon.store.writer.trimEvents(keepingLast: keep, olderThan: nil, limit: 10_000) == all.count - keep)
                    let first = UInt64(try #require(try await daemon.store.firstEventSequence()))
                    #expect(first == all[all.count - keep].sequence)

                    for follow in [false, true] {
                        let error = await caughtClientError { _ = try await replay(client, since: 2, follow: follow) }
                        #expect(error?.code == .outOfRange, "\(String(describing: error))")
                        #expect(error?.lagged == false)
                        #expect(error?.lastSequence == first - 1)
                        #expect(error?.message.contains("events after 2 were removed by retention") == true)
                        #expect(error?.message.contains("oldest event still stored is \(first)") == true)
                    }

                    // Resuming deliberately from the announced sequence, or with since = 0, starts at the oldest stored event.
                    let resumed = try await replay(client, since: first - 1)
                    #expect(resumed.map(\.sequence) == Array(first..<(first + UInt64(keep))))
                    #expect(resumed == Array(all.suffix(keep)))
                    #expect(try await replay(client, since: 0) == resumed)

                    // The connection is unharmed, and the newest sequence is still reported.
                    let info = try await client.serverInfo()
                    #expect(info.lastSequence == all.last?.sequence)
                }
            }
        }
    }

    /// The two settings reach fanoutd from flags and from the environment, and bad values are refused by name.
    @Test func fanoutdReadsTheRetentionSettings() async throws {
        try await withTemporaryDirectory { directory in
            let base = ["--socket", directory + "/d.sock", "--db", directory + "/fanout.db"]
            try await withDaemonProcess(base, environment: ["FANOUT_EVENT_RETENTION_COUNT": "lots"],
                                        logPath: directory + "/count.log") { daemon in
                let status = await daemon.waitForExit(seconds: 15)
                #expect(status != nil && status != 0, "\(daemon.output)")
                #expect(daemon.output.contains("event_retention_count must be a whole number from 0 (no limit) to"),
                        "\(daemon.output)")
                #expect(daemon.output.contains("not \"lots\""),
                        "\(daemon.output)")
            }
            try await withDaemonProcess(base + ["--event-retention-age-ms=-5"], logPath: directory + "/age.log") { daemon in
                let status = await daemon.waitForExit(seconds: 15)
                #expect(status != nil && status != 0, "\(daemon.output)")
                #expect(daemon.output.contains("event_retention_age_ms must be a whole number"), "\(daemon.output)")
            }
            // Valid values (0: no limit) start the daemon.
            try await withDaemonProcess(base + ["--event-retention-count", "0"],
                                        environment: ["FANOUT_EVENT_RETENTION_AGE_MS": "3600000"],
                                        logPath: directory + "/ok.log") { daemon in
                try await withDeadline(.seconds(30)) {
                    try await daemon.waitUntilListening(directory + "/d.sock")
                    daemon.signal(SIGTERM)
                    #expect(await daemon.waitForExit(seconds: 30) == 0, "\(daemon.output)")
                }
            }
        }
    }
}
