import FanoutCore
import FanoutStore
import PostgresNIO

/// The statements of claiming: pending tasks taken by one daemon, their leases
/// renewed, released, and reclaimed from a daemon that stopped renewing them.
/// Lease times are the server's clock, never a daemon's: daemons on several
/// machines disagree on the time, the database is the one clock they share.
enum ClaimStatements {
    /// The server's wall clock in Unix milliseconds, as a SQL expression.
    static let serverNowMs = "(extract(epoch FROM clock_timestamp()) * 1000)::bigint"

    /// Claims up to `limit` unclaimed pending tasks of a batch and agent, highest priority
    /// first, then oldest; rows another daemon is claiming at the same moment are skipped,
    /// not waited for. The rows come back unordered (UPDATE … RETURNING keeps no order).
    /// `token` marks the rows this claim took, so that a claim whose answer was lost can be
    /// given back (`releaseLostClaim`).
    static func claimPending(batchID: BatchID, agent: String, limit: Int, daemon: String, leaseMs: Int,
                             inlinePayloadBytes: Int, token: Int64) -> PostgresQuery {
        var query = DynamicQuery("WITH claimable AS (SELECT id FROM tasks")
        query.sql += " WHERE batch_id = \(query.bind(batchID)) AND agent = \(query.bind(agent))"
        query.sql += " AND state = 'pending' AND claimed_by IS NULL"
        query.sql += " ORDER BY priority DESC, id LIMIT \(query.bind(limit)) FOR UPDATE SKIP LOCKED)"
        query.sql += " UPDATE tasks t SET claimed_by = \(query.bind(daemon)), claim_token = \(query.bind(token)),"
        query.sql += " claimed_at = \(serverNowMs), lease_expires_at = \(serverNowMs) + \(query.bind(leaseMs))"
        query.sql += " FROM claimable c, batches b WHERE t.id = c.id AND b.id = t.batch_id"
        query.sql += """
             RETURNING t.id, t.custom_id, t.priority, t.attempt, t.max_attempts, t.timeout_ms, t.turns_completed,
                t.max_turns, t.parent_task_id, t.url, b.owner_id
            """
        query.sql += ", CASE WHEN length(t.payload) <= \(query.bind(inlinePayloadBytes)) THEN t.payload END AS inline_payload"
        return query.query
    }

    /// The active batches, oldest first, each with which of `agents` have unclaimed tasks (one
    /// probe of the claimable index per batch and agent).
    static func activeBatches(agents: [String], limit: Int) -> PostgresQuery {
        """
        SELECT b.*, ARRAY(SELECT a.agent FROM unnest(\(agents)::text[]) AS a(agent) WHERE EXISTS (
                   SELECT 1 FROM tasks t WHERE t.batch_id = b.id AND t.agent = a.agent AND t.state = 'pending' AND t.claimed_by IS NULL)
               ORDER BY a.agent) AS unclaimed_agents
        FROM batches b WHERE b.state IN ('pending', 'processing') ORDER BY b.id LIMIT \(limit)
        """
    }

    /// Pushes back the expiry of the live claims of `daemon`; returns how many it renewed. Rows
    /// the daemon's own commit is changing are skipped, not waited for (waiting could deadlock with
    /// that commit, which locks them in another order): the change renews their lease itself.
    static func renewLeases(daemon: String, leaseMs: Int) -> PostgresQuery {
        """
        UPDATE tasks SET lease_expires_at = \(unescaped: serverNowMs) + \(leaseMs)
        WHERE id IN (SELECT id FROM tasks WHERE claimed_by = \(daemon) AND lease_expires_at IS NOT NULL FOR UPDATE SKIP LOCKED)
        RETURNING 1
        """
    }

    /// A claim is taken back only once its lease passed *and* its daemon has stopped beating:
    /// a daemon alive but slow to renew one row (a long commit held it) keeps its tasks.
    static let claimantSilent = """
        NOT EXISTS (SELECT 1 FROM daemons d WHERE d.id = t.claimed_by AND d.heartbeat_at + d.lease_ms > \(serverNowMs))
        """

    /// Records the daemon (or its heartbeat, when it is known already).
    static func heartbeat(daemon: String, host: String, pid: Int32, leaseMs: Int) -> PostgresQuery {
        """
        INSERT INTO daemons (id, host, pid, started_at, heartbeat_at, lease_ms)
        VALUES (\(daemon), \(host), \(pid), \(unescaped: serverNowMs), \(unescaped: serverNowMs), \(Int64(leaseMs)))
        ON CONFLICT (id) DO UPDATE SET heartbeat_at = excluded.heartbeat_at
        """
    }

