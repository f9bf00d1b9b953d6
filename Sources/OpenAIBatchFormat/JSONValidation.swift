/// A fast check that bytes are JSON, for answers embedded in output lines.
///
/// It only ever says yes when `JSONSerialization` accepts the bytes too, and
/// leaves every doubtful case to it: escaped surrogates, nesting deeper than
/// Foundation allows, numbers that could overflow a Double, and the few
/// things Foundation takes that strict JSON does not (a byte order mark, a
/// trailing comma). Answers from a provider are plain JSON, so they are
/// checked without building Foundation objects for them.
public enum JSONValidation {
    /// True: the bytes are one JSON value (with surrounding whitespace).
    /// False: not known; ask `JSONSerialization`.
    public static func isCertainlyValid(_ bytes: UnsafeBufferPointer<UInt8>) -> Bool {
        var reader = Reader(bytes: bytes)
        reader.skipWhitespace()
        guard reader.value(depth: 0) else { return false }
        reader.skipWhitespace()
        return reader.index == bytes.count
    }

    /// Below Foundation's nesting limit (512), with room to spare.
    static let maxDepth = 500
    /// Digits a number may have and still certainly fit a Double (Foundation refuses an infinite one).
    static let maxDigits = 300

    private struct Reader {
        let bytes: UnsafeBufferPointer<UInt8>
        var index = 0

        private var current: UInt8? { index < bytes.count ? bytes[index] : nil }

        mutating func skipWhitespace() {
            while let byte = current, byte == 0x20 || byte == 0x0A || byte == 0x0D || byte == 0x09 { index += 1 }
        }

        mutating func value(depth: Int) -> Bool {
            guard let byte = current else { return false }
            switch byte {
            case UInt8(ascii: "{"): return container(depth: depth, close: UInt8(ascii: "}"), keyed: true)
            case UInt8(ascii: "["): return container(depth: depth, close: UInt8(ascii: "]"), keyed: false)
            case UInt8(ascii: "\""): return string()
            case UInt8(ascii: "t"): return literal("true")
            case UInt8(ascii: "f"): return literal("false")
            case UInt8(ascii: "n"): return literal("null")
            default: return number()
            }
        }

        private mutating func container(depth: Int, close: UInt8, keyed: Bool) -> Bool {
            guard depth < JSONValidation.maxDepth else { return false }
            index += 1
            skipWhitespace()
            if current == close {
                index += 1
                return true
            }
            while true {
                if keyed {
                    guard current == UInt8(ascii: "\""), string() else { return false }
                    skipWhitespace()
                    guard current == UInt8(ascii: ":") else { return false }
                    index += 1
                    skipWhitespace()
                }
                guard value(depth: depth + 1) else { return false }
                skipWhitespace()
                switch current {
                case UInt8(ascii: ","):
                    index += 1
                    skipWhitespace()
                case close:
                    index += 1
                    return true
                default:
                    return false
                }
            }
        }

        private mutating func literal(_ word: StaticString) -> Bool {
            let count = word.utf8CodeUnitCount
            guard bytes.count - index >= count else { return false }
            for offset in 0..<count where bytes[index + offset] != word.utf8Start[offset] { return false }
            index += count
            return true
        }

        /// At the opening quote; a string of valid UTF-8 with valid escapes.
        private mutating func string() -> Bool {
            index += 1
            while index < bytes.count {
                let byte = bytes[index]
                switch byte {
                case UInt8(ascii: "\""):
                    index += 1
                    return true
                case UInt8(ascii: "\\"):
                    guard escape() else { return false }
                case 0..<0x20:
                    return false
                case 0x80...:
                    guard utf8Sequence(lead: byte) else { return false }
                default:
                    index += 1
                }
            }
            return false
        }

