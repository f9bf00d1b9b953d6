import FanoutClient
import FanoutRunners
import FanoutScheduler
import FanoutServer
import FanoutStore
import FanoutTestSupport
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
        runners explicitRunners: [String: any Runner] = [:],
        workerPool: WorkerPool? = nil,
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
        for agent in agents where agent.runner == "echo" { runners[agent.name] = EchoRunner() }
        runners.merge(explicitRunners) { _, explicit in explicit }
        scheduler = try Scheduler(store: store, configuration: schedulerConfiguration, runners: runners, workerPool: workerPool)
        try scheduler.start()
        var configuration = ServerConfiguration(socketPath: socketPath)
        configure(&configuration)
        server = FanoutServer(configuration: configuration, scheduler: scheduler, workerPool: workerPool)
        let server = server
        runTask = Task { try await server.run() }
        await server.waitUntilListening()
    }

    static func makeDirectory() -> String { makeTemporaryDirectory() }

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