    static func forgetDaemon(_ daemon: String) -> PostgresQuery {
        "DELETE FROM daemons WHERE id = \(daemon)"
    }

    /// Marks a cancel for the daemon holding a live task, when that is another daemon than
    /// `daemon`; returns a row when it did.
    static func requestCancel(_ id: TaskID, daemon: String) -> PostgresQuery {
        """
        UPDATE tasks SET cancel_requested = true
        WHERE id = \(id) AND lease_expires_at IS NOT NULL AND claimed_by <> \(daemon)
            AND state IN ('pending', 'running', 'waiting_children', 'retry_wait')
        RETURNING 1
        """
    }

    /// Tasks `daemon` holds that a cancel sent elsewhere asks it to stop.
    static func cancelRequests(daemon: String, limit: Int) -> PostgresQuery {
        """
        SELECT id FROM tasks WHERE claimed_by = \(daemon) AND cancel_requested AND lease_expires_at IS NOT NULL
        ORDER BY id LIMIT \(limit)
        """
    }

    /// Creates an agent's shared bucket of `kind` (requests, tokens), full, unless it exists.
    static func createBucket(agent: String, kind: String, perMinute: Int) -> PostgresQuery {
        """
        INSERT INTO rate_limits (agent, kind, level, updated_at) VALUES (\(agent), \(kind), \(Double(perMinute)), \(unescaped: serverNowMs))
        ON CONFLICT (agent, kind) DO NOTHING
        """
    }

    /// Refills the token bucket for the time passed and charges `tokens` to it (down to at most a
    /// day's debt, as `RateLimit`), under the row's lock; returns the level after.
    static func chargeTokens(agent: String, perMinute: Int, tokens: Int64) -> PostgresQuery {
        let perMinute = Double(max(1, perMinute))
        return """
            WITH clock AS (SELECT \(unescaped: serverNowMs) AS now),
                 bucket AS (SELECT least(\(perMinute), level + greatest(0, clock.now - updated_at) * \(perMinute) / 60000.0) AS level
                            FROM rate_limits, clock WHERE agent = \(agent) AND kind = 'tokens' FOR UPDATE OF rate_limits)
            UPDATE rate_limits SET level = greatest(bucket.level - \(Double(tokens)), -\(perMinute) * 1440), updated_at = clock.now
            FROM bucket, clock WHERE agent = \(agent) AND kind = 'tokens'
            RETURNING rate_limits.level
            """
    }

    /// Refills the bucket for the time passed (up to a minute's worth) and takes up to `want`
    /// whole requests from it, under the row's lock; returns what it took and what is left.
    static func takeRequests(agent: String, perMinute: Int, want: Int) -> PostgresQuery {
        let perMinute = Double(max(1, perMinute))
        return """
            WITH clock AS (SELECT \(unescaped: serverNowMs) AS now),
                 bucket AS (SELECT least(\(perMinute), level + greatest(0, clock.now - updated_at) * \(perMinute) / 60000.0) AS level
                            FROM rate_limits, clock WHERE agent = \(agent) AND kind = 'requests' FOR UPDATE OF rate_limits),
                 grant_ AS (SELECT level, greatest(0, least(\(want), floor(level)))::integer AS granted FROM bucket)
            UPDATE rate_limits SET level = grant_.level - grant_.granted, updated_at = clock.now
            FROM grant_, clock WHERE agent = \(agent) AND kind = 'requests'
            RETURNING grant_.granted, rate_limits.level
            """
    }

    /// Daemons not heard from for ten of their leases: gone, and their claims long reclaimed.
    static let forgetSilentDaemons = PostgresQuery(unsafeSQL: """
        DELETE FROM daemons WHERE heartbeat_at + lease_ms * 10 < \(serverNowMs)
        """)

    /// Gives back pending tasks `daemon` claimed but will not run (a window it dropped, or all of
    /// them when it stops): other daemons may claim them at once, without waiting for the lease.
    static func releasePending(daemon: String, ids: [TaskID]?) -> PostgresQuery {
        var query = DynamicQuery("UPDATE tasks SET claimed_by = NULL, lease_expires_at = NULL")
        query.sql += " WHERE claimed_by = \(query.bind(daemon)) AND state = 'pending' AND lease_expires_at IS NOT NULL"
        if let ids { query.sql += " AND id = ANY(\(query.bind(ids)))" }
        return query.query
    }

