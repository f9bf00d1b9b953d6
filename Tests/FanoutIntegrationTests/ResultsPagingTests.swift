import FanoutClient
import FanoutCore
import FanoutServer
import FanoutWire
import Testing

/// GetResults pages cut by bytes (`page_bytes`, `max_results_page_bytes`) as
/// well as by count, seen on the wire through the daemon's real socket.
@Suite struct ResultsPagingTests {
    @Test("a smaller page_bytes gives more, smaller pages; every result arrives once, in task order")
    func pageBytesCutsPages() async throws {
        try await withTestDaemon { daemon in
            try await withClient(daemon.socketPath) { client in
                try await withDeadline(.seconds(40)) {
                    let count = 300
                    let batch = try await Self.finishedBatch(count: count, payloadBytes: 200, on: client)
                    let whole = try await Self.pages(daemon.socketPath, GetResultsRequest(batchID: batch))
                    let budget = 4_096
                    let small = try await Self.pages(daemon.socketPath, GetResultsRequest(batchID: batch, pageBytes: UInt32(budget)))
                    #expect(whole.count == 1, "300 small results fit one default page: \(whole.map(\.results.count))")
                    // Each result counts for at least its 200 bytes and the fixed part: a dozen per page.
                    let perPage = budget / (200 + TaskRecord.resultPageOverhead)
                    #expect(small.count >= count / perPage, "\(small.map(\.results.count))")
                    #expect(small.allSatisfy { $0.results.count <= perPage }, "\(small.map(\.results.count))")
                    #expect(small.allSatisfy { $0.bytes <= budget + ServerConfiguration.resultsPageEnvelope }, "\(small.map(\.bytes))")

                    let all = whole.flatMap(\.results)
                    let paged = small.flatMap(\.results)
                    #expect(all.count == count)
                    #expect(paged == all, "the same results, each once, in the same order")
                    #expect(paged.map(\.taskID) == paged.map(\.taskID).sorted())
                    #expect(Set(paged.map(\.taskID)).count == count)

                    // The client library asks the same way and hands out the same sequence.
                    var viaClient: [TaskResult] = []
                    for try await result in client.results(batchID: batch, pageBytes: budget) { viaClient.append(result) }
                    #expect(viaClient == all)
                    // Resuming after a task id goes on from the next one, byte budget or not.
                    var resumed: [TaskResult] = []
                    for try await result in client.results(batchID: batch, afterTaskID: all[99].taskID, pageBytes: budget) {
                        resumed.append(result)
                    }
                    #expect(resumed == Array(all[100...]))
                }
            }
        }
    }

    @Test("page_bytes above max_results_page_bytes is reduced to it, and the limit never exceeds a frame")
    func limitClampsOversizedRequest() async throws {
        let limit = 8_192
        try await withTestDaemon(configure: { $0.maxResultsPageBytes = limit }) { daemon in
            try await withClient(daemon.socketPath) { client in
                try await withDeadline(.seconds(40)) {
                    #expect(client.welcome.limits.maxResultsPageBytes == UInt32(limit))
                    let count = 200
                    let batch = try await Self.finishedBatch(count: count, payloadBytes: 300, on: client)
                    let huge = try await Self.pages(daemon.socketPath, GetResultsRequest(batchID: batch, pageBytes: .max))
                    let atLimit = try await Self.pages(daemon.socketPath, GetResultsRequest(batchID: batch, pageBytes: UInt32(limit)))
                    let byDefault = try await Self.pages(daemon.socketPath, GetResultsRequest(batchID: batch))
                    #expect(huge.count > 1, "\(huge.map(\.results.count))")
                    #expect(huge.allSatisfy { $0.bytes <= limit + ServerConfiguration.resultsPageEnvelope }, "\(huge.map(\.bytes))")
                    #expect(huge.map(\.results.count) == atLimit.map(\.results.count))
                    #expect(byDefault.map(\.results.count) == atLimit.map(\.results.count))
                    #expect(huge.flatMap(\.results).map(\.taskID) == byDefault.flatMap(\.results).map(\.taskID))
                    #expect(huge.flatMap(\.results).count == count)
                }
            }
        }
        // A limit larger than a frame is lowered to what a frame holds.
        let frame = 64 * 1024
        try await withTestDaemon(configure: { $0.maxFrameBytes = frame; $0.maxResultsPageBytes = 1 << 20 }) { daemon in
            try await withClient(daemon.socketPath) { client in
                #expect(client.welcome.limits.maxResultsPageBytes == UInt32(frame - ServerConfiguration.resultsPageEnvelope))
            }
        }
    }

