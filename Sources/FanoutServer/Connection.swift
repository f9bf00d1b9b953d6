import FanoutCore
import FanoutScheduler
import FanoutStore
import FanoutWire
import Logging
import NIOCore
import Synchronization

/// One client connection: the handshake, then many concurrent streams.
///
/// Each stream runs as its own Swift task and writes its frames through the
/// shared outbound writer, so a slow subscription does not hold up calls on
/// the same socket. The stream table is the only shared state, behind a lock.
final class Connection: Sendable {
    private struct OpenStream {
        var task: Task<Void, Never>?
        /// Where the chunks of a chunked EnqueueBatch go.
        var chunks: ChunkPipe?
        /// The worker session this stream is, which handles its messages.
        var workerSession: WorkerSessionServer?
        /// Server streams are interrupted at shutdown; unary calls may finish.
        var interruptible: Bool
    }

    private struct StreamTable {
        var handshakeDone = false
        var lastStreamID: UInt32 = 0
        var open: [UInt32: OpenStream] = [:]
        var shuttingDown = false
        /// Set by shutdown: runs when the last open stream ends.
        var onDrained: (@Sendable () -> Void)?
    }

    private let service: FanoutService
    private let peer: PeerCredentials
    private let channel: any Channel
    private let logger: Logger
    private let table = Mutex(StreamTable())

    init(service: FanoutService, peer: PeerCredentials, channel: any Channel, logger: Logger) {
        self.service = service
        self.peer = peer
        self.channel = channel
        var logger = logger
        logger[metadataKey: "peer_uid"] = "\(peer.uid)"
        logger[metadataKey: "peer_pid"] = "\(peer.pid)"
        self.logger = logger
    }

    private var configuration: ServerConfiguration { service.configuration }

    func run(_ asyncChannel: NIOAsyncChannel<Frame, ByteBuffer>) async {
        // A peer that never says Hello would hold a connection slot for ever.
        let handshakeTimer = scheduleHandshakeTimeout()
        do {
            try await asyncChannel.executeThenClose { inbound, outbound in
                let writer = FrameWriter(outbound: outbound, maxFrameBytes: configuration.maxFrameBytes)
                do {
                    for try await frame in inbound {
                        guard await handle(frame, writer: writer) else { break }
                    }
                } catch {
                    // Undecodable input: say why on stream 0, then close. Nothing accepted is touched.
                    let status = WireStatus(from: error)
                    logger.notice("closing connection after bad input", metadata: ["error": "\(status)"])
                    await writer.send(Frame(streamID: 0, kind: .end(status)))
                }
                await closeStreams()
            }
        } catch {
            logger.debug("connection ended", metadata: ["error": "\(error)"])
        }
        handshakeTimer.cancel()
    }

    private func scheduleHandshakeTimeout() -> Scheduled<Void> {
        let timeoutMs = configuration.handshakeTimeoutMs
        return channel.eventLoop.scheduleTask(in: .milliseconds(timeoutMs)) { [self] in
            guard !self.table.withLock({ $0.handshakeDone }) else { return }
            logger.notice("closing connection: no Hello within the handshake timeout", metadata: ["timeout_ms": "\(timeoutMs)"])
            let status = WireStatus(code: .deadlineExceeded,
                                    message: "no Hello within \(timeoutMs) ms of connecting (handshake_timeout_ms)")
            let channel = self.channel
            var buffer = channel.allocator.buffer(capacity: 128)
            try? FrameCoding.encodeFramed(Frame(streamID: 0, kind: .end(status)), into: &buffer)
            channel.writeAndFlush(buffer).whenComplete { _ in channel.close(promise: nil) }
        }
    }

