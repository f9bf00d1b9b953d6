import FanoutWire
import Foundation
import ServiceLifecycle
import Synchronization

/// A worker process's side of Fanout: it connects to fanoutd, registers its
/// agents, and runs the tasks it is assigned with their handlers.
///
/// - Heartbeats are sent for the tasks that run, three times per lease.
/// - When the connection is lost (fanoutd restarting, say) the worker
///   reconnects with exponential backoff; the tasks it was running are run
///   again by the daemon (the attempt counts), so their handlers are cancelled.
/// - As a swift-service-lifecycle `Service`, graceful shutdown drains it: it
///   takes no new task, lets running handlers finish, and hands back tasks
///   waiting for their children (they resume on another worker), then returns.
///
/// ```swift
/// let worker = FanoutWorker(name: "summarizer", agents: [
///     WorkerAgent("summarize", concurrency: 8) { task in
///         WorkerOutput(try await summarize(task.payload))
///     },
/// ])
/// try await worker.run()
/// ```
public final class FanoutWorker: Service, Sendable {
    public struct Settings: Sendable {
        public var socketPath: String
        /// The first wait before reconnecting; it doubles up to `maxReconnectDelay`.
        public var reconnectDelay: Duration
        public var maxReconnectDelay: Duration
        /// How long draining lets running handlers finish before handing their tasks back.
        public var drainTimeout: Duration

        public init(socketPath: String = FanoutClient.defaultSocketPath, reconnectDelay: Duration = .milliseconds(100),
                    maxReconnectDelay: Duration = .seconds(5), drainTimeout: Duration = .seconds(30)) {
            self.socketPath = socketPath
            self.reconnectDelay = reconnectDelay
            self.maxReconnectDelay = maxReconnectDelay
            self.drainTimeout = drainTimeout
        }
    }

    public let name: String
    public let agents: [WorkerAgent]
    public let settings: Settings
    private let current = Mutex<WorkerSession?>(nil)
    private let draining = Atomic<Bool>(false)
    private let drainRequested = Signal()
    /// The last session's registration was accepted.
    private let wasRegistered = Atomic<Bool>(false)

    public init(name: String, agents: [WorkerAgent], settings: Settings = Settings()) {
        self.name = name
        self.agents = agents
        self.settings = settings
    }

    /// Runs until cancelled, or drained by graceful shutdown (or `drain()`).
    /// A registration the daemon refuses (an agent this uid may not serve) is thrown.
    public func run() async throws {
        try await withGracefulShutdownHandler {
            var delay = settings.reconnectDelay
            while !draining.load(ordering: .relaxed) && !Task.isCancelled {
                do {
                    try await serveOnce()
                    return
                } catch is CancellationError {
                    throw CancellationError()
                } catch let error as FanoutClientError where error.code != .unavailable {
                    throw error
                } catch {
                    // fanoutd is away (not started yet, restarting): try again later, less often each time.
                }
                // A session that was accepted starts the backoff over.
                if wasRegistered.exchange(false, ordering: .relaxed) { delay = settings.reconnectDelay }
                try await Task.sleep(for: delay)
                delay = min(delay * 2, settings.maxReconnectDelay)
            }
        } onGracefulShutdown: {
            self.drain()
        }
    }

    /// Stops taking tasks; `run` returns once the running ones have finished (or `drainTimeout` passed).
    public func drain() {
        guard !draining.exchange(true, ordering: .relaxed) else { return }
        drainRequested.fire()
        let session = current.withLock { $0 }
        Task { await session?.drain() }
    }

    /// One connection's session, until it drains or the connection is lost.
    private func serveOnce() async throws {
        let client = try await FanoutClient.connect(socketPath: settings.socketPath, clientName: name)
        do {
            let session = try await WorkerSession.open(on: client, name: name, agents: agents)
            current.withLock { $0 = session }
            if draining.load(ordering: .relaxed) { await session.drain() }
            try await withThrowingTaskGroup(of: Void.self) { group in
                group.addTask { try await session.run() }
                group.addTask {
                    // Draining has a limit: after it, running tasks are handed back by closing the connection.
                    await self.drainRequested.wait()
                    try await Task.sleep(for: self.settings.drainTimeout)
                }
                defer { group.cancelAll() }
                try await group.next()
            }
            current.withLock { $0 = nil }
            await client.close()
        } catch {
            if let session = current.withLock({ $0 }), session.isRegistered { wasRegistered.store(true, ordering: .relaxed) }
            current.withLock { $0 = nil }
            await client.close()
            throw error
        }
    }
}

/// Fires once; every waiter, earlier or later, returns from then on.
final class Signal: Sendable {
    private struct State {
        var fired = false
        var waiters: [Int: CheckedContinuation<Void, Never>] = [:]
        var next = 0
    }

    private let state = Mutex(State())

    func fire() {
        let waiters = state.withLock { state in
            state.fired = true
            defer { state.waiters = [:] }
            return state.waiters.values
        }
        for waiter in waiters { waiter.resume() }
    }

    /// Returns when fired, or when the calling task is cancelled.
    func wait() async {
        let id = state.withLock { state in
            defer { state.next += 1 }
            return state.next
        }
        await withTaskCancellationHandler {
            await withCheckedContinuation { continuation in
                let now = state.withLock { state -> Bool in
                    if state.fired || Task.isCancelled { return true }
                    state.waiters[id] = continuation
                    return false
                }
                if now { continuation.resume() }
            }
        } onCancel: {
            state.withLock { $0.waiters.removeValue(forKey: id) }?.resume()
        }
    }
}
