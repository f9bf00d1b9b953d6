import CProtobufC
import FanoutProtoC

/// Builds the protobuf-c structs for a `Frame`, every allocation in `arena`.
///
/// The structs point into the arena, so they are valid only until the arena
/// is released. Empty strings keep protobuf-c's shared empty-string default
/// and empty bytes stay NULL, so the common "unset" fields cost nothing.
struct ProtoEncoder {
    let arena: EncodeArena

    typealias Fill<Value, Message> = (Value, UnsafeMutablePointer<Message>) throws(WireError) -> Void

    // MARK: Framing and streams

    func frame(_ value: Frame) throws(WireError) -> UnsafeMutablePointer<Fanout__V1__Frame> {
        let m = arena.make(Fanout__V1__Frame.self)
        fanout__v1__frame__init(m)
        m.pointee.stream_id = value.streamID
        switch value.kind {
        case .request(let request):
            m.pointee.kind_case = FANOUT__V1__FRAME__KIND_REQUEST
            m.pointee.request = try one(request, self.request)
        case .response(let response):
            m.pointee.kind_case = FANOUT__V1__FRAME__KIND_RESPONSE
            m.pointee.response = try one(response, self.response)
        case .message(let message):
            m.pointee.kind_case = FANOUT__V1__FRAME__KIND_MESSAGE
            m.pointee.message = try one(message, streamMessage)
        case .cancel:
            m.pointee.kind_case = FANOUT__V1__FRAME__KIND_CANCEL
            let cancel = arena.make(Fanout__V1__Cancel.self)
            fanout__v1__cancel__init(cancel)
            m.pointee.cancel = cancel
        case .end(let status):
            m.pointee.kind_case = FANOUT__V1__FRAME__KIND_END
            let end = arena.make(Fanout__V1__EndOfStream.self)
            fanout__v1__end_of_stream__init(end)
            end.pointee.status = try one(status, self.status)
            m.pointee.end = end
        case .unknown, .rejected:
            throw .unencodableValue("a frame of unknown kind cannot be sent")
        }
        return m
    }

    func request(_ value: Request, _ m: UnsafeMutablePointer<Fanout__V1__Request>) throws(WireError) {
        fanout__v1__request__init(m)
        switch value {
        case .hello(let hello):
            m.pointee.call_case = FANOUT__V1__REQUEST__CALL_HELLO
            m.pointee.hello = try one(hello, self.hello)
        case .enqueueBatch(let request):
            m.pointee.call_case = FANOUT__V1__REQUEST__CALL_ENQUEUE_BATCH
            m.pointee.enqueue_batch = try one(request, enqueueBatchRequest)
        case .enqueueTask(let request):
            m.pointee.call_case = FANOUT__V1__REQUEST__CALL_ENQUEUE_TASK
            let r = arena.make(Fanout__V1__EnqueueTaskRequest.self)
            fanout__v1__enqueue_task_request__init(r)
            try string(&r.pointee.owner_id, request.ownerID, "EnqueueTaskRequest.owner_id")
            r.pointee.task = try one(request.task, taskSpec)
            m.pointee.enqueue_task = r
        case .getBatch(let batchID):
            m.pointee.call_case = FANOUT__V1__REQUEST__CALL_GET_BATCH
            let r = arena.make(Fanout__V1__GetBatchRequest.self)
            fanout__v1__get_batch_request__init(r)
            r.pointee.batch_id = batchID
            m.pointee.get_batch = r
        case .listBatches(let request):
            m.pointee.call_case = FANOUT__V1__REQUEST__CALL_LIST_BATCHES
            let r = arena.make(Fanout__V1__ListBatchesRequest.self)
            fanout__v1__list_batches_request__init(r)
            try string(&r.pointee.owner_id, request.ownerID, "ListBatchesRequest.owner_id")
            r.pointee.limit = request.limit
            r.pointee.before_id = request.beforeID
            r.pointee.parent_batch_id = request.parentBatchID
            m.pointee.list_batches = r
        case .getTask(let request):
            m.pointee.call_case = FANOUT__V1__REQUEST__CALL_GET_TASK
            let r = arena.make(Fanout__V1__GetTaskRequest.self)
            fanout__v1__get_task_request__init(r)
            r.pointee.task_id = request.taskID
            r.pointee.include_payload = bool(request.includePayload)
            m.pointee.get_task = r
        case .getResults(let request):
            m.pointee.call_case = FANOUT__V1__REQUEST__CALL_GET_RESULTS
            let r = arena.make(Fanout__V1__GetResultsRequest.self)
            fanout__v1__get_results_request__init(r)
            r.pointee.batch_id = request.batchID
            r.pointee.page_size = request.pageSize
            r.pointee.after_task_id = request.afterTaskID
            r.pointee.page_bytes = request.pageBytes
            m.pointee.get_results = r
        case .cancelBatch(let batchID):
            m.pointee.call_case = FANOUT__V1__REQUEST__CALL_CANCEL_BATCH
            let r = arena.make(Fanout__V1__CancelBatchRequest.self)
            fanout__v1__cancel_batch_request__init(r)
            r.pointee.batch_id = batchID
            m.pointee.cancel_batch = r
        case .cancelTask(let taskID):
            m.pointee.call_case = FANOUT__V1__REQUEST__CALL_CANCEL_TASK
            let r = arena.make(Fanout__V1__CancelTaskRequest.self)
            fanout__v1__cancel_task_request__init(r)
            r.pointee.task_id = taskID
            m.pointee.cancel_task = r
        case .retryFailed(let request):
            m.pointee.call_case = FANOUT__V1__REQUEST__CALL_RETRY_FAILED
            let r = arena.make(Fanout__V1__RetryFailedRequest.self)
            fanout__v1__retry_failed_request__init(r)
            r.pointee.batch_id = request.batchID
            r.pointee.include_expired = bool(request.includeExpired)
            r.pointee.include_cancelled = bool(request.includeCancelled)
            m.pointee.retry_failed = r
        case .subscribe(let request):
            m.pointee.call_case = FANOUT__V1__REQUEST__CALL_SUBSCRIBE
            m.pointee.subscribe = try one(request, subscribeRequest)
        case .workerSession(let register):
            m.pointee.call_case = FANOUT__V1__REQUEST__CALL_WORKER_SESSION
            m.pointee.worker_session = try one(register, workerRegister)
        case .serverInfo:
            m.pointee.call_case = FANOUT__V1__REQUEST__CALL_SERVER_INFO
            let r = arena.make(Fanout__V1__ServerInfoRequest.self)
            fanout__v1__server_info_request__init(r)
            m.pointee.server_info = r
        case .unknown:
            throw .unencodableValue("a request of unknown call cannot be sent")
        }
    }

