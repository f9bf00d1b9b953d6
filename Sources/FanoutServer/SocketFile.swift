#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#endif
import FanoutCore

/// Preparing the socket path: a live daemon is never displaced, a stale
/// socket file (left by a crash) is replaced.
enum SocketFile {
    static let maxPathBytes = MemoryLayout.size(ofValue: sockaddr_un().sun_path) - 1

    static func prepare(_ path: String) throws {
        guard path.utf8.count <= maxPathBytes else {
            throw FanoutError.invalidArgument("socket path is \(path.utf8.count) bytes; Unix sockets allow at most \(maxPathBytes): \(path)")
        }
        var info = stat()
        guard lstat(path, &info) == 0 else { return }
        guard (info.st_mode & S_IFMT) == S_IFSOCK else {
            throw FanoutError.failedPrecondition("\(path) exists and is not a socket; refusing to replace it")
        }
        if isLive(path) {
            throw FanoutError.failedPrecondition("another fanoutd is already listening on \(path)")
        }
        unlink(path)
    }

    /// Whether something accepts connections on the socket.
    static func isLive(_ path: String) -> Bool {
        let fd = socket(AF_UNIX, Int32(SOCK_STREAM.rawValue), 0)
        guard fd >= 0 else { return false }
        defer { close(fd) }
        var address = sockaddr_un()
        address.sun_family = sa_family_t(AF_UNIX)
        withUnsafeMutableBytes(of: &address.sun_path) { buffer in
            let bytes = Array(path.utf8.prefix(buffer.count - 1))
            buffer.copyBytes(from: bytes)
            buffer[bytes.count] = 0
        }
        let result = withUnsafePointer(to: &address) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) {
                connect(fd, $0, socklen_t(MemoryLayout<sockaddr_un>.size))
            }
        }
        return result == 0
    }

    /// Runs `body` with a umask that keeps the new socket private until its mode is set.
    static func withPrivateUmask<T>(_ body: () async throws -> T) async rethrows -> T {
        let previous = umask(0o177)
        defer { umask(previous) }
        return try await body()
    }

    static func setMode(_ path: String, _ mode: UInt16) throws {
        guard chmod(path, mode_t(mode)) == 0 else {
            throw FanoutError.failedPrecondition("cannot set mode \(String(mode, radix: 8)) on \(path): \(String(cString: strerror(errno)))")
        }
    }
}

extension FanoutServer {
    /// Refuses a socket path another daemon listens on and removes a stale
    /// socket file. A daemon calls this before it opens its store, so a
    /// second daemon that is going to be refused never runs recovery on (and
    /// starts the tasks of) the database the first one is using. `run()`
    /// checks again when it binds.
    public static func prepareSocketPath(_ path: String) throws {
        try SocketFile.prepare(path)
    }
}
