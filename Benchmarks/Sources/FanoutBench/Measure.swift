import FanoutClient
import FanoutWire
import Foundation

#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#endif

/// The figures of one batch size, as written to results/latest.json.
struct SizeResult: Codable, Sendable {
    var tasks: Int
    /// ok, timeout or error
    var status: String
    var error: String?
    var timeoutSeconds: Double
    /// The echo agent's concurrency the daemon ran with.
    var echoAgentConcurrency: Int?
    /// Anything that makes this row differ from the intended set-up.
    var note: String?
    /// EnqueueBatch call until its answer (after the daemon's commit).
    var enqueueSeconds: Double?
    var enqueueTasksPerSecond: Double?
    /// Start of the enqueue until the batch_completed event.
    var runThroughSeconds: Double?
    var runThroughTasksPerSecond: Double?
    /// enqueueTasksPerSecond ÷ the bare SQLite insert's rows/s for this size (SQLiteBaseline).
    var enqueueToBareInsert: Double?
    /// runThroughTasksPerSecond ÷ the bare SQLite update's rows/s for this size.
    var runThroughToBareUpdate: Double?
    /// Enqueue answered until batch_completed.
    var runSeconds: Double?
    /// VmHWM of fanoutd after the batch completed.
    var peakRssMb: Double?
    /// Largest VmRSS seen by sampling every 100 ms from the enqueue on.
    var maxSampledRssMb: Double?
    var rssAtEnqueueAnswerMb: Double?
    var daemonUserCpuSeconds: Double?
    var daemonSystemCpuSeconds: Double?
    var daemonMaxThreads: Int?
    /// fanout.db plus its WAL at the end.
    var databaseMb: Double?
    /// `fanout results` of the finished batch to a file.
    var results: ResultsDownload?
    var completedTasks: Int?
    /// [seconds since the enqueue started, VmRSS MB], about one a second.
    var rssTimeline: [[Double]]?
    var daemonStop: String?
    /// Whether a second client followed every event of the daemon during the run.
    var followingSubscriber: Bool?
    var subscriberEvents: Int?
    /// Times the subscriber fell behind and resumed (lagged).
    var subscriberLags: Int?
    /// GetBatch on a third connection every 20 ms during the run: milliseconds per call.
    var probeCalls: Int?
    var probeP50Ms: Double?
    var probeP99Ms: Double?
    var probeMaxMs: Double?
}

struct BenchSettings: Sendable {
    var fanoutd: String
    var concurrency: Int
    var payloadBytes: Int
    /// Nil: 5 minutes, or 15 minutes per million tasks when that is more.
    var timeoutSeconds: Double?

    func timeout(for size: Int) -> Double {
        timeoutSeconds ?? max(300, 900 * Double(size) / 1_000_000)
    }
}

enum SizeRun {
    private enum Outcome: Sendable {
        case done(SizeResult)
        case failed(String, SizeResult?)
        case timedOut
    }

    static let owner = "bench"

    /// Starts a daemon, runs one batch of `size` echo tasks through it,
    /// stops the daemon and removes its folder, whatever happens.
    static func run(size: Int, settings: BenchSettings, followingSubscriber: Bool = false) async -> SizeResult {
        let timeout = settings.timeout(for: size)
        var result = SizeResult(tasks: size, status: "error", timeoutSeconds: timeout)
        let daemon: Daemon
        do {
            daemon = try await Daemon.start(executable: settings.fanoutd, concurrency: settings.concurrency,
                                            maxTasksPerBatch: max(size, 1_000_000))
            result.echoAgentConcurrency = settings.concurrency
        } catch let failure as DaemonStartFailure where failure.exited {
            // A daemon that refuses the config file's agents list still gets
            // measured, with its default echo agent; the result says so.
            do {
                daemon = try await Daemon.start(executable: settings.fanoutd, concurrency: settings.concurrency,
                                                maxTasksPerBatch: max(size, 1_000_000), agentsConfig: false)
            } catch {
                result.error = "\(failure)"
                return result
            }
            result.echoAgentConcurrency = 64
            result.note = "fanoutd refused the config file with the agents list (\(failure.firstErrorLine ?? "exited at start")); "
                + "measured without it: the default echo agent, concurrency 64"
        } catch {
            result.error = "\(error)"
            return result
        }
        let outcome: Outcome = await withTaskGroup(of: Outcome.self) { group in
            group.addTask {
                do {
                    return .done(try await measure(size: size, settings: settings, daemon: daemon, timeout: timeout,
                                                   followingSubscriber: followingSubscriber))
                } catch let failure as MeasureFailure {
                    return .failed(failure.message, failure.partial)
                } catch {
                    return .failed("\(error)", nil)
                }
            }
            group.addTask {
                do {
                    try await Task.sleep(for: .seconds(timeout))
                    return .timedOut
                } catch {
                    return .failed("cancelled", nil)
                }
            }
            let first = await group.next()!
            if case .timedOut = first {
                // Ending the daemon closes the socket, which ends the client's calls.
                result.daemonStop = await daemon.stop()
            }
            group.cancelAll()
            return first
        }
        let (echoConcurrency, note) = (result.echoAgentConcurrency, result.note)
        switch outcome {
        case .done(let measured):
            result = measured
            result.status = "ok"
        case .failed(let message, let partial):
            if let partial { result = partial }
            result.status = "error"
            result.error = message + "\n" + daemon.logTail()
        case .timedOut:
            result.status = "timeout"
            result.error = "no batch_completed within \(Int(timeout)) s; fanoutd stopped"
        }
        result.echoAgentConcurrency = echoConcurrency
        result.note = note
        let stop = await daemon.stop()
        if result.daemonStop == nil { result.daemonStop = stop }
        return result
    }

