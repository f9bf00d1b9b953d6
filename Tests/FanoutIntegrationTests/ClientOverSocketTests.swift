#if canImport(Glibc)
import FanoutTestSupport
import Glibc
#elseif canImport(Musl)
import Musl
#elseif canImport(Darwin)
import Darwin
#endif
import FanoutClient
import FanoutScheduler
import FanoutServer
import FanoutWire
import Foundation
import Testing

/// The in-process daemon through its real socket, driven with `FanoutClient`.
@Suite(.postgresServer) struct ClientOverSocketTests {
    // MARK: 1. Multiplexing

    @Test(arguments: StoreKind.allCases) func manyConcurrentCallsShareOneConnectionWithAnOpenSubscription(on kind: StoreKind) async throws {
        try await withTestDaemon(on: kind) { daemon in
            try await withClient(daemon.socketPath) { client in
                try await withDeadline(.seconds(20)) {
                    let first = try await client.enqueueBatch(
                        ownerID: "multi", agent: "echo",
                        tasks: (0..<10).map { TaskSpec(customID: "a\($0)", payload: Array("{}".utf8)) })

                    // A follow subscription on the same client, for the whole owner, held open throughout.
                    let (opened, openedContinuation) = AsyncStream.makeStream(of: Void.self)
                    let subscription = Task {
                        var completed = Set<UInt64>()
                        for try await event in client.subscribe(ownerID: "multi") {
                            openedContinuation.yield()
                            if event.type == .batchCompleted { completed.insert(event.batchID) }
                            if completed.count == 2 { break }
                        }
                        return completed
                    }
                    for await _ in opened { break }  // the subscription is live on the daemon

                    // Rounds of 100 calls at once on the same connection.
                    for round in 0..<3 {
                        let outcomes = try await Self.burst(of: 100, on: client, batchID: first.id, round: round)
                        #expect(outcomes.count == 100)
                        #expect(outcomes.allSatisfy { $0 == "ok" }, "round \(round): \(outcomes.filter { $0 != "ok" })")
                    }

                    // The subscription survived the burst and still delivers live events.
                    let second = try await client.enqueueBatch(
                        ownerID: "multi", agent: "echo", tasks: [TaskSpec(customID: "b0", payload: Array("{}".utf8))])
                    let completed = try await subscription.value
                    #expect(completed == [first.id, second.id])
                }
            }
        }
    }

    /// `count` concurrent calls on one client (reads, server info,
    /// enqueues); each returns "ok" or what was wrong.
    private static func burst(of count: Int, on client: FanoutClient, batchID: UInt64, round: Int) async throws -> [String] {
        @Sendable func call(_ index: Int) async throws -> String {
            switch index % 3 {
            case 0:
                let batch = try await client.batch(batchID)
                return batch.id == batchID ? "ok" : "wrong batch \(batch.id)"
            case 1:
                let info = try await client.serverInfo()
                return info.protocolVersion == 1 ? "ok" : "wrong info \(info)"
            default:
                let customID = "s\(round)-\(index)"
                let task = try await client.enqueueTask(
                    ownerID: "multi-single", task: TaskSpec(customID: customID, agent: "echo", payload: Array("x".utf8)))
                return task.customID == customID ? "ok" : "wrong task \(task.customID)"
            }
        }
        return try await withThrowingTaskGroup(of: String.self) { group in
            for index in 0..<count {
                group.addTask {
                    do {
                        return try await call(index)
                    } catch {
                        return "call \(index): \(error)"
                    }
                }
            }
            var outcomes: [String] = []
            for try await outcome in group { outcomes.append(outcome) }
            return outcomes
        }
    }

    // MARK: 2. Chunked enqueue and paged results under a small frame limit

