import DequeModule
import FanoutWire
import Synchronization

/// The chunks of a chunked EnqueueBatch, on their way to the stream storing them.
typealias ChunkPipe = StreamPipe<BatchChunk>

/// Hands a stream's messages from the connection's read loop to the task
/// serving the stream, at most `capacity` ahead: when the stream is slower
/// than the client (the store, say), the read loop waits, the socket stops
/// being read, and the client is slowed down instead of the daemon
/// buffering what it sends.
final class StreamPipe<Element: Sendable>: Sendable {
    private struct State {
        var queue: Deque<Element> = []
        var consumer: CheckedContinuation<Element?, Never>?
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

    /// Queues a message; waits while `capacity` are already queued. A
    /// closed pipe drops it at once (its stream has ended).
    func send(_ chunk: Element) async {
        // True when the sender must wait for room.
        let mustWait = state.withLock { state -> Bool in
            guard !state.closed else { return false }
            if let consumer = state.consumer {
                state.consumer = nil
                consumer.resume(returning: chunk)
                return false
            }
            state.queue.append(chunk)
            return state.queue.count >= capacity
        }
        guard mustWait else { return }
        await withCheckedContinuation { (producer: CheckedContinuation<Void, Never>) in
            let resumeNow = state.withLock { state -> Bool in
                guard !state.closed, state.queue.count >= capacity else { return true }
                state.producers.append(producer)
                return false
            }
            if resumeNow { producer.resume() }
        }
    }

    /// The next message, or nil once the pipe is closed and empty.
    func receive() async -> Element? {
        await withCheckedContinuation { (consumer: CheckedContinuation<Element?, Never>) in
            let (chunk, ready, producers) = state.withLock { state -> (Element?, Bool, [CheckedContinuation<Void, Never>]) in
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

    /// Why the stream must end, if a message was refused (read after `receive` returned nil).
    var failure: WireStatus? { state.withLock { $0.failure } }

    /// Ends the pipe because a message broke a rule: the stream ends with `status`, the connection goes on.
    func fail(_ status: WireStatus) {
        state.withLock { if $0.failure == nil { $0.failure = status } }
        close()
    }

    /// Ends the input, keeping what was sent: the receiver gets it, then nil.
    /// New messages are dropped; waiting senders go on.
    func finish() {
        let (consumer, producers) = state.withLock { state in
            state.closed = true
            defer {
                state.consumer = nil
                state.producers = []
            }
            // A waiting receiver means nothing is queued.
            return (state.consumer, state.producers)
        }
        consumer?.resume(returning: nil)
        for producer in producers { producer.resume() }
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
