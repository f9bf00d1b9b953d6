import FanoutCore
import FanoutScheduler
import FanoutStore
import FanoutWire
import Foundation
import Synchronization

/// The calls of the protocol, on top of the scheduler and the store.
/// Connection-independent: `Connection` decodes requests and calls these.
final class FanoutService: Sendable {
    let scheduler: Scheduler
    let configuration: ServerConfiguration
    let startedAtMs = Int64(Date().timeIntervalSince1970 * 1000)
    let connections = Atomic<Int>(0)
    private var store: any Store { scheduler.store }

    /// Runs the tasks of worker-served agents; nil when the daemon has none.
    let workerPool: WorkerPool?

    init(scheduler: Scheduler, configuration: ServerConfiguration, workerPool: WorkerPool? = nil) {
        self.workerPool = workerPool
        self.scheduler = scheduler
        self.configuration = configuration
    }

    var limits: Limits {
        var limits = Limits()
        limits.maxFrameBytes = UInt32(clamping: configuration.maxFrameBytes)
        limits.maxTasksPerBatch = UInt32(clamping: scheduler.limits.maxTasksPerBatch)
        limits.maxPayloadBytes = UInt32(clamping: scheduler.limits.maxPayloadBytes)
        limits.maxCustomIDBytes = UInt32(clamping: scheduler.limits.maxCustomIDBytes)
        limits.maxStreamsPerConnection = UInt32(clamping: configuration.maxStreamsPerConnection)
        limits.maxConnections = UInt32(clamping: configuration.maxConnections)
        limits.subscriberBuffer = UInt32(clamping: configuration.subscriberBuffer)
        limits.globalConcurrency = UInt32(clamping: scheduler.configuration.globalConcurrency)
        limits.maxResultsPage = UInt32(clamping: configuration.maxResultsPage)
        limits.maxResultsPageBytes = UInt32(clamping: configuration.resultsPageBytes)
        return limits
    }

    func welcome(_ hello: Hello) throws(WireStatus) -> Welcome {
        guard hello.protocolVersion == FanoutVersion.protocolVersion else {
            throw WireStatus(code: .failedPrecondition,
                             message: "protocol version \(hello.protocolVersion) is not supported; this daemon speaks version \(FanoutVersion.protocolVersion)")
        }
        return Welcome(serverVersion: configuration.serverVersion, protocolVersion: FanoutVersion.protocolVersion,
                       maxFrameBytes: UInt32(clamping: configuration.maxFrameBytes),
                       features: ["chunked_enqueue", "subscribe_resume", "results_paging"], limits: limits)
    }

    // MARK: Enqueue

    /// A whole (unchunked) batch, checked now and handed to the store; awaited later.
    func startEnqueueBatch(_ request: EnqueueBatchRequest, peer: PeerCredentials) -> Result<PendingResult<InsertedBatch>, any Error> {
        Result { try scheduler.startEnqueue(newBatch(request, tasks: request.tasks, peer: peer)) }
    }

    private func newBatch(_ request: EnqueueBatchRequest, tasks: [TaskSpec], peer: PeerCredentials) throws(FanoutError) -> NewBatch {
        // Only a running task makes child batches (a worker's WorkerSpawn, a runner's RunContext.children):
        // a parent named by a client would be unchecked.
        guard request.parentTaskID == 0 else {
            throw .invalidArgument("parent_task_id is set by fanoutd when a running task spawns children; "
                + "a client's batch cannot name one")
        }
        return Self.newBatch(request, tasks: tasks, creatorUID: peer.uid)
    }

    /// The batch an EnqueueBatchRequest (or a worker's spawn) describes.
    static func newBatch(_ request: EnqueueBatchRequest, tasks: [TaskSpec], creatorUID: UInt32) -> NewBatch {
        // The window is checked against max_completion_window_ms by validation; the deadline saturates meanwhile.
        let window = request.completionWindowMs == 0 ? nil : Int64(clamping: request.completionWindowMs)
        return NewBatch(
            ownerID: request.ownerID, agent: request.agent, metadata: request.metadata,
            deadlineAt: window.map { nowMs.addingReportingOverflow($0) }.map { $0.overflow ? .max : $0.partialValue },
            completionWindowMs: window,
            creatorUID: creatorUID,
            tasks: tasks.map { NewTask($0, batchPriority: request.priority) })
    }

