/// How the daemon's server listens and what it allows one client.
public struct ServerConfiguration: Sendable {
    public var socketPath: String
    /// File mode of the socket; 0600 lets only the daemon's user connect.
    public var socketMode: UInt16 = 0o600
    public var serverVersion: String = FanoutVersion.current
    public var maxFrameBytes: Int = 4 * 1024 * 1024
    public var maxConnections: Int = 1024
    public var maxStreamsPerConnection: Int = 1024
    /// Events a subscriber may have queued before it is cut off as lagged.
    public var subscriberBuffer: Int = 10_000
    public var maxResultsPage: Int = 1_000
    /// The most result bytes in one results page (`TaskRecord.resultPageBytes`);
    /// a request's larger `page_bytes` is reduced to it. See `resultsPageBytes`.
    public var maxResultsPageBytes: Int = 1 << 20
    /// How long in-flight calls may take to finish during shutdown.
    public var shutdownGracePeriodMs: Int64 = 5_000
    /// A connection that has not sent Hello this long after connecting is closed.
    public var handshakeTimeoutMs: Int64 = 10_000
    /// Connections the kernel queues before the daemon accepts them; nil: the
    /// system's maximum (`net.core.somaxconn`).
    public var listenBacklog: Int?

    public init(socketPath: String) {
        self.socketPath = socketPath
    }

    /// `maxResultsPageBytes` as applied and announced: never more than a
    /// frame holds once the page's own envelope is added, so that a page cut
    /// by it can always be sent.
    public var resultsPageBytes: Int {
        max(1, min(maxResultsPageBytes, maxFrameBytes - Self.resultsPageEnvelope))
    }

    /// A page's frame without its results: stream id, message and page headers, with room to spare.
    public static let resultsPageEnvelope = 64
}

public enum FanoutVersion {
    public static let current = "0.1.0"
    public static let protocolVersion: UInt32 = 1
}