    /// The pending tasks `daemon` claimed more than `ageMs` ago, with when, at most `limit`, lowest
    /// id first. A claim made before claim times were kept counts as the oldest.
    static func oldPendingClaims(daemon: String, ageMs: Int, limit: Int) -> PostgresQuery {
        """
        SELECT id, coalesce(claimed_at, 0) FROM tasks
        WHERE claimed_by = \(daemon) AND lease_expires_at IS NOT NULL AND state = 'pending'
            AND coalesce(claimed_at, 0) < \(unescaped: serverNowMs) - \(ageMs)
        ORDER BY id LIMIT \(limit)
        """
    }

    /// Gives back the claims listed, each only if the task still carries that claim and is pending.
    static func releaseForgottenClaims(daemon: String, _ claims: [PendingClaim]) -> PostgresQuery {
        var query = DynamicQuery("UPDATE tasks t SET claimed_by = NULL, lease_expires_at = NULL FROM unnest(")
        query.sql += "\(query.bind(claims.map(\.taskID)))::bigint[], \(query.bind(claims.map(\.claimedAt)))::bigint[]) AS v(id, claimed_at)"
        query.sql += " WHERE t.id = v.id AND coalesce(t.claimed_at, 0) = v.claimed_at AND t.claimed_by = \(query.bind(daemon))"
        query.sql += " AND t.state = 'pending' AND t.lease_expires_at IS NOT NULL"
        return query.query
    }

    /// The rows a claim took whose answer never reached this daemon (the connection broke, or the
    /// call failed after the server ran it): its scheduler does not know them, so they go back.
    static func releaseLostClaim(daemon: String, token: Int64) -> PostgresQuery {
        """
        UPDATE tasks SET claimed_by = NULL, lease_expires_at = NULL, claim_token = NULL
        WHERE claimed_by = \(daemon) AND claim_token = \(token) AND state = 'pending' AND lease_expires_at IS NOT NULL
        """
    }

    /// Claims whose lease passed while their task waited (pending in a window, or in retry_wait):
    /// back to the queue, unclaimed; nothing ran, so no attempt is counted.
    static let reclaimWaiting = PostgresQuery(unsafeSQL: """
        UPDATE tasks t SET state = 'pending', claimed_by = NULL, lease_expires_at = NULL
        WHERE t.id IN (SELECT t.id FROM tasks t WHERE t.lease_expires_at < \(serverNowMs) AND t.state IN ('pending', 'retry_wait')
                       AND \(claimantSilent) FOR UPDATE SKIP LOCKED)
        RETURNING t.batch_id
        """)

    /// Running tasks whose lease passed: their daemon died (or lost the database) mid-attempt.
    /// A task it left waiting for its children counts the same: the attempt that waited is gone,
    /// and the task runs again from the start. Locked, so two daemons reclaiming at once take
    /// each task once.
    static let expiredRunning = PostgresQuery(unsafeSQL: """
        SELECT t.id, t.batch_id, t.custom_id, t.attempt, t.max_attempts, t.crashes, t.parent_task_id, t.claimed_by,
               b.owner_id, b.creator_uid
        FROM tasks t JOIN batches b ON b.id = t.batch_id
        WHERE t.lease_expires_at < \(serverNowMs) AND t.state IN ('running', 'waiting_children') AND \(claimantSilent)
        ORDER BY t.id
        FOR UPDATE OF t SKIP LOCKED
        """)

    /// The attempt a dead daemon was running counts: the task runs again, unclaimed.
    static func requeueCrashed(_ ids: [TaskID]) -> PostgresQuery {
        """
        UPDATE tasks SET state = 'pending', crashes = crashes + 1, claimed_by = NULL, lease_expires_at = NULL
        WHERE id = ANY(\(ids))
        """
    }

    /// The attempt a dead daemon was running was its last: the task fails, saying why.
    static func failCrashed(_ id: TaskID, failure: TaskFailure, now: Milliseconds) -> PostgresQuery {
        """
        UPDATE tasks SET state = 'failed', crashes = crashes + 1, error_message = \(failure.message),
            error_code = \(failure.code), error_retryable = false, finished_at = \(now), lease_expires_at = NULL
        WHERE id = \(id)
        """
    }
}
