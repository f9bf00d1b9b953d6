import Foundation

#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#endif

struct Machine: Codable, Sendable {
    var nproc: Int
    var cpuModel: String
    var kernel: String
    var memoryGb: Double
    /// /proc/loadavg's first three fields when the run started: the machine is shared.
    var loadAverage: String

    var line: String {
        "nproc \(nproc), \(cpuModel), Linux \(kernel), \(String(format: "%.0f", memoryGb)) GB, load average \(loadAverage) at start"
    }

    static func describe() -> Machine {
        let cpuinfo = (try? String(contentsOfFile: "/proc/cpuinfo", encoding: .utf8)) ?? ""
        let model = cpuinfo.split(separator: "\n").first { $0.hasPrefix("model name") }
            .flatMap { $0.split(separator: ":", maxSplits: 1).last }
            .map { $0.trimmingCharacters(in: .whitespaces) } ?? "unknown CPU"
        var name = utsname()
        uname(&name)
        let kernel = withUnsafeBytes(of: &name.release) { String(decoding: $0.prefix { $0 != 0 }, as: UTF8.self) }
        let meminfo = (try? String(contentsOfFile: "/proc/meminfo", encoding: .utf8)) ?? ""
        let totalKB = meminfo.split(separator: "\n").first { $0.hasPrefix("MemTotal:") }
            .flatMap { $0.split(separator: " ").dropFirst().first }.flatMap { Double($0) } ?? 0
        let load = ((try? String(contentsOfFile: "/proc/loadavg", encoding: .utf8)) ?? "")
            .split(separator: " ").prefix(3).joined(separator: " ")
        return Machine(nproc: ProcessInfo.processInfo.activeProcessorCount, cpuModel: model, kernel: kernel,
                       memoryGb: (totalKB / 1024 / 1024 * 10).rounded() / 10, loadAverage: load)
    }
}

enum Git {
    /// `<commit>` of the main package, with ` (+ uncommitted changes)` when
    /// its tracked files differ from it. Read-only: no index refresh.
    static func describe(repo: String) -> String {
        guard let commit = run(["-C", repo, "rev-parse", "HEAD"])?.trimmingCharacters(in: .whitespacesAndNewlines),
              !commit.isEmpty else { return "unknown (not a git checkout)" }
        let status = run(["--no-optional-locks", "-C", repo, "status", "--porcelain", "--untracked-files=no"]) ?? ""
        return status.trimmingCharacters(in: .whitespacesAndNewlines).isEmpty ? commit : commit + " (+ uncommitted changes)"
    }

    private static func run(_ arguments: [String]) -> String? {
        let process = Process()
        process.executableURL = URL(fileURLWithPath: "/usr/bin/env")
        process.arguments = ["git"] + arguments
        let pipe = Pipe()
        process.standardOutput = pipe
        process.standardError = FileHandle.nullDevice
        do { try process.run() } catch { return nil }
        let data = pipe.fileHandleForReading.readDataToEndOfFile()
        process.waitUntilExit()
        guard process.terminationStatus == 0 else { return nil }
        return String(decoding: data, as: UTF8.self)
    }
}

struct Report: Codable {
    var generatedAt: String
    var gitCommit: String
    var machine: Machine
    var fanoutd: String
    var concurrency: Int
    var payloadBytes: Int
    var results: [SizeResult]
    /// The bare-SQLite ceiling for each size, measured in the same run.
    var sqliteBaseline: [SQLiteBaselineResult]
    var llm: LLMResult?
    var gateway: GatewayResult?
    var workers: WorkerResult?
    var latency: LatencyResult?
    var durableEnqueue: DurableEnqueueResult?
    /// Run-through with 1, 2 and 3 daemons sharing one PostgreSQL database.
    var postgres: PostgresResult?
    /// Each figure the performance issue sets a target for, beside what this run measured.
    var targets: [TargetCheck] = []

    /// `20261130-014502-1d313d2.json`: when the figures were written (UTC) and the commit's short hash
    /// (`-dirty` when the tree had changes).
    static func fileName(commit: String, at date: Date = Date()) -> String {
        let formatter = DateFormatter()
        formatter.locale = Locale(identifier: "en_US_POSIX")
        formatter.timeZone = TimeZone(identifier: "UTC")
        formatter.dateFormat = "yyyyMMdd-HHmmss"
        let hash = commit.prefix { $0.isHexDigit }.prefix(7)
        return formatter.string(from: date) + "-" + (hash.isEmpty ? "unknown" : String(hash))
            + (commit.contains("uncommitted") ? "-dirty" : "") + ".json"
    }

    /// A path inside the repository as relative to it: the figures name the daemon, not this machine's folders.
    static func relative(_ path: String, to repo: String) -> String {
        let root = repo.hasSuffix("/") ? repo : repo + "/"
        return path.hasPrefix(root) ? String(path.dropFirst(root.count)) : path
    }

    func write(to path: String) throws {
        let url = URL(fileURLWithPath: path)
        try FileManager.default.createDirectory(at: url.deletingLastPathComponent(), withIntermediateDirectories: true)
        let encoder = JSONEncoder()
        encoder.keyEncodingStrategy = .convertToSnakeCase
        encoder.outputFormatting = [.prettyPrinted, .sortedKeys]
        try encoder.encode(self).write(to: url, options: .atomic)
    }

