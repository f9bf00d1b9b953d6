/// How hard a commit tries to survive a power loss.
public enum Durability: String, Sendable, Hashable, CaseIterable {
    /// `synchronous = NORMAL` in WAL mode: survives a process crash; the last
    /// commits may be lost on power failure. The default.
    case normal
    /// `synchronous = FULL`: every commit is fsynced.
    case full
}
