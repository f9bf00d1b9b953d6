import AsyncHTTPClient
import FanoutCore
import FanoutScheduler

/// The built-in runners, by the name an agent's `runner` setting uses.
public enum BuiltinRunners {
    public static let names = ["echo", "exec", "openai", "worker"]

    /// What building a runner may need besides its settings.
    public struct Resources: Sendable {
        /// The daemon's one HTTP client, shared by every `openai` agent.
        public var httpClient: HTTPClient
        /// The daemon's environment, where `api_key_env` is looked up.
        public var environment: [String: String]
        /// The largest result a runner may keep: it must fit in one protocol frame with room to spare.
        public var maxResultBytes: Int
        /// Runs the tasks of agents whose runner is `worker`.
        public var workerPool: WorkerPool?

        public init(httpClient: HTTPClient, environment: [String: String], maxResultBytes: Int = (2 << 20) - 4_096,
                    workerPool: WorkerPool? = nil) {
            self.httpClient = httpClient
            self.environment = environment
            self.maxResultBytes = maxResultBytes
            self.workerPool = workerPool
        }

        /// For a daemon whose frames may be `maxFrameBytes` long (a results page uses at most half).
        public static func maxResultBytes(forFrameBytes maxFrameBytes: Int) -> Int {
            max(1_024, maxFrameBytes / 2 - 4_096)
        }
    }

    /// Builds the runner of `agent` from its runner's own keys of the config file entry.
    public static func make(_ agent: AgentConfiguration, settings: [String: Any], resources: Resources) throws -> any Runner {
        switch agent.runner {
        case "echo":
            try RunnerSettingsReader(agent: agent.name, object: settings).requireOnly([], runner: "echo")
            return EchoRunner()
        case "worker":
            try RunnerSettingsReader(agent: agent.name, object: settings).requireOnly(WorkerAgentSettings.keys, runner: "worker")
            guard let pool = resources.workerPool else {
                throw FanoutError.failedPrecondition("agent \"\(agent.name)\": no worker pool to run it")
            }
            return pool.runner(for: agent.name)
        case "exec":
            var exec = try ExecSettings.decode(settings, agent: agent.name)
            exec.maxOutputBytes = try fitting(exec.maxOutputBytes, key: "max_output_bytes", given: settings, agent: agent, resources)
            return ExecRunner(settings: exec)
        case "openai":
            var openAI = try OpenAISettings.decode(settings, agent: agent.name)
            openAI.maxResponseBytes = try fitting(openAI.maxResponseBytes, key: "max_response_bytes", given: settings,
                                                  agent: agent, resources)
            return try OpenAIRunner(settings: openAI, agent: agent.name,
                                    client: resources.httpClient, environment: resources.environment,
                                    requestTimeoutMs: agent.timeoutMs)
        default:
            throw FanoutError.invalidArgument(
                "agent \"\(agent.name)\": unknown runner \"\(agent.runner)\"; available: \(names.joined(separator: ", "))")
        }
    }

    /// A result limit within what a frame can carry: a default is lowered to it, a configured value above it refused.
    private static func fitting(_ value: Int, key: String, given settings: [String: Any], agent: AgentConfiguration,
                                _ resources: Resources) throws -> Int {
        guard value > resources.maxResultBytes else { return value }
        guard settings[key] == nil else {
            throw FanoutError.invalidArgument("agent \"\(agent.name)\": \(key) is \(value); results must fit in a protocol frame, "
                + "so at most \(resources.maxResultBytes) with this max_frame_bytes")
        }
        return resources.maxResultBytes
    }

    /// The shared HTTP client, its pool sized for `connections` requests at once to one host.
    public static func makeHTTPClient(connections: Int) -> HTTPClient {
        var configuration = HTTPClient.Configuration()
        configuration.connectionPool = .init(idleTimeout: .seconds(60),
                                             concurrentHTTP1ConnectionsPerHostSoftLimit: max(8, connections))
        configuration.timeout = .init(connect: .seconds(10))
        // A redirected POST becomes a GET without its body, and custom auth headers would follow it elsewhere.
        configuration.redirectConfiguration = .disallow
        // HTTP/2 where a TLS server offers it through ALPN, HTTP/1.1 with keep-alive otherwise.
        configuration.httpVersion = .automatic
        return HTTPClient(eventLoopGroupProvider: .singleton, configuration: configuration)
    }
}
