import Foundation

/// What the `openai` runner needs to know of a request body, which it
/// otherwise posts byte for byte as the Batch line gave it.
struct OpenAIRequestBody {
    /// Whether the body has a `model` member at all.
    var hasModel: Bool
    /// Whether that member is a non-empty string.
    var modelIsValid: Bool
    /// `"stream": true`: the provider would answer with server-sent events, not one JSON response.
    var streams: Bool

    /// Nil with a message when the bytes are not a JSON object.
    static func inspect(_ bytes: [UInt8]) -> Result<OpenAIRequestBody, Problem> {
        guard let parsed = try? JSONSerialization.jsonObject(with: Data(bytes)), let object = parsed as? [String: Any] else {
            return .failure(Problem(message: "the body must be a JSON object (an OpenAI request), not \(Excerpt.quote(bytes))"))
        }
        let model = object["model"]
        return .success(OpenAIRequestBody(hasModel: model != nil, modelIsValid: !((model as? String) ?? "").isEmpty,
                                          streams: (object["stream"] as? Bool) == true))
    }

    struct Problem: Error {
        var message: String
    }

    /// `bytes` with `"model": model` added as the object's first member; the
    /// rest stays exactly as it was.
    static func adding(model: String, to bytes: [UInt8]) -> [UInt8] {
        guard let open = bytes.firstIndex(of: UInt8(ascii: "{")) else { return bytes }
        let encodedModel = (try? JSONSerialization.data(withJSONObject: model, options: [.fragmentsAllowed])) ?? Data("\"\"".utf8)
        let isEmptyObject = bytes[(open + 1)...].first { !Self.isWhitespace($0) } == UInt8(ascii: "}")
        var member = Array("\"model\":".utf8) + Array(encodedModel)
        if !isEmptyObject { member.append(UInt8(ascii: ",")) }
        var result = bytes
        result.insert(contentsOf: member, at: open + 1)
        return result
    }

    private static func isWhitespace(_ byte: UInt8) -> Bool {
        byte == 0x20 || byte == 0x09 || byte == 0x0A || byte == 0x0D
    }
}

/// The first bytes of a body, quoted for an error message.
enum Excerpt {
    static func quote(_ bytes: some Collection<UInt8>, limit: Int = 120) -> String {
        if bytes.isEmpty { return "an empty body" }
        let text = String(decoding: bytes.prefix(limit), as: UTF8.self)
            .replacingOccurrences(of: "\0", with: "")
            .replacingOccurrences(of: "\n", with: "\\n")
            .replacingOccurrences(of: "\r", with: "\\r")
        return "\"\(text)\(bytes.count > limit ? "…" : "")\""
    }
}
