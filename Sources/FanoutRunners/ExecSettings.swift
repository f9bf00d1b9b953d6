import FanoutCore
import Foundation

/// The `exec` runner's part of an agent's configuration (snake_case keys):
///
/// - `command`: the program and its arguments, required; no shell. A program
///   without a slash is looked up in the daemon's PATH, as execvp does;
/// - `env`: variables added to, or replacing, the daemon's environment;
/// - `cwd`: the directory it runs in (default: the daemon's);
/// - `retryable_exit_codes`: exit statuses worth another attempt (default none);
/// - `max_output_bytes`: the most stdout kept as the result (default 10 MiB);
/// - `kill_grace_ms`: time between SIGTERM and SIGKILL when stopped (default 5000).
public struct ExecSettings: Sendable, Hashable, Decodable {
    public var command: [String]
    public var env: [String: String]
    public var cwd: String?
    public var retryableExitCodes: [Int32]
    public var maxOutputBytes: Int
    public var killGraceMs: Int64

    public static let defaultMaxOutputBytes = 10 << 20
    public static let maxOutputBytesRange = 1...(1 << 30)
    public static let defaultKillGraceMs: Int64 = 5_000
    /// At most 5 s, half the scheduler's shutdown wait, so a group ignoring SIGTERM is SIGKILLed before fanoutd exits.
    public static let killGraceMsRange: ClosedRange<Int64> = 0...5_000
    public static let exitCodeRange: ClosedRange<Int32> = 1...255

    /// The variables the runner sets for every attempt; `env` cannot set them.
    public static let reservedEnvironment: Set<String> = [
        "FANOUT_TASK_ID", "FANOUT_BATCH_ID", "FANOUT_CUSTOM_ID", "FANOUT_ATTEMPT", "FANOUT_AGENT",
        "FANOUT_MAX_TURNS", "FANOUT_TURN_FD",
    ]

    /// Every key the runner's settings may have.
    public static let keys = Set(CodingKeys.allCases.map(\.rawValue))

    public init(command: [String], env: [String: String] = [:], cwd: String? = nil, retryableExitCodes: [Int32] = [],
                maxOutputBytes: Int = ExecSettings.defaultMaxOutputBytes,
                killGraceMs: Int64 = ExecSettings.defaultKillGraceMs) {
        self.command = command
        self.env = env
        self.cwd = cwd
        self.retryableExitCodes = retryableExitCodes
        self.maxOutputBytes = maxOutputBytes
        self.killGraceMs = killGraceMs
    }

    /// Reads an agent's exec settings from its JSON object (only the runner's
    /// keys, as JSONSerialization gives them). Every problem is an
    /// `invalidArgument` naming the agent and the key.
    public static func decode(_ object: [String: Any], agent: String) throws(FanoutError) -> ExecSettings {
        func problem(_ message: String) -> FanoutError { .invalidArgument("agent \"\(agent)\": \(message)") }
        if let message = unknownKeys(object.keys) { throw problem(message) }
        // One key at a time, so a type error always names its key.
        func field<T: Decodable>(_ key: CodingKeys, as type: T.Type) throws(FanoutError) -> T? {
            guard let raw = object[key.rawValue], !(raw is NSNull) else { return nil }
            guard JSONSerialization.isValidJSONObject(["value": raw]),
                  let data = try? JSONSerialization.data(withJSONObject: ["value": raw]),
                  let field = try? JSONDecoder().decode(Field<T>.self, from: data) else {
                throw problem("\"\(key.rawValue)\" must be \(expected(key))")
            }
            return field.value
        }
        guard let command = try field(.command, as: [String].self), !command.isEmpty else {
            throw problem(missingCommand)
        }
        let settings = ExecSettings(
            command: command,
            env: try field(.env, as: [String: String].self) ?? [:],
            cwd: try field(.cwd, as: String.self),
            retryableExitCodes: try field(.retryableExitCodes, as: [Int32].self) ?? [],
            maxOutputBytes: try field(.maxOutputBytes, as: Int.self) ?? defaultMaxOutputBytes,
            killGraceMs: try field(.killGraceMs, as: Int64.self) ?? defaultKillGraceMs)
        do {
            try settings.validate()
        } catch {
            throw problem(error.message)
        }
        return settings
    }

