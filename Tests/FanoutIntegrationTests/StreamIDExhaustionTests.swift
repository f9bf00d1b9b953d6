@testable import FanoutClient
import Testing

@Suite struct StreamIDExhaustionTests {
    @Test("a connection that used up its 32-bit stream ids refuses further calls with a clear error instead of wrapping")
    func streamIDsDoNotWrap() async throws {
        try await withTestDaemon { daemon in
            try await withClient(daemon.socketPath) { client in
                client.connection.skipStreamIDs(to: UInt32.max - 2)
                _ = try await client.serverInfo()  // stream 4294967293
                _ = try await client.serverInfo()  // stream 4294967295, the last id
                let error = await caughtClientError { _ = try await client.serverInfo() }
                #expect(error?.code == .resourceExhausted)
                #expect(error?.message.contains("connect again") == true, "\(String(describing: error))")
            }
            // A new connection starts over.
            try await withClient(daemon.socketPath) { client in try await expectClientWorks(client) }
        }
    }
}
