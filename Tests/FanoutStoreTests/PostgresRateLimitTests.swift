import FanoutCore
@testable import FanoutPostgresStore
import FanoutStore
import FanoutTestSupport
import Testing

/// Per-agent rate limits shared by every daemon on one PostgreSQL database.
@Suite(.postgresServer) struct PostgresRateLimitTests {
    @Test func daemonsTakingRequestsAtOnceNeverGetMoreThanTheBucketHolds() async throws {
        try await PostgresTestServer.current().withStore(database: "rate_requests") { store in
            try await store.withPeer { peer in
                // A full bucket holds a minute's worth: 600. Two daemons ask for 50 at a time, at once.
                let started = ContinuousClock.now
                let granted = try await withThrowingTaskGroup(of: Int.self) { group in
                    for daemon in [store, peer] {
                        group.addTask {
                            var total = 0
                            for _ in 0..<8 { total += try await daemon.takeSharedRequests(agent: "llm", perMinute: 600, want: 50).granted }
                            return total
                        }
                    }
                    return try await group.reduce(0, +)
                }
                // 800 asked; 600 there, plus the refill (10 a second) while they asked.
                let refill = Int((ContinuousClock.now - started) / .milliseconds(100)) + 1
                #expect(granted >= 600 && granted <= 600 + refill, "granted \(granted), refill at most \(refill)")
                // Ten seconds short of one request (as after a debt): nothing, and how long until the next.
                _ = try await store.rows("UPDATE rate_limits SET level = -99, updated_at = \(unescaped: ClaimStatements.serverNowMs)")
                let empty = try await peer.takeSharedRequests(agent: "llm", perMinute: 600, want: 5)
                #expect(empty.granted == 0 && empty.retryAfterMs > 5_000 && empty.retryAfterMs <= 10_000, "\(empty)")
                // Other agents have their own buckets.
                #expect(try await store.takeSharedRequests(agent: "other", perMinute: 60, want: 5).granted == 5)
            }
        }
    }

    @Test func tokensChargedByOneDaemonHoldBackTheOthers() async throws {
        try await PostgresTestServer.current().withStore(database: "rate_tokens") { store in
            try await store.withPeer { peer in
                // 60,000 tokens a minute, 1,000 a second: a charge of 70,000 leaves a debt of about 10 s.
                #expect(try await store.chargeSharedTokens(agent: "llm", perMinute: 60_000, tokens: 1_000) == 0)
                let wait = try await store.chargeSharedTokens(agent: "llm", perMinute: 60_000, tokens: 69_000)
                #expect(wait > 9_000 && wait <= 10_001, "wait \(wait) ms")
                // The other daemon, only looking, sees the same debt.
                let seen = try await peer.chargeSharedTokens(agent: "llm", perMinute: 60_000, tokens: 0)
                // Less by the time that passed between the two calls (seconds, on a loaded machine).
                #expect(seen > 0 && seen <= wait, "seen \(seen) ms")
            }
        }
    }
}
