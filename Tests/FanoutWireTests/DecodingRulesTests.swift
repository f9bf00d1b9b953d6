import CProtobufC
import FanoutProtoC
import FanoutWire
import FanoutTestSupport
import Testing

/// Bytes built by hand or through the C API, for what the Swift encoder
/// never produces.
@Suite("FrameCoding decoding rules")
struct DecodingRulesTests {
    struct UnsetOneof: Sendable, CustomTestStringConvertible {
        let body: [UInt8]
        let reason: String
        var testDescription: String { reason }
    }

    static let unsetOneofs: [UnsetOneof] = [
        UnsetOneof(body: PB.bytes(4, PB.bytes(4, [])), reason: "worker message carries no kind"),
        UnsetOneof(body: PB.bytes(4, PB.bytes(5, [])), reason: "server-to-worker message carries no kind"),
    ]

    @Test("a worker message with no case set is malformed", arguments: unsetOneofs)
    func unsetOneof(_ fixture: UnsetOneof) {
        #expect(throws: WireError.malformedFrame(fixture.reason)) {
            try FrameCoding.decode(fixture.body)
        }
    }

    /// A newer peer's frame kinds, calls and message bodies (or none at all)
    /// decode as `unknown`, which the receiver ignores or answers UNIMPLEMENTED
    /// (PROTOCOL.md §12), rather than fail the whole connection.
    static let unknownCases: [(body: [UInt8], frame: Frame)] = [
        ([], Frame(streamID: 0, kind: .unknown)),
        (PB.uint(1, 5), Frame(streamID: 5, kind: .unknown)),
        (PB.uint(1, 5) + PB.bytes(99, PB.uint(1, 1)), Frame(streamID: 5, kind: .unknown)),
        (PB.uint(1, 5) + PB.bytes(2, []), Frame(streamID: 5, kind: .request(.unknown))),
        (PB.bytes(2, PB.bytes(99, PB.uint(1, 1))), Frame(streamID: 0, kind: .request(.unknown))),
        (PB.bytes(3, []), Frame(streamID: 0, kind: .response(.unknown))),
        (PB.bytes(4, []), Frame(streamID: 0, kind: .message(.unknown))),
    ]

    @Test("unknown or unset kinds, calls and bodies decode as unknown")
    func unknownCasesDecode() throws {
        for (body, frame) in Self.unknownCases {
            #expect(try FrameCoding.decode(body) == frame)
        }
    }

    static let notProtobufBodies: [[UInt8]] = [
        [0x08],                                // varint cut short
        [0x12, 0x05, 0x0A],                    // length runs past the end
        [0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF],  // varint longer than 10 bytes
        [0x0B],                                // wire type 3 (start group) is not supported
        [0x0A, 0x01, 0x00],                    // stream_id sent with the wrong wire type
    ]

    @Test("bytes that are not protobuf are malformed", arguments: notProtobufBodies)
    func notProtobuf(_ body: [UInt8]) {
        #expect(throws: WireError.malformedFrame("the body is not a valid protobuf fanout.v1.Frame")) {
            try FrameCoding.decode(body)
        }
    }

    // MARK: Enums

    @Test("an unknown status code decodes as .unknown")
    func unknownStatusCode() throws {
        let body = PB.uint(1, 9) + PB.bytes(6, PB.bytes(1, PB.uint(1, 99) + PB.string(2, "from the future")))
        #expect(try FrameCoding.decode(body) == Frame(streamID: 9, kind: .end(WireStatus(code: .unknown, message: "from the future"))))

        let negative = PB.bytes(6, PB.bytes(1, PB.int(1, -1)))
        #expect(try FrameCoding.decode(negative) == Frame(streamID: 0, kind: .end(WireStatus(code: .unknown))))
    }

    @Test("unknown task, batch and event enum values decode as .unspecified")
    func unknownDomainEnums() throws {
        // ResultsPage{results: [TaskResult{task_id=1, status=42}]}
        let page = PB.bytes(4, PB.bytes(3, PB.bytes(1, PB.uint(1, 1) + PB.uint(3, 42))))
        #expect(try FrameCoding.decode(page) == Frame(streamID: 0, kind: .message(.resultsPage([
            TaskResult(taskID: 1, customID: "", status: .unspecified),
        ]))))

        // Response{get_batch{batch{id=2, status=1000}}}
        let batch = PB.bytes(3, PB.bytes(4, PB.bytes(1, PB.uint(1, 2) + PB.uint(4, 1000))))
        var expectedBatch = BatchInfo()
        expectedBatch.id = 2
        #expect(try FrameCoding.decode(batch) == Frame(streamID: 0, kind: .response(.getBatch(expectedBatch))))

        // StreamMessage{event{sequence=3, type=-5}}
        let event = PB.bytes(4, PB.bytes(2, PB.uint(1, 3) + PB.int(2, -5)))
        var expectedEvent = Event()
        expectedEvent.sequence = 3
        #expect(try FrameCoding.decode(event) == Frame(streamID: 0, kind: .message(.event(expectedEvent))))

        // SubscribeRequest{event_types: packed [1, 500, 11]}
        let types = PB.varint(1) + PB.varint(500) + PB.varint(11)
        let subscribe = PB.bytes(2, PB.bytes(11, PB.bytes(2, types)))
        #expect(try FrameCoding.decode(subscribe) == Frame(streamID: 0, kind: .request(.subscribe(
            SubscribeRequest(ownerID: "", eventTypes: [.batchProgress, .unspecified, .taskExpired], follow: false)
        ))))
    }

    @Test("unpacked (non-packed) repeated enums are accepted too")
    func unpackedRepeatedEnum() throws {
        let subscribe = PB.bytes(2, PB.bytes(11, PB.uint(2, 2) + PB.uint(2, 9) + PB.uint(5, 1)))
        #expect(try FrameCoding.decode(subscribe) == Frame(streamID: 0, kind: .request(.subscribe(
            SubscribeRequest(ownerID: "", eventTypes: [.batchCompleted, .taskFailed], follow: true)
        ))))
    }

    // MARK: Forward compatibility and proto3 defaults

    @Test("unknown fields are ignored", arguments: Fixtures.frames.prefix(12))
    func unknownFieldsIgnored(_ frame: Frame) throws {
        let body = try FrameCoding.encode(frame)
        let extra = PB.uint(15, 12345) + PB.string(1000, "added in v2") + PB.bytes(77, PB.uint(1, 1))
        #expect(try FrameCoding.decode(extra + body + extra) == frame)
    }

    @Test("absent sub-messages read as proto3 defaults where the Swift field is not optional")
    func absentSubMessages() throws {
        #expect(try FrameCoding.decode(PB.uint(1, 3) + PB.bytes(6, [])) == Frame(streamID: 3, kind: .end(.ok)))
        #expect(try FrameCoding.decode(PB.bytes(3, PB.bytes(2, []))) == Frame(streamID: 0, kind: .response(.enqueueBatch(BatchInfo()))))
        #expect(try FrameCoding.decode(PB.bytes(3, PB.bytes(6, []))) == Frame(streamID: 0, kind: .response(.getTask(TaskInfo()))))
        #expect(try FrameCoding.decode(PB.bytes(2, PB.bytes(3, PB.string(1, "o")))) == Frame(
            streamID: 0, kind: .request(.enqueueTask(EnqueueTaskRequest(ownerID: "o", task: TaskSpec(customID: "", payload: []))))
        ))
        #expect(try FrameCoding.decode(PB.bytes(3, PB.bytes(1, PB.string(1, "v")))) == Frame(
            streamID: 0, kind: .response(.welcome(Welcome(serverVersion: "v", protocolVersion: 0, maxFrameBytes: 0, features: [], limits: Limits())))
        ))
        #expect(try FrameCoding.decode(PB.bytes(4, PB.bytes(4, PB.bytes(5, PB.uint(1, 8))))) == Frame(
            streamID: 0, kind: .message(.worker(.failure(taskID: 8, error: TaskError(message: ""), retryAfterMs: 0)))
        ))
        #expect(try FrameCoding.decode(PB.bytes(4, PB.bytes(5, PB.bytes(4, PB.uint(1, 8))))) == Frame(
            streamID: 0, kind: .message(.toWorker(.ack(taskID: 8, status: .ok)))
        ))
    }

    @Test("optional sub-messages are nil when absent and non-nil when present but empty")
    func optionalSubMessages() throws {
        // Event{sequence=1} vs Event{sequence=1, counts{}, error{}}
        let absent = try FrameCoding.decode(PB.bytes(4, PB.bytes(2, PB.uint(1, 1))))
        let present = try FrameCoding.decode(PB.bytes(4, PB.bytes(2, PB.uint(1, 1) + PB.bytes(10, []) + PB.bytes(14, []))))
        guard case .message(.event(let a)) = absent.kind, case .message(.event(let p)) = present.kind else {
            Issue.record("expected events, got \(absent) and \(present)")
            return
        }
        #expect(a.counts == nil)
        #expect(a.error == nil)
        #expect(p.counts == BatchCounts())
        #expect(p.error == TaskError(message: ""))

        // WorkerResult usage
        let noUsage = try FrameCoding.decode(PB.bytes(4, PB.bytes(4, PB.bytes(4, PB.uint(1, 2)))))
        #expect(noUsage == Frame(streamID: 0, kind: .message(.worker(.result(taskID: 2, result: [], usage: nil)))))
    }

    @Test("a repeated metadata key keeps the last value, like a protobuf map")
    func duplicateMetadataKey() throws {
        let entries = PB.bytes(7, PB.string(1, "k") + PB.string(2, "first")) + PB.bytes(7, PB.string(1, "k") + PB.string(2, "last"))
        let body = PB.bytes(3, PB.bytes(4, PB.bytes(1, entries)))
        var expected = BatchInfo()
        expected.metadata = ["k": "last"]
        #expect(try FrameCoding.decode(body) == Frame(streamID: 0, kind: .response(.getBatch(expected))))
    }

    // MARK: Strings

    struct BadString: Sendable, CustomTestStringConvertible {
        let body: [UInt8]
        let field: String
        var testDescription: String { field }
    }

    static let invalidUTF8: [[UInt8]] = [
        [0xFF],                    // never valid
        [0x61, 0xC3, 0x28],        // bad continuation byte
        [0xC0, 0xAF],              // overlong "/"
        [0xED, 0xA0, 0x80],        // UTF-16 surrogate
        [0xF4, 0x90, 0x80, 0x80],  // beyond U+10FFFF
        [0xE2, 0x82],              // cut short
    ]

    static var badStrings: [BadString] {
        invalidUTF8.flatMap { bad in
            [
                BadString(body: PB.bytes(2, PB.bytes(1, PB.bytes(2, bad))), field: "Hello.client_name"),
                BadString(body: PB.bytes(4, PB.bytes(1, PB.bytes(1, PB.bytes(1, bad)))), field: "TaskSpec.custom_id"),
                BadString(body: PB.bytes(6, PB.bytes(1, PB.bytes(2, bad))), field: "Status.message"),
                BadString(body: PB.bytes(3, PB.bytes(4, PB.bytes(1, PB.bytes(7, PB.bytes(2, bad))))), field: "Batch.metadata"),
                BadString(body: PB.bytes(3, PB.bytes(1, PB.bytes(4, bad))), field: "Welcome.features"),
                BadString(body: PB.bytes(4, PB.bytes(3, PB.bytes(1, PB.bytes(5, PB.bytes(1, bad))))), field: "TaskError.message"),
                BadString(body: PB.bytes(2, PB.bytes(12, PB.bytes(2, PB.bytes(1, bad)))), field: "AgentRegistration.name"),
            ]
        }
    }

    @Test("invalid UTF-8 in a string field is malformed and names the field", arguments: badStrings)
    func invalidUTF8(_ fixture: BadString) {
        #expect(throws: WireError.malformedFrame("invalid UTF-8 in \(fixture.field)")) {
            try FrameCoding.decode(fixture.body)
        }
    }

    @Test("invalid UTF-8 written by a C client through protobuf-c is refused")
    func invalidUTF8ThroughCAPI() throws {
        // protobuf-c packs whatever bytes a C string holds: it does not check UTF-8.
        var name: [CChar] = [CChar(bitPattern: 0xC3), 0x28, 0]
        var hello = Fanout__V1__Hello()
        fanout__v1__hello__init(&hello)
        hello.protocol_version = 1
        var request = Fanout__V1__Request()
        fanout__v1__request__init(&request)
        request.call_case = FANOUT__V1__REQUEST__CALL_HELLO
        var frame = Fanout__V1__Frame()
        fanout__v1__frame__init(&frame)
        frame.kind_case = FANOUT__V1__FRAME__KIND_REQUEST

        let bytes: [UInt8] = name.withUnsafeMutableBufferPointer { namePointer in
            hello.client_name = namePointer.baseAddress
            return withUnsafeMutablePointer(to: &hello) { helloPointer in
                request.hello = helloPointer
                return withUnsafeMutablePointer(to: &request) { requestPointer in
                    frame.request = requestPointer
                    let size = fanout__v1__frame__get_packed_size(&frame)
                    return [UInt8](unsafeUninitializedCapacity: size) { buffer, count in
                        count = fanout__v1__frame__pack(&frame, buffer.baseAddress)
                    }
                }
            }
        }
        #expect(bytes == PB.bytes(2, PB.bytes(1, PB.uint(1, 1) + PB.bytes(2, [0xC3, 0x28]))))
        #expect(throws: WireError.malformedFrame("invalid UTF-8 in Hello.client_name")) {
            try FrameCoding.decode(bytes)
        }
    }

    @Test("a NUL character in a string cannot be encoded")
    func nulCharacterIsRefused() {
        let frame = Frame(streamID: 1, kind: .message(.batchChunk(BatchChunk(tasks: [TaskSpec(customID: "a\u{0}b", payload: [])], more: false))))
        #expect(throws: WireError.unencodableValue("TaskSpec.custom_id contains a NUL character, which protobuf-c strings cannot carry")) {
            try FrameCoding.encode(frame)
        }
        let features = Frame(streamID: 0, kind: .response(.welcome(Welcome(
            serverVersion: "v", protocolVersion: 1, maxFrameBytes: 1, features: ["ok", "\u{0}"], limits: Limits()
        ))))
        #expect(throws: WireError.unencodableValue("Welcome.features contains a NUL character, which protobuf-c strings cannot carry")) {
            try FrameCoding.encode(features)
        }
    }

    @Test("a received string holding NUL is rejected on its stream, not cut")
    func nulByteOnTheWire() throws {
        // Valid protobuf and valid UTF-8, but protobuf-c hands strings over as
        // C strings and would cut it at the NUL: "id\0one" and "id\0two" would collide.
        let hello = PB.bytes(2, PB.bytes(1, PB.bytes(2, Array("ab\u{0}cd".utf8))))
        guard case .rejected(let status) = try FrameCoding.decode(hello).kind else {
            Issue.record("a NUL in Hello.client_name was not rejected")
            return
        }
        #expect(status.code == .invalidArgument)
        #expect(status.message.contains("Hello.client_name"))
        // Nested: a custom_id inside the tasks of a chunk on stream 7.
        let chunk = PB.uint(1, 7) + PB.bytes(4, PB.bytes(1, PB.bytes(1, PB.bytes(1, Array("id\u{0}one".utf8)))))
        let decoded = try FrameCoding.decode(chunk)
        #expect(decoded.streamID == 7)
        guard case .rejected(let nested) = decoded.kind else {
            Issue.record("a NUL in TaskSpec.custom_id was not rejected: \(decoded)")
            return
        }
        #expect(nested.message.contains("custom_id"))
        // A NUL inside bytes (a payload) is fine.
        let payload = PB.uint(1, 7) + PB.bytes(4, PB.bytes(1, PB.bytes(1, PB.bytes(1, Array("id".utf8)) + PB.bytes(3, [0, 1, 0]))))
        guard case .message(.batchChunk(let ok)) = try FrameCoding.decode(payload).kind else {
            Issue.record("a payload holding NUL bytes was refused")
            return
        }
        #expect(ok.tasks.first?.payload == [0, 1, 0])
    }
}
