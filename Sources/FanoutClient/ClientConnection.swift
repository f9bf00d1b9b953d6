import FanoutWire
import NIOCore
import NIOPosix
import Synchronization

/// The multiplexed connection under a `FanoutClient`: one reader task routes
/// inbound frames to the stream they belong to; any task may write.
final class ClientConnection: Sendable {
    private struct Routes {
        var streams: [UInt32: AsyncThrowingStream<Frame, any Error>.Continuation] = [:]
        var limits: [UInt32: Int] = [:]
        var closed: FanoutClientError?
    }

    private let channel: any Channel
    private let outbound: NIOAsyncChannelOutboundWriter<Frame>
    private let routes = Mutex(Routes())
    private let nextStreamID = Atomic<UInt32>(1)
    private let reader = Mutex<Task<Void, Never>?>(nil)
    private let opening = AsyncLock()

    private init(channel: any Channel, outbound: NIOAsyncChannelOutboundWriter<Frame>) {
        self.channel = channel
        self.outbound = outbound
    }

    static func connect(socketPath: String, maxFrameBytes: Int, group: any EventLoopGroup) async throws -> ClientConnection {
        let asyncChannel: NIOAsyncChannel<Frame, Frame>
        do {
            asyncChannel = try await ClientBootstrap(group: group)
                .connect(unixDomainSocketPath: socketPath) { channel in
                    channel.eventLoop.makeCompletedFuture {
                        try channel.pipeline.syncOperations.addHandler(ByteToMessageHandler(FrameDecoder(maxFrameBytes: maxFrameBytes)))
                        try channel.pipeline.syncOperations.addHandler(MessageToByteHandler(FrameEncoder(maxFrameBytes: maxFrameBytes)))
                        return try NIOAsyncChannel<Frame, Frame>(wrappingChannelSynchronously: channel)
                    }
                }
        } catch {
            throw FanoutClientError(code: .unavailable, message: "cannot connect to fanoutd at \(socketPath): \(error); is the daemon running?")
        }
        let (writers, writerContinuation) = AsyncStream.makeStream(of: NIOAsyncChannelOutboundWriter<Frame>.self)
        let (started, startedContinuation) = AsyncStream.makeStream(of: ClientConnection.self)
        let readerTask = Task {
            var failure = FanoutClientError.connectionLost()
            do {
                try await asyncChannel.executeThenClose { inbound, outbound in
                    writerContinuation.yield(outbound)
                    writerContinuation.finish()
                    var connection: ClientConnection?
                    for await value in started { connection = value }
                    guard let connection else { return }
                    for try await frame in inbound {
                        connection.route(frame)
                    }
                    connection.fail(failure)
                }
            } catch {
                failure = .connectionLost("the connection to fanoutd failed: \(error)")
            }
            _ = failure
        }
        var writer: NIOAsyncChannelOutboundWriter<Frame>?
        for await value in writers { writer = value }
        guard let writer else {
            readerTask.cancel()
            throw FanoutClientError.connectionLost()
        }
        let connection = ClientConnection(channel: asyncChannel.channel, outbound: writer)
        connection.reader.withLock { $0 = readerTask }
        startedContinuation.yield(connection)
        startedContinuation.finish()
        // When the reader ends for any reason, every open stream learns it.
        Task { [weak connection] in
            await readerTask.value
            connection?.fail(.connectionLost())
        }
        return connection
    }

    /// Opens a stream: registers its route, then sends its first frame.
    /// With `bufferLimit`, a consumer that falls that many frames behind has
    /// its stream ended with a lagged error (and cancelled on the daemon)
    /// instead of the client buffering without bound.
    func open(_ request: Request, streamID: UInt32? = nil, bufferLimit: Int? = nil) async throws -> (id: UInt32, frames: AsyncThrowingStream<Frame, any Error>) {
        // The daemon refuses a Request whose id is not larger than every id
        // before it, so taking the id and writing the Request happen as one
        // step: concurrent callers reach the socket in id order.
        await opening.lock()
        defer { opening.unlock() }
        let id = streamID ?? nextStreamID.wrappingAdd(2, ordering: .relaxed).oldValue
        let (frames, continuation) = AsyncThrowingStream.makeStream(
            of: Frame.self, bufferingPolicy: bufferLimit.map { .bufferingOldest($0) } ?? .unbounded)
        if let bufferLimit { routes.withLock { $0.limits[id] = bufferLimit } }
        let closed = routes.withLock { routes -> FanoutClientError? in
            if let closed = routes.closed { return closed }
            routes.streams[id] = continuation
            return nil
        }
        if let closed { throw closed }
        do {
            try await send(Frame(streamID: id, kind: .request(request)))
        } catch {
            forget(id)
            throw error
        }
        return (id, frames)
    }

    func send(_ frame: Frame) async throws {
        do {
            try await outbound.write(frame)
        } catch {
            throw routes.withLock { $0.closed } ?? .connectionLost()
        }
    }

    /// Stops routing a stream's frames (after it ended or was abandoned).
    func forget(_ id: UInt32) {
        routes.withLock { routes in
            routes.streams[id] = nil
            routes.limits[id] = nil
        }
    }

    func close() async {
        try? await channel.close()
        let task = reader.withLock { $0 }
        await task?.value
    }

    private func route(_ frame: Frame) {
        if frame.streamID == 0, case .end(let status) = frame.kind {
            // Stream 0 ending means the daemon is closing the connection, and says why.
            fail(FanoutClientError(status))
            return
        }
        let continuation = routes.withLock { $0.streams[frame.streamID] }
        if case .dropped = continuation?.yield(frame) {
            let limit = routes.withLock { $0.limits[frame.streamID] } ?? 0
            // lastSequence 0: the stream's iterator fills in the last sequence it delivered.
            continuation?.finish(throwing: FanoutClientError(
                code: .resourceExhausted, message: "the subscriber fell behind the client's buffer of \(limit) events",
                lagged: true))
            forget(frame.streamID)
            let id = frame.streamID
            Task { try? await self.send(Frame(streamID: id, kind: .cancel)) }
            return
        }
        if case .end = frame.kind { continuation?.finish() }
        if case .response = frame.kind { continuation?.finish() }
    }

    private func fail(_ error: FanoutClientError) {
        let open = routes.withLock { routes in
            if routes.closed == nil { routes.closed = error }
            defer { routes.streams = [:] }
            return Array(routes.streams.values)
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
