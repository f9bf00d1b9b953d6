import FanoutCore
import FanoutScheduler
import FanoutStore
import Foundation
import Hummingbird
import NIOCore
import OpenAIBatchFormat

/// Receives `POST /v1/files`: a multipart form with `purpose` and `file`.
/// The file's lines are checked one by one as they arrive and stored in
/// chunks of whole lines, so an upload is never held whole in memory. A file
/// with bad lines is refused with their numbers and leaves nothing behind.
struct FileUpload {
    let store: any GatewayStore
    let configuration: GatewayConfiguration
    let ownerUID: UInt32

    /// Problems reported per refused upload; the rest are counted.
    static let maxReportedProblems = 20

    func receive(_ body: RequestBody, contentType: String?) async throws -> StoredFile {
        guard let contentType, contentType.lowercased().hasPrefix("multipart/form-data"),
              let boundary = Self.boundary(of: contentType) else {
            throw GatewayError.invalidRequest("expected a multipart/form-data body with a boundary (fields \"purpose\" and \"file\")")
        }
        var stream: MultipartStream
        do {
            stream = try MultipartStream(boundary: boundary)
        } catch {
            throw GatewayError.invalidRequest("\(error)")
        }
        let id = "file-" + UUID().uuidString.replacingOccurrences(of: "-", with: "").lowercased().prefix(24)
        let parts = Parts(configuration: configuration)
        let now = Milliseconds((Date().timeIntervalSince1970 * 1000).rounded())
        var file = StoredFile(id: String(id), ownerUID: ownerUID, purpose: "batch", filename: "upload.jsonl", createdAt: now)
        let store = self.store
        let created = file
        try await store.createFile(created)
        do {
            var chunkIndex = 0
            var received = 0
            for try await buffer in body {
                // Everything counts, headers and padding too: the limit bounds what a client can make us read.
                received += buffer.readableBytes
                if received > configuration.maxFileBytes + MultipartStream.maxHeaderBytes * 4 {
                    throw GatewayError.tooLarge("the upload is larger than \(configuration.maxFileBytes) bytes")
                }
                do {
                    try stream.feed(buffer.readableBytesView) { parts.handle($0) }
                } catch let malformed as MultipartStream.Malformed {
                    throw GatewayError.invalidRequest("the multipart body cannot be read: \(malformed)")
                }
                // Store full chunks as they fill; only the last, partial one stays in memory.
                while let chunk = parts.takeChunk(minimumBytes: configuration.chunkBytes) {
                    let index = chunkIndex
                    try await store.appendFileChunk(fileID: created.id, index: index, bytes: chunk)
                    chunkIndex += 1
                }
            }
            guard stream.isFinished, parts.fileEnded else {
                throw GatewayError.invalidRequest("the upload ended before its closing multipart boundary; was it cut off?")
            }
            guard parts.sawFile else { throw GatewayError.invalidRequest("the form has no \"file\" field", param: "file") }
            guard parts.purpose == "batch" else {
                throw GatewayError.invalidRequest("purpose must be \"batch\", not \"\((parts.purpose ?? "").prefix(100))\"", param: "purpose")
            }
            if !parts.problems.isEmpty {
                let more = parts.problemCount > parts.problems.count ? " (and \(parts.problemCount - parts.problems.count) more)" : ""
                throw GatewayError.invalidRequest("the file has invalid lines\(more): " + parts.problems.joined(separator: "; "),
                                                  code: "invalid_file", param: "file")
            }
            guard parts.lines > 0 else { throw GatewayError.invalidRequest("the file has no requests", code: "invalid_file", param: "file") }
            if let chunk = parts.takeChunk(minimumBytes: 1) {
                let index = chunkIndex
                try await store.appendFileChunk(fileID: created.id, index: index, bytes: chunk)
            }
            file.filename = parts.filename ?? file.filename
            file.bytes = parts.fileBytes
            file.lines = parts.lines
            let (bytes, lines, filename) = (file.bytes, file.lines, file.filename)
            try await store.completeFile(id: created.id, filename: filename, bytes: bytes, lines: lines)
            return file
        } catch {
            // In a task of its own: the upload may have failed because the request was cancelled, and a
            // cancelled task's store writes do not start.
            let id = created.id
            await Task { _ = try? await store.deleteFile(id: id) }.value
            throw error
        }
    }

    static func boundary(of contentType: String) -> String? {
        for parameter in contentType.split(separator: ";").dropFirst() {
            let pair = parameter.split(separator: "=", maxSplits: 1).map { $0.trimmingCharacters(in: .whitespaces) }
            if pair.count == 2, pair[0].lowercased() == "boundary" {
                return pair[1].trimmingCharacters(in: CharacterSet(charactersIn: "\""))
            }
        }
        return nil
    }
}

/// The form's parts as the parser reports them. Used by one task only.
private final class Parts {
    let configuration: GatewayConfiguration
    var purpose: String?
    var filename: String?
    var sawFile = false
    var fileEnded = false
    var receivedBytes = 0
    var fileBytes = 0
    var lines = 0
    var problems: [String] = []
    var problemCount = 0

