import FanoutPostgresStore
import FanoutTestSupport
import Foundation
import PostgresNIO
import Testing

@Suite struct PostgresLocationTests {
    @Test func aTCPURLNamesHostPortUserPasswordAndDatabase() throws {
        let location = try PostgresLocation(url: "postgres://fanout:s3cret@db.example.com:6543/queue")
        #expect(location == PostgresLocation(endpoint: .tcp(host: "db.example.com", port: 6543), user: "fanout",
                                             password: "s3cret", database: "queue"))
        #expect(try PostgresLocation(url: "postgresql://fanout@db.example.com/queue").endpoint
                == .tcp(host: "db.example.com", port: 5432))
    }

    @Test func aSocketDirectoryInHostNamesTheSocketFileAsLibpqDoes() throws {
        let location = try PostgresLocation(url: "postgres://postgres@localhost:5433/queue?host=%2Fvar%2Frun%2Fpostgresql")
        #expect(location.endpoint == .unixSocket(path: "/var/run/postgresql/.s.PGSQL.5433"))
        #expect(location.database == "queue")
    }

    @Test func libpqsEncryptingModesAreUnderstoodAndTheOthersRefusedByName() throws {
        func location(_ mode: String) throws -> PostgresLocation { try PostgresLocation(url: "postgres://u@h/d?sslmode=\(mode)") }
        #expect(try location("disable").tlsMode == .disable && location("disable").tlsConfiguration() == nil)
        #expect(try location("require").tlsMode == .require)
        #expect(try location("require").tlsConfiguration()?.certificateVerification == .some(.none))
        #expect(try location("verify-ca").tlsMode == .verifyCA)
        #expect(try location("verify-ca").tlsConfiguration()?.certificateVerification == .noHostnameVerification)
        #expect(try location("verify-full").tlsMode == .verifyFull)
        #expect(try location("verify-full").tlsConfiguration()?.certificateVerification == .fullVerification)
        // Over a Unix socket there is nothing to encrypt, as with libpq.
        #expect(try PostgresLocation(url: "postgres://u@/d?host=/run/postgresql&sslmode=verify-full").tlsConfiguration() == nil)
        // Silent fallbacks to plain text are not offered.
        for mode in ["prefer", "allow", "verify"] {
            #expect(throws: PostgresLocationError.self) { try PostgresLocation(url: "postgres://u@h/d?sslmode=\(mode)") }
        }
    }

    /// verify-full checks a host name, which an address is not: refused with the way out, not at the first connection.
    @Test func verifyFullWantsAHostName() throws {
        for host in ["127.0.0.1", "[::1]", "10.1.2.3"] {
            #expect {
                try PostgresLocation(url: "postgres://u@\(host)/d?sslmode=verify-full")
            } throws: { error in
                "\(error)".contains("sslmode=verify-ca") && "\(error)".contains("address")
            }
            #expect(try PostgresLocation(url: "postgres://u@\(host)/d?sslmode=verify-ca").tlsMode == .verifyCA)
        }
        #expect(try PostgresLocation(url: "postgres://u@db.example.com/d?sslmode=verify-full").tlsMode == .verifyFull)
    }

    @Test func sslrootcertNamesTheAuthoritiesToTrustAndMustBeReadable() async throws {
        try await withTemporaryDirectory { directory in
            let path = directory + "/ca.pem"
            try "-----BEGIN CERTIFICATE-----\n".write(toFile: path, atomically: true, encoding: .utf8)
            let location = try PostgresLocation(url: "postgres://u@h/d?sslmode=verify-full&sslrootcert=\(path)")
            #expect(location.rootCertificatePath == path)
            #expect(location.tlsConfiguration()?.trustRoots == .file(path))
            do {
                _ = try PostgresLocation(url: "postgres://u@h/d?sslmode=verify-full&sslrootcert=\(directory)/missing.pem")
                Issue.record("a missing sslrootcert was accepted")
            } catch {
                #expect("\(error)".contains("is not a readable file"), "\(error)")
            }
        }
    }

    @Test func thePoolHasTheConfiguredSizeAndChecksIdleConnections() throws {
        let configuration = try PostgresLocation(url: "postgres://u@h/d").clientConfiguration(poolSize: 7, keepAliveSeconds: 15)
        #expect(configuration.options.maximumConnections == 7)
        #expect(configuration.options.minimumConnections <= 7)
        #expect(configuration.options.keepAliveBehavior?.frequency == .seconds(15))
    }

    @Test(arguments: [
        ("mysql://u@h/d", "not a PostgreSQL URL"),
        ("postgres://h/d", "names no user"),
        ("postgres://u@h", "names no database"),
        ("postgres://u@h:99999/d", "invalid port"),
        ("postgres://u@h/d?application=x", "unsupported parameter \"application\""),
    ])
    func aWrongURLIsRefusedWithWhatIsWrong(url: String, message: String) {
        do {
            _ = try PostgresLocation(url: url)
            Issue.record("\(url) was accepted")
        } catch {
            #expect(error.description.contains(message), "\(error)")
        }
    }

    @Test func thePasswordNeverShowsInMessages() {
        #expect(PostgresLocation.redacted("postgres://fanout:s3cret@db/queue") == "postgres://fanout:***@db/queue")
        do {
            _ = try PostgresLocation(url: "mariadb://fanout:s3cret@db/queue")
        } catch {
            #expect(!error.description.contains("s3cret"))
        }
    }
}
