import FanoutClient
import FanoutWire
import Foundation
import Testing

/// Bytes no well-behaved client sends, written on a raw socket: the daemon
/// answers on stream 0 (or on the offending stream), closes only that
/// connection, and keeps serving everyone else.
@Suite struct HostileInputTests {
    /// Runs `attack` on a raw connection while a normal client connected
    /// before it keeps working, then checks a client connected after works too.
    private func withBystanders(_ attack: @escaping @Sendable (TestDaemon) async throws -> Void) async throws {
        try await withTestDaemon { daemon in
            try await withClient(daemon.socketPath, name: "before") { before in
                try await withDeadline(.seconds(20)) {
                    try await expectClientWorks(before)
                    try await attack(daemon)
                    try await expectClientWorks(before)
                    try await withClient(daemon.socketPath, name: "after") { after in
                        try await expectClientWorks(after)
                    }
                    let info = try await before.serverInfo()
                    #expect(info.connections >= 1)
                }
            }
        }
    }

    /// Sends `bytes` on a fresh raw connection; expects one EndOfStream on
    /// stream 0, then the daemon closing the connection. Returns its status.
    private func connectionLevelRefusal(_ daemon: TestDaemon, sending bytes: [UInt8],
                                        handshake: Bool = false) async throws -> WireStatus? {
        try await withRawSession(daemon.socketPath) { raw in
            if handshake { try await raw.handshake() }
            try await raw.send(bytes)
            let frames = try await raw.readUntilClosed()
            #expect(raw.closedByPeer)
            #expect(frames.count == 1, "one EndOfStream, then close: \(frames)")
            let frame = try #require(frames.first)
            #expect(frame.streamID == 0)
            let status = endStatus(frame)
            #expect(status != nil, "expected EndOfStream, got \(frame)")
            return status
        }
    }

    // MARK: 4a. Garbage

    @Test func undecodableBodyGetsInvalidArgumentAndClose() async throws {
        try await withBystanders { daemon in
            // A sane length, then bytes that are no protobuf: a varint tag that never ends.
            let status = try await connectionLevelRefusal(daemon, sending: framed(body: [UInt8](repeating: 0xff, count: 16)))
            #expect(status?.code == .invalidArgument, "\(String(describing: status))")
            #expect(status?.message.isEmpty == false)

            // The same after a proper handshake.
            let later = try await connectionLevelRefusal(daemon, sending: framed(body: [0x0a, 0x7f, 0x01]), handshake: true)
            #expect(later?.code == .invalidArgument, "\(String(describing: later))")
        }
    }

    @Test func randomBytesGetAnErrorOnStreamZeroAndClose() async throws {
        try await withBystanders { daemon in
            var generator = SplitMix64(seed: 0xF0_0D_CA_FE)
            for round in 0..<5 {
                var bytes = (0..<512).map { _ in UInt8.random(in: 0...255, using: &generator) }
                if round % 2 == 0 {
                    // Random from the first byte: the "length" is anything up to 4 GiB.
                    bytes[0] = max(bytes[0], 1)
                } else {
                    // Random body behind a matching length, so the daemon has to decode it.
                    bytes = framed(body: bytes)
                }
                let status = try await connectionLevelRefusal(daemon, sending: bytes)
                let code = try #require(status?.code)
                #expect([.invalidArgument, .resourceExhausted, .failedPrecondition].contains(code), "round \(round): \(String(describing: status))")
            }
        }
    }

    // MARK: 4b. Oversized header

    @Test func oversizedLengthIsRefusedFromTheHeaderAlone() async throws {
        try await withBystanders { daemon in
            // Only the 4 header bytes: the answer must come without the body.
            let status = try await connectionLevelRefusal(daemon, sending: [0x7f, 0xff, 0xff, 0xff])
            #expect(status?.code == .resourceExhausted, "\(String(describing: status))")
            #expect(status?.message.contains("\(0x7fff_ffff)") == true, "\(String(describing: status))")

            // Just above the announced limit, after the handshake.
            let limit = UInt32(4 * 1024 * 1024)
            let over = limit + 1
            let header = [UInt8(over >> 24), UInt8((over >> 16) & 0xff), UInt8((over >> 8) & 0xff), UInt8(over & 0xff)]
            let after = try await connectionLevelRefusal(daemon, sending: header, handshake: true)
            #expect(after?.code == .resourceExhausted, "\(String(describing: after))")
        }
    }

