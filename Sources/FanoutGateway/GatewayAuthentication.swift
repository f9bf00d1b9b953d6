import FanoutServer
import Hummingbird

/// Decides who a request acts for: over TCP the bearer token (and the uid
/// it stands for), over the Unix socket the peer's uid from the kernel.
struct GatewayAuthentication: RouterMiddleware {
    typealias Context = GatewayContext

    enum Mode: Sendable {
        case token(String, uid: UInt32)
        case peerCredentials
    }

    let mode: Mode

    func handle(_ request: Request, context: GatewayContext,
                next: (Request, GatewayContext) async throws -> Response) async throws -> Response {
        var context = context
        switch mode {
        case .token(let token, let uid):
            guard let header = request.headers[.authorization], header.hasPrefix("Bearer "),
                  Self.constantTimeEqual(Array(header.utf8.dropFirst("Bearer ".utf8.count)), Array(token.utf8)) else {
                throw GatewayError.unauthenticated("Incorrect API key provided. Send the token of fanoutd's --http-token-file as the API key.")
            }
            // Never an admin: whoever holds the token sees the token owner's files and batches, not everyone's.
            context.caller = Caller(uid: uid, isAdmin: false)
        case .peerCredentials:
            let peer = try await PeerCredentials.of(context.channel).get()
            guard peer.uid != UInt32.max else { throw GatewayError.unauthenticated("the caller's uid is unknown") }
            context.caller = Caller(uid: peer.uid, isAdmin: peer.isAdmin)
        }
        return try await next(request, context)
    }

    /// Compares without stopping at the first difference, so timing tells nothing about the token.
    static func constantTimeEqual(_ a: [UInt8], _ b: [UInt8]) -> Bool {
        guard a.count == b.count else { return false }
        var difference: UInt8 = 0
        for index in a.indices { difference |= a[index] ^ b[index] }
        return difference == 0
    }
}
