import CProtobufC
import FanoutProtoC

/// Turns protobuf-c's unpacked structs into the Swift protocol types.
///
/// Rules (forward compatibility and safety): a oneof with no case set is
/// malformed; enum numbers this build does not know become `.unknown` /
/// `.unspecified`; strings must be valid UTF-8 (protobuf-c does not check);
/// an absent sub-message reads as its default (proto3), except where the Swift
/// type is optional, where it reads as nil.
enum ProtoDecoder {
    typealias Pointer<Message> = UnsafeMutablePointer<Message>

    // MARK: Framing and streams

    static func frame(_ pointer: Pointer<Fanout__V1__Frame>) throws(WireError) -> Frame {
        let m = pointer.pointee
        let kind: Frame.Kind
        switch m.kind_case {
        case FANOUT__V1__FRAME__KIND_REQUEST:
            kind = .request(try request(present(m.request, "Frame.request")))
        case FANOUT__V1__FRAME__KIND_RESPONSE:
            kind = .response(try response(present(m.response, "Frame.response")))
        case FANOUT__V1__FRAME__KIND_MESSAGE:
            kind = .message(try streamMessage(present(m.message, "Frame.message")))
        case FANOUT__V1__FRAME__KIND_CANCEL:
            kind = .cancel
        case FANOUT__V1__FRAME__KIND_END:
            let end = try present(m.end, "Frame.end").pointee
            kind = .end(try end.status.map(status) ?? .ok)
        default:
            // A newer peer's kind (or none): ignored by the receiver, as PROTOCOL.md §12 says.
            kind = .unknown
        }
        return Frame(streamID: m.stream_id, kind: kind)
    }

    static func request(_ pointer: Pointer<Fanout__V1__Request>) throws(WireError) -> Request {
        let m = pointer.pointee
        switch m.call_case {
        case FANOUT__V1__REQUEST__CALL_HELLO:
            let hello = try present(m.hello, "Request.hello").pointee
            return .hello(Hello(
                protocolVersion: hello.protocol_version,
                clientName: try string(hello.client_name, "Hello.client_name")
            ))
        case FANOUT__V1__REQUEST__CALL_ENQUEUE_BATCH:
            return .enqueueBatch(try enqueueBatchRequest(present(m.enqueue_batch, "Request.enqueue_batch")))
        case FANOUT__V1__REQUEST__CALL_ENQUEUE_TASK:
            let r = try present(m.enqueue_task, "Request.enqueue_task").pointee
            return .enqueueTask(EnqueueTaskRequest(
                ownerID: try string(r.owner_id, "EnqueueTaskRequest.owner_id"),
                task: try r.task.map(taskSpec) ?? TaskSpec(customID: "", payload: [])
            ))
        case FANOUT__V1__REQUEST__CALL_GET_BATCH:
            return .getBatch(batchID: try present(m.get_batch, "Request.get_batch").pointee.batch_id)
        case FANOUT__V1__REQUEST__CALL_LIST_BATCHES:
            let r = try present(m.list_batches, "Request.list_batches").pointee
            return .listBatches(ListBatchesRequest(
                ownerID: try string(r.owner_id, "ListBatchesRequest.owner_id"),
                limit: r.limit,
                beforeID: r.before_id,
                parentBatchID: r.parent_batch_id
            ))
        case FANOUT__V1__REQUEST__CALL_GET_TASK:
            let r = try present(m.get_task, "Request.get_task").pointee
            return .getTask(GetTaskRequest(taskID: r.task_id, includePayload: r.include_payload != 0))
        case FANOUT__V1__REQUEST__CALL_GET_RESULTS:
            let r = try present(m.get_results, "Request.get_results").pointee
            return .getResults(GetResultsRequest(batchID: r.batch_id, pageSize: r.page_size, afterTaskID: r.after_task_id,
                                                 pageBytes: r.page_bytes))
        case FANOUT__V1__REQUEST__CALL_CANCEL_BATCH:
            return .cancelBatch(batchID: try present(m.cancel_batch, "Request.cancel_batch").pointee.batch_id)
        case FANOUT__V1__REQUEST__CALL_CANCEL_TASK:
            return .cancelTask(taskID: try present(m.cancel_task, "Request.cancel_task").pointee.task_id)
        case FANOUT__V1__REQUEST__CALL_RETRY_FAILED:
            let r = try present(m.retry_failed, "Request.retry_failed").pointee
            return .retryFailed(RetryFailedRequest(
                batchID: r.batch_id,
                includeExpired: r.include_expired != 0,
                includeCancelled: r.include_cancelled != 0
            ))
        case FANOUT__V1__REQUEST__CALL_SUBSCRIBE:
            return .subscribe(try subscribeRequest(present(m.subscribe, "Request.subscribe")))
        case FANOUT__V1__REQUEST__CALL_WORKER_SESSION:
            return .workerSession(try workerRegister(present(m.worker_session, "Request.worker_session")))
        case FANOUT__V1__REQUEST__CALL_SERVER_INFO:
            return .serverInfo
        default:
            return .unknown
        }
    }

