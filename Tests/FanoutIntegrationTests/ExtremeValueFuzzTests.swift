import FanoutClient
import FanoutWire
import Foundation
import Testing

/// Structure-aware fuzzing of the real `fanoutd` process: every request type,
/// with extreme values in every numeric field and odd strings, each of which
/// must get exactly one final frame on its stream while the daemon stays up.
@Suite("Extreme values through the socket")
struct ExtremeValueFuzzTests {
    /// 0, 1, max−1, max, and the "negative" an unsigned field gets from a careless client.
    static let unsigned64: [UInt64] = [0, 1, UInt64.max - 1, UInt64.max, UInt64(bitPattern: -1) >> 1, 9_223_372_036_854_775]
    static let unsigned32: [UInt32] = [0, 1, UInt32.max - 1, UInt32.max, UInt32(Int32.max)]
    static let signed32: [Int32] = [0, 1, -1, Int32.min, Int32.max - 1, Int32.max]

    /// Strings a client may send: empty, plain, odd but valid UTF-8, over the
    /// length limits, and (patched into the encoded bytes) NUL and invalid UTF-8.
    static let strings: [String] = [
        "", "x", "e\u{301}\u{301}\u{301}", "\u{FEFF}\u{202E}rtl", "🧵🧵", String(repeating: "ß", count: 300),
        "nul\(NulMarker.text)inside", "bad\(InvalidUTF8Marker.text)utf8",
    ]

    @Test("every request type with extreme numbers and odd strings is answered, and fanoutd stays up")
    func extremeRequests() async throws {
        try await withListeningDaemon { daemon, socket, _ in
            var sent = 0
            var fuzzer = RequestFuzzer()
            while let request = fuzzer.next() {
                let answered = try await withDeadline(.seconds(20)) { try await Self.send(request, to: socket) }
                #expect(answered, "no final frame for \(request.name)")
                #expect(daemon.isRunning, "fanoutd died after \(request.name):\n\(daemon.output)")
                guard daemon.isRunning else { return }
                sent += 1
            }
            #expect(sent > 300)
            try await withClient(socket) { client in try await expectClientWorks(client) }
            #expect(daemon.isRunning)
        }
    }

    @Test("the CLI's huge completion window is refused by the daemon, which stays up")
    func cliCompletionWindow() async throws {
        try await withListeningDaemon { daemon, socket, directory in
            let input = directory + "/in.jsonl"
            try #"{"custom_id": "a", "payload": "x"}"#.write(toFile: input, atomically: true, encoding: .utf8)
            for window in ["9223372036854775", "18446744073709552", "18446744073709551615"] {
                let run = try await FanoutCLI.run(["submit", input, "--agent", "echo", "--owner", "x",
                                                   "--completion-window", window, "--socket", socket])
                #expect(run.status == 1, "window \(window): \(run.out) \(run.err)")
                #expect(run.err.contains("completion_window_ms"), "window \(window): \(run.err)")
                #expect(daemon.isRunning, "fanoutd died on window \(window):\n\(daemon.output)")
            }
            try await withClient(socket) { client in try await expectClientWorks(client) }
        }
    }

    /// Sends one fuzzed request on a fresh connection and reads until its final
    /// frame. Returns false if the connection closed first without a status on stream 0.
    static func send(_ request: FuzzedRequest, to socket: String) async throws -> Bool {
        try await withRawSession(socket) { session in
            try await session.handshake()
            let id: UInt32 = 1
            try await session.send(request.framed(streamID: id))
            // The daemon may already have closed the connection over the request (invalid UTF-8).
            for followUp in request.followUps(streamID: id) { try? await session.send(followUp) }
            while let (frame, _) = try await session.readFrame() {
                if frame.streamID == 0, case .end = frame.kind { return true }  // a malformed frame closes the connection, with a reason
                guard frame.streamID == id else { continue }
                switch frame.kind {
                case .response, .end: return true
                // A worker session that registered stays open: its acknowledgement is the answer.
                case .message(.toWorker(.ack(taskID: 0, _))): return true
                default: continue
                }
            }
            return false
        }
    }
}

/// Markers replaced in the encoded bytes, one byte for one byte, so lengths stay right.
enum NulMarker {
    static let text = "\u{1}\u{2}\u{1}"
    static let bytes: [UInt8] = [1, 2, 1]
    static let replacement: [UInt8] = [1, 0, 1]
}

enum InvalidUTF8Marker {
    static let text = "\u{1}\u{3}\u{1}"
    static let bytes: [UInt8] = [1, 3, 1]
    static let replacement: [UInt8] = [1, 0xFF, 1]
}

struct FuzzedRequest: Sendable {
    var name: String
    var request: Request
    /// Chunked enqueue: the chunk that ends it. Follow subscriptions: a cancel.
    var endsWithChunk: BatchChunk?
    var cancelAfter = false

    func framed(streamID: UInt32) throws -> [UInt8] {
        Self.patch(try framed(Frame(streamID: streamID, kind: .request(request))))
    }

    func followUps(streamID: UInt32) -> [[UInt8]] {
        var frames: [[UInt8]] = []
        if let chunk = endsWithChunk, let bytes = try? framed(Frame(streamID: streamID, kind: .message(.batchChunk(chunk)))) {
            frames.append(Self.patch(bytes))
        }
        if cancelAfter, let bytes = try? framed(Frame(streamID: streamID, kind: .cancel)) { frames.append(bytes) }
        return frames
    }

