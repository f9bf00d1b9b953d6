import Subprocess

extension TerminationStatus {
    /// `exited(n)` as n, `signaled(s)` as 128 + s, as a shell reports them.
    public var shellStatus: Int32 {
        switch self {
        case .exited(let code): code
        case .signaled(let signal): 128 + signal
        }
    }
}
