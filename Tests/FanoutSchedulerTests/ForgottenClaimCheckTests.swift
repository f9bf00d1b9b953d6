import FanoutStore
import Testing

@testable import FanoutScheduler

/// The claim check gives a claim back only when two checks in a row find the same claim held nowhere.
@Suite struct ForgottenClaimCheckTests {
    let a = PendingClaim(taskID: 1, claimedAt: 100)
    let b = PendingClaim(taskID: 2, claimedAt: 100)

    @Test func aClaimIsGivenBackAtItsSecondSightingInARow() {
        var check = ForgottenClaimCheck()
        #expect(check.found(unheld: [a, b]).isEmpty, "one check can be wrong")
        // b was held at the second check (its first sighting was a task between two states): a goes back.
        #expect(check.found(unheld: [a]) == [a])
        #expect(check.suspects.isEmpty)
        #expect(check.found(unheld: [b]).isEmpty, "b's sightings were not in a row")
    }

    @Test func aNewClaimOnTheSameTaskStartsOver() {
        var check = ForgottenClaimCheck()
        _ = check.found(unheld: [a])
        let again = PendingClaim(taskID: a.taskID, claimedAt: 200)
        #expect(check.found(unheld: [again]).isEmpty)
        #expect(check.found(unheld: [again]) == [again])
    }

    @Test func aFailedGiveBackIsTriedAtTheNextSighting() {
        var check = ForgottenClaimCheck()
        _ = check.found(unheld: [a])
        let forgotten = check.found(unheld: [a])
        check.releaseFailed(forgotten)
        #expect(check.found(unheld: [a]) == [a])
    }
}
