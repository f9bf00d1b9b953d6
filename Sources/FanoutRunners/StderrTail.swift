import Foundation

/// The last bytes a command wrote to stderr: enough to explain a failure,
/// never more than twice `capacity` in memory however much it writes.
struct StderrTail: Sendable {
    static let defaultCapacity = 64 * 1024
    /// How much of it a failure message quotes.
    static let messageBytes = 2 * 1024

    let capacity: Int
    private(set) var bytes: [UInt8] = []

    init(capacity: Int = StderrTail.defaultCapacity) {
        self.capacity = capacity
    }

    mutating func append(_ chunk: some Collection<UInt8>) {
        bytes.append(contentsOf: chunk)
        // Trimmed in steps of at least `capacity`, so appends stay amortized O(1).
        if bytes.count > 2 * capacity { bytes.removeFirst(bytes.count - capacity) }
    }

    /// At most the last `messageBytes`, starting on a character boundary, trimmed of surrounding whitespace.
    var message: String {
        var tail = bytes.suffix(Self.messageBytes)
        while let first = tail.first, first & 0xC0 == 0x80 { tail.removeFirst() }
        return String(decoding: tail, as: UTF8.self).trimmingCharacters(in: .whitespacesAndNewlines)
    }
}
