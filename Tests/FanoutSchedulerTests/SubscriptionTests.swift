import FanoutTestSupport
import FanoutCore
import FanoutStore
import Foundation
import Testing

@testable import FanoutScheduler

@Suite(.postgresServer) struct SubscriptionTests {
    func isContiguous(_ sequences: [EventSequence]) -> Bool {
        zip(sequences, sequences.dropFirst()).allSatisfy { $1 == $0 + 1 }
    }

    @Test(arguments: StoreKind.allCases) func replayThenLiveHasNoGapAndNoDuplicate(on kind: StoreKind) async throws {
        let agents = [AgentConfiguration(name: "echo", runner: "echo", concurrency: 4)]
        try await withScheduler(on: kind, agents: agents) { scheduler, store in
            // Slow enough that a loaded machine still joins mid-batch (about 1.2 s in all; at 0.5 s the
            // full suite's load once let the batch end before the last join).
            let payload = json(["delay_ms": 60])
            let batch = try await scheduler.enqueue(NewBatch(ownerID: "alice", agent: "echo", tasks: echoTasks(80, payload: { _ in payload })))
            // Join mid-batch, several times, each starting a little behind the log so the replay has work to do.
            var subscriptions: [(since: EventSequence, task: Task<[EventRecord], any Error>)] = []
            for threshold in [12, 40, 90] as [EventSequence] {
                try await waitUntil("\(threshold) events") { try await store.lastEventSequence() >= threshold }
                #expect(try await store.batch(batch.id)?.state == .processing, "joined too late to test the seam")
                let since = try await store.lastEventSequence() - 8
                let task = Task {
                    try await collectEvents(scheduler, EventFilter(ownerID: ""), since: since) { $0.kind == .batchCompleted }
                }
                subscriptions.append((since, task))
            }
            let whole = try await eventsUntilBatchEnds(scheduler, batch: batch.id)
            #expect(whole.first?.sequence == 1)
            #expect(isContiguous(whole.map(\.sequence)))
            let log = try await allEvents(store)
            #expect(whole.map(\.sequence) == log.map(\.sequence))
            #expect(whole == log)

            for (since, task) in subscriptions {
                let events = try await task.value
                let sequences = events.map(\.sequence)
                #expect(sequences.first == since + 1)
                #expect(isContiguous(sequences), "gap or duplicate after since=\(since)")
                #expect(sequences.last == log.last?.sequence)
                #expect(events == Array(log.drop { $0.sequence <= since }))
            }
        }
    }

    @Test(arguments: StoreKind.allCases) func filteredSubscriptionsSeeExactlyTheirEvents(on kind: StoreKind) async throws {
        let agents = [AgentConfiguration(name: "echo", runner: "echo", concurrency: 3)]
        try await withScheduler(on: kind, agents: agents) { scheduler, store in
            let payload = json(["delay_ms": 2])
            let aliceSub = Task {
                try await collectEvents(scheduler, EventFilter(ownerID: "alice"), since: 0) { $0.kind == .batchCompleted }
            }
            let completions = Task {
                try await collectEvents(scheduler, EventFilter(ownerID: "", kinds: [.batchCompleted]), since: 0) { _ in false }
            }
            _ = completions // runs until cancelled below
            let alice = try await scheduler.enqueue(NewBatch(ownerID: "alice", agent: "echo", tasks: echoTasks(20, payload: { _ in payload })))
            let bob = try await scheduler.enqueue(NewBatch(ownerID: "bob", agent: "echo", tasks: echoTasks(20, payload: { _ in payload })))
            try await waitUntil("both batches to end") {
                let (first, second) = (try await store.batch(alice.id), try await store.batch(bob.id))
                return first?.state == .completed && second?.state == .completed
            }
            let aliceEvents = try await aliceSub.value
            completions.cancel()
            #expect(aliceEvents == (try await allEvents(store, EventFilter(ownerID: "alice"))))
            #expect(aliceEvents.allSatisfy { $0.ownerID == "alice" && $0.batchID == alice.id })
            #expect(aliceEvents.filter { $0.kind == .taskCompleted }.count == 20)

            let bobCompleted = try await collectEvents(scheduler, EventFilter(ownerID: "bob", kinds: [.taskCompleted, .batchCompleted]),
                                                       since: 0) { $0.kind == .batchCompleted }
            #expect(bobCompleted.count == 21)
            #expect(bobCompleted.allSatisfy { $0.ownerID == "bob" })
            #expect(Set(bobCompleted.compactMap(\.taskID)).count == 20)
        }
    }