    func response(_ value: Response, _ m: UnsafeMutablePointer<Fanout__V1__Response>) throws(WireError) {
        fanout__v1__response__init(m)
        switch value {
        case .welcome(let welcome):
            m.pointee.result_case = FANOUT__V1__RESPONSE__RESULT_WELCOME
            m.pointee.welcome = try one(welcome, self.welcome)
        case .enqueueBatch(let batch):
            m.pointee.result_case = FANOUT__V1__RESPONSE__RESULT_ENQUEUE_BATCH
            let r = arena.make(Fanout__V1__EnqueueBatchResponse.self)
            fanout__v1__enqueue_batch_response__init(r)
            r.pointee.batch = try one(batch, self.batch)
            m.pointee.enqueue_batch = r
        case .enqueueTask(let task):
            m.pointee.result_case = FANOUT__V1__RESPONSE__RESULT_ENQUEUE_TASK
            let r = arena.make(Fanout__V1__EnqueueTaskResponse.self)
            fanout__v1__enqueue_task_response__init(r)
            r.pointee.task = try one(task, self.task)
            m.pointee.enqueue_task = r
        case .getBatch(let batch):
            m.pointee.result_case = FANOUT__V1__RESPONSE__RESULT_GET_BATCH
            let r = arena.make(Fanout__V1__GetBatchResponse.self)
            fanout__v1__get_batch_response__init(r)
            r.pointee.batch = try one(batch, self.batch)
            m.pointee.get_batch = r
        case .listBatches(let page):
            m.pointee.result_case = FANOUT__V1__RESPONSE__RESULT_LIST_BATCHES
            let r = arena.make(Fanout__V1__ListBatchesResponse.self)
            fanout__v1__list_batches_response__init(r)
            (r.pointee.n_batches, r.pointee.batches) = try repeated(page.batches, batch)
            r.pointee.next_before_id = page.nextBeforeID
            m.pointee.list_batches = r
        case .getTask(let task):
            m.pointee.result_case = FANOUT__V1__RESPONSE__RESULT_GET_TASK
            let r = arena.make(Fanout__V1__GetTaskResponse.self)
            fanout__v1__get_task_response__init(r)
            r.pointee.task = try one(task, self.task)
            m.pointee.get_task = r
        case .cancelBatch(let batch):
            m.pointee.result_case = FANOUT__V1__RESPONSE__RESULT_CANCEL_BATCH
            let r = arena.make(Fanout__V1__CancelBatchResponse.self)
            fanout__v1__cancel_batch_response__init(r)
            r.pointee.batch = try one(batch, self.batch)
            m.pointee.cancel_batch = r
        case .cancelTask(let task):
            m.pointee.result_case = FANOUT__V1__RESPONSE__RESULT_CANCEL_TASK
            let r = arena.make(Fanout__V1__CancelTaskResponse.self)
            fanout__v1__cancel_task_response__init(r)
            r.pointee.task = try one(task, self.task)
            m.pointee.cancel_task = r
        case .retryFailed(let response):
            m.pointee.result_case = FANOUT__V1__RESPONSE__RESULT_RETRY_FAILED
            let r = arena.make(Fanout__V1__RetryFailedResponse.self)
            fanout__v1__retry_failed_response__init(r)
            r.pointee.batch = try one(response.batch, batch)
            r.pointee.retried = response.retried
            m.pointee.retry_failed = r
        case .serverInfo(let info):
            m.pointee.result_case = FANOUT__V1__RESPONSE__RESULT_SERVER_INFO
            m.pointee.server_info = try one(info, serverInfo)
        case .unknown:
            throw .unencodableValue("a response of unknown result cannot be sent")
        }
    }

