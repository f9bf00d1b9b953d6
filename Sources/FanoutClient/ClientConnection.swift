import FanoutWire
import NIOCore
import NIOPosix
import Synchronization

/// The multiplexed connection under a `FanoutClient`: the event loop routes
/// inbound frames to the stream they belong to (`FrameRouter`); a reader task
/// notices the connection's end; any task may write.
final class ClientConnection: Sendable {
    private struct Routes {
        var streams: [UInt32: Route] = [:]
        var closed: FanoutClientError?
    }

    private let channel: any Channel
    /// What several tasks send at once (a worker's results) goes out in one system call.
    private let writer: BurstWriter
    /// Waited on while the channel is full, so a daemon that stops reading slows the senders down.
    private let outbound: NIOAsyncChannelOutboundWriter<ByteBuffer>
    /// The largest frame `send` writes: the daemon's limit once the handshake announced it.
    private let sendLimit: Atomic<Int>
    private let routes = Mutex(Routes())
    /// The next client stream id; nil once the 32-bit ids are used up (PROTOCOL.md §4.1).
    private let nextStreamID = Mutex<UInt32?>(1)
    private let reader = Mutex<Task<FanoutClientError, Never>?>(nil)
    private let opening = AsyncLock()

    private init(channel: any Channel, outbound: NIOAsyncChannelOutboundWriter<ByteBuffer>, maxFrameBytes: Int) {
        self.channel = channel
        self.outbound = outbound
        writer = BurstWriter(channel)
        sendLimit = Atomic(maxFrameBytes)
    }

    /// Frames larger than the daemon accepts fail at the sender, not by closing the connection.
    func adoptDaemonFrameLimit(_ bytes: Int) {
        sendLimit.store(min(sendLimit.load(ordering: .relaxed), bytes), ordering: .relaxed)
    }

    static func connect(socketPath: String, maxFrameBytes: Int, group: any EventLoopGroup) async throws -> ClientConnection {
        let asyncChannel: NIOAsyncChannel<[Frame], ByteBuffer>
        let router: NIOLoopBound<FrameRouter>
        do {
            (asyncChannel, router) = try await ClientBootstrap(group: group)
                .connect(unixDomainSocketPath: socketPath) { channel in
                    channel.eventLoop.makeCompletedFuture {
                        // Every frame a read completes, at once: they are routed as groups.
                        try channel.pipeline.syncOperations.addHandler(ByteToMessageHandler(FrameGroupDecoder(maxFrameBytes: maxFrameBytes)))
                        let router = FrameRouter()
                        try channel.pipeline.syncOperations.addHandler(router)
                        // Frames are encoded by `send`, so one that cannot be encoded fails that call alone. The
                        // inbound side carries no frames (the router takes them): it ends when the connection does.
                        return (try NIOAsyncChannel<[Frame], ByteBuffer>(wrappingChannelSynchronously: channel),
                                NIOLoopBound(router, eventLoop: channel.eventLoop))
                    }
                }
        } catch {
            throw FanoutClientError(code: .unavailable, message: "cannot connect to fanoutd at \(socketPath): \(error); is the daemon running?")
        }
        let (writers, writerContinuation) = AsyncStream.makeStream(of: NIOAsyncChannelOutboundWriter<ByteBuffer>.self)
        let (started, startedContinuation) = AsyncStream.makeStream(of: ClientConnection.self)
        // Returns why the connection ended, for every stream still open then.
        let readerTask = Task { () -> FanoutClientError in
            do {
                try await asyncChannel.executeThenClose { inbound, outbound in
                    writerContinuation.yield(outbound)
                    writerContinuation.finish()
                    var connection: ClientConnection?
                    for await value in started { connection = value }
                    guard let connection else { return }
                    for try await frames in inbound {
                        connection.route(frames)
                    }
                }
                return .connectionLost()
            } catch {
                return .connectionLost("the connection to fanoutd failed: \(error)")
            }
        }
        var writer: NIOAsyncChannelOutboundWriter<ByteBuffer>?
        for await value in writers { writer = value }
        guard let writer else {
            readerTask.cancel()
            throw FanoutClientError.connectionLost()
        }
        let connection = ClientConnection(channel: asyncChannel.channel, outbound: writer, maxFrameBytes: maxFrameBytes)
        connection.reader.withLock { $0 = readerTask }
        router.eventLoop.execute { router.value.start(routingTo: connection) }
        startedContinuation.yield(connection)
        startedContinuation.finish()
        // When the reader ends for any reason, every open stream learns it.
        Task { [weak connection] in
            let failure = await readerTask.value
            connection?.fail(failure)
        }
        return connection
    }