    /// Asks the connection to end: server streams end with UNAVAILABLE, unary
    /// calls in flight get their answer, then the socket closes.
    func beginShutdown() {
        let (interrupted, unfinishedEnqueues, workerSessions) = table.withLock { table in
            table.shuttingDown = true
            return (table.open.values.filter(\.interruptible).compactMap(\.task),
                    table.open.values.compactMap(\.chunks), table.open.values.compactMap(\.workerSession))
        }
        for task in interrupted { task.cancel() }
        // Worker sessions end once the message being handled is: their other tasks go back to pending for after the restart.
        for session in workerSessions { session.end() }
        // An EnqueueBatch still waiting for chunks has nothing committed: it
        // ends now with UNAVAILABLE instead of holding shutdown up.
        for chunks in unfinishedEnqueues { chunks.close() }
        // Closed once the last stream has written its final frame, or at the end of the grace period:
        // a client that stalls mid-call must not hold the daemon up past it.
        let closeAtGraceEnd = channel.eventLoop.scheduleTask(in: .milliseconds(configuration.shutdownGracePeriodMs)) { [channel] in
            channel.close(promise: nil)
        }
        let closeNow = table.withLock { table -> Bool in
            table.onDrained = { [channel] in
                closeAtGraceEnd.cancel()
                channel.close(promise: nil)
            }
            return table.open.isEmpty
        }
        if closeNow {
            closeAtGraceEnd.cancel()
            channel.close(promise: nil)
        }
    }

    /// Handles one inbound frame; returns false when the connection must close.
    private func handle(_ frame: Frame, writer: FrameWriter) async -> Bool {
        let handshakeDone = table.withLock { $0.handshakeDone }
        guard handshakeDone else { return await handshake(frame, writer: writer) }

        switch frame.kind {
        case .request(let request):
            return await open(frame.streamID, request, writer: writer)
        case .rejected(let status):
            // Its content breaks a rule (a NUL in a string): that stream ends, the connection goes on.
            // A refused chunk of a chunked EnqueueBatch ends that enqueue, which commits nothing.
            if let pipe = table.withLock({ $0.open[frame.streamID]?.chunks }) {
                pipe.fail(status)
                return true
            }
            return await refuse(frame.streamID, status, writer: writer)
        case .message(.batchChunk(let chunk)):
            // Waits while the stream is storing earlier chunks: that is the backpressure.
            let pipe = table.withLock { $0.open[frame.streamID]?.chunks }
            await pipe?.send(chunk)
        case .message(.worker(let message)):
            // Handled here, in order: a worker reporting faster than the daemon records waits.
            let session = table.withLock { $0.open[frame.streamID]?.workerSession }
            await session?.handle(message)
        case .message, .unknown:
            // Messages for another kind of stream, and unknown kinds from newer clients,
            // are ignored (PROTOCOL.md §12).
            break
        case .cancel, .end:
            let (task, pipe, session) = table.withLock {
                ($0.open[frame.streamID]?.task, $0.open[frame.streamID]?.chunks, $0.open[frame.streamID]?.workerSession)
            }
            pipe?.close()
            session?.end()
            task?.cancel()
        case .response:
            return await refuse(frame.streamID, WireStatus(code: .invalidArgument, message: "clients do not send responses"),
                                writer: writer)
        }
        return true
    }

    /// Ends a stream that never opened with `status`. A frame for a stream that
    /// is open cannot be answered on that id without giving the stream a second
    /// final frame: the client has broken the protocol, and the connection ends.
    private func refuse(_ id: UInt32, _ status: WireStatus, writer: FrameWriter) async -> Bool {
        if table.withLock({ $0.open[id] != nil }) {
            await writer.send(Frame(streamID: 0, kind: .end(WireStatus(
                code: .invalidArgument, message: "stream \(id) is open and cannot be used again: \(status.message)"))))
            return false
        }
        await writer.send(Frame(streamID: id, kind: .end(status)))
        return true
    }

    private func handshake(_ frame: Frame, writer: FrameWriter) async -> Bool {
        guard frame.streamID == 0, case .request(.hello(let hello)) = frame.kind else {
            await writer.send(Frame(streamID: 0, kind: .end(WireStatus(
                code: .failedPrecondition, message: "the first frame must be Hello on stream 0"))))
            return false
        }
        do {
            let welcome = try service.welcome(hello)
            table.withLock { $0.handshakeDone = true }
            await writer.send(Frame(streamID: 0, kind: .response(.welcome(welcome))))
            return true
        } catch {
            await writer.send(Frame(streamID: 0, kind: .end(error)))
            return false
        }
    }

