import FanoutTestSupport
import Foundation
import Synchronization
import Testing

/// The official `openai` Python package, pinned, in a virtual environment
/// under `.build` (made once, then reused).
enum OpenAISDK {
    static let version = "3.57.0"
    static let packageRoot = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent()
        .deletingLastPathComponent().path
    static let script = packageRoot + "/Tests/OpenAISDK/batch_through_gateway.py"
    private static let ready = Mutex(false)

    /// The venv's python, making the venv first when needed.
    static func python() async throws -> String {
        let folder = packageRoot + "/.build/openai-sdk-\(version)"
        let python = folder + "/bin/python"
        if ready.withLock({ $0 }) { return python }
        // `ok` marks a finished install; a half-made venv is made again.
        if !FileManager.default.fileExists(atPath: folder + "/ok") {
            try? FileManager.default.removeItem(atPath: folder)
            let venv = try await ChildProcess.run("/usr/bin/env", ["python3", "-m", "venv", folder], timeoutSeconds: 120)
            try #require(venv.status == 0, "python3 -m venv failed: \(venv.err)")
            let pip = try await ChildProcess.run(python, ["-m", "pip", "install", "--quiet", "--disable-pip-version-check",
                                                          "openai==\(version)"], timeoutSeconds: 300)
            try #require(pip.status == 0, "pip install openai==\(version) failed: \(pip.err)")
            FileManager.default.createFile(atPath: folder + "/ok", contents: nil)
        }
        ready.withLock { $0 = true }
        return python
    }

    /// Runs the script's `mode`; returns the JSON object it printed.
    static func run(_ mode: String, _ arguments: [String], timeoutSeconds: Double = 120) async throws -> [String: Any] {
        let result = try await ChildProcess.run(try await python(), [script, mode] + arguments, timeoutSeconds: timeoutSeconds)
        try #require(result.status == 0, "\(mode) failed (\(result.status)): \(result.err)")
        return try #require(try JSONSerialization.jsonObject(with: Data(result.out.utf8)) as? [String: Any], "stdout: \(result.out)")
    }
}

/// fanoutd with the gateway on a TCP port (token) and a Unix socket, its
/// openai agent pointing at `baseURL`; the body gets the TCP base URL, the
/// token and the gateway socket's path.
func withGatewayDaemon<T: Sendable>(
    baseURL: String, socketMode: String = "0600",
    _ body: (_ daemon: DaemonProcess, _ http: String, _ token: String, _ socket: String, _ directory: String) async throws -> T
) async throws -> T {
    try await withTemporaryDirectory { directory in
        let token = "tok-\(UInt64.random(in: 1...UInt64.max))"
        FileManager.default.createFile(atPath: directory + "/token", contents: Data(token.utf8), attributes: [.posixPermissions: 0o600])
        let config: [String: Any] = [
            "agents": [["name": "llm", "runner": "openai", "base_url": baseURL, "concurrency": 32]],
            "gateway_routes": ["stub-model": "llm"],
        ]
        try JSONSerialization.data(withJSONObject: config).write(to: URL(fileURLWithPath: directory + "/config.json"))
        let socket = directory + "/http.sock"
        return try await withDaemonProcess(
            ["--socket", directory + "/d.sock", "--db", directory + "/fanout.db", "--config", directory + "/config.json",
             "--http", "127.0.0.1:0", "--http-token-file", directory + "/token", "--http-socket", socket, "--socket-mode", socketMode],
            logPath: directory + "/fanoutd.log"
        ) { daemon in
            try await daemon.waitUntilListening(directory + "/d.sock")
            let address = try await gatewayAddress(in: daemon)
            return try await body(daemon, "http://\(address)/v1", token, socket, directory)
        }
    }
}

/// The TCP address the gateway logged once it listened.
private func gatewayAddress(in daemon: DaemonProcess) async throws -> String {
    for _ in 0..<500 {
        for line in daemon.output.split(separator: "\n") where line.contains("OpenAI-compatible gateway listening") {
            if let range = line.range(of: "address=127.0.0.1:") {
                return "127.0.0.1:" + line[range.upperBound...].prefix { $0.isNumber }
            }
        }
        try await Task.sleep(for: .milliseconds(20))
    }
    throw TimedOut(what: "the gateway's TCP listener", timeout: .seconds(10))
}