    private struct MeasureFailure: Error {
        var message: String
        var partial: SizeResult
    }

    private static func measure(size: Int, settings: BenchSettings, daemon: Daemon, timeout: Double,
                                followingSubscriber: Bool) async throws -> SizeResult {
        var result = SizeResult(tasks: size, status: "running", timeoutSeconds: timeout)
        result.followingSubscriber = followingSubscriber
        let tasks = makeTasks(count: size, payloadBytes: settings.payloadBytes)
        let client = try await FanoutClient.connect(socketPath: daemon.socketPath, clientName: "fanout-bench")
        var sampler: Task<MemorySampler.Summary, Never>?
        var subscriber: Task<(events: Int, lags: Int), Never>?
        var probe: Task<[Double], Never>?
        do {
            // Sequence numbers after this one belong to our batch (the daemon is fresh, but be exact).
            let since = try await client.serverInfo().lastSequence
            sampler = MemorySampler.run(pid: daemon.pid)
            if followingSubscriber { subscriber = try await Self.follow(socketPath: daemon.socketPath, since: since) }
            probe = try await Self.probe(socketPath: daemon.socketPath)
            let clock = ContinuousClock()

            let start = clock.now
            let batch = try await client.enqueueBatch(ownerID: owner, agent: "echo", tasks: tasks)
            let answered = clock.now
            let atAnswer = ProcStats.read(daemon.pid)

            let completion = try await awaitEnd(of: batch.id, client: client, since: since)
            let ended = clock.now

            sampler?.cancel()
            probe?.cancel()
            subscriber?.cancel()
            let samples = await sampler?.value ?? MemorySampler.Summary()
            let final = ProcStats.read(daemon.pid)
            let latencies = (await probe?.value ?? []).sorted()
            result.probeCalls = latencies.count
            if !latencies.isEmpty {
                result.probeP50Ms = latencies[latencies.count / 2]
                result.probeP99Ms = latencies[min(latencies.count - 1, latencies.count * 99 / 100)]
                result.probeMaxMs = latencies.last
            }
            if let followed = await subscriber?.value {
                result.subscriberEvents = followed.events
                result.subscriberLags = followed.lags
            }

            let enqueue = (answered - start).seconds
            let runThrough = (ended - start).seconds
            result.enqueueSeconds = enqueue
            result.enqueueTasksPerSecond = Double(size) / enqueue
            result.runThroughSeconds = runThrough
            result.runThroughTasksPerSecond = Double(size) / runThrough
            result.runSeconds = (ended - answered).seconds
            result.rssAtEnqueueAnswerMb = atAnswer.map { megabytes($0.vmRSS) }
            result.peakRssMb = final.map { megabytes($0.vmHWM) }
            result.maxSampledRssMb = megabytes(max(samples.maxRSS, final?.vmRSS ?? 0))
            result.daemonUserCpuSeconds = final?.userSeconds
            result.daemonSystemCpuSeconds = final?.systemSeconds
            result.daemonMaxThreads = max(samples.maxThreads, final?.threads ?? 0)
            result.rssTimeline = samples.timeline
            result.databaseMb = megabytes(fileKB(daemon.databasePath) + fileKB(daemon.databasePath + "-wal"))

            let info = try await client.batch(batch.id)
            result.completedTasks = Int(info.counts.completed)
            await client.close()
            let cli = URL(fileURLWithPath: settings.fanoutd).deletingLastPathComponent().appendingPathComponent("fanout").path
            let download = try await ResultsDownload.run(cli: cli, socket: daemon.socketPath, batchID: batch.id, directory: daemon.directory)
            result.results = download
            if download.lines != size {
                throw MeasureFailure(message: "fanout results wrote \(download.lines) lines for \(size) tasks", partial: result)
            }
            if completion.type != .batchCompleted {
                throw MeasureFailure(message: "the batch ended with \(completion.type), not batch_completed", partial: result)
            }
            if info.counts.completed != UInt32(size) {
                throw MeasureFailure(message: "batch_completed, but \(info.counts.completed) of \(size) tasks completed "
                                     + "(failed \(info.counts.failed), cancelled \(info.counts.cancelled))", partial: result)
            }
            return result
        } catch {
            sampler?.cancel()
            probe?.cancel()
            subscriber?.cancel()
            await client.close()
            throw error
        }
    }

