import CProtobufC
import FanoutProtoC
import NIOCore

/// Converts `Frame` values to and from the bytes of one protobuf
/// `fanout.v1.Frame`, through the protobuf-c generated code (the same code
/// the C client uses).
public enum FrameCoding {
    /// Size of the big-endian `UInt32` length that precedes every frame body.
    public static let headerBytes = 4

    /// The body bytes of `frame` (no length header).
    public static func encode(_ frame: Frame) throws(WireError) -> [UInt8] {
        let arena = EncodeArena()
        defer { arena.release() }
        let message = try ProtoEncoder(arena: arena).frame(frame)
        let size = fanout__v1__frame__get_packed_size(message)
        return [UInt8](unsafeUninitializedCapacity: size) { buffer, count in
            guard let base = buffer.baseAddress, size > 0 else { return }
            count = fanout__v1__frame__pack(message, base)
        }
    }

    /// Appends `frame` to `buffer` as it travels on the socket: the body's
    /// length as a big-endian `UInt32`, then the body.
    ///
    /// The body is packed straight into `buffer`, with no intermediate copy.
    /// Throws `frameTooLarge` when the body would exceed `maxFrameBytes`
    /// (a peer with that limit would drop the connection), leaving `buffer`
    /// unchanged.
    public static func encodeFramed(
        _ frame: Frame,
        into buffer: inout ByteBuffer,
        maxFrameBytes: Int = FrameDecoder.defaultMaxFrameBytes
    ) throws(WireError) {
        let arena = EncodeArena()
        defer { arena.release() }
        try encodeFramed(frame, into: &buffer, maxFrameBytes: maxFrameBytes, arena: arena)
    }

    /// Appends several frames, one after the other, sharing one arena for
    /// their temporary structs (a subscription's group of events: one
    /// allocation instead of one per event). Stops at the first frame that
    /// cannot be encoded; those before it stay in `buffer`.
    public static func encodeFramed(
        _ frames: some Sequence<Frame>,
        into buffer: inout ByteBuffer,
        maxFrameBytes: Int = FrameDecoder.defaultMaxFrameBytes
    ) throws(WireError) {
        let arena = EncodeArena()
        defer { arena.release() }
        for frame in frames {
            try encodeFramed(frame, into: &buffer, maxFrameBytes: maxFrameBytes, arena: arena)
        }
    }

    private static func encodeFramed(_ frame: Frame, into buffer: inout ByteBuffer, maxFrameBytes: Int,
                                     arena: EncodeArena) throws(WireError) {
        let message = try ProtoEncoder(arena: arena).frame(frame)
        let size = fanout__v1__frame__get_packed_size(message)
        let limit = min(maxFrameBytes, Int(UInt32.max))
        guard size <= limit else {
            throw .frameTooLarge(length: size, max: limit)
        }
        // protobuf-c tells the size before packing, so the length is written
        // first and the body packed in place after it.
        buffer.reserveCapacity(minimumWritableBytes: headerBytes + size)
        buffer.writeInteger(UInt32(size), endianness: .big)
        guard size > 0 else { return }
        buffer.writeWithUnsafeMutableBytes(minimumWritableBytes: size) { raw in
            fanout__v1__frame__pack(message, raw.baseAddress!.assumingMemoryBound(to: UInt8.self))
        }
    }

    /// Decodes one frame body (no length header).
    public static func decode(_ bytes: UnsafeRawBufferPointer) throws(WireError) -> Frame {
        let unpacked: UnsafeMutablePointer<Fanout__V1__Frame>?
        if let base = bytes.baseAddress, bytes.count > 0 {
            unpacked = fanout__v1__frame__unpack(nil, bytes.count, base.assumingMemoryBound(to: UInt8.self))
        } else {
            // An empty body is a valid, empty message; give protobuf-c a real
            // pointer anyway rather than rely on it never reading one.
            var zero: UInt8 = 0
            unpacked = withUnsafePointer(to: &zero) { fanout__v1__frame__unpack(nil, 0, $0) }
        }
        guard let unpacked else {
            throw .malformedFrame("the body is not a valid protobuf fanout.v1.Frame")
        }
        defer { fanout__v1__frame__free_unpacked(unpacked, nil) }
        if let field = NulStringScan.firstNulFieldInFrame(bytes) {
            return Frame(streamID: unpacked.pointee.stream_id, kind: .rejected(WireStatus(
                code: .invalidArgument, message: "\(field) contains a NUL character, which protocol strings cannot hold")))
        }
        return try ProtoDecoder.frame(unpacked)
    }

    /// Decodes one frame body (no length header).
    public static func decode(_ bytes: [UInt8]) throws(WireError) -> Frame {
        // Result carries the typed error through the untyped `rethrows` of
        // withUnsafeBytes.
        try bytes.withUnsafeBytes { raw in
            Result { () throws(WireError) in try decode(raw) }
        }.get()
    }

    /// Decodes the readable bytes of `buffer` as one frame body (no length
    /// header), without copying them.
    public static func decode(_ buffer: ByteBuffer) throws(WireError) -> Frame {
        try buffer.withUnsafeReadableBytes { raw in
            Result { () throws(WireError) in try decode(raw) }
        }.get()
    }
}