    static func response(_ pointer: Pointer<Fanout__V1__Response>) throws(WireError) -> Response {
        let m = pointer.pointee
        switch m.result_case {
        case FANOUT__V1__RESPONSE__RESULT_WELCOME:
            return .welcome(try welcome(present(m.welcome, "Response.welcome")))
        case FANOUT__V1__RESPONSE__RESULT_ENQUEUE_BATCH:
            return .enqueueBatch(try batchOrDefault(present(m.enqueue_batch, "Response.enqueue_batch").pointee.batch))
        case FANOUT__V1__RESPONSE__RESULT_ENQUEUE_TASK:
            return .enqueueTask(try taskOrDefault(present(m.enqueue_task, "Response.enqueue_task").pointee.task))
        case FANOUT__V1__RESPONSE__RESULT_GET_BATCH:
            return .getBatch(try batchOrDefault(present(m.get_batch, "Response.get_batch").pointee.batch))
        case FANOUT__V1__RESPONSE__RESULT_LIST_BATCHES:
            let r = try present(m.list_batches, "Response.list_batches").pointee
            return .listBatches(BatchPage(
                batches: try repeated(r.n_batches, r.batches, "ListBatchesResponse.batches", batch),
                nextBeforeID: r.next_before_id
            ))
        case FANOUT__V1__RESPONSE__RESULT_GET_TASK:
            return .getTask(try taskOrDefault(present(m.get_task, "Response.get_task").pointee.task))
        case FANOUT__V1__RESPONSE__RESULT_CANCEL_BATCH:
            return .cancelBatch(try batchOrDefault(present(m.cancel_batch, "Response.cancel_batch").pointee.batch))
        case FANOUT__V1__RESPONSE__RESULT_CANCEL_TASK:
            return .cancelTask(try taskOrDefault(present(m.cancel_task, "Response.cancel_task").pointee.task))
        case FANOUT__V1__RESPONSE__RESULT_RETRY_FAILED:
            let r = try present(m.retry_failed, "Response.retry_failed").pointee
            return .retryFailed(RetryFailedResponse(batch: try batchOrDefault(r.batch), retried: r.retried))
        case FANOUT__V1__RESPONSE__RESULT_SERVER_INFO:
            return .serverInfo(try serverInfo(present(m.server_info, "Response.server_info")))
        default:
            return .unknown
        }
    }

