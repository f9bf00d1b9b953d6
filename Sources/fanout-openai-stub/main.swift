import Foundation
import OpenAIStub

// A local OpenAI-compatible server for `make demo` and `make bench`:
//   fanout-openai-stub [--port N] [--delay-ms N]
// Prints "listening on PORT" once it serves; stops on SIGTERM or SIGINT.
var port = 0
var delayMs = 0
var arguments = CommandLine.arguments.dropFirst()
while let argument = arguments.popFirst() {
    switch argument {
    case "--port": port = Int(arguments.popFirst() ?? "") ?? 0
    case "--delay-ms": delayMs = Int(arguments.popFirst() ?? "") ?? 0
    default:
        FileHandle.standardError.write(Data("usage: fanout-openai-stub [--port N] [--delay-ms N]\n".utf8))
        exit(2)
    }
}
signal(SIGTERM) { _ in exit(0) }
signal(SIGINT) { _ in exit(0) }
let stub = OpenAIStub(delay: .milliseconds(delayMs), recordsRequests: false)
try await stub.run(port: port) { port in
    // Unbuffered, so a script waiting for this line sees it at once.
    FileHandle.standardOutput.write(Data("listening on \(port)\n".utf8))
}