    // MARK: 4c/4d. Handshake

    @Test func firstFrameMustBeHello() async throws {
        try await withBystanders { daemon in
            let info = try await connectionLevelRefusal(daemon, sending: framed(Frame(streamID: 1, kind: .request(.serverInfo))))
            #expect(info?.code == .failedPrecondition, "\(String(describing: info))")
            #expect(info?.message.contains("Hello") == true, "\(String(describing: info))")

            // Hello, but not on stream 0.
            let hello = try await connectionLevelRefusal(
                daemon, sending: framed(Frame(streamID: 1, kind: .request(.hello(Hello(clientName: "x"))))))
            #expect(hello?.code == .failedPrecondition, "\(String(describing: hello))")

            // A Cancel as the first frame.
            let cancel = try await connectionLevelRefusal(daemon, sending: framed(Frame(streamID: 0, kind: .cancel)))
            #expect(cancel?.code == .failedPrecondition, "\(String(describing: cancel))")
        }
    }

    @Test func unsupportedProtocolVersionIsRefused() async throws {
        try await withBystanders { daemon in
            let status = try await connectionLevelRefusal(
                daemon, sending: framed(Frame(streamID: 0, kind: .request(.hello(Hello(protocolVersion: 99, clientName: "future"))))))
            #expect(status?.code == .failedPrecondition, "\(String(describing: status))")
            #expect(status?.message.contains("99") == true, "\(String(describing: status))")
            #expect(status?.message.contains("version 1") == true, "names the supported version: \(String(describing: status))")
        }
    }

    // MARK: 5. Stream ids

    @Test func badStreamIDsAreRefusedOnThatStreamOnly() async throws {
        try await withBystanders { daemon in
            try await withRawSession(daemon.socketPath) { raw in
                try await raw.handshake()

                /// Sends a request and reads frames until the one that ends `id`.
                func call(_ id: UInt32, _ request: Request) async throws -> Frame {
                    try await raw.send(Frame(streamID: id, kind: .request(request)))
                    while let (frame, _) = try await raw.readFrame() {
                        if frame.streamID == 0 { Issue.record("connection-level frame \(frame)") }
                        guard frame.streamID == id else { continue }
                        switch frame.kind {
                        case .response, .end: return frame
                        default: continue
                        }
                    }
                    throw RawSessionError.unexpected("connection closed while waiting for stream \(id)")
                }
                func expectWorks(_ id: UInt32, sourceLocation: SourceLocation = #_sourceLocation) async throws {
                    let frame = try await call(id, .serverInfo)
                    guard case .response(.serverInfo) = frame.kind else {
                        Issue.record("stream \(id): expected ServerInfo, got \(frame)", sourceLocation: sourceLocation)
                        return
                    }
                }
                func expectRefused(_ id: UInt32, _ request: Request = .serverInfo,
                                   sourceLocation: SourceLocation = #_sourceLocation) async throws {
                    let frame = try await call(id, request)
                    let status = endStatus(frame)
                    #expect(status?.code == .invalidArgument, "stream \(id): \(frame)", sourceLocation: sourceLocation)
                    #expect(status?.message.contains("\(id)") == true, "stream \(id): \(frame)", sourceLocation: sourceLocation)
                }

                try await expectRefused(2)              // even
                try await expectWorks(1)
                try await expectWorks(5)                // gaps are fine
                try await expectRefused(3)              // smaller than 5
                try await expectRefused(5)              // reused
                try await expectRefused(8)              // even and larger
                try await expectWorks(7)                // 8 was refused: 7 is still larger than the last used id
                try await expectRefused(7, .getBatch(batchID: 1))
                try await expectWorks(0x7fff_ffff)      // large odd ids are fine

                // After all that, the connection still enqueues.
                let enqueue = try await call(0x7fff_ffff + 2, .enqueueTask(EnqueueTaskRequest(
                    ownerID: "raw", task: TaskSpec(customID: "t", agent: "echo", payload: Array("hi".utf8)))))
                guard case .response(.enqueueTask(let task)) = enqueue.kind else {
                    Issue.record("expected EnqueueTask response, got \(enqueue)")
                    return
                }
                #expect(task.customID == "t")
            }
        }
    }

