import FanoutWire
import NIOCore
import NIOEmbedded
import FanoutTestSupport
import Testing

/// Random input must give a `WireError` or a valid `Frame`, never a crash.
@Suite("FrameCoding with random input")
struct FuzzTests {
    @Test("random bodies decode to a frame or a malformed-frame error")
    func randomBodies() {
        var generator = SplitMix64(seed: 0x5EED_F00D)
        var decoded = 0
        var malformed = 0
        for _ in 0..<2000 {
            let count = Int.random(in: 0...96, using: &generator)
            let bytes = (0..<count).map { _ in UInt8.random(in: 0...255, using: &generator) }
            do {
                let frame = try FrameCoding.decode(bytes)
                decoded += 1
                checkStable(frame)
            } catch {
                // The typed throw already guarantees a WireError; random bodies
                // can only be malformed (size and truncation are framing errors).
                guard case .malformedFrame = error else {
                    Issue.record("unexpected error \(error) for \(bytes)")
                    continue
                }
                malformed += 1
            }
        }
        #expect(decoded + malformed == 2000)
        #expect(malformed > 0)
    }

    @Test("valid frames with random bytes changed decode to a frame or a malformed-frame error")
    func mutatedFrames() throws {
        var generator = SplitMix64(seed: 42)
        let bodies = try Fixtures.frames.map { try FrameCoding.encode($0) }
        var outcomes = (frames: 0, errors: 0)
        for iteration in 0..<3000 {
            var bytes = bodies[iteration % bodies.count]
            let edits = Int.random(in: 1...4, using: &generator)
            for _ in 0..<edits {
                let index = Int.random(in: 0..<bytes.count, using: &generator)
                switch Int.random(in: 0..<3, using: &generator) {
                case 0: bytes[index] = UInt8.random(in: 0...255, using: &generator)
                case 1: bytes[index] ^= 1 << UInt8.random(in: 0..<8, using: &generator)
                default: bytes.removeSubrange(index...)  // cut short
                }
                if bytes.isEmpty { break }
            }
            do {
                let frame = try FrameCoding.decode(bytes)
                outcomes.frames += 1
                checkStable(frame)
            } catch {
                guard case .malformedFrame = error else {
                    Issue.record("unexpected error \(error)")
                    continue
                }
                outcomes.errors += 1
            }
        }
        #expect(outcomes.frames > 0)
        #expect(outcomes.errors > 0)
    }

    @Test("random byte streams through the channel give frames or WireErrors")
    func randomStreams() throws {
        var generator = SplitMix64(seed: 7)
        let validBodies = try Fixtures.frames.map { try FrameCoding.encode($0) }
        for _ in 0..<300 {
            let channel = EmbeddedChannel()
            try channel.pipeline.syncOperations.addHandler(ByteToMessageHandler(FrameDecoder(maxFrameBytes: 512)))
            // Mix real frames with random ones so the decoder gets past the
            // first header often enough to exercise bodies.
            var stream: [UInt8] = []
            for _ in 0..<Int.random(in: 1...4, using: &generator) {
                if Bool.random(using: &generator) {
                    stream += PB.framed(validBodies.randomElement(using: &generator)!)
                } else {
                    let count = Int.random(in: 0...40, using: &generator)
                    let body = (0..<count).map { _ in UInt8.random(in: 0...255, using: &generator) }
                    let header = Bool.random(using: &generator) ? PB.header(UInt32(count)) : PB.header(UInt32.random(in: 0...UInt32.max, using: &generator))
                    stream += header + body
                }
            }
            var failure: (any Error)?
            do {
                // Random split points, so headers and bodies straddle writes.
                var rest = stream[...]
                while !rest.isEmpty {
                    let piece = rest.prefix(Int.random(in: 1...16, using: &generator))
                    rest = rest.dropFirst(piece.count)
                    try channel.writeInbound(ByteBuffer(bytes: piece))
                }
                _ = try channel.finish()
            } catch {
                failure = error
                _ = try? channel.finish()
            }
            while let frame = try? channel.readInbound(as: Frame.self) {
                checkStable(frame)
            }
            if let failure {
                #expect(failure is WireError, "unexpected error \(failure)")
            }
        }
    }
}

/// A decoded frame must encode again, and that encoding must be a fixed
/// point (bytes compared, so a NaN progress does not spoil the check).
private func checkStable(_ frame: Frame) {
    // Unknown and rejected parts are what a receiver ignores or refuses; they are never sent.
    guard !String(describing: frame).contains("unknown"), !String(describing: frame).contains("rejected") else { return }
    do {
        let once = try FrameCoding.encode(frame)
        let twice = try FrameCoding.encode(FrameCoding.decode(once))
        #expect(once == twice)
    } catch {
        Issue.record("a decoded frame did not survive re-encoding: \(error)")
    }
}
