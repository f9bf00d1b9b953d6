import FanoutCore
import FanoutStore
import Foundation
import PostgresNIO

/// Claims and leases: every pending task a daemon reads to run is claimed for it
/// (`claimed_by`, `lease_expires_at`), so no other daemon runs it; the daemon
/// renews its leases while it lives, and a claim whose lease passed is
/// reclaimed by whichever daemon sees it first.
extension PostgresStore {
    /// The scheduler's window read claims what it returns: the cursor is not needed, a
    /// claimed task is no longer claimable. Highest priority first, then oldest.
    public func pendingTasks(batchID: BatchID, agent: String, after cursor: QueueCursor?, limit: Int,
                             inlinePayloadBytes: Int) async throws -> [RunnableTask] {
        let token = Int64.random(in: 1...Int64.max)
        let claim = ClaimStatements.claimPending(batchID: batchID, agent: agent, limit: limit, daemon: daemonID,
                                                 leaseMs: leaseMs, inlinePayloadBytes: inlinePayloadBytes, token: token)
        let tasks: [RunnableTask]
        do {
            tasks = try await rows(claim).map { row in
                let cells = row.makeRandomAccess()
                var task = try PostgresRows.runnable(row, batchID: batchID, ownerID: try cells["owner_id"].decode(String.self), agent: agent)
                task.payload = try cells.bytes("inline_payload")
                return task
            }
            if losesNextClaimAnswer.exchange(false, ordering: .relaxed) {
                throw FanoutError.unavailable("the answer to a claim was lost (a test's doing)")
            }
        } catch {
            // The claim may have been made with its answer lost: its rows go back, now or at the next heartbeat.
            lostClaims.withLock { $0.append((token, .now)) }
            await releaseLostClaims()
            throw error
        }
        return tasks.sorted { ($0.priority, $1.id) > ($1.priority, $0.id) }
    }

    /// Gives back the rows of claims whose answer was lost. Each is given back again at every
    /// heartbeat until a lease has passed: a claim the server was still running when its call
    /// failed commits later than the first attempt, which then found nothing to give back.
    func releaseLostClaims() async {
        let claims = lostClaims.withLock { $0 }
        for claim in claims {
            do {
                _ = try await rows(ClaimStatements.releaseLostClaim(daemon: daemonID, token: claim.token))
            } catch {
                logger.warning("giving back a claim whose answer was lost failed; trying again at the next heartbeat",
                               metadata: ["error": "\(error)"])
                return
            }
            if ContinuousClock.now - claim.since > .milliseconds(leaseMs) {
                lostClaims.withLock { $0.removeAll { $0.token == claim.token } }
            }
        }
    }

    public var claimsPendingTasks: Bool { true }

    public func sharedActiveBatches(agents: [String], limit: Int) async throws -> [SharedBatch] {
        try await rows(ClaimStatements.activeBatches(agents: agents, limit: limit)).map { row in
            SharedBatch(record: try PostgresRows.batch(row),
                        unclaimedAgents: try row.makeRandomAccess()["unclaimed_agents"].decode([String].self))
        }
    }

    public func requestCancelElsewhere(_ id: TaskID) async throws -> Bool {
        try await !rows(ClaimStatements.requestCancel(id, daemon: daemonID)).isEmpty
    }

    public func committedEvents(after: EventSequence, limit: Int) async throws -> [EventRecord] {
        // One statement, one snapshot: the events and the newest committed number agree.
        try await rows("""
            SELECT e.* FROM events e, event_log l WHERE e.sequence > \(after) AND e.sequence <= l.last_sequence
            ORDER BY e.sequence LIMIT \(limit)
            """).map(PostgresRows.event)
    }

    public func listenForCommittedEvents(_ onCommit: @escaping @Sendable () -> Void) async throws {
        do {
            try await client.withConnection { connection in
                try await connection.listen(on: Self.eventsChannel) { notifications in
                    for try await _ in notifications { onCommit() }
                }
            }
        } catch {
            throw Self.storeError(error)
        }
    }

    public func takeSharedRequests(agent: String, perMinute: Int, want: Int) async throws -> (granted: Int, retryAfterMs: Int64) {
        let logger = self.logger
        return try await transaction { connection in
            try await connection.query(ClaimStatements.createBucket(agent: agent, kind: "requests", perMinute: perMinute), logger: logger)
            let row = try await connection.query(ClaimStatements.takeRequests(agent: agent, perMinute: perMinute, want: want),
                                                 logger: logger).collect()
            guard let (granted, level) = try row.first?.decode((Int32, Double).self) else { return (0, 1_000) }
            // Until the level is back to one whole request.
            let wait = granted > 0 ? 0 : Int64(((1 - level) * 60_000 / Double(max(1, perMinute))).rounded(.up))
            return (Int(granted), max(0, wait))
        }
    }

