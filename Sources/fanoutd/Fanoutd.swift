import ArgumentParser
import AsyncHTTPClient
import FanoutGateway
import FanoutPostgresStore
import FanoutRunners
import FanoutScheduler
import FanoutServer
import FanoutStore
import Foundation
import Logging
import ServiceLifecycle

@main
struct Fanoutd: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "fanoutd",
        abstract: "The Fanout daemon: runs batches of agent and LLM tasks for local clients.",
        discussion: """
            Settings come from flags, then FANOUT_* environment variables (FANOUT_SOCKET, FANOUT_DB, \
            FANOUT_CONCURRENCY, …), then the JSON file given by --config or FANOUT_CONFIG. \
            Stop it with SIGTERM or SIGINT: it finishes what it is committing and exits.
            """,
        version: FanoutVersion.current)

    @Option(help: "Unix socket to listen on (default: $XDG_RUNTIME_DIR/fanout/fanoutd.sock).")
    var socket: String?

    @Option(help: "SQLite database file (default: $XDG_STATE_HOME/fanout/fanout.db).")
    var db: String?

    @Option(help: "A PostgreSQL store instead of the SQLite file: postgres://user[:password]@host[:port]/database (or ?host=/socket/dir).")
    var store: String?

    @Option(help: "JSON configuration file: settings and the agents list.")
    var config: String?

    @Option(help: "normal (survives crashes) or full (fsync every commit).")
    var durability: String?

    @Option(help: "How many tasks may run at once across all agents.")
    var concurrency: Int?

    @Option(name: .customLong("socket-mode"), help: "Socket file mode, octal (default 0600).")
    var socketMode: String?

    @Option(name: .customLong("log-level"), help: "trace, debug, info, notice, warning, error or critical.")
    var logLevel: String?

    @Option(name: .customLong("max-frame-bytes"), help: "Largest protocol frame accepted (default 4194304).")
    var maxFrameBytes: Int?

    @Option(name: .customLong("max-tasks-per-batch"), help: "Largest batch accepted (default 1000000).")
    var maxTasksPerBatch: Int?

    @Option(name: .customLong("max-payload-bytes"), help: "Largest task payload accepted (default 1048576).")
    var maxPayloadBytes: Int?

    @Option(name: .customLong("event-retention-count"), help: "Newest events kept for replay; 0: no limit (default 1000000).")
    var eventRetentionCount: Int?

    @Option(help: "Serve the OpenAI-compatible Files and Batches API over TCP on HOST:PORT (needs --http-token-file).")
    var http: String?

    @Option(name: .customLong("http-socket"), help: "Serve the OpenAI-compatible API over this Unix socket; callers are known by their uid.")
    var httpSocket: String?

    @Option(name: .customLong("http-token-file"), help: "File holding the bearer token HTTP clients must send over TCP (mode 0600).")
    var httpTokenFile: String?

    @Option(name: .customLong("event-retention-age-ms"), help: "Events older than this are removed; 0: no limit (default 604800000, 7 days).")
    var eventRetentionAgeMs: Int?

    func run() async throws {
        var flags: [DaemonSettings.Key: String] = [:]
        flags[.socket] = socket
        flags[.db] = db
        flags[.store] = store
        flags[.durability] = durability
        flags[.concurrency] = concurrency.map(String.init)
        flags[.socketMode] = socketMode
        flags[.logLevel] = logLevel
        flags[.maxFrameBytes] = maxFrameBytes.map(String.init)
        flags[.maxTasksPerBatch] = maxTasksPerBatch.map(String.init)
        flags[.maxPayloadBytes] = maxPayloadBytes.map(String.init)
        flags[.eventRetentionCount] = eventRetentionCount.map(String.init)
        flags[.eventRetentionAgeMs] = eventRetentionAgeMs.map(String.init)
        flags[.http] = http
        flags[.httpSocket] = httpSocket
        flags[.httpTokenFile] = httpTokenFile
        let environment = ProcessInfo.processInfo.environment
        let configFile = config ?? environment["FANOUT_CONFIG"]
        let settings: DaemonSettings
        do {
            settings = try await DaemonSettings.load(flags: flags, environment: environment, configFile: configFile)
        } catch {
            throw ValidationError("\(error)")
        }
        try await Daemon(settings: settings).run()
    }
}

