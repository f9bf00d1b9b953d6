#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#endif
import FanoutCore

/// An exclusive lock on `<database>.lock`, held for the daemon's life, so two
/// daemons never run the same database's tasks (even on different sockets).
/// The kernel releases it when the process dies, so a crash leaves no stale lock.
final class DatabaseLock {
    private let descriptor: Int32

    init(databasePath: String) throws {
        let path = databasePath + ".lock"
        descriptor = open(path, O_RDWR | O_CREAT | O_CLOEXEC, 0o600)
        guard descriptor >= 0 else {
            throw FanoutError.failedPrecondition("cannot open \(path): \(String(cString: strerror(errno)))")
        }
        guard flock(descriptor, LOCK_EX | LOCK_NB) == 0 else {
            close(descriptor)
            throw FanoutError.failedPrecondition("another fanoutd is using the database \(databasePath)")
        }
    }

    deinit {
        close(descriptor)
    }
}
