import FanoutClient
import Foundation
import Testing

@Suite struct UnaryCancelTests {
    /// A Cancel right behind a unary call: the call completes (the batch exists),
    /// so its answer must still arrive rather than the stream going silent.
    @Test func cancelledUnaryCallStillGetsItsFinalFrame() async throws {
        try await withTestDaemon { daemon in
            try await withDeadline(20) {
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
