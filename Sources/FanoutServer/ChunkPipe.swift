import DequeModule
import FanoutWire
import Synchronization

/// Hands the chunks of an EnqueueBatch from the connection's read loop to
/// the stream storing them, at most `capacity` ahead: when the store is
/// slower than the client, the read loop waits, the socket stops being
/// read, and the client is slowed down instead of the daemon buffering the
/// batch in memory.
final class ChunkPipe: Sendable {
    private struct State {
        var queue: Deque<BatchChunk> = []
        var consumer: CheckedContinuation<BatchChunk?, Never>?
        var producers: [CheckedContinuation<Void, Never>] = []
        var closed = false
        /// Why the pipe was closed, when a chunk broke a rule.
        var failure: WireStatus?
    }

    private let capacity: Int
    private let state = Mutex(State())

    init(capacity: Int = 2) {
        self.capacity = capacity
    }

    /// Queues a chunk; waits while `capacity` chunks are already queued. A
    /// closed pipe drops the chunk at once (its stream has ended).
    func send(_ chunk: BatchChunk) async {
        enum Step { case done, wait }
        let step = state.withLock { state -> Step in
            guard !state.closed else { return .done }
            if let consumer = state.consumer {
                state.consumer = nil
                consumer.resume(returning: chunk)
                return .done
            }
            state.queue.append(chunk)
            return state.queue.count >= capacity ? .wait : .done
        }
        guard case .wait = step else { return }
        await withCheckedContinuation { (producer: CheckedContinuation<Void, Never>) in
            let resumeNow = state.withLock { state -> Bool in
                guard !state.closed, state.queue.count >= capacity else { return true }
                state.producers.append(producer)
                return false
            }
            if resumeNow { producer.resume() }
        }
    }

    /// The next chunk, or nil once the pipe is closed and empty.
    func receive() async -> BatchChunk? {
        await withCheckedContinuation { (consumer: CheckedContinuation<BatchChunk?, Never>) in
            let (chunk, ready, producers) = state.withLock { state -> (BatchChunk?, Bool, [CheckedContinuation<Void, Never>]) in
                if let chunk = state.queue.popFirst() {
                    defer { state.producers = [] }
                    return (chunk, true, state.producers)
                }
                if state.closed { return (nil, true, []) }
                state.consumer = consumer
                return (nil, false, [])
            }
            for producer in producers { producer.resume() }
            if ready { consumer.resume(returning: chunk) }
        }
    }

    /// Why the stream must end, if a chunk was refused (read after `receive` returned nil).
    var failure: WireStatus? { state.withLock { $0.failure } }

    /// Ends the pipe because a chunk broke a rule: the stream ends with `status`, the connection goes on.
    func fail(_ status: WireStatus) {
        state.withLock { if $0.failure == nil { $0.failure = status } }
        close()
    }

    /// Ends the pipe: a waiting receiver gets nil, waiting senders go on.
    func close() {
        let (consumer, producers) = state.withLock { state in
            state.closed = true
            state.queue.removeAll()
            defer {
                state.consumer = nil
                state.producers = []
            }
            return (state.consumer, state.producers)
        }
        consumer?.resume(returning: nil)
        for producer in producers { producer.resume() }
    }
}
