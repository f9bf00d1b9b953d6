import Foundation

#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#endif

/// `fanout-openai-stub` as a child process on a free loopback port.
struct StubProcess {
    let pid: pid_t
    let port: Int

    var baseURL: String { "http://127.0.0.1:\(port)/v1" }

    /// Starts the stub (its output goes to `folder/stub.out`) and waits for its port.
    static func start(_ executable: String, delayMs: Int, folder: String) async throws -> StubProcess {
        guard access(executable, X_OK) == 0 else {
            throw BenchError("\(executable) not found; it is built with the main package (swift build -c release)")
        }
        let output = folder + "/stub.out"
        let pid = try Daemon.spawn([executable, "--port", "0", "--delay-ms", String(delayMs)], output: output)
        for _ in 0..<400 {
            if let text = try? String(contentsOfFile: output, encoding: .utf8),
               let line = text.split(separator: "\n").first(where: { $0.hasPrefix("listening on ") }),
               let port = Int(line.dropFirst("listening on ".count)) {
                return StubProcess(pid: pid, port: port)
            }
            await uncancellableSleep(milliseconds: 50)
        }
        StubProcess(pid: pid, port: 0).stop()
        throw BenchError("the OpenAI stub did not start: \((try? String(contentsOfFile: output, encoding: .utf8)) ?? "")")
    }

    func stop() {
        kill(pid, SIGTERM)
        var status: Int32 = 0
        waitpid(pid, &status, 0)
    }
}