    static func streamMessage(_ pointer: Pointer<Fanout__V1__StreamMessage>) throws(WireError) -> StreamMessage {
        let m = pointer.pointee
        switch m.body_case {
        case FANOUT__V1__STREAM_MESSAGE__BODY_BATCH_CHUNK:
            let c = try present(m.batch_chunk, "StreamMessage.batch_chunk").pointee
            return .batchChunk(BatchChunk(
                tasks: try repeated(c.n_tasks, c.tasks, "BatchChunk.tasks", taskSpec),
                more: c.more != 0
            ))
        case FANOUT__V1__STREAM_MESSAGE__BODY_EVENT:
            return .event(try event(present(m.event, "StreamMessage.event")))
        case FANOUT__V1__STREAM_MESSAGE__BODY_RESULTS_PAGE:
            let page = try present(m.results_page, "StreamMessage.results_page").pointee
            return .resultsPage(try repeated(page.n_results, page.results, "ResultsPage.results", taskResult))
        case FANOUT__V1__STREAM_MESSAGE__BODY_WORKER:
            return .worker(try workerMessage(present(m.worker, "StreamMessage.worker")))
        case FANOUT__V1__STREAM_MESSAGE__BODY_TO_WORKER:
            return .toWorker(try serverToWorker(present(m.to_worker, "StreamMessage.to_worker")))
        default:
            return .unknown
        }
    }

    static func status(_ pointer: Pointer<Fanout__V1__Status>) throws(WireError) -> WireStatus {
        let m = pointer.pointee
        return WireStatus(
            code: StatusCode(rawValue: UInt32(truncatingIfNeeded: m.code.rawValue)) ?? .unknown,
            message: try string(m.message, "Status.message"),
            lagged: m.lagged != 0,
            lastSequence: m.last_sequence
        )
    }

    // MARK: Handshake

    static func welcome(_ pointer: Pointer<Fanout__V1__Welcome>) throws(WireError) -> Welcome {
        let m = pointer.pointee
        var features: [String] = []
        if m.n_features > 0, let items = m.features {
            features.reserveCapacity(m.n_features)
            for index in 0..<m.n_features {
                features.append(try string(items[index], "Welcome.features"))
            }
        }
        return Welcome(
            serverVersion: try string(m.server_version, "Welcome.server_version"),
            protocolVersion: m.protocol_version,
            maxFrameBytes: m.max_frame_bytes,
            features: features,
            limits: m.limits.map(limits) ?? Limits()
        )
    }

    static func limits(_ pointer: Pointer<Fanout__V1__Limits>) -> Limits {
        let m = pointer.pointee
        var value = Limits()
        value.maxFrameBytes = m.max_frame_bytes
        value.maxTasksPerBatch = m.max_tasks_per_batch
        value.maxPayloadBytes = m.max_payload_bytes
        value.maxCustomIDBytes = m.max_custom_id_bytes
        value.maxStreamsPerConnection = m.max_streams_per_connection
        value.maxConnections = m.max_connections
        value.subscriberBuffer = m.subscriber_buffer
        value.globalConcurrency = m.global_concurrency
        value.maxResultsPage = m.max_results_page
        value.maxResultsPageBytes = m.max_results_page_bytes
        return value
    }

    // MARK: Domain

    static func taskSpec(_ pointer: Pointer<Fanout__V1__TaskSpec>) throws(WireError) -> TaskSpec {
        let m = pointer.pointee
        return TaskSpec(
            customID: try string(m.custom_id, "TaskSpec.custom_id"),
            agent: try string(m.agent, "TaskSpec.agent"),
            payload: bytes(m.payload),
            priority: m.priority,
            maxAttempts: m.max_attempts,
            timeoutMs: m.timeout_ms,
            url: try string(m.url, "TaskSpec.url")
        )
    }

    static func taskError(_ pointer: Pointer<Fanout__V1__TaskError>) throws(WireError) -> TaskError {
        let m = pointer.pointee
        return TaskError(
            message: try string(m.message, "TaskError.message"),
            code: try string(m.code, "TaskError.code"),
            retryable: m.retryable != 0
        )
    }