        private mutating func escape() -> Bool {
            guard index + 1 < bytes.count else { return false }
            switch bytes[index + 1] {
            case UInt8(ascii: "\""), UInt8(ascii: "\\"), UInt8(ascii: "/"), UInt8(ascii: "b"), UInt8(ascii: "f"),
                 UInt8(ascii: "n"), UInt8(ascii: "r"), UInt8(ascii: "t"):
                index += 2
                return true
            case UInt8(ascii: "u"):
                guard bytes.count - index >= 6 else { return false }
                var scalar: UInt32 = 0
                for offset in 2..<6 {
                    guard let digit = Self.hexValue(bytes[index + offset]) else { return false }
                    scalar = scalar << 4 | digit
                }
                // Surrogates (even paired ones) are left to Foundation, which refuses unpaired ones.
                guard !(0xD800...0xDFFF).contains(scalar) else { return false }
                index += 6
                return true
            default:
                return false
            }
        }

        private static func hexValue(_ byte: UInt8) -> UInt32? {
            switch byte {
            case UInt8(ascii: "0")...UInt8(ascii: "9"): UInt32(byte - UInt8(ascii: "0"))
            case UInt8(ascii: "a")...UInt8(ascii: "f"): UInt32(byte - UInt8(ascii: "a") + 10)
            case UInt8(ascii: "A")...UInt8(ascii: "F"): UInt32(byte - UInt8(ascii: "A") + 10)
            default: nil
            }
        }

        /// One well-formed UTF-8 sequence (Unicode's table 3-7): no overlong
        /// forms, no surrogates, nothing above U+10FFFF.
        private mutating func utf8Sequence(lead: UInt8) -> Bool {
            let (length, secondLow, secondHigh): (Int, UInt8, UInt8) = switch lead {
            case 0xC2...0xDF: (2, 0x80, 0xBF)
            case 0xE0: (3, 0xA0, 0xBF)
            case 0xE1...0xEC, 0xEE...0xEF: (3, 0x80, 0xBF)
            case 0xED: (3, 0x80, 0x9F)
            case 0xF0: (4, 0x90, 0xBF)
            case 0xF1...0xF3: (4, 0x80, 0xBF)
            case 0xF4: (4, 0x80, 0x8F)
            default: (0, 0, 0)
            }
            guard length > 0, bytes.count - index >= length else { return false }
            guard (secondLow...secondHigh).contains(bytes[index + 1]) else { return false }
            for offset in 2..<length where !(0x80...0xBF).contains(bytes[index + offset]) { return false }
            index += length
            return true
        }

        /// `-? (0 | [1-9][0-9]*) (. [0-9]+)? ([eE] [+-]? [0-9]+)?`, small enough for a Double.
        private mutating func number() -> Bool {
            if current == UInt8(ascii: "-") { index += 1 }
            guard let first = current, Self.isDigit(first) else { return false }
            let integerDigits = digits()
            // A leading zero stands alone.
            guard first != UInt8(ascii: "0") || integerDigits == 1 else { return false }
            var fractionDigits = 0
            if current == UInt8(ascii: ".") {
                index += 1
                fractionDigits = digits()
                guard fractionDigits > 0 else { return false }
            }
            var exponent = 0
            if current == UInt8(ascii: "e") || current == UInt8(ascii: "E") {
                index += 1
                if current == UInt8(ascii: "+") || current == UInt8(ascii: "-") { index += 1 }
                let start = index
                let count = digits()
                // Two digits at most: anything larger is Foundation's call.
                guard count > 0, count <= 2 else { return false }
                exponent = bytes[start..<index].reduce(0) { $0 * 10 + Int($1 - UInt8(ascii: "0")) }
            }
            return integerDigits + fractionDigits + exponent <= JSONValidation.maxDigits
        }

        private mutating func digits() -> Int {
            let start = index
            while let byte = current, Self.isDigit(byte) { index += 1 }
            return index - start
        }

        private static func isDigit(_ byte: UInt8) -> Bool { byte >= UInt8(ascii: "0") && byte <= UInt8(ascii: "9") }
    }
}