    func table() -> String {
        let header = ["tasks", "enqueue s", "enqueue tasks/s", "run-through s", "run-through tasks/s", "run s",
                      "peak RSS MB", "daemon CPU s", "GetBatch p50/p99 ms", "status"]
        var rows: [[String]] = []
        for result in results {
            func number(_ value: Double?, _ format: String) -> String { value.map { String(format: format, $0) } ?? "-" }
            let cpu = result.daemonUserCpuSeconds.map { $0 + (result.daemonSystemCpuSeconds ?? 0) }
            rows.append([
                String(result.tasks) + (result.followingSubscriber == true ? " + subscriber" : ""),
                number(result.enqueueSeconds, "%.2f"),
                number(result.enqueueTasksPerSecond, "%.0f"),
                number(result.runThroughSeconds, "%.2f"),
                number(result.runThroughTasksPerSecond, "%.0f"),
                number(result.runSeconds, "%.2f"),
                number(result.peakRssMb, "%.1f"),
                number(cpu, "%.1f"),
                number(result.probeP50Ms, "%.1f") + "/" + number(result.probeP99Ms, "%.1f"),
                result.status == "timeout" ? "timed out after \(Int(result.timeoutSeconds)) s" : result.status,
            ])
        }
        let widths = header.indices.map { column in ([header] + rows).map { $0[column].count }.max() ?? 0 }
        func line(_ cells: [String]) -> String {
            cells.enumerated().map { column, cell in
                let pad = String(repeating: " ", count: widths[column] - cell.count)
                return column == cells.count - 1 ? cell : pad + cell   // numbers right-aligned, status left
            }.joined(separator: "  ")
        }
        var lines = [
            "Fanout benchmark: one batch of zero-delay echo tasks (\(payloadBytes)-byte payloads) per size, fanoutd --concurrency \(concurrency)",
            "machine: \(machine.line)",
            "commit:  \(gitCommit)",
            "",
            line(header),
            widths.map { String(repeating: "-", count: $0) }.joined(separator: "  "),
        ]
        lines += rows.map(line)
        lines.append("")
        lines.append("enqueue: EnqueueBatch until answered after commit; run-through: enqueue start until batch_completed;")
        lines.append("run: answer until batch_completed; peak RSS: fanoutd's VmHWM after the batch completed.")
        lines.append("GetBatch: one call every 20 ms on a connection of its own during the run;")
        lines.append("+ subscriber: a second client follows every event of the daemon meanwhile (`fanout events --follow`).")
        if !sqliteBaseline.isEmpty {
            lines.append("")
            lines.append("Against bare SQLite (C API, fanoutd's schema and pragmas, same rows, same run): insert = the batches row and N task rows")
            lines.append("in one transaction; update = each row set completed with its result, \(SQLiteBaseline.rowsPerTransaction) rows per transaction.")
            for baseline in sqliteBaseline {
                guard baseline.status == "ok", let insert = baseline.bareInsertRowsPerSecond, let update = baseline.bareUpdateRowsPerSecond else {
                    lines.append("bare SQLite (\(baseline.tasks) rows): \(baseline.status): \(baseline.error ?? "")")
                    continue
                }
                lines.append(String(format: "bare SQLite (%d rows): insert %.0f rows/s, update %.0f rows/s", baseline.tasks, insert, update))
                for result in results where result.tasks == baseline.tasks {
                    guard let enqueue = result.enqueueToBareInsert, let runThrough = result.runThroughToBareUpdate else { continue }
                    lines.append(String(format: "  %@: enqueue %.2f× of a bare SQLite insert, run-through %.2f× of a bare SQLite update",
                                        String(result.tasks) + (result.followingSubscriber == true ? " + subscriber" : ""),
                                        enqueue, runThrough))
                }
            }
        }
        if let llm {
            lines.append("")
            if llm.status == "ok", let batch = llm.batchSeconds, let ceiling = llm.stubCeilingSeconds, let ratio = llm.ratio {
                lines.append(String(format: "LLM: %d chat completions, agent concurrency %d, stub answering after %d ms: "
                                    + "batch %.2f s (enqueue to batch_completed), stub ceiling %.2f s (bare HTTP loop, %d connections), "
                                    + "ratio %.2f (target <= %.1f)", llm.tasks, llm.concurrency, llm.stubDelayMs, batch, ceiling,
                                    llm.concurrency, ratio, llm.targetRatio))
            } else {
                lines.append("LLM: \(llm.status): \(llm.error ?? "")")
            }
        }
        if let gateway {
            if gateway.status == "ok", let seconds = gateway.gatewaySeconds, let cli = gateway.cliSeconds, let overhead = gateway.overhead {
                lines.append(String(format: "gateway: a %d-line Batch file against the stub: %.2f s through the HTTP gateway (upload, create, "
                                    + "poll, download), %.2f s with fanout submit --watch and fanout results; overhead %+.0f%% (target < %.0f%%)",
                                    gateway.lines, seconds, cli, overhead * 100, gateway.targetOverhead * 100))
            } else {
                lines.append("gateway: \(gateway.status): \(gateway.error ?? "")")
            }
        }
        if let postgres {
            lines.append(String(format: "PostgreSQL: %d zero-delay echo tasks enqueued through the first of N fanoutd sharing one database "
                                + "(--concurrency %d each), enqueue to batch_completed:", postgres.tasks, postgres.concurrencyPerDaemon))
            for run in postgres.runs {
                lines.append(run.status == "ok"
                    ? String(format: "  %d daemon(s): %.2f s, %.0f tasks/s; tasks run per daemon %@", run.daemons, run.seconds ?? 0,
                             run.tasksPerSecond ?? 0, (run.tasksPerDaemon ?? []).map(String.init).joined(separator: " / "))
                    : "  \(run.daemons) daemon(s): \(run.status): \(run.error ?? "")")
            }
            if postgres.runs.isEmpty { lines.append("  \(postgres.status): \(postgres.error ?? "")") }
        }
        if let workers {
            if workers.status == "ok", let seconds = workers.seconds, let rate = workers.tasksPerSecond,
               let p50 = workers.parentP50Ms, let p99 = workers.parentP99Ms {
                lines.append(String(format: "workers: %d zero-work tasks through %d `fanout worker` processes (%d slots each): %.2f s, "
                                    + "%.0f tasks/s (target >= %.0f); a parent spawning %d children and resuming: p50 %.1f ms, p99 %.1f ms "
                                    + "(%d parents, one at a time)", workers.tasks, workers.workers, workers.slotsPerWorker, seconds, rate,
                                    workers.targetTasksPerSecond, workers.childrenPerParent, p50, p99, workers.parents))
            } else {
                lines.append("workers: \(workers.status): \(workers.error ?? "")")
            }
        }
        for result in results {
            guard let download = result.results else { continue }
            lines.append(String(format: "results: `fanout results` of the %@-task batch to a file: %.2f s, %.0f results/s, %.0f MB written, "
                                + "CLI peak RSS %.1f MB", String(result.tasks), download.seconds, download.resultsPerSecond,
                                download.fileMb, download.cliPeakRssMb))
        }
        if let latency {
            if latency.status == "ok" {
                lines.append(String(format: "latency: enqueue → task_started, one task at a time (%d samples): idle p50 %.0f µs, p99 %.0f µs; "
                                    + "with %d tasks pending: p50 %.0f µs, p99 %.0f µs; fanoutd RSS %.1f MB (peak %.1f MB); "
                                    + "backlog enqueued in %.2f s", latency.samples, latency.idleP50Us ?? 0, latency.idleP99Us ?? 0,
                                    latency.backlogTasks, latency.backlogP50Us ?? 0, latency.backlogP99Us ?? 0,
                                    latency.backlogRssMb ?? 0, latency.backlogPeakRssMb ?? 0, latency.backlogEnqueueSeconds ?? 0))
            } else {
                lines.append("latency: \(latency.status): \(latency.error ?? "")")
            }
        }
        if let durableEnqueue {
            lines.append(durableEnqueue.status == "ok"
                ? String(format: "durability full: enqueue of %d tasks %.2f s, %.0f tasks/s", durableEnqueue.tasks,
                         durableEnqueue.seconds ?? 0, durableEnqueue.tasksPerSecond ?? 0)
                : "durability full: \(durableEnqueue.status): \(durableEnqueue.error ?? "")")
        }
        if !targets.isEmpty {
            lines.append("")
            lines.append("targets (issue 16, a 2-core machine):")
            let width = targets.map(\.figure.count).max() ?? 0
            for check in targets {
                let pad = String(repeating: " ", count: width - check.figure.count)
                lines.append("  \(check.figure)\(pad)  \(check.measuredText)  (target \(check.target))  \(check.verdict)")
            }
        }
        for result in results {
            if let note = result.note { lines.append("note (\(result.tasks) tasks): \(note)") }
            if result.status == "error", let error = result.error {
                lines.append("error (\(result.tasks) tasks): \(error.split(separator: "\n").first ?? "")")
            }
        }
        return lines.joined(separator: "\n")
    }
}

/// One target of the performance issue and what a run measured for it.
struct TargetCheck: Codable, Sendable {
    var figure: String
    var unit: String
    var target: String
    var measured: Double?
    var met: Bool?

    /// `atLeast`: a rate to reach; otherwise a bound not to exceed.
    init(_ figure: String, unit: String, measured: Double?, limit: Double, atLeast: Bool) {
        self.figure = figure
        self.unit = unit
        self.measured = measured
        target = (atLeast ? "≥ " : "≤ ") + Self.format(limit) + " " + unit
        met = measured.map { atLeast ? $0 >= limit : $0 <= limit }
    }

    var measuredText: String { measured.map { Self.format($0) + " " + unit } ?? "not measured" }
    var verdict: String { met.map { $0 ? "met" : "NOT MET" } ?? "" }

    private static func format(_ value: Double) -> String {
        value >= 1_000 ? String(format: "%.0f", value) : String(format: "%.3g", value)
    }
}