    func streamMessage(_ value: StreamMessage, _ m: UnsafeMutablePointer<Fanout__V1__StreamMessage>) throws(WireError) {
        fanout__v1__stream_message__init(m)
        switch value {
        case .batchChunk(let chunk):
            m.pointee.body_case = FANOUT__V1__STREAM_MESSAGE__BODY_BATCH_CHUNK
            let c = arena.make(Fanout__V1__BatchChunk.self)
            fanout__v1__batch_chunk__init(c)
            (c.pointee.n_tasks, c.pointee.tasks) = try repeated(chunk.tasks, taskSpec)
            c.pointee.more = bool(chunk.more)
            m.pointee.batch_chunk = c
        case .event(let event):
            m.pointee.body_case = FANOUT__V1__STREAM_MESSAGE__BODY_EVENT
            m.pointee.event = try one(event, self.event)
        case .resultsPage(let results):
            m.pointee.body_case = FANOUT__V1__STREAM_MESSAGE__BODY_RESULTS_PAGE
            let page = arena.make(Fanout__V1__ResultsPage.self)
            fanout__v1__results_page__init(page)
            (page.pointee.n_results, page.pointee.results) = try repeated(results, taskResult)
            m.pointee.results_page = page
        case .worker(let message):
            m.pointee.body_case = FANOUT__V1__STREAM_MESSAGE__BODY_WORKER
            m.pointee.worker = try one(message, workerMessage)
        case .toWorker(let message):
            m.pointee.body_case = FANOUT__V1__STREAM_MESSAGE__BODY_TO_WORKER
            m.pointee.to_worker = try one(message, serverToWorker)
        case .unknown:
            throw .unencodableValue("a stream message of unknown body cannot be sent")
        }
    }

    func status(_ value: WireStatus, _ m: UnsafeMutablePointer<Fanout__V1__Status>) throws(WireError) {
        fanout__v1__status__init(m)
        m.pointee.code = Fanout__V1__StatusCode(rawValue: .init(truncatingIfNeeded: value.code.rawValue))
        try string(&m.pointee.message, value.message, "Status.message")
        m.pointee.lagged = bool(value.lagged)
        m.pointee.last_sequence = value.lastSequence
    }

    // MARK: Handshake

    func hello(_ value: Hello, _ m: UnsafeMutablePointer<Fanout__V1__Hello>) throws(WireError) {
        fanout__v1__hello__init(m)
        m.pointee.protocol_version = value.protocolVersion
        try string(&m.pointee.client_name, value.clientName, "Hello.client_name")
    }

    func welcome(_ value: Welcome, _ m: UnsafeMutablePointer<Fanout__V1__Welcome>) throws(WireError) {
        fanout__v1__welcome__init(m)
        try string(&m.pointee.server_version, value.serverVersion, "Welcome.server_version")
        m.pointee.protocol_version = value.protocolVersion
        m.pointee.max_frame_bytes = value.maxFrameBytes
        (m.pointee.n_features, m.pointee.features) = try strings(value.features, "Welcome.features")
        m.pointee.limits = try one(value.limits, limits)
    }

