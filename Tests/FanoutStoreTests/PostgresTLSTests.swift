@testable import FanoutPostgresStore
import FanoutTestSupport
import Foundation
import PostgresTestServer
import Testing

#if canImport(Glibc)
import Glibc
#endif

/// `sslmode` against a real server listening with TLS on loopback, with certificates made for the
/// test: the verifying modes check the authority (and `verify-full` the name), `require` encrypts
/// without checking.
@Suite struct PostgresTLSTests {
    @Test func theVerifyingModesCheckTheServersCertificateAndRequireEncrypts() async throws {
        try await withTemporaryDirectory { directory in
            let authority = try await Self.makeAuthority(in: directory, named: "ca")
            let stranger = try await Self.makeAuthority(in: directory, named: "stranger")
            try await Self.withTLSServer(in: directory, certificateNaming: "localhost", signedBy: "ca") { port in
                func url(_ host: String, _ parameters: String) -> String { Self.url(host, port, parameters) }
                let verifiedFully = try await Self.encryptedConnection(url("localhost", "sslmode=verify-full&sslrootcert=\(authority)"))
                let verified = try await Self.encryptedConnection(url("127.0.0.1", "sslmode=verify-ca&sslrootcert=\(authority)"))
                let required = try await Self.encryptedConnection(url("127.0.0.1", "sslmode=require"))
                // Plain text is still what a URL naming no sslmode asks for.
                let plain = try await Self.encryptedConnection(url("127.0.0.1", ""))
                #expect(verifiedFully && verified && required && !plain)
                let untrusted = await #expect(throws: (any Error).self, "an authority not trusted") {
                    try await Self.encryptedConnection(url("localhost", "sslmode=verify-ca&sslrootcert=\(stranger)"))
                }
                #expect("\(String(describing: untrusted))".contains("CERTIFICATE_VERIFY_FAILED"), "\(String(describing: untrusted))")
            }
            // The right authority, another name: verify-ca takes it, verify-full does not.
            try await Self.withTLSServer(in: directory, certificateNaming: "elsewhere.invalid", signedBy: "ca") { port in
                func url(_ host: String, _ parameters: String) -> String { Self.url(host, port, parameters) }
                let verified = try await Self.encryptedConnection(url("localhost", "sslmode=verify-ca&sslrootcert=\(authority)"))
                #expect(verified)
                let wrongName = await #expect(throws: (any Error).self, "a name the certificate does not carry") {
                    try await Self.encryptedConnection(url("localhost", "sslmode=verify-full&sslrootcert=\(authority)"))
                }
                #expect("\(String(describing: wrongName))".contains("failedToValidateHostname"), "\(String(describing: wrongName))")
            }
        }
    }

    /// A server of its own, with a certificate for `dnsName` signed by `authority`, listening on a free
    /// loopback port, which `body` gets.
    static func withTLSServer(in directory: String, certificateNaming dnsName: String, signedBy authority: String,
                              _ body: (_ port: Int) async throws -> Void) async throws {
        let certificate = try await makeServerCertificate(in: directory, signedBy: authority, dnsName: dnsName)
        let port = try freeLoopbackPort()
        let server = try await PostgresTestServer.start(tls: .init(port: port, certificatePath: certificate.certificate,
                                                                   keyPath: certificate.key))
        do {
            try await server.createDatabase(named: "tls")
            try await body(port)
        } catch {
            try? await server.stop()
            throw error
        }
        try await server.stop()
    }

    /// The test database on `host` and `port`, as the superuser, with `parameters`.
    static func url(_ host: String, _ port: Int, _ parameters: String) -> String {
        "postgres://postgres@\(host):\(port)/tls?\(parameters)"
    }

    /// Opens a store at `url` (the migrations and the commit loop's connection included) and says
    /// whether its connection is encrypted, as the server sees it.
    @discardableResult
    static func encryptedConnection(_ url: String) async throws -> Bool {
        let store = PostgresStore(location: try PostgresLocation(url: url))
        return try await store.withRunning {
            let rows = try await store.rows("SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()")
            return try rows.first?.decode(Bool.self) ?? false
        }
    }

    /// A self-signed authority: returns the path of its certificate.
    static func makeAuthority(in directory: String, named name: String) async throws -> String {
        try await openssl(["req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
                           "-keyout", "\(name).key", "-out", "\(name).pem", "-days", "2", "-subj", "/CN=fanout test \(name)",
                           "-addext", "basicConstraints=critical,CA:TRUE", "-addext", "keyUsage=critical,keyCertSign,cRLSign"],
                          in: directory)
        return directory + "/\(name).pem"
    }

    static func makeServerCertificate(in directory: String, signedBy authority: String, dnsName: String) async throws
        -> (certificate: String, key: String)
    {
        try await openssl(["req", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
                           "-keyout", "server.key", "-out", "server.csr", "-subj", "/CN=\(dnsName)"], in: directory)
        try "subjectAltName=DNS:\(dnsName)\nbasicConstraints=CA:FALSE\nextendedKeyUsage=serverAuth\n"
            .write(toFile: directory + "/server.ext", atomically: true, encoding: .utf8)
        try await openssl(["x509", "-req", "-in", "server.csr", "-CA", "\(authority).pem", "-CAkey", "\(authority).key",
                           "-CAcreateserial", "-out", "server.pem", "-days", "2", "-extfile", "server.ext"], in: directory)
        return (directory + "/server.pem", directory + "/server.key")
    }

    static func openssl(_ arguments: [String], in directory: String) async throws {
        let result = try await PostgresTestServer.runSystemTool("openssl", arguments, in: directory)
        try #require(result.status == 0, "openssl \(arguments.joined(separator: " ")) failed:\n\(result.output)")
    }

    /// A TCP port free on loopback now (the kernel's pick).
    static func freeLoopbackPort() throws -> Int {
        let descriptor = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
        try #require(descriptor >= 0)
        defer { close(descriptor) }
        var address = sockaddr_in()
        address.sin_family = sa_family_t(AF_INET)
        address.sin_addr.s_addr = inet_addr("127.0.0.1")
        address.sin_port = 0
        var length = socklen_t(MemoryLayout<sockaddr_in>.size)
        let bound = withUnsafeMutablePointer(to: &address) { pointer in
            pointer.withMemoryRebound(to: sockaddr.self, capacity: 1) { bind(descriptor, $0, length) == 0 && getsockname(descriptor, $0, &length) == 0 }
        }
        try #require(bound, "no free port on loopback: \(String(cString: strerror(errno)))")
        return Int(UInt16(bigEndian: address.sin_port))
    }
}
