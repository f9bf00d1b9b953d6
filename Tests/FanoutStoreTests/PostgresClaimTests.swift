import FanoutCore
@testable import FanoutPostgresStore
import FanoutStore
import FanoutTestSupport
import PostgresNIO
import Testing

/// Claims and leases on a real PostgreSQL: several daemons' views of one database.
@Suite(.postgresServer) struct PostgresClaimTests {
    func withStore<T: Sendable>(_ name: String, leaseMs: Int = PostgresStore.defaultLeaseMs,
                                _ body: @Sendable (PostgresStore) async throws -> T) async throws -> T {
        try await PostgresTestServer.current().withStore(database: name, leaseMs: leaseMs, body)
    }

    /// Who holds each task of a batch, and the state it is in.
    func claims(_ store: PostgresStore, batch: BatchID) async throws -> [TaskID: (state: String, claimedBy: String?, leased: Bool)] {
        var claims: [TaskID: (String, String?, Bool)] = [:]
        for row in try await store.rows("SELECT id, state, claimed_by, lease_expires_at IS NOT NULL FROM tasks WHERE batch_id = \(batch)") {
            let (id, state, claimedBy, leased) = try row.decode((Int64, String, String?, Bool).self)
            claims[id] = (state, claimedBy, leased)
        }
        return claims
    }