    static var nowMs: Int64 { Int64((Date().timeIntervalSince1970 * 1000).rounded()) }

    func beginStagedBatch(_ request: EnqueueBatchRequest, peer: PeerCredentials) async throws -> StagedBatch {
        try await scheduler.beginStagedBatch(newBatch(request, tasks: [], peer: peer),
                                             firstTasks: request.tasks.map { NewTask($0, batchPriority: request.priority) })
    }

    func prepareStagedChunk(_ staged: inout StagedBatch, _ tasks: [TaskSpec], batchPriority: Int32) throws -> StagedChunk {
        try scheduler.prepareStagedChunk(&staged, tasks.map { NewTask($0, batchPriority: batchPriority) })
    }

    func storeStagedChunk(_ chunk: StagedChunk) async throws {
        try await scheduler.storeStagedChunk(chunk)
    }

    func publishStagedBatch(_ staged: StagedBatch) async throws -> BatchInfo {
        BatchInfo(try await scheduler.publishStagedBatch(staged))
    }

    func discardStagedBatch(_ staged: StagedBatch) async {
        await scheduler.discardStagedBatch(staged)
    }

    /// One task as a batch of one, checked now and handed to the store; awaited later. Its
    /// answer is the task as enqueued (pending), built without reading it back.
    func startEnqueueTask(_ request: EnqueueTaskRequest, peer: PeerCredentials) -> Result<PendingResult<InsertedBatch>, any Error> {
        let batch = NewBatch(ownerID: request.ownerID, agent: request.task.agent, creatorUID: peer.uid,
                             tasks: [NewTask(request.task, batchPriority: 0)])
        return Result { try scheduler.startEnqueue(batch) }
    }

    // MARK: Reads

    func batch(_ id: UInt64, peer: PeerCredentials) async throws -> BatchInfo {
        BatchInfo(try await authorizedBatch(id, peer: peer))
    }

    func listBatches(_ request: ListBatchesRequest, peer: PeerCredentials) async throws -> BatchPage {
        let limit = request.limit == 0 ? 100 : min(Int(request.limit), 1_000)
        let owner = request.ownerID.isEmpty ? nil : request.ownerID
        let uid = peer.isAdmin ? nil : peer.uid
        let before = request.beforeID == 0 ? nil : BatchID(clamping: request.beforeID)
        let parent = request.parentBatchID == 0 ? nil : BatchID(clamping: request.parentBatchID)
        let records = try await store.batches(ownerID: owner, creatorUID: uid, parentBatchID: parent, limit: limit, beforeID: before)
        let next = records.count == limit ? UInt64(records.last!.id) : 0
        return BatchPage(batches: records.map(BatchInfo.init), nextBeforeID: next)
    }

    func task(_ request: GetTaskRequest, peer: PeerCredentials) async throws -> TaskInfo {
        let id = TaskID(clamping: request.taskID)
        let include = request.includePayload
        guard let record = try await store.task(id, includePayload: include) else {
            throw FanoutError.notFound("task \(request.taskID) does not exist")
        }
        _ = try await authorizedBatch(UInt64(record.batchID), peer: peer)
        return TaskInfo(record)
    }

    /// One page of finished results after `afterTaskID`: at most `pageSize`
    /// results and `pageBytes` bytes of them (at least one result), so that
    /// it fits in a frame. Nil `pageBytes`: the daemon's limit.
    func resultsPage(batchID: UInt64, afterTaskID: UInt64, pageSize: Int, pageBytes: Int? = nil) async throws -> [TaskResult] {
        let batch = BatchID(clamping: batchID)
        let after = TaskID(clamping: afterTaskID)
        // Never above the limit, whoever asks: a larger page might not fit its frame.
        let bytes = min(pageBytes ?? .max, configuration.resultsPageBytes)
        return try await store.results(batchID: batch, afterTaskID: after, limit: pageSize, maxBytes: bytes).map(TaskResult.init)
    }

    // MARK: Cancel

    func cancelBatch(_ id: UInt64, peer: PeerCredentials) async throws -> BatchInfo {
        let batch = try await authorizedBatch(id, peer: peer)
        return BatchInfo(try await scheduler.cancelBatch(batch.id))
    }

