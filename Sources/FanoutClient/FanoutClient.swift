import FanoutWire
import Foundation
import NIOCore
import NIOPosix

/// A connection to `fanoutd`: enqueue batches, read their state and
/// results, follow their events, cancel them.
///
/// One client multiplexes any number of concurrent calls and subscriptions
/// over its socket; it is safe to share between tasks. `withFanoutClient`
/// connects, runs a body and closes the client whatever happens.
///
/// ```swift
/// let client = try await FanoutClient.connect()
/// let batch = try await client.enqueueBatch(ownerID: "me", agent: "echo",
///     tasks: [TaskSpec(customID: "a", payload: Array("hi".utf8))])
/// for try await event in client.subscribe(ownerID: "me", batchID: batch.id) {
///     if event.type == .batchCompleted { break }
/// }
/// for try await result in client.results(batchID: batch.id) { print(result.customID) }
/// ```
public final class FanoutClient: Sendable {
    /// What the daemon announced in the handshake: version and limits.
    public let welcome: Welcome
    let connection: ClientConnection

    private init(connection: ClientConnection, welcome: Welcome) {
        self.connection = connection
        self.welcome = welcome
    }

    /// The socket a client uses when none is given: `$FANOUT_SOCKET`, else the daemon's default.
    public static var defaultSocketPath: String {
        let environment = ProcessInfo.processInfo.environment
        if let socket = environment["FANOUT_SOCKET"], !socket.isEmpty { return socket }
        return DefaultSocket.path(environment: environment)
    }

    /// Connects and performs the handshake.
    ///
    /// - Parameter trustedSocketOwners: whose socket file to accept; by default
    ///   the caller's own uid or root's (see `SocketOwnerPolicy`).
    public static func connect(
        socketPath: String = FanoutClient.defaultSocketPath,
        clientName: String = "fanout-swift",
        maxFrameBytes: Int = 64 * 1024 * 1024,
        trustedSocketOwners: SocketOwnerPolicy = .fromEnvironment(ProcessInfo.processInfo.environment),
        group: any EventLoopGroup = MultiThreadedEventLoopGroup.singleton
    ) async throws -> FanoutClient {
        try trustedSocketOwners.check(socketPath)
        let connection = try await ClientConnection.connect(socketPath: socketPath, maxFrameBytes: maxFrameBytes, group: group)
        do {
            let (_, frames) = try await connection.open(.hello(Hello(clientName: clientName)), streamID: 0)
            defer { connection.forget(0) }
            for try await frame in frames {
                switch frame.kind {
                case .response(.welcome(let welcome)):
                    if welcome.maxFrameBytes > 0 { connection.adoptDaemonFrameLimit(Int(welcome.maxFrameBytes)) }
                    return FanoutClient(connection: connection, welcome: welcome)
                case .end(let status):
                    throw FanoutClientError(status)
                default:
                    continue
                }
            }
            throw FanoutClientError.connectionLost("fanoutd closed the connection during the handshake")
        } catch {
            await connection.close()
            throw error
        }
    }

    public func close() async {
        await connection.close()
    }

    /// A client dropped without `close()` still releases its socket (and with
    /// it the reader task); streams being iterated keep their client alive.
    deinit {
        connection.closeNow()
    }

    // MARK: Enqueue

    /// Enqueues a batch and returns it once the daemon has committed it.
    /// A batch too big for one frame is sent in chunks and still committed
    /// atomically: all of it or none.
    ///
    /// - Parameter completionWindow: the batch's deadline, from now; tasks not
    ///   finished by then expire and the batch fails. Nil: no deadline.
    public func enqueueBatch(
        ownerID: String, agent: String, tasks: [TaskSpec], metadata: [String: String] = [:],
        priority: Int32 = 0, completionWindow: Duration? = nil
    ) async throws -> BatchInfo {
        let windowMs = try completionWindow.map(Self.milliseconds) ?? 0
        let chunks = TaskChunker(maxFrameBytes: Int(welcome.maxFrameBytes)).chunks(of: tasks)
        var request = EnqueueBatchRequest(ownerID: ownerID, agent: agent, metadata: metadata, priority: priority,
                                          completionWindowMs: windowMs, tasks: Array(tasks[chunks[0]]),
                                          more: chunks.count > 1)
        if chunks.count == 1 {
            guard case .enqueueBatch(let batch) = try await unary(.enqueueBatch(request)) else { throw unexpected() }
            return batch
        }
        request.more = true
        let (id, frames) = try await connection.open(.enqueueBatch(request))
        defer { connection.forget(id) }
        // The daemon may refuse early (a limit); its answer is read concurrently with the sending.
        return try await cancellingOnFailure(id) {
            try await withThrowingTaskGroup(of: BatchInfo?.self) { group in
            group.addTask {
                for (index, range) in chunks.enumerated().dropFirst() {
                    // A caller that gave up stops the upload here, not after the last chunk: writes that fit
                    // the socket's buffers never suspend, so they would not see the cancellation.
                    try Task.checkCancellation()
                    let chunk = BatchChunk(tasks: Array(tasks[range]), more: index < chunks.count - 1)
                    try await self.connection.send(Frame(streamID: id, kind: .message(.batchChunk(chunk))))
                }
                return nil
            }
            group.addTask {
                guard case .enqueueBatch(let batch) = try await Self.awaitResponse(frames) else { throw Self.unexpected() }
                return batch
            }
            while let value = try await group.next() {
                if let batch = value {
                    group.cancelAll()
                    return batch
                }
            }
            throw Self.unexpected()
            }
        }
    }