    /// A claim the server made but whose answer never came: the daemon does not know those tasks, and
    /// would renew their leases for as long as it lives while nobody ran them. They go back at once.
    @Test func theTasksOfAClaimWhoseAnswerWasLostGoBackToTheQueue() async throws {
        try await withStore("claims_lost") { store in
            let inserted = try store.insertBatch(newBatch(count: 5), now: 1_000)
            store.losesNextClaimAnswer.store(true, ordering: .relaxed)
            await #expect(throws: (any Error).self) {
                try await store.pendingTasks(batchID: inserted.batch.id, agent: "echo", after: nil, limit: 3, inlinePayloadBytes: 0)
            }
            #expect(try await claims(store, batch: inserted.batch.id).values.allSatisfy { $0.claimedBy == nil && !$0.leased })
            #expect(try await store.renewLeases() == 0)
            // Another daemon (or this one's next read) takes them all.
            try await store.withPeer { peer in
                let taken = try await peer.pendingTasks(batchID: inserted.batch.id, agent: "echo", after: nil, limit: 10, inlinePayloadBytes: 0)
                #expect(Set(taken.map(\.id)) == Set(inserted.taskIDs))
            }
        }
    }

    /// The scheduler's claim check lists this daemon's claims on pending tasks older than a lease,
    /// and gives back a claim only as listed: a task claimed again since keeps its new claim.
    @Test func oldPendingClaimsAreListedWithTheirTimeAndGivenBackOnlyAsListed() async throws {
        try await withStore("claims_old", leaseMs: 60_000) { store in
            let inserted = try store.insertBatch(newBatch(count: 6), now: 1_000)
            let ids = inserted.taskIDs.sorted()
            let claimed = try await store.pendingTasks(batchID: inserted.batch.id, agent: "echo", after: nil, limit: 5, inlinePayloadBytes: 0)
            #expect(claimed.count == 5)
            // Fresh claims are not listed: their answers may still be on the way.
            #expect(try await store.oldPendingClaims(limit: 100).isEmpty)
            // Made long ago: tasks 0–3. Task 3 then started (no longer pending); task 4's claim stays fresh;
            // task 5 is claimed by another daemon, long ago.
            let claimedIDs = claimed.map(\.id).sorted()
            _ = try await store.rows("UPDATE tasks SET claimed_at = 1000 WHERE id = ANY(\(Array(claimedIDs.prefix(4))))")
            var changes = ChangeSet()
            changes.tasks = [.started(claimedIDs[3], attempt: 1, at: 2_000)]
            _ = try store.commit(changes)
            let other = try #require(ids.first { !claimedIDs.contains($0) })
            _ = try await store.rows("""
                UPDATE tasks SET claimed_by = 'another', claimed_at = 1000, lease_expires_at = \(unescaped: ClaimStatements.serverNowMs) + 60000
                WHERE id = \(other)
                """)
            let old = try await store.oldPendingClaims(limit: 100)
            #expect(old == claimedIDs.prefix(3).map { PendingClaim(taskID: $0, claimedAt: 1_000) })
            #expect(try await store.oldPendingClaims(limit: 2).count == 2)

            // Task 1 was given back and claimed again (a new claim, a new time) before the give-back came.
            _ = try await store.rows("UPDATE tasks SET claimed_at = 2000 WHERE id = \(claimedIDs[1])")
            try await store.releaseForgottenClaims(old)
            let held = try await claims(store, batch: inserted.batch.id)
            #expect(held[claimedIDs[0]]?.claimedBy == nil && held[claimedIDs[0]]?.leased == false)
            #expect(held[claimedIDs[1]]?.claimedBy == store.daemonID, "the newer claim was given back")
            #expect(held[claimedIDs[2]]?.claimedBy == nil)
            #expect(held[claimedIDs[3]]?.state == "running" && held[claimedIDs[3]]?.claimedBy == store.daemonID)
            #expect(held[claimedIDs[4]]?.claimedBy == store.daemonID)
            #expect(held[other]?.claimedBy == "another")
        }
    }

    /// A daemon silent for ten of its leases is forgotten, with its commit receipt; live ones stay.
    @Test func daemonsSilentForTenLeasesAreForgottenWithTheirReceipts() async throws {
        try await withStore("claims_forget") { store in
            _ = try await store.renewLeases()
            _ = try await store.rows("""
                INSERT INTO daemons (id, host, pid, started_at, heartbeat_at, lease_ms) VALUES
                    ('gone', 'h', 1, 0, \(unescaped: ClaimStatements.serverNowMs) - 11000, 1000),
                    ('quiet', 'h', 2, 0, \(unescaped: ClaimStatements.serverNowMs) - 9000, 1000)
                """)
            _ = try await store.rows("INSERT INTO commit_receipts (daemon, last_commit) VALUES ('gone', 7), ('quiet', 3)")
            try await store.forgetSilentDaemons()
            let daemons = try await store.rows("SELECT id FROM daemons ORDER BY id").map { try $0.decode(String.self) }
            #expect(daemons == [store.daemonID, "quiet"].sorted())
            let receipts = try await store.rows("SELECT daemon FROM commit_receipts").map { try $0.decode(String.self) }
            #expect(receipts == ["quiet"])
        }
    }

    @Test func daemonsClaimingAtOnceTakeEveryTaskExactlyOnceInPriorityOrder() async throws {
        try await withStore("claims_concurrent") { store in
            let inserted = try store.insertBatch(newBatch(count: 3_000), now: 1_000)
            let batchID = inserted.batch.id
            try await store.withPeer { second in
                try await store.withPeer { third in
                    #expect(Set([store.daemonID, second.daemonID, third.daemonID]).count == 3)
                    // Three daemons claim pages of 50 until nothing is left, all at once.
                    let taken = try await withThrowingTaskGroup(of: (String, [[RunnableTask]]).self) { group in
                        for daemon in [store, second, third] {
                            group.addTask {
                                var pages: [[RunnableTask]] = []
                                while true {
                                    let page = try await daemon.pendingTasks(batchID: batchID, agent: "echo", after: nil, limit: 50,
                                                                             inlinePayloadBytes: 0)
                                    if page.isEmpty { break }
                                    pages.append(page)
                                }
                                return (daemon.daemonID, pages)
                            }
                        }
                        return try await group.reduce(into: [:]) { $0[$1.0] = $1.1 }
                    }
                    let all = taken.values.flatMap { $0.flatMap { $0 } }
                    #expect(all.count == 3_000, "claimed \(all.count) of 3,000")
                    #expect(Set(all.map(\.id)) == Set(inserted.taskIDs), "a task claimed twice or never")
                    // Each page in the store's order: highest priority first, then oldest.
                    for page in taken.values.flatMap({ $0 }) {
                        #expect(page == page.sorted { ($0.priority, $1.id) > ($1.priority, $0.id) })
                    }
                    // The database says the same: every task claimed, by the daemon that got it, with a lease.
                    let held = try await claims(store, batch: batchID)
                    for (daemon, pages) in taken {
                        for task in pages.flatMap({ $0 }) {
                            #expect(held[task.id]?.claimedBy == daemon && held[task.id]?.leased == true)
                        }
                    }
                    #expect(taken.values.filter { !$0.isEmpty }.count >= 2, "one daemon took everything: the claims did not overlap")
                }
            }
        }
    }

    @Test func releasedClaimsAndAClosedDaemonsClaimsAreClaimableAtOnce() async throws {
        try await PostgresTestServer.current().createDatabase(named: "claims_release")
        let location = try PostgresLocation(url: try PostgresTestServer.current().connectionURL(database: "claims_release"))
        let first = PostgresStore(location: location)
        let (batchID, kept) = try await first.withRunning {
            let batchID = try first.insertBatch(newBatch(count: 10), now: 1_000).batch.id
            let window = try await first.pendingTasks(batchID: batchID, agent: "echo", after: nil, limit: 6, inlinePayloadBytes: 0)
            // A window the scheduler dropped goes back at once.
            try await first.releaseClaims(window.suffix(2).map(\.id))
            try await first.withPeer { peer in
                let other = try await peer.pendingTasks(batchID: batchID, agent: "echo", after: nil, limit: 100, inlinePayloadBytes: 0)
                #expect(Set(other.map(\.id)).isDisjoint(with: window.prefix(4).map(\.id)))
                #expect(other.count == 6)
                try await peer.releaseClaims(other.map(\.id))
            }
            // Started tasks are not pending: releasing them changes nothing.
            var changes = ChangeSet()
            changes.tasks = [.started(window[0].id, attempt: 1, at: 2_000)]
            _ = try first.commit(changes)
            try await first.releaseClaims([window[0].id])
            return (batchID, Array(window.prefix(4)))
        }
        // Closed: its pending claims went back; the one it ran stays its own.
        let store = PostgresStore(location: location)
        try await store.withRunning {
            let held = try await claims(store, batch: batchID)
            #expect(held[kept[0].id]?.state == "running" && held[kept[0].id]?.claimedBy == first.daemonID)
            for task in kept.dropFirst() { #expect(held[task.id]?.claimedBy == nil, "task \(task.id) still claimed after close") }
            #expect(try await store.rows("SELECT id FROM daemons").map { try $0.decode(String.self) } == [store.daemonID])
        }
    }

    @Test func renewedLeasesHoldAndExpiredOnesAreReclaimedCountingTheAttempt() async throws {
        try await withStore("claims_reclaim", leaseMs: 60_000) { store in
            let inserted = try store.insertBatch(newBatch(count: 8), now: 1_000)
            let (batchID, ids) = (inserted.batch.id, inserted.taskIDs)
            // This daemon's own claims, about to expire: a renewal pushes them a lease ahead.
            let mine = try await store.pendingTasks(batchID: batchID, agent: "echo", after: nil, limit: 2, inlinePayloadBytes: 0)
            _ = try await store.rows("UPDATE tasks SET lease_expires_at = \(unescaped: ClaimStatements.serverNowMs) + 500 WHERE id = ANY(\(mine.map(\.id)))")
            #expect(try await store.renewLeases() == 2)
            let ahead = try await store.rows("""
                SELECT count(*) FROM tasks WHERE id = ANY(\(mine.map(\.id))) AND lease_expires_at > \(unescaped: ClaimStatements.serverNowMs) + 50000
                """)
            #expect(try ahead.first?.decode(Int64.self) == 2)
            // A daemon that died: two claims waiting in its window, one retry waiting, three running
            // (one on its last attempt), its leases already passed.
            let dead = ids.filter { id in !mine.contains { $0.id == id } }
            _ = try await store.rows("""
                UPDATE tasks SET claimed_by = 'dead-daemon', lease_expires_at = 0,
                    state = CASE WHEN id = ANY(\(Array(dead[0..<2]))) THEN 'pending' WHEN id = \(dead[2]) THEN 'retry_wait' ELSE 'running' END,
                    attempt = CASE WHEN id = \(dead[5]) THEN max_attempts ELSE 1 END
                WHERE id = ANY(\(Array(dead)))
                """)

            let reclaimed = try await store.reclaimExpiredLeases(now: 5_000)
            #expect(reclaimed.released == 3 && reclaimed.requeued == 2 && reclaimed.failures.map(\.taskID) == [dead[5]])
            let held = try await claims(store, batch: batchID)
            for task in mine { #expect(held[task.id]?.claimedBy == store.daemonID && held[task.id]?.leased == true) }
            for id in dead[0..<5] { #expect(held[id]?.state == "pending" && held[id]?.claimedBy == nil && held[id]?.leased == false) }
            #expect(held[dead[5]]?.state == "failed" && held[dead[5]]?.leased == false)
            let failed = try #require(try await store.task(dead[5], includePayload: false))
            #expect(failed.failure?.code == "interrupted")
            #expect(failed.failure?.message.contains("dead-daemon") == true, "\(String(describing: failed.failure))")
            let crashes = try await store.rows("SELECT id, crashes FROM tasks WHERE batch_id = \(batchID) AND crashes > 0 ORDER BY id")
                .map { try $0.decode((Int64, Int32).self) }
            #expect(crashes.map(\.0) == Array(dead[3...5]), "only the running tasks' attempts count")

            // One failure event, committed with the next sequence; the counters recounted from the rows.
            let events = try await store.events(after: 0, upTo: nil, filter: EventFilter(ownerID: ""), limit: 10)
            #expect(events.map(\.kind) == [.taskFailed] && events.first?.taskID == dead[5])
            #expect(reclaimed.failures.map(\.sequence) == events.map(\.sequence))
            let batch = try #require(try await store.batch(batchID))
            #expect(batch.counters.pending == 7 && batch.counters.failed == 1 && batch.counters.running == 0)

            // A pass with nothing expired takes nothing back.
            #expect(try await store.reclaimExpiredLeases(now: 6_000) == ReclaimedTasks())
        }
    }
}