    /// A client following every event from `since` on, as `fanout events --follow` does,
    /// resuming after a lag; returns how many it read.
    private static func follow(socketPath: String, since: UInt64) async throws -> Task<(events: Int, lags: Int), Never> {
        let client = try await FanoutClient.connect(socketPath: socketPath, clientName: "fanout-bench-subscriber")
        return Task {
            var count = 0
            var lags = 0
            var cursor = since
            while !Task.isCancelled {
                do {
                    for try await event in client.subscribe(since: cursor) {
                        count += 1
                        cursor = event.sequence
                    }
                } catch let error as FanoutClientError where error.lagged {
                    cursor = error.lastSequence
                    lags += 1
                } catch {
                    break
                }
            }
            await client.close()
            return (count, lags)
        }
    }

    /// GetBatch latencies (ms) on a connection of its own, one call every 20 ms, until cancelled.
    private static func probe(socketPath: String) async throws -> Task<[Double], Never> {
        let client = try await FanoutClient.connect(socketPath: socketPath, clientName: "fanout-bench-probe")
        return Task {
            var latencies: [Double] = []
            let clock = ContinuousClock()
            while !Task.isCancelled {
                let start = clock.now
                _ = try? await client.batch(1)  // the fresh daemon's only batch
                latencies.append((clock.now - start).seconds * 1000)
                try? await Task.sleep(for: .milliseconds(20))
            }
            await client.close()
            return latencies
        }
    }

    /// Waits for the batch's terminal event, replaying from `since` so an
    /// event published before the subscription started is not missed. A
    /// subscription cut off as lagged is resumed from its last sequence.
    static func awaitEnd(of batchID: UInt64, client: FanoutClient, since: UInt64) async throws -> Event {
        var since = since
        while true {
            do {
                let events = client.subscribe(ownerID: owner, eventTypes: [.batchCompleted, .batchFailed, .batchCancelled],
                                              batchID: batchID, since: since)
                for try await event in events {
                    since = max(since, event.sequence)
                    if event.batchID == batchID { return event }
                }
                throw BenchError("the subscription ended before the batch did")
            } catch let error as FanoutClientError where error.lagged {
                since = max(since, error.lastSequence)
            }
        }
    }

    /// Plain echo payloads with no options: `{"n":123,"pad":"xxxx…"}`,
    /// padded to exactly `payloadBytes`.
    static func makeTasks(count: Int, payloadBytes: Int) -> [TaskSpec] {
        var tasks: [TaskSpec] = []
        tasks.reserveCapacity(count)
        for index in 0..<count {
            var payload = Array("{\"n\":\(index),\"pad\":\"".utf8)
            let padding = max(0, payloadBytes - payload.count - 2)
            payload.append(contentsOf: repeatElement(UInt8(ascii: "x"), count: padding))
            payload.append(contentsOf: Array("\"}".utf8))
            tasks.append(TaskSpec(customID: "t\(index)", payload: payload))
        }
        return tasks
    }

    private static func megabytes(_ kilobytes: Int) -> Double { Double(kilobytes) / 1024 }

    private static func fileKB(_ path: String) -> Int {
        var info = stat()
        guard stat(path, &info) == 0 else { return 0 }
        return Int(info.st_size) / 1024
    }
}
