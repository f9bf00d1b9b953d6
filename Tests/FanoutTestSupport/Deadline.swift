/// A test body did not finish in time.
public struct TimedOut: Error, CustomStringConvertible {
    public var what: String
    public var timeout: Duration
    public var description: String { "\(what) did not finish within \(timeout)" }

    public init(what: String, timeout: Duration) {
        self.what = what
        self.timeout = timeout
    }
}

/// Runs `body`, failing with `TimedOut` instead of hanging if it takes longer than `timeout`.
public func withDeadline<T: Sendable>(_ timeout: Duration = .seconds(5), _ what: String = "the test body",
                                      _ body: @escaping @Sendable () async throws -> T) async throws -> T {
    try await withThrowingTaskGroup(of: T?.self) { group in
        group.addTask { try await body() }
        group.addTask {
            try? await Task.sleep(for: timeout)
            return nil
        }
        defer { group.cancelAll() }
        guard let first = try await group.next(), let value = first else { throw TimedOut(what: what, timeout: timeout) }
        return value
    }
}