    func limits(_ value: Limits, _ m: UnsafeMutablePointer<Fanout__V1__Limits>) throws(WireError) {
        fanout__v1__limits__init(m)
        m.pointee.max_frame_bytes = value.maxFrameBytes
        m.pointee.max_tasks_per_batch = value.maxTasksPerBatch
        m.pointee.max_payload_bytes = value.maxPayloadBytes
        m.pointee.max_custom_id_bytes = value.maxCustomIDBytes
        m.pointee.max_streams_per_connection = value.maxStreamsPerConnection
        m.pointee.max_connections = value.maxConnections
        m.pointee.subscriber_buffer = value.subscriberBuffer
        m.pointee.global_concurrency = value.globalConcurrency
        m.pointee.max_results_page = value.maxResultsPage
        m.pointee.max_results_page_bytes = value.maxResultsPageBytes
    }

    // MARK: Domain

    func taskSpec(_ value: TaskSpec, _ m: UnsafeMutablePointer<Fanout__V1__TaskSpec>) throws(WireError) {
        fanout__v1__task_spec__init(m)
        try string(&m.pointee.custom_id, value.customID, "TaskSpec.custom_id")
        try string(&m.pointee.agent, value.agent, "TaskSpec.agent")
        m.pointee.payload = bytes(value.payload)
        m.pointee.priority = value.priority
        m.pointee.max_attempts = value.maxAttempts
        m.pointee.timeout_ms = value.timeoutMs
        try string(&m.pointee.url, value.url, "TaskSpec.url")
    }

    func taskError(_ value: TaskError, _ m: UnsafeMutablePointer<Fanout__V1__TaskError>) throws(WireError) {
        fanout__v1__task_error__init(m)
        try string(&m.pointee.message, value.message, "TaskError.message")
        try string(&m.pointee.code, value.code, "TaskError.code")
        m.pointee.retryable = bool(value.retryable)
    }

    func task(_ value: TaskInfo, _ m: UnsafeMutablePointer<Fanout__V1__Task>) throws(WireError) {
        fanout__v1__task__init(m)
        m.pointee.id = value.id
        m.pointee.batch_id = value.batchID
        try string(&m.pointee.custom_id, value.customID, "Task.custom_id")
        try string(&m.pointee.owner_id, value.ownerID, "Task.owner_id")
        try string(&m.pointee.agent, value.agent, "Task.agent")
        m.pointee.status = taskStatus(value.status)
        m.pointee.priority = value.priority
        m.pointee.attempt = value.attempt
        m.pointee.max_attempts = value.maxAttempts
        m.pointee.timeout_ms = value.timeoutMs
        m.pointee.turns_completed = value.turnsCompleted
        m.pointee.max_turns = value.maxTurns
        m.pointee.result = bytes(value.result)
        m.pointee.error = try optional(value.error, taskError)
        m.pointee.parent_task_id = value.parentTaskID
        m.pointee.created_at_ms = value.createdAtMs
        m.pointee.started_at_ms = value.startedAtMs
        m.pointee.finished_at_ms = value.finishedAtMs
        m.pointee.payload = bytes(value.payload)
        try string(&m.pointee.url, value.url, "Task.url")
        m.pointee.status_code = value.statusCode
        try string(&m.pointee.request_id, value.requestID, "Task.request_id")
        m.pointee.usage = try optional(value.usage, tokenUsage)
    }

    func batchCounts(_ value: BatchCounts, _ m: UnsafeMutablePointer<Fanout__V1__BatchCounts>) throws(WireError) {
        fanout__v1__batch_counts__init(m)
        m.pointee.total = value.total
        m.pointee.pending = value.pending
        m.pointee.running = value.running
        m.pointee.waiting_children = value.waitingChildren
        m.pointee.retry_wait = value.retryWait
        m.pointee.completed = value.completed
        m.pointee.failed = value.failed
        m.pointee.cancelled = value.cancelled
        m.pointee.expired = value.expired
    }

