import NIOCore

/// Runs a connection's read loop on its channel's event loop: a frame is handled on the thread
/// that read it, instead of waking a thread of the global pool first (on a VM, tens of
/// microseconds of an enqueue's way to its first start).
///
/// Only the read loop and what it awaits run here, and it never blocks: it checks a call and
/// hands it on. Each stream's task is unstructured (`Task {}` does not inherit the preference)
/// and runs on the global pool, so a replay or a page of results never holds up the event
/// loop's I/O (docs/PERFORMANCE.md, start latency).
final class EventLoopTaskExecutor: TaskExecutor {
    let eventLoop: any EventLoop

    init(_ eventLoop: any EventLoop) {
        self.eventLoop = eventLoop
    }

    func enqueue(_ job: consuming ExecutorJob) {
        let job = UnownedJob(job)
        eventLoop.execute { job.runSynchronously(on: self.asUnownedTaskExecutor()) }
    }
}
