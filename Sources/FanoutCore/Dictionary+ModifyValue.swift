extension Dictionary {
    /// Changes the value stored for `key` where it lies, returning what `body`
    /// returns, or nil when there is none.
    ///
    /// `self[key]?.field = x` does the same, but its accessor moves the value
    /// out into a coroutine frame that is allocated on the heap at every call:
    /// three mallocs and frees per change, which on the scheduler's hot paths
    /// added up to dozens per task (docs/PERFORMANCE.md, worker path).
    @inlinable @discardableResult
    public mutating func modifyValue<Result>(forKey key: Key, _ body: (inout Value) throws -> Result) rethrows -> Result? {
        guard let index = index(forKey: key) else { return nil }
        return try body(&values[index])
    }
}
