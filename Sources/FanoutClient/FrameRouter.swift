import FanoutWire
import NIOCore

/// Hands each read's frames to their streams right on the event loop: a
/// stream's reader wakes once per read, with no hop through a reader task
/// first (about one thread wake-up less per answer). Frames read before the
/// connection exists wait here, in order.
final class FrameRouter: ChannelInboundHandler {
    typealias InboundIn = [Frame]
    typealias InboundOut = [Frame]

    private var connection: ClientConnection?
    private var early: [[Frame]] = []

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        let frames = unwrapInboundIn(data)
        guard let connection else {
            early.append(frames)
            return
        }
        connection.route(frames)
    }

    /// On the event loop: routes what came early, then everything as it comes.
    func start(routingTo connection: ClientConnection) {
        self.connection = connection
        for frames in early { connection.route(frames) }
        early = []
    }
}
