extension TaskRecord {
    /// What this task's result counts for against a results page's byte
    /// budget: its variable-length fields, plus `resultPageOverhead` for the
    /// rest of a wire `TaskResult`. It is meant to be at least the encoded
    /// size, so a page cut by it fits the frame it is sent in.
    public var resultPageBytes: Int {
        var bytes = Self.resultPageOverhead + customID.utf8.count + (result?.count ?? 0)
        if let failure { bytes += failure.message.utf8.count + failure.code.utf8.count }
        if let url { bytes += url.utf8.count }
        if let requestID = details.requestID { bytes += requestID.utf8.count }
        return bytes
    }

    /// A `TaskResult`'s fixed part at its largest: ids, status, attempt,
    /// status code and usage as 10-byte varints, every field's tag and
    /// length prefix, and its own entry in the page.
    public static let resultPageOverhead = 128
}
