import CProtobufC
import FanoutProtoC

/// Finds a string field holding a NUL byte in an encoded message, before
/// protobuf-c unpacks it.
///
/// protobuf-c hands strings over as C strings, so `"id\0one"` would arrive
/// as `"id"`: two different ids would collide, and what the daemon stores
/// would not be what the client sent. The protocol refuses such strings
/// instead, and this walk is how the receiver sees them: it follows the
/// message's descriptor through nested messages and checks the bytes of
/// every `string` field. Anything it cannot parse it leaves to protobuf-c,
/// which rejects malformed input itself.
enum NulStringScan {
    /// Deeper nesting than this is not walked (the schema nests a few levels; protobuf-c bounds the rest).
    static let maxDepth = 32

    /// The name of the first string field (as `Message.field`) that holds a NUL, or nil.
    static func firstNulField(in bytes: UnsafeRawBufferPointer,
                              descriptor: UnsafePointer<ProtobufCMessageDescriptor>) -> String? {
        var reader = Reader(bytes: bytes)
        return scan(&reader, end: bytes.count, descriptor: descriptor, depth: 0)
    }

    static func firstNulFieldInFrame(_ bytes: UnsafeRawBufferPointer) -> String? {
        withUnsafePointer(to: fanout__v1__frame__descriptor) { firstNulField(in: bytes, descriptor: $0) }
    }

    private static func scan(_ reader: inout Reader, end: Int, descriptor: UnsafePointer<ProtobufCMessageDescriptor>,
                             depth: Int) -> String? {
        while reader.offset < end {
            guard let key = reader.varint(), let field = UInt32(exactly: key >> 3) else { return nil }
            switch key & 7 {
            case 0:
                guard reader.varint() != nil else { return nil }
            case 1:
                guard reader.skip(8, end: end) else { return nil }
            case 5:
                guard reader.skip(4, end: end) else { return nil }
            case 2:
                // A varint may have run past a nested message's end; protobuf-c refuses that input anyway.
                guard let length = reader.varint(), reader.offset <= end, length <= UInt64(end - reader.offset) else { return nil }
                let start = reader.offset
                let stop = start + Int(length)
                if let found = check(field, in: &reader, start: start, stop: stop, descriptor: descriptor, depth: depth) {
                    return found
                }
                reader.offset = stop
            default:
                return nil  // groups and invalid wire types: protobuf-c decides
            }
        }
        return nil
    }

    private static func check(_ number: UInt32, in reader: inout Reader, start: Int, stop: Int,
                              descriptor: UnsafePointer<ProtobufCMessageDescriptor>, depth: Int) -> String? {
        let message = descriptor.pointee
        guard let fields = message.fields else { return nil }
        for index in 0..<Int(message.n_fields) where fields[index].id == number {
            let field = fields[index]
            switch field.type {
            case PROTOBUF_C_TYPE_STRING:
                guard let base = reader.bytes.baseAddress, stop > start,
                      memchr(base + start, 0, stop - start) != nil else { return nil }
                return "\(String(cString: message.short_name)).\(String(cString: field.name))"
            case PROTOBUF_C_TYPE_MESSAGE:
                guard depth < maxDepth, let nested = field.descriptor?.assumingMemoryBound(to: ProtobufCMessageDescriptor.self)
                else { return nil }
                return scan(&reader, end: stop, descriptor: nested, depth: depth + 1)
            default:
                return nil
            }
        }
        return nil  // unknown field: ignored, as protobuf-c does
    }

    private struct Reader {
        let bytes: UnsafeRawBufferPointer
        var offset = 0

        mutating func varint() -> UInt64? {
            var value: UInt64 = 0
            for shift in stride(from: 0, to: 64, by: 7) {
                guard offset < bytes.count else { return nil }
                let byte = bytes[offset]
                offset += 1
                value |= UInt64(byte & 0x7f) << UInt64(shift)
                if byte & 0x80 == 0 { return value }
            }
            return nil
        }

        mutating func skip(_ count: Int, end: Int) -> Bool {
            guard end - offset >= count else { return false }
            offset += count
            return true
        }
    }
}

#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#elseif canImport(Darwin)
import Darwin
#endif
