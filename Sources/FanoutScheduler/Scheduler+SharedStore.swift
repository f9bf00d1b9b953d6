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
    /// while nobody runs the task (a window dropped without its claims given back). Such claims are
    /// given back when two checks in a row find them: `suspects`, the claims the last check found,
    /// comes back as those this one found and did not give back yet.
    ///
    /// Two checks, because one can be wrong: a task started and finished between the store's
    /// answer and the look at the scheduler is held by neither. By the next check its changes are
    /// written (each check first waits for every change decided before it), so its row is no
    /// longer pending. A claim younger than a lease is not listed at all: its answer may still be
    /// on its way to the scheduler.
    func giveBackForgottenClaims(suspects: Set<TaskID>) async -> Set<TaskID> {
        guard await commits.written() else { return suspects }
        let claims: [TaskID]
        do {
            claims = try await store.oldPendingClaims(limit: Self.claimsPerCheck)
        } catch {
            logger.warning("listing this daemon's claims failed; they are checked at the next lease", metadata: ["error": "\(error)"])
            return suspects
        }
        let unheld = state.withLock { $0.unheld(among: claims) }
        let forgotten = unheld.intersection(suspects)
        guard !forgotten.isEmpty else { return unheld }
        logger.warning("claims on pending tasks this daemon did not hold are given back, for any daemon to run them",
                       metadata: ["tasks": "\(forgotten.sorted())"])
        do {
            try await store.releaseClaims(forgotten.sorted())
        } catch {
            logger.warning("giving back forgotten claims failed; trying again at the next check", metadata: ["error": "\(error)"])
            return unheld
        }
        return unheld.subtracting(forgotten)
    }
}
