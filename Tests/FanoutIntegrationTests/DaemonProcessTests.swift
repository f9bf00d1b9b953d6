#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#elseif canImport(Darwin)
import Darwin
#endif
import FanoutClient
import FanoutWire
import Foundation
import Testing

/// The real `fanoutd` executable as a child process: start-up, signals,
/// crash recovery, configuration from the environment.
@Suite struct DaemonProcessTests {
    private static func flags(_ directory: String, _ extra: [String] = []) -> [String] {
        ["--socket", directory + "/d.sock", "--db", directory + "/fanout.db"] + extra
    }

    // MARK: 10. One daemon per socket; stale sockets are replaced

    @Test func secondDaemonOnTheSameSocketExitsWithAMessage() async throws {
        try await withTemporaryDirectory { directory in
            let socketPath = directory + "/d.sock"
            try await withDaemonProcess(Self.flags(directory), logPath: directory + "/first.log") { first in
                try await withDeadline(.seconds(30)) {
                    try await first.waitUntilListening(socketPath)
                    try await withDaemonProcess(Self.flags(directory), logPath: directory + "/second.log") { second in
                        let status = await second.waitForExit(seconds: 10)
                        #expect(status != nil && status != 0, "second fanoutd: status \(String(describing: status))\n\(second.output)")
                        #expect(second.output.contains("another fanoutd is already listening on \(socketPath)"), "\(second.output)")
                    }
                    // The first one is untouched: same socket file, still serving.
                    #expect(first.isRunning)
                    #expect(isSocketFile(socketPath))
                    try await withClient(socketPath) { client in try await expectClientWorks(client) }
                }
            }
        }
    }

    /// A refused second daemon must not touch the first one's work: it is
    /// given the same database too, as a second start with the same
    /// settings would be.
    @Test func secondDaemonOnTheSameDatabaseIsRefusedEvenOnAnotherSocket() async throws {
        try await withTemporaryDirectory { directory in
            let socketPath = directory + "/d.sock"
            try await withDaemonProcess(Self.flags(directory), logPath: directory + "/first.log") { first in
                try await withDeadline(.seconds(30)) {
                    try await first.waitUntilListening(socketPath)
                    let other = ["--socket", directory + "/other.sock", "--db", directory + "/fanout.db"]
                    try await withDaemonProcess(other, logPath: directory + "/second.log") { second in
                        let status = await second.waitForExit(seconds: 10)
                        #expect(status != nil && status != 0, "second fanoutd: status \(String(describing: status))\n\(second.output)")
                        #expect(second.output.contains("another fanoutd is using the database"), "\(second.output)")
                    }
                    #expect(!isSocketFile(directory + "/other.sock"))
                    try await withClient(socketPath) { client in try await expectClientWorks(client) }
                }
            }
        }
    }

    @Test func refusedSecondDaemonLeavesTheRunningBatchAlone() async throws {
        try await withTemporaryDirectory { directory in
            let socketPath = directory + "/d.sock"
            let arguments = Self.flags(directory, ["--concurrency", "4"])
            try await withDaemonProcess(arguments, logPath: directory + "/first.log") { first in
                try await withDeadline(.seconds(30)) {
                    try await first.waitUntilListening(socketPath)
                    try await withClient(socketPath) { client in
                        let batch = try await client.enqueueBatch(
                            ownerID: "busy", agent: "echo",
                            tasks: (0..<12).map { TaskSpec(customID: "b\($0)", payload: Array("{\"delay_ms\":400}".utf8)) })
                        _ = try await events(of: batch.id, owner: "busy", on: client, until: [.taskStarted])
                        try await withDaemonProcess(arguments, logPath: directory + "/second.log") { second in
                            let status = await second.waitForExit(seconds: 10)
                            #expect(status != nil && status != 0, "\(second.output)")
                        }
                        let seen = try await events(of: batch.id, owner: "busy", on: client)
                        let sequences = seen.map(\.sequence)
                        #expect(Set(sequences).count == sequences.count && sequences == sequences.sorted(), "\(sequences)")
                        #expect(seen.last?.type == .batchCompleted)
                        #expect(seen.filter { $0.type == .taskStarted }.count == 12, "each task started once")
                        let final = try await client.batch(batch.id)
                        #expect(final.counts.completed == 12, "\(final.counts)")
                        #expect(final.counts.pending == 0 && final.counts.running == 0, "\(final.counts)")
                        var results: [TaskResult] = []
                        for try await result in client.results(batchID: batch.id) { results.append(result) }
                        #expect(results.count == 12)
                        #expect(results.allSatisfy { $0.attempt == 1 }, "\(results.map(\.attempt))")
                    }
                }
            }
        }
    }

