// The protocol's value types (TaskSpec, BatchInfo, Event, StatusCode, …) are
// the client's vocabulary: `import FanoutClient` alone gives a program all of it.
@_exported import FanoutWire
