import FanoutCore
import FanoutGateway
import FanoutScheduler
import Foundation

/// The HTTP gateway's settings: where it listens, its token, and which agent runs which model.
struct GatewaySettings {
    var tcpAddress: (host: String, port: Int)?
    var socketPath: String?
    var token: String?
    /// The token file's owner: batches made with the token belong to that uid.
    var tokenUID: UInt32 = 0
    var routes: GatewayRoutes

    init(http: String?, socketPath: String?, tokenFile: String?, routes: [String: String], defaultAgent: String?,
         agents: [AgentConfiguration]) throws {
        if let http {
            guard let colon = http.lastIndex(of: ":"), let port = Int(http[http.index(after: colon)...]), (0...65_535).contains(port),
                  colon > http.startIndex else {
                throw FanoutError.invalidArgument("http must be HOST:PORT, such as 127.0.0.1:8080, not \"\(http)\"")
            }
            guard let tokenFile else {
                throw FanoutError.invalidArgument(
                    "--http \(http) needs --http-token-file: over TCP every request must carry that token, and the gateway never listens without one")
            }
            tcpAddress = (String(http[..<colon]), port)
            (token, tokenUID) = try Self.readToken(tokenFile)
        }
        self.socketPath = socketPath
        let names = Set(agents.map(\.name))
        for (model, agent) in routes where !names.contains(agent) {
            throw FanoutError.invalidArgument("gateway_routes: model \"\(model)\" routes to \"\(agent)\", which is not an agent of this daemon")
        }
        var fallback = defaultAgent
        if let fallback, !names.contains(fallback) {
            throw FanoutError.invalidArgument("gateway_default_agent \"\(fallback)\" is not an agent of this daemon")
        }
        // A minimal config works: with no routes and one openai agent, that agent runs everything.
        let openAI = agents.filter { $0.runner == "openai" }
        if routes.isEmpty && fallback == nil && openAI.count == 1 { fallback = openAI[0].name }
        self.routes = GatewayRoutes(models: routes, defaultAgent: fallback)
    }

    /// The token, and the uid it acts for. The file must be readable by its owner only.
    private static func readToken(_ path: String) throws -> (String, UInt32) {
        var info = stat()
        guard stat(path, &info) == 0 else {
            throw FanoutError.invalidArgument("cannot read the token file \(path): \(String(cString: strerror(errno)))")
        }
        guard info.st_mode & 0o077 == 0 else {
            throw FanoutError.invalidArgument(String(format: "the token file %@ is open to other users (mode %o); chmod 600 it", path,
                                                     info.st_mode & 0o777))
        }
        let token = try String(contentsOfFile: path, encoding: .utf8).trimmingCharacters(in: .whitespacesAndNewlines)
        guard !token.isEmpty, !token.contains(where: { $0.isWhitespace }) else {
            throw FanoutError.invalidArgument("the token file \(path) must hold one token, without spaces")
        }
        return (token, info.st_uid)
    }

    func configuration(limits: EnqueueLimits) -> GatewayConfiguration {
        GatewayConfiguration(tcpAddress: tcpAddress, socketPath: socketPath, token: token, tokenUID: tokenUID, routes: routes, limits: limits)
    }
}
