import FanoutCore
import Testing

@Suite struct BatchValidationTests {
    static let agents: Set<String> = ["echo", "summarize"]

    static func task(_ id: String, agent: String = "echo", payload: [UInt8] = [1, 2, 3]) -> NewTask {
        NewTask(customID: id, agent: agent, payload: payload)
    }

    static func batch(owner: String = "alice", tasks: [NewTask], metadata: [String: String] = [:]) -> NewBatch {
        NewBatch(ownerID: owner, agent: "echo", metadata: metadata, tasks: tasks)
    }

    static func small() -> EnqueueLimits {
        var limits = EnqueueLimits()
        limits.maxTasksPerBatch = 3
        limits.maxPayloadBytes = 10
        limits.maxCustomIDBytes = 8
        limits.maxOwnerIDBytes = 5
        limits.maxMetadataEntries = 2
        return limits
    }

    /// Validates and returns the refusal, failing the test if there is none.
    func refusal(_ batch: NewBatch, limits: EnqueueLimits = small()) -> FanoutError? {
        do {
            try BatchValidation.validate(batch, limits: limits, knownAgents: Self.agents)
            Issue.record("expected the batch to be refused")
            return nil
        } catch {
            return error
        }
    }

    @Test func validBatchPasses() throws {
        let tasks = [Self.task("a"), Self.task("b", agent: "summarize", payload: Array(repeating: 0, count: 10)), Self.task("12345678")]
        try BatchValidation.validate(Self.batch(owner: "bob12", tasks: tasks, metadata: ["k": "v", "l": "w"]),
                                     limits: Self.small(), knownAgents: Self.agents)
    }

    @Test func defaultLimits() {
        let limits = EnqueueLimits()
        #expect(limits.maxTasksPerBatch == 1_000_000)
        #expect(limits.maxPayloadBytes == 1 << 20)
        #expect(limits.maxCustomIDBytes == 256)
        #expect(limits.maxOwnerIDBytes == 256)
        #expect(limits.maxMetadataEntries == 64)
    }

    @Test func emptyOwner() {
        let error = refusal(Self.batch(owner: "", tasks: [Self.task("a")]))
        #expect(error == .invalidArgument("owner_id is required"))
    }

    @Test func oversizeOwner() {
        let error = refusal(Self.batch(owner: "abcdef", tasks: [Self.task("a")]))
        #expect(error == .invalidArgument("owner_id is 6 bytes; the limit is 5"))
    }

    @Test func emptyBatch() {
        let error = refusal(Self.batch(tasks: []))
        #expect(error == .invalidArgument("a batch needs at least one task"))
    }

    @Test func tooManyTasks() {
        let error = refusal(Self.batch(tasks: ["a", "b", "c", "d"].map { Self.task($0) }))
        #expect(error?.kind == .resourceExhausted)
        #expect(error?.message == "batch has 4 tasks; the limit is 3 (max_tasks_per_batch)")
    }

    @Test func tooManyMetadataEntries() {
        let error = refusal(Self.batch(tasks: [Self.task("a")], metadata: ["a": "1", "b": "2", "c": "3"]))
        #expect(error == .invalidArgument("batch has 3 metadata entries; the limit is 2"))
    }

    @Test func emptyCustomID() {
        let error = refusal(Self.batch(tasks: [Self.task("a"), Self.task("")]))
        #expect(error == .invalidArgument("task 1: custom_id is required"))
    }

    @Test func oversizeCustomIDCountsBytesNotCharacters() throws {
        // Four characters, eight UTF-8 bytes: exactly at the limit.
        try BatchValidation.validate(Self.batch(tasks: [Self.task("äöüé")]), limits: Self.small(), knownAgents: Self.agents)
        // Three characters, nine UTF-8 bytes.
        let error = refusal(Self.batch(tasks: [Self.task("a"), Self.task("日本語")]))
        #expect(error == .invalidArgument("task 1: custom_id is 9 bytes; the limit is 8 (max_custom_id_bytes)"))
    }

    @Test func duplicateCustomID() {
        let error = refusal(Self.batch(tasks: [Self.task("x"), Self.task("y"), Self.task("x")]))
        #expect(error == .invalidArgument("task 2: custom_id \"x\" appears more than once in the batch"))
    }

    @Test func oversizePayload() {
        let error = refusal(Self.batch(tasks: [Self.task("a"), Self.task("big", payload: Array(repeating: 7, count: 11))]))
        #expect(error?.kind == .resourceExhausted)
        #expect(error?.message == "task \"big\": payload is 11 bytes; the limit is 10 (max_payload_bytes)")
    }

    @Test func missingAgent() {
        let error = refusal(Self.batch(tasks: [Self.task("a", agent: "")]))
        #expect(error == .invalidArgument("task \"a\": no agent given, for the task or the batch"))
    }

    @Test func unknownAgent() {
        let error = refusal(Self.batch(tasks: [Self.task("a"), Self.task("b", agent: "nope")]))
        #expect(error == .invalidArgument("task \"b\": unknown agent \"nope\"; this daemon runs echo, summarize"))
    }

    @Test func errorDescriptionIsTheMessage() {
        let error = FanoutError.notFound("batch 7 does not exist")
        #expect(error.kind == .notFound)
        #expect("\(error)" == "batch 7 does not exist")
    }
}
