import FanoutCore
import FanoutScheduler
import Foundation

/// An OpenAI-compatible provider's answer, turned into a task outcome: the
/// body byte for byte with its status, request id and usage, or a failure
/// classified as OpenAI documents its status codes.
struct OpenAIReply {
    var statusCode: Int
    /// Header names in lower case.
    var headers: [String: String]
    var body: [UInt8]

    /// Statuses worth trying again: timeouts, conflicts, rate limits and server errors.
    static func isRetryable(statusCode: Int) -> Bool {
        statusCode == 408 || statusCode == 409 || statusCode == 429 || statusCode >= 500
    }

    func outcome(now: Date = Date()) -> Result<RunOutput, RunnerFailure> {
        let requestID = headers["x-request-id"]
        let parsed = try? JSONSerialization.jsonObject(with: Data(body), options: [.fragmentsAllowed])
        if (200..<300).contains(statusCode) {
            guard let object = parsed as? [String: Any] else {
                return .failure(RunnerFailure(
                    "the provider answered \(statusCode) with a body that is not a JSON object: \(Excerpt.quote(body))",
                    code: "invalid_response", retryable: false, response: body,
                    details: ResponseDetails(statusCode: statusCode, requestID: requestID)))
            }
            return .success(RunOutput(result: body, details: ResponseDetails(
                statusCode: statusCode, requestID: requestID, usage: Self.usage(in: object))))
        }
        let error = ProviderError(body: body, parsed: parsed, statusCode: statusCode)
        // A 429 for an exhausted quota will not pass by waiting.
        let retryable = Self.isRetryable(statusCode: statusCode) && error.code != "insufficient_quota"
        return .failure(RunnerFailure(
            error.message, code: error.code, retryable: retryable,
            retryAfterMs: retryable ? Self.retryAfterMs(headers, now: now) : nil, response: body,
            details: ResponseDetails(statusCode: statusCode, requestID: requestID)))
    }

    /// `usage` of chat, completions and embeddings (`prompt_tokens`, …) or of the Responses API (`input_tokens`, …).
    static func usage(in object: [String: Any]) -> TokenUsage? {
        guard let usage = object["usage"] as? [String: Any] else { return nil }
        func count(_ keys: String...) -> Int64? {
            for key in keys {
                // No answer uses a trillion tokens; a bound keeps every sum, in memory and in SQL, far from overflow.
                if let number = usage[key] as? NSNumber { return Int64(max(0, min(number.doubleValue, 1e12))) }
            }
            return nil
        }
        let prompt = count("prompt_tokens", "input_tokens")
        let completion = count("completion_tokens", "output_tokens")
        guard prompt != nil || completion != nil || usage["total_tokens"] != nil else { return nil }
        return TokenUsage(promptTokens: prompt ?? 0, completionTokens: completion ?? 0,
                          totalTokens: count("total_tokens") ?? (prompt ?? 0).addingSaturated(completion ?? 0))
    }

    /// `retry-after-ms` (OpenAI's, in milliseconds), else `Retry-After` in seconds or as an HTTP date.
    static func retryAfterMs(_ headers: [String: String], now: Date) -> Int64? {
        let day = Double(RunnerFailure.maxRetryAfterMs)
        if let text = headers["retry-after-ms"], let milliseconds = Double(text.trimmingCharacters(in: .whitespaces)),
           milliseconds.isFinite, milliseconds >= 0 {
            return Int64(min(milliseconds, day).rounded(.up))
        }
        guard let text = headers["retry-after"]?.trimmingCharacters(in: .whitespaces) else { return nil }
        if let seconds = Double(text), seconds.isFinite, seconds >= 0 {
            return Int64(min(seconds * 1000, day).rounded(.up))
        }
        if let date = HTTPDate.parse(text) {
            return Int64(min(max(date.timeIntervalSince(now) * 1000, 0), day).rounded(.up))
        }
        return nil
    }
}

extension Int64 {
    func addingSaturated(_ other: Int64) -> Int64 {
        let (sum, overflow) = addingReportingOverflow(other)
        return overflow ? .max : sum
    }
}

/// The `error` a provider sent with a failing status: OpenAI's
/// `{"error": {"message", "code", "type"}}`, or the plainer shapes of
/// compatible servers (`{"error": "…"}`, FastAPI's `{"detail": …}`).
struct ProviderError {
    var code: String
    var message: String

    /// A provider's message or code is kept in the task's error and in every retry event: at most this long.
    static let maxTextBytes = 4_096

    init(body: [UInt8], parsed: Any?, statusCode: Int) {
        let object = parsed as? [String: Any]
        let error = object?["error"]
        let fields = error as? [String: Any]
        code = Self.text(fields?["code"]) ?? Self.text(fields?["type"]) ?? "http_\(statusCode)"
        if let message = Self.text(fields?["message"]) ?? Self.text(error) ?? Self.text(object?["message"]) {
            self.message = message
        } else if let detail = object?["detail"] {
            self.message = Self.text(detail) ?? String(describing: detail)
        } else if parsed == nil {
            self.message = "HTTP \(statusCode) with a body that is not JSON: \(Excerpt.quote(body))"
        } else {
            self.message = "HTTP \(statusCode): \(Excerpt.quote(body))"
        }
        code = Self.truncated(code)
        message = Self.truncated(message)
    }

    static func truncated(_ text: String) -> String {
        guard text.utf8.count > maxTextBytes else { return text }
        return String(decoding: text.utf8.prefix(maxTextBytes), as: UTF8.self) + "…"
    }

    private static func text(_ value: Any?) -> String? {
        switch value {
        case let string as String where !string.isEmpty: string
        case let number as NSNumber: number.stringValue
        default: nil
        }
    }
}

/// HTTP dates (RFC 9110: `Sun, 06 Nov 1994 08:49:37 GMT`), as Retry-After may carry one.
enum HTTPDate {
    static func parse(_ text: String) -> Date? {
        let formatter = DateFormatter()
        formatter.locale = Locale(identifier: "en_US_POSIX")
        formatter.timeZone = TimeZone(identifier: "GMT")
        for format in ["EEE, dd MMM yyyy HH:mm:ss zzz", "EEEE, dd-MMM-yy HH:mm:ss zzz", "EEE MMM d HH:mm:ss yyyy"] {
            formatter.dateFormat = format
            if let date = formatter.date(from: text) { return date }
        }
        return nil
    }
}
