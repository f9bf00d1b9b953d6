import FanoutCore
import Foundation

/// Reads a runner's own settings from its agent's entry in the config file,
/// with messages that name the agent and the key.
struct RunnerSettingsReader {
    var agent: String
    var object: [String: Any]

    /// Refuses keys the runner does not know, so a typo is not silently ignored.
    func requireOnly(_ known: Set<String>, runner: String) throws {
        if let unknown = object.keys.sorted().first(where: { !known.contains($0) }) {
            throw problem("unknown setting \"\(unknown)\" for the \(runner) runner; it knows \(known.sorted().joined(separator: ", "))")
        }
    }

    func problem(_ message: String) -> FanoutError {
        .invalidArgument("agent \"\(agent)\": \(message)")
    }

    func string(_ key: String) throws -> String? {
        guard let value = object[key] else { return nil }
        guard let text = value as? String else { throw problem("\(key) must be a string") }
        return text
    }

    func integer(_ key: String, in range: ClosedRange<Int64>) throws -> Int64? {
        guard let value = object[key] else { return nil }
        guard let number = (value as? NSNumber)?.doubleValue, number == number.rounded(),
              number >= Double(range.lowerBound), number <= Double(range.upperBound) else {
            throw problem("\(key) must be a whole number from \(range.lowerBound) to \(range.upperBound)")
        }
        return Int64(number)
    }

    func stringDictionary(_ key: String) throws -> [String: String]? {
        guard let value = object[key] else { return nil }
        guard let dictionary = value as? [String: Any] else { throw problem("\(key) must be an object of strings") }
        return try dictionary.mapValues { element in
            guard let text = element as? String else { throw problem("\(key) must be an object of strings") }
            return text
        }
    }
}