    @Test func staleSocketFilesAreReplaced() async throws {
        try await withTemporaryDirectory { directory in
            let socketPath = directory + "/d.sock"
            try await withDeadline(.seconds(30)) {
                // A socket file nobody listens on, as a crash leaves it.
                try makeStaleSocketFile(socketPath)
                #expect(isSocketFile(socketPath) && !socketAcceptsConnections(socketPath))
                try await withDaemonProcess(Self.flags(directory), logPath: directory + "/first.log") { first in
                    try await first.waitUntilListening(socketPath)
                    try await withClient(socketPath) { client in try await expectClientWorks(client, owner: "one") }
                    // SIGKILL leaves the socket file behind.
                    first.kill()
                }
                #expect(isSocketFile(socketPath) && !socketAcceptsConnections(socketPath))
                try await withDaemonProcess(Self.flags(directory), logPath: directory + "/second.log") { second in
                    try await second.waitUntilListening(socketPath)
                    try await withClient(socketPath) { client in
                        try await expectClientWorks(client, owner: "two")
                        // Same database: the batch of the killed daemon is still there.
                        #expect(try await client.batches(ownerID: "one").batches.count == 1)
                    }
                    let mode = try #require(fileMode(socketPath))
                    #expect(mode & 0o777 == 0o600, "mode \(String(mode & 0o777, radix: 8))")
                }
            }
        }
    }

    @Test func aFileThatIsNotASocketIsNeverReplaced() async throws {
        try await withTemporaryDirectory { directory in
            let socketPath = directory + "/d.sock"
            try Data("precious".utf8).write(to: URL(fileURLWithPath: socketPath))
            try await withDaemonProcess(Self.flags(directory), logPath: directory + "/d.log") { daemon in
                let status = await daemon.waitForExit(seconds: 10)
                #expect(status != nil && status != 0, "status \(String(describing: status))\n\(daemon.output)")
                #expect(daemon.output.contains("not a socket"), "\(daemon.output)")
            }
            #expect(try String(contentsOfFile: socketPath, encoding: .utf8) == "precious")
        }
    }

    // MARK: 11. SIGTERM

    @Test func sigtermExitsCleanlyAndRemovesTheSocket() async throws {
        try await withTemporaryDirectory { directory in
            let socketPath = directory + "/d.sock"
            try await withDaemonProcess(Self.flags(directory), logPath: directory + "/d.log") { daemon in
                try await withDeadline(.seconds(30)) {
                    try await daemon.waitUntilListening(socketPath)
                    // A connected client with an open subscription does not hold the daemon up.
                    try await withClient(socketPath) { client in
                        try await expectClientWorks(client)
                        let (delivered, deliver) = AsyncStream.makeStream(of: Void.self)
                        let subscription = Task {
                            do {
                                for try await _ in client.subscribe(ownerID: "probe") { deliver.yield() }
                                return "ended without error"
                            } catch let error as FanoutClientError {
                                return "\(error)"
                            }
                        }
                        // Open on the daemon once an event came (the probe's, replayed): a fixed pause was
                        // sometimes too short on a loaded machine, and the stop found no stream to end.
                        var events = delivered.makeAsyncIterator()
                        _ = await events.next()
                        daemon.signal(SIGTERM)
                        let status = await daemon.waitForExit(seconds: 15)
                        #expect(status == 0, "exit status \(String(describing: status))\n\(daemon.output)")
                        let ending = try await subscription.value
                        #expect(ending.hasPrefix("UNAVAILABLE: the daemon is shutting down"), "\(ending)")
                    }
                    #expect(fileMode(socketPath) == nil, "the socket file is removed")
                    #expect(FileManager.default.fileExists(atPath: directory + "/fanout.db"))
                    // A clean stop leaves no log to replay.
                    let log = try? FileManager.default.attributesOfItem(atPath: directory + "/fanout.db-wal")[.size] as? Int
                    #expect((log ?? 0) == 0, "the write-ahead log is emptied: \(String(describing: log)) bytes")
                }
            }
        }
    }

    // MARK: 12. Crash recovery

