/// Finds a member's value in a JSON object's bytes without decoding it, so
/// that a Batch line's `body` is sent exactly as written (numbers such as
/// `0.7` keep their spelling, keys their order).
///
/// The bytes must already be known to be valid JSON.
public enum RawJSON {
    /// The byte range of the value of top-level member `key`, if present once.
    public static func valueRange(of key: String, inObject bytes: [UInt8]) -> Range<Int>? {
        let wanted = Array(key.utf8)
        let matches = members(inObject: bytes)?.filter { $0.key.elementsEqual(wanted) } ?? []
        return matches.count == 1 ? matches[0].value : nil
    }

    /// The raw key (between its quotes) of a member named twice at the top level, if any.
    public static func duplicateKey(inObject bytes: [UInt8]) -> String? {
        var seen = Set<[UInt8]>()
        for member in members(inObject: bytes) ?? [] where !seen.insert(Array(member.key)).inserted {
            return String(decoding: member.key, as: UTF8.self)
        }
        return nil
    }

    /// The top-level members of an object: each key's raw bytes and its value's range.
    /// Keys written with escapes are compared as written, which is only ever stricter.
    public static func members(inObject bytes: [UInt8]) -> [(key: ArraySlice<UInt8>, value: Range<Int>)]? {
        var index = skipWhitespace(bytes, 0)
        guard index < bytes.count, bytes[index] == UInt8(ascii: "{") else { return nil }
        index = skipWhitespace(bytes, index + 1)
        var found: [(key: ArraySlice<UInt8>, value: Range<Int>)] = []
        if index < bytes.count, bytes[index] == UInt8(ascii: "}") { return found }
        while true {
            guard index < bytes.count, bytes[index] == UInt8(ascii: "\"") else { return nil }
            let keyEnd = endOfString(bytes, index)
            guard keyEnd - 1 > index else { return nil }
            let name = bytes[(index + 1)..<(keyEnd - 1)]
            index = skipWhitespace(bytes, keyEnd)
            guard index < bytes.count, bytes[index] == UInt8(ascii: ":") else { return nil }
            let valueStart = skipWhitespace(bytes, index + 1)
            let valueEnd = endOfValue(bytes, valueStart)
            found.append((name, valueStart..<valueEnd))
            index = skipWhitespace(bytes, valueEnd)
            guard index < bytes.count, bytes[index] == UInt8(ascii: ",") else { return found }
            index = skipWhitespace(bytes, index + 1)
        }
    }

    private static func skipWhitespace(_ bytes: [UInt8], _ start: Int) -> Int {
        var index = start
        while index < bytes.count, [0x20, 0x09, 0x0A, 0x0D].contains(bytes[index]) { index += 1 }
        return index
    }

    /// Just past the closing quote of the string opening at `start`.
    private static func endOfString(_ bytes: [UInt8], _ start: Int) -> Int {
        var index = start + 1
        while index < bytes.count {
            switch bytes[index] {
            case UInt8(ascii: "\\"): index += 2
            case UInt8(ascii: "\""): return index + 1
            default: index += 1
            }
        }
        return bytes.count
    }

    /// Just past the value starting at `start`: a string, an object or array (nesting counted), or a scalar.
    private static func endOfValue(_ bytes: [UInt8], _ start: Int) -> Int {
        guard start < bytes.count else { return start }
        switch bytes[start] {
        case UInt8(ascii: "\""):
            return endOfString(bytes, start)
        case UInt8(ascii: "{"), UInt8(ascii: "["):
            var depth = 0
            var index = start
            while index < bytes.count {
                switch bytes[index] {
                case UInt8(ascii: "\""):
                    index = endOfString(bytes, index)
                    continue
                case UInt8(ascii: "{"), UInt8(ascii: "["):
                    depth += 1
                case UInt8(ascii: "}"), UInt8(ascii: "]"):
                    depth -= 1
                    if depth == 0 { return index + 1 }
                default:
                    break
                }
                index += 1
            }
            return bytes.count
        default:
            var index = start
            while index < bytes.count, ![UInt8(ascii: ","), UInt8(ascii: "}"), UInt8(ascii: "]"), 0x20, 0x09, 0x0A, 0x0D].contains(bytes[index]) {
                index += 1
            }
            return index
        }
    }
}
