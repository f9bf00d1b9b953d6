import FanoutCore

/// How the OpenAI-compatible gateway listens, who may use it, and which
/// agent runs a request.
public struct GatewayConfiguration: Sendable {
    /// `host:port` for HTTP over TCP; needs `token`.
    public var tcpAddress: (host: String, port: Int)?
    /// A Unix socket for HTTP; callers are known by their uid.
    public var socketPath: String?
    /// Over TCP, requests need `Authorization: Bearer <token>`.
    public var token: String?
    /// Batches made with the token belong to this uid (the token file's owner).
    public var tokenUID: UInt32
    /// The owner id of batches made through the gateway by `uid`: each user is an owner of its own for fairness.
    public func ownerID(uid: UInt32) -> String { "uid:\(uid)" }
    public var routes: GatewayRoutes
    /// The largest file accepted by `POST /v1/files` (OpenAI's limit is 200 MB).
    public var maxFileBytes = 200 << 20
    /// A line longer than this is refused (it could never be a task).
    public var maxLineBytes: Int
    /// A request's body and custom_id, as the daemon's limits allow them.
    public var maxPayloadBytes: Int
    public var maxCustomIDBytes: Int
    /// Lines per file: at most a batch's tasks.
    public var maxLinesPerFile: Int
    /// Lines stored together in one chunk of a file, about this many bytes.
    public var chunkBytes = 1 << 20

    public init(tcpAddress: (host: String, port: Int)?, socketPath: String?, token: String?, tokenUID: UInt32,
                routes: GatewayRoutes, limits: EnqueueLimits) {
        self.tcpAddress = tcpAddress
        self.socketPath = socketPath
        self.token = token
        self.tokenUID = tokenUID
        self.routes = routes
        maxLineBytes = limits.maxPayloadBytes + 64 * 1024
        maxPayloadBytes = limits.maxPayloadBytes
        maxCustomIDBytes = limits.maxCustomIDBytes
        maxLinesPerFile = limits.maxTasksPerBatch
    }
}

/// A request's `model` picks the agent that runs it.
public struct GatewayRoutes: Sendable, Hashable {
    /// Model name → agent.
    public var models: [String: String]
    /// The agent of models with no route; nil: such lines fail.
    public var defaultAgent: String?

    public init(models: [String: String] = [:], defaultAgent: String? = nil) {
        self.models = models
        self.defaultAgent = defaultAgent
    }

    public func agent(for model: String?) -> String? {
        model.flatMap { models[$0] } ?? defaultAgent
    }
}
