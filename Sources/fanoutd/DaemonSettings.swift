import Configuration
import FanoutCore
import FanoutPostgresStore
import FanoutRunners
import FanoutScheduler
import FanoutServer
import FanoutStore
import FanoutWire
import Foundation
import SystemPackage

/// Everything the daemon can be told, resolved from (highest first) command
/// line flags, `FANOUT_*` environment variables and the optional JSON config
/// file; a setting given nowhere takes its default, which needs nothing.
struct DaemonSettings {
    var socketPath: String
    var socketMode: UInt16
    var databasePath: String
    /// A PostgreSQL store (`--store postgres://…`) instead of the SQLite file; nil: SQLite.
    var postgres: PostgresLocation?
    /// How long a statement of the commit loop may run on PostgreSQL before the server cancels it.
    var postgresStatementTimeoutMs = PostgresStore.defaultWriterStatementTimeoutMs
    /// How long this daemon's claim on a task holds on PostgreSQL without renewal.
    var postgresLeaseMs = PostgresStore.defaultLeaseMs
    /// Connections of this daemon's PostgreSQL pool at most (the commit loop has one more).
    var postgresPoolSize = PostgresStore.defaultPoolSize
    var durability: Durability
    var logLevel: String
    var server: ServerConfiguration
    var scheduler: SchedulerConfiguration
    var limits: EnqueueLimits
    /// Each agent's runner settings (its runner's own keys of the config file), as JSON.
    var runnerSettings: [String: Data]
    /// The OpenAI-compatible HTTP gateway; nil when neither --http nor --http-socket is given.
    var gateway: GatewaySettings?
    /// Leases and cancel grace of tasks run by workers.
    var workers = WorkerPool.Settings()

    /// The setting names, as keys of the config file; the environment
    /// variable is `FANOUT_` + the key in upper case.
    enum Key: String, CaseIterable {
        case socket, socketMode = "socket_mode", db, store, durability, concurrency
        case logLevel = "log_level"
        case maxFrameBytes = "max_frame_bytes", maxConnections = "max_connections"
        case maxStreamsPerConnection = "max_streams_per_connection", subscriberBuffer = "subscriber_buffer"
        case maxResultsPage = "max_results_page", maxResultsPageBytes = "max_results_page_bytes"
        case maxTasksPerBatch = "max_tasks_per_batch"
        case maxPayloadBytes = "max_payload_bytes", maxCustomIDBytes = "max_custom_id_bytes"
        case progressIntervalMs = "progress_interval_ms"
        case retryBaseMs = "retry_base_ms", retryMaxMs = "retry_max_ms"
        case eventRetentionCount = "event_retention_count", eventRetentionAgeMs = "event_retention_age_ms"
        case maxAttemptsPerTask = "max_attempts_per_task", maxTaskTimeoutMs = "max_task_timeout_ms"
        case maxCompletionWindowMs = "max_completion_window_ms"
        case handshakeTimeoutMs = "handshake_timeout_ms", listenBacklog = "listen_backlog"
        case shutdownGracePeriodMs = "shutdown_grace_period_ms"
        case http, httpSocket = "http_socket", httpTokenFile = "http_token_file"
        case gatewayDefaultAgent = "gateway_default_agent"
        case workerLeaseMs = "worker_lease_ms", workerCancelGraceMs = "worker_cancel_grace_ms"
        case postgresStatementTimeoutMs = "postgres_statement_timeout_ms", postgresLeaseMs = "postgres_lease_ms"
        case postgresPollMs = "postgres_poll_ms", postgresPoolSize = "postgres_pool_size"
        case maxSpawnDepth = "max_spawn_depth", maxChildrenPerTask = "max_children_per_task"

        // One component: a snake_case name is not split on its underscores.
        var configKey: ConfigKey { ConfigKey([rawValue]) }
    }

