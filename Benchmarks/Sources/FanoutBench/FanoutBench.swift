import Foundation

#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#endif

/// Throughput and memory of a real `fanoutd`: for each size, a fresh daemon
/// on a temporary socket and database, one batch of zero-delay echo tasks
/// enqueued through FanoutClient, run to `batch_completed`.
///
///     fanout-bench [--sizes 100000,1000000] [--fanoutd PATH] [--repo DIR]
///                  [--output FILE] [--concurrency N] [--payload-bytes N]
///                  [--timeout SECONDS] [--commit TEXT]
///
/// Prints one table on stdout and writes the figures as JSON to `--output`.
/// Exits 1 when a size timed out or failed (its row says which).
@main
struct FanoutBench {
    static let usage = """
    usage: fanout-bench [options]
      --sizes LIST          batch sizes, comma- or space-separated; k and M suffixes allowed
                            (default: $SIZES, else 100000,1000000)
      --subscriber-sizes LIST  sizes run twice, alone and with one client following every event
                            (default: $SUBSCRIBER_SIZES, else 50000; "none" for none)
      --fanoutd PATH        the daemon to measure (default: REPO/.build/release/fanoutd)
      --repo DIR            the main package, for the default daemon and the git commit
                            (default: the current folder's parent if it holds Benchmarks/, else the current folder)
      --output FILE         JSON results (default: REPO/Benchmarks/results/DATE-COMMIT.json, and latest.json)
      --concurrency N       fanoutd --concurrency and the echo agent's concurrency (default 256)
      --payload-bytes N     bytes per task payload (default 200)
      --timeout SECONDS     per size (default: 300 s, or 900 s per million tasks if more)
      --commit TEXT         what to report as the commit (default: REPO's HEAD, marked when the tree has changes)
      --llm-tasks N         chat-completion tasks for the LLM row, against a stub answering after 20 ms (default 2000; 0: skip)
      --gateway-lines N     lines of the Batch file run through the HTTP gateway and through `fanout submit` (default 2000; 0: skip)
      --stub PATH           the OpenAI stub server (default: fanout-openai-stub next to fanoutd)
      --worker-tasks N      zero-work tasks through 4 `fanout worker` processes, plus the spawn latency (default 100000; 0: skip)
      --latency-samples N   single tasks timed from enqueue to task_started, idle and under the backlog (default 1000; 0: skip)
      --backlog N           pending tasks held while the second latency series runs; fanoutd's RSS is read then (default 1000000)
      --durable-tasks N     tasks enqueued with --durability full (default 100000; 0: skip)
      --postgres-tasks N    zero-delay echo tasks through 1, 2 and 3 daemons on one PostgreSQL it starts (default 20000; 0: skip);
                            each run checks in the database that every task ran once and the counters are right
      --postgres-daemons L  the daemon counts of those runs (default "1 2 3")
    """

