#if canImport(Glibc)
import FanoutTestSupport
import Glibc
#elseif canImport(Musl)
import Musl
#elseif canImport(Darwin)
import Darwin
#endif
import FanoutClient
import FanoutScheduler
import FanoutServer
@_exported import FanoutTestSupport
import FanoutWire
import Foundation
import NIOCore
import NIOPosix
import Synchronization
import Testing

// Helpers shared by the integration tests: a daemon that is always stopped,
// a raw (frame-less) socket client for hostile input, and the real `fanoutd`
// executable as a child process.

// MARK: - In-process daemon

/// Starts a `TestDaemon`, runs `body`, and stops the daemon (removing its
/// directory) whether `body` returned or threw.
func withTestDaemon<T: Sendable>(
    on kind: StoreKind = .sqlite,
    agents: [AgentConfiguration] = [AgentConfiguration(name: "echo", runner: "echo", concurrency: 32)],
    globalConcurrency: Int = 64,
    runners: [String: any Runner] = [:],
    workerPool: WorkerPool? = nil,
    configure: (inout ServerConfiguration) -> Void = { _ in },
    _ body: (TestDaemon) async throws -> T
) async throws -> T {
    let daemon = try await TestDaemon(on: kind, agents: agents, globalConcurrency: globalConcurrency, runners: runners,
                                      workerPool: workerPool, configure: configure)
    do {
        let value = try await body(daemon)
        await daemon.stop()
        return value
    } catch {
        await daemon.stop()
        throw error
    }
}

/// True for the first caller of `claim()` only: for cleanup that must run once.
final class Once: Sendable {
    private let claimed = Mutex(false)

    func claim() -> Bool {
        claimed.withLock { claimed in
            defer { claimed = true }
            return !claimed
        }
    }
}

/// A `TestDaemon` on an existing directory (a restart on the same database);
/// stopped afterwards, the directory is left for the caller to remove.
func withTestDaemonIn<T: Sendable>(_ directory: String, _ body: (TestDaemon) async throws -> T) async throws -> T {
    let daemon = try await TestDaemon(directory: directory)
    do {
        let value = try await body(daemon)
        await daemon.stop(removeFiles: false)
        return value
    } catch {
        await daemon.stop(removeFiles: false)
        throw error
    }
}

/// Connects a client, runs `body`, closes the client whatever happens.
func withClient<T: Sendable>(
    _ socketPath: String, name: String = "test", maxFrameBytes: Int = 64 * 1024 * 1024,
    _ body: (FanoutClient) async throws -> T
) async throws -> T {
    let client = try await FanoutClient.connect(socketPath: socketPath, clientName: name, maxFrameBytes: maxFrameBytes)
    do {
        let value = try await body(client)
        await client.close()
        return value
    } catch {
        await client.close()
        throw error
    }
}

/// Enqueues a one-task batch and reads it back: the connection serves calls.
func expectClientWorks(_ client: FanoutClient, owner: String = "probe",
                       sourceLocation: SourceLocation = #_sourceLocation) async throws {
    let batch = try await client.enqueueBatch(ownerID: owner, agent: "echo",
                                              tasks: [TaskSpec(customID: "probe", payload: Array("ping".utf8))])
    let read = try await client.batch(batch.id)
    #expect(read.id == batch.id, sourceLocation: sourceLocation)
    #expect(read.counts.total == 1, sourceLocation: sourceLocation)
}

/// Events of one batch until the first event of a type in `until` (included).
func events(of batchID: UInt64, owner: String, on client: FanoutClient, since: UInt64 = 0,
            until: Set<EventType> = [.batchCompleted, .batchCancelled, .batchFailed]) async throws -> [Event] {
    var seen: [Event] = []
    for try await event in client.subscribe(ownerID: owner, batchID: batchID, since: since) {
        seen.append(event)
        if until.contains(event.type) { break }
    }
    return seen
}

/// Runs `body` with the error it throws, or records an issue if it throws none.
func caughtClientError(_ sourceLocation: SourceLocation = #_sourceLocation,
                       _ body: () async throws -> Void) async -> FanoutClientError? {
    do {
        try await body()
        Issue.record("expected a FanoutClientError, the call succeeded", sourceLocation: sourceLocation)
        return nil
    } catch let error as FanoutClientError {
        return error
    } catch {
        Issue.record("expected a FanoutClientError, got \(type(of: error)): \(error)", sourceLocation: sourceLocation)
        return nil
    }
}

