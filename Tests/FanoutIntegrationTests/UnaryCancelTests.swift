import FanoutClient
import Foundation
import Synchronization
import Testing

@Suite struct UnaryCancelTests {
    /// A Cancel right behind a unary call: the call completes (the batch exists),
    /// so its answer must still arrive rather than the stream going silent.
    @Test func cancelledUnaryCallStillGetsItsFinalFrame() async throws {
        try await withTestDaemon { daemon in
            try await withDeadline(.seconds(20)) {
                try await withRawSession(daemon.socketPath) { raw in
                    try await raw.handshake()
                    let request = EnqueueBatchRequest(ownerID: "o", agent: "echo", tasks: [TaskSpec(customID: "a", payload: Array("x".utf8))])
                    var bytes = try framed(Frame(streamID: 1, kind: .request(.enqueueBatch(request))))
                    bytes += try framed(Frame(streamID: 1, kind: .cancel))
                    try await raw.send(bytes)
                    var final: Frame?
                    while let (frame, _) = try await raw.readFrame() {
                        if frame.streamID == 1 {
                            final = frame
                            break
                        }
                    }
                    let frame = try #require(final, "stream 1 got no Response and no EndOfStream")
                    switch frame.kind {
                    case .response(.enqueueBatch(let batch)): #expect(batch.counts.total == 1)
                    case .end(let status): #expect(status.code == .cancelled)
                    default: Issue.record("unexpected frame \(frame)")
                    }
                }
            }
        }
    }
}

@Suite struct ClientCancellationTests {
    /// A chunked enqueue the caller cancels is dropped on the daemon too: its
    /// stream closes (here the only one allowed) and nothing is committed.
    @Test func cancelledChunkedEnqueueReleasesItsStreamAndCommitsNothing() async throws {
        try await withTestDaemon(configure: {
            $0.maxFrameBytes = 16 * 1024
            $0.maxStreamsPerConnection = 1
        }) { daemon in
            // Which step a run that ran out of time was at.
            let step = StepNote("connecting")
            do {
                try await withDeadline(.seconds(100)) {
                    try await Self.cancelAnUpload(on: daemon, step: step)
                }
            } catch {
                Issue.record("stopped while \(step.current)")
                throw error
            }
        }
    }

    private static func cancelAnUpload(on daemon: TestDaemon, step: StepNote) async throws {
        let client = try await daemon.client()
        step.now("uploading")
        // About 20 MB in 16 KiB frames: thousands of chunks, so the cancel lands mid-upload.
        let tasks = (0..<20_000).map { TaskSpec(customID: "t\($0)", payload: [UInt8](repeating: 65, count: 1_000)) }
        let upload = Task { try await client.enqueueBatch(ownerID: "o", agent: "echo", tasks: tasks) }
        try await Task.sleep(for: .milliseconds(100))
        upload.cancel()
        step.now("waiting for the cancelled upload to end")
        let outcome = await upload.result
        if case .success = outcome {
            Issue.record("the upload finished before it could be cancelled; nothing to check")
            return
        }
        // The stream is released: a call on the same connection gets through again.
        step.now("calling on the connection again")
        // The daemon reads the cancel only after the chunks sent before it (the socket's buffers hold
        // dozens), storing each, then drops the staged rows: on this machine, loaded by the rest of the
        // suite, that has taken over 20 s, so the bound is on time, not on tries.
        var info: ServerInfo?
        let giveUp = ContinuousClock.now + .seconds(60)
        while info == nil && ContinuousClock.now < giveUp {
            info = try? await client.serverInfo()
            if info == nil { try await Task.sleep(for: .milliseconds(20)) }
        }
        #expect(info != nil, "the cancelled enqueue still holds the connection's only stream after 60 s")
        // All or nothing: a cancel that arrived after the last chunk may still see the batch committed.
        step.now("listing batches")
        let listed = try await client.batches(ownerID: "o").batches
        #expect(listed.isEmpty || (listed.count == 1 && listed[0].counts.total == 20_000), "\(listed)")
        // Nothing left behind either: the staged rows of the dropped batch are deleted, though the
        // task that wrote them was cancelled (GRDB does not start a cancelled task's writes).
        step.now("waiting for the staged rows to go")
        if listed.isEmpty {
            var firstTask = try await daemon.store.task(1, includePayload: false)
            for _ in 0..<250 where firstTask != nil {
                try await Task.sleep(for: .milliseconds(20))
                firstTask = try await daemon.store.task(1, includePayload: false)
            }
            #expect(firstTask == nil, "the dropped batch's first staged task is still stored")
        }
        step.now("closing the client")
        await client.close()
    }
}

/// What a test is doing now, for the message of one that ran out of time.
final class StepNote: Sendable {
    private let step: Mutex<String>

    init(_ first: String) { step = Mutex(first) }

    func now(_ name: String) { step.withLock { $0 = name } }

    var current: String { step.withLock { $0 } }
}