    @Test func replayWithoutFollowEndsAtTheStoredEnd() async throws {
        try await withScheduler { scheduler, store in
            let batch = try await scheduler.enqueue(NewBatch(ownerID: "alice", agent: "echo", tasks: echoTasks(3)))
            _ = try await eventsUntilBatchEnds(scheduler, batch: batch.id)
            let log = try await allEvents(store)
            let replay = try await withDeadline(.seconds(2), "a replay-only subscription to end") {
                var events: [EventRecord] = []
                for try await event in scheduler.subscribe(EventFilter(ownerID: "alice"), since: 2, follow: false, bufferSize: 1) {
                    events.append(event)
                }
                return events
            }
            #expect(replay == Array(log.dropFirst(2)))
            #expect(scheduler.statistics.subscribers == 0)
        }
    }

    @Test func replayLongerThanOnePage() async throws {
        try await withScheduler { scheduler, store in
            let batch = try await scheduler.enqueue(NewBatch(ownerID: "alice", agent: "echo", tasks: echoTasks(600)))
            _ = try await waitUntil("the batch to end") { try await store.batch(batch.id)?.state == .completed }
            let log = try await allEvents(store)
            #expect(log.count > EventStream.replayPage)
            let events = try await collectEvents(scheduler, EventFilter(ownerID: "alice"), since: 0) { $0.kind == .batchCompleted }
            #expect(events.count == log.count)
            #expect(isContiguous(events.map(\.sequence)))
        }
    }

    @Test func slowSubscriberIsCutOffWithItsLastDeliveredSequence() async throws {
        try await withScheduler { scheduler, store in
            let outcome = try await withDeadline(.seconds(30), "the lagged subscription") { () -> ([EventSequence], SubscriptionLagged?) in
                let stream = scheduler.subscribe(EventFilter(ownerID: "alice"), since: 0, follow: true, bufferSize: 5)
                var iterator = stream.makeAsyncIterator() // registers the live subscription; nothing reads it yet
                #expect(scheduler.statistics.subscribers == 1)
                let batch = try await scheduler.enqueue(NewBatch(ownerID: "alice", agent: "echo", tasks: echoTasks(200)))
                // The scheduler is not held back by the subscriber that never reads.
                try await waitUntil("the batch to end while the subscriber sleeps", timeout: .seconds(10)) {
                    try await store.batch(batch.id)?.state == .completed
                }
                #expect(scheduler.statistics.subscribers == 0)
                var delivered: [EventSequence] = []
                do {
                    while let event = try await iterator.next() { delivered.append(event.sequence) }
                    return (delivered, nil)
                } catch let lagged as SubscriptionLagged {
                    return (delivered, lagged)
                }
            }
            // Everything buffered before the cut arrives, then the lag mark. The first commit's events
            // all arrive, however many (a subscriber is never cut off for one commit's size), and
            // nothing past the first commit that overflowed the buffer of 5.
            #expect(outcome.0.first == 1 && isContiguous(outcome.0), "\(outcome.0)")
            #expect(outcome.0.count >= 5 && outcome.0.count < 200, "\(outcome.0)")
            let lagged = try #require(outcome.1, "the subscription ended without reporting the lag")
            #expect(lagged.lastSequence == outcome.0.last)
            // Resuming from there misses nothing.
            let resumed = try await collectEvents(scheduler, EventFilter(ownerID: "alice"), since: lagged.lastSequence) { $0.kind == .batchCompleted }
            #expect(resumed.first?.sequence == lagged.lastSequence + 1)
            #expect(isContiguous(resumed.map(\.sequence)))
            #expect(resumed.last?.sequence == (try await store.lastEventSequence()))
        }
    }

    @Test func shutdownEndsLiveSubscriptions() async throws {
        try await withTemporaryDirectory { directory in
            let store = try SQLiteStore(path: directory + "/fanout.db")
            let scheduler = try Scheduler(store: store, configuration: SchedulerConfiguration(agents: [AgentConfiguration(name: "echo", runner: "echo")]),
                                          runners: ["echo": EchoRunnerForTests()])
            try scheduler.start()
            let subscription = Task {
                var count = 0
                for try await _ in scheduler.subscribe(EventFilter(ownerID: ""), since: 0, follow: true, bufferSize: 100) { count += 1 }
                return count
            }
            try await waitUntil("the subscriber to register") { scheduler.statistics.subscribers == 1 }
            await scheduler.shutdown()
            let count = try await withDeadline(.seconds(2), "the subscription to end on shutdown") { try await subscription.value }
            #expect(count == 0)
        }
    }
}