    // MARK: Stream control and limits

    @Test func cancelFrameEndsASubscriptionWithCancelled() async throws {
        try await withBystanders { daemon in
            try await withRawSession(daemon.socketPath) { raw in
                try await raw.handshake()
                // A Cancel for a stream that never existed is ignored.
                try await raw.send(Frame(streamID: 99, kind: .cancel))
                try await raw.send(Frame(streamID: 1, kind: .request(.subscribe(SubscribeRequest(ownerID: "nobody", follow: true)))))
                try await raw.send(Frame(streamID: 1, kind: .cancel))
                let (frame, _) = try #require(try await raw.readFrame())
                #expect(frame.streamID == 1)
                #expect(endStatus(frame)?.code == .cancelled, "\(frame)")
                // A late Cancel for the finished stream is ignored too; the connection serves on.
                try await raw.send(Frame(streamID: 1, kind: .cancel))
                try await raw.send(Frame(streamID: 3, kind: .request(.serverInfo)))
                let (reply, _) = try #require(try await raw.readFrame())
                #expect(reply.streamID == 3)
                guard case .response(.serverInfo) = reply.kind else {
                    Issue.record("expected ServerInfo, got \(reply)")
                    return
                }
            }
        }
    }

    @Test func streamsPerConnectionLimitRefusesOnlyTheExtraStream() async throws {
        try await withTestDaemon(configure: { $0.maxStreamsPerConnection = 3 }) { daemon in
            try await withDeadline(.seconds(20)) {
                try await withRawSession(daemon.socketPath) { raw in
                    try await raw.handshake()
                    for id: UInt32 in [1, 3, 5] {
                        try await raw.send(Frame(streamID: id, kind: .request(.subscribe(SubscribeRequest(ownerID: "o\(id)", follow: true)))))
                    }
                    try await raw.send(Frame(streamID: 7, kind: .request(.serverInfo)))
                    let (refused, _) = try #require(try await raw.readFrame())
                    #expect(refused.streamID == 7)
                    #expect(endStatus(refused)?.code == .resourceExhausted, "\(refused)")
                    #expect(endStatus(refused)?.message.contains("max_streams_per_connection") == true, "\(refused)")
                    // Closing one stream makes room again.
                    try await raw.send(Frame(streamID: 1, kind: .cancel))
                    let (cancelled, _) = try #require(try await raw.readFrame())
                    #expect(cancelled.streamID == 1 && endStatus(cancelled)?.code == .cancelled, "\(cancelled)")
                    try await raw.send(Frame(streamID: 9, kind: .request(.serverInfo)))
                    let (reply, _) = try #require(try await raw.readFrame())
                    #expect(reply.streamID == 9)
                    guard case .response(.serverInfo) = reply.kind else {
                        Issue.record("expected ServerInfo, got \(reply)")
                        return
                    }
                }
            }
        }
    }

    @Test func connectionLimitRefusesTheExtraConnectionOnStreamZero() async throws {
        try await withTestDaemon(configure: { $0.maxConnections = 2 }) { daemon in
            try await withDeadline(.seconds(20)) {
                try await withClient(daemon.socketPath, name: "one") { one in
                    try await withClient(daemon.socketPath, name: "two") { two in
                        let refused = await caughtClientError { _ = try await FanoutClient.connect(socketPath: daemon.socketPath) }
                        #expect(refused?.code == .resourceExhausted, "\(String(describing: refused))")
                        #expect(refused?.message.contains("max_connections") == true, "\(String(describing: refused))")
                        try await expectClientWorks(one)
                        try await expectClientWorks(two)
                    }
                    // A place is free again once a client leaves.
                    var admitted: FanoutClient?
                    for _ in 0..<100 where admitted == nil {
                        admitted = try? await FanoutClient.connect(socketPath: daemon.socketPath)
                        if admitted == nil { try await Task.sleep(for: .milliseconds(20)) }
                    }
                    let three = try #require(admitted)
                    try await expectClientWorks(three)
                    await three.close()
                }
            }
        }
    }
}