    func batch(_ value: BatchInfo, _ m: UnsafeMutablePointer<Fanout__V1__Batch>) throws(WireError) {
        fanout__v1__batch__init(m)
        m.pointee.id = value.id
        try string(&m.pointee.owner_id, value.ownerID, "Batch.owner_id")
        try string(&m.pointee.agent, value.agent, "Batch.agent")
        m.pointee.status = Fanout__V1__BatchStatus(rawValue: .init(truncatingIfNeeded: value.status.rawValue))
        m.pointee.counts = try one(value.counts, batchCounts)
        m.pointee.progress = value.progress
        (m.pointee.n_metadata, m.pointee.metadata) = try metadata(value.metadata, "Batch.metadata")
        m.pointee.parent_task_id = value.parentTaskID
        m.pointee.created_at_ms = value.createdAtMs
        m.pointee.started_at_ms = value.startedAtMs
        m.pointee.finished_at_ms = value.finishedAtMs
        m.pointee.deadline_at_ms = value.deadlineAtMs
        m.pointee.creator_uid = value.creatorUID
        m.pointee.max_turns = value.maxTurns
        m.pointee.usage = try value.usage.isZero ? nil : one(value.usage, tokenUsage)
    }

    func taskResult(_ value: TaskResult, _ m: UnsafeMutablePointer<Fanout__V1__TaskResult>) throws(WireError) {
        fanout__v1__task_result__init(m)
        m.pointee.task_id = value.taskID
        try string(&m.pointee.custom_id, value.customID, "TaskResult.custom_id")
        m.pointee.status = taskStatus(value.status)
        m.pointee.result = bytes(value.result)
        m.pointee.error = try optional(value.error, taskError)
        m.pointee.attempt = value.attempt
        m.pointee.status_code = value.statusCode
        try string(&m.pointee.request_id, value.requestID, "TaskResult.request_id")
        m.pointee.usage = try optional(value.usage, tokenUsage)
        try string(&m.pointee.url, value.url, "TaskResult.url")
    }

    func event(_ value: Event, _ m: UnsafeMutablePointer<Fanout__V1__Event>) throws(WireError) {
        fanout__v1__event__init(m)
        m.pointee.sequence = value.sequence
        m.pointee.type = eventType(value.type)
        m.pointee.timestamp_ms = value.timestampMs
        try string(&m.pointee.owner_id, value.ownerID, "Event.owner_id")
        m.pointee.batch_id = value.batchID
        m.pointee.task_id = value.taskID
        try string(&m.pointee.custom_id, value.customID, "Event.custom_id")
        m.pointee.parent_task_id = value.parentTaskID
        m.pointee.progress = value.progress
        m.pointee.counts = try optional(value.counts, batchCounts)
        m.pointee.attempt = value.attempt
        m.pointee.turn = value.turn
        m.pointee.retry_delay_ms = value.retryDelayMs
        m.pointee.error = try optional(value.error, taskError)
    }

    // MARK: Calls

    func enqueueBatchRequest(_ value: EnqueueBatchRequest, _ m: UnsafeMutablePointer<Fanout__V1__EnqueueBatchRequest>) throws(WireError) {
        fanout__v1__enqueue_batch_request__init(m)
        try string(&m.pointee.owner_id, value.ownerID, "EnqueueBatchRequest.owner_id")
        try string(&m.pointee.agent, value.agent, "EnqueueBatchRequest.agent")
        (m.pointee.n_metadata, m.pointee.metadata) = try metadata(value.metadata, "EnqueueBatchRequest.metadata")
        m.pointee.priority = value.priority
        m.pointee.completion_window_ms = value.completionWindowMs
        m.pointee.parent_task_id = value.parentTaskID
        (m.pointee.n_tasks, m.pointee.tasks) = try repeated(value.tasks, taskSpec)
        m.pointee.more = bool(value.more)
    }

    func subscribeRequest(_ value: SubscribeRequest, _ m: UnsafeMutablePointer<Fanout__V1__SubscribeRequest>) throws(WireError) {
        fanout__v1__subscribe_request__init(m)
        try string(&m.pointee.owner_id, value.ownerID, "SubscribeRequest.owner_id")
        if !value.eventTypes.isEmpty {
            let types = arena.make(Fanout__V1__EventType.self, count: value.eventTypes.count)
            for (index, type) in value.eventTypes.enumerated() {
                (types + index).initialize(to: eventType(type))
            }
            m.pointee.n_event_types = value.eventTypes.count
            m.pointee.event_types = types
        }
        m.pointee.batch_id = value.batchID
        m.pointee.since = value.since
        m.pointee.follow = bool(value.follow)
    }

