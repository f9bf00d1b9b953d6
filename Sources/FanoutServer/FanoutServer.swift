import FanoutScheduler
import Foundation
import FanoutWire
import Logging
import NIOCore
import NIOPosix
import ServiceLifecycle
import Synchronization

/// The daemon's socket server: accepts connections on a Unix socket and
/// serves the protocol on each. A `Service`: it runs until graceful shutdown
/// (SIGTERM/SIGINT through a ServiceGroup), then stops accepting, lets calls
/// in flight answer, ends open streams with UNAVAILABLE and returns.
public final class FanoutServer: Service, Sendable {
    public let configuration: ServerConfiguration
    private let service: FanoutService
    private let logger: Logger
    private let group: any EventLoopGroup
    private let connections = Mutex<[ObjectIdentifier: Connection]>([:])
    private let listener = Mutex<(any Channel)?>(nil)
    private let ready = AsyncStream<Void>.makeStream()
    /// Accepted connections not yet handed to `serve`.
    private let accepted = AcceptedConnections()

    public init(configuration: ServerConfiguration, scheduler: Scheduler, workerPool: WorkerPool? = nil,
                group: any EventLoopGroup = MultiThreadedEventLoopGroup.singleton,
                logger: Logger = Logger(label: "fanout.server")) {
        self.configuration = configuration
        self.service = FanoutService(scheduler: scheduler, configuration: configuration, workerPool: workerPool)
        self.group = group
        self.logger = logger
    }

    /// Returns once the socket is listening (or the server has stopped).
    public func waitUntilListening() async {
        for await _ in ready.stream { return }
    }

    public func run() async throws {
        // Whatever happens (a bind that fails), nobody waits for a listener that will never come.
        defer { ready.continuation.finish() }
        try SocketFile.prepare(configuration.socketPath)
        let maxFrameBytes = configuration.maxFrameBytes
        let server = try await SocketFile.withPrivateUmask {
            try await ServerBootstrap(group: group)
                .serverChannelOption(.backlog, value: Int32(clamping: configuration.listenBacklog ?? Self.systemMaxBacklog))
                .bind(unixDomainSocketPath: configuration.socketPath) { [accepted] channel in
                    PeerCredentials.of(channel).flatMapThrowing { peer in
                        try channel.pipeline.syncOperations.addHandler(ByteToMessageHandler(FrameDecoder(maxFrameBytes: maxFrameBytes)))
                        // Outbound frames are encoded by `FrameWriter`, one stream at a time (see there).
                        let asyncChannel = try accepted.register {
                            try NIOAsyncChannel<Frame, ByteBuffer>(wrappingChannelSynchronously: channel)
                        }
                        return (asyncChannel, peer)
                    }
                }
        }
        try SocketFile.setMode(configuration.socketPath, configuration.socketMode)
        listener.withLock { $0 = server.channel }
        logger.info("listening", metadata: ["socket": "\(configuration.socketPath)"])
        ready.continuation.finish()

        try await withGracefulShutdownHandler {
            try await withThrowingDiscardingTaskGroup { group in
                try await server.executeThenClose { inbound in
                    for try await (channel, peer) in inbound {
                        accepted.served(channel)  // before the task starts: shutdown must not take it too
                        // The read loop runs on the connection's event loop (see `EventLoopTaskExecutor`).
                        group.addTask(executorPreference: EventLoopTaskExecutor(channel.channel.eventLoop)) {
                            await self.serve(channel, peer: peer)
                        }
                    }
                }
                // Listener closed: the accept loop is over; connections finish on their own. A connection
                // accepted as the listener closed may never have reached the loop: it is closed here (NIO
                // requires every wrapped channel to be run, or it stops the process).
                for leftover in accepted.closeAndTakeUnserved() {
                    group.addTask { try? await leftover.executeThenClose { _, _ in } }
                }
            }
        } onGracefulShutdown: {
            self.shutdown()
        }
        unlinkSocket()
        logger.info("stopped")
    }