    @Test(arguments: StoreKind.allCases) func chunkedEnqueueAndPagedResultsUnderSmallFrameLimit(on kind: StoreKind) async throws {
        let maxFrame = 64 * 1024
        try await withTestDaemon(on: kind, configure: { $0.maxFrameBytes = maxFrame }) { daemon in
            // The client refuses any frame above the daemon's limit too.
            try await withClient(daemon.socketPath, maxFrameBytes: maxFrame) { client in
                #expect(client.welcome.maxFrameBytes == UInt32(maxFrame))
                try await withDeadline(.seconds(40)) {
                    let count = 5_000
                    let payload = Array(String(repeating: "p", count: 100).utf8)
                    let tasks = (0..<count).map { TaskSpec(customID: "row-\($0)", payload: payload) }
                    let batch = try await client.enqueueBatch(ownerID: "chunked", agent: "echo", tasks: tasks)
                    #expect(batch.counts.total == UInt32(count))
                    // One batch, not one per chunk.
                    let listed = try await client.batches(ownerID: "chunked")
                    #expect(listed.batches.map(\.id) == [batch.id])

                    let seen = try await events(of: batch.id, owner: "chunked", on: client)
                    #expect(seen.last?.type == .batchCompleted)
                    #expect(seen.last?.counts?.completed == UInt32(count))

                    var results: [TaskResult] = []
                    for try await result in client.results(batchID: batch.id) { results.append(result) }
                    #expect(results.count == count)
                    #expect(Set(results.map(\.customID)) == Set(tasks.map(\.customID)))
                    #expect(results.allSatisfy { $0.status == .completed && $0.result == payload })
                    #expect(results.map(\.taskID) == results.map(\.taskID).sorted())

                    // The same results seen as pages on the wire: several, each within the frame limit.
                    let batchID = batch.id
                    let pages = try await withRawSession(daemon.socketPath) { raw in
                        try await raw.handshake()
                        try await raw.send(Frame(streamID: 1, kind: .request(.getResults(GetResultsRequest(batchID: batchID)))))
                        var pages: [(results: Int, bytes: Int)] = []
                        while let (frame, bytes) = try await raw.readFrame() {
                            #expect(frame.streamID == 1)
                            if case .message(.resultsPage(let page)) = frame.kind {
                                pages.append((page.count, bytes))
                            } else if let status = endStatus(frame) {
                                #expect(status.code == .ok, "\(status)")
                                break
                            } else {
                                Issue.record("unexpected frame \(frame)")
                            }
                        }
                        return pages.map { [$0.results, $0.bytes] }
                    }
                    #expect(pages.map { $0[0] }.reduce(0, +) == count)
                    #expect(pages.count > count / 1_000, "pages must be cut by size, not only by max_results_page: \(pages.count)")
                    #expect(pages.allSatisfy { $0[1] <= maxFrame }, "page sizes \(pages.map { $0[1] })")
                }
            }
        }
    }

    // MARK: 3. Validation errors

    @Test(arguments: StoreKind.allCases) func validationErrorsCarryCodeAndMessage(on kind: StoreKind) async throws {
        try await withTestDaemon(on: kind) { daemon in
            try await withClient(daemon.socketPath) { client in
                try await withDeadline(.seconds(20)) {
                    let empty = await caughtClientError { _ = try await client.enqueueBatch(ownerID: "v", agent: "echo", tasks: []) }
                    #expect(empty?.code == .invalidArgument)
                    #expect(empty?.message.contains("at least one task") == true, "\(String(describing: empty))")

                    let duplicate = await caughtClientError {
                        _ = try await client.enqueueBatch(ownerID: "v", agent: "echo", tasks: [
                            TaskSpec(customID: "dup", payload: []), TaskSpec(customID: "other", payload: []),
                            TaskSpec(customID: "dup", payload: []),
                        ])
                    }
                    #expect(duplicate?.code == .invalidArgument)
                    #expect(duplicate?.message.contains("\"dup\"") == true, "\(String(describing: duplicate))")
                    #expect(duplicate?.message.contains("more than once") == true, "\(String(describing: duplicate))")

                    let agent = await caughtClientError {
                        _ = try await client.enqueueBatch(ownerID: "v", agent: "sumarize",
                                                          tasks: [TaskSpec(customID: "row-17", payload: [])])
                    }
                    #expect(agent?.code == .invalidArgument)
                    #expect(agent?.message.contains("unknown agent \"sumarize\"") == true, "\(String(describing: agent))")
                    #expect(agent?.message.contains("echo") == true, "the message lists the known agents: \(String(describing: agent))")

                    let missing: UInt64 = 987_654
                    let get = await caughtClientError { _ = try await client.batch(missing) }
                    #expect(get?.code == .notFound)
                    #expect(get?.message.contains("\(missing)") == true, "\(String(describing: get))")

                    let cancel = await caughtClientError { _ = try await client.cancelBatch(missing) }
                    #expect(cancel?.code == .notFound)
                    #expect(cancel?.message.contains("\(missing)") == true, "\(String(describing: cancel))")

                    let results = await caughtClientError {
                        for try await _ in client.results(batchID: missing) {}
                    }
                    #expect(results?.code == .notFound)
                    #expect(results?.message.contains("\(missing)") == true, "\(String(describing: results))")

                    let limit = Int(client.welcome.limits.maxPayloadBytes)
                    #expect(limit > 0)
                    let big = await caughtClientError {
                        _ = try await client.enqueueBatch(ownerID: "v", agent: "echo", tasks: [
                            TaskSpec(customID: "fine", payload: [1]),
                            TaskSpec(customID: "huge", payload: [UInt8](repeating: 0x61, count: limit + 1)),
                        ])
                    }
                    #expect(big?.code == .resourceExhausted)
                    #expect(big?.message.contains("\"huge\"") == true, "\(String(describing: big))")
                    #expect(big?.message.contains("max_payload_bytes") == true, "\(String(describing: big))")

                    // None of the refused batches exists, and the connection still serves calls.
                    #expect(try await client.batches(ownerID: "v").batches.isEmpty)
                    try await expectClientWorks(client)
                }
            }
        }
    }

