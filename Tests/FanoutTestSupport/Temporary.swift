import Foundation

/// Runs `body` with a fresh directory, removed afterwards. The path is short
/// (`/tmp/fo-XXXXXXXX`), so Unix sockets inside it fit `sun_path`.
@discardableResult
public func withTemporaryDirectory<T>(_ body: (String) async throws -> T) async throws -> T {
    let directory = makeTemporaryDirectory()
    defer { try? FileManager.default.removeItem(atPath: directory) }
    return try await body(directory)
}

/// A fresh short-path directory that the caller removes.
public func makeTemporaryDirectory() -> String {
    let path = "/tmp/fo-\(UUID().uuidString.prefix(8))"
    try! FileManager.default.createDirectory(atPath: path, withIntermediateDirectories: true)
    return path
}
