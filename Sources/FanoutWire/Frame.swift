/// One protocol frame: a stream id and what travels on it.
public struct Frame: Sendable, Hashable {
    public var streamID: UInt32
    public var kind: Kind

    public init(streamID: UInt32, kind: Kind) {
        self.streamID = streamID
        self.kind = kind
    }

    public enum Kind: Sendable, Hashable {
        /// Client → server: opens the stream.
        case request(Request)
        /// Server → client: the unary reply; ends the stream with OK.
        case response(Response)
        /// Either way, on an open stream.
        case message(StreamMessage)
        /// Client → server: abandon the stream.
        case cancel
        /// Either way: the stream is over, with this status.
        case end(WireStatus)
        /// A kind this build does not know (a newer peer's); receivers ignore it.
        /// Never sent.
        case unknown
        /// A frame that decoded but breaks a protocol rule in its content (a
        /// string holding NUL): the receiver ends the frame's stream with this
        /// status, and the connection goes on. Never sent.
        case rejected(WireStatus)
    }
}

public enum Request: Sendable, Hashable {
    case hello(Hello)
    case enqueueBatch(EnqueueBatchRequest)
    case enqueueTask(EnqueueTaskRequest)
    case getBatch(batchID: UInt64)
    case listBatches(ListBatchesRequest)
    case getTask(GetTaskRequest)
    case getResults(GetResultsRequest)
    case cancelBatch(batchID: UInt64)
    case cancelTask(taskID: UInt64)
    case retryFailed(RetryFailedRequest)
    case subscribe(SubscribeRequest)
    case workerSession(WorkerRegister)
    case serverInfo
    /// A call this build does not know; the daemon answers UNIMPLEMENTED. Never sent.
    case unknown
}

public enum Response: Sendable, Hashable {
    case welcome(Welcome)
    case enqueueBatch(BatchInfo)
    case enqueueTask(TaskInfo)
    case getBatch(BatchInfo)
    case listBatches(BatchPage)
    case getTask(TaskInfo)
    case cancelBatch(BatchInfo)
    case cancelTask(TaskInfo)
    case retryFailed(RetryFailedResponse)
    case serverInfo(ServerInfo)
    /// A result this build does not know. Never sent.
    case unknown
}

public enum StreamMessage: Sendable, Hashable {
    case batchChunk(BatchChunk)
    case event(Event)
    case resultsPage([TaskResult])
    case worker(WorkerMessage)
    case toWorker(ServerToWorker)
    /// A body this build does not know; receivers ignore it. Never sent.
    case unknown
}
