import FanoutCore
import FanoutStore

/// Following a store other daemons share (decision 51): the work they enqueue, cancel and end,
/// and this daemon's own claims.
extension Scheduler {
    /// On a store other daemons share: adopts batches with tasks nobody claimed (enqueued
    /// elsewhere, or given back by a daemon that stopped or died), closes batches cancelled
    /// elsewhere, and forgets those that ended elsewhere.
    func followSharedStore() async {
        let active: [SharedBatch]
        do {
            let agents = state.withLock { $0.servedAgents }
            active = try await store.sharedActiveBatches(agents: agents, limit: configuration.sharedBatchesPerPoll)
        } catch is CancellationError {
            return
        } catch {
            logger.warning("looking at the shared store's batches failed", metadata: ["error": "\(error)"])
            return
        }
        let unlisted = mutate { state, effects in state.follow(active, now: WallClock.now, effects: &effects) }
        // Cancels sent to other daemons for tasks this one runs.
        if let requested = try? await store.cancelRequests(limit: configuration.sharedBatchesPerPoll) {
            for id in requested {
                guard let task = try? await store.task(id, includePayload: false) else { continue }
                mutate { state, effects in _ = state.cancelTask(task, now: WallClock.now, effects: &effects) }
            }
        }
        // Not active in the store: it ended, unless it was enqueued after the list was read (or is
        // past the list's `limit`). One read for them all.
        let ended = unlisted.isEmpty ? [] : (try? await store.endedBatches(among: unlisted)) ?? []
        if !ended.isEmpty {
            mutate { state, effects in state.batchesEndedInStore(ended, now: WallClock.now, effects: &effects) }
        }
    }

    /// Most claims one check looks at: a daemon holds about twice its concurrency per batch and agent.
    static let claimsPerCheck = 10_000

    /// One check of this daemon's claims on pending tasks against what its scheduler holds. A claim
    /// it holds in no window and no slot would otherwise be renewed for as long as the daemon lives
    /// while nobody runs the task (a window dropped without its claims given back). Such a claim is
    /// given back once two checks in a row find it (`ForgottenClaimCheck`). Each check first waits
    /// until every change decided before it is written; a claim younger than a lease is not listed,
    /// as its answer may still be on its way to the scheduler.
    func giveBackForgottenClaims(_ check: inout ForgottenClaimCheck) async {
        guard await commits.written() else { return }
        let claims: [PendingClaim]
        do {
            claims = try await store.oldPendingClaims(limit: Self.claimsPerCheck)
        } catch {
            logger.warning("listing this daemon's claims failed; they are checked at the next lease", metadata: ["error": "\(error)"])
            return
        }
        let unheldTasks = state.withLock { $0.unheld(among: claims.map(\.taskID)) }
        let forgotten = check.found(unheld: Set(claims.filter { unheldTasks.contains($0.taskID) }))
        guard !forgotten.isEmpty else { return }
        logger.warning("claims on pending tasks this daemon did not hold are given back, for any daemon to run them",
                       metadata: ["tasks": "\(forgotten.map(\.taskID).sorted())"])
        do {
            try await store.releaseForgottenClaims(forgotten.sorted { $0.taskID < $1.taskID })
        } catch {
            logger.warning("giving back forgotten claims failed; trying again at the next check", metadata: ["error": "\(error)"])
            check.releaseFailed(forgotten)
        }
    }
}
