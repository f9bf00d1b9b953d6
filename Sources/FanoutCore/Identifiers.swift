/// Daemon-assigned ids; SQLite row ids, so they fit in Int64 and grow.
public typealias TaskID = Int64
public typealias BatchID = Int64
/// Global event sequence number.
public typealias EventSequence = Int64

/// Wall-clock time in milliseconds since the Unix epoch. Core never reads a
/// clock itself: callers pass the time in, so the logic stays testable.
public typealias Milliseconds = Int64