    func agentInfo(_ value: AgentInfo, _ m: UnsafeMutablePointer<Fanout__V1__AgentInfo>) throws(WireError) {
        fanout__v1__agent_info__init(m)
        try string(&m.pointee.name, value.name, "AgentInfo.name")
        try string(&m.pointee.runner, value.runner, "AgentInfo.runner")
        m.pointee.concurrency = value.concurrency
        m.pointee.max_turns = value.maxTurns
        m.pointee.max_attempts = value.maxAttempts
        m.pointee.running = value.running
        m.pointee.workers = value.workers
    }

    func serverInfo(_ value: ServerInfo, _ m: UnsafeMutablePointer<Fanout__V1__ServerInfoResponse>) throws(WireError) {
        fanout__v1__server_info_response__init(m)
        try string(&m.pointee.server_version, value.serverVersion, "ServerInfoResponse.server_version")
        m.pointee.protocol_version = value.protocolVersion
        m.pointee.started_at_ms = value.startedAtMs
        m.pointee.pending_tasks = value.pendingTasks
        m.pointee.running_tasks = value.runningTasks
        m.pointee.retry_wait_tasks = value.retryWaitTasks
        m.pointee.connections = value.connections
        m.pointee.workers = value.workers
        m.pointee.limits = try one(value.limits, limits)
        (m.pointee.n_agents, m.pointee.agents) = try repeated(value.agents, agentInfo)
        m.pointee.last_sequence = value.lastSequence
        (m.pointee.n_worker_list, m.pointee.worker_list) = try repeated(value.workerList, connectedWorker)
    }

    func connectedWorker(_ value: ConnectedWorker, _ m: UnsafeMutablePointer<Fanout__V1__ConnectedWorker>) throws(WireError) {
        fanout__v1__connected_worker__init(m)
        m.pointee.id = value.id
        try string(&m.pointee.name, value.name, "ConnectedWorker.name")
        m.pointee.uid = value.uid
        (m.pointee.n_agents, m.pointee.agents) = try repeated(value.agents) { (slots: ConnectedWorker.Slots, s: UnsafeMutablePointer<Fanout__V1__WorkerSlots>) throws(WireError) in
            fanout__v1__worker_slots__init(s)
            try string(&s.pointee.agent, slots.agent, "WorkerSlots.agent")
            s.pointee.slots = slots.slots
            s.pointee.free_slots = slots.freeSlots
        }
        if !value.runningTaskIDs.isEmpty {
            let ids = arena.make(UInt64.self, count: value.runningTaskIDs.count)
            value.runningTaskIDs.withUnsafeBufferPointer { source in
                _ = UnsafeMutableBufferPointer(start: ids, count: value.runningTaskIDs.count).initialize(from: source)
            }
            m.pointee.n_running_task_ids = value.runningTaskIDs.count
            m.pointee.running_task_ids = ids
        }
    }

    // MARK: Worker session

    func workerRegister(_ value: WorkerRegister, _ m: UnsafeMutablePointer<Fanout__V1__WorkerRegister>) throws(WireError) {
        fanout__v1__worker_register__init(m)
        try string(&m.pointee.worker_name, value.workerName, "WorkerRegister.worker_name")
        (m.pointee.n_agents, m.pointee.agents) = try repeated(value.agents, agentRegistration)
    }

    func agentRegistration(_ value: AgentRegistration, _ m: UnsafeMutablePointer<Fanout__V1__AgentRegistration>) throws(WireError) {
        fanout__v1__agent_registration__init(m)
        try string(&m.pointee.name, value.name, "AgentRegistration.name")
        m.pointee.concurrency = value.concurrency
        m.pointee.max_turns = value.maxTurns
    }

    func tokenUsage(_ value: TokenUsage, _ m: UnsafeMutablePointer<Fanout__V1__TokenUsage>) throws(WireError) {
        fanout__v1__token_usage__init(m)
        m.pointee.prompt_tokens = value.promptTokens
        m.pointee.completion_tokens = value.completionTokens
        m.pointee.total_tokens = value.totalTokens
    }

