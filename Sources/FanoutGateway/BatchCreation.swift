import FanoutCore
import FanoutScheduler
import FanoutStore
import Foundation
import OpenAIBatchFormat

/// `POST /v1/batches`: turns a stored input file into a Fanout batch, one
/// task per line, chunk by chunk through the scheduler's staged enqueue,
/// so a large file is never read whole. A line whose `url` is not the
/// batch's endpoint, or whose model has no route, becomes a rejected line
/// in the batch's error file instead of a task.
struct BatchCreation {
    let scheduler: Scheduler
    let store: any GatewayStore
    let configuration: GatewayConfiguration

    struct Request {
        var inputFileID: String
        var endpoint: String
        var completionWindow: String
        var metadata: [String: String]
    }

    /// Tasks handed to the scheduler at a time.
    static let tasksPerStep = 2_000

    func create(_ request: Request, caller: Caller) async throws -> BatchID {
        let store = self.store
        let fileID = request.inputFileID
        guard let file = try await store.file(id: fileID), caller.owns(file.ownerUID) else {
            throw GatewayError.notFound("No such File object: \(request.inputFileID)")
        }
        guard OpenAIBatchLine.endpoints.contains(request.endpoint) else {
            throw GatewayError.invalidRequest("endpoint must be one of \(OpenAIBatchLine.endpoints.joined(separator: ", "))", param: "endpoint")
        }
        guard let windowMs = Self.milliseconds(request.completionWindow) else {
            throw GatewayError.invalidRequest("completion_window must be a duration such as \"24h\"", param: "completion_window")
        }
        let now = Milliseconds((Date().timeIntervalSince1970 * 1000).rounded())
        let header = NewBatch(ownerID: configuration.ownerID(uid: caller.uid), agent: configuration.routes.defaultAgent ?? "", metadata: request.metadata,
                              deadlineAt: now + windowMs, completionWindowMs: windowMs, creatorUID: caller.uid, tasks: [])
        var staged: StagedBatch
        do {
            staged = try await scheduler.beginStagedBatch(header, firstTasks: [])
        } catch let error as FanoutError {
            throw GatewayError(error)
        }
        do {
            var lineNumber = 0
            var chunkIndex = 0
            var taskCount = 0
            var firstRejects: [RejectedLine] = []
            while let chunk = try await store.fileChunk(fileID: fileID, index: chunkIndex) {
                chunkIndex += 1
                var tasks: [NewTask] = []
                var rejects: [RejectedLine] = []
                for line in chunk.split(separator: UInt8(ascii: "\n")) {
                    lineNumber += 1
                    switch task(from: Array(line), endpoint: request.endpoint, lineNumber: lineNumber) {
                    case .success(let task): tasks.append(task)
                    case .failure(let rejection): rejects.append(rejection.line)
                    }
                    if tasks.count >= Self.tasksPerStep {
                        try await scheduler.appendToStagedBatch(&staged, tasks)
                        taskCount += tasks.count
                        tasks = []
                    }
                }
                try await scheduler.appendToStagedBatch(&staged, tasks)
                taskCount += tasks.count
                if !rejects.isEmpty {
                    if firstRejects.count < 5 { firstRejects += rejects.prefix(5 - firstRejects.count) }
                    let batchID = staged.id
                    let lines = rejects
                    try await store.addRejectedLines(lines, batchID: batchID)
                }
            }
            // A file deleted meanwhile has lost its chunks: what was read is not the whole file.
            guard lineNumber == file.lines else {
                throw GatewayError.notFound("No such File object: \(fileID) (it was deleted while the batch was being created)")
            }
            guard taskCount > 0 else {
                let reasons = firstRejects.map { "line \($0.line): \($0.message)" }.joined(separator: "; ")
                throw GatewayError.invalidRequest("no request of the file can run: \(reasons)", code: "invalid_file", param: "input_file_id")
            }
            let gateway = GatewayBatch(batchID: staged.id, inputFileID: fileID, endpoint: request.endpoint,
                                       completionWindow: request.completionWindow)
            let batch = try await scheduler.publishStagedBatch(staged)
            // After publishing: a gateway row never points at a staged batch. A crash in between leaves
            // an ordinary batch the gateway does not list, which the binary protocol still shows.
            try await store.insertGatewayBatch(gateway)
            return batch.id
        } catch {
            await scheduler.discardStagedBatch(staged)
            if let fanout = error as? FanoutError { throw GatewayError(fanout) }
            throw error
        }
    }

    private func task(from line: [UInt8], endpoint: String, lineNumber: Int) -> Result<NewTask, Rejection> {
        switch OpenAIBatchLine.parse(line) {
        case .failure(let problem):
            return .failure(Rejection(line: RejectedLine(line: lineNumber, customID: "", code: "invalid_request", message: problem.message)))
        case .success(let request):
            guard request.url == endpoint else {
                return .failure(Rejection(line: RejectedLine(line: lineNumber, customID: request.customID, code: "invalid_url",
                                             message: "url \(request.url) is not the batch's endpoint \(endpoint)")))
            }
            guard let agent = configuration.routes.agent(for: request.model) else {
                return .failure(Rejection(line: RejectedLine(line: lineNumber, customID: request.customID, code: "model_not_found",
                                             message: "no agent serves model \"\((request.model ?? "").prefix(200))\"; "
                                                 + "add it to the gateway's routes in fanoutd's config file")))
            }
            let task = NewTask(customID: request.customID, agent: agent, payload: request.body, url: request.url)
            // Whatever the scheduler would refuse (limits, the runner's rules) fails this line, not the batch.
            if let problem = scheduler.problem(with: task) {
                return .failure(Rejection(line: RejectedLine(line: lineNumber, customID: request.customID, code: "invalid_request",
                                                             message: problem)))
            }
            return .success(task)
        }
    }

    /// A line that does not become a task, as an error for `Result`.
    struct Rejection: Error {
        var line: RejectedLine
    }

    /// "24h", "90m", "3600s", "7d" as milliseconds.
    static func milliseconds(_ window: String) -> Int64? {
        guard let unit = window.last, let count = Int64(window.dropLast()), count > 0, count <= 100_000 else { return nil }
        switch unit {
        case "s": return count * 1_000
        case "m": return count * 60_000
        case "h": return count * 3_600_000
        case "d": return count * 86_400_000
        default: return nil
        }
    }
}
