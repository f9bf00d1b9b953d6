import ArgumentParser
import FanoutClient
import Foundation

@main
struct FanoutCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "fanout",
        abstract: "Submit, watch, fetch and cancel Fanout batches.",
        discussion: "Talks to fanoutd on --socket (default: $FANOUT_SOCKET, else the daemon's default path).",
        version: "0.1.0",
        subcommands: [
            Serve.self, Submit.self, Status.self, Results.self, Cancel.self, Retry.self, Events.self, List.self, Workers.self,
            WorkerCommand.self,
            Demo.self,
        ])
}

/// Options every command that talks to the daemon takes.
struct ConnectionOptions: ParsableArguments {
    @Option(help: "The daemon's Unix socket (default: $FANOUT_SOCKET).")
    var socket: String = FanoutClient.defaultSocketPath

    @Flag(help: "Machine-readable JSON output.")
    var json = false

    func connect() async throws -> FanoutClient {
        do {
            return try await FanoutClient.connect(socketPath: socket, clientName: "fanout-cli")
        } catch let error as FanoutClientError {
            throw CLIError(error.message)
        }
    }
}

/// An error for a person: printed as `fanout: message`, exit status 1.
struct CLIError: Error, CustomStringConvertible {
    var description: String
    init(_ description: String) { self.description = description }
}

/// Runs a command body, turning daemon errors into a one-line message.
func reportingErrors<T>(_ body: () async throws -> T) async throws -> T {
    do {
        return try await body()
    } catch let error as FanoutClientError {
        throw CLIError(error.description)
    }
}

/// Standard error, for messages that must not mix with stdout results.
enum Console {
    static func error(_ message: String) {
        FileHandle.standardError.write(Data((message + "\n").utf8))
    }

    static var stderrIsTerminal: Bool { isatty(STDERR_FILENO) == 1 }
}

#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#endif
