import FanoutClient
import FanoutRunners
import FanoutScheduler
import FanoutServer
import FanoutStore
import Foundation
import Logging
import Testing

/// A real daemon in this process: SQLite file and Unix socket in a fresh
/// temporary directory (short path, under the 108-byte sun_path limit).
final class TestDaemon: Sendable {
    let directory: String
    let socketPath: String
    let databasePath: String
    let store: SQLiteStore
    let scheduler: Scheduler
    let server: FanoutServer
    private let runTask: Task<Void, any Error>

    init(
        agents: [AgentConfiguration] = [AgentConfiguration(name: "echo", runner: "echo", concurrency: 32)],
        globalConcurrency: Int = 64,
        directory existing: String? = nil,
        configure: (inout ServerConfiguration) -> Void = { _ in }
    ) async throws {
        directory = existing ?? TestDaemon.makeDirectory()
        socketPath = directory + "/d.sock"
        databasePath = directory + "/fanout.db"
        store = try SQLiteStore(path: databasePath)
        var schedulerConfiguration = SchedulerConfiguration(globalConcurrency: globalConcurrency, agents: agents)
        schedulerConfiguration.backoff = .init(baseMs: 10, maxMs: 50)
        var runners: [String: any Runner] = [:]
        for agent in agents { runners[agent.name] = BuiltinRunners.make(agent.runner) }
        scheduler = try Scheduler(store: store, configuration: schedulerConfiguration, runners: runners)
        try scheduler.start()
        var configuration = ServerConfiguration(socketPath: socketPath)
        configure(&configuration)
        server = FanoutServer(configuration: configuration, scheduler: scheduler)
        let server = server
        runTask = Task { try await server.run() }
        await server.waitUntilListening()
    }

    static func makeDirectory() -> String {
        let path = "/tmp/fo-\(UUID().uuidString.prefix(8))"
        try! FileManager.default.createDirectory(atPath: path, withIntermediateDirectories: true)
        return path
    }

    func client(name: String = "test") async throws -> FanoutClient {
        try await FanoutClient.connect(socketPath: socketPath, clientName: name)
    }

    /// Stops the server and the scheduler; keeps the directory unless `removeFiles`.
    func stop(removeFiles: Bool = true) async {
        server.shutdown()
        _ = try? await runTask.value
        await scheduler.shutdown()
        if removeFiles { try? FileManager.default.removeItem(atPath: directory) }
    }
}

/// Fails the test instead of hanging when `body` takes longer than `seconds`.
func withDeadline<T: Sendable>(_ seconds: Double, _ body: @escaping @Sendable () async throws -> T) async throws -> T {
    try await withThrowingTaskGroup(of: T?.self) { group in
        group.addTask { try await body() }
        group.addTask {
            try await Task.sleep(for: .seconds(seconds))
            return nil
        }
        defer { group.cancelAll() }
        guard let value = try await group.next() ?? nil else {
            throw DeadlineExceeded(seconds: seconds)
        }
        return value
    }
}

struct DeadlineExceeded: Error, CustomStringConvertible {
    var seconds: Double
    var description: String { "did not finish within \(seconds) s" }
}
