/// The performance issue's targets, checked against one run's figures.
enum Targets {
    static func checks(_ report: Report) -> [TargetCheck] {
        let plain = report.results.filter { $0.followingSubscriber != true && $0.status == "ok" }
        let enqueue = plain.first { $0.tasks == 100_000 }?.enqueueTasksPerSecond
        let runThrough = plain.first { $0.tasks == 100_000 }?.runThroughTasksPerSecond
        var checks = [
            TargetCheck("enqueue, 100,000 tasks", unit: "tasks/s", measured: enqueue, limit: 300_000, atLeast: true),
            TargetCheck("run-through, 100,000 echo tasks", unit: "tasks/s", measured: runThrough, limit: 50_000, atLeast: true),
            TargetCheck("worker path", unit: "tasks/s", measured: report.workers?.tasksPerSecond, limit: 60_000, atLeast: true),
        ]
        if let latency = report.latency {
            checks += [
                TargetCheck("enqueue → task_started p50, idle", unit: "µs", measured: latency.idleP50Us, limit: 300, atLeast: false),
                TargetCheck("enqueue → task_started p99, idle", unit: "µs", measured: latency.idleP99Us, limit: 2_000, atLeast: false),
                TargetCheck("enqueue → task_started p99, \(latency.backlogTasks) pending", unit: "µs",
                            measured: latency.backlogP99Us, limit: 5_000, atLeast: false),
                TargetCheck("fanoutd RSS, \(latency.backlogTasks) pending", unit: "MB", measured: latency.backlogRssMb,
                            limit: 200, atLeast: false),
            ]
        }
        let million = plain.first { $0.tasks == 1_000_000 }?.results
        checks.append(TargetCheck("fanout results, 1,000,000 tasks", unit: "results/s", measured: million?.resultsPerSecond,
                                  limit: 200_000, atLeast: true))
        checks.append(TargetCheck("enqueue, durability full", unit: "tasks/s", measured: report.durableEnqueue?.tasksPerSecond,
                                  limit: 100_000, atLeast: true))
        return checks
    }
}
