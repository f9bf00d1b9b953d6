import ArgumentParser
import FanoutClient
import FanoutWire
import Foundation

/// `fanout workers`: the worker sessions connected to the daemon.
struct Workers: AsyncParsableCommand {
    static let configuration = CommandConfiguration(abstract: "List connected workers: their agents, free slots and running tasks.")

    @OptionGroup var connection: ConnectionOptions

    func run() async throws {
        let client = try await connection.connect()
        let info: ServerInfo
        do {
            info = try await reportingErrors { try await client.serverInfo() }
        } catch {
            await client.close()
            throw error
        }
        await client.close()
        if connection.json {
            print(JSON.line(["workers": info.workerList.map { worker in
                [
                    "id": worker.id, "name": worker.name, "uid": worker.uid, "running_task_ids": worker.runningTaskIDs,
                    "agents": worker.agents.map { ["agent": $0.agent, "slots": $0.slots, "free_slots": $0.freeSlots] },
                ] as [String: Any]
            }]))
            return
        }
        if info.workerList.isEmpty {
            Console.error("no workers connected")
            return
        }
        print("ID    NAME                  UID     AGENTS (free/slots)                 RUNNING")
        for worker in info.workerList {
            let agents = worker.agents.map { "\($0.agent) \($0.freeSlots)/\($0.slots)" }.joined(separator: ", ")
            print([String(worker.id).padding(toLength: 5, withPad: " ", startingAt: 0),
                   String(worker.name.prefix(21)).padding(toLength: 21, withPad: " ", startingAt: 0),
                   String(worker.uid).padding(toLength: 7, withPad: " ", startingAt: 0),
                   agents.padding(toLength: 35, withPad: " ", startingAt: 0),
                   String(worker.runningTaskIDs.count)].joined(separator: " "))
        }
    }
}
