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
    /// `sslmode`; `disable` when the URL names none.
    public var tlsMode: TLSMode
    /// `sslrootcert`: the certificates (PEM) a verifying mode trusts; the system's when nil.
    public var rootCertificatePath: String?

    /// `sslmode` as libpq names it. `allow` and `prefer`, which fall back to plain text without
    /// saying so, are not offered: a daemon either encrypts or does not.
    public enum TLSMode: String, Sendable, Equatable, CaseIterable {
        case disable
        /// Encrypted, the server's certificate not checked (as libpq's `require`).
        case require
        /// Encrypted, the certificate signed by a trusted authority, whatever host it names.
        case verifyCA = "verify-ca"
        /// Encrypted, the certificate trusted and naming the host connected to.
        case verifyFull = "verify-full"
    }

    public static let defaultPort = 5432

    public init(endpoint: Endpoint, user: String, password: String? = nil, database: String, tlsMode: TLSMode = .disable,
                rootCertificatePath: String? = nil) {
        self.endpoint = endpoint
        self.user = user
        self.password = password
        self.database = database
        self.tlsMode = tlsMode
        self.rootCertificatePath = rootCertificatePath
    }

    /// Parses a `postgres://` or `postgresql://` URL; throws a message naming what is wrong.
    public init(url text: String) throws(PostgresLocationError) {
        guard let components = URLComponents(string: text),
              let scheme = components.scheme?.lowercased(), scheme == "postgres" || scheme == "postgresql" else {
            throw PostgresLocationError("not a PostgreSQL URL: expected postgres://user@host[:port]/database, got \(Self.redacted(text))")
        }
        let parameters = Dictionary((components.queryItems ?? []).map { ($0.name, $0.value ?? "") }, uniquingKeysWith: { _, last in last })
        let known: Set<String> = ["host", "port", "user", "password", "dbname", "sslmode", "sslrootcert"]
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
        let mode = parameters["sslmode"] ?? "disable"
        guard let tlsMode = TLSMode(rawValue: mode) else {
            throw PostgresLocationError("unsupported sslmode \"\(mode)\" (understood: \(TLSMode.allCases.map(\.rawValue).joined(separator: ", ")))")
        }
        self.tlsMode = tlsMode
        if tlsMode == .verifyFull, case .tcp(let host, _) = endpoint, Self.isIPAddress(host) {
            // PostgresNIO checks a certificate against a host name only (TLS's server name cannot be an address).
            throw PostgresLocationError("sslmode=verify-full checks the server's certificate against the host's name, and \(host) is an "
                + "address: name the server by a name its certificate carries, or use sslmode=verify-ca")
        }
        rootCertificatePath = parameters["sslrootcert"].flatMap { $0.isEmpty ? nil : $0 }
        if let rootCertificatePath, !FileManager.default.isReadableFile(atPath: rootCertificatePath) {
            throw PostgresLocationError("sslrootcert \"\(rootCertificatePath)\" is not a readable file")
        }
    }

    static func isIPAddress(_ host: String) -> Bool {
        let bare = host.hasPrefix("[") && host.hasSuffix("]") ? String(host.dropFirst().dropLast()) : host
        var v4 = in_addr()
        var v6 = in6_addr()
        return inet_pton(AF_INET, bare, &v4) == 1 || inet_pton(AF_INET6, bare, &v6) == 1
    }

    /// PostgresNIO's client configuration for this location: its pool of at most `poolSize`
    /// connections, an idle one checked every `keepAliveSeconds` (a server or network that
    /// dropped it is noticed before a call needs it).
    public func clientConfiguration(poolSize: Int, keepAliveSeconds: Int64 = 30) -> PostgresClient.Configuration {
        var configuration = switch endpoint {
        case let .tcp(host, port):
            PostgresClient.Configuration(host: host, port: port, username: user, password: password, database: database,
                                         tls: tlsConfiguration().map { .require($0) } ?? .disable)
        case let .unixSocket(path):
            PostgresClient.Configuration(unixSocketPath: path, username: user, password: password, database: database)
        }
        configuration.options.maximumConnections = poolSize
        configuration.options.minimumConnections = min(configuration.options.minimumConnections, poolSize)
        configuration.options.keepAliveBehavior = .init(frequency: .seconds(keepAliveSeconds))
        return configuration
    }

    /// The TLS settings of `tlsMode` (nil: plain text). Over a Unix socket there is none, as with libpq.
    public func tlsConfiguration() -> TLSConfiguration? {
        guard case .tcp = endpoint else { return nil }
        var configuration = TLSConfiguration.makeClientConfiguration()
        switch tlsMode {
        case .disable: return nil
        // As libpq: `require` with a root certificate given checks the signature, as `verify-ca`.
        case .require: configuration.certificateVerification = rootCertificatePath == nil ? .none : .noHostnameVerification
        case .verifyCA: configuration.certificateVerification = .noHostnameVerification
        case .verifyFull: configuration.certificateVerification = .fullVerification
        }
        if let rootCertificatePath { configuration.trustRoots = .file(rootCertificatePath) }
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