    func workerMessage(_ value: WorkerMessage, _ m: UnsafeMutablePointer<Fanout__V1__WorkerMessage>) throws(WireError) {
        fanout__v1__worker_message__init(m)
        switch value {
        case .turn(let taskID, let turns):
            m.pointee.kind_case = FANOUT__V1__WORKER_MESSAGE__KIND_TURN
            let t = arena.make(Fanout__V1__WorkerTurn.self)
            fanout__v1__worker_turn__init(t)
            t.pointee.task_id = taskID
            t.pointee.turns = turns
            m.pointee.turn = t
        case .heartbeat(let taskIDs):
            m.pointee.kind_case = FANOUT__V1__WORKER_MESSAGE__KIND_HEARTBEAT
            let h = arena.make(Fanout__V1__WorkerHeartbeat.self)
            fanout__v1__worker_heartbeat__init(h)
            if !taskIDs.isEmpty {
                let ids = arena.make(UInt64.self, count: taskIDs.count)
                taskIDs.withUnsafeBufferPointer { source in
                    _ = UnsafeMutableBufferPointer(start: ids, count: taskIDs.count).initialize(from: source)
                }
                h.pointee.n_task_ids = taskIDs.count
                h.pointee.task_ids = ids
            }
            m.pointee.heartbeat = h
        case .spawn(let taskID, let children):
            m.pointee.kind_case = FANOUT__V1__WORKER_MESSAGE__KIND_SPAWN
            let s = arena.make(Fanout__V1__WorkerSpawn.self)
            fanout__v1__worker_spawn__init(s)
            s.pointee.task_id = taskID
            s.pointee.children = try one(children, enqueueBatchRequest)
            m.pointee.spawn = s
        case .result(let taskID, let result, let usage):
            m.pointee.kind_case = FANOUT__V1__WORKER_MESSAGE__KIND_RESULT
            let r = arena.make(Fanout__V1__WorkerResult.self)
            fanout__v1__worker_result__init(r)
            r.pointee.task_id = taskID
            r.pointee.result = bytes(result)
            r.pointee.usage = try optional(usage, tokenUsage)
            m.pointee.result = r
        case .failure(let taskID, let error, let retryAfterMs):
            m.pointee.kind_case = FANOUT__V1__WORKER_MESSAGE__KIND_FAILURE
            let f = arena.make(Fanout__V1__WorkerFailure.self)
            fanout__v1__worker_failure__init(f)
            f.pointee.task_id = taskID
            f.pointee.error = try one(error, taskError)
            f.pointee.retry_after_ms = retryAfterMs
            m.pointee.failure = f
        case .waitChildren(let taskID, let timeoutMs):
            m.pointee.kind_case = FANOUT__V1__WORKER_MESSAGE__KIND_WAIT_CHILDREN
            let w = arena.make(Fanout__V1__WorkerWaitChildren.self)
            fanout__v1__worker_wait_children__init(w)
            w.pointee.task_id = taskID
            w.pointee.timeout_ms = timeoutMs
            m.pointee.wait_children = w
        case .drain:
            m.pointee.kind_case = FANOUT__V1__WORKER_MESSAGE__KIND_DRAIN
            let d = arena.make(Fanout__V1__WorkerDrain.self)
            fanout__v1__worker_drain__init(d)
            m.pointee.drain = d
        }
    }

    func serverToWorker(_ value: ServerToWorker, _ m: UnsafeMutablePointer<Fanout__V1__ServerToWorker>) throws(WireError) {
        fanout__v1__server_to_worker__init(m)
        switch value {
        case .assignment(let task, let leaseMs, let resumed):
            m.pointee.kind_case = FANOUT__V1__SERVER_TO_WORKER__KIND_ASSIGNMENT
            let a = arena.make(Fanout__V1__WorkerAssignment.self)
            fanout__v1__worker_assignment__init(a)
            a.pointee.task = try one(task, self.task)
            a.pointee.lease_ms = leaseMs
            a.pointee.resumed = resumed ? 1 : 0
            m.pointee.assignment = a
        case .cancel(let taskID):
            m.pointee.kind_case = FANOUT__V1__SERVER_TO_WORKER__KIND_CANCEL
            let c = arena.make(Fanout__V1__WorkerCancel.self)
            fanout__v1__worker_cancel__init(c)
            c.pointee.task_id = taskID
            m.pointee.cancel = c
        case .childrenDone(let taskID, let childBatchID, let results, let last):
            m.pointee.kind_case = FANOUT__V1__SERVER_TO_WORKER__KIND_CHILDREN_DONE
            let d = arena.make(Fanout__V1__WorkerChildrenDone.self)
            fanout__v1__worker_children_done__init(d)
            d.pointee.task_id = taskID
            d.pointee.child_batch_id = childBatchID
            (d.pointee.n_results, d.pointee.results) = try repeated(results, taskResult)
            d.pointee.last = last ? 1 : 0
            m.pointee.children_done = d
        case .ack(let taskID, let status):
            m.pointee.kind_case = FANOUT__V1__SERVER_TO_WORKER__KIND_ACK
            let a = arena.make(Fanout__V1__WorkerAck.self)
            fanout__v1__worker_ack__init(a)
            a.pointee.task_id = taskID
            a.pointee.status = try one(status, self.status)
            m.pointee.ack = a
        case .spawned(let taskID, let childBatchID, let status):
            m.pointee.kind_case = FANOUT__V1__SERVER_TO_WORKER__KIND_SPAWNED
            let s = arena.make(Fanout__V1__WorkerSpawned.self)
            fanout__v1__worker_spawned__init(s)
            s.pointee.task_id = taskID
            s.pointee.child_batch_id = childBatchID
            s.pointee.status = try one(status, self.status)
            m.pointee.spawned = s
        }
    }