    // MARK: Streams

    private enum Admission {
        case admitted
        case refused(WireStatus)
        /// Cannot be answered on the stream itself: the connection ends with this on stream 0.
        case violation(WireStatus)
    }

    private func open(_ id: UInt32, _ request: Request, writer: FrameWriter) async -> Bool {
        let interruptible: Bool
        var chunks: ChunkPipe?
        switch request {
        case .subscribe, .getResults, .workerSession: interruptible = true
        case .enqueueBatch(let batch) where batch.more:
            interruptible = false
            chunks = ChunkPipe()
        default: interruptible = false
        }
        let admission = table.withLock { table -> Admission in
            if table.open[id] != nil {
                return .violation(WireStatus(code: .invalidArgument,
                                             message: "stream \(id) is open and cannot be used again; stream ids increase and are never reused"))
            }
            guard id % 2 == 1, id > table.lastStreamID else {
                return .refused(WireStatus(code: .invalidArgument,
                                           message: "stream id \(id) is not odd and greater than \(table.lastStreamID)"))
            }
            table.lastStreamID = id
            if table.shuttingDown {
                return .refused(WireStatus(code: .unavailable, message: "the daemon is shutting down"))
            }
            if table.open.count >= configuration.maxStreamsPerConnection {
                return .refused(WireStatus(code: .resourceExhausted,
                                           message: "\(table.open.count) streams are open; the limit is \(configuration.maxStreamsPerConnection) per connection (max_streams_per_connection)"))
            }
            table.open[id] = OpenStream(task: nil, chunks: chunks, workerSession: nil, interruptible: interruptible)
            return .admitted
        }
        switch admission {
        case .admitted:
            break
        case .refused(let status):
            // Written from the read loop, so a client that floods refused requests
            // without reading is slowed by backpressure instead of piling up tasks.
            await writer.send(Frame(streamID: id, kind: .end(status)))
            return true
        case .violation(let status):
            await writer.send(Frame(streamID: 0, kind: .end(status)))
            return false
        }
        // A whole batch (or one task) is checked and handed to the store from here, the read loop:
        // its first tasks start without waiting for the stream's task to be scheduled first.
        var startedEnqueue: Result<PendingResult<InsertedBatch>, any Error>?
        switch request {
        case .enqueueBatch(let batch) where !batch.more && Self.isCheckedOnReadLoop(batch.tasks):
            startedEnqueue = service.startEnqueueBatch(batch, peer: peer)
        case .enqueueTask(let task) where Self.isCheckedOnReadLoop([task.task]):
            startedEnqueue = service.startEnqueueTask(task, peer: peer)
        default: break
        }
        // A worker is registered from here too, so the frames it sends next find its session.
        var workerSession: WorkerSessionServer?
        if case .workerSession(let register) = request, let pool = service.workerPool {
            switch WorkerSessionServer.open(register, pool: pool, service: service, peer: peer, streamID: id, writer: writer,
                                            channel: channel) {
            case .success(let session):
                workerSession = session
                table.withLock { $0.open.modifyValue(forKey: id) { $0.workerSession = session } }
            case .failure(let status):
                // Open until its final frame is written, as every stream: shutdown closes the socket once none is.
                await writer.send(Frame(streamID: id, kind: .end(status)))
                let drained = table.withLock { table -> (@Sendable () -> Void)? in
                    table.open.removeValue(forKey: id)
                    return table.open.isEmpty ? table.onDrained : nil
                }
                drained?()
                return true
            }
        }
        let started = startedEnqueue
        let session = workerSession
        let task = Task {
            let status = await self.serve(id, request, chunks: chunks, workerSession: session, startedEnqueue: started,
                                          writer: writer)
            if let status {
                // This task may be cancelled (a Cancel frame, shutdown), and NIO's async
                // writer refuses writes from a cancelled task: send the final frame from
                // a task that is not, so CANCELLED / UNAVAILABLE still reach the client.
                await Task { await writer.send(Frame(streamID: id, kind: .end(status))) }.value
            }
            // Open until its final frame is written: shutdown closes the socket once no stream is open.
            let drained = self.table.withLock { table -> (@Sendable () -> Void)? in
                table.open.removeValue(forKey: id)
                return table.open.isEmpty ? table.onDrained : nil
            }
            drained?()
        }
        // Shutdown may have begun between the admission and now, and found no task to cancel.
        let interruptNow = table.withLock { table -> Bool in
            table.open.modifyValue(forKey: id) { $0.task = task }
            return table.shuttingDown && interruptible
        }
        if interruptNow { task.cancel() }
        return true
    }

