import NIOCore

/// Splits a byte stream into frames: a 4-byte big-endian length, then that
/// many bytes of one encoded `fanout.v1.Frame`.
///
/// The length is checked against `maxFrameBytes` as soon as the 4 header
/// bytes arrive, so an oversized frame is refused before its body is
/// buffered.
public struct FrameDecoder: NIOSingleStepByteToMessageDecoder, Sendable {
    public typealias InboundOut = Frame

    /// 4 MiB, the daemon's default (it announces its own in `Welcome`).
    public static let defaultMaxFrameBytes = 4 * 1024 * 1024

    public let maxFrameBytes: Int

    public init(maxFrameBytes: Int = FrameDecoder.defaultMaxFrameBytes) {
        precondition(maxFrameBytes >= 0, "maxFrameBytes must not be negative")
        self.maxFrameBytes = maxFrameBytes
    }

    public mutating func decode(buffer: inout ByteBuffer) throws -> Frame? {
        guard let length = buffer.getInteger(at: buffer.readerIndex, endianness: .big, as: UInt32.self) else {
            return nil
        }
        let bodyLength = Int(length)
        guard bodyLength <= maxFrameBytes else {
            throw WireError.frameTooLarge(length: bodyLength, max: maxFrameBytes)
        }
        guard buffer.readableBytes >= FrameCoding.headerBytes + bodyLength else {
            return nil
        }
        buffer.moveReaderIndex(forwardBy: FrameCoding.headerBytes)
        // A slice shares the buffer's storage: the body is not copied. The
        // frame is consumed before decoding, so a malformed one is not seen
        // again.
        let body = buffer.readSlice(length: bodyLength)!
        return try FrameCoding.decode(body)
    }

    public mutating func decodeLast(buffer: inout ByteBuffer, seenEOF: Bool) throws -> Frame? {
        if let frame = try decode(buffer: &buffer) {
            return frame
        }
        // Without EOF the handler is being removed from the pipeline (the
        // connection is not over), so a partial frame is not an error.
        guard seenEOF, buffer.readableBytes > 0 else {
            return nil
        }
        let expected: Int
        if let length = buffer.getInteger(at: buffer.readerIndex, endianness: .big, as: UInt32.self) {
            expected = FrameCoding.headerBytes + Int(length)
        } else {
            expected = FrameCoding.headerBytes
        }
        throw WireError.truncatedFrame(expected: expected, received: buffer.readableBytes)
    }
}

/// Writes each `Frame` as a 4-byte big-endian length followed by its body.
public struct FrameEncoder: MessageToByteEncoder, Sendable {
    public typealias OutboundIn = Frame

    /// Frames whose body would be larger are refused with
    /// `WireError.frameTooLarge` instead of being sent to a peer that would
    /// drop the connection over them.
    public let maxFrameBytes: Int

    public init(maxFrameBytes: Int = FrameDecoder.defaultMaxFrameBytes) {
        self.maxFrameBytes = maxFrameBytes
    }

    public func encode(data: Frame, out: inout ByteBuffer) throws {
        try FrameCoding.encodeFramed(data, into: &out, maxFrameBytes: maxFrameBytes)
    }
}

/// `FrameDecoder` for readers that handle frames in groups: each call returns
/// every frame complete in the buffer. A malformed frame after good ones is
/// reported on the next call, so the good ones are not lost with it.
public struct FrameGroupDecoder: NIOSingleStepByteToMessageDecoder, Sendable {
    public typealias InboundOut = [Frame]

    private var decoder: FrameDecoder
    private var pendingError: WireError?

    public init(maxFrameBytes: Int = FrameDecoder.defaultMaxFrameBytes) {
        decoder = FrameDecoder(maxFrameBytes: maxFrameBytes)
    }

    public mutating func decode(buffer: inout ByteBuffer) throws -> [Frame]? {
        if let pendingError { throw pendingError }
        var frames: [Frame] = []
        do {
            while let frame = try decoder.decode(buffer: &buffer) { frames.append(frame) }
        } catch {
            guard !frames.isEmpty else { throw error }
            pendingError = error as? WireError ?? .malformedFrame("\(error)")
        }
        return frames.isEmpty ? nil : frames
    }

    public mutating func decodeLast(buffer: inout ByteBuffer, seenEOF: Bool) throws -> [Frame]? {
        if let frames = try decode(buffer: &buffer) { return frames }
        return try decoder.decodeLast(buffer: &buffer, seenEOF: seenEOF).map { [$0] }
    }
}
