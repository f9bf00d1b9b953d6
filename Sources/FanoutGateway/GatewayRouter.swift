import FanoutCore
import FanoutScheduler
import FanoutStore
import Foundation
import HTTPTypes
import Hummingbird
import NIOCore

/// The Files and Batches routes of OpenAI's API, on the daemon's scheduler and store.
struct GatewayRouter {
    let scheduler: Scheduler
    let store: any GatewayStore
    let configuration: GatewayConfiguration

    func router(authentication: GatewayAuthentication.Mode) -> Router<GatewayContext> {
        let router = Router(context: GatewayContext.self)
        router.add(middleware: OpenAIErrorMiddleware())
        router.add(middleware: GatewayAuthentication(mode: authentication))
        router.post("/v1/files") { request, context in try await uploadFile(request, context) }
        router.get("/v1/files") { request, context in try await listFiles(request, context) }
        router.get("/v1/files/:id") { _, context in try await getFile(context) }
        router.get("/v1/files/:id/content") { _, context in try await fileContent(context) }
        router.delete("/v1/files/:id") { _, context in try await deleteFile(context) }
        router.post("/v1/batches") { request, context in try await createBatch(request, context) }
        router.get("/v1/batches") { request, context in try await listBatches(request, context) }
        router.get("/v1/batches/:id") { _, context in try await getBatch(context) }
        router.post("/v1/batches/:id/cancel") { _, context in try await cancelBatch(context) }
        return router
    }

    // MARK: Files

    private func uploadFile(_ request: Request, _ context: GatewayContext) async throws -> Response {
        let caller = try context.requireCaller()
        let upload = FileUpload(store: store, configuration: configuration, ownerUID: caller.uid)
        let file = try await upload.receive(request.body, contentType: request.headers[.contentType])
        return JSONResponse.make(file.json)
    }

    private func listFiles(_ request: Request, _ context: GatewayContext) async throws -> Response {
        let caller = try context.requireCaller()
        let limit = min(max(request.uri.queryParameters.get("limit", as: Int.self) ?? 100, 1), 10_000)
        let after = request.uri.queryParameters.get("after")
        let purpose = request.uri.queryParameters.get("purpose")
        let store = self.store
        let files = try await run { try await store.files(ownerUID: caller.isAdmin ? nil : caller.uid, purpose: purpose, limit: limit + 1, afterID: after) }
        return Self.list(files.prefix(limit).map(\.json), hasMore: files.count > limit)
    }

    private func getFile(_ context: GatewayContext) async throws -> Response {
        let caller = try context.requireCaller()
        let id = try context.parameters.require("id")
        if let output = OutputFile(id: id) {
            let object = try await finishedBatch(output.batchID, caller: caller)
            return JSONResponse.make(output.json(createdAt: object.batch.finishedAt ?? object.batch.createdAt))
        }
        return JSONResponse.make(try await ownedFile(id, caller: caller).json)
    }

    private func fileContent(_ context: GatewayContext) async throws -> Response {
        let caller = try context.requireCaller()
        let id = try context.parameters.require("id")
        var headers = HTTPFields()
        headers[.contentType] = "application/jsonl"
        if let output = OutputFile(id: id) {
            _ = try await finishedBatch(output.batchID, caller: caller)
            return Response(status: .ok, headers: headers, body: OutputFileWriter(store: store, file: output).body())
        }
        let file = try await ownedFile(id, caller: caller)
        return Response(status: .ok, headers: headers, body: StoredFileWriter(store: store, fileID: file.id).body())
    }

    private func deleteFile(_ context: GatewayContext) async throws -> Response {
        let caller = try context.requireCaller()
        let file = try await ownedFile(try context.parameters.require("id"), caller: caller)
        let store = self.store
        _ = try await run { try await store.deleteFile(id: file.id) }
        return JSONResponse.make(["id": file.id, "object": "file", "deleted": true])
    }

    private func ownedFile(_ id: String, caller: Caller) async throws -> StoredFile {
        let store = self.store
        guard let file = try await run({ try await store.file(id: id) }), caller.owns(file.ownerUID) else {
            throw GatewayError.notFound("No such File object: \(id.prefix(200))")
        }
        return file
    }

    // MARK: Batches

    private struct CreateBatchBody: Decodable {
        var input_file_id: String
        var endpoint: String
        var completion_window: String?
        var metadata: [String: String]?
    }

