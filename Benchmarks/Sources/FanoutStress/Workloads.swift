import FanoutClient
import FanoutWire
import Foundation
import NIOCore
import NIOPosix

enum Workloads {
    /// SIGKILL at random moments, 2 to 6 s apart; a crash the harness did not cause is noticed within 200 ms.
    static func killer(_ supervisor: Supervisor, until: ContinuousClock.Instant) async {
        var nextKill = ContinuousClock.now + .milliseconds(Int.random(in: 2_000...6_000))
        while ContinuousClock.now < until {
            try? await Task.sleep(for: .milliseconds(200))
            do {
                try await supervisor.checkAlive()
                if ContinuousClock.now >= nextKill {
                    try await supervisor.killAndRestart()
                    nextKill = ContinuousClock.now + .milliseconds(Int.random(in: 2_000...6_000))
                }
            } catch {
                log("restart failed: \(error)")
            }
        }
    }

    /// Batches of 40 short echo tasks, one every 50 ms; a batch counts once its EnqueueBatch was answered.
    static func producer(_ supervisor: Supervisor, _ tally: Tally, until: ContinuousClock.Instant) async {
        await produce(supervisor, tally, until: until, agent: "echo", every: .milliseconds(50)) { number in
            (0..<40).map { TaskSpec(customID: "b\(number)-t\($0)", payload: Array(#"{"delay_ms":5}"#.utf8)) }
        }
    }

    /// Enqueues `tasks(n)` for `agent` every `every`, connecting again after each kill.
    static func produce(_ supervisor: Supervisor, _ tally: Tally, until: ContinuousClock.Instant, agent: String,
                        every: Duration, tasks: (Int) -> [TaskSpec]) async {
        var number = 0
        while ContinuousClock.now < until {
            guard let client = try? await FanoutClient.connect(socketPath: supervisor.socketPath, clientName: "stress-\(agent)-producer") else {
                try? await Task.sleep(for: .milliseconds(100))
                continue
            }
            while ContinuousClock.now < until {
                number += 1
                let tasks = tasks(number)
                do {
                    let batch = try await client.enqueueBatch(ownerID: "stress", agent: agent, tasks: tasks)
                    tally.update {
                        $0.batches[batch.id] = tasks.count
                        $0.acknowledgedTasks += tasks.count
                    }
                    try await Task.sleep(for: every)
                } catch {
                    break  // the daemon was killed: connect again
                }
            }
            await client.close()
        }
    }

    /// Follows every event, resuming from the last sequence after a lag or a restart.
    static func subscriber(_ supervisor: Supervisor, _ tally: Tally, until: ContinuousClock.Instant) async {
        var cursor: UInt64 = 0
        while ContinuousClock.now < until && !Task.isCancelled {
            guard let client = try? await FanoutClient.connect(socketPath: supervisor.socketPath, clientName: "stress-subscriber") else {
                try? await Task.sleep(for: .milliseconds(100))
                continue
            }
            do {
                for try await event in client.subscribe(since: cursor) {
                    tally.update { counts in
                        counts.subscriberEvents += 1
                        if event.sequence <= cursor { counts.subscriberOutOfOrder += 1 }
                        if event.type == .taskCompleted && !counts.completedTasks.insert(event.taskID).inserted {
                            counts.duplicatedResults += 1
                        }
                    }
                    cursor = max(cursor, event.sequence)
                    if ContinuousClock.now >= until { break }
                }
            } catch let error as FanoutClientError where error.code == .outOfRange {
                cursor = error.lastSequence  // retention removed events we had not read: accept the gap
            } catch {
                // lagged, or the daemon went away: resume from the cursor
            }
            tally.update { $0.subscriberResumes += 1 }
            await client.close()
        }
    }

    /// Connections sending valid frames with random bytes changed, cut short or with absurd lengths.
    static func fuzzer(_ supervisor: Supervisor, _ tally: Tally, until: ContinuousClock.Instant) async {
        var random = SystemRandomNumberGenerator()
        let templates = FrameTemplates.make()
        while ContinuousClock.now < until {
            do {
                let channel = try await rawConnection(to: supervisor)
                try await channel.executeThenClose { inbound, outbound in
                    // Whatever the daemon answers is read and dropped, so it is never blocked on us.
                    let drain = Task { for try await _ in inbound {} }
                    defer { drain.cancel() }
                    try await outbound.write(ByteBuffer(bytes: templates.hello))
                    for _ in 0..<40 {
                        let frame = FrameTemplates.mutate(templates.frames.randomElement(using: &random)!, using: &random)
                        try await outbound.write(ByteBuffer(bytes: frame))
                        tally.update { $0.framesFuzzed += 1 }
                    }
                    try? await Task.sleep(for: .milliseconds(20))
                }
            } catch {
                try? await Task.sleep(for: .milliseconds(20))
            }
        }
    }

    /// A connection that carries bytes as they are, for frames a client library would never send.
    static func rawConnection(to supervisor: Supervisor) async throws -> NIOAsyncChannel<ByteBuffer, ByteBuffer> {
        try await ClientBootstrap(group: MultiThreadedEventLoopGroup.singleton)
            .connect(unixDomainSocketPath: supervisor.socketPath) { channel in
                channel.eventLoop.makeCompletedFuture { try NIOAsyncChannel<ByteBuffer, ByteBuffer>(wrappingChannelSynchronously: channel) }
            }
    }

    /// Every 15 s, 1,000 clients connect at once, each asks ServerInfo, and all close.
    static func connectionRounds(_ supervisor: Supervisor, _ tally: Tally, until: ContinuousClock.Instant) async {
        while ContinuousClock.now < until {
            let failures = await withTaskGroup(of: Bool.self) { group -> Int in
                for index in 0..<1_000 {
                    group.addTask {
                        do {
                            let client = try await FanoutClient.connect(socketPath: supervisor.socketPath, clientName: "stress-\(index)")
                            defer { Task { await client.close() } }
                            _ = try await client.serverInfo()
                            return true
                        } catch {
                            return false
                        }
                    }
                }
                var failed = 0
                for await ok in group where !ok { failed += 1 }
                return failed
            }
            tally.update {
                $0.connectionRounds += 1
                $0.connectionFailures += failures
            }
            try? await Task.sleep(for: .seconds(15))
        }
    }

    /// After the storm: every acknowledged batch must complete with every task completed.
    /// Returns the tasks lost (in batches missing or not completed within 5 minutes).
    static func verify(_ supervisor: Supervisor, _ tally: Tally) async -> Int {
        let batches = tally.snapshot.batches
        let deadline = ContinuousClock.now + .seconds(300)
        var lost = 0
        var remaining = batches
        while !remaining.isEmpty && ContinuousClock.now < deadline {
            guard let client = try? await FanoutClient.connect(socketPath: supervisor.socketPath, clientName: "stress-verify") else {
                try? await Task.sleep(for: .milliseconds(200))
                continue
            }
            for (id, count) in remaining {
                guard let info = try? await client.batch(id) else { continue }
                if info.status == .completed {
                    if info.counts.completed != UInt32(count) {
                        lost += count - Int(info.counts.completed)
                        log("batch \(id): \(info.counts.completed) of \(count) completed (\(info.counts))")
                    }
                    remaining[id] = nil
                } else if info.status.isTerminal {
                    lost += count - Int(info.counts.completed)
                    log("batch \(id) ended \(info.status)")
                    remaining[id] = nil
                }
            }
            await client.close()
            if !remaining.isEmpty { try? await Task.sleep(for: .milliseconds(500)) }
        }
        for (id, count) in remaining {
            log("batch \(id) did not complete")
            lost += count
        }
        return lost
    }
}

extension BatchStatus {
    var isTerminal: Bool { self == .completed || self == .cancelled || self == .failed }
}

/// Valid frames to start mutations from, one per request type.
struct FrameTemplates {
    var hello: [UInt8]
    var frames: [[UInt8]]

    /// A frame as it goes on the socket: length, then body.
    static func framed(_ frame: Frame) -> [UInt8] {
        var buffer = ByteBuffer()
        try? FrameCoding.encodeFramed(frame, into: &buffer)
        return Array(buffer.readableBytesView)
    }

    static func make() -> FrameTemplates {
        let tasks = [TaskSpec(customID: "f", payload: Array(#"{"turns":2}"#.utf8), priority: 3, maxAttempts: 2, timeoutMs: 1_000)]
        let requests: [Request] = [
            .enqueueBatch(EnqueueBatchRequest(ownerID: "fuzz", agent: "echo", metadata: ["k": "v"], priority: 1,
                                              completionWindowMs: 60_000, tasks: tasks)),
            .enqueueTask(EnqueueTaskRequest(ownerID: "fuzz", task: TaskSpec(customID: "one", agent: "echo", payload: [1]))),
            .getBatch(batchID: 1), .listBatches(ListBatchesRequest(ownerID: "fuzz", limit: 5)),
            .getTask(GetTaskRequest(taskID: 1, includePayload: true)), .getResults(GetResultsRequest(batchID: 1, pageSize: 10)),
            .cancelTask(taskID: 3), .retryFailed(RetryFailedRequest(batchID: 1)),
            .subscribe(SubscribeRequest(ownerID: "fuzz", since: 0, follow: false)), .serverInfo,
        ]
        return FrameTemplates(
            hello: framed(Frame(streamID: 0, kind: .request(.hello(Hello(clientName: "stress-fuzz"))))),
            frames: requests.enumerated().map { framed(Frame(streamID: UInt32(2 * $0.offset + 1), kind: .request($0.element))) })
    }

    /// One of: bytes flipped, the frame cut short, the length header replaced, or left as it is.
    static func mutate(_ frame: [UInt8], using random: inout SystemRandomNumberGenerator) -> [UInt8] {
        var bytes = frame
        switch Int.random(in: 0..<4, using: &random) {
        case 0:
            for _ in 0..<Int.random(in: 1...4, using: &random) {
                let index = Int.random(in: 4..<bytes.count, using: &random)
                bytes[index] = UInt8.random(in: 0...255, using: &random)
            }
        case 1:
            bytes = Array(bytes.prefix(Int.random(in: 1..<bytes.count, using: &random)))
        case 2:
            let length = UInt32.random(in: 0...UInt32.max, using: &random)
            bytes.replaceSubrange(0..<4, with: [UInt8(length >> 24), UInt8(length >> 16 & 0xff), UInt8(length >> 8 & 0xff), UInt8(length & 0xff)])
        default:
            break
        }
        return bytes
    }
}
