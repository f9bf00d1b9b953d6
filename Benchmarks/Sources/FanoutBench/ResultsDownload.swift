import Foundation

#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#endif

/// `fanout results BATCH -o FILE` of a finished batch, as a user runs it: its
/// wall time, the results per second, the CLI's peak RSS (its VmHWM, read
/// every 5 ms while it runs: `wait4`'s figure would count the harness's own
/// memory, which a spawned child shares until it executes) and the file's
/// line count, which must equal the batch size.
struct ResultsDownload: Codable, Sendable {
    var seconds: Double
    var resultsPerSecond: Double
    var cliPeakRssMb: Double
    var lines: Int
    var fileMb: Double
    /// What the issue asks for a 1,000,000-task batch on a 2-core machine.
    var targetResultsPerSecond = 200_000.0

    static func run(cli: String, socket: String, batchID: UInt64, directory: String) async throws -> ResultsDownload {
        let file = directory + "/results.jsonl"
        let clock = ContinuousClock()
        let start = clock.now
        let pid = try Daemon.spawn([cli, "results", "--socket", socket, String(batchID), "-o", file],
                                   output: directory + "/results.log")
        var status: Int32 = 0
        var peakKB = 0
        while waitpid(pid, &status, WNOHANG) == 0 {
            peakKB = max(peakKB, ProcStats.read(pid)?.vmHWM ?? 0)
            await uncancellableSleep(milliseconds: 5)
        }
        let seconds = (clock.now - start).seconds
        defer { unlink(file) }
        guard (status & 0x7f) == 0, (status >> 8) & 0xff == 0 else {
            let log = (try? String(contentsOfFile: directory + "/results.log", encoding: .utf8)) ?? ""
            throw BenchError("fanout results exited with status \(status): \(log)")
        }
        let (lines, bytes) = try countLines(file)
        return ResultsDownload(seconds: seconds, resultsPerSecond: Double(lines) / seconds,
                               cliPeakRssMb: Double(peakKB) / 1024, lines: lines, fileMb: Double(bytes) / 1_048_576)
    }

    private static func countLines(_ path: String) throws -> (Int, Int) {
        guard let handle = FileHandle(forReadingAtPath: path) else { throw BenchError("cannot read \(path)") }
        defer { try? handle.close() }
        var lines = 0
        var bytes = 0
        while let chunk = try handle.read(upToCount: 1 << 20), !chunk.isEmpty {
            bytes += chunk.count
            lines += chunk.reduce(0) { $0 + ($1 == UInt8(ascii: "\n") ? 1 : 0) }
        }
        return (lines, bytes)
    }
}