    static func load(flags: [Key: String], environment: [String: String], configFile: String?) async throws -> DaemonSettings {
        var providers: [any ConfigProvider] = []
        providers.append(InMemoryProvider(name: "flags", values: Dictionary(uniqueKeysWithValues: flags.map { key, value in
            (AbsoluteConfigKey([key.rawValue]), ConfigValue(.string(value), isSecret: false))
        })))
        // Only FANOUT_* variables, with the prefix removed, so `socket` reads FANOUT_SOCKET.
        let ours = environment.reduce(into: [String: String]()) { result, entry in
            if entry.key.hasPrefix("FANOUT_") { result[String(entry.key.dropFirst("FANOUT_".count))] = entry.value }
        }
        providers.append(EnvironmentVariablesProvider(environmentVariables: ours))
        var agents: [AgentConfiguration] = []
        var runnerSettings: [String: Data] = [:]
        if let configFile {
            providers.append(try ConfigFile.scalarSettings(configFile))
            for entry in try AgentsFile.load(configFile) {
                agents.append(entry.agent)
                runnerSettings[entry.agent.name] = entry.runnerSettings
            }
        }
        let config = ConfigReader(providers: providers)
        // Every number has an upper bound too, so arithmetic on it (deadlines, progress units) cannot overflow.
        func int(_ key: Key, _ fallback: Int, min: Int = 1, max: Int = SettingBounds.maxSetting) throws -> Int {
            guard let text = config.string(forKey: key.configKey) else { return fallback }
            guard let value = Int(text), value >= min, value <= max else {
                throw FanoutError.invalidArgument("\(key.rawValue) must be a whole number from \(min) to \(max), not \"\(text)\"")
            }
            return value
        }
        /// A limit where 0 means none (nil).
        func limit(_ key: Key, _ fallback: Int?) throws -> Int? {
            guard let text = config.string(forKey: key.configKey) else { return fallback }
            guard let value = Int(text), value >= 0, value <= SettingBounds.maxSetting else {
                throw FanoutError.invalidArgument("\(key.rawValue) must be a whole number from 0 (no limit) to \(SettingBounds.maxSetting), not \"\(text)\"")
            }
            return value == 0 ? nil : value
        }

        let socket = config.string(forKey: Key.socket.configKey) ?? DefaultSocket.path(environment: environment)
        var server = ServerConfiguration(socketPath: socket)
        if let mode = config.string(forKey: Key.socketMode.configKey) {
            guard let parsed = UInt16(mode, radix: 8), parsed <= 0o777 else {
                throw FanoutError.invalidArgument("socket_mode must be an octal file mode such as 0600, not \"\(mode)\"")
            }
            server.socketMode = parsed
        }
        server.maxFrameBytes = try int(.maxFrameBytes, server.maxFrameBytes, max: SettingBounds.maxFrameBytes)
        server.maxConnections = try int(.maxConnections, server.maxConnections)
        server.maxStreamsPerConnection = try int(.maxStreamsPerConnection, server.maxStreamsPerConnection)
        server.subscriberBuffer = try int(.subscriberBuffer, server.subscriberBuffer)
        server.maxResultsPage = try int(.maxResultsPage, server.maxResultsPage)
        // A page must fit in a frame: the default is lowered to a smaller max_frame_bytes, a setting above it refused.
        let pageBytesFit = max(1, server.maxFrameBytes - ServerConfiguration.resultsPageEnvelope)
        server.maxResultsPageBytes = try int(.maxResultsPageBytes, min(server.maxResultsPageBytes, pageBytesFit), max: pageBytesFit)
        server.handshakeTimeoutMs = Int64(try int(.handshakeTimeoutMs, Int(server.handshakeTimeoutMs), max: SettingBounds.maxDurationMs))
        server.shutdownGracePeriodMs = Int64(try int(.shutdownGracePeriodMs, Int(server.shutdownGracePeriodMs), max: SettingBounds.maxDurationMs))
        server.listenBacklog = try config.string(forKey: Key.listenBacklog.configKey).map { _ in try int(.listenBacklog, 0, max: 1 << 20) }

        var limits = EnqueueLimits()
        limits.maxTasksPerBatch = try int(.maxTasksPerBatch, limits.maxTasksPerBatch, max: SettingBounds.maxTasksPerBatch)
        limits.maxPayloadBytes = try int(.maxPayloadBytes, limits.maxPayloadBytes, max: SettingBounds.maxFrameBytes)
        limits.maxCustomIDBytes = try int(.maxCustomIDBytes, limits.maxCustomIDBytes, max: 65_536)
        limits.maxAttemptsPerTask = try int(.maxAttemptsPerTask, limits.maxAttemptsPerTask, max: 1_000_000)
        limits.maxTaskTimeoutMs = Int64(try int(.maxTaskTimeoutMs, Int(limits.maxTaskTimeoutMs), max: SettingBounds.maxDurationMs))
        limits.maxCompletionWindowMs = Int64(try int(.maxCompletionWindowMs, Int(limits.maxCompletionWindowMs), max: SettingBounds.maxDurationMs))
        guard limits.maxPayloadBytes < server.maxFrameBytes else {
            throw FanoutError.invalidArgument("max_payload_bytes (\(limits.maxPayloadBytes)) must be smaller than max_frame_bytes (\(server.maxFrameBytes))")
        }

        if agents.isEmpty { agents = [AgentConfiguration(name: "echo", runner: "echo", concurrency: 64)] }
        for agent in agents { try SettingBounds.check(agent, against: limits) }
        var scheduler = SchedulerConfiguration(globalConcurrency: try int(.concurrency, 64, max: SettingBounds.maxConcurrency), agents: agents)
        scheduler.progressIntervalMs = Int64(try int(.progressIntervalMs, Int(scheduler.progressIntervalMs), max: 3_600_000))
        scheduler.sharedStorePollMs = Int64(try int(.postgresPollMs, Int(scheduler.sharedStorePollMs), min: 10, max: 3_600_000))
        scheduler.backoff = Backoff(baseMs: Int64(try int(.retryBaseMs, Int(scheduler.backoff.baseMs), max: SettingBounds.maxDurationMs)),
                                    maxMs: Int64(try int(.retryMaxMs, Int(scheduler.backoff.maxMs), max: SettingBounds.maxDurationMs)))
        scheduler.eventRetention.maxEvents = try limit(.eventRetentionCount, scheduler.eventRetention.maxEvents)
        scheduler.eventRetention.maxAgeMs = try limit(.eventRetentionAgeMs, scheduler.eventRetention.maxAgeMs.map { Int($0) })
            .map { Int64($0) }
        scheduler.maxSpawnDepth = try int(.maxSpawnDepth, scheduler.maxSpawnDepth, max: 1_000)
        scheduler.maxChildrenPerTask = try int(.maxChildrenPerTask, scheduler.maxChildrenPerTask, max: SettingBounds.maxTasksPerBatch)
        var workers = WorkerPool.Settings()
        workers.leaseMs = Int64(try int(.workerLeaseMs, Int(workers.leaseMs), max: SettingBounds.maxDurationMs))
        workers.cancelGraceMs = Int64(try int(.workerCancelGraceMs, Int(workers.cancelGraceMs), max: SettingBounds.maxDurationMs))

        var gateway: GatewaySettings?
        let http = config.string(forKey: Key.http.configKey)
        let httpSocket = config.string(forKey: Key.httpSocket.configKey)
        if http != nil || httpSocket != nil {
            gateway = try GatewaySettings(
                http: http, socketPath: httpSocket, tokenFile: config.string(forKey: Key.httpTokenFile.configKey),
                routes: try configFile.map(ConfigFile.gatewayRoutes) ?? [:],
                defaultAgent: config.string(forKey: Key.gatewayDefaultAgent.configKey), agents: agents)
        }

        var postgres: PostgresLocation?
        if let store = config.string(forKey: Key.store.configKey), !store.isEmpty {
            do {
                postgres = try PostgresLocation(url: store)
            } catch {
                throw FanoutError.invalidArgument("store: \(error)")
            }
            if gateway != nil {
                throw FanoutError.invalidArgument("""
                    the OpenAI-compatible gateway (--http, --http-socket) keeps its files in the SQLite store and does not \
                    run with a PostgreSQL store yet: drop one of them
                    """)
            }
        }

        let durabilityText = config.string(forKey: Key.durability.configKey) ?? Durability.normal.rawValue
        guard let durability = Durability(rawValue: durabilityText) else {
            throw FanoutError.invalidArgument("durability must be normal or full, not \"\(durabilityText)\"")
        }
        let postgresStatementTimeoutMs = try int(.postgresStatementTimeoutMs, PostgresStore.defaultWriterStatementTimeoutMs,
                                                 max: SettingBounds.maxDurationMs)
        // At least a few round trips: it is renewed every third of it.
        let postgresLeaseMs = try int(.postgresLeaseMs, PostgresStore.defaultLeaseMs, min: 300, max: SettingBounds.maxDurationMs)
        // Room for the calls that run at once: the event feed's listener, the poll, reads.
        let postgresPoolSize = try int(.postgresPoolSize, PostgresStore.defaultPoolSize, min: 2, max: 1_000)
        return DaemonSettings(
            socketPath: socket, socketMode: server.socketMode,
            databasePath: config.string(forKey: Key.db.configKey) ?? defaultDatabasePath(environment), postgres: postgres,
            postgresStatementTimeoutMs: postgresStatementTimeoutMs, postgresLeaseMs: postgresLeaseMs,
            postgresPoolSize: postgresPoolSize, durability: durability, logLevel: config.string(forKey: Key.logLevel.configKey) ?? "info",
            server: server, scheduler: scheduler, limits: limits, runnerSettings: runnerSettings, gateway: gateway,
            workers: workers)
    }