    private func framed(_ frame: Frame) throws -> [UInt8] {
        FanoutIntegrationTests.framed(body: try FrameCoding.encode(frame))
    }

    static func patch(_ bytes: [UInt8]) -> [UInt8] {
        var bytes = bytes
        for (marker, replacement) in [(NulMarker.bytes, NulMarker.replacement), (InvalidUTF8Marker.bytes, InvalidUTF8Marker.replacement)] {
            var index = 0
            while index + marker.count <= bytes.count {
                if Array(bytes[index..<index + marker.count]) == marker {
                    bytes.replaceSubrange(index..<index + marker.count, with: replacement)
                    index += marker.count
                } else {
                    index += 1
                }
            }
        }
        return bytes
    }
}

/// Walks every request type through the value lists: the i-th request of a
/// type takes the i-th value (cycling) of every list it draws from, so each
/// extreme appears in every field without a combinatorial explosion.
struct RequestFuzzer {
    private var type = 0
    private var round = 0
    static let rounds = 24
    static let types = 13

    mutating func next() -> FuzzedRequest? {
        guard type < Self.types else { return nil }
        defer {
            round += 1
            if round == Self.rounds {
                round = 0
                type += 1
            }
        }
        return make(type: type, round: round)
    }

    private func pick<T>(_ values: [T], _ offset: Int = 0) -> T { values[(round + offset) % values.count] }

    private func spec(_ offset: Int) -> TaskSpec {
        TaskSpec(customID: pick(ExtremeValueFuzzTests.strings, offset) + "\(offset)", agent: offset % 3 == 0 ? "" : pick(["echo", ExtremeValueFuzzTests.strings[offset % 8]]),
                 payload: Array(#"{"turns": 3}"#.utf8), priority: pick(ExtremeValueFuzzTests.signed32, offset),
                 maxAttempts: pick(ExtremeValueFuzzTests.unsigned32, offset), timeoutMs: pick(ExtremeValueFuzzTests.unsigned64, offset))
    }

    private func make(type: Int, round: Int) -> FuzzedRequest {
        let u64 = pick(ExtremeValueFuzzTests.unsigned64)
        let u32 = pick(ExtremeValueFuzzTests.unsigned32)
        let text = pick(ExtremeValueFuzzTests.strings)
        let owner = round % 4 == 0 ? "" : text
        let name = "request type \(type), round \(round)"
        switch type {
        case 0:
            return FuzzedRequest(name: "Hello again (\(name))", request: .hello(Hello(protocolVersion: u32, clientName: text)))
        case 1:
            var request = EnqueueBatchRequest(ownerID: owner, agent: pick(["echo", text]), metadata: [text: text],
                                              priority: pick(ExtremeValueFuzzTests.signed32), completionWindowMs: u64,
                                              parentTaskID: pick(ExtremeValueFuzzTests.unsigned64, 1),
                                              tasks: (0..<3).map(spec))
            if round % 2 == 1 {
                request.more = true
                return FuzzedRequest(name: "EnqueueBatch chunked (\(name))", request: .enqueueBatch(request),
                                     endsWithChunk: BatchChunk(tasks: (3..<5).map(spec), more: false))
            }
            return FuzzedRequest(name: "EnqueueBatch (\(name))", request: .enqueueBatch(request))
        case 2:
            return FuzzedRequest(name: "EnqueueTask (\(name))", request: .enqueueTask(EnqueueTaskRequest(ownerID: owner, task: spec(round))))
        case 3:
            return FuzzedRequest(name: "GetBatch (\(name))", request: .getBatch(batchID: u64))
        case 4:
            return FuzzedRequest(name: "ListBatches (\(name))", request: .listBatches(ListBatchesRequest(ownerID: owner, limit: u32, beforeID: u64)))
        case 5:
            return FuzzedRequest(name: "GetTask (\(name))", request: .getTask(GetTaskRequest(taskID: u64, includePayload: round % 2 == 0)))
        case 6:
            return FuzzedRequest(name: "GetResults (\(name))", request: .getResults(GetResultsRequest(
                batchID: pick([1, 2, u64]), pageSize: u32, afterTaskID: pick(ExtremeValueFuzzTests.unsigned64, 2),
                pageBytes: pick(ExtremeValueFuzzTests.unsigned32, 3))))
        case 7:
            return FuzzedRequest(name: "CancelBatch (\(name))", request: .cancelBatch(batchID: u64))
        case 8:
            return FuzzedRequest(name: "CancelTask (\(name))", request: .cancelTask(taskID: u64))
        case 9:
            return FuzzedRequest(name: "RetryFailed (\(name))", request: .retryFailed(RetryFailedRequest(
                batchID: pick([1, u64]), includeExpired: round % 2 == 0, includeCancelled: round % 3 == 0)))
        case 10:
            let follow = round % 2 == 0
            return FuzzedRequest(name: "Subscribe (\(name))", request: .subscribe(SubscribeRequest(
                ownerID: owner, eventTypes: [pick([.unspecified, .taskTurn, EventType(rawValue: u32) ?? .batchProgress])],
                batchID: pick([0, 1, u64]), since: pick(ExtremeValueFuzzTests.unsigned64, 3), follow: follow)),
                cancelAfter: follow)
        case 11:
            return FuzzedRequest(name: "ServerInfo (\(name))", request: .serverInfo)
        default:
            return FuzzedRequest(name: "WorkerSession (\(name))", request: .workerSession(WorkerRegister(
                workerName: text, agents: [AgentRegistration(name: text, concurrency: u32)])))
        }
    }
}