    /// Enqueues one task as a batch of one.
    public func enqueueTask(ownerID: String, task: TaskSpec) async throws -> TaskInfo {
        guard case .enqueueTask(let info) = try await unary(.enqueueTask(EnqueueTaskRequest(ownerID: ownerID, task: task))) else {
            throw unexpected()
        }
        return info
    }

    // MARK: Reads

    public func batch(_ id: UInt64) async throws -> BatchInfo {
        guard case .getBatch(let batch) = try await unary(.getBatch(batchID: id)) else { throw unexpected() }
        return batch
    }

    /// Batches, newest first; pass `nextBeforeID` of a page as `beforeID` for the next.
    /// Nil `ownerID`: every owner this user may see; nil `limit`: the daemon's default page.
    /// - Parameter parentBatchID: only the child batches that this batch's tasks spawned.
    public func batches(ownerID: String? = nil, limit: Int? = nil, beforeID: UInt64? = nil,
                        parentBatchID: UInt64? = nil) async throws -> BatchPage {
        let request = ListBatchesRequest(ownerID: ownerID ?? "", limit: UInt32(clamping: limit ?? 0), beforeID: beforeID ?? 0,
                                         parentBatchID: parentBatchID ?? 0)
        guard case .listBatches(let page) = try await unary(.listBatches(request)) else {
            throw unexpected()
        }
        return page
    }

    public func task(_ id: UInt64, includePayload: Bool = false) async throws -> TaskInfo {
        guard case .getTask(let task) = try await unary(.getTask(GetTaskRequest(taskID: id, includePayload: includePayload))) else {
            throw unexpected()
        }
        return task
    }

    /// The results of a batch's finished tasks, in task order, fetched page by
    /// page. A page holds at most `pageSize` results and `pageBytes` bytes of
    /// them, but always at least one result; nil: the daemon's maximum
    /// (`welcome.limits.maxResultsPage`, `maxResultsPageBytes`), to which
    /// larger values are also reduced. A consumer slower than the daemon
    /// has a few pages waiting for it at most, never the whole batch: the
    /// stream pauses meanwhile and goes on after the last result taken.
    public func results(batchID: UInt64, afterTaskID: UInt64? = nil, pageSize: Int? = nil,
                        pageBytes: Int? = nil) -> ServerStream<TaskResult> {
        let request = GetResultsRequest(batchID: batchID, pageSize: UInt32(clamping: pageSize ?? 0), afterTaskID: afterTaskID ?? 0,
                                        pageBytes: UInt32(clamping: pageBytes ?? 0))
        var stream = serverStream(.getResults(request)) { message in
            if case .resultsPage(let page) = message { return page }
            return []
        }
        // A consumer slower than the daemon (output to a slow pipe) holds this many pages, and
        // then some in flight; past them the stream pauses and resumes after the last result taken.
        stream.bufferLimit = Self.resultsPagesBuffered
        stream.sequence = { $0.taskID }
        stream.initialSequence = request.afterTaskID
        stream.resume = { last in
            var next = request
            next.afterTaskID = last
            return .getResults(next)
        }
        return stream
    }

    /// Result pages a results stream buffers for its consumer before it pauses.
    static let resultsPagesBuffered = 8

    // MARK: Events

    /// Events of an owner (or one batch): the stored ones after `since`, then
    /// live ones while `follow` is true. A subscriber that falls behind ends
    /// with a `FanoutClientError` whose `lagged` is set; subscribe again with
    /// `since: error.lastSequence` to resume without a gap.
    ///
    /// The client holds at most `subscriberBuffer` undelivered events per
    /// subscription, plus what one read from the socket brought: a consumer
    /// that stops iterating is cut off the same way, rather than the client's
    /// memory growing without bound.
    ///
    /// Nil `ownerID`: every owner whose batches this user may see (all of
    /// them for the daemon's own user and root). Nil `since`: only what
    /// happens from now on (with `follow`), or everything stored (without).
    public func subscribe(ownerID: String? = nil, eventTypes: [EventType] = [], batchID: UInt64? = nil, since: UInt64? = nil,
                          follow: Bool = true, subscriberBuffer: Int = 10_000) -> ServerStream<Event> {
        let request = SubscribeRequest(ownerID: ownerID ?? "", eventTypes: eventTypes, batchID: batchID ?? 0, since: since ?? 0,
                                       follow: follow)
        var stream = serverStream(.subscribe(request)) { message in
            if case .event(let event) = message { return [event] }
            return []
        }
        stream.extractOne = { message in
            if case .event(let event) = message { return event }
            return nil
        }
        stream.bufferLimit = subscriberBuffer
        stream.sequence = { $0.sequence }
        stream.initialSequence = since ?? 0
        return stream
    }

