import FanoutClient
import FanoutWire
import Foundation

/// Follows a batch until it ends, drawing a live progress bar on a terminal
/// (counts, %, rate, ETA) or printing plain progress lines otherwise. Always
/// writes to standard error so stdout stays clean for scripts.
struct ProgressView {
    var batchID: UInt64
    /// Events of the batch come after this sequence (read before submitting,
    /// so the replay does not scan older events).
    var since: UInt64 = 0
    var interactive = Console.stderrIsTerminal

    /// Returns the batch's final state.
    func follow(_ client: FanoutClient) async throws -> BatchInfo {
        let start = Date()
        var lastPlainLine = Date.distantPast
        var since = since
        while true {
            do {
                for try await event in client.subscribe(
                    ownerID: "", eventTypes: [.batchProgress, .batchCompleted, .batchCancelled, .batchFailed],
                    batchID: batchID, since: since)
                {
                    since = event.sequence
                    guard let counts = event.counts else { continue }
                    let terminal = event.type != .batchProgress
                    if interactive {
                        draw(counts: counts, progress: event.progress, elapsed: Date().timeIntervalSince(start), final: terminal)
                    } else if terminal || Date().timeIntervalSince(lastPlainLine) >= 1 {
                        lastPlainLine = Date()
                        Console.error(plainLine(counts: counts, progress: event.progress, elapsed: Date().timeIntervalSince(start)))
                    }
                    if terminal { return try await client.batch(batchID) }
                }
                // The daemon ended the stream (shutdown): report where things stand.
                return try await client.batch(batchID)
            } catch let error as FanoutClientError where error.lagged || error.code == .outOfRange {
                // Fell behind, or retention trimmed past us: a progress view only needs the latest counts.
                since = error.lastSequence
            }
        }
    }

    private func rate(_ counts: BatchCounts, _ elapsed: TimeInterval) -> Double {
        elapsed > 0 ? Double(counts.finished) / elapsed : 0
    }

    private func eta(_ counts: BatchCounts, _ elapsed: TimeInterval) -> String {
        let speed = rate(counts, elapsed)
        guard speed > 0, counts.finished < counts.total else { return counts.finished >= counts.total ? "0s" : "--" }
        return Self.duration(Double(counts.total - counts.finished) / speed)
    }

    static func duration(_ seconds: Double) -> String {
        if seconds < 60 { return "\(Int(seconds.rounded(.up)))s" }
        if seconds < 3600 { return "\(Int(seconds) / 60)m\(Int(seconds) % 60)s" }
        return "\(Int(seconds) / 3600)h\(Int(seconds) % 3600 / 60)m"
    }

    func plainLine(counts: BatchCounts, progress: Double, elapsed: TimeInterval) -> String {
        String(format: "batch %llu: %.1f%% %u/%u done, %u failed, %.1f tasks/s, eta %@",
               batchID, progress, counts.finished, counts.total, counts.failed + counts.expired, rate(counts, elapsed),
               eta(counts, elapsed))
    }

    private func draw(counts: BatchCounts, progress: Double, elapsed: TimeInterval, final: Bool) {
        let width = 30
        let filled = min(width, Int((progress / 100 * Double(width)).rounded(.down)))
        let bar = String(repeating: "█", count: filled) + String(repeating: "░", count: width - filled)
        var line = String(format: "\r\u{1B}[2K%@ %5.1f%% %u/%u", bar, progress, counts.finished, counts.total)
        if counts.failed + counts.expired > 0 { line += " · \(counts.failed + counts.expired) failed" }
        if counts.cancelled > 0 { line += " · \(counts.cancelled) cancelled" }
        line += String(format: " · %.1f/s · ETA %@", rate(counts, elapsed), eta(counts, elapsed))
        if final { line += "\n" }
        FileHandle.standardError.write(Data(line.utf8))
    }
}
