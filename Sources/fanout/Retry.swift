import ArgumentParser
import FanoutClient
import Foundation

struct Retry: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Run a finished batch's failed tasks again, keeping its completed results.")

    @OptionGroup var connection: ConnectionOptions

    @Argument(help: "The batch id.")
    var batch: UInt64

    @Flag(name: .customLong("expired"), help: "Also run the tasks that expired.")
    var includeExpired = false

    @Flag(name: .customLong("cancelled"), help: "Also run the tasks that were cancelled.")
    var includeCancelled = false

    @Flag(help: "Follow the batch with a progress display until it ends.")
    var watch = false

    func run() async throws {
        let client = try await connection.connect()
        defer { Task { await client.close() } }
        try await reportingErrors {
            let since = try await client.serverInfo().lastSequence
            let response = try await client.retryFailed(batch, includeExpired: includeExpired, includeCancelled: includeCancelled)
            if connection.json {
                print(JSON.line(["retried": response.retried, "batch": Describe.json(response.batch)]))
            } else {
                print("batch \(batch): \(response.retried) task(s) will run again")
            }
            if watch && response.retried > 0 {
                let final = try await ProgressView(batchID: batch, since: since).follow(client)
                Console.error(Describe.summary(final))
            }
        }
    }
}