// MARK: - Frames by hand

/// A frame as it travels on the socket: 4-byte big-endian length, then the body.
func framed(_ frame: Frame) throws -> [UInt8] {
    framed(body: try FrameCoding.encode(frame))
}

func framed(body: [UInt8]) -> [UInt8] {
    let length = UInt32(body.count)
    return [UInt8(length >> 24), UInt8((length >> 16) & 0xff), UInt8((length >> 8) & 0xff), UInt8(length & 0xff)] + body
}

/// A client with no frame handlers: it writes whatever bytes it is given and
/// splits what it reads into frames itself, so tests can send what a
/// well-behaved client never would.
struct RawSession {
    private var inbound: NIOAsyncChannelInboundStream<ByteBuffer>.AsyncIterator
    private let outbound: NIOAsyncChannelOutboundWriter<ByteBuffer>
    private var buffer = ByteBuffer()
    private(set) var closedByPeer = false

    fileprivate init(inbound: NIOAsyncChannelInboundStream<ByteBuffer>, outbound: NIOAsyncChannelOutboundWriter<ByteBuffer>) {
        self.inbound = inbound.makeAsyncIterator()
        self.outbound = outbound
    }

    func send(_ bytes: [UInt8]) async throws {
        try await outbound.write(ByteBuffer(bytes: bytes))
    }

    func send(_ frame: Frame) async throws {
        try await send(try framed(frame))
    }

    /// Sends Hello (version 1) and expects Welcome.
    mutating func handshake() async throws {
        try await send(Frame(streamID: 0, kind: .request(.hello(Hello(protocolVersion: 1, clientName: "raw")))))
        let reply = try #require(try await readFrame())
        guard case .response(.welcome) = reply.frame.kind, reply.frame.streamID == 0 else {
            Issue.record("expected Welcome, got \(reply.frame)")
            throw RawSessionError.unexpected("\(reply.frame)")
        }
    }

    /// The next frame and its body size, or nil when the peer closed the
    /// connection (cleanly or with a reset) between frames.
    mutating func readFrame() async throws -> (frame: Frame, bodyBytes: Int)? {
        while true {
            if let length = buffer.getInteger(at: buffer.readerIndex, endianness: .big, as: UInt32.self),
               buffer.readableBytes >= 4 + Int(length) {
                buffer.moveReaderIndex(forwardBy: 4)
                let body = buffer.readBytes(length: Int(length))!
                return (try FrameCoding.decode(body), Int(length))
            }
            let chunk: ByteBuffer?
            do {
                chunk = try await inbound.next()
            } catch {
                chunk = nil  // ECONNRESET and friends: the peer is gone.
            }
            guard var chunk else {
                closedByPeer = true
                if buffer.readableBytes > 0 { throw RawSessionError.truncated(buffer.readableBytes) }
                return nil
            }
            buffer.writeBuffer(&chunk)
        }
    }

    /// Reads frames until the connection closes; returns the ones that came.
    mutating func readUntilClosed() async throws -> [Frame] {
        var frames: [Frame] = []
        while let next = try await readFrame() { frames.append(next.frame) }
        return frames
    }
}

enum RawSessionError: Error {
    case unexpected(String)
    case truncated(Int)
}

/// Connects to `socketPath` without any protocol handler and runs `body`.
func withRawSession<T: Sendable>(_ socketPath: String, _ body: (inout RawSession) async throws -> T) async throws -> T {
    let channel = try await ClientBootstrap(group: MultiThreadedEventLoopGroup.singleton)
        .connect(unixDomainSocketPath: socketPath) { channel in
            channel.eventLoop.makeCompletedFuture {
                try NIOAsyncChannel<ByteBuffer, ByteBuffer>(wrappingChannelSynchronously: channel)
            }
        }
    return try await channel.executeThenClose { inbound, outbound in
        var session = RawSession(inbound: inbound, outbound: outbound)
        return try await body(&session)
    }
}

/// The status of an `EndOfStream` frame, or nil for any other kind.
func endStatus(_ frame: Frame) -> WireStatus? {
    if case .end(let status) = frame.kind { return status }
    return nil
}

// MARK: - Sockets and files