    public init(from decoder: any Decoder) throws {
        if let message = Self.unknownKeys(try decoder.container(keyedBy: AnyKey.self).allKeys.map(\.stringValue)) {
            throw FanoutError.invalidArgument(message)
        }
        let container = try decoder.container(keyedBy: CodingKeys.self)
        guard let command = try container.decodeIfPresent([String].self, forKey: .command), !command.isEmpty else {
            throw FanoutError.invalidArgument(Self.missingCommand)
        }
        self.init(
            command: command,
            env: try container.decodeIfPresent([String: String].self, forKey: .env) ?? [:],
            cwd: try container.decodeIfPresent(String.self, forKey: .cwd),
            retryableExitCodes: try container.decodeIfPresent([Int32].self, forKey: .retryableExitCodes) ?? [],
            maxOutputBytes: try container.decodeIfPresent(Int.self, forKey: .maxOutputBytes) ?? Self.defaultMaxOutputBytes,
            killGraceMs: try container.decodeIfPresent(Int64.self, forKey: .killGraceMs) ?? Self.defaultKillGraceMs)
        try validate()
    }

    /// Checks what the types alone do not: ranges, and strings a process
    /// cannot be given (NUL bytes, `=` in a variable name).
    public func validate() throws(FanoutError) {
        func invalid(_ key: CodingKeys, _ detail: String) -> FanoutError {
            .invalidArgument("\"\(key.rawValue)\" must be \(Self.expected(key)); \(detail)")
        }
        guard let program = command.first, !program.isEmpty else { throw invalid(.command, "the program is empty") }
        if let bad = command.first(where: { $0.contains("\0") }) { throw invalid(.command, "\(quoted(bad)) contains a NUL byte") }
        for (name, value) in env.sorted(by: { $0.key < $1.key }) {
            if name.isEmpty || name.contains("=") || name.contains("\0") {
                throw invalid(.env, "\(quoted(name)) is not a variable name")
            }
            if value.contains("\0") { throw invalid(.env, "the value of \(name) contains a NUL byte") }
            if Self.reservedEnvironment.contains(name) { throw invalid(.env, "\(name) is set by the runner itself") }
        }
        if let cwd, cwd.isEmpty || cwd.contains("\0") { throw invalid(.cwd, "got \(quoted(cwd))") }
        if let bad = retryableExitCodes.first(where: { !Self.exitCodeRange.contains($0) }) {
            throw invalid(.retryableExitCodes, "got \(bad)")
        }
        guard Self.maxOutputBytesRange.contains(maxOutputBytes) else { throw invalid(.maxOutputBytes, "got \(maxOutputBytes)") }
        guard Self.killGraceMsRange.contains(killGraceMs) else { throw invalid(.killGraceMs, "got \(killGraceMs)") }
    }

    enum CodingKeys: String, CodingKey, CaseIterable {
        case command, env, cwd
        case retryableExitCodes = "retryable_exit_codes"
        case maxOutputBytes = "max_output_bytes"
        case killGraceMs = "kill_grace_ms"
    }

    private static func expected(_ key: CodingKeys) -> String {
        switch key {
        case .command: "a non-empty array of strings (the program and its arguments)"
        case .env: "an object whose values are strings"
        case .cwd: "a non-empty string (a directory)"
        case .retryableExitCodes: "an array of exit statuses (integers from 1 to 255)"
        case .maxOutputBytes: "an integer from 1 to \(maxOutputBytesRange.upperBound)"
        case .killGraceMs: "an integer from 0 to \(killGraceMsRange.upperBound)"
        }
    }

    private static let missingCommand = "the exec runner needs \"command\", \(expected(.command))"

    private static func unknownKeys(_ keys: some Sequence<String>) -> String? {
        let unknown = keys.filter { !Self.keys.contains($0) }.sorted()
        guard !unknown.isEmpty else { return nil }
        let names = unknown.map { "\"\($0)\"" }.joined(separator: ", ")
        return "unknown exec runner setting\(unknown.count > 1 ? "s" : "") \(names) (known: \(Self.keys.sorted().joined(separator: ", ")))"
    }

    private struct Field<T: Decodable>: Decodable {
        var value: T
    }

    private struct AnyKey: CodingKey {
        var stringValue: String
        var intValue: Int? { nil }
        init(stringValue: String) { self.stringValue = stringValue }
        init?(intValue: Int) { return nil }
    }
}

private func quoted(_ text: String) -> String {
    "\"\(text.replacingOccurrences(of: "\0", with: "\\0"))\""
}
