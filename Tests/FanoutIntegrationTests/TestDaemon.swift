import FanoutClient
import FanoutPostgresStore
import FanoutRunners
import FanoutScheduler
import FanoutServer
import FanoutStore
import FanoutTestSupport
import Foundation
import Logging
import Synchronization
import Testing

/// A real daemon in this process: its Unix socket in a fresh temporary directory (short path,
/// under the 108-byte sun_path limit), its store a SQLite file there or a database of its own on
/// the suite's PostgreSQL server.
final class TestDaemon: Sendable {
    let directory: String
    let socketPath: String
    let databasePath: String
    let store: any Store
    let scheduler: Scheduler
    let server: FanoutServer
    private let runTask: Task<Void, any Error>
    /// PostgreSQL: the task keeping the store's pool running until `stop`, and what ends it.
    private let storeLife: (task: Task<Void, any Error>, stop: AsyncStream<Void>.Continuation)?

    init(
        on kind: StoreKind = .sqlite,
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
        switch kind {
        case .sqlite:
            store = try SQLiteStore(path: databasePath)
            storeLife = nil
        case .postgres:
            let postgres = try await PostgresTestServer.current().makeStore()
            // The pool runs in a task of its own until `stop`; it says when the store is ready, or why not.
            let (ready, readied) = AsyncStream<(any Error)?>.makeStream()
            let (stopped, stop) = AsyncStream<Void>.makeStream()
            let task = Task {
                do {
                    try await postgres.withRunning {
                        readied.yield(nil)
                        for await _ in stopped {}
                    }
                } catch {
                    readied.yield(error)
                    throw error
                }
            }
            var answers = ready.makeAsyncIterator()
            if case .some(.some(let error)) = await answers.next() { throw error }
            store = postgres
            storeLife = (task, stop)
        }
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
        // A stop that hangs says where, instead of leaving only a test that never ends.
        let stage = Mutex("stopping the server")
        let watchdog = Task { [directory] in
            try await Task.sleep(for: .seconds(30))
            FileHandle.standardError.write(Data("TestDaemon in \(directory): stop stuck at \(stage.withLock { $0 })\n".utf8))
        }
        defer { watchdog.cancel() }
        server.shutdown()
        _ = try? await runTask.value
        stage.withLock { $0 = "shutting the scheduler down" }
        await scheduler.shutdown()
        stage.withLock { $0 = "closing the store" }
        if let storeLife {
            storeLife.stop.finish()
            _ = try? await storeLife.task.value
        } else if let sqlite = store as? SQLiteStore {
            // Its final checkpoint may wait for readers (the busy timeout): on a thread of its own, not
            // one of the cooperative pool's two, which every test of the process shares.
            await withCheckedContinuation { (closed: CheckedContinuation<Void, Never>) in
                Thread {
                    sqlite.close()
                    closed.resume()
                }.start()
            }
        }
        if removeFiles { try? FileManager.default.removeItem(atPath: directory) }
    }
}

