import FanoutClient
import FanoutScheduler
import FanoutServer
import FanoutStore
import FanoutWire
import Foundation
import Testing

/// The daemon does what PROTOCOL.md says for frames a careless or newer
/// client sends, and one bad frame costs one stream, not the connection.
@Suite struct ProtocolConformanceTests {
    @Test("an unknown frame kind is ignored and an unknown call gets UNIMPLEMENTED; the connection goes on")
    func unknownKindsAndCalls() async throws {
        try await withTestDaemon { daemon in
            try await withRawSession(daemon.socketPath) { session in
                try await session.handshake()
                // Frame{stream_id: 3, field 99}: a kind from a newer schema.
                try await session.send(framed(body: PB.uint(1, 3) + PB.bytes(99, PB.uint(1, 1))))
                // Frame{stream_id: 5, request{field 99}}: a call from a newer schema.
                try await session.send(framed(body: PB.uint(1, 5) + PB.bytes(2, PB.bytes(99, PB.uint(1, 1)))))
                // Frame{stream_id: 7, message{field 99}}: a body from a newer schema, on no open stream.
                try await session.send(framed(body: PB.uint(1, 7) + PB.bytes(4, PB.bytes(99, []))))
                try await session.send(Frame(streamID: 9, kind: .request(.serverInfo)))
                var statuses: [UInt32: WireStatus] = [:]
                var answered = false
                while !answered, let (frame, _) = try await session.readFrame() {
                    if let status = endStatus(frame) { statuses[frame.streamID] = status }
                    if frame.streamID == 9, case .response(.serverInfo) = frame.kind { answered = true }
                }
                #expect(answered, "ServerInfo after the unknown frames was not answered")
                #expect(statuses[5]?.code == .unimplemented, "\(statuses)")
                #expect(statuses[3] == nil && statuses[7] == nil && statuses[0] == nil, "\(statuses)")
            }
        }
    }

    @Test("an empty first frame gets FAILED_PRECONDITION")
    func emptyFirstFrame() async throws {
        try await withTestDaemon { daemon in
            try await withRawSession(daemon.socketPath) { session in
                try await session.send(framed(body: []))
                let frames = try await session.readUntilClosed()
                #expect(frames.first.flatMap(endStatus)?.code == .failedPrecondition, "\(frames)")
            }
        }
    }

    @Test("a Request reusing an open stream id ends the connection instead of giving that stream two final frames")
    func reusedOpenStreamID() async throws {
        try await withTestDaemon { daemon in
            try await withRawSession(daemon.socketPath) { session in
                try await session.handshake()
                let follow = SubscribeRequest(ownerID: "o", follow: true)
                try await session.send(Frame(streamID: 1, kind: .request(.subscribe(follow))))
                try await session.send(Frame(streamID: 1, kind: .request(.serverInfo)))
                let frames = try await session.readUntilClosed()
                let finals = frames.filter { $0.streamID == 1 && endStatus($0) != nil }
                #expect(finals.count <= 1, "stream 1 got \(finals.count) final frames: \(frames)")
                let closing = frames.first { $0.streamID == 0 }.flatMap(endStatus)
                #expect(closing?.code == .invalidArgument, "\(frames)")
                #expect(closing?.message.contains("stream 1") == true, "\(String(describing: closing))")
            }
        }
    }

    @Test("a connection that never says Hello is closed after the handshake timeout, with a status")
    func handshakeTimeout() async throws {
        // Long enough for a loaded machine to say Hello in time in the second part.
        try await withTestDaemon(configure: { $0.handshakeTimeoutMs = 1_000 }) { daemon in
            let started = ContinuousClock.now
            try await withRawSession(daemon.socketPath) { session in
                let frames = try await session.readUntilClosed()
                #expect(frames.first.flatMap(endStatus)?.code == .deadlineExceeded, "\(frames)")
            }
            #expect(ContinuousClock.now - started < .seconds(5))
            // A connection that did say Hello in time is not affected.
            try await withClient(daemon.socketPath) { client in
                try await Task.sleep(for: .milliseconds(1_300))
                try await expectClientWorks(client)
            }
        }
    }

    @Test("a custom_id holding NUL is refused with INVALID_ARGUMENT by the client, and the client keeps working")
    func nulStringOnTheClient() async throws {
        try await withTestDaemon { daemon in
            try await withClient(daemon.socketPath) { client in
                let error = await caughtClientError {
                    _ = try await client.enqueueBatch(ownerID: "o", agent: "echo", tasks: [
                        TaskSpec(customID: "id\u{0}one", payload: []), TaskSpec(customID: "id\u{0}two", payload: []),
                    ])
                }
                #expect(error?.code == .invalidArgument, "\(String(describing: error))")
                #expect(error?.message.contains("NUL") == true, "\(String(describing: error))")
                let metadata = await caughtClientError {
                    _ = try await client.enqueueBatch(ownerID: "o", agent: "echo", tasks: [TaskSpec(customID: "a", payload: [])],
                                                      metadata: ["k": "v\u{0}"])
                }
                #expect(metadata?.code == .invalidArgument)
                try await expectClientWorks(client)
            }
        }
    }

