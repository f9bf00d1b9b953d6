import FanoutCore
import FanoutStore
import FanoutTestSupport
import Foundation
import Testing

/// Event retention in both stores: `trimEvents` by count and by age, in
/// bounded steps, always from the oldest end; `firstEventSequence` and
/// `eventPage(...).firstAvailable` after a trim.
@Suite(.postgresServer) struct EventRetentionStoreTests {
    /// Appends one event per timestamp through ordinary commits (a few per commit); returns their sequences.
    @discardableResult
    func append(_ store: any Store, timestamps: [Milliseconds], owner: String = "alice") throws -> [EventSequence] {
        var sequences: [EventSequence] = []
        var index = 0
        while index < timestamps.count {
            var changes = ChangeSet()
            for timestamp in timestamps[index..<min(index + 7, timestamps.count)] {
                changes.events.append(taskEvent(.taskCompleted, owner: owner, batch: 1, task: TaskID(index + 1), at: timestamp))
                index += 1
            }
            sequences += try store.writer.commit(changes).map(\.sequence)
        }
        return sequences
    }

    func storedSequences(_ store: any Store) async throws -> [EventSequence] {
        try await store.events(after: 0, upTo: nil, filter: EventFilter(ownerID: ""), limit: 1_000_000).map(\.sequence)
    }

    @Test(arguments: StoreKind.allCases) func trimsByCountKeepingTheNewest(on kind: StoreKind) async throws {
        try await withFreshStore(on: kind) { store async throws in
            #expect(try await store.firstEventSequence() == nil)
            #expect(try store.writer.trimEvents(keepingLast: 10, olderThan: nil, limit: 1_000) == 0)
            let sequences = try append(store, timestamps: Array(repeating: 1_000, count: 100))
            #expect(sequences == Array(1...100))
            #expect(try await store.firstEventSequence() == 1)

            #expect(try store.writer.trimEvents(keepingLast: 30, olderThan: nil, limit: 1_000) == 70)
            #expect(try await storedSequences(store) == Array(71...100))
            #expect(try await store.firstEventSequence() == 71)
            #expect(try await store.lastEventSequence() == 100)
            // Nothing more is due.
            #expect(try store.writer.trimEvents(keepingLast: 30, olderThan: nil, limit: 1_000) == 0)
            #expect(try store.writer.trimEvents(keepingLast: 1_000, olderThan: nil, limit: 1_000) == 0)
            #expect(try store.writer.trimEvents(keepingLast: 1_000, olderThan: nil, limit: .max) == 0)
            // No rule: nothing happens.
            #expect(try store.writer.trimEvents(keepingLast: nil, olderThan: nil, limit: 1_000) == 0)
            #expect(try await store.firstEventSequence() == 71)

            // New events continue the numbering, and the count is of the newest.
            try append(store, timestamps: Array(repeating: 2_000, count: 5))
            #expect(try store.writer.trimEvents(keepingLast: 30, olderThan: nil, limit: .max) == 5)
            #expect(try await storedSequences(store) == Array(76...105))
        }
    }

    @Test(arguments: StoreKind.allCases) func stepsAreBoundedByTheLimit(on kind: StoreKind) async throws {
        try await withFreshStore(on: kind) { store async throws in
            try append(store, timestamps: Array(repeating: 1_000, count: 100))
            var steps: [Int] = []
            var firsts: [EventSequence?] = []
            while true {
                let deleted = try store.writer.trimEvents(keepingLast: 10, olderThan: nil, limit: 25)
                steps.append(deleted)
                firsts.append(try await store.firstEventSequence())
                if deleted < 25 { break }
            }
            #expect(steps == [25, 25, 25, 15])
            #expect(firsts == [26, 51, 76, 91])
            #expect(try await storedSequences(store) == Array(91...100))

            // The age rule is bounded the same way.
            try append(store, timestamps: Array(repeating: 1_000, count: 50))  // 101...150, all old
            #expect(try store.writer.trimEvents(keepingLast: nil, olderThan: 5_000, limit: 7) == 7)
            #expect(try await store.firstEventSequence() == 98)
            #expect(try store.writer.trimEvents(keepingLast: nil, olderThan: 5_000, limit: 1) == 1)
            #expect(try await store.firstEventSequence() == 99)
        }
    }