    static func task(_ pointer: Pointer<Fanout__V1__Task>) throws(WireError) -> TaskInfo {
        let m = pointer.pointee
        var value = TaskInfo()
        value.id = m.id
        value.batchID = m.batch_id
        value.customID = try string(m.custom_id, "Task.custom_id")
        value.ownerID = try string(m.owner_id, "Task.owner_id")
        value.agent = try string(m.agent, "Task.agent")
        value.status = taskStatus(m.status)
        value.priority = m.priority
        value.attempt = m.attempt
        value.maxAttempts = m.max_attempts
        value.timeoutMs = m.timeout_ms
        value.turnsCompleted = m.turns_completed
        value.maxTurns = m.max_turns
        value.result = bytes(m.result)
        value.error = try m.error.map(taskError)
        value.parentTaskID = m.parent_task_id
        value.createdAtMs = m.created_at_ms
        value.startedAtMs = m.started_at_ms
        value.finishedAtMs = m.finished_at_ms
        value.payload = bytes(m.payload)
        value.url = try string(m.url, "Task.url")
        value.statusCode = m.status_code
        value.requestID = try string(m.request_id, "Task.request_id")
        value.usage = m.usage.map(tokenUsage)
        return value
    }

    static func batchCounts(_ pointer: Pointer<Fanout__V1__BatchCounts>) -> BatchCounts {
        let m = pointer.pointee
        var value = BatchCounts()
        value.total = m.total
        value.pending = m.pending
        value.running = m.running
        value.waitingChildren = m.waiting_children
        value.retryWait = m.retry_wait
        value.completed = m.completed
        value.failed = m.failed
        value.cancelled = m.cancelled
        value.expired = m.expired
        return value
    }

    static func batch(_ pointer: Pointer<Fanout__V1__Batch>) throws(WireError) -> BatchInfo {
        let m = pointer.pointee
        var value = BatchInfo()
        value.id = m.id
        value.ownerID = try string(m.owner_id, "Batch.owner_id")
        value.agent = try string(m.agent, "Batch.agent")
        value.status = BatchStatus(rawValue: UInt32(truncatingIfNeeded: m.status.rawValue)) ?? .unspecified
        value.counts = m.counts.map(batchCounts) ?? BatchCounts()
        value.progress = m.progress
        value.metadata = try metadata(m.n_metadata, m.metadata, "Batch.metadata")
        value.parentTaskID = m.parent_task_id
        value.createdAtMs = m.created_at_ms
        value.startedAtMs = m.started_at_ms
        value.finishedAtMs = m.finished_at_ms
        value.deadlineAtMs = m.deadline_at_ms
        value.creatorUID = m.creator_uid
        value.maxTurns = m.max_turns
        value.usage = m.usage.map(tokenUsage) ?? TokenUsage()
        return value
    }

    static func taskResult(_ pointer: Pointer<Fanout__V1__TaskResult>) throws(WireError) -> TaskResult {
        let m = pointer.pointee
        return TaskResult(
            taskID: m.task_id,
            customID: try string(m.custom_id, "TaskResult.custom_id"),
            status: taskStatus(m.status),
            result: bytes(m.result),
            error: try m.error.map(taskError),
            attempt: m.attempt,
            statusCode: m.status_code,
            requestID: try string(m.request_id, "TaskResult.request_id"),
            usage: m.usage.map(tokenUsage),
            url: try string(m.url, "TaskResult.url")
        )
    }

    static func event(_ pointer: Pointer<Fanout__V1__Event>) throws(WireError) -> Event {
        let m = pointer.pointee
        var value = Event()
        value.sequence = m.sequence
        value.type = eventType(m.type)
        value.timestampMs = m.timestamp_ms
        value.ownerID = try string(m.owner_id, "Event.owner_id")
        value.batchID = m.batch_id
        value.taskID = m.task_id
        value.customID = try string(m.custom_id, "Event.custom_id")
        value.parentTaskID = m.parent_task_id
        value.progress = m.progress
        value.counts = m.counts.map(batchCounts)
        value.attempt = m.attempt
        value.turn = m.turn
        value.retryDelayMs = m.retry_delay_ms
        value.error = try m.error.map(taskError)
        return value
    }

    // MARK: Calls