    // MARK: Building blocks

    /// One sub-message, filled by `fill`.
    func one<Value, Message>(_ value: Value, _ fill: Fill<Value, Message>) throws(WireError) -> UnsafeMutablePointer<Message> {
        let m = arena.make(Message.self)
        try fill(value, m)
        return m
    }

    /// An optional sub-message: NULL (absent on the wire) for nil.
    func optional<Value, Message>(_ value: Value?, _ fill: Fill<Value, Message>) throws(WireError) -> UnsafeMutablePointer<Message>? {
        guard let value else { return nil }
        return try one(value, fill)
    }

    /// A repeated message field: the structs in one block, plus the array of
    /// pointers to them that protobuf-c wants. Two allocations for any count.
    func repeated<Value, Message>(
        _ values: [Value],
        _ fill: Fill<Value, Message>
    ) throws(WireError) -> (Int, UnsafeMutablePointer<UnsafeMutablePointer<Message>?>?) {
        guard !values.isEmpty else { return (0, nil) }
        let structs = arena.make(Message.self, count: values.count)
        let pointers = arena.make(UnsafeMutablePointer<Message>?.self, count: values.count)
        for index in values.indices {
            let m = structs + index
            try fill(values[index], m)
            (pointers + index).initialize(to: m)
        }
        return (values.count, pointers)
    }

    /// A repeated string field; every element needs a real C string, even "".
    func strings(_ values: [String], _ field: StaticString) throws(WireError) -> (Int, UnsafeMutablePointer<UnsafeMutablePointer<CChar>?>?) {
        guard !values.isEmpty else { return (0, nil) }
        let pointers = arena.make(UnsafeMutablePointer<CChar>?.self, count: values.count)
        for index in values.indices {
            (pointers + index).initialize(to: try cString(values[index], field))
        }
        return (values.count, pointers)
    }

    /// A map sent as repeated MetadataEntry, sorted by key so the same map
    /// always encodes to the same bytes.
    func metadata(
        _ map: [String: String],
        _ field: StaticString
    ) throws(WireError) -> (Int, UnsafeMutablePointer<UnsafeMutablePointer<Fanout__V1__MetadataEntry>?>?) {
        try repeated(map.sorted { $0.key < $1.key }) { (entry: (key: String, value: String), m: UnsafeMutablePointer<Fanout__V1__MetadataEntry>) throws(WireError) in
            fanout__v1__metadata_entry__init(m)
            try string(&m.pointee.key, entry.key, field)
            try string(&m.pointee.value, entry.value, field)
        }
    }

    /// Sets a singular string field; an empty string keeps protobuf-c's default.
    func string(_ field: inout UnsafeMutablePointer<CChar>?, _ value: String, _ name: StaticString) throws(WireError) {
        guard !value.isEmpty else { return }
        field = try cString(value, name)
    }

    func cString(_ value: String, _ name: StaticString) throws(WireError) -> UnsafeMutablePointer<CChar> {
        guard let pointer = arena.cString(value) else {
            throw .unencodableValue("\(name) contains a NUL character, which protobuf-c strings cannot carry")
        }
        return pointer
    }

    func bytes(_ value: [UInt8]) -> ProtobufCBinaryData {
        ProtobufCBinaryData(len: value.count, data: arena.bytes(value))
    }

    func bool(_ value: Bool) -> protobuf_c_boolean {
        value ? 1 : 0
    }

    func taskStatus(_ value: TaskStatus) -> Fanout__V1__TaskStatus {
        Fanout__V1__TaskStatus(rawValue: .init(truncatingIfNeeded: value.rawValue))
    }

    func eventType(_ value: EventType) -> Fanout__V1__EventType {
        Fanout__V1__EventType(rawValue: .init(truncatingIfNeeded: value.rawValue))
    }
}
