import FanoutWire
import Synchronization

/// The messages of a server stream (results, events) as an `AsyncSequence`.
/// The request is sent when iteration starts; ending iteration early
/// cancels the stream on the daemon.
public struct ServerStream<Element: Sendable>: AsyncSequence, Sendable {
    /// Held so the client (and its socket) lives while the stream is in use.
    let client: FanoutClient
    var connection: ClientConnection { client.connection }
    let request: Request
    let extract: @Sendable (StreamMessage) -> [Element]
    /// For streams of one element per message (events): skips an array per message.
    var extractOne: (@Sendable (StreamMessage) -> Element?)?
    /// For event streams: the client buffers at most this many frames, and
    /// `sequence` names what was delivered last when that runs out.
    var bufferLimit: Int?
    var sequence: (@Sendable (Element) -> UInt64)?
    var initialSequence: UInt64 = 0
    /// For results streams: past `bufferLimit` frames the stream is paused
    /// instead of failing (cancelled on the daemon, what is in flight still
    /// taken), and once the consumer has taken everything it is opened again
    /// with this request, made from the `sequence` delivered last. A slow
    /// consumer so holds a few pages, never the whole stream.
    var resume: (@Sendable (UInt64) -> Request)?

    public func makeAsyncIterator() -> AsyncIterator {
        AsyncIterator(stream: self)
    }

    public struct AsyncIterator: AsyncIteratorProtocol {
        let stream: ServerStream
        /// The stream's request, or the one that resumes it after a pause.
        private var request: Request
        private var streamID: UInt32?
        private var frames: FrameStream.AsyncIterator?
        /// Elements of the last message (a results page) not handed out yet.
        private var buffered: [Element] = []
        private var bufferedIndex = 0
        private var finished = false
        private var guardian: StreamGuardian?
        private var delivered: UInt64

        init(stream: ServerStream) {
            self.stream = stream
            request = stream.request
            delivered = stream.initialSequence
        }

        public mutating func next() async throws -> Element? {
            while true {
                if bufferedIndex < buffered.count {
                    let element = buffered[bufferedIndex]
                    bufferedIndex += 1
                    if let sequence = stream.sequence { delivered = sequence(element) }
                    return element
                }
                if finished { return nil }
                if frames == nil {
                    let (id, opened) = try await stream.connection.open(request, bufferLimit: stream.bufferLimit,
                                                                         pauses: stream.resume != nil)
                    streamID = id
                    frames = opened.makeAsyncIterator()
                    guardian = StreamGuardian(connection: stream.connection, streamID: id)
                }
                let next: Frame?
                do {
                    next = try await frames?.next()
                } catch var error as FanoutClientError where error.lagged && error.lastSequence == 0 {
                    finished = true
                    error.lastSequence = delivered
                    throw error
                }
                guard let frame = next else {
                    finished = true
                    if Task.isCancelled {
                        guardian?.cancel()
                        throw CancellationError()
                    }
                    throw FanoutClientError.connectionLost()
                }
                switch frame.kind {
                case .message(let message):
                    if let extractOne = stream.extractOne {
                        guard let element = extractOne(message) else { continue }
                        if let sequence = stream.sequence { delivered = sequence(element) }
                        return element
                    }
                    buffered = stream.extract(message)
                    bufferedIndex = 0
                case .end(let status):
                    guardian?.ended()
                    if status.code == .cancelled, let resume = stream.resume, frames?.paused == true {
                        // The client's own pause: everything before it has been handed out, so go on after it.
                        request = resume(delivered)
                        (frames, streamID, guardian) = (nil, nil, nil)
                        continue
                    }
                    finished = true
                    if status.code != .ok { throw FanoutClientError(status) }
                default:
                    continue
                }
            }
        }
    }
}

/// Tells the daemon to stop a stream the caller abandoned before its end.
final class StreamGuardian: Sendable {
    private let connection: ClientConnection
    private let streamID: UInt32
    private let done = Mutex(false)

    init(connection: ClientConnection, streamID: UInt32) {
        self.connection = connection
        self.streamID = streamID
    }

    func ended() {
        done.withLock { $0 = true }
        connection.forget(streamID)
    }

    func cancel() {
        let alreadyDone = done.withLock { value in
            defer { value = true }
            return value
        }
        guard !alreadyDone else { return }
        connection.forget(streamID)
        let (connection, id) = (connection, streamID)
        Task { try? await connection.send(Frame(streamID: id, kind: .cancel)) }
    }

    deinit {
        cancel()
    }
}

