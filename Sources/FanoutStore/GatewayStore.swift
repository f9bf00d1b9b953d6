import FanoutCore

/// What the OpenAI-compatible gateway keeps besides batches and tasks:
/// uploaded files (stored in chunks of whole lines, so an upload is never
/// held whole in memory) and, for each batch made through it, the OpenAI
/// fields and the lines that could not run.
public protocol GatewayStore: Store {
    /// Starts an upload; the file stays invisible until `completeFile`.
    func createFile(_ file: StoredFile) async throws
    /// Appends the next chunk of an upload (`index` counts from 0).
    func appendFileChunk(fileID: String, index: Int, bytes: [UInt8]) async throws
    func completeFile(id: String, filename: String, bytes: Int, lines: Int) async throws
    /// Deletes a file and its chunks, also an unfinished upload; false if there was none.
    @discardableResult
    func deleteFile(id: String) async throws -> Bool
    /// A completed file.
    func file(id: String) async throws -> StoredFile?
    /// Completed files, newest first, after `afterID` (a file id of a previous page).
    func files(ownerUID: UInt32?, purpose: String?, limit: Int, afterID: String?) async throws -> [StoredFile]
    /// Chunk `index` of a file, nil past its end.
    func fileChunk(fileID: String, index: Int) async throws -> [UInt8]?

    func insertGatewayBatch(_ batch: GatewayBatch) async throws
    func gatewayBatch(_ id: BatchID) async throws -> GatewayBatch?
    /// Batches made through the gateway, newest first, before `beforeID`.
    func gatewayBatches(creatorUID: UInt32?, limit: Int, beforeID: BatchID?) async throws -> [GatewayBatch]
    func markGatewayCancelRequested(_ id: BatchID, at: Milliseconds) async throws
    /// Lines of a batch's input that could not run, recorded while the batch is staged.
    func addRejectedLines(_ lines: [RejectedLine], batchID: BatchID) async throws
    func rejectedLines(batchID: BatchID, afterLine: Int, limit: Int) async throws -> [RejectedLine]
    func rejectedLineCount(batchID: BatchID) async throws -> Int
}

public struct StoredFile: Sendable, Hashable {
    public var id: String
    public var ownerUID: UInt32
    public var purpose: String
    public var filename: String
    public var bytes: Int
    public var lines: Int
    public var createdAt: Milliseconds

    public init(id: String, ownerUID: UInt32, purpose: String, filename: String, bytes: Int = 0, lines: Int = 0, createdAt: Milliseconds) {
        self.id = id
        self.ownerUID = ownerUID
        self.purpose = purpose
        self.filename = filename
        self.bytes = bytes
        self.lines = lines
        self.createdAt = createdAt
    }
}

/// The OpenAI side of a batch made through the gateway.
public struct GatewayBatch: Sendable, Hashable {
    public var batchID: BatchID
    public var inputFileID: String
    public var endpoint: String
    public var completionWindow: String
    public var cancelRequestedAt: Milliseconds?

    public init(batchID: BatchID, inputFileID: String, endpoint: String, completionWindow: String, cancelRequestedAt: Milliseconds? = nil) {
        self.batchID = batchID
        self.inputFileID = inputFileID
        self.endpoint = endpoint
        self.completionWindow = completionWindow
        self.cancelRequestedAt = cancelRequestedAt
    }
}

/// An input line that never became a task, with why: it goes to the batch's error file.
public struct RejectedLine: Sendable, Hashable {
    public var line: Int
    public var customID: String
    public var code: String
    public var message: String

    public init(line: Int, customID: String, code: String, message: String) {
        self.line = line
        self.customID = customID
        self.code = code
        self.message = message
    }
}
