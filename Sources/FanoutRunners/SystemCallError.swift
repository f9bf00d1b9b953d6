#if canImport(Glibc)
import Glibc
#endif

/// A failed system call and its errno, for messages a person reads.
struct SystemCallError: Error, Sendable, Hashable, CustomStringConvertible {
    var call: String
    var code: Int32

    /// From the shim's convention: a negated errno.
    init(_ call: String, negated: some SignedInteger) {
        self.call = call
        code = Int32(truncatingIfNeeded: -negated)
    }

    init(_ call: String, errno code: Int32) {
        self.call = call
        self.code = code
    }

    var reason: String { String(cString: strerror(code)) }
    var description: String { "\(call): \(reason)" }
}
