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
        try checkFolder(of: path)
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

    /// Refuses a folder where another user could put their own socket in place
    /// of the daemon's: it must belong to the daemon's uid (or be a root-owned
    /// sticky folder such as /tmp, where nobody can replace another's file),
    /// and no one else may write to it.
    static func checkFolder(of path: String) throws {
        let folder = path.split(separator: "/", omittingEmptySubsequences: false).dropLast().joined(separator: "/")
        let directory = folder.isEmpty ? (path.hasPrefix("/") ? "/" : ".") : folder
        var info = stat()
        guard stat(directory, &info) == 0 else {
            throw FanoutError.failedPrecondition("the socket folder \(directory) cannot be read: \(String(cString: strerror(errno)))")
        }
        let me = geteuid()
        let othersMayWrite = info.st_mode & (S_IWGRP | S_IWOTH) != 0
        let sticky = info.st_mode & S_ISVTX != 0
        if info.st_uid == me && !othersMayWrite { return }
        if info.st_uid == 0 && sticky { return }
        if info.st_uid != me && info.st_uid != 0 {
            throw FanoutError.failedPrecondition("the socket folder \(directory) belongs to uid \(info.st_uid), not to this daemon's uid \(me); "
                + "another user could replace the socket. Use a folder of your own (--socket)")
        }
        throw FanoutError.failedPrecondition("the socket folder \(directory) is writable by other users (mode \(String(info.st_mode & 0o7777, radix: 8))); "
            + "another user could replace the socket. Make it private (chmod go-w) or use another folder (--socket)")
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
