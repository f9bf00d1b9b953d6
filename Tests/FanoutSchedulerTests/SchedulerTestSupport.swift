import FanoutCore
import FanoutPostgresStore
import FanoutRunners
import FanoutStore
import FanoutTestSupport
import Foundation
import Logging
import Synchronization
import Testing

@testable import FanoutScheduler

// MARK: Temporary files

/// A started scheduler over a real SQLite file; shut down afterwards even when `body` throws.
@discardableResult
func withScheduler<T>(
    agents: [AgentConfiguration] = [AgentConfiguration(name: "echo", runner: "echo")],
    globalConcurrency: Int = 64,
    runners: [String: any Runner]? = nil,
    workerPool: WorkerPool? = nil,
    configure: (inout SchedulerConfiguration) -> Void = { _ in },
    _ body: (Scheduler, SQLiteStore) async throws -> T
) async throws -> T {
    try await withScheduler(over: { $0 }, agents: agents, globalConcurrency: globalConcurrency, runners: runners,
                            workerPool: workerPool, configure: configure, body)
}

/// A started scheduler over a fresh store of `kind` (a SQLite file, or a database of its own on
/// the suite's PostgreSQL server); shut down afterwards even when `body` throws.
@discardableResult
func withScheduler<T: Sendable>(
    on kind: StoreKind,
    agents: [AgentConfiguration] = [AgentConfiguration(name: "echo", runner: "echo")],
    globalConcurrency: Int = 64,
    runners: [String: any Runner]? = nil,
    configure: (inout SchedulerConfiguration) -> Void = { _ in },
    _ body: (Scheduler, any Store) async throws -> T
) async throws -> T {
    switch kind {
    case .sqlite:
        return try await withScheduler(agents: agents, globalConcurrency: globalConcurrency, runners: runners, configure: configure) {
            scheduler, store in try await body(scheduler, store)
        }
    case .postgres:
        let store = try await PostgresTestServer.current().makeStore()
        return try await store.withRunning {
            try await runScheduler(on: store, agents: agents, globalConcurrency: globalConcurrency, runners: runners, workerPool: nil,
                                   configure: configure, body)
        }
    }
}

/// The same over a store built on the SQLite file (a fault-injecting wrapper, say).
@discardableResult
func withScheduler<S: Store, T>(
    over makeStore: (SQLiteStore) -> S,
    agents: [AgentConfiguration] = [AgentConfiguration(name: "echo", runner: "echo")],
    globalConcurrency: Int = 64,
    runners: [String: any Runner]? = nil,
    workerPool: WorkerPool? = nil,
    configure: (inout SchedulerConfiguration) -> Void = { _ in },
    _ body: (Scheduler, S) async throws -> T
) async throws -> T {
    try await withTemporaryDirectory { directory in
        try await runScheduler(on: makeStore(try SQLiteStore(path: directory + "/fanout.db")), agents: agents,
                               globalConcurrency: globalConcurrency, runners: runners, workerPool: workerPool, configure: configure, body)
    }
}

/// Starts a scheduler on `store` with the tests' short backoffs, runs `body`, shuts it down.
private func runScheduler<S: Store, T>(
    on store: S, agents: [AgentConfiguration], globalConcurrency: Int, runners: [String: any Runner]?, workerPool: WorkerPool?,
    configure: (inout SchedulerConfiguration) -> Void, _ body: (Scheduler, S) async throws -> T
) async throws -> T {
    var configuration = SchedulerConfiguration(globalConcurrency: globalConcurrency, agents: agents)
    configuration.backoff = Backoff(baseMs: 10, maxMs: 50)
    configuration.storeRetry = Backoff(baseMs: 5, maxMs: 20)
    configure(&configuration)
    let runnerMap = runners ?? Dictionary(uniqueKeysWithValues: agents.map { ($0.name, EchoRunner() as any Runner) })
    let scheduler = try Scheduler(store: store, configuration: configuration, runners: runnerMap, workerPool: workerPool)
    try scheduler.start()
    do {
        let value = try await body(scheduler, store)
        await scheduler.shutdown()
        return value
    } catch {
        await scheduler.shutdown()
        throw error
    }
}

// MARK: Deadlines

