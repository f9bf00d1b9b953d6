import CProtobufC
import FanoutProtoC
import FanoutWire
import NIOCore
import FanoutTestSupport
import Testing

@Suite("FrameCoding round trips")
struct RoundTripTests {
    @Test("every oneof case survives encode and decode", arguments: Fixtures.frames)
    func fullFrame(_ frame: Frame) throws {
        let bytes = try FrameCoding.encode(frame)
        #expect(try FrameCoding.decode(bytes) == frame)
    }

    @Test("nil and empty optionals stay as they were", arguments: Fixtures.sparseFrames)
    func sparseFrame(_ frame: Frame) throws {
        #expect(try FrameCoding.decode(FrameCoding.encode(frame)) == frame)
    }

    @Test("the fixtures cover every case of every oneof")
    func fixturesCoverEveryCase() {
        var requests = Set<String>(), responses = Set<String>(), messages = Set<String>()
        var worker = Set<String>(), toWorker = Set<String>(), kinds = Set<String>()
        for frame in Fixtures.frames {
            switch frame.kind {
            case .request(let r): kinds.insert("request"); requests.insert(caseName(r))
            case .response(let r): kinds.insert("response"); responses.insert(caseName(r))
            case .message(let m):
                kinds.insert("message")
                messages.insert(caseName(m))
                if case .worker(let w) = m { worker.insert(caseName(w)) }
                if case .toWorker(let w) = m { toWorker.insert(caseName(w)) }
            case .cancel: kinds.insert("cancel")
            case .end: kinds.insert("end")
            case .unknown, .rejected: Issue.record("fixtures hold only frames that can be sent")
            }
        }
        #expect(kinds.count == 5)
        #expect(requests.count == 13)
        #expect(responses.count == 10)
        #expect(messages.count == 5)
        #expect(worker.count == 7)
        #expect(toWorker.count == 5)
    }

    @Test("every StatusCode", arguments: StatusCode.allCases)
    func statusCode(_ code: StatusCode) throws {
        let frame = Frame(streamID: 3, kind: .end(WireStatus(code: code, message: "\(code)")))
        #expect(try FrameCoding.decode(FrameCoding.encode(frame)) == frame)
        let ack = Frame(streamID: 3, kind: .message(.toWorker(.ack(taskID: 1, status: WireStatus(code: code)))))
        #expect(try FrameCoding.decode(FrameCoding.encode(ack)) == ack)
    }

    @Test("every TaskStatus", arguments: TaskStatus.allCases)
    func taskStatus(_ status: TaskStatus) throws {
        var task = Fixtures.task
        task.status = status
        let frames = [
            Frame(streamID: 1, kind: .response(.getTask(task))),
            Frame(streamID: 1, kind: .message(.resultsPage([TaskResult(taskID: 1, customID: "c", status: status)]))),
        ]
        for frame in frames {
            #expect(try FrameCoding.decode(FrameCoding.encode(frame)) == frame)
        }
    }

    @Test("every BatchStatus", arguments: BatchStatus.allCases)
    func batchStatus(_ status: BatchStatus) throws {
        var batch = Fixtures.batch
        batch.status = status
        let frame = Frame(streamID: 1, kind: .response(.getBatch(batch)))
        #expect(try FrameCoding.decode(FrameCoding.encode(frame)) == frame)
    }

    @Test("every EventType", arguments: EventType.allCases)
    func eventType(_ type: EventType) throws {
        var event = Fixtures.event
        event.type = type
        let frames = [
            Frame(streamID: 1, kind: .message(.event(event))),
            Frame(streamID: 1, kind: .request(.subscribe(SubscribeRequest(ownerID: "o", eventTypes: [type, type])))),
        ]
        for frame in frames {
            #expect(try FrameCoding.decode(FrameCoding.encode(frame)) == frame)
        }
    }

    @Test("known bytes: a GetBatch request encodes exactly as protobuf specifies")
    func goldenBytes() throws {
        let frame = Frame(streamID: 1, kind: .request(.getBatch(batchID: 7)))
        // Frame{stream_id=1 (08 01), request (12 04){get_batch (22 02){batch_id=7 (08 07)}}}
        let expected: [UInt8] = [0x08, 0x01, 0x12, 0x04, 0x22, 0x02, 0x08, 0x07]
        #expect(try FrameCoding.encode(frame) == expected)

        var buffer = ByteBufferAllocator().buffer(capacity: 0)
        try FrameCoding.encodeFramed(frame, into: &buffer)
        #expect(Array(buffer.readableBytesView) == [0, 0, 0, 8] + expected)
    }

    @Test("known bytes: empty messages in a oneof are still sent")
    func emptyOneofMessages() throws {
        // Frame{stream_id=3, cancel{}}: the empty Cancel is field 5, length 0.
        #expect(try FrameCoding.encode(Frame(streamID: 3, kind: .cancel)) == [0x08, 0x03, 0x2A, 0x00])
        // Frame{request{server_info{}}}: field 13 of Request is tag 0x6A.
        #expect(try FrameCoding.encode(Frame(streamID: 0, kind: .request(.serverInfo))) == [0x12, 0x02, 0x6A, 0x00])
        #expect(try FrameCoding.decode([0x12, 0x02, 0x6A, 0x00]) == Frame(streamID: 0, kind: .request(.serverInfo)))
    }

