import FanoutClient
import FanoutWire
import Foundation
import Testing

@Suite struct EndToEndTests {
    @Test func batchRunsThroughSocketAndResultsComeBack() async throws {
        let daemon = try await TestDaemon()
        let client = try await daemon.client()
        #expect(client.welcome.protocolVersion == 1)
        let tasks = (0..<300).map { TaskSpec(customID: "req-\($0)", payload: Array("{\"i\":\($0)}".utf8)) }
        let batch = try await client.enqueueBatch(ownerID: "alice", agent: "echo", tasks: tasks)
        #expect(batch.counts.total == 300)
        let terminal = try await withDeadline(.seconds(20)) {
            var last: Event?
            for try await event in client.subscribe(ownerID: "alice", batchID: batch.id) {
                if event.type == .batchCompleted {
                    last = event
                    break
                }
            }
            return last
        }
        #expect(terminal?.counts?.completed == 300)
        var results: [TaskResult] = []
        for try await result in client.results(batchID: batch.id) { results.append(result) }
        #expect(results.count == 300)
        #expect(Set(results.map(\.customID)).count == 300)
        #expect(results.first { $0.customID == "req-7" }?.result == Array("{\"i\":7}".utf8))
        let final = try await client.batch(batch.id)
        #expect(final.status == .completed)
        #expect(final.progress == 100)
        await client.close()
        await daemon.stop()
    }
}
