/// Why bytes could not be turned into a `Frame`, or a `Frame` into bytes.
///
/// Every case maps to a protocol status (`statusCode`), so the daemon can end
/// the connection with an `EndOfStream` that a person can read.
public enum WireError: Error, Sendable, Hashable, CustomStringConvertible {
    /// The length header announced more bytes than the receiver accepts
    /// (or the sender would produce a frame larger than allowed).
    case frameTooLarge(length: Int, max: Int)
    /// The body is not a valid `fanout.v1.Frame`; the text names what is wrong.
    case malformedFrame(String)
    /// The stream ended after `received` of the `expected` bytes of a frame
    /// (header included).
    case truncatedFrame(expected: Int, received: Int)
    /// A value cannot be put on the wire, e.g. a string holding a NUL
    /// character (protobuf-c carries strings as C strings).
    case unencodableValue(String)

    public var description: String {
        switch self {
        case .frameTooLarge(let length, let max):
            "frame of \(length) bytes exceeds the maximum of \(max) bytes"
        case .malformedFrame(let reason):
            "malformed frame: \(reason)"
        case .truncatedFrame(let expected, let received):
            "the connection closed in the middle of a frame: received \(received) of \(expected) bytes"
        case .unencodableValue(let reason):
            "cannot encode frame: \(reason)"
        }
    }

    /// The status a peer is told when this error ends its connection or stream.
    public var statusCode: StatusCode {
        switch self {
        case .frameTooLarge: .resourceExhausted
        case .malformedFrame, .truncatedFrame, .unencodableValue: .invalidArgument
        }
    }

    /// `statusCode` with `description` as the message, ready for an `EndOfStream`.
    public var status: WireStatus {
        WireStatus(code: statusCode, message: description)
    }
}