/// Polls `condition` every few milliseconds until it holds; throws `TimedOut` after `timeout`.
func waitUntil(_ what: String, timeout: Duration = .seconds(20), _ condition: () async throws -> Bool) async throws {
    let deadline = ContinuousClock.now + timeout
    while try await !condition() {
        if ContinuousClock.now >= deadline { throw TimedOut(what: what, timeout: timeout) }
        try await Task.sleep(for: .milliseconds(2))
    }
}

/// Subscribes and collects events until `stop` returns true for one (included).
func collectEvents(_ scheduler: Scheduler, _ filter: EventFilter, since: EventSequence = 0, bufferSize: Int = 100_000,
                   timeout: Duration = .seconds(20), until stop: @escaping @Sendable (EventRecord) -> Bool) async throws -> [EventRecord] {
    try await withDeadline(timeout, "events matching \(filter)") {
        var events: [EventRecord] = []
        for try await event in scheduler.subscribe(filter, since: since, follow: true, bufferSize: bufferSize) {
            events.append(event)
            if stop(event) { return events }
        }
        throw TimedOut(what: "the end of the subscription before the expected event", timeout: .zero)
    }
}

/// Waits for the batch's terminal event and returns every event of the batch from the start.
func eventsUntilBatchEnds(_ scheduler: Scheduler, batch: BatchID, owner: String = "alice",
                          timeout: Duration = .seconds(20)) async throws -> [EventRecord] {
    try await collectEvents(scheduler, EventFilter(ownerID: owner, batchID: batch), timeout: timeout) {
        $0.kind == .batchCompleted || $0.kind == .batchCancelled || $0.kind == .batchFailed
    }
}

func allEvents(_ store: any Store, _ filter: EventFilter = EventFilter(ownerID: "")) async throws -> [EventRecord] {
    try await store.events(after: 0, upTo: nil, filter: filter, limit: 1_000_000)
}

/// Shorthands for what `Scheduler.enqueue` answers.
extension InsertedBatch {
    var id: BatchID { batch.id }
    var progress: BatchProgress { batch.progress }
}

// MARK: Requests

func json(_ object: [String: Any]) -> [UInt8] {
    Array(try! JSONSerialization.data(withJSONObject: object, options: [.sortedKeys]))
}

func echoTasks(_ count: Int, prefix: String = "t", payload: (Int) -> [UInt8] = { Array("{\"n\":\($0)}".utf8) },
               maxAttempts: Int = 1) -> [NewTask] {
    (0..<count).map { NewTask(customID: "\(prefix)\($0)", agent: "", payload: payload($0), maxAttempts: maxAttempts) }
}

// MARK: Test runners

/// Opens once; waiters poll it so they also honour cancellation.
final class Gate: Sendable {
    private let isOpen = Mutex(false)
    func open() { isOpen.withLock { $0 = true } }
    func wait() async throws {
        while !isOpen.withLock({ $0 }) { try await Task.sleep(for: .milliseconds(1)) }
    }
}

/// Records the order tasks start in and how many run at once, per agent and overall.
final class RecordingRunner: Runner {
    struct Record {
        var starts: [String] = []
        var running: [String: Int] = [:]
        var maxRunning: [String: Int] = [:]
        var total = 0
        var maxTotal = 0
        var finished = 0
    }

    let record = Mutex(Record())
    let holdMs: Int
    let gate: Gate?
    /// Tasks with these custom ids wait for the gate before running.
    let gated: Set<String>

    init(holdMs: Int = 0, gate: Gate? = nil, gated: Set<String> = []) {
        self.holdMs = holdMs
        self.gate = gate
        self.gated = gated
    }

    var snapshot: Record { record.withLock { $0 } }

    func run(_ context: RunContext) async throws -> RunOutput {
        record.withLock { record in
            record.starts.append(context.customID)
            record.running[context.agent, default: 0] += 1
            record.maxRunning[context.agent] = max(record.maxRunning[context.agent] ?? 0, record.running[context.agent]!)
            record.total += 1
            record.maxTotal = max(record.maxTotal, record.total)
        }
        defer {
            record.withLock { record in
                record.running[context.agent]! -= 1
                record.total -= 1
                record.finished += 1
            }
        }
        if gated.contains(context.customID), let gate { try await gate.wait() }
        if holdMs > 0 { try await Task.sleep(for: .milliseconds(holdMs)) }
        return RunOutput(result: Array(context.customID.utf8))
    }
}
