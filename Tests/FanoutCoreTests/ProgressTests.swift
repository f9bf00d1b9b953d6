import FanoutCore
import Testing

/// `recordTurn` is mutating, which `#expect` cannot call in place.
func turn(_ progress: inout BatchProgress, before: Int) -> Bool {
    progress.recordTurn(turnsBefore: before)
}

@Suite struct BatchProgressTests {
    @Test func emptyBatchIsAHundredPercent() {
        #expect(BatchProgress(totalTasks: 0, maxTurns: 0).percent == 100)
        #expect(BatchProgress(totalTasks: 0, maxTurns: 5).percent == 100)
    }

    @Test func withoutMaxTurnsEachTerminalTaskIsOneUnit() {
        var progress = BatchProgress(totalTasks: 4, maxTurns: 0)
        #expect(progress.unitsPerTask == 1)
        #expect(progress.maxUnits == 4)
        #expect(progress.percent == 0)
        // Turns do not move progress without max_turns.
        #expect(!turn(&progress, before: 0))
        #expect(progress.units == 0)
        progress.recordTerminal(turnsCompleted: 0)
        #expect(progress.units == 1)
        #expect(progress.percent == 25)
        progress.recordTerminal(turnsCompleted: 7) // turns are ignored
        #expect(progress.percent == 50)
        progress.recordTerminal(turnsCompleted: 0)
        #expect(progress.percent == 75)
        progress.recordTerminal(turnsCompleted: 0)
        #expect(progress.units == 4)
        #expect(progress.percent == 100)
    }

    @Test func thirdsAreExact() {
        var progress = BatchProgress(totalTasks: 3, maxTurns: 0)
        progress.recordTerminal(turnsCompleted: 0)
        #expect(progress.percent == 100.0 / 3.0)
        progress.recordTerminal(turnsCompleted: 0)
        #expect(progress.percent == 200.0 / 3.0)
        progress.recordTerminal(turnsCompleted: 0)
        #expect(progress.percent == 100)
    }

    @Test func withMaxTurnsEachTurnIsOneUnitCappedPerTask() {
        var progress = BatchProgress(totalTasks: 2, maxTurns: 4)
        #expect(progress.unitsPerTask == 4)
        #expect(progress.maxUnits == 8)
        #expect(turn(&progress, before: 0))
        #expect(progress.units == 1)
        #expect(progress.percent == 12.5)
        #expect(turn(&progress, before: 1))
        #expect(turn(&progress, before: 2))
        #expect(turn(&progress, before: 3))
        #expect(progress.percent == 50)
        // The fifth and later turns of the same task are capped at max_turns.
        #expect(!turn(&progress, before: 4))
        #expect(!turn(&progress, before: 9))
        #expect(progress.units == 4)
        // Terminal after 6 reported turns adds nothing more.
        progress.recordTerminal(turnsCompleted: 6)
        #expect(progress.units == 4)
        #expect(progress.percent == 50)
    }

    @Test func terminalAddsWhatTheTaskHadLeft() {
        var progress = BatchProgress(totalTasks: 2, maxTurns: 4)
        progress.recordTurn(turnsBefore: 0)
        #expect(progress.units == 1)
        progress.recordTerminal(turnsCompleted: 1) // failed or cancelled after one turn: +3
        #expect(progress.units == 4)
        #expect(progress.percent == 50)
        progress.recordTerminal(turnsCompleted: 0) // a task ended without any turn: +4
        #expect(progress.units == 8)
        #expect(progress.percent == 100)
    }

    @Test func unitsEarnedByOneTask() {
        let turns = BatchProgress(totalTasks: 10, maxTurns: 3)
        #expect(turns.units(turnsCompleted: 0, terminal: false) == 0)
        #expect(turns.units(turnsCompleted: 2, terminal: false) == 2)
        #expect(turns.units(turnsCompleted: 5, terminal: false) == 3)
        #expect(turns.units(turnsCompleted: 0, terminal: true) == 3)
        #expect(turns.units(turnsCompleted: 2, terminal: true) == 3)
        let plain = BatchProgress(totalTasks: 10, maxTurns: 0)
        #expect(plain.units(turnsCompleted: 5, terminal: false) == 0)
        #expect(plain.units(turnsCompleted: 0, terminal: true) == 1)
    }

    @Test func negativeMaxTurnsMeansNone() {
        let progress = BatchProgress(totalTasks: 5, maxTurns: -3)
        #expect(progress.maxTurns == 0)
        #expect(progress.maxUnits == 5)
    }

    @Test func percentFromStoredUnits() {
        #expect(BatchProgress(totalTasks: 4, maxTurns: 5, units: 5).percent == 25)
        #expect(BatchProgress(totalTasks: 8, maxTurns: 0, units: 1).percent == 12.5)
    }
}