    private func createBatch(_ request: Request, _ context: GatewayContext) async throws -> Response {
        let caller = try context.requireCaller()
        let buffer = try await request.body.collect(upTo: 1 << 20)
        let body: CreateBatchBody
        do {
            body = try JSONDecoder().decode(CreateBatchBody.self, from: Data(buffer: buffer))
        } catch {
            throw GatewayError.invalidRequest("the body must be a JSON object with input_file_id, endpoint and completion_window: \(error)")
        }
        if let metadata = body.metadata, metadata.count > 16 || metadata.contains(where: { $0.key.count > 64 || $0.value.count > 512 }) {
            throw GatewayError.invalidRequest("metadata holds at most 16 pairs, keys up to 64 and values up to 512 characters", param: "metadata")
        }
        let creation = BatchCreation(scheduler: scheduler, store: store, configuration: configuration)
        let id = try await creation.create(.init(inputFileID: body.input_file_id, endpoint: body.endpoint,
                                                 completionWindow: body.completion_window ?? "24h", metadata: body.metadata ?? [:]),
                                           caller: caller)
        return JSONResponse.make(try await batchObject(id, caller: caller).json)
    }

    private func listBatches(_ request: Request, _ context: GatewayContext) async throws -> Response {
        let caller = try context.requireCaller()
        let limit = min(max(request.uri.queryParameters.get("limit", as: Int.self) ?? 20, 1), 100)
        let before = request.uri.queryParameters.get("after").flatMap(BatchObject.batchID)
        let store = self.store
        let rows = try await run { try await store.gatewayBatches(creatorUID: caller.isAdmin ? nil : caller.uid, limit: limit + 1, beforeID: before) }
        var objects: [[String: Any]] = []
        for row in rows.prefix(limit) {
            objects.append(try await batchObject(row.batchID, caller: caller).json)
        }
        return Self.list(objects, hasMore: rows.count > limit)
    }

    private func getBatch(_ context: GatewayContext) async throws -> Response {
        let caller = try context.requireCaller()
        return JSONResponse.make(try await batchObject(try batchID(context), caller: caller).json)
    }

    private func cancelBatch(_ context: GatewayContext) async throws -> Response {
        let caller = try context.requireCaller()
        let id = try batchID(context)
        let object = try await batchObject(id, caller: caller)
        if !object.isFinished {
            let store = self.store
            let now = Milliseconds((Date().timeIntervalSince1970 * 1000).rounded())
            try await run { try await store.markGatewayCancelRequested(id, at: now) }
            do {
                _ = try await scheduler.cancelBatch(id)
            } catch let error as FanoutError {
                throw GatewayError(error)
            }
        }
        return JSONResponse.make(try await batchObject(id, caller: caller).json)
    }

    private func batchID(_ context: GatewayContext) throws -> BatchID {
        let text = try context.parameters.require("id")
        guard let id = BatchObject.batchID(text) else { throw GatewayError.notFound("No such Batch object: \(text.prefix(200))") }
        return id
    }

    private func batchObject(_ id: BatchID, caller: Caller) async throws -> BatchObject {
        let store = self.store
        let found = try await run { () -> (BatchRecord, GatewayBatch, Int)? in
            guard let gateway = try await store.gatewayBatch(id), let batch = try await store.batch(id) else { return nil }
            return (batch, gateway, try await store.rejectedLineCount(batchID: id))
        }
        guard let (batch, gateway, rejected) = found, caller.owns(batch.creatorUID) else {
            throw GatewayError.notFound("No such Batch object: \(BatchObject.openAIID(id))")
        }
        return BatchObject(batch: batch, gateway: gateway, rejected: rejected)
    }

    private func finishedBatch(_ id: BatchID, caller: Caller) async throws -> BatchObject {
        let object = try await batchObject(id, caller: caller)
        guard object.isFinished else { throw GatewayError.notFound("No such File object: the batch has not finished") }
        return object
    }

    private static func list(_ data: [[String: Any]], hasMore: Bool) -> Response {
        JSONResponse.make(["object": "list", "data": data, "first_id": data.first?["id"] ?? NSNull(),
                           "last_id": data.last?["id"] ?? NSNull(), "has_more": hasMore])
    }

    /// Store work, its errors as OpenAI's.
    private func run<T: Sendable>(_ work: () async throws -> T) async throws -> T {
        do {
            return try await work()
        } catch let error as FanoutError {
            throw GatewayError(error)
        }
    }
}