    private enum Field { case purpose, file, other }
    private var field = Field.other
    private var purposeBytes: [UInt8] = []
    private var splitter: LineSplitter
    private var lineNumber = 0
    /// 128-bit digests of the custom ids so far: their uniqueness is checked without keeping them.
    private var customIDs = Set<IDDigest>()
    /// Whole lines waiting to be stored.
    private var pending: [UInt8] = []

    init(configuration: GatewayConfiguration) {
        self.configuration = configuration
        splitter = LineSplitter(maxLineBytes: configuration.maxLineBytes)
    }

    func handle(_ event: MultipartStream.Event) {
        switch event {
        case .partStarted(let headers):
            let parameters = Self.parameters(headers["content-disposition"] ?? "")
            switch parameters["name"] {
            case "purpose": field = .purpose
            case "file":
                field = .file
                sawFile = true
                filename = parameters["filename"].map { String($0.prefix(255)) }
            default: field = .other
            }
        case .bytes(let bytes):
            switch field {
            case .purpose:
                if purposeBytes.count < 256 { purposeBytes += bytes.prefix(256 - purposeBytes.count) }
            case .file:
                fileBytes += bytes.count
                splitter.feed(bytes) { handle($0) }
            case .other:
                break
            }
        case .partEnded:
            switch field {
            case .purpose: purpose = String(decoding: purposeBytes, as: UTF8.self).trimmingCharacters(in: .whitespacesAndNewlines)
            case .file:
                splitter.finish { handle($0) }
                fileEnded = true
            case .other: break
            }
            field = .other
        }
    }

    /// Stored lines in one piece once `minimumBytes` have gathered.
    func takeChunk(minimumBytes: Int) -> [UInt8]? {
        guard pending.count >= minimumBytes, !pending.isEmpty else { return nil }
        defer { pending = [] }
        return pending
    }

    private func handle(_ piece: LineSplitter.Piece) {
        lineNumber += 1
        switch piece {
        case .tooLong:
            problem("line \(lineNumber) is longer than \(configuration.maxLineBytes) bytes")
        case .line(var bytes):
            if bytes.last == UInt8(ascii: "\r") { bytes = bytes.dropLast() }
            if lineNumber == 1, bytes.starts(with: [0xEF, 0xBB, 0xBF]) { bytes = bytes.dropFirst(3) }
            if bytes.allSatisfy({ $0 == 0x20 || $0 == 0x09 }) { return }
            switch OpenAIBatchLine.parse(Array(bytes)) {
            case .failure(let failure):
                problem("line \(lineNumber): \(failure.message)")
            case .success(let request):
                if request.customID.utf8.count > configuration.maxCustomIDBytes {
                    problem("line \(lineNumber): custom_id is \(request.customID.utf8.count) bytes; the limit is \(configuration.maxCustomIDBytes)")
                    return
                }
                if request.body.count > configuration.maxPayloadBytes {
                    problem("line \(lineNumber): body is \(request.body.count) bytes; the limit is \(configuration.maxPayloadBytes)")
                    return
                }
                guard customIDs.insert(IDDigest(request.customID)).inserted else {
                    problem("line \(lineNumber): custom_id \"\(request.customID.prefix(100))\" appears more than once")
                    return
                }
                lines += 1
                if lines > configuration.maxLinesPerFile {
                    problem("line \(lineNumber): the file has more than \(configuration.maxLinesPerFile) requests (max_tasks_per_batch)")
                    return
                }
                // Once the file is refused, nothing more is stored.
                guard problems.isEmpty else { return }
                // Stored as written, one request per line; the line number is kept by order.
                pending.append(contentsOf: bytes)
                pending.append(UInt8(ascii: "\n"))
            }
        }
    }

    private func problem(_ message: String) {
        problemCount += 1
        if problems.count < FileUpload.maxReportedProblems { problems.append(message) }
        pending.removeAll()
    }

    /// `form-data; name="file"; filename="a.jsonl"` → ["name": "file", "filename": "a.jsonl"].
    private static func parameters(_ value: String) -> [String: String] {
        var result: [String: String] = [:]
        for parameter in value.split(separator: ";").dropFirst() {
            let pair = parameter.split(separator: "=", maxSplits: 1).map { $0.trimmingCharacters(in: .whitespaces) }
            guard pair.count == 2 else { continue }
            result[pair[0].lowercased()] = pair[1].trimmingCharacters(in: CharacterSet(charactersIn: "\""))
        }
        return result
    }
}

/// Two independent 64-bit hashes of a custom id: a collision of both is not a practical concern.
private struct IDDigest: Hashable {
    var first: Int
    var second: UInt64

    init(_ text: String) {
        var hasher = Hasher()
        hasher.combine(text)
        first = hasher.finalize()
        // FNV-1a, unrelated to Hasher's SipHash.
        var fnv: UInt64 = 0xcbf2_9ce4_8422_2325
        for byte in text.utf8 {
            fnv ^= UInt64(byte)
            fnv &*= 0x100_0000_01b3
        }
        second = fnv
    }
}