    func cancelTask(_ id: UInt64, peer: PeerCredentials) async throws -> TaskInfo {
        _ = try await task(GetTaskRequest(taskID: id), peer: peer)
        return TaskInfo(try await scheduler.cancelTask(TaskID(clamping: id)))
    }

    func retryFailed(_ request: RetryFailedRequest, peer: PeerCredentials) async throws -> RetryFailedResponse {
        let batch = try await authorizedBatch(request.batchID, peer: peer)
        let (record, retried) = try await scheduler.retryFailed(batch.id, includeExpired: request.includeExpired,
                                                                includeCancelled: request.includeCancelled)
        return RetryFailedResponse(batch: BatchInfo(record), retried: UInt32(clamping: retried))
    }

    // MARK: Events

    func subscribe(_ request: SubscribeRequest, peer: PeerCredentials) async throws -> EventStream {
        if request.batchID != 0 {
            _ = try await authorizedBatch(request.batchID, peer: peer)
        }
        // An empty owner means every owner; a non-admin peer sees only its own uid's batches either way.
        let filter = EventFilter(ownerID: request.ownerID, kinds: Set(request.eventTypes.compactMap(EventKind.init)),
                                 batchID: request.batchID == 0 ? nil : BatchID(clamping: request.batchID),
                                 creatorUID: peer.isAdmin ? nil : peer.uid)
        return scheduler.subscribe(filter, since: EventSequence(clamping: request.since), follow: request.follow,
                                   bufferSize: configuration.subscriberBuffer)
    }

    func serverInfo() async throws -> ServerInfo {
        let stats = scheduler.statistics
        var info = ServerInfo()
        info.serverVersion = configuration.serverVersion
        info.protocolVersion = FanoutVersion.protocolVersion
        info.startedAtMs = startedAtMs
        info.pendingTasks = UInt64(stats.pending)
        info.runningTasks = UInt64(stats.running)
        info.retryWaitTasks = UInt64(stats.retryWait)
        info.connections = UInt32(clamping: connections.load(ordering: .relaxed))
        info.limits = limits
        let workers = workerPool?.workers ?? []
        info.workers = UInt32(clamping: workers.count)
        info.workerList = workers.map { worker in
            ConnectedWorker(id: worker.id, name: worker.name, uid: worker.uid,
                            agents: worker.slots.keys.sorted().map { agent in
                                ConnectedWorker.Slots(agent: agent, slots: UInt32(clamping: worker.slots[agent] ?? 0),
                                                      freeSlots: UInt32(clamping: max(0, worker.freeSlots[agent] ?? 0)))
                            },
                            runningTaskIDs: worker.runningTasks.map { UInt64($0) })
        }
        // Configured agents, then those connected workers declare.
        info.agents = (scheduler.configuration.agents + scheduler.declaredAgentConfigurations).map { agent in
            // A worker-served agent runs at most as many tasks as its workers have slots.
            let offered = workers.reduce(0) { $0 + ($1.slots[agent.name] ?? 0) }
            let concurrency = agent.runner == "worker" ? min(agent.concurrency, offered) : agent.concurrency
            return AgentInfo(name: agent.name, runner: agent.runner, concurrency: UInt32(clamping: concurrency),
                      maxTurns: UInt32(clamping: agent.maxTurns), maxAttempts: UInt32(clamping: agent.maxAttempts),
                      running: UInt32(clamping: stats.runningByAgent[agent.name] ?? 0),
                      workers: UInt32(clamping: workers.filter { $0.slots[agent.name] != nil }.count))
        }
        info.lastSequence = UInt64(try await store.lastEventSequence())
        return info
    }

    // MARK: Helpers

    /// The batch, if it exists and the peer may see it. Another user's batch
    /// gets PERMISSION_DENIED rather than NOT_FOUND, so a mistake is easy to tell from a typo.
    private func authorizedBatch(_ id: UInt64, peer: PeerCredentials) async throws -> BatchRecord {
        let batchID = BatchID(clamping: id)
        guard let batch = try await store.batch(batchID) else {
            throw FanoutError.notFound("batch \(id) does not exist")
        }
        guard peer.isAdmin || batch.creatorUID == peer.uid else {
            throw FanoutError.permissionDenied("batch \(id) belongs to another user")
        }
        return batch
    }
}

