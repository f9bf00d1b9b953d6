#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#endif
import FanoutClient
import FanoutWire
import Foundation
import Testing

/// Regression tests for the hardening issue, through the real `fanoutd`
/// process and socket: a task that would exhaust it, a task that kills it,
/// another local user, and the socket's folder.
@Suite struct HardeningProcessTests {
    private static func flags(_ directory: String, _ extra: [String] = []) -> [String] {
        ["--socket", directory + "/d.sock", "--db", directory + "/fanout.db"] + extra
    }

    @Test("a task asking echo for a billion turns fails at once; fanoutd keeps answering")
    func billionTurns() async throws {
        try await withListeningDaemon { daemon, socket, _ in
            try await withClient(socket) { client in
                let batch = try await client.enqueueBatch(ownerID: "x", agent: "echo", tasks: [
                    TaskSpec(customID: "poison", payload: Array(#"{"turns":1000000000}"#.utf8)),
                    TaskSpec(customID: "slow-poison", payload: Array(#"{"turns":100000,"delay_ms":0}"#.utf8)),
                ])
                for _ in 0..<10 {
                    let started = ContinuousClock.now
                    _ = try await client.serverInfo()
                    #expect(ContinuousClock.now - started < .seconds(3), "ServerInfo took \(ContinuousClock.now - started)")
                    try await Task.sleep(for: .milliseconds(100))
                }
                _ = try await withDeadline(.seconds(30)) { try await events(of: batch.id, owner: "x", on: client, since: 0) }
                var results: [String: TaskResult] = [:]
                for try await result in client.results(batchID: batch.id) { results[result.customID] = result }
                #expect(results["poison"]?.status == .failed)
                #expect(results["poison"]?.error?.code == "invalid_payload")
                #expect(results["slow-poison"]?.status == .failed)
            }
            #expect(daemon.isRunning)
        }
    }

    @Test("a task that is running whenever fanoutd dies fails once its attempts are used up, saying so")
    func crashesCountAsAttempts() async throws {
        try await withTemporaryDirectory { directory in
            let socket = directory + "/d.sock"
            let config = directory + "/fanout.json"
            try #"{"agents": [{"name": "echo", "runner": "echo", "max_attempts": 2}]}"#.write(toFile: config, atomically: true, encoding: .utf8)
            let arguments = Self.flags(directory, ["--config", config])
            var batchID: UInt64 = 0
            for life in 1...3 {
                let daemon = try await DaemonProcess(arguments: arguments, logPath: directory + "/life\(life).log")
                defer { daemon.kill() }
                try await daemon.waitUntilListening(socket)
                if life == 1 {
                    batchID = try await withClient(socket) { client in
                        try await client.enqueueBatch(ownerID: "x", agent: "echo", tasks: [
                            TaskSpec(customID: "killer", payload: Array(#"{"delay_ms":600000}"#.utf8)),
                        ]).id
                    }
                }
                let batchID = batchID
                try await withClient(socket) { client in
                    if life < 3 {
                        // Running again after each restart, on its next attempt.
                        try await withDeadline(.seconds(20)) {
                            while true {
                                let task = try await client.results(batchID: batchID).first { _ in true }
                                #expect(task == nil, "the task finished early: \(String(describing: task))")
                                let batch = try await client.batch(batchID)
                                if batch.counts.running == 1 { return }
                                try await Task.sleep(for: .milliseconds(20))
                            }
                        }
                        return
                    }
                    // Third life: the second crash used up the last attempt.
                    let info = try await withDeadline(.seconds(20)) {
                        while true {
                            let batch = try await client.batch(batchID)
                            if batch.status == .completed { return batch }
                            try await Task.sleep(for: .milliseconds(20))
                        }
                    }
                    #expect(info.counts.failed == 1)
                    let result = try #require(try await client.results(batchID: batchID).first { _ in true })
                    #expect(result.status == .failed)
                    #expect(result.attempt == 2)
                    #expect(result.error?.code == "interrupted")
                    #expect(result.error?.message.contains("2 time(s)") == true, "\(String(describing: result.error))")
                    let failed = try await client.subscribe(eventTypes: [.taskFailed], batchID: batchID, since: 0, follow: false)
                        .reduce(into: [Event]()) { $0.append($1) }
                    #expect(failed.count == 1)
                }
                if life < 3 { daemon.kill() }
            }
        }
    }

    // MARK: Another local user

    /// `fanout` run as uid 65534 through setpriv, from a copy in `directory`: the build folder may
    /// be where another user cannot reach it (a checkout under /root).
    private static func asNobody(_ arguments: [String], in directory: String,
                                 timeoutSeconds: Double = 20) async throws -> (status: Int32, out: String, err: String) {
        try await ChildProcess.run("/usr/bin/setpriv",
                                   ["--reuid=65534", "--regid=65534", "--clear-groups", try publicCLI(in: directory)] + arguments,
                                   timeoutSeconds: timeoutSeconds)
    }

    private static func publicCLI(in directory: String) throws -> String {
        let copy = directory + "/fanout"
        if !FileManager.default.fileExists(atPath: copy) {
            try FileManager.default.copyItem(atPath: try #require(FanoutCLI.path), toPath: copy)
            chmod(copy, 0o755)
        }
        return copy
    }

    private static func batchIDs(inJSONLines text: String) -> Set<UInt64> {
        Set(text.split(separator: "\n").compactMap { line in
            (try? JSONSerialization.jsonObject(with: Data(line.utf8)) as? [String: Any])?["batch_id"] as? UInt64
                ?? ((try? JSONSerialization.jsonObject(with: Data(line.utf8)) as? [String: Any])?["batch_id"] as? Int).map(UInt64.init)
        })
    }

    @Test("another uid sees only its own events: replayed, live, owner-wide and with an empty owner",
          .enabled(if: getuid() == 0 && FileManager.default.isExecutableFile(atPath: "/usr/bin/setpriv")))
    func eventsAreIsolatedByUID() async throws {
        try await withTemporaryDirectory { directory in
            // Others must reach the socket: the folder is traversable and the socket open to all.
            chmod(directory, 0o755)
            let socket = directory + "/d.sock"
            try await withDaemonProcess(Self.flags(directory, ["--socket-mode", "0666"]), logPath: directory + "/fanoutd.log") { daemon in
                try await daemon.waitUntilListening(socket)
                let input = directory + "/in.jsonl"
                try #"{"custom_id": "mine", "payload": "x"}"#.write(toFile: input, atomically: true, encoding: .utf8)
                chmod(input, 0o644)
                let rootBefore = try await withClient(socket) { client in
                    try await client.enqueueBatch(ownerID: "shared", agent: "echo", tasks: [TaskSpec(customID: "secret-of-root", payload: [1])])
                }
                // A follower as the other user, started before more work arrives.
                let cli = try Self.publicCLI(in: directory)
                let follower = try await BackgroundProcess("/usr/bin/setpriv", ["--reuid=65534", "--regid=65534", "--clear-groups", cli,
                                                                          "events", "--owner", "shared", "--follow", "--json", "--socket", socket],
                                                     logPrefix: directory + "/follower")
                defer { follower.stop() }
                try await Task.sleep(for: .milliseconds(300))
                let mine = try await Self.asNobody(["submit", input, "--agent", "echo", "--owner", "shared", "--watch", "--socket", socket],
                                                   in: directory)
                #expect(mine.status == 0, "\(mine.err)")
                let myBatch = try #require(UInt64(mine.out.trimmingCharacters(in: .whitespacesAndNewlines)), "\(mine.out)")
                let rootAfter = try await withClient(socket) { client in
                    let batch = try await client.enqueueBatch(ownerID: "shared", agent: "echo", tasks: [TaskSpec(customID: "root-2", payload: [2])])
                    _ = try await events(of: batch.id, owner: "shared", on: client, since: 0)
                    return batch
                }
                try await Task.sleep(for: .milliseconds(300))
                follower.stop()
                let live = Self.batchIDs(inJSONLines: follower.output)
                #expect(live == [myBatch], "live events of other batches reached uid 65534: \(follower.output)")

                for owner in [["--owner", "shared"], []] {
                    let replay = try await Self.asNobody(["events", "--json", "--socket", socket] + owner, in: directory)
                    #expect(replay.status == 0, "\(replay.err)")
                    #expect(Self.batchIDs(inJSONLines: replay.out) == [myBatch], "replay \(owner): \(replay.out)")
                    #expect(!replay.out.contains("secret-of-root") && !replay.out.contains("root-2"))
                }
                let denied = try await Self.asNobody(["events", "--batch", "\(rootBefore.id)", "--json", "--socket", socket], in: directory)
                #expect(denied.status != 0)
                #expect(denied.err.contains("PERMISSION_DENIED"), "\(denied.err)")
                // Root, the daemon's own user, sees everything.
                let all = try await withClient(socket) { client in
                    try await client.subscribe(ownerID: "shared", follow: false).reduce(into: Set<UInt64>()) { $0.insert($1.batchID) }
                }
                #expect(all == [rootBefore.id, myBatch, rootAfter.id])
            }
        }
    }

    // MARK: A full disk

    @Test("on a full disk fanoutd refuses new batches with UNAVAILABLE, answers reads, and resumes by itself once there is room",
          .enabled(if: getuid() == 0))
    func fullDisk() async throws {
        try await withTemporaryDirectory { directory in
            let disk = directory + "/disk"
            try FileManager.default.createDirectory(atPath: disk, withIntermediateDirectories: false)
            // A small filesystem of its own (where mounting is not allowed there is nothing to test here),
            // large enough that once the filler is gone SQLite's WAL and its checkpoint have room again.
            let mount = try await ChildProcess.run("/bin/mount", ["-t", "tmpfs", "-o", "size=32m", "tmpfs", disk])
            guard mount.status == 0 else { return }
            defer { _ = ChildProcess.runBlocking("/bin/umount", ["-l", disk]) }
            let socket = directory + "/d.sock"
            try await withDaemonProcess(["--socket", socket, "--db", disk + "/fanout.db", "--concurrency", "4"],
                                        logPath: directory + "/fanoutd.log") { daemon in
                try await daemon.waitUntilListening(socket)
                try await withClient(socket) { client in
                    let slow = Array(#"{"delay_ms": 30}"#.utf8)
                    let first = try await client.enqueueBatch(ownerID: "disk", agent: "echo",
                                                              tasks: (0..<200).map { TaskSpec(customID: "a\($0)", payload: slow) })
                    // Fill the disk to the last byte.
                    let filler = disk + "/filler"
                    FileManager.default.createFile(atPath: filler, contents: nil)
                    let handle = try FileHandle(forWritingTo: URL(fileURLWithPath: filler))
                    let block = Data(count: 64 * 1024)
                    while (try? handle.write(contentsOf: block)) != nil {}
                    let byte = Data(count: 1)
                    while (try? handle.write(contentsOf: byte)) != nil {}
                    try? handle.close()

                    // New work is refused with a clear status (the commit loop notices, or the insert itself fails).
                    var refusal: FanoutClientError?
                    for attempt in 0..<200 where refusal == nil {
                        do {
                            _ = try await client.enqueueBatch(ownerID: "disk", agent: "echo",
                                                              tasks: [TaskSpec(customID: "probe-\(attempt)", payload: Array(repeating: 1, count: 200))])
                            try await Task.sleep(for: .milliseconds(20))
                        } catch let error as FanoutClientError {
                            refusal = error
                        }
                    }
                    let refused = try #require(refusal, "enqueues were still accepted on a full disk")
                    #expect(refused.code == .unavailable, "\(refused)")
                    // Reads are answered meanwhile.
                    let during = try await client.batch(first.id)
                    #expect(during.id == first.id)
                    #expect(daemon.isRunning)

                    try FileManager.default.removeItem(atPath: filler)
                    let done: BatchInfo
                    do {
                        done = try await withDeadline(.seconds(60)) {
                            while true {
                                let batch = try await client.batch(first.id)
                                if batch.status == .completed { return batch }
                                try await Task.sleep(for: .milliseconds(50))
                            }
                        }
                    } catch {
                        let info = try? await client.batch(first.id)
                        let listing = try? await ChildProcess.run("/bin/sh", ["-c", "df -k \(disk); ls -la \(disk)"])
                        Issue.record("\(error); the batch: \(String(describing: info))\n\(listing?.out ?? "")\nfanoutd's log:\n\(daemon.output.suffix(4_000))")
                        throw error
                    }
                    #expect(done.counts.completed == 200, "\(done.counts)")
                    let completions = try await client.subscribe(eventTypes: [.taskCompleted], batchID: first.id, since: 0, follow: false)
                        .reduce(into: [UInt64: Int]()) { $0[$1.taskID, default: 0] += 1 }
                    #expect(completions.count == 200 && completions.values.allSatisfy { $0 == 1 })
                    try await expectClientWorks(client, owner: "disk")
                }
            }
        }
    }

    // MARK: The socket's folder

    @Test("fanoutd refuses a socket folder another user owns, or that others can write")
    func unsafeSocketFolders() async throws {
        try await withTemporaryDirectory { directory in
            let theirs = directory + "/theirs"
            try FileManager.default.createDirectory(atPath: theirs, withIntermediateDirectories: false)
            if getuid() == 0 {
                chown(theirs, 65534, 65534)
                try await withDaemonProcess(["--socket", theirs + "/d.sock", "--db", directory + "/a.db"], logPath: directory + "/a.log") { daemon in
                    let status = await daemon.waitForExit(seconds: 15)
                    #expect(status != nil && status != 0)
                    #expect(daemon.output.contains("belongs to uid 65534"), "\(daemon.output)")
                }
            }
            let open = directory + "/open"
            try FileManager.default.createDirectory(atPath: open, withIntermediateDirectories: false)
            chmod(open, 0o777)
            try await withDaemonProcess(["--socket", open + "/d.sock", "--db", directory + "/b.db"], logPath: directory + "/b.log") { daemon in
                let status = await daemon.waitForExit(seconds: 15)
                #expect(status != nil && status != 0)
                #expect(daemon.output.contains("writable by other users"), "\(daemon.output)")
            }
        }
    }

    @Test("a client refuses a socket that belongs to another uid unless told to trust it",
          .enabled(if: getuid() == 0))
    func clientChecksTheSocketOwner() async throws {
        try await withTestDaemon { daemon in
            chown(daemon.socketPath, 65534, 65534)
            let error = await caughtClientError {
                _ = try await FanoutClient.connect(socketPath: daemon.socketPath, trustedSocketOwners: .selfOrRoot)
            }
            #expect(error?.code == .permissionDenied)
            #expect(error?.message.contains("FANOUT_SOCKET_OWNERS=65534") == true, "\(String(describing: error))")
            let trusted = try await FanoutClient.connect(socketPath: daemon.socketPath, trustedSocketOwners: .uids([65534]))
            try await expectClientWorks(trusted)
            await trusted.close()
        }
    }
}

@Suite struct ListenBacklogTests {
    /// With the old backlog of 256 (or `listen_backlog` 16), hundreds of these got EAGAIN.
    @Test("a burst of 600 non-blocking connects is queued by the kernel, none refused with EAGAIN")
    func burstOfConnects() async throws {
        try await withListeningDaemon { daemon, path, _ in
            var descriptors: [Int32] = []
            defer { for fd in descriptors { close(fd) } }
            var refused = 0
            for _ in 0..<600 {
                let fd = socket(AF_UNIX, Int32(SOCK_STREAM.rawValue), 0)
                guard fd >= 0 else { break }
                descriptors.append(fd)
                _ = fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) | O_NONBLOCK)
                var address = sockaddr_un()
                address.sun_family = sa_family_t(AF_UNIX)
                withUnsafeMutableBytes(of: &address.sun_path) { buffer in
                    let bytes = Array(path.utf8)
                    buffer.copyBytes(from: bytes)
                    buffer[bytes.count] = 0
                }
                let result = withUnsafePointer(to: &address) {
                    $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { connect(fd, $0, socklen_t(MemoryLayout<sockaddr_un>.size)) }
                }
                if result != 0 && errno == EAGAIN { refused += 1 }
            }
            #expect(descriptors.count == 600)
            #expect(refused == 0, "\(refused) of 600 connects refused with EAGAIN")
            #expect(daemon.isRunning)
        }
    }
}

@Suite struct ShutdownWhileConnectingTests {
    /// NIO stops the process if a connection accepted as the listener closes is never run; 20
    /// SIGTERMs sent while clients connect must all end with a clean exit.
    @Test("SIGTERM while clients are connecting: fanoutd exits cleanly every time")
    func sigtermWhileConnecting() async throws {
        try await withTemporaryDirectory { directory in
            for round in 0..<20 {
                let socket = directory + "/d\(round).sock"
                try await withDaemonProcess(["--socket", socket, "--db", directory + "/f\(round).db"],
                                            logPath: directory + "/r\(round).log") { daemon in
                    try await daemon.waitUntilListening(socket)
                    for _ in 0..<5 { _ = socketAcceptsConnections(socket) }
                    daemon.signal(SIGTERM)
                    for _ in 0..<20 { _ = socketAcceptsConnections(socket) }
                    let status = await daemon.waitForExit(seconds: 30)
                    #expect(status == 0, "round \(round): exit \(String(describing: status))\n\(daemon.output.suffix(1_500))")
                }
            }
        }
    }
}
