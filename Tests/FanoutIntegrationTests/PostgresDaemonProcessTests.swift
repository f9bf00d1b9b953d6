import FanoutClient
import FanoutTestSupport
import Foundation
import Testing

/// The real `fanoutd` on a PostgreSQL store (`--store postgres://…`), against a real server.
@Suite(.postgresServer) struct PostgresDaemonProcessTests {
    @Test func aDaemonOnPostgresRunsABatchAndASecondDaemonStartsBesideIt() async throws {
        let server = try PostgresTestServer.current()
        try await server.createDatabase(named: "daemon_run")
        let url = server.connectionURL(database: "daemon_run")
        try await withTemporaryDirectory { directory in
            let socketPath = directory + "/d.sock"
            try await withDaemonProcess(["--socket", socketPath, "--store", url], logPath: directory + "/first.log") { first in
                try await withDeadline(.seconds(60)) {
                    try await first.waitUntilListening(socketPath)
                    try await withClient(socketPath) { client in
                        let batch = try await client.enqueueBatch(
                            ownerID: "pg", agent: "echo", tasks: (0..<50).map { TaskSpec(customID: "t\($0)", payload: Array("r\($0)".utf8)) })
                        let seen = try await events(of: batch.id, owner: "pg", on: client)
                        #expect(seen.last?.type == .batchCompleted)
                        #expect(seen.filter { $0.type == .taskCompleted }.count == 50)
                        var results: [TaskResult] = []
                        for try await result in client.results(batchID: batch.id) { results.append(result) }
                        #expect(results.map(\.customID) == (0..<50).map { "t\($0)" })
                        #expect(results.first?.result == Array("r0".utf8))
                    }

                    // Daemons share a database: a second one, on another socket, starts beside it.
                    let other = directory + "/other.sock"
                    try await withDaemonProcess(["--socket", other, "--store", url], logPath: directory + "/second.log") { second in
                        try await second.waitUntilListening(other)
                        try await withClient(other) { client in try await expectClientWorks(client) }
                    }
                    #expect(first.isRunning)
                    try await withClient(socketPath) { client in try await expectClientWorks(client) }
                }
            }
        }
    }

    @Test func theGatewayWithAPostgresStoreIsRefusedAtStart() async throws {
        try await withTemporaryDirectory { directory in
            let arguments = ["--socket", directory + "/d.sock", "--store", "postgres://fanout@localhost/fanout",
                             "--http-socket", directory + "/http.sock"]
            try await withDaemonProcess(arguments, logPath: directory + "/d.log") { daemon in
                let status = await daemon.waitForExit(seconds: 20)
                #expect(status != nil && status != 0)
                #expect(daemon.output.contains("does not run with a PostgreSQL store yet"), "\(daemon.output)")
            }
        }
    }

    @Test func aWrongStoreURLStopsTheDaemonWithWhatIsWrong() async throws {
        try await withTemporaryDirectory { directory in
            let arguments = ["--socket", directory + "/d.sock", "--store", "postgres://localhost/fanout"]
            try await withDaemonProcess(arguments, logPath: directory + "/d.log") { daemon in
                let status = await daemon.waitForExit(seconds: 20)
                #expect(status != nil && status != 0)
                #expect(daemon.output.contains("the store URL names no user"), "\(daemon.output)")
            }
            // A lease too short to be renewed in time is refused as well, saying what it may be.
            try await withDaemonProcess(["--socket", directory + "/d.sock", "--store", "postgres://fanout@localhost/fanout"],
                                        environment: ["FANOUT_POSTGRES_LEASE_MS": "100"], logPath: directory + "/lease.log") { daemon in
                let status = await daemon.waitForExit(seconds: 20)
                #expect(status != nil && status != 0)
                #expect(daemon.output.contains("postgres_lease_ms must be a whole number from 300 to"), "\(daemon.output)")
            }
            // And so is a poll of the other daemons' work that would hammer the server.
            try await withDaemonProcess(["--socket", directory + "/d.sock", "--store", "postgres://fanout@localhost/fanout"],
                                        environment: ["FANOUT_POSTGRES_POLL_MS": "5"], logPath: directory + "/poll.log") { daemon in
                let status = await daemon.waitForExit(seconds: 20)
                #expect(status != nil && status != 0)
                #expect(daemon.output.contains("postgres_poll_ms must be a whole number from 10 to"), "\(daemon.output)")
            }
            // A pool too small for the calls that run at once (the event feed's listener, the poll).
            try await withDaemonProcess(["--socket", directory + "/d.sock", "--store", "postgres://fanout@localhost/fanout"],
                                        environment: ["FANOUT_POSTGRES_POOL_SIZE": "1"], logPath: directory + "/pool.log") { daemon in
                let status = await daemon.waitForExit(seconds: 20)
                #expect(status != nil && status != 0)
                #expect(daemon.output.contains("postgres_pool_size must be a whole number from 2 to 1000"), "\(daemon.output)")
            }
        }
    }
}