    /// `$XDG_STATE_HOME/fanout/fanout.db`, else `~/.local/state/fanout/fanout.db`.
    static func defaultDatabasePath(_ environment: [String: String]) -> String {
        if let state = environment["XDG_STATE_HOME"], !state.isEmpty {
            return state + "/fanout/fanout.db"
        }
        let home = environment["HOME"].flatMap { $0.isEmpty ? nil : $0 } ?? NSHomeDirectory()
        return home + "/.local/state/fanout/fanout.db"
    }
}

/// The config file's settings other than `agents`. swift-configuration's
/// JSON provider refuses a file holding a list of objects (the agents), so
/// the file is read once here and its scalar settings are handed to the
/// reader as an in-memory provider, keeping flags > environment > file.
enum ConfigFile {
    /// Settings that are objects or lists, read directly rather than through the key-value reader.
    static let structuredKeys: Set<String> = ["agents", "gateway_routes"]

    /// `gateway_routes`: a request's model → the agent that runs it.
    static func gatewayRoutes(_ path: String) throws -> [String: String] {
        let data = try Data(contentsOf: URL(fileURLWithPath: path))
        guard let file = try? JSONSerialization.jsonObject(with: data) as? [String: Any], let routes = file["gateway_routes"] else {
            return [:]
        }
        guard let map = routes as? [String: String] else {
            throw FanoutError.invalidArgument("\(path): gateway_routes must be an object of model names to agent names")
        }
        return map
    }