    /// Serves one stream. Returns the status that ends it, or nil when a
    /// response frame already ended it.
    /// Bigger unchunked batches (a client may put hundreds of thousands of small tasks in one
    /// frame) are checked by their stream's task, so the connection's other frames do not wait.
    static let maxTasksCheckedOnReadLoop = 1_024
    /// Payload bytes checked on the read loop, which runs on the event loop (decision 52): a
    /// runner may parse each payload (the OpenAI runner reads its JSON), and a frame of megabytes
    /// would hold up every connection of that event loop meanwhile.
    static let maxPayloadBytesCheckedOnReadLoop = 64 * 1_024

    static func isCheckedOnReadLoop(_ tasks: [TaskSpec]) -> Bool {
        guard tasks.count <= maxTasksCheckedOnReadLoop else { return false }
        var bytes = 0
        for task in tasks {
            bytes += task.payload.count
            if bytes > maxPayloadBytesCheckedOnReadLoop { return false }
        }
        return true
    }

    private func serve(_ id: UInt32, _ request: Request, chunks: ChunkPipe?, workerSession: WorkerSessionServer?,
                       startedEnqueue: Result<PendingResult<InsertedBatch>, any Error>?, writer: FrameWriter) async -> WireStatus? {
        do {
            switch request {
            case .hello:
                return WireStatus(code: .invalidArgument, message: "Hello is only valid as the first frame, on stream 0")
            case .enqueueBatch(let batch):
                if batch.more, let chunks {
                    return await reply(id, .enqueueBatch(try await enqueueChunked(batch, chunks: chunks)), writer)
                }
                let started = startedEnqueue ?? service.startEnqueueBatch(batch, peer: peer)
                return await reply(id, .enqueueBatch(BatchInfo(try await started.get().value.batch)), writer)
            case .enqueueTask(let task):
                let started = startedEnqueue ?? service.startEnqueueTask(task, peer: peer)
                return await reply(id, .enqueueTask(TaskInfo(try await started.get().value.taskRecord(at: 0))), writer)
            case .getBatch(let batchID):
                return await reply(id, .getBatch(try await service.batch(batchID, peer: peer)), writer)
            case .listBatches(let list):
                return await reply(id, .listBatches(try await service.listBatches(list, peer: peer)), writer)
            case .getTask(let get):
                return await reply(id, .getTask(try await service.task(get, peer: peer)), writer)
            case .cancelBatch(let batchID):
                return await reply(id, .cancelBatch(try await service.cancelBatch(batchID, peer: peer)), writer)
            case .cancelTask(let taskID):
                return await reply(id, .cancelTask(try await service.cancelTask(taskID, peer: peer)), writer)
            case .serverInfo:
                return await reply(id, .serverInfo(try await service.serverInfo()), writer)
            case .getResults(let get):
                try await streamResults(id, get, writer: writer)
                return .ok
            case .subscribe(let subscribe):
                return try await streamEvents(id, subscribe, writer: writer)
            case .retryFailed(let retry):
                return await reply(id, .retryFailed(try await service.retryFailed(retry, peer: peer)), writer)
            case .workerSession:
                guard let workerSession else {
                    return WireStatus(code: .unimplemented, message: "no agent of this daemon is served by workers (runner \"worker\")")
                }
                await workerSession.serve()
                // PROTOCOL.md §11: a session the daemon ends at shutdown says so, for the worker to come back.
                return table.withLock { $0.shuttingDown } ? WireStatus(code: .unavailable, message: "the daemon is shutting down") : .ok
            case .unknown:
                return WireStatus(code: .unimplemented, message: "this call is not known to fanoutd \(configuration.serverVersion)")
            }
        } catch {
            if Task.isCancelled || error is CancellationError {
                let shuttingDown = table.withLock { $0.shuttingDown }
                return shuttingDown
                    ? WireStatus(code: .unavailable, message: "the daemon is shutting down")
                    : WireStatus(code: .cancelled, message: "cancelled by the client")
            }
            return WireStatus(from: error)
        }
    }

