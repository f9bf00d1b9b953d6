import FanoutCore
import Testing

@Suite struct BackoffTests {
    let backoff = Backoff(baseMs: 100, maxMs: 1_000)

    @Test func defaults() {
        let backoff = Backoff()
        #expect(backoff.baseMs == 500)
        #expect(backoff.maxMs == 60_000)
    }

    @Test func growsExponentiallyFromTheFirstRetry() {
        // jitter 1 gives the top of the window: base × 2^(attempt-2).
        #expect(backoff.delay(beforeAttempt: 2, jitter: 1) == 100)
        #expect(backoff.delay(beforeAttempt: 3, jitter: 1) == 200)
        #expect(backoff.delay(beforeAttempt: 4, jitter: 1) == 400)
        #expect(backoff.delay(beforeAttempt: 5, jitter: 1) == 800)
    }

    @Test func isCappedAtMax() {
        #expect(backoff.delay(beforeAttempt: 6, jitter: 1) == 1_000)
        #expect(backoff.delay(beforeAttempt: 7, jitter: 1) == 1_000)
        #expect(backoff.delay(beforeAttempt: 40, jitter: 1) == 1_000)
        #expect(backoff.delay(beforeAttempt: Int.max, jitter: 1) == 1_000)
        #expect(backoff.delay(beforeAttempt: 40, jitter: 0) == 500)
    }

    @Test func attemptsBeforeTheSecondUseTheBase() {
        #expect(backoff.delay(beforeAttempt: 1, jitter: 1) == 100)
        #expect(backoff.delay(beforeAttempt: 0, jitter: 1) == 100)
        #expect(backoff.delay(beforeAttempt: -5, jitter: 1) == 100)
    }

    @Test func jitterPicksTheUpperHalfOfTheWindow() {
        #expect(backoff.delay(beforeAttempt: 2, jitter: 0) == 50)
        #expect(backoff.delay(beforeAttempt: 2, jitter: 0.5) == 75)
        #expect(backoff.delay(beforeAttempt: 3, jitter: 0) == 100)
        #expect(backoff.delay(beforeAttempt: 3, jitter: 0.5) == 150)
    }

    @Test func jitterOutsideZeroOneIsClamped() {
        #expect(backoff.delay(beforeAttempt: 2, jitter: -3) == 50)
        #expect(backoff.delay(beforeAttempt: 2, jitter: 7) == 100)
        #expect(backoff.delay(beforeAttempt: 2, jitter: .infinity) == 100)
    }

    @Test func randomJitterStaysWithinBounds() {
        var generator = SystemRandomNumberGenerator()
        for attempt in 2...8 {
            let ceiling = min(Int64(1_000), Int64(100) << Int64(attempt - 2))
            for _ in 0..<200 {
                let delay = backoff.delay(beforeAttempt: attempt, jitter: Double.random(in: 0...1, using: &generator))
                #expect(delay >= ceiling / 2 && delay <= ceiling, "attempt \(attempt): \(delay)")
            }
        }
    }

    @Test func retryAfterIsHonoured() {
        // Longer than the backoff (even beyond the cap): the provider's wish wins.
        #expect(backoff.delay(beforeAttempt: 2, jitter: 1, retryAfterMs: 5_000) == 5_000)
        #expect(backoff.delay(beforeAttempt: 2, jitter: 0, retryAfterMs: 51) == 51)
        // Shorter: the backoff still applies.
        #expect(backoff.delay(beforeAttempt: 3, jitter: 1, retryAfterMs: 10) == 200)
        #expect(backoff.delay(beforeAttempt: 3, jitter: 1, retryAfterMs: nil) == 200)
    }
}

@Suite struct EventFilterTests {
    func event(_ kind: EventKind, owner: String = "alice", batch: BatchID = 1) -> EventRecord {
        EventRecord(kind: kind, timestamp: 0, ownerID: owner, batchID: batch)
    }

    @Test func emptyFilterMatchesEverything() {
        let filter = EventFilter(ownerID: "")
        for kind in EventKind.allCases {
            #expect(filter.matches(event(kind, owner: "x", batch: 42)))
        }
    }

    @Test func ownerBatchAndKinds() {
        let filter = EventFilter(ownerID: "alice", kinds: [.taskCompleted, .batchCompleted], batchID: 7)
        #expect(filter.matches(event(.taskCompleted, batch: 7)))
        #expect(filter.matches(event(.batchCompleted, batch: 7)))
        #expect(!filter.matches(event(.taskStarted, batch: 7)))
        #expect(!filter.matches(event(.taskCompleted, owner: "bob", batch: 7)))
        #expect(!filter.matches(event(.taskCompleted, batch: 8)))
    }

    @Test func ownerOnly() {
        let filter = EventFilter(ownerID: "bob")
        #expect(filter.matches(event(.batchProgress, owner: "bob", batch: 3)))
        #expect(!filter.matches(event(.batchProgress, owner: "alice", batch: 3)))
        #expect(!filter.matches(event(.batchProgress, owner: "bobby", batch: 3)))
    }
}
