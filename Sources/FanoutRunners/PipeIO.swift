import CFanoutSpawn
#if canImport(Glibc)
import Glibc
#endif

/// Moving bytes through the daemon's non-blocking ends of a child's pipes.
/// Each function owns its descriptor and closes it before returning.
enum PipeIO {
    static let chunkBytes = 64 * 1024

    enum End: Sendable, Equatable {
        /// The write end closed.
        case endOfFile
        /// The consumer had enough, or the task was cancelled and the pipe is drained.
        case stopped
        case failed(SystemCallError)
    }

    /// Reads `fd` until end of file, handing each chunk to `consume` (false: stop).
    ///
    /// Once the task is cancelled (the child exited, or the attempt is being
    /// stopped) it reads only what the pipe already held, at most its
    /// capacity, and stops: a descendant that left the process group may keep
    /// the write end open, and writing, forever.
    static func pump(_ fd: Int32, monitor: IOMonitor,
                     _ consume: (ArraySlice<UInt8>) async -> Bool) async -> End {
        defer { monitor.close(fd) }
        var buffer = [UInt8](repeating: 0, count: chunkBytes)
        var drainLeft: Int?
        while true {
            if drainLeft == nil && Task.isCancelled { drainLeft = drainBytes(fd) }
            let want = min(buffer.count, drainLeft ?? buffer.count)
            if want == 0 { return .stopped }
            let count = buffer.withUnsafeMutableBytes { fanout_read(fd, $0.baseAddress, want) }
            if count > 0 {
                drainLeft = drainLeft.map { $0 - count }
                guard await consume(buffer[..<count]) else { return .stopped }
            } else if count == 0 {
                return .endOfFile
            } else if -count == EAGAIN {
                if drainLeft != nil { return .stopped }
                do {
                    try await monitor.wait(for: .readable, on: fd)
                } catch is CancellationError {
                    drainLeft = drainBytes(fd)
                } catch {
                    return .failed(error as? SystemCallError ?? SystemCallError("epoll", errno: EIO))
                }
            } else {
                return .failed(SystemCallError("read", negated: count))
            }
        }
    }

    private static func drainBytes(_ fd: Int32) -> Int {
        let capacity = fanout_pipe_capacity(fd)
        return capacity > 0 ? Int(capacity) : 1 << 20
    }

    /// Writes `bytes`, then closes `fd` so the child sees end of file. A child
    /// that closes its stdin or exits early simply gets less; cancellation stops the writing.
    static func feed(_ fd: Int32, _ bytes: [UInt8], monitor: IOMonitor) async {
        defer { monitor.close(fd) }
        var offset = 0
        while offset < bytes.count {
            let count = bytes.withUnsafeBytes {
                fanout_write(fd, $0.baseAddress! + offset, min(chunkBytes, $0.count - offset))
            }
            if count > 0 {
                offset += count
            } else if -count == EAGAIN {
                do { try await monitor.wait(for: .writable, on: fd) } catch { return }
            } else {
                return  // EPIPE: it stopped reading.
            }
        }
    }
}