    // MARK: 6. Subscribe resume

    @Test(arguments: StoreKind.allCases) func subscribeResumesExactlyAfterTheGivenSequence(on kind: StoreKind) async throws {
        try await withTestDaemon(on: kind) { daemon in
            try await withClient(daemon.socketPath) { client in
                try await withDeadline(.seconds(20)) {
                    let batch = try await client.enqueueBatch(
                        ownerID: "resume", agent: "echo",
                        tasks: (0..<20).map { TaskSpec(customID: "r\($0)", payload: Array("{\"i\":\($0)}".utf8)) })
                    let live = try await events(of: batch.id, owner: "resume", on: client)
                    let sequences = live.map(\.sequence)
                    #expect(live.last?.type == .batchCompleted)
                    #expect(live.count >= 41, "20 started + 20 completed + batch_completed at least: \(live.count)")
                    #expect(sequences == sequences.sorted() && Set(sequences).count == sequences.count,
                            "sequences increase strictly: \(sequences)")

                    // The full replay is the same list.
                    var replayAll: [Event] = []
                    for try await event in client.subscribe(ownerID: "resume", batchID: batch.id, since: 0, follow: false) {
                        replayAll.append(event)
                    }
                    #expect(replayAll == live)

                    // Resuming from a middle event gives exactly the events after it.
                    for middle in [1, live.count / 2, live.count - 2] {
                        let since = live[middle].sequence
                        var replay: [Event] = []
                        for try await event in client.subscribe(ownerID: "resume", batchID: batch.id, since: since, follow: false) {
                            replay.append(event)
                        }
                        #expect(replay.first?.sequence == live[middle + 1].sequence, "resume after \(since)")
                        #expect(replay == Array(live[(middle + 1)...]), "resume after \(since)")
                    }

                    // Resuming live (follow) from the middle sees the rest and then nothing is missing or doubled.
                    let since = live[live.count / 2].sequence
                    let resumed = try await events(of: batch.id, owner: "resume", on: client, since: since)
                    #expect(resumed.map(\.sequence) == Array(sequences[(live.count / 2 + 1)...]))
                }
            }
        }
    }

    /// Resuming while the batch is still running: the replay of stored
    /// events hands over to live ones without a gap or a duplicate.
    @Test(arguments: StoreKind.allCases) func resumeWhileRunningHandsOverFromReplayToLiveWithoutGap(on kind: StoreKind) async throws {
        try await withTestDaemon(on: kind) { daemon in
            try await withClient(daemon.socketPath) { client in
                try await withDeadline(.seconds(20)) {
                    // Slow enough that events keep coming while the second subscriber replays.
                    let batch = try await client.enqueueBatch(
                        ownerID: "handoff", agent: "echo",
                        tasks: (0..<60).map { TaskSpec(customID: "h\($0)", payload: Array("{\"delay_ms\":\(10 + $0 % 7 * 15)}".utf8)) })
                    let full = Task { try await events(of: batch.id, owner: "handoff", on: client) }
                    // Wait for a few events, then resume from one of them on a second connection.
                    let head = try await events(of: batch.id, owner: "handoff", on: client, until: [.taskCompleted])
                    let since = try #require(head.last).sequence
                    let resumed = try await withClient(daemon.socketPath, name: "second") { second in
                        try await events(of: batch.id, owner: "handoff", on: second, since: since)
                    }
                    let all = try await full.value
                    let expected = all.filter { $0.sequence > since }
                    #expect(!expected.isEmpty && expected.last?.type == .batchCompleted)
                    #expect(resumed.map(\.sequence) == expected.map(\.sequence))
                    #expect(resumed == expected)
                }
            }
        }
    }

    // MARK: 7. Cancellation

    @Test(arguments: StoreKind.allCases) func cancelBatchIsPromptAndPublishesOneBatchCancelled(on kind: StoreKind) async throws {
        try await withTestDaemon(on: kind) { daemon in
            try await withClient(daemon.socketPath) { client in
                try await withDeadline(.seconds(20)) {
                    let slow = Array("{\"delay_ms\":15000}".utf8)
                    let batch = try await client.enqueueBatch(
                        ownerID: "cancel", agent: "echo",
                        tasks: (0..<40).map { TaskSpec(customID: "slow-\($0)", payload: slow) })

                    // A live subscriber, started before the cancel.
                    let subscriber = Task { try await events(of: batch.id, owner: "cancel", on: client) }
                    // Let some tasks start (the echo agent runs 32 at once; the rest stay pending).
                    _ = try await events(of: batch.id, owner: "cancel", on: client, until: [.taskStarted])

                    let clock = ContinuousClock()
                    let started = clock.now
                    let cancelled = try await client.cancelBatch(batch.id)
                    let elapsed = clock.now - started
                    // Well before the 15 s tasks would end, also on a loaded machine.
                    #expect(elapsed < .seconds(8), "cancelBatch took \(elapsed)")
                    #expect(cancelled.status == .cancelled)
                    #expect(cancelled.counts.cancelled == 40, "\(cancelled.counts)")
                    #expect(cancelled.counts.finished == 40)

                    let live = try await subscriber.value
                    #expect(live.last?.type == .batchCancelled)
                    #expect(live.filter { $0.type == .batchCancelled }.count == 1)
                    #expect(!live.contains { $0.type == .taskCompleted }, "no slow task completed")

                    // Idempotent: a second cancel changes nothing and publishes nothing.
                    let again = try await client.cancelBatch(batch.id)
                    #expect(again.status == .cancelled)
                    var stored: [Event] = []
                    for try await event in client.subscribe(ownerID: "cancel", batchID: batch.id, follow: false) {
                        stored.append(event)
                    }
                    #expect(stored.filter { $0.type == .batchCancelled }.count == 1)
                    #expect(stored.filter { $0.type == .taskCancelled }.count == 40)
                    var results: [TaskResult] = []
                    for try await result in client.results(batchID: batch.id) { results.append(result) }
                    #expect(results.count == 40)
                    #expect(results.allSatisfy { $0.status == .cancelled })
                }
            }
        }
    }

    @Test(arguments: StoreKind.allCases) func enqueueTaskAnswersWithTheTaskAsEnqueued(on kind: StoreKind) async throws {
        let agents = [AgentConfiguration(name: "echo", runner: "echo", concurrency: 4, maxAttempts: 5)]
        try await withTestDaemon(on: kind, agents: agents) { daemon in
            try await withClient(daemon.socketPath) { client in
                try await withDeadline(.seconds(20)) {
                    let task = try await client.enqueueTask(ownerID: "solo", task: TaskSpec(
                        customID: "one", agent: "echo", payload: Array("{}".utf8), timeoutMs: 9_000))
                    // As enqueued, with the agent's defaults: the answer is not read back after the start.
                    #expect(task.customID == "one")
                    #expect(task.agent == "echo")
                    #expect(task.status == .pending)
                    #expect(task.attempt == 0)
                    #expect(task.maxAttempts == 5)
                    #expect(task.timeoutMs == 9_000)
                    #expect(task.id > 0 && task.batchID > 0)
                    let batch = try await client.batch(task.batchID)
                    #expect(batch.ownerID == "solo")
                    let stored = try await client.task(task.id)
                    #expect(stored.customID == "one" && stored.maxAttempts == 5 && stored.batchID == task.batchID)
                }
            }
        }
    }

    @Test(arguments: StoreKind.allCases) func cancelTaskOnAPendingTaskLetsTheBatchComplete(on kind: StoreKind) async throws {
        let agents = [
            AgentConfiguration(name: "echo", runner: "echo", concurrency: 32),
            AgentConfiguration(name: "serial", runner: "echo", concurrency: 1),
        ]
        try await withTestDaemon(on: kind, agents: agents) { daemon in
            try await withClient(daemon.socketPath) { client in
                try await withDeadline(.seconds(20)) {
                    // The first task runs long enough that the last is still pending when the cancel
                    // arrives, even on a loaded machine (where the calls before it took over 4 s while
                    // the PostgreSQL suites ran initdb beside them).
                    let payloads = [Array("{\"delay_ms\":8000}".utf8), Array("{\"delay_ms\":10}".utf8), Array("{\"delay_ms\":10}".utf8)]
                    let batch = try await client.enqueueBatch(
                        ownerID: "one", agent: "serial",
                        tasks: (0..<3).map { TaskSpec(customID: "t\($0)", payload: payloads[$0]) })
                    let subscriber = Task { try await events(of: batch.id, owner: "one", on: client) }

                    // The serial agent runs one task at a time; take the pending task of this
                    // batch with the highest id, the last one due to run.
                    let first = try await events(of: batch.id, owner: "one", on: client, until: [.taskStarted])
                    let running = try #require(first.last?.taskID)
                    var pending: TaskInfo?
                    for id in (running + 3 > 6 ? running + 3 - 6 : 1)...(running + 3) where id != running {
                        guard let task = try? await client.task(id), task.batchID == batch.id, task.status == .pending else { continue }
                        pending = task
                    }
                    let target = try #require(pending, "a pending task of batch \(batch.id)")

                    let cancelled = try await client.cancelTask(target.id)
                    #expect(cancelled.id == target.id)
                    #expect(cancelled.status == .cancelled)

                    // Cancelled with the test at its deadline; what the store holds then says why.
                    let live: [Event]
                    do {
                        live = try await withTaskCancellationHandler { try await subscriber.value } onCancel: { subscriber.cancel() }
                    } catch {
                        let (store, id) = (daemon.store, Int64(batch.id))
                        let stored = await Task.detached {
                            let batch = try? await store.batch(id)
                            let tasks = (try? await store.results(batchID: id, afterTaskID: 0, limit: 10, maxBytes: 1 << 20)) ?? []
                            return "batch \(String(describing: batch)), its finished tasks \(tasks.map { "\($0.id): \($0.state)" })"
                        }.value
                        Issue.record("no end of batch \(id) seen (cancelled \(target.id), first started \(running)); the store holds \(stored)")
                        throw error
                    }
                    #expect(live.last?.type == .batchCompleted)
                    #expect(live.last?.counts?.completed == 2)
                    #expect(live.last?.counts?.cancelled == 1)
                    #expect(live.last?.progress == 100)
                    #expect(live.filter { $0.type == .taskCancelled }.map(\.customID) == [target.customID])
                    #expect(!live.contains { $0.type == .taskStarted && $0.taskID == target.id },
                            "the cancelled task \(target.id) never starts: \(live.map { "\($0.sequence):\($0.type):\($0.taskID)" })")

                    let final = try await client.batch(batch.id)
                    #expect(final.status == .completed)
                    #expect(try await client.task(target.id).status == .cancelled)
                    // Cancelling a terminal task is a no-op that succeeds.
                    #expect(try await client.cancelTask(target.id).status == .cancelled)
                }
            }
        }
    }

    // MARK: 8. Graceful shutdown

    @Test func shutdownEndsFollowSubscriptionWithUnavailable() async throws {
        let daemon = try await TestDaemon()
        let stopped = Once()
        @Sendable func stopOnce() async {
            if stopped.claim() { await daemon.stop() }
        }
        do {
            try await withClient(daemon.socketPath) { client in
                try await withDeadline(.seconds(20)) {
                    let (received, receivedContinuation) = AsyncStream.makeStream(of: Void.self)
                    let subscription = Task { () -> Result<Int, any Error> in
                        var count = 0
                        do {
                            for try await _ in client.subscribe(ownerID: "bye") {
                                count += 1
                                receivedContinuation.yield()
                            }
                            return .success(count)
                        } catch {
                            return .failure(error)
                        }
                    }
                    _ = try await client.enqueueBatch(ownerID: "bye", agent: "echo",
                                                      tasks: [TaskSpec(customID: "x", payload: [])])
                    for await _ in received { break }  // the subscription is live

                    await stopOnce()
                    switch await subscription.value {
                    case .success(let count):
                        Issue.record("the subscription ended without an error after \(count) events")
                    case .failure(let error as FanoutClientError):
                        #expect(error.code == .unavailable, "\(error)")
                        // The stream's own EndOfStream, not just the socket closing under it.
                        #expect(error.message.contains("shutting down"), "\(error)")
                        #expect(!error.lagged)
                    case .failure(let error):
                        Issue.record("expected FanoutClientError(.unavailable), got \(error)")
                    }
                    // The connection is closed: new calls fail as UNAVAILABLE too.
                    let after = await caughtClientError { _ = try await client.serverInfo() }
                    #expect(after?.code == .unavailable)
                }
            }
        } catch {
            await stopOnce()
            throw error
        }
        await stopOnce()
    }

    /// Shutdown while a chunked EnqueueBatch waits for its last chunk: the
    /// stream ends with UNAVAILABLE at once and nothing is committed.
    @Test func shutdownDuringChunkedEnqueueCommitsNothing() async throws {
        let directory = TestDaemon.makeDirectory()
        defer { try? FileManager.default.removeItem(atPath: directory) }
        let daemon = try await TestDaemon(directory: directory)
        let stopped = Once()
        @Sendable func stopOnce() async {
            if stopped.claim() { await daemon.stop(removeFiles: false) }
        }
        do {
            try await withDeadline(.seconds(20)) {
                try await withRawSession(daemon.socketPath) { raw in
                    try await raw.handshake()
                    let request = EnqueueBatchRequest(ownerID: "half", agent: "echo",
                                                      tasks: [TaskSpec(customID: "a", payload: [1])], more: true)
                    try await raw.send(Frame(streamID: 1, kind: .request(.enqueueBatch(request))))
                    let chunk = BatchChunk(tasks: [TaskSpec(customID: "b", payload: [2])], more: true)
                    try await raw.send(Frame(streamID: 1, kind: .message(.batchChunk(chunk))))
                    // The daemon has seen both frames once it answers a later call.
                    try await raw.send(Frame(streamID: 3, kind: .request(.serverInfo)))
                    while let (frame, _) = try await raw.readFrame(), frame.streamID != 3 {}

                    let clock = ContinuousClock()
                    let started = clock.now
                    let stopping = Task { await stopOnce() }
                    let frames = try await raw.readUntilClosed()
                    await stopping.value
                    let took = clock.now - started
                    #expect(frames.count == 1, "\(frames)")
                    #expect(frames.first?.streamID == 1)
                    #expect(frames.first.flatMap(endStatus)?.code == .unavailable, "\(frames)")
                    // Held up, it would take until the deadline; 5 s leaves room for a loaded machine.
                    #expect(took < .seconds(5), "a half-sent batch held shutdown up for \(took)")
                }
            }
        } catch {
            await stopOnce()
            throw error
        }
        await stopOnce()
        // Restarted on the same database: the half-sent batch does not exist.
        try await withTestDaemonIn(directory) { again in
            try await withClient(again.socketPath) { client in
                let listed = try await client.batches(ownerID: "half")
                #expect(listed.batches.isEmpty)
            }
        }
    }

    // MARK: 9. Socket file

    @Test(arguments: StoreKind.allCases) func socketFileIsPrivate(on kind: StoreKind) async throws {
        try await withTestDaemon(on: kind) { daemon in
            let mode = try #require(fileMode(daemon.socketPath))
            #expect((mode & S_IFMT) == S_IFSOCK)
            #expect(mode & 0o777 == 0o600, "mode is \(String(mode & 0o777, radix: 8))")
        }
    }
}