/// Wires the store, scheduler and server together and runs them until a signal.
struct Daemon {
    var settings: DaemonSettings

    func run() async throws {
        let level = Logger.Level(rawValue: settings.logLevel) ?? .info
        LoggingSystem.bootstrap { label in
            var handler = StreamLogHandler.standardError(label: label)
            handler.logLevel = level
            return handler
        }
        let logger = Logger(label: "fanoutd")
        // Before anything opens a database, while this is the only thread using SQLite.
        if !SQLiteStore.configureProcess() {
            logger.debug("SQLite was in use before its memory statistics could be turned off")
        }
        // Each connection is a descriptor: max_connections (1,024 by default) needs more than the usual soft limit.
        if let raised = OpenFiles.raiseSoftLimit(toAtLeast: settings.server.maxConnections + 64) {
            logger.debug("raised the open-file limit", metadata: ["limit": "\(raised)"])
        }

        // One HTTP client for every openai agent, its pool sized for their concurrency together.
        let httpConnections = settings.scheduler.agents.filter { $0.runner == "openai" }.map(\.concurrency).reduce(0, +)
        let httpClient = BuiltinRunners.makeHTTPClient(connections: min(httpConnections, settings.scheduler.globalConcurrency))
        do {
            try await run(logger: logger, httpClient: httpClient)
        } catch {
            try? await httpClient.shutdown()
            throw error
        }
        // After the scheduler stopped: no runner is using it any more.
        try await httpClient.shutdown()
        logger.info("fanoutd stopped")
    }

    private func run(logger: Logger, httpClient: HTTPClient) async throws {
        // Runners first: a config mistake is reported before anything else happens.
        func runnerSettings(_ agent: AgentConfiguration) -> [String: Any] {
            settings.runnerSettings[agent.name].flatMap { try? JSONSerialization.jsonObject(with: $0) as? [String: Any] } ?? [:]
        }
        // Agents with runner "worker", and agents workers declare, are run by worker sessions through one pool.
        var allowed: [String: Set<UInt32>] = [:]
        for agent in settings.scheduler.agents where agent.runner == "worker" {
            allowed[agent.name] = try WorkerAgentSettings.allowedUIDs(runnerSettings(agent), agent: agent.name)
        }
        let workerPool = WorkerPool(settings: settings.workers, allowedUIDs: allowed)
        let resources = BuiltinRunners.Resources(
            httpClient: httpClient, environment: ProcessInfo.processInfo.environment,
            maxResultBytes: BuiltinRunners.Resources.maxResultBytes(forFrameBytes: settings.server.maxFrameBytes),
            workerPool: workerPool)
        var runners: [String: any Runner] = [:]
        for agent in settings.scheduler.agents {
            runners[agent.name] = try BuiltinRunners.make(agent, settings: runnerSettings(agent), resources: resources)
        }
        // The runners hold their keys now; exec commands, which inherit this environment, must not.
        for case let runner as OpenAIRunner in runners.values {
            if let variable = runner.settings.apiKeyVariable { unsetenv(variable) }
        }

        try makeParent(of: settings.socketPath, mode: 0o700)
        // Before the store: a daemon refused here must not recover or run the live daemon's tasks.
        try FanoutServer.prepareSocketPath(settings.socketPath)
        if let location = settings.postgres {
            let store = PostgresStore(location: location, writerStatementTimeoutMs: settings.postgresStatementTimeoutMs,
                                      leaseMs: settings.postgresLeaseMs, poolSize: settings.postgresPoolSize,
                                      logger: Logger(label: "fanout.store"))
            // The pool runs for as long as the daemon, and past the scheduler's last commit.
            try await store.withRunning {
                try await serve(store: store, gatewayStore: nil, where: location.description,
                                runners: runners, workerPool: workerPool, logger: logger)
            }
        } else {
            try makeParent(of: settings.databasePath, mode: 0o700)
            let lock = try DatabaseLock(databasePath: settings.databasePath)
            defer { withExtendedLifetime(lock) {} }
            let store = try SQLiteStore(path: settings.databasePath, durability: settings.durability)
            // Once the scheduler's last commit is written: the writer then closes last and checkpoints.
            defer { store.close() }
            try await serve(store: store, gatewayStore: store, where: settings.databasePath, runners: runners, workerPool: workerPool,
                            logger: logger)
        }
    }

