import FanoutClient
import Foundation
import Synchronization

#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#endif

/// `make stress`: a release `fanoutd` for a set time under everything at
/// once: SIGKILLs at random moments, clients sending fuzzed frames, one
/// client following every event, rounds of 1,000 concurrent connections, a
/// steady stream of batches, and worker-served batches run by a steady
/// worker, a worker that leaves mid-task and raw sessions sending fuzzed
/// worker messages. Then every acknowledged batch must finish with every task
/// completed exactly once.
///
///     FanoutStress --fanoutd PATH [--seconds 600]
///
/// Prints one summary; exits 1 on a crash, a lost task or a duplicated result.
@main
struct FanoutStress {
    static func main() async {
        var fanoutd = ""
        var seconds = 600.0
        var arguments = CommandLine.arguments.dropFirst()
        while let argument = arguments.popFirst() {
            switch argument {
            case "--fanoutd": fanoutd = arguments.popFirst() ?? ""
            case "--seconds": seconds = arguments.popFirst().flatMap(Double.init) ?? seconds
            default:
                FileHandle.standardError.write(Data("usage: FanoutStress --fanoutd PATH [--seconds N]\n".utf8))
                exit(2)
            }
        }
        signal(SIGPIPE, SIG_IGN)
        raiseOpenFileLimit()
        var template = Array("/tmp/fanout-stress.XXXXXX".utf8CString)
        guard let made = mkdtemp(&template) else { fatalError("mkdtemp failed") }
        let directory = String(cString: made)
        let supervisor = Supervisor(executable: fanoutd, directory: directory)
        let tally = Tally()
        do {
            try await supervisor.start()
            log("fanoutd running in \(directory); stressing for \(Int(seconds)) s")
            let until = ContinuousClock.now + .seconds(seconds)
            await withTaskGroup(of: Void.self) { group in
                group.addTask { await Workloads.killer(supervisor, until: until) }
                group.addTask { await Workloads.producer(supervisor, tally, until: until) }
                group.addTask { await Workloads.subscriber(supervisor, tally, until: until + .seconds(30)) }
                group.addTask { await Workloads.fuzzer(supervisor, tally, until: until) }
                group.addTask { await Workloads.connectionRounds(supervisor, tally, until: until) }
                group.addTask { await WorkerWorkloads.producer(supervisor, tally, until: until) }
                group.addTask { await WorkerWorkloads.flakyWorker(supervisor, tally, until: until) }
                group.addTask { await WorkerWorkloads.hostileWorker(supervisor, tally, until: until) }
                group.addTask { await WorkerWorkloads.steadyWorker(supervisor) }
                // These seven end at `until`; the subscriber reads on, and the steady worker works on,
                // while the last batches finish.
                for _ in 0..<7 { await group.next() }
                let lost = await Workloads.verify(supervisor, tally)
                tally.update { $0.lostTasks = lost }
                try? await Task.sleep(for: .seconds(2))
                group.cancelAll()
            }
        } catch {
            log("stress could not run: \(error)")
            supervisor.stop()
            exit(1)
        }
        supervisor.stop()
        let summary = tally.snapshot
        let crashes = supervisor.crashes
        for crash in crashes { log("crash: \(crash)") }
        print("""
            stress: \(Int(seconds)) s; kills survived \(supervisor.kills); frames fuzzed \(summary.framesFuzzed); \
            crashes \(crashes.count); tasks acknowledged \(summary.acknowledgedTasks); tasks lost \(summary.lostTasks); \
            results duplicated \(summary.duplicatedResults); subscriber events \(summary.subscriberEvents) \
            (resumed \(summary.subscriberResumes) times, out-of-order \(summary.subscriberOutOfOrder)); \
            connection rounds \(summary.connectionRounds) of 1000 (\(summary.connectionFailures) failed); \
            flaky worker departures \(summary.workerDepartures); worker frames fuzzed \(summary.workerFramesFuzzed)
            """)
        let failed = !crashes.isEmpty || summary.lostTasks > 0 || summary.duplicatedResults > 0 || summary.subscriberOutOfOrder > 0
        print(failed ? "0 passed, 1 failed" : "1 passed, 0 failed")
        if !failed { removeTree(directory) }
        exit(failed ? 1 : 0)
    }
}

/// What the workloads saw, shared between them.
final class Tally: Sendable {
    struct Counts {
        var batches: [UInt64: Int] = [:]
        var acknowledgedTasks = 0
        var framesFuzzed = 0
        var subscriberEvents = 0
        var subscriberResumes = 0
        var subscriberOutOfOrder = 0
        var completedTasks = Set<UInt64>()
        var duplicatedResults = 0
        var connectionRounds = 0
        var connectionFailures = 0
        var workerDepartures = 0
        var workerFramesFuzzed = 0
        var lostTasks = 0
    }

    private let counts = Mutex(Counts())
    func update(_ body: (inout Counts) -> Void) { counts.withLock { body(&$0) } }
    var snapshot: Counts { counts.withLock { $0 } }
}

func log(_ message: String) {
    FileHandle.standardError.write(Data("fanout-stress: \(message)\n".utf8))
}

/// A thousand connections need more descriptors than the usual soft limit of 1024.
func raiseOpenFileLimit() {
    var limit = rlimit()
    guard getrlimit(Int32(RLIMIT_NOFILE.rawValue), &limit) == 0 else { return }
    limit.rlim_cur = limit.rlim_max
    _ = setrlimit(Int32(RLIMIT_NOFILE.rawValue), &limit)
}

func removeTree(_ path: String) {
    try? FileManager.default.removeItem(atPath: path)
}
