import FanoutCore
import FanoutScheduler
import Foundation

/// Returns its payload. For demos, tests and benchmarks, a JSON object
/// payload may also steer it:
///
/// - `delay_ms`: wait this long (per turn when `turns` is set);
/// - `turns`: report this many turns;
/// - `fail`: fail with this message after the wait;
/// - `retryable`: whether that failure is worth retrying (default false).
///
/// Any other payload (not JSON, or without these keys) is echoed at once.
/// `turns` above `maxTurns` or `delay_ms` above `maxDelayMs` fail the task
/// (not retryable) with a message naming the limit: a demo runner must not
/// be a way to tie the daemon up.
public struct EchoRunner: Runner {
    public static let maxTurns = 10_000
    public static let maxDelayMs: Int64 = 600_000

    public init() {}

    public func run(_ context: RunContext) async throws -> RunOutput {
        let options = Options(payload: context.payload)
        guard (0...Self.maxTurns).contains(options.turns) else {
            throw RunnerFailure("echo: turns is \(options.turns); the echo runner allows 0 to \(Self.maxTurns)",
                                code: "invalid_payload", retryable: false)
        }
        guard (0...Self.maxDelayMs).contains(options.delayMs) else {
            throw RunnerFailure("echo: delay_ms is \(options.delayMs); the echo runner allows 0 to \(Self.maxDelayMs)",
                                code: "invalid_payload", retryable: false)
        }
        if options.turns > 0 {
            for _ in 0..<options.turns {
                if options.delayMs > 0 { try await Task.sleep(for: .milliseconds(options.delayMs)) }
                try Task.checkCancellation()
                await context.reportTurn()
            }
        } else if options.delayMs > 0 {
            try await Task.sleep(for: .milliseconds(options.delayMs))
        }
        if let message = options.fail {
            throw RunnerFailure(message, code: "echo_fail", retryable: options.retryable)
        }
        return RunOutput(result: context.payload)
    }

    struct Options {
        var delayMs: Int64 = 0
        var turns = 0
        var fail: String?
        var retryable = false

        init(payload: [UInt8]) {
            // Only a JSON object naming an option can carry one; skip parsing anything else (most
            // payloads: parsing would cost more than the rest of an echo). Keys are looked for as
            // written plainly, so a key spelled with \u escapes is not an option.
            guard payload.first == UInt8(ascii: "{"), Self.keys.contains(where: { Self.contains(payload, $0) }),
                  let object = try? JSONSerialization.jsonObject(with: Data(payload)) as? [String: Any] else { return }
            // Out-of-range numbers saturate here and are refused by `run`.
            delayMs = Self.clamped(object["delay_ms"])
            turns = Int(Self.clamped(object["turns"]))
            fail = object["fail"] as? String
            retryable = (object["retryable"] as? Bool) ?? false
        }

        /// The options that change what echo does (`retryable` only qualifies `fail`), quoted.
        private static let keys = [#""delay_ms""#, #""turns""#, #""fail""#].map { Array($0.utf8) }

        /// A plain scan over the bytes: Foundation's generic `firstRange(of:)` costs more than the JSON parse it avoids.
        private static func contains(_ payload: [UInt8], _ key: [UInt8]) -> Bool {
            payload.withUnsafeBufferPointer { haystack in
                key.withUnsafeBufferPointer { needle in
                    guard needle.count <= haystack.count, let first = needle.first else { return false }
                    var index = 0
                    let last = haystack.count - needle.count
                    while index <= last {
                        if haystack[index] == first && memcmp(haystack.baseAddress! + index, needle.baseAddress!, needle.count) == 0 {
                            return true
                        }
                        index += 1
                    }
                    return false
                }
            }
        }

        private static func clamped(_ value: Any?) -> Int64 {
            guard let number = value as? NSNumber else { return 0 }
            let double = number.doubleValue
            if double >= 9.2e18 { return .max }
            if double <= -9.2e18 { return .min }
            return number.int64Value
        }
    }
}