    static func enqueueBatchRequest(_ pointer: Pointer<Fanout__V1__EnqueueBatchRequest>) throws(WireError) -> EnqueueBatchRequest {
        let m = pointer.pointee
        return EnqueueBatchRequest(
            ownerID: try string(m.owner_id, "EnqueueBatchRequest.owner_id"),
            agent: try string(m.agent, "EnqueueBatchRequest.agent"),
            metadata: try metadata(m.n_metadata, m.metadata, "EnqueueBatchRequest.metadata"),
            priority: m.priority,
            completionWindowMs: m.completion_window_ms,
            parentTaskID: m.parent_task_id,
            tasks: try repeated(m.n_tasks, m.tasks, "EnqueueBatchRequest.tasks", taskSpec),
            more: m.more != 0
        )
    }

    static func subscribeRequest(_ pointer: Pointer<Fanout__V1__SubscribeRequest>) throws(WireError) -> SubscribeRequest {
        let m = pointer.pointee
        var types: [EventType] = []
        if m.n_event_types > 0, let items = m.event_types {
            types = UnsafeBufferPointer(start: items, count: m.n_event_types).map(eventType)
        }
        return SubscribeRequest(
            ownerID: try string(m.owner_id, "SubscribeRequest.owner_id"),
            eventTypes: types,
            batchID: m.batch_id,
            since: m.since,
            follow: m.follow != 0
        )
    }

    static func agentInfo(_ pointer: Pointer<Fanout__V1__AgentInfo>) throws(WireError) -> AgentInfo {
        let m = pointer.pointee
        return AgentInfo(
            name: try string(m.name, "AgentInfo.name"),
            runner: try string(m.runner, "AgentInfo.runner"),
            concurrency: m.concurrency,
            maxTurns: m.max_turns,
            maxAttempts: m.max_attempts,
            running: m.running,
            workers: m.workers
        )
    }

    static func serverInfo(_ pointer: Pointer<Fanout__V1__ServerInfoResponse>) throws(WireError) -> ServerInfo {
        let m = pointer.pointee
        var value = ServerInfo()
        value.serverVersion = try string(m.server_version, "ServerInfoResponse.server_version")
        value.protocolVersion = m.protocol_version
        value.startedAtMs = m.started_at_ms
        value.pendingTasks = m.pending_tasks
        value.runningTasks = m.running_tasks
        value.retryWaitTasks = m.retry_wait_tasks
        value.connections = m.connections
        value.workers = m.workers
        value.limits = m.limits.map(limits) ?? Limits()
        value.agents = try repeated(m.n_agents, m.agents, "ServerInfoResponse.agents", agentInfo)
        value.lastSequence = m.last_sequence
        value.workerList = try repeated(m.n_worker_list, m.worker_list, "ServerInfoResponse.worker_list") {
            (w: Pointer<Fanout__V1__ConnectedWorker>) throws(WireError) -> ConnectedWorker in
            let worker = w.pointee
            let agents = try repeated(worker.n_agents, worker.agents, "ConnectedWorker.agents") {
                (s: Pointer<Fanout__V1__WorkerSlots>) throws(WireError) -> ConnectedWorker.Slots in
                ConnectedWorker.Slots(agent: try string(s.pointee.agent, "WorkerSlots.agent"), slots: s.pointee.slots,
                                      freeSlots: s.pointee.free_slots)
            }
            let ids = worker.n_running_task_ids > 0 && worker.running_task_ids != nil
                ? Array(UnsafeBufferPointer(start: worker.running_task_ids, count: worker.n_running_task_ids)) : []
            return ConnectedWorker(id: worker.id, name: try string(worker.name, "ConnectedWorker.name"), uid: worker.uid,
                                   agents: agents, runningTaskIDs: ids)
        }
        return value
    }

    // MARK: Worker session