/// Whether something accepts connections on the Unix socket at `path`.
func socketAcceptsConnections(_ path: String) -> Bool {
    let fd = socket(AF_UNIX, Int32(SOCK_STREAM.rawValue), 0)
    guard fd >= 0 else { return false }
    defer { close(fd) }
    var address = unixAddress(path)
    let result = withUnsafePointer(to: &address) {
        $0.withMemoryRebound(to: sockaddr.self, capacity: 1) {
            connect(fd, $0, socklen_t(MemoryLayout<sockaddr_un>.size))
        }
    }
    return result == 0
}

/// Leaves a socket file nobody listens on, as a crashed daemon would:
/// binds a socket to `path` and closes it without unlinking.
func makeStaleSocketFile(_ path: String) throws {
    let fd = socket(AF_UNIX, Int32(SOCK_STREAM.rawValue), 0)
    guard fd >= 0 else { throw POSIXFailure("socket", errno) }
    defer { close(fd) }
    var address = unixAddress(path)
    let result = withUnsafePointer(to: &address) {
        $0.withMemoryRebound(to: sockaddr.self, capacity: 1) {
            bind(fd, $0, socklen_t(MemoryLayout<sockaddr_un>.size))
        }
    }
    guard result == 0 else { throw POSIXFailure("bind \(path)", errno) }
}

private func unixAddress(_ path: String) -> sockaddr_un {
    var address = sockaddr_un()
    address.sun_family = sa_family_t(AF_UNIX)
    withUnsafeMutableBytes(of: &address.sun_path) { buffer in
        let bytes = Array(path.utf8.prefix(buffer.count - 1))
        buffer.copyBytes(from: bytes)
        buffer[bytes.count] = 0
    }
    return address
}

/// The file type and permission bits of `path` (lstat: links are not followed).
func fileMode(_ path: String) -> mode_t? {
    var info = stat()
    guard lstat(path, &info) == 0 else { return nil }
    return info.st_mode
}

func isSocketFile(_ path: String) -> Bool {
    guard let mode = fileMode(path) else { return false }
    return (mode & S_IFMT) == S_IFSOCK
}

struct POSIXFailure: Error, CustomStringConvertible {
    var call: String
    var code: Int32
    init(_ call: String, _ code: Int32) {
        self.call = call
        self.code = code
    }
    var description: String { "\(call): \(String(cString: strerror(code)))" }
}

// MARK: - The fanoutd executable

enum FanoutdExecutable {
    /// `fanoutd` as built by SwiftPM: next to the test binary (the build
    /// products folder), else in the package's `.build/debug`. The
    /// `FANOUTD_PATH` environment variable overrides both.
    static let path: String? = {
        let fileManager = FileManager.default
        var candidates: [String] = []
        if let explicit = ProcessInfo.processInfo.environment["FANOUTD_PATH"], !explicit.isEmpty {
            candidates.append(explicit)
        }
        // Linux: the test runner is an executable in the products folder.
        if let exe = try? fileManager.destinationOfSymbolicLink(atPath: "/proc/self/exe") {
            candidates.append(URL(fileURLWithPath: exe).deletingLastPathComponent().appendingPathComponent("fanoutd").path)
        }
        // macOS: Bundle.main is xctest's; the test bundle sits in the products folder.
        for bundle in Bundle.allBundles where bundle.bundlePath.hasSuffix(".xctest") {
            candidates.append(bundle.bundleURL.deletingLastPathComponent().appendingPathComponent("fanoutd").path)
        }
        // Walk up from this file to the package root.
        var folder = URL(fileURLWithPath: #filePath).deletingLastPathComponent()
        while folder.path != "/" {
            if fileManager.fileExists(atPath: folder.appendingPathComponent("Package.swift").path) {
                candidates.append(folder.appendingPathComponent(".build/debug/fanoutd").path)
                break
            }
            folder.deleteLastPathComponent()
        }
        return candidates.first { fileManager.isExecutableFile(atPath: $0) }
    }()
}

/// A `fanoutd` child process; its stdout and stderr go to `logPath`.
final class DaemonProcess: Sendable {
    let process: SpawnedProcess
    let logPath: String

