import NIOCore
import Synchronization

/// Writes frames to a channel from any thread, in the order they were
/// written, flushing once per burst: what several tasks write at once goes
/// out in one system call, instead of one each (docs/PERFORMANCE.md, worker
/// path).
///
/// Each write is queued on the event loop, even from it, so writes keep their
/// order; the first of a burst queues a flush behind it, which runs after the
/// writes queued meanwhile and sends them all.
public final class BurstWriter: Sendable {
    private let channel: any Channel
    /// A flush is queued: writes before it runs go out with it. Only the event loop touches it.
    private let flushQueued = Atomic(false)

    public init(_ channel: any Channel) {
        self.channel = channel
    }

    /// Writes `buffer`; `promise` completes once the socket took it.
    public func write(_ buffer: ByteBuffer, promise: EventLoopPromise<Void>? = nil) {
        channel.eventLoop.execute { [self] in
            channel.write(buffer, promise: promise)
            guard !flushQueued.exchange(true, ordering: .relaxed) else { return }
            channel.eventLoop.execute { [self] in
                flushQueued.store(false, ordering: .relaxed)
                channel.flush()
            }
        }
    }

    /// Closes the channel after what was written: a closing channel drops writes not yet flushed,
    /// and a burst's flush would otherwise be queued behind the close.
    public func close() async throws {
        let flushed = channel.eventLoop.makePromise(of: Void.self)
        channel.eventLoop.execute { [self] in
            channel.flush()
            flushed.succeed()
        }
        try await flushed.futureResult.get()
        try await channel.close()
    }

    /// Closes the channel after what was written, without waiting.
    public func closeSoon() {
        channel.eventLoop.execute { [self] in
            channel.flush()
            channel.close(promise: nil)
        }
    }

    /// Writes `buffer` and waits until the socket took it.
    public func writeAndWait(_ buffer: ByteBuffer) async throws {
        let written = channel.eventLoop.makePromise(of: Void.self)
        write(buffer, promise: written)
        try await written.futureResult.get()
    }
}
