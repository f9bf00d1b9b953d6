import FanoutClient
import Foundation
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
            try await withDeadline(.seconds(30)) {
                let client = try await daemon.client()
                // About 20 MB in 16 KiB frames: thousands of chunks, so the cancel lands mid-upload.
                let tasks = (0..<20_000).map { TaskSpec(customID: "t\($0)", payload: [UInt8](repeating: 65, count: 1_000)) }
                let upload = Task { try await client.enqueueBatch(ownerID: "o", agent: "echo", tasks: tasks) }
                try await Task.sleep(for: .milliseconds(100))
                upload.cancel()
                let outcome = await upload.result
                if case .success = outcome {
                    Issue.record("the upload finished before it could be cancelled; nothing to check")
                    return
                }
                // The stream is released: a call on the same connection gets through again.
                var info: ServerInfo?
                for _ in 0..<100 where info == nil {
                    info = try? await client.serverInfo()
                    if info == nil { try await Task.sleep(for: .milliseconds(20)) }
                }
                #expect(info != nil, "the cancelled enqueue still holds the connection's only stream")
                // All or nothing: a cancel that arrived after the last chunk may still see the batch committed.
                let listed = try await client.batches(ownerID: "o").batches
                #expect(listed.isEmpty || (listed.count == 1 && listed[0].counts.total == 20_000), "\(listed)")
                // Nothing left behind either: the staged rows of the dropped batch are deleted, though the
                // task that wrote them was cancelled (GRDB does not start a cancelled task's writes).
                if listed.isEmpty {
                    var firstTask = try await daemon.store.task(1, includePayload: false)
                    for _ in 0..<250 where firstTask != nil {
                        try await Task.sleep(for: .milliseconds(20))
                        firstTask = try await daemon.store.task(1, includePayload: false)
                    }
                    #expect(firstTask == nil, "the dropped batch's first staged task is still stored")
                }
                await client.close()
            }
        }
    }
}
