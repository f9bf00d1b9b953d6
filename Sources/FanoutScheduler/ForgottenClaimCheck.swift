import FanoutStore

/// What the claim check (`Scheduler.giveBackForgottenClaims`) remembers between two checks: the
/// claims the last one found held nowhere. A claim is given back only when two checks in a row
/// find it so, the same claim both times: one check can be wrong (a task started and finished
/// between the store's answer and the look at the scheduler is held by neither), the next cannot,
/// because every change decided before it is written first.
struct ForgottenClaimCheck: Sendable {
    private(set) var suspects: Set<PendingClaim> = []

    /// Takes the claims this check found held nowhere; returns those to give back.
    mutating func found(unheld: Set<PendingClaim>) -> Set<PendingClaim> {
        let forgotten = unheld.intersection(suspects)
        suspects = unheld.subtracting(forgotten)
        return forgotten
    }

    /// Giving them back failed: they are given back at the next check that finds them.
    mutating func releaseFailed(_ claims: Set<PendingClaim>) {
        suspects.formUnion(claims)
    }
}
