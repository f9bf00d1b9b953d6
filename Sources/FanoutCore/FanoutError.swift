/// Errors the core layers report to callers; the server maps each kind to a
/// protocol status code. Messages are meant for a person.
public struct FanoutError: Error, Sendable, Hashable, CustomStringConvertible {
    public enum Kind: Sendable, Hashable {
        case invalidArgument
        case notFound
        case alreadyExists
        case permissionDenied
        case resourceExhausted
        case failedPrecondition
        case unavailable
        case `internal`
    }

    public var kind: Kind
    public var message: String

    public init(_ kind: Kind, _ message: String) {
        self.kind = kind
        self.message = message
    }

    public var description: String { message }

    public static func invalidArgument(_ message: String) -> FanoutError { .init(.invalidArgument, message) }
    public static func notFound(_ message: String) -> FanoutError { .init(.notFound, message) }
    public static func resourceExhausted(_ message: String) -> FanoutError { .init(.resourceExhausted, message) }
    public static func failedPrecondition(_ message: String) -> FanoutError { .init(.failedPrecondition, message) }
    public static func unavailable(_ message: String) -> FanoutError { .init(.unavailable, message) }
    public static func permissionDenied(_ message: String) -> FanoutError { .init(.permissionDenied, message) }
}
