import Foundation

/// A streaming `multipart/form-data` reader (RFC 7578) for uploads: it is
/// fed the body as it arrives and reports each part's headers, then its
/// bytes in pieces, without ever holding a part whole.
///
/// Written here rather than taken from MultipartKit, whose parser traps on a
/// header name with a byte above 127 and gathers header lines without a
/// bound: both are a hostile client's way to stop the daemon.
struct MultipartStream {
    enum Event {
        /// A part begins: its headers, names in lower case.
        case partStarted([String: String])
        case bytes(ArraySlice<UInt8>)
        case partEnded
    }

    struct Malformed: Error, CustomStringConvertible {
        var description: String
    }

    /// Bytes of one part's headers, all lines together.
    static let maxHeaderBytes = 16 * 1024
    /// Bytes before the first boundary (a preamble clients rarely send).
    static let maxPreambleBytes = 16 * 1024

    private enum State {
        case preamble
        /// Just after a boundary: "--" ends the body, CRLF starts a part.
        case afterBoundary
        case headers
        case body
        case finished
    }

    private let delimiter: [UInt8]
    private var state = State.preamble
    private var buffer: [UInt8] = []
    private var skippedPreamble = 0

    /// Whether the closing boundary has been read.
    var isFinished: Bool { if case .finished = state { true } else { false } }

    init(boundary: String) throws {
        // RFC 2046: 1 to 70 characters.
        guard (1...70).contains(boundary.utf8.count) else {
            throw Malformed(description: "the multipart boundary must have 1 to 70 characters")
        }
        delimiter = Array("--\(boundary)".utf8)
    }

    /// Feeds the next bytes of the body; `handle` gets what they complete.
    mutating func feed(_ bytes: some Collection<UInt8>, _ handle: (Event) throws -> Void) throws {
        buffer.append(contentsOf: bytes)
        var progressed = true
        while progressed {
            progressed = try step(handle)
        }
    }

    /// One step of the state machine over `buffer`; false when it needs more bytes.
    private mutating func step(_ handle: (Event) throws -> Void) throws -> Bool {
        switch state {
        case .preamble:
            if let start = find(delimiter, in: buffer[...]) {
                buffer.removeFirst(start + delimiter.count)
                state = .afterBoundary
                return true
            }
            let keep = min(buffer.count, delimiter.count - 1)
            skippedPreamble += buffer.count - keep
            buffer.removeFirst(buffer.count - keep)
            if skippedPreamble > Self.maxPreambleBytes { throw Malformed(description: "no multipart boundary in the first bytes of the body") }
            return false
        case .afterBoundary:
            guard buffer.count >= 2 else { return false }
            if buffer[0] == UInt8(ascii: "-") && buffer[1] == UInt8(ascii: "-") {
                state = .finished
                buffer.removeAll()
                return false
            }
            // Transport padding (spaces, tabs) may follow a boundary before its CRLF.
            guard let lineEnd = find([0x0D, 0x0A], in: buffer[...]) else {
                if buffer.count > 256 { throw Malformed(description: "a multipart boundary line is not ended by CRLF") }
                return false
            }
            guard buffer[..<lineEnd].allSatisfy({ $0 == 0x20 || $0 == 0x09 }) else {
                throw Malformed(description: "unexpected bytes after a multipart boundary")
            }
            buffer.removeFirst(lineEnd + 2)
            state = .headers
            return true
        case .headers:
            guard let end = find([0x0D, 0x0A, 0x0D, 0x0A], in: buffer[...]) ?? (buffer.starts(with: [0x0D, 0x0A]) ? -2 : nil) else {
                if buffer.count > Self.maxHeaderBytes { throw Malformed(description: "a part's headers are longer than \(Self.maxHeaderBytes) bytes") }
                return false
            }
            guard end <= Self.maxHeaderBytes else { throw Malformed(description: "a part's headers are longer than \(Self.maxHeaderBytes) bytes") }
            let headers = end < 0 ? [:] : try Self.headers(buffer[..<end])
            buffer.removeFirst(end + 4)
            state = .body
            try handle(.partStarted(headers))
            return true
        case .body:
            // The part ends at CRLF + delimiter; keep back what could be the start of one.
            let marker = [0x0D, 0x0A] + delimiter
            if let end = find(marker, in: buffer[...]) {
                if end > 0 { try handle(.bytes(buffer[..<end])) }
                try handle(.partEnded)
                buffer.removeFirst(end + marker.count)
                state = .afterBoundary
                return true
            }
            let safe = buffer.count - (marker.count - 1)
            guard safe > 0 else { return false }
            try handle(.bytes(buffer[..<safe]))
            buffer.removeFirst(safe)
            return false
        case .finished:
            // The epilogue is ignored, without keeping it.
            buffer.removeAll()
            return false
        }
    }

    /// `Name: value` lines, ASCII names; values as UTF-8.
    private static func headers(_ bytes: ArraySlice<UInt8>) throws -> [String: String] {
        var result: [String: String] = [:]
        var rest = bytes
        while !rest.isEmpty {
            let end = find([0x0D, 0x0A], in: rest).map { rest.startIndex + $0 } ?? rest.endIndex
            let line = rest[rest.startIndex..<end]
            rest = end < rest.endIndex ? rest[(end + 2)...] : rest[rest.endIndex...]
            guard let colon = line.firstIndex(of: UInt8(ascii: ":")),
                  line[..<colon].allSatisfy({ $0 > 0x20 && $0 < 0x7F }), colon > line.startIndex else {
                throw Malformed(description: "a part header is not \"Name: value\"")
            }
            let name = String(decoding: line[..<colon], as: UTF8.self).lowercased()
            let value = String(decoding: line[(colon + 1)...], as: UTF8.self).trimmingCharacters(in: .whitespaces)
            result[name] = value
        }
        return result
    }

    /// The offset of `needle` in `haystack` (from its start), if present.
    private static func find(_ needle: [UInt8], in haystack: ArraySlice<UInt8>) -> Int? {
        guard let first = needle.first, haystack.count >= needle.count else { return nil }
        var index = haystack.startIndex
        let last = haystack.endIndex - needle.count
        while index <= last {
            guard let candidate = haystack[index...last].firstIndex(of: first) else { return nil }
            if haystack[candidate..<(candidate + needle.count)].elementsEqual(needle) { return candidate - haystack.startIndex }
            index = candidate + 1
        }
        return nil
    }

    private func find(_ needle: [UInt8], in haystack: ArraySlice<UInt8>) -> Int? {
        Self.find(needle, in: haystack)
    }
}