    private func reply(_ id: UInt32, _ response: Response, _ writer: FrameWriter) async -> WireStatus? {
        // The call completed (a batch may have been created): its answer must reach the client
        // even if a Cancel arrived meanwhile. NIO's writer refuses a cancelled task's write (and
        // then queues nothing), so that one is written again from an uncancelled task.
        let frame = Frame(streamID: id, kind: .response(response))
        do {
            do {
                try await writer.write(frame)
            } catch is CancellationError {
                try await Task { try await writer.write(frame) }.value
            }
            return nil
        } catch let error as WireError {
            // Too large for a frame: this stream ends with the reason, the connection goes on.
            return WireStatus(code: error.statusCode, message: "the answer cannot be sent: \(error.description)")
        } catch {
            return nil  // the connection is gone
        }
    }

    /// An EnqueueBatch sent in chunks: each chunk is validated and stored as it
    /// arrives, hidden; the batch becomes visible, whole, after the last one.
    /// A cancel, a disconnect or an error before that leaves nothing behind.
    private func enqueueChunked(_ first: EnqueueBatchRequest, chunks: ChunkPipe) async throws -> BatchInfo {
        defer { chunks.close() }
        var staged = try await service.beginStagedBatch(first, peer: peer)
        do {
            // Each chunk is checked while the one before it is being written, so the store's
            // thread does not wait for the checks (the uniqueness of custom ids, above all).
            let complete = try await withThrowingTaskGroup(of: Void.self) { writes in
                var complete = false
                while let chunk = await chunks.receive() {
                    try Task.checkCancellation()
                    let prepared = try service.prepareStagedChunk(&staged, chunk.tasks, batchPriority: first.priority)
                    try await writes.next()
                    writes.addTask { [service] in try await service.storeStagedChunk(prepared) }
                    if !chunk.more {
                        complete = true
                        break
                    }
                }
                try await writes.waitForAll()
                return complete
            }
            if let failure = chunks.failure { throw failure }
            guard complete else { throw CancellationError() }
            try Task.checkCancellation()
            return try await service.publishStagedBatch(staged)
        } catch {
            await service.discardStagedBatch(staged)
            throw error
        }
    }

    private func streamResults(_ id: UInt32, _ request: GetResultsRequest, writer: FrameWriter) async throws {
        _ = try await service.batch(request.batchID, peer: peer)
        let pageSize = request.pageSize == 0
            ? configuration.maxResultsPage : min(Int(request.pageSize), configuration.maxResultsPage)
        // 0: the daemon's limit; resultsPage reduces anything larger to it.
        let pageBytes = request.pageBytes == 0 ? nil : Int(request.pageBytes)
        var after = request.afterTaskID
        while true {
            try Task.checkCancellation()
            let page = try await service.resultsPage(batchID: request.batchID, afterTaskID: after, pageSize: pageSize,
                                                     pageBytes: pageBytes)
            guard let last = page.last else { return }
            try await writer.write(Frame(streamID: id, kind: .message(.resultsPage(page))))
            after = last.taskID
        }
    }

