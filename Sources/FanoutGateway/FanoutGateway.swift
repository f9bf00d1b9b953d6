import FanoutScheduler
import FanoutStore
import Foundation
import Hummingbird
import Logging
import NIOCore
import ServiceLifecycle

/// The OpenAI-compatible Files and Batches API, served over TCP (bearer
/// token) and/or a Unix socket (peer uid): a front end of the daemon's
/// scheduler and store like FanoutServer, not a second queue.
public struct FanoutGateway: Sendable {
    let configuration: GatewayConfiguration
    let scheduler: Scheduler
    let store: any GatewayStore
    let logger: Logger

    public init(configuration: GatewayConfiguration, scheduler: Scheduler, store: any GatewayStore,
                logger: Logger = Logger(label: "fanout.gateway")) {
        self.configuration = configuration
        self.scheduler = scheduler
        self.store = store
        self.logger = logger
    }

    /// One Hummingbird application per listener, each a Service for the daemon's ServiceGroup.
    /// `onListening` is told each listener's address once it serves (the TCP port when 0 was asked).
    public func services(socketMode: UInt16 = 0o600,
                         onListening: @escaping @Sendable (String) async -> Void = { _ in }) throws -> [any Service] {
        let routes = GatewayRouter(scheduler: scheduler, store: store, configuration: configuration)
        var services: [any Service] = []
        if let address = configuration.tcpAddress {
            guard let token = configuration.token, !token.isEmpty else {
                throw GatewayError.unauthenticated("--http needs --http-token-file: the gateway never listens on TCP without a token")
            }
            services.append(Application(
                router: routes.router(authentication: .token(token, uid: configuration.tokenUID)),
                configuration: .init(address: .hostname(address.host, port: address.port), serverName: nil),
                onServerRunning: { channel in
                    await onListening("\(address.host):\(channel.localAddress?.port ?? address.port)")
                },
                logger: logger))
        }
        if let path = configuration.socketPath {
            services.append(Application(
                router: routes.router(authentication: .peerCredentials),
                configuration: .init(address: .unixDomainSocket(path: path), serverName: nil),
                onServerRunning: { _ in
                    // Others reach it only if the daemon's socket mode lets them, as on the binary socket.
                    chmod(path, mode_t(socketMode))
                    await onListening(path)
                },
                logger: logger))
        }
        return services
    }
}
