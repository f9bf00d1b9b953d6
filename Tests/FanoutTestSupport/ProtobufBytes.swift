/// Hand-written protobuf encoding, for bytes the Swift encoder would never
/// produce: unknown enum numbers, unset oneofs, invalid UTF-8, unknown fields.
public enum PB {
    public static func varint(_ value: UInt64) -> [UInt8] {
        var value = value
        var bytes: [UInt8] = []
        while value >= 0x80 {
            bytes.append(UInt8(value & 0x7F) | 0x80)
            value >>= 7
        }
        bytes.append(UInt8(value))
        return bytes
    }

    /// A varint field (wire type 0).
    public static func uint(_ number: UInt64, _ value: UInt64) -> [UInt8] {
        varint(number << 3) + varint(value)
    }

    /// A negative int32/enum value, which protobuf sends sign-extended to 64 bits.
    public static func int(_ number: UInt64, _ value: Int64) -> [UInt8] {
        uint(number, UInt64(bitPattern: value))
    }

    /// A length-delimited field (wire type 2): a string, bytes or sub-message.
    public static func bytes(_ number: UInt64, _ body: [UInt8]) -> [UInt8] {
        varint(number << 3 | 2) + varint(UInt64(body.count)) + body
    }

    public static func string(_ number: UInt64, _ text: String) -> [UInt8] {
        bytes(number, Array(text.utf8))
    }

    /// The 4-byte big-endian length header.
    public static func header(_ length: UInt32) -> [UInt8] {
        [UInt8(length >> 24), UInt8(length >> 16 & 0xFF), UInt8(length >> 8 & 0xFF), UInt8(length & 0xFF)]
    }

    public static func framed(_ body: [UInt8]) -> [UInt8] {
        header(UInt32(body.count)) + body
    }
}

/// Fixed-seed generator (SplitMix64) so fuzz runs are reproducible.
public struct SplitMix64: RandomNumberGenerator {
    var state: UInt64

    public init(seed: UInt64) {
        state = seed
    }

    public mutating func next() -> UInt64 {
        state &+= 0x9E37_79B9_7F4A_7C15
        var z = state
        z = (z ^ (z >> 30)) &* 0xBF58_476D_1CE4_E5B9
        z = (z ^ (z >> 27)) &* 0x94D0_49BB_1331_11EB
        return z ^ (z >> 31)
    }
}
