import FanoutServer
import Hummingbird
import NIOCore

/// A request's context: its connection, and who is asking once the
/// authentication middleware has decided.
struct GatewayContext: RequestContext {
    var coreContext: CoreRequestContextStorage
    let channel: any Channel
    var caller: Caller?

    init(source: ApplicationRequestContextSource) {
        coreContext = .init(source: source)
        channel = source.channel
    }

    /// The caller; every route is behind the authentication middleware, so it is set.
    func requireCaller() throws -> Caller {
        guard let caller else { throw GatewayError.unauthenticated("no credentials") }
        return caller
    }
}

/// Who a request acts for: the binary protocol's rules by uid hold for it.
struct Caller: Sendable {
    var uid: UInt32
    var isAdmin: Bool

    /// Whether this caller may see and touch something created by `uid`.
    func owns(_ uid: UInt32) -> Bool { isAdmin || uid == self.uid }
}
