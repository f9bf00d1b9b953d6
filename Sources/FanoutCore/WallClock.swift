import Foundation

/// Wall-clock milliseconds, read in one place.
public enum WallClock {
    public static var now: Milliseconds { Milliseconds((Date().timeIntervalSince1970 * 1000).rounded()) }
}
