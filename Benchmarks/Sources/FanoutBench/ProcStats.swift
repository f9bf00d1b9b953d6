import Foundation

#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#endif

/// What /proc says about a process: memory (from `status`) and CPU time (from `stat`).
struct ProcStats {
    /// kB
    var vmRSS: Int = 0
    /// kB: the peak resident set size so far.
    var vmHWM: Int = 0
    var threads: Int = 0
    var userSeconds: Double = 0
    var systemSeconds: Double = 0

    static func read(_ pid: pid_t) -> ProcStats? {
        guard let status = try? String(contentsOfFile: "/proc/\(pid)/status", encoding: .utf8) else { return nil }
        var stats = ProcStats()
        for line in status.split(separator: "\n") {
            if line.hasPrefix("VmRSS:") { stats.vmRSS = number(line) }
            else if line.hasPrefix("VmHWM:") { stats.vmHWM = number(line) }
            else if line.hasPrefix("Threads:") { stats.threads = number(line) }
        }
        // /proc/PID/stat: fields after the command name's closing parenthesis;
        // utime and stime are fields 14 and 15 (11 and 12 after the parenthesis).
        if let stat = try? String(contentsOfFile: "/proc/\(pid)/stat", encoding: .utf8),
           let close = stat.lastIndex(of: ")") {
            let fields = stat[stat.index(after: close)...].split(separator: " ")
            let ticks = Double(sysconf(Int32(_SC_CLK_TCK)))
            if fields.count > 12, ticks > 0 {
                stats.userSeconds = (Double(fields[11]) ?? 0) / ticks
                stats.systemSeconds = (Double(fields[12]) ?? 0) / ticks
            }
        }
        return stats
    }

    private static func number(_ line: Substring) -> Int {
        Int(line.split(whereSeparator: { $0 == " " || $0 == "\t" }).dropFirst().first.map(String.init) ?? "") ?? 0
    }
}

/// Reads a process's resident memory every `interval` until cancelled.
struct MemorySampler: Sendable {
    struct Summary: Sendable {
        /// kB
        var maxRSS = 0
        var maxThreads = 0
        /// (seconds since start, MB), about one a second.
        var timeline: [[Double]] = []
    }

    static func run(pid: pid_t, interval: Duration = .milliseconds(100)) -> Task<Summary, Never> {
        Task {
            var summary = Summary()
            let start = ContinuousClock.now
            var lastRecorded: Duration?
            while true {
                if let stats = ProcStats.read(pid) {
                    summary.maxRSS = max(summary.maxRSS, stats.vmRSS)
                    summary.maxThreads = max(summary.maxThreads, stats.threads)
                    let elapsed = ContinuousClock.now - start
                    if lastRecorded.map({ elapsed - $0 >= .seconds(1) }) ?? true {
                        summary.timeline.append([round(elapsed.seconds * 10) / 10, round(Double(stats.vmRSS) / 102.4) / 10])
                        lastRecorded = elapsed
                    }
                }
                if Task.isCancelled { return summary }
                try? await Task.sleep(for: interval)
                if Task.isCancelled { return summary }
            }
        }
    }
}

extension Duration {
    var seconds: Double {
        let (whole, attoseconds) = components
        return Double(whole) + Double(attoseconds) / 1e18
    }
}
