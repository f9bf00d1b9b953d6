import FanoutCore
import FanoutScheduler
import FanoutWire
import NIOCore
import Synchronization

/// A worker session's way to its worker: what the pool sends (assignments,
/// cancels) is encoded and handed to the channel by the thread that sent it,
/// rather than waking a task per frame (docs/PERFORMANCE.md, worker path).
///
/// Order is kept as PROTOCOL.md §11 promises it: a resumed assignment is
/// followed by its children's results, which are read from the store first.
/// From such an assignment until its last page is written, and before the
/// registration is acknowledged, what the pool sends queues behind it, in
/// order, for the session's task (`writeQueued`).
final class WorkerOutbound: Sendable {
    enum Queued: Sendable {
        /// The registration's acknowledgement: the first frame of the session.
        case registered
        case command(WorkerPool.Command)
    }

    private struct State {
        /// Frames handed to the queue and not yet written: while any are, new ones queue too.
        var queued = 0
        var closed = false
    }

    private let channel: any Channel
    private let streamID: UInt32
    private let maxFrameBytes: Int
    private let state = Mutex(State())
    private let queue: AsyncStream<Queued>.Continuation
    /// What the session's task writes, in order.
    let queuedFrames: AsyncStream<Queued>

    init(channel: any Channel, streamID: UInt32, maxFrameBytes: Int) {
        self.channel = channel
        self.streamID = streamID
        self.maxFrameBytes = maxFrameBytes
        (queuedFrames, queue) = AsyncStream.makeStream()
        // Nothing overtakes the acknowledgement of the registration.
        state.withLock { $0.queued = 1 }
        queue.yield(.registered)
    }

    /// Sends a command of the pool; never waits. An assignment that cannot be
    /// encoded (too large for the worker's frames) is returned, to be failed.
    func send(_ command: WorkerPool.Command) -> WireError? {
        state.withLock { state -> WireError? in
            guard !state.closed else { return nil }
            if state.queued > 0 || command.waitsForChildrenResults {
                state.queued += 1
                queue.yield(.command(command))
                return nil
            }
            // Under the lock, so frames reach the channel in the order they were sent.
            do throws(WireError) {
                try writeNow(WorkerSessionServer.message(for: command))
                return nil
            } catch {
                return error
            }
        }
    }

    /// Writes a queued frame and whatever must follow it; `write` writes one frame and waits for it.
    /// Called by the session's task for each of `queuedFrames`, in order.
    func writeQueued(_ frames: () async throws -> Void) async rethrows {
        defer { state.withLock { $0.queued -= 1 } }
        try await frames()
    }

    /// Writes one frame and waits until the channel took it.
    func write(_ message: ServerToWorker) async throws {
        try await channel.writeAndFlush(try encode(message))
    }

    /// No frame goes out after this: the session's final frame follows.
    func close() {
        state.withLock { $0.closed = true }
        queue.finish()
    }

    private func writeNow(_ message: ServerToWorker) throws(WireError) {
        channel.writeAndFlush(try encode(message), promise: nil)
    }

    private func encode(_ message: ServerToWorker) throws(WireError) -> ByteBuffer {
        var buffer = channel.allocator.buffer(capacity: 256)
        try FrameCoding.encodeFramed(Frame(streamID: streamID, kind: .message(.toWorker(message))), into: &buffer,
                                     maxFrameBytes: maxFrameBytes)
        return buffer
    }
}

extension WorkerPool.Command {
    /// A resumed assignment: its children's results follow it.
    var waitsForChildrenResults: Bool {
        if case .assign(_, _, resumed: true) = self { return true }
        return false
    }
}
