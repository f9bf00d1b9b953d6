import FanoutWire
import NIOCore
import NIOEmbedded
import FanoutTestSupport
import Testing

@Suite("FrameDecoder and FrameEncoder in a channel")
struct FrameCodecTests {
    static func makeChannel(maxFrameBytes: Int = FrameDecoder.defaultMaxFrameBytes) throws -> EmbeddedChannel {
        let channel = EmbeddedChannel()
        try channel.pipeline.syncOperations.addHandler(ByteToMessageHandler(FrameDecoder(maxFrameBytes: maxFrameBytes)))
        try channel.pipeline.syncOperations.addHandler(MessageToByteHandler(FrameEncoder()))
        return channel
    }

    static func buffer(_ bytes: [UInt8]) -> ByteBuffer {
        ByteBuffer(bytes: bytes)
    }

    static func readAllInbound(_ channel: EmbeddedChannel) throws -> [Frame] {
        var frames: [Frame] = []
        while let frame = try channel.readInbound(as: Frame.self) {
            frames.append(frame)
        }
        return frames
    }

    @Test("frames written through the encoder come back through the decoder")
    func encoderToDecoder() throws {
        let channel = try Self.makeChannel()
        var wire = ByteBufferAllocator().buffer(capacity: 0)
        for frame in Fixtures.frames {
            try channel.writeOutbound(frame)
            var out = try #require(try channel.readOutbound(as: ByteBuffer.self))
            let length = try #require(out.getInteger(at: out.readerIndex, as: UInt32.self))
            #expect(Int(length) == out.readableBytes - 4)
            #expect(Array(out.readableBytesView.dropFirst(4)) == (try FrameCoding.encode(frame)))
            wire.writeBuffer(&out)
        }
        // Everything in one write: the decoder must split it back into frames.
        try channel.writeInbound(wire)
        #expect(try Self.readAllInbound(channel) == Fixtures.frames)
        #expect(try channel.finish().isClean)
    }

    @Test("a stream fed one byte at a time yields each frame when its last byte arrives")
    func byteByByte() throws {
        let channel = try Self.makeChannel()
        let frames = Array(Fixtures.frames.prefix(6)) + Fixtures.sparseFrames.prefix(4)
        var wire: [UInt8] = []
        var frameEnds: Set<Int> = []
        for frame in frames {
            wire += PB.framed(try FrameCoding.encode(frame))
            frameEnds.insert(wire.count)
        }
        var received: [Frame] = []
        for (index, byte) in wire.enumerated() {
            try channel.writeInbound(Self.buffer([byte]))
            let now = try Self.readAllInbound(channel)
            // A frame appears exactly when its last byte is written, never earlier.
            #expect(now.count == (frameEnds.contains(index + 1) ? 1 : 0))
            received += now
        }
        #expect(received == frames)
        #expect(try channel.finish().isClean)
    }

