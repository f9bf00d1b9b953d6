import AsyncHTTPClient
import FanoutClient
import FanoutRunners
import FanoutScheduler
import Foundation
import NIOCore
import NIOPosix
import OpenAIStub
import Synchronization

/// Runs `body` with an OpenAI stub serving on a loopback port; stops it after.
func withOpenAIStub<T: Sendable>(delay: Duration = .zero, _ body: (OpenAIStub, _ baseURL: String) async throws -> T) async throws -> T {
    let stub = OpenAIStub(delay: delay)
    let (ports, portContinuation) = AsyncStream.makeStream(of: Int.self)
    let server = Task { try await stub.run { port in portContinuation.yield(port) } }
    defer { server.cancel() }
    var iterator = ports.makeAsyncIterator()
    guard let port = await iterator.next() else { throw CancellationError() }
    let value = try await body(stub, "http://127.0.0.1:\(port)/v1")
    server.cancel()
    _ = try? await server.value
    return value
}

/// An in-process daemon whose agents run the built-in runners from their
/// config-file settings, as fanoutd builds them, with one shared HTTP client.
func withRunnerDaemon<T: Sendable>(
    _ agents: [(AgentConfiguration, [String: any Sendable])], environment: [String: String] = [:],
    _ body: (TestDaemon, FanoutClient) async throws -> T
) async throws -> T {
    let http = BuiltinRunners.makeHTTPClient(connections: 64)
    do {
        let resources = BuiltinRunners.Resources(httpClient: http, environment: environment)
        var runners: [String: any Runner] = [:]
        for (agent, settings) in agents {
            runners[agent.name] = try BuiltinRunners.make(agent, settings: settings as [String: Any], resources: resources)
        }
        let daemon = try await TestDaemon(agents: agents.map(\.0), runners: runners)
        do {
            let client = try await daemon.client()
            let value = try await body(daemon, client)
            await client.close()
            await daemon.stop()
            try await http.shutdown()
            return value
        } catch {
            await daemon.stop()
            throw error
        }
    } catch {
        try? await http.shutdown()
        throw error
    }
}

/// A TCP listener on loopback that misbehaves at the connection level, which
/// no HTTP framework would: it drops each connection as soon as a request
/// arrives, unanswered (`reset`), or reads the request and never answers (`silent`),
/// noting when the client gives up and closes.
final class MisbehavingServer: Sendable {
    enum Mode: Sendable { case reset, silent }

    final class Tally: Sendable {
        let requests = Mutex(0)
        let closedByClient = Mutex(0)
    }

    private let tally = Tally()
    private let channel: any Channel
    let port: Int

    init(_ mode: Mode) async throws {
        let tally = self.tally
        channel = try await ServerBootstrap(group: MultiThreadedEventLoopGroup.singleton)
            .serverChannelOption(.socketOption(.so_reuseaddr), value: 1)
            .childChannelInitializer { channel in
                channel.eventLoop.makeCompletedFuture {
                    try channel.pipeline.syncOperations.addHandler(Handler(mode: mode, tally: tally))
                }
            }
            .bind(host: "127.0.0.1", port: 0).get()
        port = channel.localAddress?.port ?? 0
    }

    /// Connections that sent a request.
    var requestsSeen: Int { tally.requests.withLock { $0 } }
    /// Of those, the ones the client closed (only counted when `silent`).
    var closedByClient: Int { tally.closedByClient.withLock { $0 } }

    func stop() async {
        try? await channel.close()
    }

    private final class Handler: ChannelInboundHandler {
        typealias InboundIn = ByteBuffer
        let mode: Mode
        let tally: Tally
        var sawRequest = false

        init(mode: Mode, tally: Tally) {
            self.mode = mode
            self.tally = tally
        }

        func channelRead(context: ChannelHandlerContext, data: NIOAny) {
            guard !sawRequest else { return }
            sawRequest = true
            tally.requests.withLock { $0 += 1 }
            if mode == .reset {
                context.close(promise: nil)
            }
        }

        func channelInactive(context: ChannelHandlerContext) {
            if mode == .silent && sawRequest { tally.closedByClient.withLock { $0 += 1 } }
        }
    }
}
