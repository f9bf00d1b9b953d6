import FanoutCore
import FanoutScheduler
import FanoutWire
import NIOCore
import Synchronization

/// A worker session's way to its worker: what the pool sends (assignments,
/// cancels) and the answers to the worker's reports are encoded and handed to
/// the channel by the thread that sent them, rather than waking a task per
/// frame, and flushed once per turn of the event loop: the frames of a burst
/// go out in one write (docs/PERFORMANCE.md, worker path).
///
/// Order is kept as PROTOCOL.md §11 promises it. The registration's
/// acknowledgement goes first: what the pool sends before it is held back.
/// A resumed assignment is followed by its children's results, which are read
/// from the store first: from it until its last page is written, what the pool
/// sends queues behind it, in order, for the session's task (`queuedCommands`).
final class WorkerOutbound: Sendable {
    private struct State {
        /// Until the registration is acknowledged, what the pool sends waits here.
        var held: [WorkerPool.Command]? = []
        /// Commands handed to the queue and not yet written: while any are, new ones queue too.
        var queued = 0
        var closed = false
    }

    private let channel: any Channel
    private let streamID: UInt32
    private let maxFrameBytes: Int
    private let state = Mutex(State())
    private let writer: BurstWriter
    private let queue: AsyncStream<WorkerPool.Command>.Continuation
    /// What the session's task writes, in order.
    let queuedCommands: AsyncStream<WorkerPool.Command>

    init(channel: any Channel, streamID: UInt32, maxFrameBytes: Int) {
        self.channel = channel
        writer = BurstWriter(channel)
        self.streamID = streamID
        self.maxFrameBytes = maxFrameBytes
        (queuedCommands, queue) = AsyncStream.makeStream()
    }

    /// Sends a command of the pool; never waits. Returns the reason when an
    /// assignment cannot be encoded (too large for the worker's frames).
    func send(_ command: WorkerPool.Command) -> WireError? {
        state.withLock { state in
            guard !state.closed else { return nil }
            guard state.held == nil else {
                state.held!.append(command)
                return nil
            }
            return route(command, &state)
        }
    }

    /// Acknowledges the registration, then sends what the pool sent meanwhile. Returns the
    /// assignments among those that could not be encoded.
    func acknowledgeRegistration() -> [(WorkerPool.Command, WireError)] {
        state.withLock { state in
            try? writeNow(.ack(taskID: 0, status: .ok))
            let held = state.held ?? []
            state.held = nil
            return held.compactMap { command in route(command, &state).map { (command, $0) } }
        }
    }

    /// Under the lock, so frames reach the channel in the order they were sent.
    private func route(_ command: WorkerPool.Command, _ state: inout State) -> WireError? {
        if state.queued > 0 || command.waitsForChildrenResults {
            state.queued += 1
            queue.yield(command)
            return nil
        }
        do throws(WireError) {
            try writeNow(WorkerSessionServer.message(for: command))
            return nil
        } catch {
            return error
        }
    }

    /// Writes a queued command and what must follow it (`write` writes a frame and waits for it).
    /// Called by the session's task for each of `queuedCommands`, in order.
    func writeQueued(_ frames: () async throws -> Void) async rethrows {
        defer { state.withLock { $0.queued -= 1 } }
        try await frames()
    }

    /// Writes one frame and waits until the channel took it.
    func write(_ message: ServerToWorker) async throws {
        try await writer.writeAndWait(try encode(message))
    }

    /// Answers one of the worker's messages. Answers may overtake what the pool sends (PROTOCOL.md
    /// §11): they are written at once, queued commands or not.
    func reply(_ message: ServerToWorker) {
        let closed = state.withLock { $0.closed }
        guard !closed else { return }
        try? writeNow(message)
    }

    /// Waits while the channel holds more than it may: a worker that sends without reading
    /// stops being read, rather than its answers piling up here.
    func waitForRoom(_ asyncWriter: FrameWriter) async {
        // NIO's writer, which the stream's final frame goes through too, waits until the channel is writable.
        if !channel.isWritable { try? await asyncWriter.outbound.write(ByteBuffer()) }
    }

    /// No frame goes out after this: the session's final frame follows.
    func close() {
        state.withLock { $0.closed = true }
        queue.finish()
    }

    private func writeNow(_ message: ServerToWorker) throws(WireError) {
        writer.write(try encode(message))
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