    @Test("a frame cut off by the connection closing is an error")
    func truncatedAtClose() throws {
        let channel = try Self.makeChannel()
        let body = try FrameCoding.encode(Fixtures.frames[1])
        let framed = PB.framed(body)
        try channel.writeInbound(Self.buffer(Array(framed.prefix(10))))
        #expect(try channel.readInbound(as: Frame.self) == nil)
        #expect(throws: WireError.truncatedFrame(expected: framed.count, received: 10)) {
            try channel.finish()
        }
    }

    @Test("a header cut off by the connection closing is an error")
    func truncatedHeaderAtClose() throws {
        let channel = try Self.makeChannel()
        try channel.writeInbound(Self.buffer([0, 0]))
        #expect(throws: WireError.truncatedFrame(expected: 4, received: 2)) {
            try channel.finish()
        }
    }

    @Test("complete frames before a cut-off one are still delivered")
    func completeFramesBeforeTruncation() throws {
        let channel = try Self.makeChannel()
        let first = Frame(streamID: 1, kind: .cancel)
        try channel.writeInbound(Self.buffer(PB.framed(try FrameCoding.encode(first)) + [0, 0, 0, 9, 1]))
        #expect(try channel.readInbound(as: Frame.self) == first)
        #expect(throws: WireError.truncatedFrame(expected: 13, received: 5)) {
            try channel.finish()
        }
    }

    @Test("a clean close after whole frames is not an error")
    func cleanClose() throws {
        let channel = try Self.makeChannel()
        try channel.writeInbound(Self.buffer(PB.framed(try FrameCoding.encode(Frame(streamID: 1, kind: .cancel)))))
        #expect(try channel.readInbound(as: Frame.self) == Frame(streamID: 1, kind: .cancel))
        #expect(try channel.finish().isClean)
    }

    @Test("an oversize length is refused as soon as the 4 header bytes arrive")
    func oversizeHeader() throws {
        let channel = try Self.makeChannel(maxFrameBytes: 1024)
        // Three header bytes: nothing to judge yet.
        try channel.writeInbound(Self.buffer([0x00, 0x00, 0x04]))
        // The fourth makes the length 1025: refused, with no body byte sent.
        #expect(throws: WireError.frameTooLarge(length: 1025, max: 1024)) {
            try channel.writeInbound(Self.buffer([0x01]))
        }
        _ = try? channel.finish()
    }

    @Test("the largest length refused from the header is reported exactly")
    func maximumLengthHeader() throws {
        let channel = try Self.makeChannel()
        #expect(throws: WireError.frameTooLarge(length: Int(UInt32.max), max: 4 * 1024 * 1024)) {
            try channel.writeInbound(Self.buffer([0xFF, 0xFF, 0xFF, 0xFF]))
        }
        _ = try? channel.finish()
    }

    @Test("a frame exactly at the limit is accepted")
    func frameAtLimit() throws {
        let frame = Frame(streamID: 1, kind: .message(.worker(.result(taskID: 1, result: Array(repeating: 7, count: 200), usage: nil))))
        let body = try FrameCoding.encode(frame)
        let channel = try Self.makeChannel(maxFrameBytes: body.count)
        try channel.writeInbound(Self.buffer(PB.framed(body)))
        #expect(try channel.readInbound(as: Frame.self) == frame)
        #expect(try channel.finish().isClean)
    }

    @Test("a zero-length frame carries no kind: it decodes as unknown, and the channel goes on")
    func zeroLengthFrame() throws {
        let channel = try Self.makeChannel()
        try channel.writeInbound(Self.buffer([0, 0, 0, 0] + PB.framed(PB.uint(1, 3) + PB.bytes(5, []))))
        #expect(try channel.readInbound(as: Frame.self) == Frame(streamID: 0, kind: .unknown))
        #expect(try channel.readInbound(as: Frame.self) == Frame(streamID: 3, kind: .cancel))
        #expect(try channel.finish().isClean)
    }

    @Test("a request naming no call decodes as an unknown call")
    func bodyWithoutOneof() throws {
        let channel = try Self.makeChannel()
        // Frame{stream_id=7, request{}}: valid protobuf; the daemon answers UNIMPLEMENTED on stream 7.
        try channel.writeInbound(Self.buffer(PB.framed(PB.uint(1, 7) + PB.bytes(2, []))))
        #expect(try channel.readInbound(as: Frame.self) == Frame(streamID: 7, kind: .request(.unknown)))
        #expect(try channel.finish().isClean)
    }

    @Test("invalid UTF-8 inside a framed body is malformed")
    func invalidUTF8InChannel() throws {
        let channel = try Self.makeChannel()
        let body = PB.uint(1, 1) + PB.bytes(2, PB.bytes(3, PB.bytes(1, PB.uint(1, 9)) + PB.bytes(2, PB.bytes(1, [0x66, 0x80]))))
        #expect(throws: WireError.malformedFrame("invalid UTF-8 in TaskSpec.custom_id")) {
            try channel.writeInbound(Self.buffer(PB.framed(body)))
        }
        _ = try? channel.finish()
    }

    @Test("the encoder refuses a frame larger than its limit")
    func encoderLimit() throws {
        let channel = EmbeddedChannel()
        try channel.pipeline.syncOperations.addHandler(MessageToByteHandler(FrameEncoder(maxFrameBytes: 100)))
        let frame = Frame(streamID: 1, kind: .message(.worker(.result(taskID: 1, result: Array(repeating: 1, count: 200), usage: nil))))
        let size = try FrameCoding.encode(frame).count
        #expect(throws: WireError.frameTooLarge(length: size, max: 100)) {
            try channel.writeOutbound(frame)
        }
        _ = try? channel.finish()

        var buffer = ByteBufferAllocator().buffer(capacity: 0)
        #expect(throws: WireError.frameTooLarge(length: size, max: 100)) {
            try FrameCoding.encodeFramed(frame, into: &buffer, maxFrameBytes: 100)
        }
        #expect(buffer.readableBytes == 0)
    }

    @Test("removing the decoder with a partial frame buffered is not an error")
    func partialFrameOnRemoval() throws {
        let channel = EmbeddedChannel()
        let decoder = ByteToMessageHandler(FrameDecoder())
        try channel.pipeline.syncOperations.addHandler(decoder)
        try channel.writeInbound(Self.buffer([0, 0, 0, 9, 1, 2]))
        let removed = channel.pipeline.syncOperations.removeHandler(decoder)
        channel.embeddedEventLoop.run()
        try removed.wait()
        #expect(try channel.readInbound(as: Frame.self) == nil)
        #expect(try channel.finish().isClean)
    }
}