    static func workerRegister(_ pointer: Pointer<Fanout__V1__WorkerRegister>) throws(WireError) -> WorkerRegister {
        let m = pointer.pointee
        return WorkerRegister(
            workerName: try string(m.worker_name, "WorkerRegister.worker_name"),
            agents: try repeated(m.n_agents, m.agents, "WorkerRegister.agents") { (p: Pointer<Fanout__V1__AgentRegistration>) throws(WireError) in
                let a = p.pointee
                return AgentRegistration(
                    name: try string(a.name, "AgentRegistration.name"),
                    concurrency: a.concurrency,
                    maxTurns: a.max_turns
                )
            }
        )
    }

    static func workerMessage(_ pointer: Pointer<Fanout__V1__WorkerMessage>) throws(WireError) -> WorkerMessage {
        let m = pointer.pointee
        switch m.kind_case {
        case FANOUT__V1__WORKER_MESSAGE__KIND_TURN:
            let t = try present(m.turn, "WorkerMessage.turn").pointee
            return .turn(taskID: t.task_id, turns: t.turns)
        case FANOUT__V1__WORKER_MESSAGE__KIND_HEARTBEAT:
            let h = try present(m.heartbeat, "WorkerMessage.heartbeat").pointee
            var ids: [UInt64] = []
            if h.n_task_ids > 0, let items = h.task_ids {
                ids = Array(UnsafeBufferPointer(start: items, count: h.n_task_ids))
            }
            return .heartbeat(taskIDs: ids)
        case FANOUT__V1__WORKER_MESSAGE__KIND_SPAWN:
            let s = try present(m.spawn, "WorkerMessage.spawn").pointee
            return .spawn(
                taskID: s.task_id,
                children: try s.children.map(enqueueBatchRequest) ?? EnqueueBatchRequest(ownerID: "", agent: "", tasks: [])
            )
        case FANOUT__V1__WORKER_MESSAGE__KIND_RESULT:
            let r = try present(m.result, "WorkerMessage.result").pointee
            return .result(taskID: r.task_id, result: bytes(r.result), usage: r.usage.map(tokenUsage))
        case FANOUT__V1__WORKER_MESSAGE__KIND_FAILURE:
            let f = try present(m.failure, "WorkerMessage.failure").pointee
            return .failure(
                taskID: f.task_id,
                error: try f.error.map(taskError) ?? TaskError(message: ""),
                retryAfterMs: f.retry_after_ms
            )
        case FANOUT__V1__WORKER_MESSAGE__KIND_WAIT_CHILDREN:
            let w = try present(m.wait_children, "WorkerMessage.wait_children").pointee
            return .waitChildren(taskID: w.task_id, timeoutMs: w.timeout_ms)
        case FANOUT__V1__WORKER_MESSAGE__KIND_DRAIN:
            return .drain
        default:
            throw .malformedFrame("worker message carries no kind")
        }
    }

    static func tokenUsage(_ pointer: Pointer<Fanout__V1__TokenUsage>) -> TokenUsage {
        TokenUsage(promptTokens: pointer.pointee.prompt_tokens, completionTokens: pointer.pointee.completion_tokens,
                   totalTokens: pointer.pointee.total_tokens)
    }

    static func serverToWorker(_ pointer: Pointer<Fanout__V1__ServerToWorker>) throws(WireError) -> ServerToWorker {
        let m = pointer.pointee
        switch m.kind_case {
        case FANOUT__V1__SERVER_TO_WORKER__KIND_ASSIGNMENT:
            let a = try present(m.assignment, "ServerToWorker.assignment").pointee
            return .assignment(task: try taskOrDefault(a.task), leaseMs: a.lease_ms, resumed: a.resumed != 0)
        case FANOUT__V1__SERVER_TO_WORKER__KIND_CANCEL:
            return .cancel(taskID: try present(m.cancel, "ServerToWorker.cancel").pointee.task_id)
        case FANOUT__V1__SERVER_TO_WORKER__KIND_CHILDREN_DONE:
            let d = try present(m.children_done, "ServerToWorker.children_done").pointee
            return .childrenDone(
                taskID: d.task_id,
                childBatchID: d.child_batch_id,
                results: try repeated(d.n_results, d.results, "WorkerChildrenDone.results", taskResult),
                last: d.last != 0
            )
        case FANOUT__V1__SERVER_TO_WORKER__KIND_ACK:
            let a = try present(m.ack, "ServerToWorker.ack").pointee
            return .ack(taskID: a.task_id, status: try a.status.map(status) ?? .ok)
        case FANOUT__V1__SERVER_TO_WORKER__KIND_SPAWNED:
            let s = try present(m.spawned, "ServerToWorker.spawned").pointee
            return .spawned(taskID: s.task_id, childBatchID: s.child_batch_id, status: try s.status.map(status) ?? .ok)
        default:
            throw .malformedFrame("server-to-worker message carries no kind")
        }
    }

