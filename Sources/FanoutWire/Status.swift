/// Status codes of the protocol, numbered as gRPC's.
public enum StatusCode: UInt32, Sendable, Hashable, CaseIterable, CustomStringConvertible {
    case ok = 0
    case cancelled = 1
    case unknown = 2
    case invalidArgument = 3
    case deadlineExceeded = 4
    case notFound = 5
    case alreadyExists = 6
    case permissionDenied = 7
    case resourceExhausted = 8
    case failedPrecondition = 9
    case aborted = 10
    case outOfRange = 11
    case unimplemented = 12
    case `internal` = 13
    case unavailable = 14
    case dataLoss = 15
    case unauthenticated = 16

    public var description: String {
        switch self {
        case .ok: "OK"
        case .cancelled: "CANCELLED"
        case .unknown: "UNKNOWN"
        case .invalidArgument: "INVALID_ARGUMENT"
        case .deadlineExceeded: "DEADLINE_EXCEEDED"
        case .notFound: "NOT_FOUND"
        case .alreadyExists: "ALREADY_EXISTS"
        case .permissionDenied: "PERMISSION_DENIED"
        case .resourceExhausted: "RESOURCE_EXHAUSTED"
        case .failedPrecondition: "FAILED_PRECONDITION"
        case .aborted: "ABORTED"
        case .outOfRange: "OUT_OF_RANGE"
        case .unimplemented: "UNIMPLEMENTED"
        case .internal: "INTERNAL"
        case .unavailable: "UNAVAILABLE"
        case .dataLoss: "DATA_LOSS"
        case .unauthenticated: "UNAUTHENTICATED"
        }
    }
}

/// The status that ends a stream: a code and a message meant for a person.
public struct WireStatus: Sendable, Hashable, Error, CustomStringConvertible {
    public var code: StatusCode
    public var message: String
    /// Set when a subscriber fell behind its buffer; resume with `since = lastSequence`.
    public var lagged: Bool
    public var lastSequence: UInt64

    public init(code: StatusCode, message: String = "", lagged: Bool = false, lastSequence: UInt64 = 0) {
        self.code = code
        self.message = message
        self.lagged = lagged
        self.lastSequence = lastSequence
    }

    public static let ok = WireStatus(code: .ok)

    public var description: String { message.isEmpty ? "\(code)" : "\(code): \(message)" }
}