    private func streamEvents(_ id: UInt32, _ request: SubscribeRequest, writer: FrameWriter) async throws -> WireStatus {
        let events = try await service.subscribe(request, peer: peer)
        var last = request.since
        var iterator = events.makeAsyncIterator()
        do {
            // A commit's events (or a replay page) go out in one write: one wake-up and one
            // syscall per group rather than per event, so a reader costs others little.
            while let batch = try await iterator.nextBatch() {
                try await writer.write(batch.map { Frame(streamID: id, kind: .message(.event(FanoutWire.Event($0)))) })
                last = UInt64(batch[batch.count - 1].sequence)
            }
        } catch let lagged as SubscriptionLagged {
            return WireStatus(code: .resourceExhausted,
                              message: "subscriber fell behind its buffer of \(configuration.subscriberBuffer) events; resume with since=\(lagged.lastSequence)",
                              lagged: true, lastSequence: UInt64(lagged.lastSequence))
        } catch let gap as SubscriptionGap {
            // Not lagged: resuming from last_sequence skips the removed events, so it must be a deliberate choice.
            return WireStatus(code: .outOfRange, message: gap.description, lastSequence: UInt64(clamping: gap.resumeSequence))
        }
        try Task.checkCancellation()
        // The event stream only ends by itself without follow, or when the daemon stops.
        if request.follow {
            return WireStatus(code: .unavailable, message: "the daemon is shutting down", lastSequence: last)
        }
        return WireStatus(code: .ok, lastSequence: last)
    }

    private func closeStreams() async {
        let tasks = table.withLock { table -> [Task<Void, Never>] in
            for stream in table.open.values {
                stream.chunks?.close()
                // A worker session ends by itself, not by cancellation: the results the worker
                // sent before it went are recorded.
                stream.workerSession?.end()
            }
            return table.open.values.compactMap(\.task)
        }
        for task in tasks { task.cancel() }
        for task in tasks { await task.value }
    }
}

/// The connection's outbound side, shared by its streams.
///
/// Frames are encoded here, by the stream that writes them, rather than in
/// the channel pipeline: a frame that cannot be encoded (too large for the
/// peer, a string holding NUL) fails that one write, and the connection
/// goes on serving every other stream.
struct FrameWriter: Sendable {
    let outbound: NIOAsyncChannelOutboundWriter<ByteBuffer>
    let maxFrameBytes: Int

    /// Writes one frame; throws `WireError` if it cannot be encoded, or the
    /// channel's error if the connection is gone.
    func write(_ frame: Frame) async throws {
        var buffer = ByteBuffer()
        try FrameCoding.encodeFramed(frame, into: &buffer, maxFrameBytes: maxFrameBytes)
        try await outbound.write(buffer)
    }

    /// Writes several frames in one go: encoded a slice at a time (one arena
    /// per slice), each slice one write.
    func write(_ frames: [Frame]) async throws {
        var start = frames.startIndex
        while start < frames.endIndex {
            let end = min(start + Self.framesPerWrite, frames.endIndex)
            var buffer = ByteBuffer()
            try FrameCoding.encodeFramed(frames[start..<end], into: &buffer, maxFrameBytes: maxFrameBytes)
            try await outbound.write(buffer)
            start = end
        }
    }

    /// Events are about 100 bytes: some 50 KB per write.
    static let framesPerWrite = 512

    /// Writes, ignoring a connection that is already gone.
    func send(_ frame: Frame) async {
        do {
            try await write(frame)
        } catch is WireError {
            // A final frame must always go out, or its stream would never end: a status whose
            // message echoes a huge client string (an unknown agent's name) is cut down to size.
            guard case .end(var status) = frame.kind else { return }
            status.message = String(decoding: status.message.utf8.prefix(Self.maxStatusMessageBytes), as: UTF8.self) + "…"
            try? await write(Frame(streamID: frame.streamID, kind: .end(status)))
        } catch {
            // The connection is gone.
        }
    }

    static let maxStatusMessageBytes = 4_096
}