    @Test("a custom_id holding NUL sent by hand is refused on its stream; the connection goes on")
    func nulStringOnTheWire() async throws {
        try await withTestDaemon { daemon in
            try await withRawSession(daemon.socketPath) { session in
                try await session.handshake()
                let request = EnqueueBatchRequest(ownerID: "o", agent: "echo", tasks: [
                    TaskSpec(customID: "id\(NulMarker.text)one", payload: []), TaskSpec(customID: "id\(NulMarker.text)two", payload: []),
                ])
                try await session.send(FuzzedRequest.patch(framed(Frame(streamID: 1, kind: .request(.enqueueBatch(request))))))
                try await session.send(Frame(streamID: 3, kind: .request(.serverInfo)))
                let (status, answered) = try await session.finalStatus(of: 1, awaitingServerInfo: true)
                #expect(status?.code == .invalidArgument, "\(String(describing: status))")
                #expect(status?.message.contains("custom_id") == true, "\(String(describing: status))")
                #expect(answered)
            }
            // Nothing was stored under the cut ids.
            try await withClient(daemon.socketPath) { client in
                let page = try await client.batches()
                #expect(page.batches.isEmpty)
            }
        }
    }

    @Test("a NUL in a later chunk of a chunked EnqueueBatch ends that enqueue with INVALID_ARGUMENT; nothing is stored, the connection goes on")
    func nulInAChunk() async throws {
        try await withTestDaemon { daemon in
            try await withRawSession(daemon.socketPath) { session in
                try await session.handshake()
                let first = EnqueueBatchRequest(ownerID: "o", agent: "echo", tasks: [TaskSpec(customID: "a", payload: [])], more: true)
                try await session.send(Frame(streamID: 1, kind: .request(.enqueueBatch(first))))
                let chunk = BatchChunk(tasks: [TaskSpec(customID: "b\(NulMarker.text)", payload: [])], more: false)
                try await session.send(FuzzedRequest.patch(framed(Frame(streamID: 1, kind: .message(.batchChunk(chunk))))))
                try await session.send(Frame(streamID: 3, kind: .request(.serverInfo)))
                let (status, answered) = try await session.finalStatus(of: 1, awaitingServerInfo: true)
                #expect(status?.code == .invalidArgument, "\(String(describing: status))")
                #expect(answered)
            }
            try await withClient(daemon.socketPath) { client in
                let page = try await client.batches()
                #expect(page.batches.isEmpty)
            }
        }
    }

    @Test("an error whose message would echo a huge client string still ends its stream")
    func hugeStringsInErrors() async throws {
        try await withTestDaemon { daemon in
            try await withRawSession(daemon.socketPath) { session in
                try await session.handshake()
                let agent = String(repeating: "a", count: 3 << 20)
                let request = EnqueueBatchRequest(ownerID: "o", agent: agent, tasks: [TaskSpec(customID: "x", payload: [])])
                try await session.send(Frame(streamID: 1, kind: .request(.enqueueBatch(request))))
                let (status, _) = try await session.finalStatus(of: 1, awaitingServerInfo: false)
                #expect(status?.code == .invalidArgument)
                #expect((status?.message.utf8.count ?? .max) < 10_000)
            }
        }
    }

    @Test("an answer larger than a frame ends its own stream with RESOURCE_EXHAUSTED; the connection goes on")
    func oversizeAnswer() async throws {
        let payloadBytes = 1 << 20
        try await withTestDaemon(configure: { $0.maxFrameBytes = payloadBytes * 3 / 2 }) { daemon in
            try await withClient(daemon.socketPath) { client in
                let payload = [UInt8](repeating: UInt8(ascii: "a"), count: payloadBytes)
                let batch = try await client.enqueueBatch(ownerID: "o", agent: "echo", tasks: [TaskSpec(customID: "big", payload: payload)])
                _ = try await events(of: batch.id, owner: "o", on: client, since: 0)
                let task = try #require(try await client.results(batchID: batch.id).first { _ in true })
                // The payload and its echoed result together exceed the frame limit.
                let error = await caughtClientError { _ = try await client.task(task.taskID, includePayload: true) }
                #expect(error?.code == .resourceExhausted, "\(String(describing: error))")
                let small = try await client.task(task.taskID)
                #expect(small.result.count == payloadBytes)
                try await expectClientWorks(client)
            }
        }
    }