    @Test func sigkillMidBatchThenRestartCompletesEveryTaskOnce() async throws {
        try await withTemporaryDirectory { directory in
            let socketPath = directory + "/d.sock"
            let arguments = Self.flags(directory, ["--concurrency", "4"])
            let count = 200
            let payload = Array("{\"delay_ms\":50}".utf8)
            let batchID = try await withDaemonProcess(arguments, logPath: directory + "/first.log") { first in
                try await withDeadline(.seconds(30)) {
                    try await first.waitUntilListening(socketPath)
                    return try await withClient(socketPath) { client in
                        let batch = try await client.enqueueBatch(
                            ownerID: "crash", agent: "echo",
                            tasks: (0..<count).map { TaskSpec(customID: "job-\($0)", payload: payload) })
                        // Some, not all, done.
                        while try await client.batch(batch.id).counts.completed < 20 {
                            try await Task.sleep(for: .milliseconds(20))
                        }
                        first.kill()
                        return batch.id
                    }
                }
            }
            try await withDaemonProcess(arguments, logPath: directory + "/second.log") { second in
                try await withDeadline(.seconds(30)) {
                    try await second.waitUntilListening(socketPath)
                    try await withClient(socketPath) { client in
                        let before = try await client.batch(batchID)
                        #expect(before.counts.completed >= 20 && before.counts.completed < UInt32(count),
                                "killed mid-batch: \(before.counts)")

                        let seen = try await events(of: batchID, owner: "crash", on: client, since: 0)
                        #expect(seen.last?.type == .batchCompleted)
                        #expect(seen.filter { $0.type == .batchCompleted }.count == 1)
                        #expect(Set(seen.filter { $0.type == .taskCompleted }.map(\.customID)).count == count)

                        var results: [TaskResult] = []
                        for try await result in client.results(batchID: batchID) { results.append(result) }
                        #expect(results.count == count)
                        #expect(Set(results.map(\.customID)).count == count)
                        #expect(results.allSatisfy { $0.status == .completed && $0.result == payload })

                        let batch = try await client.batch(batchID)
                        #expect(batch.status == .completed)
                        #expect(batch.counts.total == UInt32(count))
                        #expect(batch.counts.completed == UInt32(count), "\(batch.counts)")
                        #expect(batch.counts.finished == UInt32(count), "\(batch.counts)")
                        #expect(batch.progress == 100)
                    }
                }
            }
        }
    }

    // MARK: 13. Environment

    @Test func configFileDeclaresAgentsAndSettingsBelowEnvironmentAndFlags() async throws {
        try await withTemporaryDirectory { directory in
            let configPath = directory + "/fanout.json"
            try Data("""
                {"concurrency": 7, "max_results_page": 50, "max_results_page_bytes": 70000,
                 "agents": [{"name": "summarize", "runner": "echo", "concurrency": 3, "max_turns": 4},
                            {"name": "search", "runner": "echo", "requests_per_minute": 600}]}
                """.utf8).write(to: URL(fileURLWithPath: configPath))
            let environment = ["FANOUT_MAX_RESULTS_PAGE": "40"]
            try await withDaemonProcess(Self.flags(directory, ["--config", configPath]), environment: environment,
                                        logPath: directory + "/d.log") { daemon in
                try await withDeadline(.seconds(30)) {
                    try await daemon.waitUntilListening(directory + "/d.sock")
                    try await withClient(directory + "/d.sock") { client in
                        #expect(client.welcome.limits.globalConcurrency == 7, "from the file")
                        #expect(client.welcome.limits.maxResultsPage == 40, "the environment beats the file")
                        #expect(client.welcome.limits.maxResultsPageBytes == 70_000)
                        let agents = try await client.serverInfo().agents
                        #expect(agents.map(\.name) == ["summarize", "search"])
                        #expect(agents.first?.concurrency == 3)
                        #expect(agents.first?.maxTurns == 4)
                        let batch = try await client.enqueueBatch(ownerID: "cfg", agent: "summarize",
                                                                  tasks: [TaskSpec(customID: "a", payload: Array("{\"turns\":4}".utf8))])
                        #expect(batch.maxTurns == 4)
                    }
                }
            }
            // A misspelt setting is refused by name.
            try Data(#"{"concurency": 7}"#.utf8).write(to: URL(fileURLWithPath: configPath))
            try await withDaemonProcess(Self.flags(directory, ["--config", configPath]), logPath: directory + "/bad.log") { daemon in
                let status = await daemon.waitForExit(seconds: 10)
                #expect(status != nil && status != 0)
                #expect(daemon.output.contains("unknown setting \"concurency\""), "\(daemon.output)")
            }
        }
    }

    @Test func environmentVariablesConfigureSocketAndDatabase() async throws {
        try await withTemporaryDirectory { directory in
            let socketPath = directory + "/env.sock"
            let databasePath = directory + "/state/env.db"
            let environment = ["FANOUT_SOCKET": socketPath, "FANOUT_DB": databasePath, "FANOUT_CONCURRENCY": "3"]
            try await withDaemonProcess([], environment: environment, logPath: directory + "/d.log") { daemon in
                try await withDeadline(.seconds(30)) {
                    try await daemon.waitUntilListening(socketPath)
                    #expect(FileManager.default.fileExists(atPath: databasePath), "\(daemon.output)")
                    try await withClient(socketPath) { client in
                        try await expectClientWorks(client)
                        #expect(client.welcome.limits.globalConcurrency == 3)
                    }
                    daemon.signal(SIGTERM)
                    #expect(await daemon.waitForExit(seconds: 30) == 0, "\(daemon.output)")
                }
            }
            // A flag wins over the variable.
            let flagSocket = directory + "/flag.sock"
            try await withDaemonProcess(["--socket", flagSocket], environment: environment, logPath: directory + "/d2.log") { daemon in
                try await withDeadline(.seconds(30)) {
                    try await daemon.waitUntilListening(flagSocket)
                    #expect(fileMode(socketPath) == nil, "nothing listens on the variable's socket")
                    try await withClient(flagSocket) { client in
                        // Same database as before, from FANOUT_DB.
                        let listed = try await client.batches(ownerID: "probe")
                        #expect(listed.batches.count == 1)
                    }
                }
            }
        }
    }
}
