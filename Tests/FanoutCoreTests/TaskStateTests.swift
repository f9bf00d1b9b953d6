import FanoutCore
import Testing

@Suite struct TaskStateTests {
    /// Every transition DESIGN.md "States" allows, and nothing else, plus the
    /// two recorded in ARCHITECTURE.md (pending → failed, running → expired).
    static let allowed: Set<[TaskState]> = [
        [.pending, .running], [.pending, .cancelled], [.pending, .expired], [.pending, .failed],
        [.running, .completed], [.running, .failed], [.running, .cancelled], [.running, .expired],
        [.running, .retryWait], [.running, .waitingChildren], [.running, .pending],
        [.waitingChildren, .running], [.waitingChildren, .cancelled], [.waitingChildren, .failed], [.waitingChildren, .expired],
        [.retryWait, .pending], [.retryWait, .cancelled], [.retryWait, .expired],
    ]

    @Test(arguments: TaskState.allCases, TaskState.allCases)
    func transitionMatrix(from: TaskState, to: TaskState) {
        #expect(from.canMove(to: to) == Self.allowed.contains([from, to]), "\(from.rawValue) -> \(to.rawValue)")
    }

    @Test func allowedTransitionCount() {
        let count = TaskState.allCases.flatMap { from in TaskState.allCases.map { (from, $0) } }
            .filter { $0.0.canMove(to: $0.1) }.count
        #expect(count == 18)
    }

    @Test func terminalStatesGoNowhere() {
        for state in TaskState.allCases where state.isTerminal {
            for next in TaskState.allCases {
                #expect(!state.canMove(to: next), "\(state) -> \(next)")
            }
        }
    }

    @Test func terminalSets() {
        #expect(Set(TaskState.allCases.filter(\.isTerminal)) == [.completed, .failed, .cancelled, .expired])
        #expect(Set(BatchState.allCases.filter(\.isTerminal)) == [.completed, .cancelled, .failed])
    }

    @Test func rawValuesMatchTheProtocolNames() {
        #expect(TaskState.waitingChildren.rawValue == "waiting_children")
        #expect(TaskState.retryWait.rawValue == "retry_wait")
        #expect(TaskState(rawValue: "retry_wait") == .retryWait)
        #expect(EventKind.batchProgress.rawValue == "batch_progress")
        #expect(EventKind.taskRetrying.rawValue == "task_retrying")
    }

    @Test func batchEventKinds() {
        #expect(Set(EventKind.allCases.filter(\.isBatchEvent)) == [.batchProgress, .batchCompleted, .batchCancelled, .batchFailed])
    }
}

@Suite struct BatchCountersTests {
    @Test func startsAllPending() {
        let counters = BatchCounters(pending: 5)
        #expect(counters.total == 5)
        #expect(counters.pending == 5)
        #expect(counters.terminal == 0)
        #expect(!counters.isFinished)
    }

    @Test func moveShiftsOneTaskBetweenStates() {
        var counters = BatchCounters(pending: 3)
        counters.move(from: .pending, to: .running)
        #expect(counters.pending == 2)
        #expect(counters.running == 1)
        counters.move(from: .running, to: .retryWait)
        #expect(counters.running == 0)
        #expect(counters.retryWait == 1)
        counters.move(from: .retryWait, to: .pending)
        #expect(counters.pending == 3)
        #expect(counters.retryWait == 0)
        #expect(counters.total == 3)
    }

    @Test func failedCancelledAndExpiredCountAsDone() {
        var counters = BatchCounters(pending: 4)
        counters.move(from: .pending, to: .running)
        counters.move(from: .running, to: .completed)
        counters.move(from: .pending, to: .cancelled)
        counters.move(from: .pending, to: .expired)
        #expect(counters.terminal == 3)
        #expect(!counters.isFinished)
        counters.move(from: .pending, to: .running)
        counters.move(from: .running, to: .failed)
        #expect(counters.terminal == 4)
        #expect(counters.isFinished)
        #expect(counters.pending == 0 && counters.running == 0)
        #expect([counters.completed, counters.failed, counters.cancelled, counters.expired] == [1, 1, 1, 1])
    }

    @Test func subscriptReadsAndWritesEachState() {
        var counters = BatchCounters()
        for (index, state) in TaskState.allCases.enumerated() {
            counters[state] = index + 10
        }
        #expect(counters.pending == 10)
        #expect(counters.running == 11)
        #expect(counters.waitingChildren == 12)
        #expect(counters.retryWait == 13)
        #expect(counters.completed == 14)
        #expect(counters.failed == 15)
        #expect(counters.cancelled == 16)
        #expect(counters.expired == 17)
        for (index, state) in TaskState.allCases.enumerated() {
            #expect(counters[state] == index + 10)
        }
        #expect(counters.terminal == 14 + 15 + 16 + 17)
    }

    @Test func emptyBatchIsFinished() {
        #expect(BatchCounters().isFinished)
    }
}
