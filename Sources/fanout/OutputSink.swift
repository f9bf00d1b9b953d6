#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#endif

/// Output lines on their way to a file descriptor, gathered into large
/// writes: a million results cost a few hundred write calls, not a million,
/// and memory holds one buffer of them, never the whole output.
struct OutputSink {
    let fd: Int32
    /// What is not written yet; callers append their lines here.
    var buffer: [UInt8] = []

    static let flushBytes = 256 * 1024

    init(fd: Int32) {
        self.fd = fd
        buffer.reserveCapacity(Self.flushBytes + 64 * 1024)
    }

    /// Standard output, or a file created (or truncated) at `path`.
    static func opening(_ path: String?) throws -> OutputSink {
        guard let path else { return OutputSink(fd: STDOUT_FILENO) }
        let fd = open(path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0o666)
        guard fd >= 0 else { throw CLIError("cannot create \(path): \(String(cString: strerror(errno)))") }
        return OutputSink(fd: fd)
    }

    mutating func flushIfFull() throws {
        if buffer.count >= Self.flushBytes { try flush() }
    }

    mutating func flush() throws {
        try buffer.withUnsafeBytes { bytes in
            var done = 0
            while done < bytes.count {
                let written = write(fd, bytes.baseAddress! + done, bytes.count - done)
                if written < 0 {
                    if errno == EINTR { continue }
                    throw CLIError("cannot write the results: \(String(cString: strerror(errno)))")
                }
                done += written
            }
        }
        buffer.removeAll(keepingCapacity: true)
    }

    /// Flushes, then closes the descriptor unless it is standard output.
    mutating func finish() throws {
        try flush()
        guard fd != STDOUT_FILENO else { return }
        guard close(fd) == 0 else { throw CLIError("cannot write the results: \(String(cString: strerror(errno)))") }
    }
}