    public func chargeSharedTokens(agent: String, perMinute: Int, tokens: Int64) async throws -> Int64 {
        let logger = self.logger
        return try await transaction { connection in
            try await connection.query(ClaimStatements.createBucket(agent: agent, kind: "tokens", perMinute: perMinute), logger: logger)
            let level = try await connection.query(ClaimStatements.chargeTokens(agent: agent, perMinute: perMinute, tokens: tokens),
                                                   logger: logger).collect().first?.decode(Double.self) ?? 0
            // Above zero: go on. Otherwise until a thousandth of a token is back, as `RateLimit` waits.
            guard level <= 0 else { return 0 }
            return Int64(((0.001 - level) * 60_000 / Double(max(1, perMinute))).rounded(.up))
        }
    }

    public func requestBatchClose(_ id: BatchID, as state: TaskState) async throws -> Bool {
        try await !rows("""
            UPDATE batches SET closing = \(state.rawValue)
            WHERE id = \(id) AND state IN ('pending', 'processing') AND closing IS NULL RETURNING 1
            """).isEmpty
    }

    public func cancelRequests(limit: Int) async throws -> [TaskID] {
        try await rows(ClaimStatements.cancelRequests(daemon: daemonID, limit: limit)).map { try $0.decode(Int64.self) }
    }

    public func releaseClaims(_ ids: [TaskID]) async throws {
        guard !ids.isEmpty else { return }
        _ = try await rows(ClaimStatements.releasePending(daemon: daemonID, ids: ids))
    }

    /// Once a lease: a claim's answer that has not arrived after a lease is lost for good.
    public var claimCheckInterval: Duration? { .milliseconds(leaseMs) }

    public func oldPendingClaims(limit: Int) async throws -> [PendingClaim] {
        try await rows(ClaimStatements.oldPendingClaims(daemon: daemonID, ageMs: leaseMs, limit: limit)).map { row in
            let (id, claimedAt) = try row.decode((Int64, Int64).self)
            return PendingClaim(taskID: id, claimedAt: claimedAt)
        }
    }

    public func releaseForgottenClaims(_ claims: [PendingClaim]) async throws {
        guard !claims.isEmpty else { return }
        _ = try await rows(ClaimStatements.releaseForgottenClaims(daemon: daemonID, claims))
    }

    /// Pushes back this daemon's leases and records its heartbeat; returns how many tasks it holds.
    /// Each statement commits on its own: the renewal holds its rows' locks only while the server
    /// runs it, not across round trips (a commit of this daemon waiting on them would wait for them).
    @discardableResult
    public func renewLeases() async throws -> Int {
        await releaseLostClaims()
        _ = try await rows(ClaimStatements.heartbeat(daemon: daemonID, host: Self.hostName, pid: getpid(), leaseMs: leaseMs))
        return try await rows(ClaimStatements.renewLeases(daemon: daemonID, leaseMs: leaseMs)).count
    }

    /// Forgets the daemons silent for ten of their leases, and their commit receipts: what it
    /// removes is long dead, so the lease loop runs it only now and then.
    func forgetSilentDaemons() async throws {
        _ = try await rows(ClaimStatements.forgetSilentDaemons)
        _ = try await rows(CommitReceipts.forgetOrphans)
    }