    /// Opens a stream: registers its route, then sends its first frame.
    /// With `bufferLimit`, a consumer that falls that many frames behind has
    /// its stream ended with a lagged error (and cancelled on the daemon)
    /// instead of the client buffering without bound; with `pauses` as well,
    /// the stream is only cancelled on the daemon and its frames still come,
    /// for its reader to open it again where it stopped.
    func open(_ request: Request, streamID: UInt32? = nil, bufferLimit: Int? = nil,
              pauses: Bool = false) async throws -> (id: UInt32, frames: FrameStream) {
        // The daemon refuses a Request whose id is not larger than every id
        // before it, so taking the id and writing the Request happen as one
        // step: concurrent callers reach the socket in id order.
        await opening.lock()
        defer { opening.unlock() }
        let id = try streamID ?? takeStreamID()
        // Unbounded as a stream: the bound, when there is one, counts frames in the backlog.
        let (groups, continuation) = AsyncThrowingStream.makeStream(of: [Frame].self)
        let backlog = bufferLimit.map { FrameBacklog(limit: $0, pauses: pauses) }
        let closed = routes.withLock { routes -> FanoutClientError? in
            if let closed = routes.closed { return closed }
            routes.streams[id] = Route(continuation: continuation, backlog: backlog)
            return nil
        }
        if let closed { throw closed }
        do {
            try await send(Frame(streamID: id, kind: .request(request)))
        } catch {
            forget(id)
            throw error
        }
        return (id, FrameStream(groups: groups, backlog: backlog))
    }

    /// Tests skip ahead to the end of the id space this way.
    func skipStreamIDs(to next: UInt32) {
        nextStreamID.withLock { $0 = next }
    }

    private func takeStreamID() throws(FanoutClientError) -> UInt32 {
        let id = nextStreamID.withLock { next -> UInt32? in
            defer { next = next.flatMap { $0 <= UInt32.max - 2 ? $0 + 2 : nil } }
            return next
        }
        guard let id else {
            throw FanoutClientError(code: .resourceExhausted,
                                    message: "this connection has used every stream id; connect again for more calls")
        }
        return id
    }

    /// Encodes and writes one frame. A frame that cannot be encoded (a string
    /// holding NUL, too large for the daemon) fails this call alone with
    /// INVALID_ARGUMENT or RESOURCE_EXHAUSTED; the connection is unaffected.
    func send(_ frame: Frame) async throws {
        var buffer = ByteBuffer()
        do {
            try FrameCoding.encodeFramed(frame, into: &buffer, maxFrameBytes: sendLimit.load(ordering: .relaxed))
        } catch {
            throw FanoutClientError(code: error.statusCode, message: error.description)
        }
        do {
            guard channel.isActive else { throw FanoutClientError.connectionLost() }
            // Waits for room first, so a throw (the connection closed, the caller cancelled) means nothing went out.
            // NIO's writer waits until the channel is writable again.
            if !channel.isWritable { try await outbound.write(ByteBuffer()) }
            writer.write(buffer)
        } catch {
            throw routes.withLock { $0.closed } ?? .connectionLost()
        }
    }

    /// Closes the socket without waiting: for a client dropped without `close()`.
    func closeNow() {
        writer.closeSoon()
    }

    /// Stops routing a stream's frames (after it ended or was abandoned).
    func forget(_ id: UInt32) {
        routes.withLock { routes in
            routes.streams[id] = nil
        }
    }

    func close() async {
        try? await writer.close()
        let task = reader.withLock { $0 }
        _ = await task?.value
    }

    /// Routes what one read from the socket decoded: each stream gets its
    /// frames as one group (one wake-up for its reader, not one per frame).
    func route(_ frames: [Frame]) {
        var groups: [(id: UInt32, frames: [Frame])] = []
        for frame in frames {
            if frame.streamID == 0, case .end(let status) = frame.kind {
                // Stream 0 ending means the daemon is closing the connection, and says why.
                deliver(groups)
                fail(FanoutClientError(status))
                return
            }
            if let index = groups.firstIndex(where: { $0.id == frame.streamID }) {
                groups[index].frames.append(frame)
            } else {
                groups.append((frame.streamID, [frame]))
            }
        }
        deliver(groups)
    }

