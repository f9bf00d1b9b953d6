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
public struct EchoRunner: Runner {
    public init() {}

    public func run(_ context: RunContext) async throws -> RunOutput {
        let options = Options(payload: context.payload)
        if options.turns > 0 {
            for _ in 0..<options.turns {
                if options.delayMs > 0 { try await Task.sleep(for: .milliseconds(options.delayMs)) }
                try Task.checkCancellation()
                context.reportTurn()
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
            // Only a JSON object can carry options; skip parsing anything else.
            guard payload.first == UInt8(ascii: "{"),
                  let object = try? JSONSerialization.jsonObject(with: Data(payload)) as? [String: Any] else { return }
            delayMs = (object["delay_ms"] as? NSNumber)?.int64Value ?? 0
            turns = (object["turns"] as? NSNumber)?.intValue ?? 0
            fail = object["fail"] as? String
            retryable = (object["retryable"] as? Bool) ?? false
        }
    }
}

/// The built-in runners by the name an agent's configuration uses.
public enum BuiltinRunners {
    public static let names = ["echo"]

    public static func make(_ name: String) -> (any Runner)? {
        switch name {
        case "echo": EchoRunner()
        default: nil
        }
    }
}