    // MARK: Cancel

    /// Cancels every unfinished task of the batch. Idempotent.
    public func cancelBatch(_ id: UInt64) async throws -> BatchInfo {
        guard case .cancelBatch(let batch) = try await unary(.cancelBatch(batchID: id)) else { throw unexpected() }
        return batch
    }

    public func cancelTask(_ id: UInt64) async throws -> TaskInfo {
        guard case .cancelTask(let task) = try await unary(.cancelTask(taskID: id)) else { throw unexpected() }
        return task
    }

    /// Runs a finished batch's failed tasks again (and, if asked, its expired
    /// and cancelled ones), keeping the completed results. The batch goes back
    /// to processing; returns it and how many tasks will run again.
    public func retryFailed(_ batchID: UInt64, includeExpired: Bool = false, includeCancelled: Bool = false) async throws -> RetryFailedResponse {
        let request = RetryFailedRequest(batchID: batchID, includeExpired: includeExpired, includeCancelled: includeCancelled)
        guard case .retryFailed(let response) = try await unary(.retryFailed(request)) else { throw unexpected() }
        return response
    }

    public func serverInfo() async throws -> ServerInfo {
        guard case .serverInfo(let info) = try await unary(.serverInfo) else { throw unexpected() }
        return info
    }

    // MARK: Plumbing

    private func unary(_ request: Request) async throws -> Response {
        let (id, frames) = try await connection.open(request)
        defer { connection.forget(id) }
        return try await cancellingOnFailure(id) { try await Self.awaitResponse(frames) }
    }

    /// Runs a call on stream `id`; if it ends without the daemon's final frame
    /// (the caller cancelled, a send failed), tells the daemon to drop the
    /// stream, so nothing half-sent (a staged batch) waits for more.
    private func cancellingOnFailure<T>(_ id: UInt32, _ body: () async throws -> T) async throws -> T {
        do {
            return try await body()
        } catch let error as FanoutClientError where error.code != .unavailable {
            throw error  // the daemon ended the stream itself
        } catch {
            let connection = connection
            Task { try? await connection.send(Frame(streamID: id, kind: .cancel)) }
            if Task.isCancelled { throw CancellationError() }
            throw error
        }
    }

    private static func awaitResponse(_ frames: FrameStream) async throws -> Response {
        for try await frame in frames {
            switch frame.kind {
            case .response(let response): return response
            case .end(let status): throw FanoutClientError(status)
            default: continue
            }
        }
        // The stream's iteration also ends when the calling task is cancelled.
        try Task.checkCancellation()
        throw FanoutClientError.connectionLost()
    }

    private func serverStream<Element: Sendable>(
        _ request: Request, _ extract: @escaping @Sendable (StreamMessage) -> [Element]
    ) -> ServerStream<Element> {
        ServerStream(client: self, request: request, extract: extract)
    }

    private func unexpected() -> FanoutClientError { Self.unexpected() }

    /// Whole milliseconds of a non-negative duration, saturating (the daemon refuses what is over its limit).
    static func milliseconds(_ duration: Duration) throws(FanoutClientError) -> UInt64 {
        guard duration >= .zero else {
            throw FanoutClientError(code: .invalidArgument, message: "a duration must not be negative, not \(duration)")
        }
        // `components` traps past Int64.max seconds; such a duration saturates.
        guard duration < .seconds(Int64.max) else { return .max }
        let (seconds, attoseconds) = duration.components
        let (whole, overflow) = UInt64(seconds).multipliedReportingOverflow(by: 1_000)
        return overflow ? .max : whole.addingReportingOverflow(UInt64(attoseconds / 1_000_000_000_000_000)).partialValue
    }

    private static func unexpected() -> FanoutClientError {
        FanoutClientError(code: .internal, message: "fanoutd sent an unexpected response")
    }
}

/// Connects to the daemon, runs `body` with the client, and closes the client
/// when `body` returns or throws, as grpc-swift's `withGRPCClient` does.
///
/// ```swift
/// let batch = try await withFanoutClient { client in
///     try await client.enqueueBatch(ownerID: "me", agent: "echo", tasks: tasks)
/// }
/// ```
public func withFanoutClient<Result: Sendable>(
    socketPath: String = FanoutClient.defaultSocketPath,
    clientName: String = "fanout-swift",
    _ body: (FanoutClient) async throws -> Result
) async throws -> Result {
    let client = try await FanoutClient.connect(socketPath: socketPath, clientName: clientName)
    do {
        let result = try await body(client)
        await client.close()
        return result
    } catch {
        await client.close()
        throw error
    }
}
