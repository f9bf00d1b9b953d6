import Foundation
import Synchronization

/// A flag one thread sleeps on until another raises it, or a deadline passes
/// (the commit loop's thread, the checkpoint thread).
/// Raising it twice before the sleeper wakes wakes it once: it then takes all
/// the work there is.
package final class ThreadWakeup: Sendable {
    // Guards `raised` together with `Mutex` (which Swift's checker sees); NSCondition is thread-safe.
    private let condition = NSCondition()
    private let raised = Mutex(false)

    package init() {}

    package func raise() {
        condition.lock()
        raised.withLock { $0 = true }
        condition.signal()
        condition.unlock()
    }

    /// Returns once raised (lowering it again), or at `deadline`.
    package func wait(until deadline: Date?) {
        condition.lock()
        defer { condition.unlock() }
        while !raised.withLock({ $0 }) {
            if let deadline {
                if !condition.wait(until: deadline) { break }
            } else {
                condition.wait()
            }
        }
        raised.withLock { $0 = false }
    }
}