    /// Takes back the claims whose lease passed, from any daemon: waiting tasks return to the
    /// queue; a running task's attempt counts, as after a crash of a single daemon, and the task
    /// fails once its attempts are used up. The batches' counters are recounted from their rows.
    public func reclaimExpiredLeases(now: Milliseconds) async throws -> ReclaimedTasks {
        let logger = self.logger
        return try await transaction { connection in
            // Staging left by a daemon that died after its start-up (its own recovery never ran for it).
            let abandoned = try await connection.query(PostgresStatements.abandonedStagedBatches, logger: logger).collect()
                .map { try $0.decode(Int64.self) }
            if !abandoned.isEmpty {
                for statement in PostgresStatements.discardStagedBatches(abandoned) { try await connection.query(statement, logger: logger) }
            }
            var touched = Set<BatchID>()
            var waiting = 0
            for try await batch in try await connection.query(ClaimStatements.reclaimWaiting, logger: logger).decode(Int64.self) {
                touched.insert(batch)
                waiting += 1
            }
            var reclaimed = ReclaimedTasks()
            var requeue: [TaskID] = []
            for row in try await connection.query(ClaimStatements.expiredRunning, logger: logger).collect() {
                let (id, batchID, customID, attempt, maxAttempts, crashes, parentTaskID, daemon, ownerID, creator) =
                    try row.decode((Int64, Int64, String, Int32, Int32, Int32, Int64?, String?, String, Int64).self)
                touched.insert(batchID)
                guard attempt >= maxAttempts else {
                    requeue.append(id)
                    continue
                }
                let failure = TaskFailure(
                    message: "the fanoutd running this task (\(daemon ?? "unknown")) stopped renewing its lease, "
                        + "\(crashes + 1) time(s) in all; its \(maxAttempts) attempt(s) are used up (max_attempts)",
                    code: "interrupted", retryable: false)
                try await connection.query(ClaimStatements.failCrashed(id, failure: failure, now: now), logger: logger)
                reclaimed.failures.append(EventRecord(
                    kind: .taskFailed, timestamp: now, ownerID: ownerID, batchID: batchID, taskID: id, customID: customID,
                    parentTaskID: parentTaskID, attempt: Int(attempt), failure: failure, creatorUID: UInt32(truncatingIfNeeded: creator)))
            }
            if !requeue.isEmpty { try await connection.query(ClaimStatements.requeueCrashed(requeue), logger: logger) }
            var batchEvents = CommittedBatchEvents(fenced: [])
            if !touched.isEmpty {
                let ids = touched.sorted()
                try await connection.query(PostgresStatements.lockBatches(ids), logger: logger)
                try await connection.query(PostgresQuery(unsafeSQL: PostgresStatements.recountBatch + " WHERE id = ANY($1)",
                                                         binds: Self.bindings(ids)), logger: logger)
                // The last task of a batch may have failed here: then this pass ends the batch.
                for id in touched.sorted() {
                    if let ended = try await connection.query(PostgresStatements.finishIfDone(id, now: now), logger: logger).collect().first {
                        batchEvents.ended(try PostgresRows.batch(ended), at: now)
                    }
                }
            }
            reclaimed.failures = try await Self.insertEvents(batchEvents.rewrite(reclaimed.failures), on: connection, logger: logger)
            reclaimed.endedBatches = batchEvents.endedBatches.map(\.id)
            reclaimed.requeued = requeue.count
            reclaimed.released = waiting
            reclaimed.batches = touched.sorted()
            return reclaimed
        }
    }

    /// Inserts `events` under the events lock (see `eventsLockKey`); returns them with their sequences.
    static func insertEvents(_ events: [EventRecord], on connection: PostgresConnection, logger: Logger) async throws -> [EventRecord] {
        guard !events.isEmpty else { return [] }
        try await connection.query("SELECT pg_advisory_xact_lock(\(eventsLockKey))", logger: logger)
        var stored = events
        for start in stride(from: 0, to: events.count, by: PostgresStatements.eventsPerInsert) {
            let end = min(start + PostgresStatements.eventsPerInsert, events.count)
            let rows = try await connection.query(PostgresStatements.insertEvents(events[start..<end]), logger: logger).collect()
            for (offset, sequence) in try PostgresStatements.insertedSequences(rows).enumerated() { stored[start + offset].sequence = sequence }
        }
        try await connection.query(PostgresStatements.recordLastSequence(stored[stored.count - 1].sequence), logger: logger)
        try await connection.query(PostgresStatements.notifyEvents, logger: logger)
        return stored
    }

    private static func bindings(_ ids: [Int64]) -> PostgresBindings {
        var bindings = PostgresBindings()
        bindings.append(ids)
        return bindings
    }

    static let hostName = ProcessInfo.processInfo.hostName
}

/// What one reclaim pass took back.
public struct ReclaimedTasks: Sendable, Equatable {
    /// Waiting claims (pending or retry_wait) returned to the queue.
    public var released = 0
    /// Running tasks put back to pending, their attempt counted.
    public var requeued = 0
    /// The events committed: running tasks failed for good, and the end of batches this ended.
    public var failures: [EventRecord] = []
    /// The batches whose tasks changed, recounted.
    public var batches: [BatchID] = []
    /// The batches that ended because of it (their last task failed here).
    public var endedBatches: [BatchID] = []

    public init() {}
}
