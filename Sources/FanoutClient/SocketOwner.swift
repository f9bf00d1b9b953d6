#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#elseif canImport(Darwin)
import Darwin
#endif

/// Whose socket a client is willing to talk to.
///
/// A client sends its batches (payloads included) to whatever listens on the
/// socket path, so, as ssh-agent clients do, it first checks that the socket
/// file belongs to a uid it trusts: by default its own or root's. Anything
/// else must be asked for, with `FANOUT_SOCKET_OWNERS` (comma-separated
/// uids, or `any`) or the `trustedSocketOwners` parameter.
public enum SocketOwnerPolicy: Sendable, Hashable {
    /// The connecting user's uid or root.
    case selfOrRoot
    /// These uids, besides the connecting user's and root.
    case uids(Set<UInt32>)
    /// No check.
    case anyone

    /// From `FANOUT_SOCKET_OWNERS`, else `selfOrRoot`.
    public static func fromEnvironment(_ environment: [String: String]) -> SocketOwnerPolicy {
        guard let text = environment["FANOUT_SOCKET_OWNERS"]?.trimmingCharacters(in: .whitespaces), !text.isEmpty else {
            return .selfOrRoot
        }
        if text == "any" { return .anyone }
        return .uids(Set(text.split(separator: ",").compactMap { UInt32($0.trimmingCharacters(in: .whitespaces)) }))
    }

    func check(_ path: String) throws(FanoutClientError) {
        if case .anyone = self { return }
        var info = stat()
        // A missing socket is reported by the connect that follows, with its own message.
        guard stat(path, &info) == 0 else { return }
        let me = getuid()
        var trusted: Set<UInt32> = [UInt32(me), 0]
        if case .uids(let extra) = self { trusted.formUnion(extra) }
        guard trusted.contains(UInt32(info.st_uid)) else {
            throw FanoutClientError(
                code: .permissionDenied,
                message: "the socket \(path) belongs to uid \(info.st_uid), not to you (uid \(me)) or root; refusing to send it "
                    + "anything. If that user's daemon is the one you mean, set FANOUT_SOCKET_OWNERS=\(info.st_uid)")
        }
    }
}

import Foundation
