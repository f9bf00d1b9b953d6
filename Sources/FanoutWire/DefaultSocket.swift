#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#endif

/// Where the daemon listens and clients connect when neither is told:
/// `$XDG_RUNTIME_DIR/fanout/fanoutd.sock`, else a per-user folder in the
/// temporary directory. Shared so the two can never disagree.
public enum DefaultSocket {
    public static func path(environment: [String: String]) -> String {
        if let runtime = environment["XDG_RUNTIME_DIR"], !runtime.isEmpty {
            return runtime + "/fanout/fanoutd.sock"
        }
        let temp = environment["TMPDIR"].flatMap { $0.isEmpty ? nil : $0 } ?? "/tmp"
        return "\(temp.hasSuffix("/") ? String(temp.dropLast()) : temp)/fanout-\(getuid())/fanoutd.sock"
    }
}
