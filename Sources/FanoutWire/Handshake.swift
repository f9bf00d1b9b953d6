public struct Hello: Sendable, Hashable {
    public static let currentProtocolVersion: UInt32 = 1

    public var protocolVersion: UInt32
    public var clientName: String

    public init(protocolVersion: UInt32 = Hello.currentProtocolVersion, clientName: String) {
        self.protocolVersion = protocolVersion
        self.clientName = clientName
    }
}

public struct Welcome: Sendable, Hashable {
    public var serverVersion: String
    public var protocolVersion: UInt32
    public var maxFrameBytes: UInt32
    public var features: [String]
    public var limits: Limits

    public init(serverVersion: String, protocolVersion: UInt32, maxFrameBytes: UInt32, features: [String], limits: Limits) {
        self.serverVersion = serverVersion
        self.protocolVersion = protocolVersion
        self.maxFrameBytes = maxFrameBytes
        self.features = features
        self.limits = limits
    }
}

/// The daemon's limits, announced in the handshake and in ServerInfo.
public struct Limits: Sendable, Hashable {
    public var maxFrameBytes: UInt32 = 0
    public var maxTasksPerBatch: UInt32 = 0
    public var maxPayloadBytes: UInt32 = 0
    public var maxCustomIDBytes: UInt32 = 0
    public var maxStreamsPerConnection: UInt32 = 0
    public var maxConnections: UInt32 = 0
    public var subscriberBuffer: UInt32 = 0
    public var globalConcurrency: UInt32 = 0
    public var maxResultsPage: UInt32 = 0
    /// The most result bytes the daemon puts in one results page; a larger `page_bytes` is reduced to it.
    public var maxResultsPageBytes: UInt32 = 0

    public init() {}
}