    // MARK: Building blocks

    /// The sub-message of a oneof case that is set. protobuf-c always
    /// allocates it; the check guards against a future library that does not.
    static func present<Message>(_ pointer: Pointer<Message>?, _ field: StaticString) throws(WireError) -> Pointer<Message> {
        guard let pointer else { throw .malformedFrame("\(field) is set but empty") }
        return pointer
    }

    static func batchOrDefault(_ pointer: Pointer<Fanout__V1__Batch>?) throws(WireError) -> BatchInfo {
        guard let pointer else { return BatchInfo() }
        return try batch(pointer)
    }

    static func taskOrDefault(_ pointer: Pointer<Fanout__V1__Task>?) throws(WireError) -> TaskInfo {
        guard let pointer else { return TaskInfo() }
        return try task(pointer)
    }

    static func repeated<Message, Value>(
        _ count: Int,
        _ items: UnsafeMutablePointer<Pointer<Message>?>?,
        _ field: StaticString,
        _ convert: (Pointer<Message>) throws(WireError) -> Value
    ) throws(WireError) -> [Value] {
        guard count > 0, let items else { return [] }
        var values: [Value] = []
        values.reserveCapacity(count)
        for index in 0..<count {
            guard let item = items[index] else { throw .malformedFrame("\(field) holds an empty element") }
            values.append(try convert(item))
        }
        return values
    }

    /// Repeated MetadataEntry back to a map; a repeated key keeps the last
    /// value, as protobuf maps do.
    static func metadata(
        _ count: Int,
        _ items: UnsafeMutablePointer<Pointer<Fanout__V1__MetadataEntry>?>?,
        _ field: StaticString
    ) throws(WireError) -> [String: String] {
        guard count > 0, let items else { return [:] }
        var map: [String: String] = [:]
        map.reserveCapacity(count)
        for index in 0..<count {
            guard let entry = items[index]?.pointee else { throw .malformedFrame("\(field) holds an empty element") }
            map[try string(entry.key, field)] = try string(entry.value, field)
        }
        return map
    }

    /// protobuf-c copies string bytes as they came and NUL-terminates them; it
    /// does not check UTF-8, so this does.
    static func string(_ pointer: UnsafeMutablePointer<CChar>?, _ field: StaticString) throws(WireError) -> String {
        guard let pointer, pointer.pointee != 0 else { return "" }
        guard let value = String(validatingCString: pointer) else {
            throw .malformedFrame("invalid UTF-8 in \(field)")
        }
        return value
    }

    static func bytes(_ data: ProtobufCBinaryData) -> [UInt8] {
        guard data.len > 0, let base = data.data else { return [] }
        return Array(UnsafeBufferPointer(start: base, count: data.len))
    }

    static func taskStatus(_ value: Fanout__V1__TaskStatus) -> TaskStatus {
        TaskStatus(rawValue: UInt32(truncatingIfNeeded: value.rawValue)) ?? .unspecified
    }

    static func eventType(_ value: Fanout__V1__EventType) -> EventType {
        EventType(rawValue: UInt32(truncatingIfNeeded: value.rawValue)) ?? .unspecified
    }
}
