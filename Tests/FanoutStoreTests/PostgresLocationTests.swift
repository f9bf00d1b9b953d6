import FanoutPostgresStore
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

    @Test func requireTLSIsUnderstoodAndOtherModesAreRefusedByName() throws {
        #expect(try PostgresLocation(url: "postgres://u@h/d?sslmode=require").requiresTLS)
        #expect(throws: PostgresLocationError.self) { try PostgresLocation(url: "postgres://u@h/d?sslmode=verify-full") }
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