    /// Runs the scheduler, the server and the gateway on `store` until a signal.
    private func serve(store: any Store, gatewayStore: (any GatewayStore)?, where storeDescription: String,
                       runners: [String: any Runner], workerPool: WorkerPool, logger: Logger) async throws {
        let scheduler = try Scheduler(store: store, configuration: settings.scheduler, runners: runners, workerPool: workerPool,
                                      limits: settings.limits, logger: Logger(label: "fanout.scheduler"))
        try scheduler.start()
        let server = FanoutServer(configuration: settings.server, scheduler: scheduler, workerPool: workerPool,
                                  logger: Logger(label: "fanout.server"))
        var gatewayServices: [any Service] = []
        if let gateway = settings.gateway, let gatewayStore {
            if let path = gateway.socketPath {
                try makeParent(of: path, mode: 0o700)
                try FanoutServer.prepareSocketPath(path)
            }
            gatewayServices = try FanoutGateway(configuration: gateway.configuration(limits: settings.limits), scheduler: scheduler,
                                                store: gatewayStore).services(socketMode: settings.socketMode) { address in
                logger.info("OpenAI-compatible gateway listening", metadata: ["address": "\(address)"])
            }
        }
        logger.info("fanoutd starting", metadata: [
            "version": "\(FanoutVersion.current)", "socket": "\(settings.socketPath)", "store": "\(storeDescription)",
            "agents": "\(settings.scheduler.agents.map(\.name).joined(separator: ","))",
        ])
        // Shut down in reverse order: the server stops taking work first, then the scheduler puts
        // interrupted tasks back to pending and finishes its commits.
        let group = ServiceGroup(configuration: .init(
            services: [.init(service: scheduler), .init(service: workerPool), .init(service: server)]
                + gatewayServices.map { .init(service: $0) },
            gracefulShutdownSignals: [.sigterm, .sigint],
            logger: logger))
        do {
            try await group.run()
        } catch {
            await scheduler.shutdown()
            throw error
        }
    }

    private func makeParent(of path: String, mode: Int) throws {
        let folder = URL(fileURLWithPath: path).deletingLastPathComponent().path
        guard !FileManager.default.fileExists(atPath: folder) else { return }
        try FileManager.default.createDirectory(atPath: folder, withIntermediateDirectories: true,
                                                attributes: [.posixPermissions: mode])
    }
}

/// The process's open-file limit.
enum OpenFiles {
    /// Raises the soft limit towards the hard one (never past it); returns the new soft limit if it changed.
    static func raiseSoftLimit(toAtLeast wanted: Int) -> Int? {
        var limit = rlimit()
        guard getrlimit(Int32(RLIMIT_NOFILE.rawValue), &limit) == 0, limit.rlim_cur < rlim_t(wanted) else { return nil }
        let target = min(limit.rlim_max, max(rlim_t(wanted), limit.rlim_cur))
        guard target > limit.rlim_cur else { return nil }
        limit.rlim_cur = target
        return setrlimit(Int32(RLIMIT_NOFILE.rawValue), &limit) == 0 ? Int(target) : nil
    }
}

#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#endif
