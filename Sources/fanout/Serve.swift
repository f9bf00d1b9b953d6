import ArgumentParser
import Foundation

#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#endif

/// `fanout serve` runs the daemon: it executes `fanoutd` (found beside this
/// program, else on PATH) with the same arguments, so there is one daemon.
struct Serve: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Run the daemon (fanoutd) in the foreground.",
        discussion: "Every argument is passed to fanoutd; see `fanoutd --help`.")

    @Argument(parsing: .allUnrecognized, help: "Arguments for fanoutd, e.g. --socket PATH --db PATH.")
    var arguments: [String] = []

    func run() throws {
        let beside = URL(fileURLWithPath: CommandLine.arguments[0]).resolvingSymlinksInPath()
            .deletingLastPathComponent().appendingPathComponent("fanoutd").path
        let daemon = FileManager.default.isExecutableFile(atPath: beside) ? beside : "fanoutd"
        let argv = [daemon] + arguments
        var cArguments = argv.map { strdup($0) } + [nil]
        execvp(daemon, &cArguments)
        throw CLIError("cannot run \(daemon): \(String(cString: strerror(errno))); build it with `swift build` or put it on PATH")
    }
}