    @Test("encode and encodeFramed produce the same body, and all decode entry points agree")
    func entryPointsAgree() throws {
        for frame in Fixtures.frames {
            let body = try FrameCoding.encode(frame)
            var buffer = ByteBufferAllocator().buffer(capacity: 0)
            buffer.writeString("junk before")  // encodeFramed appends; it must not touch what is there
            let start = buffer.writerIndex
            try FrameCoding.encodeFramed(frame, into: &buffer)
            let length = try #require(buffer.getInteger(at: start, as: UInt32.self))
            #expect(Int(length) == body.count)
            let framedBody = try #require(buffer.getSlice(at: start + 4, length: Int(length)))
            #expect(Array(framedBody.readableBytesView) == body)
            #expect(try FrameCoding.decode(framedBody) == frame)
            #expect(try body.withUnsafeBytes { raw in try FrameCoding.decode(raw) } == frame)
            #expect(buffer.getString(at: 0, length: 11) == "junk before")
        }
    }

    @Test("metadata is encoded sorted by key, so encoding is deterministic")
    func metadataIsSorted() throws {
        var metadata: [String: String] = [:]
        for index in (0..<40).reversed() {
            metadata["key-\(index)"] = "value-\(index)"
        }
        var batch = BatchInfo()
        batch.metadata = metadata
        let frame = Frame(streamID: 1, kind: .response(.getBatch(batch)))
        let bytes = try FrameCoding.encode(frame)

        // Another dictionary with the same contents, built in another order.
        var shuffled: [String: String] = [:]
        var generator = SplitMix64(seed: 7)
        for (key, value) in metadata.shuffled(using: &generator) {
            shuffled[key] = value
        }
        batch.metadata = shuffled
        #expect(try FrameCoding.encode(Frame(streamID: 1, kind: .response(.getBatch(batch)))) == bytes)

        // Read the order back with protobuf-c itself.
        let keys = try bytes.withUnsafeBufferPointer { raw -> [String] in
            let unpacked = try #require(fanout__v1__frame__unpack(nil, raw.count, raw.baseAddress))
            defer { fanout__v1__frame__free_unpacked(unpacked, nil) }
            let b = try #require(unpacked.pointee.response.pointee.get_batch.pointee.batch).pointee
            return (0..<b.n_metadata).map { String(cString: b.metadata[$0]!.pointee.key) }
        }
        #expect(keys == metadata.keys.sorted())
        #expect(keys.count == 40)
    }

    @Test("a 100,000-task batch round-trips within one default-size frame")
    func largeBatch() throws {
        let tasks = (0..<100_000).map { index in
            TaskSpec(customID: "t\(index)", payload: [UInt8(truncatingIfNeeded: index)], priority: Int32(index % 7) - 3)
        }
        let frame = Frame(streamID: 1, kind: .request(.enqueueBatch(EnqueueBatchRequest(ownerID: "o", agent: "a", tasks: tasks))))
        var buffer = ByteBufferAllocator().buffer(capacity: 0)
        try FrameCoding.encodeFramed(frame, into: &buffer)
        #expect(buffer.readableBytes < FrameDecoder.defaultMaxFrameBytes)
        buffer.moveReaderIndex(forwardBy: 4)
        #expect(try FrameCoding.decode(buffer) == frame)
    }

    @Test("large payloads (bigger than an arena chunk) are copied intact")
    func largePayloads() throws {
        var generator = SplitMix64(seed: 99)
        let big = (0..<300_000).map { _ in UInt8.random(in: 0...255, using: &generator) }
        let tasks = [
            TaskSpec(customID: "small", payload: [1]),
            TaskSpec(customID: "big", payload: big),
            TaskSpec(customID: String(repeating: "é", count: 5000), payload: Array(big.prefix(4000))),
        ]
        let frame = Frame(streamID: 1, kind: .message(.batchChunk(BatchChunk(tasks: tasks, more: false))))
        #expect(try FrameCoding.decode(FrameCoding.encode(frame)) == frame)
    }
}

func caseName<T>(_ value: T) -> String {
    // The case name is the text before the payload, e.g. "hello(…)" → "hello".
    String(String(describing: value).prefix { $0 != "(" })
}

// Short names for parameterized test cases; a whole Frame is a page of text.
extension Frame: CustomTestStringConvertible {
    public var testDescription: String {
        let path: String
        switch kind {
        case .request(let request): path = "request.\(caseName(request))"
        case .response(let response): path = "response.\(caseName(response))"
        case .message(.worker(let message)): path = "message.worker.\(caseName(message))"
        case .message(.toWorker(let message)): path = "message.toWorker.\(caseName(message))"
        case .message(let message): path = "message.\(caseName(message))"
        case .cancel: path = "cancel"
        case .end(let status): path = "end(\(status.code))"
        case .unknown: path = "unknown"
        case .rejected(let status): path = "rejected(\(status.code))"
        }
        return "stream \(streamID) \(path)"
    }
}