    static func scalarSettings(_ path: String) throws -> InMemoryProvider {
        let data: Data
        do {
            data = try Data(contentsOf: URL(fileURLWithPath: path))
        } catch {
            throw FanoutError.invalidArgument("cannot read the config file \(path): \(error.localizedDescription)")
        }
        guard let object = try? JSONSerialization.jsonObject(with: data) as? [String: Any] else {
            throw FanoutError.invalidArgument("\(path) is not a JSON object")
        }
        let known = Set(DaemonSettings.Key.allCases.map(\.rawValue)).union(ConfigFile.structuredKeys)
        var values: [AbsoluteConfigKey: ConfigValue] = [:]
        for (key, value) in object where !ConfigFile.structuredKeys.contains(key) {
            guard known.contains(key) else {
                throw FanoutError.invalidArgument("\(path): unknown setting \"\(key)\"; known settings: \(known.sorted().joined(separator: ", "))")
            }
            let text: String
            switch value {
            case let string as String: text = string
            case let number as NSNumber: text = number.stringValue
            default: throw FanoutError.invalidArgument("\(path): setting \"\(key)\" must be a string or a number")
            }
            values[AbsoluteConfigKey([key])] = ConfigValue(.string(text), isSecret: false)
        }
        return InMemoryProvider(name: "file", values: values)
    }
}

/// The `agents` list of the config file. It is a list of objects, which the
/// key-value configuration reader does not model, so it is decoded directly.
/// Each entry has the keys every agent has (name, runner, concurrency, …)
/// and its runner's own (`base_url` for openai, `command` for exec, …),
/// which are kept as JSON for the runner to read.
enum AgentsFile {
    static let commonKeys: Set<String> = [
        "name", "runner", "concurrency", "max_turns", "max_attempts", "timeout_ms", "requests_per_minute", "tokens_per_minute",
        "children_timeout_ms",
    ]

    struct Entry {
        var agent: AgentConfiguration
        /// The runner's own keys, as a JSON object.
        var runnerSettings: Data
    }