    @Test("a page always carries a result, even one larger than page_bytes")
    func pageHoldsAtLeastOneResult() async throws {
        try await withTestDaemon { daemon in
            try await withClient(daemon.socketPath) { client in
                try await withDeadline(.seconds(40)) {
                    let count = 5
                    let batch = try await Self.finishedBatch(count: count, payloadBytes: 5_000, on: client)
                    for budget: UInt32 in [1, 1_000] {
                        let pages = try await Self.pages(daemon.socketPath, GetResultsRequest(batchID: batch, pageBytes: budget))
                        #expect(pages.map(\.results.count) == Array(repeating: 1, count: count), "page_bytes \(budget)")
                        let ids = pages.flatMap(\.results).map(\.taskID)
                        #expect(ids == ids.sorted() && Set(ids).count == count)
                        #expect(pages.allSatisfy { $0.results[0].result.count == 5_000 })
                    }
                    var viaClient = 0
                    for try await result in client.results(batchID: batch, pageBytes: 1) {
                        #expect(result.result.count == 5_000)
                        viaClient += 1
                    }
                    #expect(viaClient == count)
                }
            }
        }
    }

    @Test("a consumer that falls behind still gets every result once, in order, while the client holds only a few pages")
    func slowConsumerPausesAndResumes() async throws {
        try await withTestDaemon { daemon in
            try await withClient(daemon.socketPath) { client in
                try await withDeadline(.seconds(40)) {
                    let count = 2_000
                    let batch = try await Self.finishedBatch(count: count, payloadBytes: 10, on: client)
                    var results: [TaskResult] = []
                    // Pages of 10: while the consumer dawdles over its first result, far more pages than the
                    // client buffers are ready, so the stream is paused on the daemon and resumed after.
                    for try await result in client.results(batchID: batch, pageSize: 10) {
                        if results.isEmpty { try await Task.sleep(for: .milliseconds(300)) }
                        results.append(result)
                    }
                    let ids = results.map(\.taskID)
                    #expect(ids.count == count)
                    #expect(ids == ids.sorted() && Set(ids).count == count)
                    #expect(Set(results.map(\.customID)) == Set((0..<count).map { "row-\($0)" }))
                    // Resuming from a given task id pauses and resumes from the right place too.
                    var rest: [UInt64] = []
                    for try await result in client.results(batchID: batch, afterTaskID: ids[999], pageSize: 10) {
                        if rest.isEmpty { try await Task.sleep(for: .milliseconds(300)) }
                        rest.append(result.taskID)
                    }
                    #expect(rest == Array(ids[1_000...]))
                    try await expectClientWorks(client)
                }
            }
        }
    }

    // MARK: Helpers

    /// An echo batch of `count` tasks, each echoing `payloadBytes` bytes, once it has finished.
    static func finishedBatch(count: Int, payloadBytes: Int, on client: FanoutClient) async throws -> UInt64 {
        let payload = [UInt8](repeating: UInt8(ascii: "r"), count: payloadBytes)
        let tasks = (0..<count).map { TaskSpec(customID: "row-\($0)", payload: payload) }
        let batch = try await client.enqueueBatch(ownerID: "paging", agent: "echo", tasks: tasks)
        let seen = try await events(of: batch.id, owner: "paging", on: client)
        #expect(seen.last?.type == .batchCompleted)
        return batch.id
    }

    /// The pages of one GetResults stream as they come off the socket, with each frame's size.
    static func pages(_ socketPath: String, _ request: GetResultsRequest) async throws -> [(results: [TaskResult], bytes: Int)] {
        try await withRawSession(socketPath) { raw in
            try await raw.handshake()
            try await raw.send(Frame(streamID: 1, kind: .request(.getResults(request))))
            var pages: [(results: [TaskResult], bytes: Int)] = []
            while let (frame, bytes) = try await raw.readFrame() {
                #expect(frame.streamID == 1)
                if case .message(.resultsPage(let page)) = frame.kind {
                    #expect(!page.isEmpty, "a page is never empty")
                    pages.append((page, bytes))
                } else if let status = endStatus(frame) {
                    #expect(status.code == .ok, "\(status)")
                    break
                } else {
                    Issue.record("unexpected frame \(frame)")
                }
            }
            return pages
        }
    }
}