    init(arguments: [String], environment: [String: String] = [:], logPath: String) async throws {
        let executable = try #require(FanoutdExecutable.path,
                                      "fanoutd not found next to the tests; build it with `swift build --build-tests`")
        self.logPath = logPath
        let log = try openLog(logPath)
        // The daemon reads FANOUT_* variables: only the ones a test sets reach it.
        var inherited = ProcessInfo.processInfo.environment.filter { !$0.key.hasPrefix("FANOUT_") }
        inherited.merge(environment) { _, new in new }
        process = try await SpawnedProcess(executable, arguments, environment: inherited, stdout: fcntl(log, F_DUPFD_CLOEXEC, 0), stderr: log)
    }

    var pid: pid_t { process.pid }
    var isRunning: Bool { process.isRunning }

    var output: String { (try? String(contentsOfFile: logPath, encoding: .utf8)) ?? "" }

    func signal(_ number: Int32) {
        process.signal(number)
    }

    /// Waits for the process to exit; returns its status, or nil after `seconds`.
    func waitForExit(seconds: Double) async -> Int32? {
        await process.waitForExit(seconds: seconds)
    }

    /// Waits until the daemon accepts connections on `socketPath`; fails if it exits first.
    func waitUntilListening(_ socketPath: String, seconds: Double = 15) async throws {
        let deadline = ContinuousClock.now + .seconds(seconds)
        while !socketAcceptsConnections(socketPath) {
            guard process.isRunning else {
                throw DaemonProcessError.exited(await process.exitStatus(), output)
            }
            guard ContinuousClock.now < deadline else {
                throw DaemonProcessError.notListening(seconds, output)
            }
            try await Task.sleep(for: .milliseconds(25))
        }
    }

    /// SIGKILL and wait for the exit; safe to call more than once. For cleanup paths.
    func kill() {
        process.signalAndWait(SIGKILL)
    }
}

/// Creates (or truncates) `path` for a child's output; returns its descriptor.
func openLog(_ path: String) throws -> CInt {
    let fd = open(path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0o644)
    guard fd >= 0 else { throw POSIXError(POSIXErrorCode(rawValue: errno) ?? .EIO) }
    return fd
}

enum DaemonProcessError: Error, CustomStringConvertible {
    case exited(Int32, String)
    case notListening(Double, String)

    var description: String {
        switch self {
        case .exited(let status, let output): "fanoutd exited with status \(status) before listening:\n\(output)"
        case .notListening(let seconds, let output): "fanoutd did not listen within \(seconds) s:\n\(output)"
        }
    }
}

/// Starts `fanoutd` with the given arguments, runs `body`, then kills
/// whatever is still running.
func withDaemonProcess<T: Sendable>(
    _ arguments: [String], environment: [String: String] = [:], logPath: String,
    _ body: (DaemonProcess) async throws -> T
) async throws -> T {
    let daemon = try await DaemonProcess(arguments: arguments, environment: environment, logPath: logPath)
    defer { daemon.kill() }
    return try await body(daemon)
}

/// `fanoutd` in a fresh temporary directory (socket `d.sock`, database
/// `fanout.db`, plus `extra` flags), already listening; killed afterwards.
func withListeningDaemon<T: Sendable>(
    _ extra: [String] = [], environment: [String: String] = [:],
    _ body: (_ daemon: DaemonProcess, _ socket: String, _ directory: String) async throws -> T
) async throws -> T {
    try await withTemporaryDirectory { directory in
        let socket = directory + "/d.sock"
        return try await withDaemonProcess(["--socket", socket, "--db", directory + "/fanout.db"] + extra,
                                           environment: environment, logPath: directory + "/fanoutd.log") { daemon in
            try await daemon.waitUntilListening(socket)
            return try await body(daemon, socket, directory)
        }
    }
}

extension RawSession {
    /// Reads until stream `id` has ended and (when `awaitingServerInfo`) a
    /// ServerInfo answer came on another stream: a bad frame costs one stream,
    /// and the connection goes on. Returns stream `id`'s final status.
    mutating func finalStatus(of id: UInt32, awaitingServerInfo: Bool) async throws -> (status: WireStatus?, answered: Bool) {
        var status: WireStatus?
        var answered = false
        while status == nil || (awaitingServerInfo && !answered), let (frame, _) = try await readFrame() {
            if frame.streamID == id, let end = endStatus(frame) { status = end }
            if case .response(.serverInfo) = frame.kind { answered = true }
        }
        return (status, answered)
    }
}