    private func deliver(_ groups: [(id: UInt32, frames: [Frame])]) {
        guard !groups.isEmpty else { return }
        let routes = routes.withLock { routes in groups.map { routes.streams[$0.id] } }
        for (group, route) in zip(groups, routes) {
            guard let route else { continue }  // a stream forgotten or never known: ignored (PROTOCOL.md §4.1)
            if let backlog = route.backlog, backlog.pauses {
                if backlog.addPausing(group.frames.count) {
                    // The daemon stops sending; what is already on its way is still delivered, and
                    // the stream's reader opens the stream again after it once it has caught up.
                    let id = group.id
                    Task { try? await self.send(Frame(streamID: id, kind: .cancel)) }
                }
            } else if let backlog = route.backlog, !backlog.add(group.frames.count) {
                // lastSequence 0: the stream's iterator fills in the last sequence it delivered.
                route.continuation.finish(throwing: FanoutClientError(
                    code: .resourceExhausted, message: "the subscriber fell behind the client's buffer of \(backlog.limit) events",
                    lagged: true))
                forget(group.id)
                let id = group.id
                Task { try? await self.send(Frame(streamID: id, kind: .cancel)) }
                continue
            }
            route.continuation.yield(group.frames)
            if group.frames.contains(where: \.isFinal) { route.continuation.finish() }
        }
    }

    private func fail(_ error: FanoutClientError) {
        let open = routes.withLock { routes in
            if routes.closed == nil { routes.closed = error }
            defer { routes.streams = [:] }
            return routes.streams.values.map(\.continuation)
        }
        for continuation in open { continuation.finish(throwing: error) }
    }
}

/// A lock held across an `await`: waiters get it in arrival order.
final class AsyncLock: Sendable {
    private struct State {
        var locked = false
        var waiters: [CheckedContinuation<Void, Never>] = []
    }

    private let state = Mutex(State())

    func lock() async {
        await withCheckedContinuation { (continuation: CheckedContinuation<Void, Never>) in
            let acquired = state.withLock { state -> Bool in
                guard state.locked else {
                    state.locked = true
                    return true
                }
                state.waiters.append(continuation)
                return false
            }
            if acquired { continuation.resume() }
        }
    }

    /// Hands the lock to the longest waiter, or releases it.
    func unlock() {
        let next = state.withLock { state -> CheckedContinuation<Void, Never>? in
            guard !state.waiters.isEmpty else {
                state.locked = false
                return nil
            }
            return state.waiters.removeFirst()
        }
        next?.resume()
    }
}

/// A stream's route: where its frames go, and its bound if it has one.
struct Route: Sendable {
    var continuation: AsyncThrowingStream<[Frame], any Error>.Continuation
    var backlog: FrameBacklog?
}

/// Frames routed to a stream and not yet taken by its reader.
final class FrameBacklog: Sendable {
    private struct State {
        var queued = 0
        var paused = false
    }

    let limit: Int
    /// What going over the limit does: true, the stream is paused (see
    /// `ServerStream.resume`); false, it ends as lagged.
    let pauses: Bool
    private let state = Mutex(State())

    init(limit: Int, pauses: Bool = false) {
        self.limit = max(1, limit)
        self.pauses = pauses
    }

    /// Counts `count` more frames if that stays within the limit (a reader that took everything gets any group).
    func add(_ count: Int) -> Bool {
        state.withLock { state in
            guard state.queued == 0 || state.queued + count <= limit else { return false }
            state.queued += count
            return true
        }
    }

    /// Counts `count` more frames whatever the limit (they are on their way
    /// anyway); true the first time that goes over it: the stream must pause.
    func addPausing(_ count: Int) -> Bool {
        state.withLock { state in
            state.queued += count
            guard state.queued > limit, !state.paused else { return false }
            state.paused = true
            return true
        }
    }

    /// Whether the stream was paused: its daemon side was cancelled by the client.
    var paused: Bool { state.withLock { $0.paused } }

    func taken(_ count: Int) { state.withLock { $0.queued -= count } }
}

/// A stream's frames one by one, read a group at a time.
struct FrameStream: AsyncSequence, Sendable {
    typealias Element = Frame

    let groups: AsyncThrowingStream<[Frame], any Error>
    let backlog: FrameBacklog?

    func makeAsyncIterator() -> Iterator {
        Iterator(groups: groups.makeAsyncIterator(), backlog: backlog)
    }

    struct Iterator: AsyncIteratorProtocol {
        var groups: AsyncThrowingStream<[Frame], any Error>.AsyncIterator
        let backlog: FrameBacklog?
        var pending: [Frame] = []
        var index = 0

        /// Whether the client paused the stream (`FrameBacklog.addPausing`).
        var paused: Bool { backlog?.paused ?? false }

        mutating func next() async throws -> Frame? {
            while index == pending.count {
                guard let group = try await groups.next() else { return nil }
                backlog?.taken(group.count)
                pending = group
                index = 0
            }
            defer { index += 1 }
            return pending[index]
        }
    }
}

extension Frame {
    /// A Response or an EndOfStream: nothing follows on its stream.
    var isFinal: Bool {
        switch kind {
        case .response, .end: true
        default: false
        }
    }
}
