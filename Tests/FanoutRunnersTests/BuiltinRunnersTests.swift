import FanoutCore
@testable import FanoutRunners
import FanoutScheduler
import Testing

/// Building runners from an agent's config-file entry, as fanoutd does.
@Suite struct BuiltinRunnersTests {
    static func make(_ runner: String, _ settings: [String: Any], maxResultBytes: Int = 100_000) async throws -> any Runner {
        // Only the settings are looked at: the client is shut down before the runner is returned.
        let http = BuiltinRunners.makeHTTPClient(connections: 8)
        let resources = BuiltinRunners.Resources(httpClient: http, environment: ["KEY": "k"], maxResultBytes: maxResultBytes)
        let made = Result { try BuiltinRunners.make(AgentConfiguration(name: "a", runner: runner), settings: settings, resources: resources) }
        try await http.shutdown()
        return try made.get()
    }

    @Test func resultLimitsFitInAFrame() async throws {
        // Defaults larger than a frame allows are lowered to it.
        let exec = try #require(try await Self.make("exec", ["command": ["cat"]]) as? ExecRunner)
        #expect(exec.settings.maxOutputBytes == 100_000)
        let openAI = try #require(try await Self.make("openai", ["base_url": "http://127.0.0.1:1/v1"], maxResultBytes: 1_000) as? OpenAIRunner)
        #expect(openAI.settings.maxResponseBytes == 1_000)
        // A configured value above it is refused, naming the setting.
        await #expect(throws: FanoutError.self) {
            _ = try await Self.make("exec", ["command": ["cat"], "max_output_bytes": 200_000])
        }
    }

    @Test func unknownRunnersKeysAndMissingKeysAreRefused() async throws {
        for (runner, settings, words) in [
            ("nope", [:], "unknown runner \"nope\""),
            ("echo", ["command": ["x"]], "unknown setting \"command\""),
            ("openai", ["base_url": "http://x", "api_key_env": "MISSING"], "MISSING, which is not set"),
        ] as [(String, [String: Any], String)] {
            do {
                _ = try await Self.make(runner, settings)
                Issue.record("\(runner) was accepted")
            } catch {
                #expect("\(error)".contains(words), "\(error)")
            }
        }
    }
}
