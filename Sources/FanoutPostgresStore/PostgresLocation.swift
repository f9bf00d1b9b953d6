import Foundation
import PostgresNIO

/// Where the PostgreSQL store lives, from the URL a user gives (`--store
/// postgres://…` or `FANOUT_STORE`), in libpq's form so the URL that works
/// with `psql` works here:
///
///     postgres://user:password@db.example.com:5432/fanout
///     postgresql://fanout@localhost/fanout?host=/run/postgresql   (Unix socket directory)
///
/// PostgresNIO takes no URL: this maps one to its configuration. A Unix socket
/// is named by its directory (`host=` parameter, or a host that is a path), as
/// libpq does; the socket file in it is `.s.PGSQL.<port>`.
public struct PostgresLocation: Sendable, Equatable, CustomStringConvertible {
    public enum Endpoint: Sendable, Equatable {
        case tcp(host: String, port: Int)
        /// The socket file itself.
        case unixSocket(path: String)
    }

    public var endpoint: Endpoint
    public var user: String
    public var password: String?
    public var database: String
    /// `sslmode`: only `disable` (the default here) and `require` are understood.
    public var requiresTLS: Bool

    public static let defaultPort = 5432

    public init(endpoint: Endpoint, user: String, password: String? = nil, database: String, requiresTLS: Bool = false) {
        self.endpoint = endpoint
        self.user = user
        self.password = password
        self.database = database
        self.requiresTLS = requiresTLS
    }

    /// Parses a `postgres://` or `postgresql://` URL; throws a message naming what is wrong.
    public init(url text: String) throws(PostgresLocationError) {
        guard let components = URLComponents(string: text),
              let scheme = components.scheme?.lowercased(), scheme == "postgres" || scheme == "postgresql" else {
            throw PostgresLocationError("not a PostgreSQL URL: expected postgres://user@host[:port]/database, got \(Self.redacted(text))")
        }
        let parameters = Dictionary((components.queryItems ?? []).map { ($0.name, $0.value ?? "") }, uniquingKeysWith: { _, last in last })
        let known: Set<String> = ["host", "port", "user", "password", "dbname", "sslmode"]
        if let unknown = parameters.keys.sorted().first(where: { !known.contains($0) }) {
            throw PostgresLocationError("unsupported parameter \"\(unknown)\" in the store URL (understood: \(known.sorted().joined(separator: ", ")))")
        }
        let portText = parameters["port"] ?? components.port.map(String.init)
        let port = try portText.map { text throws(PostgresLocationError) -> Int in
            guard let port = Int(text), (1...65_535).contains(port) else { throw PostgresLocationError("invalid port \"\(text)\" in the store URL") }
            return port
        } ?? Self.defaultPort
        let host = parameters["host"] ?? components.percentEncodedHost.flatMap { $0.removingPercentEncoding } ?? ""
        if host.hasPrefix("/") {
            endpoint = .unixSocket(path: host + "/.s.PGSQL.\(port)")
        } else if host.isEmpty {
            throw PostgresLocationError("the store URL names no host: give one (postgres://user@host/database) or a socket directory (?host=/run/postgresql)")
        } else {
            endpoint = .tcp(host: host, port: port)
        }
        user = parameters["user"] ?? components.user ?? ""
        guard !user.isEmpty else { throw PostgresLocationError("the store URL names no user: postgres://USER@host/database") }
        password = parameters["password"] ?? components.password
        let path = components.path.hasPrefix("/") ? String(components.path.dropFirst()) : components.path
        database = parameters["dbname"] ?? path
        guard !database.isEmpty else { throw PostgresLocationError("the store URL names no database: postgres://user@host/DATABASE") }
        switch parameters["sslmode"] ?? "disable" {
        case "disable": requiresTLS = false
        case "require": requiresTLS = true
        case let mode: throw PostgresLocationError("unsupported sslmode \"\(mode)\" (understood: disable, require)")
        }
    }

    /// PostgresNIO's client configuration for this location.
    public func clientConfiguration() -> PostgresClient.Configuration {
        switch endpoint {
        case let .tcp(host, port):
            PostgresClient.Configuration(host: host, port: port, username: user, password: password, database: database,
                                         tls: requiresTLS ? .require(Self.requireTLS) : .disable)
        case let .unixSocket(path):
            PostgresClient.Configuration(unixSocketPath: path, username: user, password: password, database: database)
        }
    }

    /// libpq's `sslmode=require`: encrypted, the certificate not verified (as with psql).
    static var requireTLS: TLSConfiguration {
        var configuration = TLSConfiguration.makeClientConfiguration()
        configuration.certificateVerification = .none
        return configuration
    }

    /// The location as a URL without its password, for logs.
    public var description: String {
        switch endpoint {
        case let .tcp(host, port): "postgres://\(user)@\(host):\(port)/\(database)"
        case let .unixSocket(path): "postgres://\(user)@/\(database)?host=\((path as NSString).deletingLastPathComponent)"
        }
    }

    /// The URL without its password, for logs and error messages.
    public static func redacted(_ text: String) -> String {
        guard var components = URLComponents(string: text), components.password != nil else { return text }
        components.password = "***"
        return components.string ?? text
    }
}

public struct PostgresLocationError: Error, Equatable, CustomStringConvertible {
    public var description: String

    init(_ description: String) {
        self.description = description
    }
}
