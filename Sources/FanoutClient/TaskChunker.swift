import FanoutWire

/// Splits a batch's tasks into chunks that each fit in one frame.
struct TaskChunker {
    var maxFrameBytes: Int
    /// Also bound the count, so one chunk's decoding stays cheap.
    var maxTasksPerChunk = 20_000

    func chunks(of tasks: [TaskSpec]) -> [Range<Int>] {
        // Half the frame for payload bytes leaves room for field overhead.
        let budget = max(1, maxFrameBytes / 2)
        var ranges: [Range<Int>] = []
        var start = 0
        var bytes = 0
        for (index, task) in tasks.enumerated() {
            let size = task.payload.count + task.customID.utf8.count + task.agent.utf8.count + 24
            if index > start && (bytes + size > budget || index - start >= maxTasksPerChunk) {
                ranges.append(start..<index)
                start = index
                bytes = 0
            }
            bytes += size
        }
        ranges.append(start..<tasks.count)
        return ranges
    }
}
