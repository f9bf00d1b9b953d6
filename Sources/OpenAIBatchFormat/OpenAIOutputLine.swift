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
        var members: [(String, Data)] = [("id", Self.encode(id)), ("custom_id", Self.encode(customID))]
        if let response {
            members.append(("response", Self.object([
                ("status_code", Self.encode(response.statusCode)),
                ("request_id", response.requestID.map(Self.encode) ?? Data("null".utf8)),
                ("body", Self.embedded(response.body)),
            ])))
        } else {
            members.append(("response", Data("null".utf8)))
        }
        if let error {
            members.append(("error", Self.encode(["code": error.code, "message": error.message])))
        } else {
            members.append(("error", Data("null".utf8)))
        }
        return Self.object(members)
    }

    /// `{"key":value,…}` from already encoded values, in this order.
    private static func object(_ members: [(String, Data)]) -> Data {
        var data = Data("{".utf8)
        for (index, member) in members.enumerated() {
            if index > 0 { data.append(UInt8(ascii: ",")) }
            data.append(encode(member.0))
            data.append(UInt8(ascii: ":"))
            data.append(member.1)
        }
        data.append(UInt8(ascii: "}"))
        return data
    }

    /// A body that is JSON is embedded as it is; anything else as a string.
    /// Valid JSON holds a raw CR or LF only between tokens (never inside a
    /// string), so turning them into spaces keeps one result per line and
    /// changes nothing else of a pretty-printed answer.
    public static func embedded(_ bytes: [UInt8]) -> Data {
        guard (try? JSONSerialization.jsonObject(with: Data(bytes), options: [.fragmentsAllowed])) != nil else {
            return encode(String(decoding: bytes, as: UTF8.self))
        }
        return Data(bytes.map { $0 == 0x0A || $0 == 0x0D ? 0x20 : $0 })
    }

    static func encode(_ value: Any) -> Data {
        (try? JSONSerialization.data(withJSONObject: value, options: [.sortedKeys, .withoutEscapingSlashes, .fragmentsAllowed]))
            ?? Data("null".utf8)
    }
}