    @Test(arguments: StoreKind.allCases) func trimsByAge(on kind: StoreKind) async throws {
        try await withFreshStore(on: kind) { store async throws in
            // Event i (1-based) happened at 1,000 + 10·i ms.
            try append(store, timestamps: (1...50).map { 1_000 + 10 * Milliseconds($0) })
            // Older than 1,200: events 1...19 (timestamps 1,010...1,190); event 20 is exactly 1,200 and stays.
            #expect(try store.writer.trimEvents(keepingLast: nil, olderThan: 1_200, limit: 10_000) == 19)
            #expect(try await store.firstEventSequence() == 20)
            #expect(try store.writer.trimEvents(keepingLast: nil, olderThan: 1_200, limit: 10_000) == 0)
            #expect(try await storedSequences(store) == Array(20...50))

            // Both rules: whichever removes more wins.
            #expect(try store.writer.trimEvents(keepingLast: 25, olderThan: 1_230, limit: 10_000) == 6)  // count: 20...25
            #expect(try await store.firstEventSequence() == 26)
            #expect(try store.writer.trimEvents(keepingLast: 25, olderThan: 1_300, limit: 10_000) == 4)  // age: 26...29
            #expect(try await store.firstEventSequence() == 30)
        }
    }

    @Test(arguments: StoreKind.allCases) func ageTrimStopsAtTheFirstYoungEvent(on kind: StoreKind) async throws {
        try await withFreshStore(on: kind) { store async throws in
            // A clock that stepped back: event 3 is young, 4 and 5 look old again.
            try append(store, timestamps: [100, 200, 9_000, 300, 400, 9_100])
            #expect(try store.writer.trimEvents(keepingLast: nil, olderThan: 5_000, limit: 100) == 2)
            // The log stays an unbroken run of sequence numbers.
            #expect(try await storedSequences(store) == [3, 4, 5, 6])
        }
    }

    @Test func trimmingEveryEventKeepsTheNumbering() async throws {
        try await withStore { (store, path) async throws in
            try append(store, timestamps: Array(repeating: 1_000, count: 12))
            #expect(try store.trimEvents(keepingLast: nil, olderThan: 2_000, limit: 100) == 12)
            #expect(try await store.firstEventSequence() == nil)
            #expect(try await storedSequences(store).isEmpty)
            // The newest sequence is still known, so subscribers and ServerInfo do not go back to 0.
            #expect(try await store.lastEventSequence() == 12)
            let empty = try await store.eventPage(after: 0, upTo: nil, filter: EventFilter(ownerID: ""), limit: 10)
            #expect(empty.events.isEmpty)
            #expect(empty.firstAvailable == 13)

            // Also after a restart; and new events never reuse a number.
            let reopened = try SQLiteStore(path: path)
            #expect(try await reopened.lastEventSequence() == 12)
            #expect(try append(reopened, timestamps: [3_000]) == [13])
            #expect(try await reopened.firstEventSequence() == 13)
            #expect(try reopened.trimEvents(keepingLast: 0, olderThan: nil, limit: 100) == 1)
            #expect(try await reopened.lastEventSequence() == 13)
        }
    }

    @Test(arguments: StoreKind.allCases) func eventPageReportsTheOldestStoredEvent(on kind: StoreKind) async throws {
        try await withFreshStore(on: kind) { store async throws in
            let fresh = try await store.eventPage(after: 0, upTo: nil, filter: EventFilter(ownerID: ""), limit: 10)
            #expect(fresh.events.isEmpty)
            #expect(fresh.firstAvailable == 1)

            try append(store, timestamps: Array(repeating: 1_000, count: 20), owner: "alice")
            try append(store, timestamps: Array(repeating: 1_000, count: 20), owner: "bob")
            #expect(try store.writer.trimEvents(keepingLast: 30, olderThan: nil, limit: 100) == 10)
            let page = try await store.eventPage(after: 0, upTo: 35, filter: EventFilter(ownerID: "bob"), limit: 4)
            #expect(page.events.map(\.sequence) == [21, 22, 23, 24])
            #expect(page.firstAvailable == 11)
            let alice = try await store.eventPage(after: 5, upTo: nil, filter: EventFilter(ownerID: "alice"), limit: 100)
            #expect(alice.events.map(\.sequence) == Array(11...20))
            #expect(alice.firstAvailable == 11)
        }
    }

    /// A default-sized step over a big log stays quick, so it never holds the writer for long.
    @Test func aFullStepIsQuick() async throws {
        try await withStore { (store, _) async throws in
            var changes = ChangeSet()
            for index in 0..<20_000 {
                changes.events.append(taskEvent(.taskCompleted, batch: 1, task: TaskID(index + 1), at: Milliseconds(index)))
            }
            _ = try store.commit(changes)
            let clock = ContinuousClock()
            var deleted = 0
            let elapsed = try clock.measure {
                deleted = try store.trimEvents(keepingLast: 1_000, olderThan: 15_000, limit: 10_000)
            }
            #expect(deleted == 10_000)
            #expect(try await store.firstEventSequence() == 10_001)
            #expect(elapsed < .seconds(1), "one 10,000-row step took \(elapsed)")
        }
    }
}
