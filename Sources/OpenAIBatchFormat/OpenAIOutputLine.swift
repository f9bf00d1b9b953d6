import Foundation

/// One line of an OpenAI Batch output or error file:
/// `{"id", "custom_id", "response": {"status_code", "request_id", "body"}, "error": {"code", "message"}}`.
///
/// A request the provider answered (successfully or not) has a `response`
/// whose body is the provider's, byte for byte; a failed one has an `error`
/// too. Requests that got no answer (timed out, cancelled, expired) have
/// only the `error`.
public struct OpenAIOutputLine: Sendable {
    public var id: String
    public var customID: String
    /// The provider's answer; nil when there was none.
    public var response: Response?
    public var error: (code: String, message: String)?

    public struct Response: Sendable {
        public var statusCode: Int
        public var requestID: String?
        public var body: [UInt8]

        public init(statusCode: Int, requestID: String?, body: [UInt8]) {
            self.statusCode = statusCode
            self.requestID = requestID
            self.body = body
        }
    }

    public init(id: String, customID: String, response: Response?, error: (code: String, message: String)?) {
        self.id = id
        self.customID = customID
        self.response = response
        self.error = error
    }

    /// The line, without its newline.
    public func encoded() -> Data {
        var line: [UInt8] = []
        append(to: &line)
        return Data(line)
    }

    /// Appends the line, without its newline: members in the order
    /// `id, custom_id, response, error`, written as `JSONSerialization` would.
    public func append(to out: inout [UInt8]) {
        out.append(contentsOf: Self.idKey)
        JSONWriting.appendString(id, to: &out)
        out.append(contentsOf: Self.customIDKey)
        JSONWriting.appendString(customID, to: &out)
        out.append(contentsOf: Self.responseKey)
        if let response {
            out.append(contentsOf: Self.statusCodeKey)
            JSONWriting.appendInteger(response.statusCode, to: &out)
            out.append(contentsOf: Self.requestIDKey)
            if let requestID = response.requestID {
                JSONWriting.appendString(requestID, to: &out)
            } else {
                out.append(contentsOf: Self.null)
            }
            out.append(contentsOf: Self.bodyKey)
            Self.appendEmbedded(response.body, to: &out)
            out.append(UInt8(ascii: "}"))
        } else {
            out.append(contentsOf: Self.null)
        }
        out.append(contentsOf: Self.errorKey)
        if let error {
            out.append(contentsOf: Self.codeKey)
            JSONWriting.appendString(error.code, to: &out)
            out.append(contentsOf: Self.messageKey)
            JSONWriting.appendString(error.message, to: &out)
            out.append(UInt8(ascii: "}"))
        } else {
            out.append(contentsOf: Self.null)
        }
        out.append(UInt8(ascii: "}"))
    }

    private static let idKey = Array(#"{"id":"#.utf8)
    private static let customIDKey = Array(#","custom_id":"#.utf8)
    private static let responseKey = Array(#","response":"#.utf8)
    private static let statusCodeKey = Array(#"{"status_code":"#.utf8)
    private static let requestIDKey = Array(#","request_id":"#.utf8)
    private static let bodyKey = Array(#","body":"#.utf8)
    private static let errorKey = Array(#","error":"#.utf8)
    private static let codeKey = Array(#"{"code":"#.utf8)
    private static let messageKey = Array(#","message":"#.utf8)
    private static let null = Array("null".utf8)

    /// A body that is JSON is embedded as it is; anything else as a string.
    /// Valid JSON holds a raw CR or LF only between tokens (never inside a
    /// string), so turning them into spaces keeps one result per line and
    /// changes nothing else of a pretty-printed answer.
    public static func embedded(_ bytes: [UInt8]) -> Data {
        var out: [UInt8] = []
        appendEmbedded(bytes, to: &out)
        return Data(out)
    }

    /// `embedded(_:)`, appended.
    public static func appendEmbedded(_ bytes: [UInt8], to out: inout [UInt8]) {
        let isJSON = bytes.withUnsafeBufferPointer(JSONValidation.isCertainlyValid)
            || (try? JSONSerialization.jsonObject(with: Data(bytes), options: [.fragmentsAllowed])) != nil
        guard isJSON else {
            JSONWriting.appendString(String(decoding: bytes, as: UTF8.self), to: &out)
            return
        }
        let start = out.count
        out.append(contentsOf: bytes)
        out.withUnsafeMutableBufferPointer { line in
            for index in start..<line.count where line[index] == 0x0A || line[index] == 0x0D { line[index] = 0x20 }
        }
    }
}
