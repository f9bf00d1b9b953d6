import AsyncHTTPClient
import FanoutCore
import FanoutScheduler

/// The built-in runners, by the name an agent's `runner` setting uses.
public enum BuiltinRunners {
    public static let names = ["echo", "exec", "openai"]

    /// What building a runner may need besides its settings.
    public struct Resources: Sendable {
        /// The daemon's one HTTP client, shared by every `openai` agent.
        public var httpClient: HTTPClient
        /// The daemon's environment, where `api_key_env` is looked up.
        public var environment: [String: String]

        public init(httpClient: HTTPClient, environment: [String: String]) {
            self.httpClient = httpClient
            self.environment = environment
        }
    }

    /// Builds the runner of `agent` from its runner's own keys of the config file entry.
    public static func make(_ agent: AgentConfiguration, settings: [String: Any], resources: Resources) throws -> any Runner {
        switch agent.runner {
        case "echo":
            try RunnerSettingsReader(agent: agent.name, object: settings).requireOnly([], runner: "echo")
            return EchoRunner()
        case "exec":
            return ExecRunner(settings: try ExecSettings.decode(settings, agent: agent.name))
        case "openai":
            return try OpenAIRunner(settings: OpenAISettings.decode(settings, agent: agent.name), agent: agent.name,
                                    client: resources.httpClient, environment: resources.environment,
                                    requestTimeoutMs: agent.timeoutMs)
        default:
            throw FanoutError.invalidArgument(
                "agent \"\(agent.name)\": unknown runner \"\(agent.runner)\"; available: \(names.joined(separator: ", "))")
        }
    }

    /// The shared HTTP client, its pool sized for `connections` requests at once to one host.
    public static func makeHTTPClient(connections: Int) -> HTTPClient {
        var configuration = HTTPClient.Configuration()
        configuration.connectionPool = .init(idleTimeout: .seconds(60),
                                             concurrentHTTP1ConnectionsPerHostSoftLimit: max(8, connections))
        configuration.timeout = .init(connect: .seconds(10))
        // HTTP/2 where a TLS server offers it through ALPN, HTTP/1.1 with keep-alive otherwise.
        configuration.httpVersion = .automatic
        return HTTPClient(eventLoopGroupProvider: .singleton, configuration: configuration)
    }
}
