import FanoutWire

/// A call failed: the daemon's status code and its message, or a local
/// connection problem reported as UNAVAILABLE.
public struct FanoutClientError: Error, Sendable, Hashable, CustomStringConvertible {
    public var code: StatusCode
    public var message: String
    /// A subscription was cut off for falling behind; resume from `lastSequence`.
    public var lagged: Bool
    public var lastSequence: UInt64

    public init(code: StatusCode, message: String, lagged: Bool = false, lastSequence: UInt64 = 0) {
        self.code = code
        self.message = message
        self.lagged = lagged
        self.lastSequence = lastSequence
    }

    init(_ status: WireStatus) {
        self.init(code: status.code, message: status.message, lagged: status.lagged, lastSequence: status.lastSequence)
    }

    static func connectionLost(_ detail: String = "") -> FanoutClientError {
        FanoutClientError(code: .unavailable, message: detail.isEmpty ? "the connection to fanoutd was closed" : detail)
    }

    public var description: String { message.isEmpty ? "\(code)" : "\(code): \(message)" }
}