    static func load(_ path: String) throws -> [Entry] {
        let data = try Data(contentsOf: URL(fileURLWithPath: path))
        guard let file = try? JSONSerialization.jsonObject(with: data) as? [String: Any] else {
            throw FanoutError.invalidArgument("\(path) is not a JSON object")
        }
        guard let list = file["agents"] else { return [] }
        guard let entries = list as? [[String: Any]] else {
            throw FanoutError.invalidArgument("\(path): agents must be a list of objects")
        }
        var names = Set<String>()
        return try entries.enumerated().map { index, object in
            let entry = try entry(object, path: path, index: index)
            guard names.insert(entry.agent.name).inserted else {
                throw FanoutError.invalidArgument("\(path): agent \"\(entry.agent.name)\" is declared twice")
            }
            return entry
        }
    }

    private static func entry(_ object: [String: Any], path: String, index: Int) throws -> Entry {
        guard let name = object["name"] as? String, !name.isEmpty else {
            throw FanoutError.invalidArgument("\(path): agent \(index + 1) needs a non-empty \"name\"")
        }
        func problem(_ message: String) -> FanoutError { .invalidArgument("\(path): agent \"\(name)\": \(message)") }
        guard let runner = object["runner"] as? String, !runner.isEmpty else {
            throw problem("needs a \"runner\" (\(BuiltinRunners.names.joined(separator: ", ")))")
        }
        func number(_ key: String) throws -> Int64? {
            guard let value = object[key] else { return nil }
            guard let double = (value as? NSNumber)?.doubleValue, double == double.rounded(), abs(double) < 9e15 else {
                throw problem("\(key) must be a whole number")
            }
            return Int64(double)
        }
        let defaults = AgentConfiguration(name: name, runner: runner)
        var agent = AgentConfiguration(
            name: name, runner: runner, concurrency: try number("concurrency").map { Int($0) } ?? defaults.concurrency,
            maxTurns: try number("max_turns").map { Int($0) } ?? 0,
            maxAttempts: try number("max_attempts").map { Int($0) } ?? defaults.maxAttempts,
            timeoutMs: try number("timeout_ms") ?? 0, requestsPerMinute: try number("requests_per_minute").map { Int($0) } ?? 0,
            tokensPerMinute: try number("tokens_per_minute").map { Int($0) } ?? 0)
        agent.childrenTimeoutMs = try number("children_timeout_ms") ?? defaults.childrenTimeoutMs
        let own = object.filter { !commonKeys.contains($0.key) }
        return Entry(agent: agent, runnerSettings: try JSONSerialization.data(withJSONObject: own))
    }
}

/// Upper bounds on configured numbers, so that nothing computed from them
/// (deadlines, progress units, buffer sizes) can overflow.
enum SettingBounds {
    /// Any setting without a tighter bound.
    static let maxSetting = 1 << 40
    /// Durations: 10 years in milliseconds.
    static let maxDurationMs = 10 * 365 * 24 * 3_600_000
    static let maxFrameBytes = 256 << 20
    static let maxTasksPerBatch = 100_000_000
    static let maxConcurrency = 1_000_000
    static let maxTurns = 1_000_000
    static let maxPerMinute = 1_000_000_000_000

    /// An agent from the config file, with every number in range.
    static func check(_ agent: AgentConfiguration, against limits: EnqueueLimits) throws {
        func require(_ ok: Bool, _ what: String) throws {
            guard ok else { throw FanoutError.invalidArgument("agent \"\(agent.name)\": \(what)") }
        }
        try require((1...maxConcurrency).contains(agent.concurrency), "concurrency must be from 1 to \(maxConcurrency), not \(agent.concurrency)")
        try require((0...maxTurns).contains(agent.maxTurns), "max_turns must be from 0 to \(maxTurns), not \(agent.maxTurns)")
        try require((1...limits.maxAttemptsPerTask).contains(agent.maxAttempts),
                    "max_attempts must be from 1 to \(limits.maxAttemptsPerTask) (max_attempts_per_task), not \(agent.maxAttempts)")
        try require((0...limits.maxTaskTimeoutMs).contains(agent.timeoutMs),
                    "timeout_ms must be from 0 to \(limits.maxTaskTimeoutMs) (max_task_timeout_ms), not \(agent.timeoutMs)")
        try require((0...maxPerMinute).contains(agent.requestsPerMinute), "requests_per_minute must be from 0 to \(maxPerMinute)")
        try require((0...maxPerMinute).contains(agent.tokensPerMinute), "tokens_per_minute must be from 0 to \(maxPerMinute)")
        try require((0...Int64(maxDurationMs)).contains(agent.childrenTimeoutMs),
                    "children_timeout_ms must be from 0 (no limit) to \(maxDurationMs), not \(agent.childrenTimeoutMs)")
    }
}