    private func serve(_ channel: NIOAsyncChannel<Frame, ByteBuffer>, peer: PeerCredentials) async {
        let connection = Connection(service: service, peer: peer, channel: channel.channel, logger: logger)
        let key = ObjectIdentifier(connection)
        let admitted = connections.withLock { connections -> Bool in
            guard connections.count < configuration.maxConnections else { return false }
            connections[key] = connection
            return true
        }
        guard admitted else {
            await refuse(channel, WireStatus(
                code: .resourceExhausted,
                message: "the daemon already serves \(configuration.maxConnections) connections (max_connections)"))
            return
        }
        service.connections.add(1, ordering: .relaxed)
        defer {
            service.connections.subtract(1, ordering: .relaxed)
            _ = connections.withLock { $0.removeValue(forKey: key) }
        }
        await connection.run(channel)
    }

    private func refuse(_ channel: NIOAsyncChannel<Frame, ByteBuffer>, _ status: WireStatus) async {
        try? await channel.executeThenClose { inbound, outbound in
            var buffer = ByteBuffer()
            try FrameCoding.encodeFramed(Frame(streamID: 0, kind: .end(status)), into: &buffer)
            try await outbound.write(buffer)
            // Wait (briefly) for the client's Hello before closing: closing with its bytes
            // unread resets the connection, and the client may never read the status above.
            await withTaskGroup(of: Void.self) { group in
                group.addTask { _ = try? await inbound.first { _ in true } }
                group.addTask { try? await Task.sleep(for: .seconds(1)) }
                await group.next()
                group.cancelAll()
            }
        }
    }

    /// Stop accepting, then ask every connection to wind down.
    public func shutdown() {
        logger.info("shutting down")
        let channel = listener.withLock { $0 }
        channel?.close(promise: nil)
        let open = connections.withLock { Array($0.values) }
        for connection in open { connection.beginShutdown() }
    }

    /// The kernel's cap on a listen backlog; asking for more is silently cut to it.
    static var systemMaxBacklog: Int {
        let text = (try? String(contentsOfFile: "/proc/sys/net/core/somaxconn", encoding: .utf8)) ?? ""
        return Int(text.trimmingCharacters(in: .whitespacesAndNewlines)) ?? 4_096
    }

    private func unlinkSocket() {
        _ = configuration.socketPath.withCString { unlink($0) }
    }
}

#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#endif

/// The connections the listener accepted and wrapped, until they are served.
///
/// A wrapped `NIOAsyncChannel` must be run (`executeThenClose`) before it is
/// released, or NIO stops the process. One accepted just as the listener
/// closes can be dropped by the listener's stream before the accept loop sees
/// it; keeping every one here until it is served lets shutdown close those.
final class AcceptedConnections: Sendable {
    private struct State {
        var closing = false
        var unserved: [ObjectIdentifier: NIOAsyncChannel<Frame, ByteBuffer>] = [:]
    }

    private let state = Mutex(State())

    struct Closing: Error {}

    /// Wraps a new connection and keeps it; refuses (the connection is then closed) once closing.
    func register(_ wrap: () throws -> NIOAsyncChannel<Frame, ByteBuffer>) throws -> NIOAsyncChannel<Frame, ByteBuffer> {
        try state.withLock { state in
            guard !state.closing else { throw Closing() }
            let channel = try wrap()
            state.unserved[ObjectIdentifier(channel.channel)] = channel
            return channel
        }
    }

    func served(_ channel: NIOAsyncChannel<Frame, ByteBuffer>) {
        _ = state.withLock { $0.unserved.removeValue(forKey: ObjectIdentifier(channel.channel)) }
    }

    /// No more connections are registered; returns those never served.
    func closeAndTakeUnserved() -> [NIOAsyncChannel<Frame, ByteBuffer>] {
        state.withLock { state in
            state.closing = true
            defer { state.unserved = [:] }
            return Array(state.unserved.values)
        }
    }
}