    static func main() async {
        let options: Options
        do {
            options = try Options.parse(Array(CommandLine.arguments.dropFirst()))
        } catch {
            FileHandle.standardError.write(Data("fanout-bench: \(error)\n\(usage)\n".utf8))
            exit(2)
        }
        LiveDaemons.shared.installSignalHandlers()
        signal(SIGPIPE, SIG_IGN)

        let machine = Machine.describe()
        let commit = options.commit ?? Git.describe(repo: options.repo)
        let settings = BenchSettings(fanoutd: options.fanoutd, concurrency: options.concurrency,
                                     payloadBytes: options.payloadBytes, timeoutSeconds: options.timeoutSeconds)
        log("fanoutd: \(options.fanoutd)")
        log("machine: \(machine.line)")
        log("commit:  \(commit)")

        var results: [SizeResult] = []
        // Each subscriber size runs twice: alone, then with one client following every event.
        let runs = options.sizes.map { ($0, false) } + options.subscriberSizes.flatMap { [($0, false), ($0, true)] }
        var baselines: [SQLiteBaselineResult] = []
        for (size, following) in runs {
            if !baselines.contains(where: { $0.tasks == size }) {
                log("\(size) rows: bare SQLite insert and update through the C API, fanoutd's schema and pragmas...")
                let baseline = await SQLiteBaseline.run(size: size, settings: settings)
                log(baseline.status == "ok"
                    ? String(format: "%d rows: bare insert %.2f s (%.0f rows/s), bare update %.2f s (%.0f rows/s, %d per transaction)",
                             size, baseline.bareInsertSeconds ?? 0, baseline.bareInsertRowsPerSecond ?? 0, baseline.bareUpdateSeconds ?? 0,
                             baseline.bareUpdateRowsPerSecond ?? 0, baseline.updateRowsPerTransaction)
                    : "\(size) rows: bare SQLite baseline: \(baseline.error ?? "error")")
                baselines.append(baseline)
            }
            let label = following ? "\(size) tasks with a following subscriber" : "\(size) tasks"
            log("\(label): starting fanoutd, enqueueing, running to batch_completed (timeout \(Int(settings.timeout(for: size))) s)...")
            var result = await SizeRun.run(size: size, settings: settings, followingSubscriber: following)
            if let baseline = baselines.first(where: { $0.tasks == size && $0.status == "ok" }) {
                result.enqueueToBareInsert = result.enqueueTasksPerSecond.flatMap { rate in baseline.bareInsertRowsPerSecond.map { rate / $0 } }
                result.runThroughToBareUpdate = result.runThroughTasksPerSecond.flatMap { rate in baseline.bareUpdateRowsPerSecond.map { rate / $0 } }
            }
            while LiveDaemons.shared.interrupted {
                try? await Task.sleep(for: .seconds(1))   // the signal handler is stopping the daemon and exits
            }
            switch result.status {
            case "ok":
                log(String(format: "%@: enqueue %.2f s, run-through %.2f s, peak RSS %.1f MB, GetBatch p99 %.1f ms",
                           label, result.enqueueSeconds ?? 0, result.runThroughSeconds ?? 0, result.peakRssMb ?? 0,
                           result.probeP99Ms ?? 0))
            default:
                log("\(label): \(result.status): \(result.error ?? "")")
            }
            results.append(result)
        }

        var llm: LLMResult?
        if options.llmTasks > 0 {
            log("LLM: \(options.llmTasks) chat completions, agent concurrency 100, stub answering after 20 ms...")
            let result = await LLMRun.run(tasks: options.llmTasks, concurrency: 100, stubDelayMs: 20, stub: options.stub,
                                          fanoutd: options.fanoutd)
            log(result.status == "ok"
                ? String(format: "LLM: batch %.2f s, stub ceiling %.2f s, ratio %.2f", result.batchSeconds ?? 0,
                         result.stubCeilingSeconds ?? 0, result.ratio ?? 0)
                : "LLM: \(result.status): \(result.error ?? "")")
            llm = result
        }
        var gateway: GatewayResult?
        if options.gatewayLines > 0 {
            log("gateway: a \(options.gatewayLines)-line Batch file through the HTTP gateway and through `fanout submit`...")
            let result = await GatewayRun.run(lines: options.gatewayLines, concurrency: 100, stubDelayMs: 20, stub: options.stub,
                                              fanoutd: options.fanoutd)
            log(result.status == "ok"
                ? String(format: "gateway: %.2f s, fanout submit: %.2f s, overhead %+.0f%%", result.gatewaySeconds ?? 0,
                         result.cliSeconds ?? 0, (result.overhead ?? 0) * 100)
                : "gateway: \(result.status): \(result.error ?? "")")
            gateway = result
        }

        var workers: WorkerResult?
        if options.workerTasks > 0 {
            log("workers: \(options.workerTasks) zero-work tasks through 4 `fanout worker` processes, then 100 parents spawning 20 children...")
            let result = await WorkerRun.run(tasks: options.workerTasks, workers: 4, slotsPerWorker: 64, parents: 100,
                                             childrenPerParent: 20, fanoutd: options.fanoutd)
            log(result.status == "ok"
                ? String(format: "workers: %.2f s, %.0f tasks/s; parent with 20 children p50 %.1f ms, p99 %.1f ms", result.seconds ?? 0,
                         result.tasksPerSecond ?? 0, result.parentP50Ms ?? 0, result.parentP99Ms ?? 0)
                : "workers: \(result.status): \(result.error ?? "")")
            workers = result
        }

        var latency: LatencyResult?
        if options.latencySamples > 0 {
            log("latency: enqueue → task_started, \(options.latencySamples) tasks one at a time, idle, then with \(options.backlog) tasks pending...")
            let result = await LatencyRun.run(samples: options.latencySamples, backlog: options.backlog,
                                              payloadBytes: options.payloadBytes, fanoutd: options.fanoutd)
            log(result.status == "ok"
                ? String(format: "latency: idle p50 %.0f µs, p99 %.0f µs; backlog p50 %.0f µs, p99 %.0f µs, RSS %.1f MB",
                         result.idleP50Us ?? 0, result.idleP99Us ?? 0, result.backlogP50Us ?? 0, result.backlogP99Us ?? 0,
                         result.backlogRssMb ?? 0)
                : "latency: \(result.status): \(result.error ?? "")")
            latency = result
        }
        var durable: DurableEnqueueResult?
        if options.durableTasks > 0 {
            log("durability full: enqueue of \(options.durableTasks) tasks with an fsync at every commit...")
            let result = await DurableEnqueueRun.run(tasks: options.durableTasks, payloadBytes: options.payloadBytes,
                                                     fanoutd: options.fanoutd)
            log(result.status == "ok" ? String(format: "durability full: %.0f tasks/s", result.tasksPerSecond ?? 0)
                                      : "durability full: \(result.status): \(result.error ?? "")")
            durable = result
        }

        var postgres: PostgresResult?
        if options.postgresTasks > 0 {
            let counts = options.postgresDaemons.map(String.init).joined(separator: ", ")
            log("PostgreSQL: \(options.postgresTasks) zero-delay echo tasks through \(counts) daemon(s) sharing one database...")
            let result = await PostgresRun.run(tasks: options.postgresTasks, daemonCounts: options.postgresDaemons, concurrency: 64,
                                               fanoutd: options.fanoutd)
            for run in result.runs {
                log(run.status == "ok"
                    ? String(format: "PostgreSQL, %d daemon(s): %.2f s, %.0f tasks/s, per daemon %@", run.daemons, run.seconds ?? 0,
                             run.tasksPerSecond ?? 0, (run.tasksPerDaemon ?? []).map(String.init).joined(separator: "/"))
                    : "PostgreSQL, \(run.daemons) daemon(s): \(run.status): \(run.error ?? "")")
            }
            if result.runs.isEmpty { log("PostgreSQL: \(result.status): \(result.error ?? "")") }
            postgres = result
        }

        var report = Report(generatedAt: ISO8601DateFormatter().string(from: Date()), gitCommit: commit,
                            machine: machine, fanoutd: Report.relative(options.fanoutd, to: options.repo),
                            concurrency: options.concurrency,
                            payloadBytes: options.payloadBytes, results: results, sqliteBaseline: baselines, llm: llm, gateway: gateway,
                            workers: workers, latency: latency, durableEnqueue: durable, postgres: postgres)
        report.targets = Targets.checks(report)
        print(report.table())
        do {
            // One file per run, named by its time and commit, so a regression shows beside earlier runs.
            let paths = options.output.map { [$0] } ?? [
                options.repo + "/Benchmarks/results/" + Report.fileName(commit: commit),
                options.repo + "/Benchmarks/results/latest.json",
            ]
            for path in paths { try report.write(to: path) }
            log("figures written to \(paths.joined(separator: " and "))")
        } catch {
            log("cannot write the figures: \(error)")
            exit(1)
        }
        let extrasOK = (llm.map { $0.status == "ok" } ?? true) && (gateway.map { $0.status == "ok" } ?? true)
            && (workers.map { $0.status == "ok" } ?? true) && (latency.map { $0.status == "ok" } ?? true)
            && (durable.map { $0.status == "ok" } ?? true) && (postgres.map { $0.status == "ok" } ?? true)
        exit(results.allSatisfy { $0.status == "ok" } && baselines.allSatisfy { $0.status == "ok" } && extrasOK ? 0 : 1)
    }