    @Test("a subscriber that stops reading is cut off by the daemon with lagged and its last sequence; nobody else waits")
    func unreadSubscriptionIsCutOff() async throws {
        try await withTestDaemon(configure: { $0.subscriberBuffer = 64 }) { daemon in
            try await withRawSession(daemon.socketPath) { session in
                try await session.handshake()
                try await session.send(Frame(streamID: 1, kind: .request(.subscribe(SubscribeRequest(ownerID: "lag", follow: true)))))
                try await Task.sleep(for: .milliseconds(100))
                // Far more events (60,000, some 6 MB) than the socket's and NIO's buffers hold while this
                // session reads nothing.
                let batch = try await withClient(daemon.socketPath) { client in
                    let batch = try await client.enqueueBatch(ownerID: "lag", agent: "echo",
                                                              tasks: (0..<20_000).map { TaskSpec(customID: "t\($0)", payload: [120]) })
                    // Another client's calls are answered meanwhile, and the batch runs to its end.
                    while try await client.batch(batch.id).status != .completed {
                        try await Task.sleep(for: .milliseconds(20))
                    }
                    return batch
                }
                var delivered: [UInt64] = []
                var final: WireStatus?
                let readingEnds = ContinuousClock.now + .seconds(60)
                while final == nil, ContinuousClock.now < readingEnds, let (frame, _) = try await session.readFrame() {
                    guard frame.streamID == 1 else { continue }
                    if case .message(.event(let event)) = frame.kind { delivered.append(event.sequence) }
                    final = endStatus(frame)
                }
                let status = try #require(final)
                #expect(status.code == .resourceExhausted)
                #expect(status.lagged)
                #expect(status.lastSequence == delivered.last, "last delivered \(String(describing: delivered.last))")
                #expect(delivered == Array(delivered.first!...delivered.last!))
                // Resuming from there reaches the end without a gap.
                try await withClient(daemon.socketPath) { client in
                    var next = status.lastSequence + 1
                    for try await event in client.subscribe(ownerID: "lag", since: status.lastSequence, follow: false) {
                        #expect(event.sequence == next)
                        next += 1
                    }
                    let info = try await client.batch(batch.id)
                    #expect(info.status == .completed)
                }
            }
        }
    }
}

@Suite struct ServerLifecycleTests {
    @Test("waitUntilListening returns when run() fails before binding")
    func waitUntilListeningAfterAFailedRun() async throws {
        try await withTemporaryDirectory { directory in
            let store = try SQLiteStore(path: directory + "/fanout.db")
            let scheduler = try Scheduler(store: store, configuration: SchedulerConfiguration(agents: []), runners: [:])
            let server = FanoutServer(configuration: ServerConfiguration(socketPath: directory + "/missing/d.sock"), scheduler: scheduler)
            let run = Task { try await server.run() }
            try await withDeadline(.seconds(5), "waitUntilListening") { await server.waitUntilListening() }
            await #expect(throws: (any Error).self) { try await run.value }
            await scheduler.shutdown()
        }
    }
}

@Suite struct ClientLifetimeTests {
    /// Until the daemon counts `observer`'s connection alone (the other one closed).
    static func waitUntilOnlyConnection(_ observer: FanoutClient) async throws {
        try await withDeadline(.seconds(10), "the other connection to close") {
            while try await observer.serverInfo().connections != 1 {
                try await Task.sleep(for: .milliseconds(20))
            }
        }
    }

    @Test("a FanoutClient dropped without close() closes its socket")
    func droppedClientClosesItsSocket() async throws {
        try await withTestDaemon { daemon in
            try await withClient(daemon.socketPath) { observer in
                func dropOne() async throws {
                    let dropped = try await FanoutClient.connect(socketPath: daemon.socketPath)
                    _ = try await dropped.serverInfo()
                }
                try await dropOne()
                try await Self.waitUntilOnlyConnection(observer)
            }
        }
    }

    @Test("withFanoutClient closes the client when its body throws")
    func scopedClientCloses() async throws {
        struct Expected: Error {}
        try await withTestDaemon { daemon in
            await #expect(throws: Expected.self) {
                try await withFanoutClient(socketPath: daemon.socketPath) { client in
                    _ = try await client.serverInfo()
                    throw Expected()
                }
            }
            try await withClient(daemon.socketPath) { observer in try await Self.waitUntilOnlyConnection(observer) }
        }
    }
}

@Suite struct SwiftTypedTaskSpecTests {
    @Test("TaskSpec in Swift types: nil for defaults, Duration for the timeout, checked")
    func swiftTypes() throws {
        let spec = try TaskSpec(customID: "a", payload: [1], maxAttempts: 3, timeout: .seconds(2.5))
        #expect(spec.maxAttempts == 3 && spec.timeoutMs == 2_500 && spec.agent == "")
        #expect(spec.timeout == .milliseconds(2_500))
        let defaults = try TaskSpec(customID: "b", payload: [], maxAttempts: nil, timeout: nil)
        #expect(defaults.maxAttempts == 0 && defaults.timeoutMs == 0 && defaults.timeout == nil)
        #expect(throws: FanoutClientError.self) { try TaskSpec(customID: "c", payload: [], maxAttempts: 0, timeout: nil) }
        #expect(throws: FanoutClientError.self) { try TaskSpec(customID: "d", payload: [], maxAttempts: nil, timeout: .seconds(-1)) }
    }
}
