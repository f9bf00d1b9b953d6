/// Cuts a byte stream into lines as it arrives, keeping only the unfinished
/// last line between pieces; a line longer than `maxLineBytes` is reported
/// once and skipped, never buffered whole.
struct LineSplitter {
    let maxLineBytes: Int
    private var partial: [UInt8] = []
    private var skippingLongLine = false

    init(maxLineBytes: Int) {
        self.maxLineBytes = maxLineBytes
    }

    enum Piece {
        case line(ArraySlice<UInt8>)
        /// A line too long to keep; its bytes are dropped.
        case tooLong
    }

    /// Calls `body` with every line completed by `bytes`.
    mutating func feed(_ bytes: some Collection<UInt8>, _ body: (Piece) throws -> Void) rethrows {
        var rest = bytes[...]
        while let newline = rest.firstIndex(of: UInt8(ascii: "\n")) {
            let head = rest[..<newline]
            if skippingLongLine {
                skippingLongLine = false
            } else if partial.isEmpty {
                if head.count > maxLineBytes { try body(.tooLong) } else { try body(.line(ArraySlice(head))) }
            } else {
                partial.append(contentsOf: head)
                if partial.count > maxLineBytes { try body(.tooLong) } else { try body(.line(partial[...])) }
                partial.removeAll(keepingCapacity: true)
            }
            rest = rest[rest.index(after: newline)...]
        }
        guard !skippingLongLine else { return }
        partial.append(contentsOf: rest)
        if partial.count > maxLineBytes {
            partial.removeAll()
            skippingLongLine = true
            try body(.tooLong)
        }
    }

    /// The last line, when the input does not end with a newline.
    mutating func finish(_ body: (Piece) throws -> Void) rethrows {
        defer { partial.removeAll() }
        if !partial.isEmpty && !skippingLongLine { try body(.line(partial[...])) }
        skippingLongLine = false
    }
}