    static func log(_ message: String) {
        FileHandle.standardError.write(Data("fanout-bench: \(message)\n".utf8))
    }
}

struct Options {
    var sizes = [100_000, 1_000_000]
    var subscriberSizes = [50_000]
    var repo: String
    var fanoutd: String
    var output: String?
    var concurrency = 256
    var payloadBytes = 200
    var timeoutSeconds: Double?
    var commit: String?
    var llmTasks = 2_000
    var gatewayLines = 2_000
    var workerTasks = 100_000
    var latencySamples = 1_000
    var backlog = 1_000_000
    var durableTasks = 100_000
    var postgresTasks = 20_000
    var postgresDaemons = [1, 2, 3]
    var stub = ""

    static func parse(_ arguments: [String]) throws -> Options {
        let current = FileManager.default.currentDirectoryPath
        var repo: String? = nil
        var fanoutd: String? = nil
        var output: String? = nil
        var sizes: [Int]? = nil
        var subscriberSizes: [Int]? = nil
        var options = Options(repo: "", fanoutd: "")
        var index = 0
        func value() throws -> String {
            index += 1
            guard index < arguments.count else { throw BenchError("\(arguments[index - 1]) needs a value") }
            return arguments[index]
        }
        while index < arguments.count {
            switch arguments[index] {
            case "--sizes": sizes = try parseSizes(value())
            case "--subscriber-sizes":
                let text = try value()
                subscriberSizes = text == "none" ? [] : try parseSizes(text)
            case "--repo": repo = try value()
            case "--fanoutd": fanoutd = try value()
            case "--output": output = try value()
            case "--commit": options.commit = try value()
            case "--concurrency": options.concurrency = try positive(value(), "--concurrency")
            case "--payload-bytes": options.payloadBytes = try positive(value(), "--payload-bytes")
            case "--timeout":
                let text = try value()
                guard let seconds = Double(text), seconds > 0 else { throw BenchError("--timeout: not a positive number: \(text)") }
                options.timeoutSeconds = seconds
            case "--llm-tasks":
                let text = try value()
                guard let count = Int(text), count >= 0 else { throw BenchError("--llm-tasks: not a count: \(text)") }
                options.llmTasks = count
            case "--stub": options.stub = try value()
            case "--worker-tasks":
                let text = try value()
                guard let count = Int(text), count >= 0 else { throw BenchError("--worker-tasks: not a count: \(text)") }
                options.workerTasks = count
            case "--latency-samples": options.latencySamples = try count(value(), "--latency-samples")
            case "--backlog": options.backlog = try count(value(), "--backlog")
            case "--durable-tasks": options.durableTasks = try count(value(), "--durable-tasks")
            case "--postgres-tasks": options.postgresTasks = try count(value(), "--postgres-tasks")
            case "--postgres-daemons": options.postgresDaemons = try parseSizes(value())
            case "--gateway-lines":
                let text = try value()
                guard let count = Int(text), count >= 0 else { throw BenchError("--gateway-lines: not a count: \(text)") }
                options.gatewayLines = count
            case "-h", "--help":
                print(FanoutBench.usage)
                exit(0)
            default:
                throw BenchError("unknown argument \(arguments[index])")
            }
            index += 1
        }
        if sizes == nil, let environment = ProcessInfo.processInfo.environment["SIZES"], !environment.isEmpty {
            sizes = try parseSizes(environment)
        }
        if let sizes { options.sizes = sizes }
        if subscriberSizes == nil, let environment = ProcessInfo.processInfo.environment["SUBSCRIBER_SIZES"], !environment.isEmpty {
            subscriberSizes = environment == "none" ? [] : try parseSizes(environment)
        }
        if let subscriberSizes { options.subscriberSizes = subscriberSizes }
        let root = repo ?? (current.hasSuffix("/Benchmarks") ? String(current.dropLast("/Benchmarks".count)) : current)
        options.repo = root
        options.fanoutd = fanoutd ?? root + "/.build/release/fanoutd"
        options.output = output
        if options.stub.isEmpty {
            options.stub = URL(fileURLWithPath: options.fanoutd).deletingLastPathComponent().appendingPathComponent("fanout-openai-stub").path
        }
        return options
    }

    static func parseSizes(_ text: String) throws -> [Int] {
        let words = text.split(whereSeparator: { $0 == "," || $0 == " " })
        let sizes = try words.map { word -> Int in
            var digits = word.lowercased()
            var scale = 1
            if digits.hasSuffix("k") { scale = 1_000; digits.removeLast() }
            else if digits.hasSuffix("m") { scale = 1_000_000; digits.removeLast() }
            guard let number = Int(digits.replacingOccurrences(of: "_", with: "")), number > 0 else {
                throw BenchError("not a batch size: \(word)")
            }
            return number * scale
        }
        guard !sizes.isEmpty else { throw BenchError("no sizes given") }
        return sizes
    }

    static func count(_ text: String, _ name: String) throws -> Int {
        guard let number = Int(text.replacingOccurrences(of: "_", with: "")), number >= 0 else {
            throw BenchError("\(name): not a count: \(text)")
        }
        return number
    }

    static func positive(_ text: String, _ name: String) throws -> Int {
        guard let number = Int(text), number > 0 else { throw BenchError("\(name): not a positive number: \(text)") }
        return number
    }
}
