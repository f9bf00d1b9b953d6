import FanoutWire

/// Sample values with a non-default value in every field, and one frame for
/// every case of every oneof.
enum Fixtures {
    static let unicode = "Grüße, 世界 🚀 — ünïcödé"

    static let payload: [UInt8] = Array(#"{"prompt":"héllo","n":3}"#.utf8)

    static let fullSpec = TaskSpec(
        customID: "task-ü-001",
        agent: "summarizer",
        payload: payload,
        priority: -7,
        maxAttempts: 5,
        timeoutMs: UInt64.max
    )

    static let emptySpec = TaskSpec(customID: "", payload: [])

    static let error = TaskError(message: "rate limited: \(unicode)", code: "rate_limited", retryable: true)

    static var counts: BatchCounts {
        var c = BatchCounts()
        c.total = 100
        c.pending = 1
        c.running = 2
        c.waitingChildren = 3
        c.retryWait = 4
        c.completed = 50
        c.failed = 20
        c.cancelled = 10
        c.expired = 10
        return c
    }

    static var limits: Limits {
        var l = Limits()
        l.maxFrameBytes = 4_194_304
        l.maxTasksPerBatch = 100_000
        l.maxPayloadBytes = 1_048_576
        l.maxCustomIDBytes = 256
        l.maxStreamsPerConnection = 64
        l.maxConnections = 128
        l.subscriberBuffer = 1024
        l.globalConcurrency = 32
        l.maxResultsPage = 500
        l.maxResultsPageBytes = 1 << 20
        return l
    }

    static var task: TaskInfo {
        var t = TaskInfo()
        t.id = UInt64.max - 1
        t.batchID = 1 << 40
        t.customID = "custom-\(unicode)"
        t.ownerID = "uid:1000"
        t.agent = "coder"
        t.status = .retryWait
        t.priority = Int32.min
        t.attempt = 3
        t.maxAttempts = 9
        t.timeoutMs = 60_000
        t.turnsCompleted = 12
        t.maxTurns = 40
        t.result = [0x00, 0xFF, 0x10, 0x00]
        t.error = error
        t.parentTaskID = 77
        t.createdAtMs = -1
        t.startedAtMs = Int64.min
        t.finishedAtMs = Int64.max
        t.payload = payload
        return t
    }

    static var batch: BatchInfo {
        var b = BatchInfo()
        b.id = UInt64.max
        b.ownerID = "uid:0"
        b.agent = "reviewer"
        b.status = .processing
        b.counts = counts
        b.progress = 62.5
        b.metadata = ["project": "fanout", "ключ": "значение", "": "empty key", "empty value": ""]
        b.parentTaskID = 9
        b.createdAtMs = 1_700_000_000_000
        b.startedAtMs = -42
        b.finishedAtMs = 1_700_000_999_999
        b.deadlineAtMs = Int64.min
        b.creatorUID = UInt32.max
        b.maxTurns = 7
        return b
    }

    static var event: Event {
        var e = Event()
        e.sequence = UInt64.max
        e.type = .taskRetrying
        e.timestampMs = -123_456
        e.ownerID = "uid:1000"
        e.batchID = 5
        e.taskID = 6
        e.customID = unicode
        e.parentTaskID = 8
        e.progress = 99.75
        e.counts = counts
        e.attempt = 2
        e.turn = 3
        e.retryDelayMs = 1 << 50
        e.error = error
        return e
    }

    static var serverInfo: ServerInfo {
        var s = ServerInfo()
        s.serverVersion = "0.1.0-β"
        s.protocolVersion = 1
        s.startedAtMs = -5
        s.pendingTasks = UInt64.max
        s.runningTasks = 3
        s.retryWaitTasks = 4
        s.connections = 5
        s.workers = 6
        s.limits = limits
        s.agents = [
            AgentInfo(name: "coder", runner: "llm", concurrency: 8, maxTurns: 30, maxAttempts: 3, running: 2, workers: 1),
            AgentInfo(name: "", runner: "", concurrency: 0, maxTurns: 0, maxAttempts: 0, running: 0, workers: 0),
        ]
        s.lastSequence = 987_654_321
        return s
    }

    static let enqueueBatch = EnqueueBatchRequest(
        ownerID: "uid:1000",
        agent: "summarizer",
        metadata: ["a": "1", "b": unicode, "zeta": ""],
        priority: -3,
        completionWindowMs: 86_400_000,
        parentTaskID: UInt64.max,
        tasks: [fullSpec, emptySpec, TaskSpec(customID: "x", payload: [0])],
        more: true
    )

    static let results: [TaskResult] = [
        TaskResult(taskID: 1, customID: "ok-ü", status: .completed, result: [1, 2, 3], error: nil, attempt: 1),
        TaskResult(taskID: UInt64.max, customID: "bad", status: .failed, result: [], error: error, attempt: 4),
        TaskResult(taskID: 0, customID: "", status: .unspecified),
    ]

    /// Every case of every oneof, each with non-default values.
    static var frames: [Frame] {
        [
            // Requests
            Frame(streamID: 0, kind: .request(.hello(Hello(protocolVersion: 7, clientName: unicode)))),
            Frame(streamID: 1, kind: .request(.enqueueBatch(enqueueBatch))),
            Frame(streamID: 3, kind: .request(.enqueueTask(EnqueueTaskRequest(ownerID: "uid:5", task: fullSpec)))),
            Frame(streamID: 5, kind: .request(.getBatch(batchID: UInt64.max))),
            Frame(streamID: 7, kind: .request(.listBatches(ListBatchesRequest(ownerID: "uid:9", limit: 50, beforeID: 1 << 62, parentBatchID: 77)))),
            Frame(streamID: 9, kind: .request(.getTask(GetTaskRequest(taskID: 42, includePayload: true)))),
            Frame(streamID: 11, kind: .request(.getResults(GetResultsRequest(batchID: 8, pageSize: 250, afterTaskID: UInt64.max - 5,
                                                                                                pageBytes: 65_536)))),
            Frame(streamID: 13, kind: .request(.cancelBatch(batchID: 12345))),
            Frame(streamID: 15, kind: .request(.cancelTask(taskID: 67890))),
            Frame(streamID: 17, kind: .request(.retryFailed(RetryFailedRequest(batchID: 4, includeExpired: true, includeCancelled: true)))),
            Frame(streamID: 19, kind: .request(.subscribe(SubscribeRequest(
                ownerID: "uid:1000", eventTypes: EventType.allCases, batchID: 3, since: UInt64.max, follow: false
            )))),
            Frame(streamID: 21, kind: .request(.workerSession(WorkerRegister(
                workerName: "worker-ü",
                agents: [AgentRegistration(name: "coder", concurrency: 4, maxTurns: 20), AgentRegistration(name: "x", concurrency: 0)]
            )))),
            Frame(streamID: UInt32.max, kind: .request(.serverInfo)),
            // Responses
            Frame(streamID: 0, kind: .response(.welcome(Welcome(
                serverVersion: "fanoutd 0.1.0", protocolVersion: 1, maxFrameBytes: UInt32.max,
                features: ["worker-session", "", unicode], limits: limits
            )))),
            Frame(streamID: 1, kind: .response(.enqueueBatch(batch))),
            Frame(streamID: 3, kind: .response(.enqueueTask(task))),
            Frame(streamID: 5, kind: .response(.getBatch(batch))),
            Frame(streamID: 7, kind: .response(.listBatches(BatchPage(batches: [batch, BatchInfo()], nextBeforeID: 99)))),
            Frame(streamID: 9, kind: .response(.getTask(task))),
            Frame(streamID: 13, kind: .response(.cancelBatch(batch))),
            Frame(streamID: 15, kind: .response(.cancelTask(task))),
            Frame(streamID: 17, kind: .response(.retryFailed(RetryFailedResponse(batch: batch, retried: 17)))),
            Frame(streamID: 23, kind: .response(.serverInfo(serverInfo))),
            // Stream messages
            Frame(streamID: 1, kind: .message(.batchChunk(BatchChunk(tasks: [fullSpec, emptySpec], more: true)))),
            Frame(streamID: 19, kind: .message(.event(event))),
            Frame(streamID: 11, kind: .message(.resultsPage(results))),
            Frame(streamID: 21, kind: .message(.worker(.turn(taskID: 31, turns: 2)))),
            Frame(streamID: 21, kind: .message(.worker(.heartbeat(taskIDs: [1, UInt64.max, 0, 1 << 33])))),
            Frame(streamID: 21, kind: .message(.worker(.spawn(taskID: 31, children: enqueueBatch)))),
            Frame(streamID: 21, kind: .message(.worker(.result(
                taskID: 31, result: Array("done ✓".utf8), usage: TokenUsage(promptTokens: UInt64.max, completionTokens: 12)
            )))),
            Frame(streamID: 21, kind: .message(.worker(.failure(taskID: 31, error: error, retryAfterMs: 30_000)))),
            Frame(streamID: 21, kind: .message(.toWorker(.assignment(task: task, leaseMs: 45_000)))),
            Frame(streamID: 21, kind: .message(.toWorker(.cancel(taskID: UInt64.max)))),
            Frame(streamID: 21, kind: .message(.toWorker(.childrenDone(taskID: 31, childBatchID: 32, results: results, last: false)))),
            Frame(streamID: 21, kind: .message(.toWorker(.assignment(task: task, leaseMs: 45_000, resumed: true)))),
            Frame(streamID: 21, kind: .message(.toWorker(.spawned(taskID: 31, childBatchID: 33, status: .ok)))),
            Frame(streamID: 21, kind: .message(.worker(.waitChildren(taskID: 31, timeoutMs: 60_000)))),
            Frame(streamID: 21, kind: .message(.worker(.drain))),
            Frame(streamID: 21, kind: .message(.toWorker(.ack(
                taskID: 31, status: WireStatus(code: .failedPrecondition, message: "lease expired: \(unicode)")
            )))),
            // Cancel and end
            Frame(streamID: 25, kind: .cancel),
            Frame(streamID: 19, kind: .end(WireStatus(code: .resourceExhausted, message: "subscriber lagged", lagged: true, lastSequence: UInt64.max))),
        ]
    }

    /// Frames whose optional parts are nil or empty, to check absence
    /// survives the round trip (and is not turned into a default value).
    static var sparseFrames: [Frame] {
        var event = Event()
        event.type = .batchProgress
        var taskWithoutError = task
        taskWithoutError.error = nil
        taskWithoutError.payload = []
        taskWithoutError.result = []
        var eventWithCountsOnly = Event()
        eventWithCountsOnly.counts = BatchCounts()
        var eventWithErrorOnly = Event()
        eventWithErrorOnly.error = TaskError(message: "")
        return [
            Frame(streamID: 0, kind: .request(.hello(Hello(protocolVersion: 0, clientName: "")))),
            Frame(streamID: 0, kind: .request(.enqueueBatch(EnqueueBatchRequest(ownerID: "", agent: "", tasks: [])))),
            Frame(streamID: 0, kind: .request(.subscribe(SubscribeRequest(ownerID: "", follow: false)))),
            Frame(streamID: 0, kind: .response(.enqueueBatch(BatchInfo()))),
            Frame(streamID: 0, kind: .response(.getTask(taskWithoutError))),
            Frame(streamID: 0, kind: .response(.listBatches(BatchPage(batches: [], nextBeforeID: 0)))),
            Frame(streamID: 0, kind: .response(.welcome(Welcome(serverVersion: "", protocolVersion: 0, maxFrameBytes: 0, features: [], limits: Limits())))),
            Frame(streamID: 0, kind: .response(.serverInfo(ServerInfo()))),
            Frame(streamID: 0, kind: .message(.event(event))),
            Frame(streamID: 0, kind: .message(.event(eventWithCountsOnly))),
            Frame(streamID: 0, kind: .message(.event(eventWithErrorOnly))),
            Frame(streamID: 0, kind: .message(.resultsPage([]))),
            Frame(streamID: 0, kind: .message(.batchChunk(BatchChunk(tasks: [], more: false)))),
            Frame(streamID: 0, kind: .message(.worker(.heartbeat(taskIDs: [])))),
            Frame(streamID: 0, kind: .message(.worker(.result(taskID: 0, result: [], usage: nil)))),
            Frame(streamID: 0, kind: .message(.worker(.result(taskID: 0, result: [], usage: TokenUsage(promptTokens: 0, completionTokens: 0))))),
            Frame(streamID: 0, kind: .message(.toWorker(.childrenDone(taskID: 0, childBatchID: 0, results: [], last: true)))),
            Frame(streamID: 0, kind: .message(.toWorker(.spawned(taskID: 0, childBatchID: 0, status: .ok)))),
            Frame(streamID: 0, kind: .message(.worker(.waitChildren(taskID: 0, timeoutMs: 0)))),
            Frame(streamID: 0, kind: .message(.toWorker(.ack(taskID: 0, status: .ok)))),
            Frame(streamID: 0, kind: .cancel),
            Frame(streamID: 0, kind: .end(.ok)),
        ]
    }
}
