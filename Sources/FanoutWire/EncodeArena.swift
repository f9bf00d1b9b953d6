#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#elseif canImport(Darwin)
import Darwin
#endif

/// Bump allocator for the temporary C structs, strings and byte copies that
/// protobuf-c needs to pack one frame.
///
/// One encode makes thousands of small allocations for a large batch (a
/// struct, two strings and a payload per task); carving them out of a few
/// growing chunks keeps that to a handful of `malloc`s, and `release()` frees
/// everything at once so nothing can leak. Not thread-safe: one arena belongs
/// to one encode call.
final class EncodeArena {
    private var chunks: [UnsafeMutableRawPointer] = []
    private var cursor: UnsafeMutableRawPointer?
    private var remaining = 0
    private var nextChunkSize: Int

    /// Chunks double from `initialChunkSize` up to this, so small frames stay
    /// cheap and large ones need few chunks.
    private static let maxChunkSize = 1 << 20
    private static let chunkAlignment = 16

    init(initialChunkSize: Int = 2048) {
        nextChunkSize = initialChunkSize
    }

    deinit {
        release()
    }

    /// Frees every allocation. Call it (in a `defer`) once packing is done:
    /// relying on `deinit` alone is unsafe, because ARC may end the arena's
    /// lifetime right after its last use, before protobuf-c reads the structs.
    func release() {
        for chunk in chunks {
            chunk.deallocate()
        }
        chunks.removeAll()
        cursor = nil
        remaining = 0
    }

    func allocate(byteCount: Int, alignment: Int) -> UnsafeMutableRawPointer {
        precondition(alignment <= Self.chunkAlignment && alignment > 0)
        let byteCount = Swift.max(byteCount, 1)
        if let cursor {
            let aligned = cursor.alignedUp(toMultipleOf: alignment)
            let needed = (aligned - cursor) + byteCount
            if needed <= remaining {
                self.cursor = aligned + byteCount
                remaining -= needed
                return aligned
            }
        }
        if byteCount > nextChunkSize / 2 {
            // A large block (a big payload) gets its own allocation, so the
            // current chunk's free space is not thrown away.
            let block = UnsafeMutableRawPointer.allocate(byteCount: byteCount, alignment: Self.chunkAlignment)
            chunks.append(block)
            return block
        }
        let size = nextChunkSize
        nextChunkSize = Swift.min(nextChunkSize * 2, Self.maxChunkSize)
        let chunk = UnsafeMutableRawPointer.allocate(byteCount: size, alignment: Self.chunkAlignment)
        chunks.append(chunk)
        cursor = chunk + byteCount
        remaining = size - byteCount
        return chunk
    }

    /// Uninitialized memory for `count` values of a trivial C type; the caller
    /// initializes it (protobuf-c's `__init` functions or `initialize(to:)`).
    func make<T>(_ type: T.Type, count: Int = 1) -> UnsafeMutablePointer<T> {
        allocate(byteCount: MemoryLayout<T>.stride * count, alignment: MemoryLayout<T>.alignment)
            .bindMemory(to: T.self, capacity: count)
    }

    /// A NUL-terminated copy of `string`, or nil when it contains a NUL
    /// character (protobuf-c measures strings with `strlen`, so it would
    /// silently cut them there).
    func cString(_ string: String) -> UnsafeMutablePointer<CChar>? {
        var string = string
        // withUTF8 makes a bridged or lazy string contiguous; native strings
        // (the normal case) are used in place.
        return string.withUTF8 { utf8 -> UnsafeMutablePointer<CChar>? in
            let count = utf8.count
            let raw = allocate(byteCount: count + 1, alignment: 1)
            if let base = utf8.baseAddress, count > 0 {
                if memchr(base, 0, count) != nil {
                    return nil
                }
                raw.copyMemory(from: base, byteCount: count)
            }
            raw.storeBytes(of: 0, toByteOffset: count, as: UInt8.self)
            return raw.bindMemory(to: CChar.self, capacity: count + 1)
        }
    }

    /// A copy of `bytes` that lives until `release()`.
    func bytes(_ bytes: [UInt8]) -> UnsafeMutablePointer<UInt8>? {
        bytes.withUnsafeBytes { source -> UnsafeMutablePointer<UInt8>? in
            guard let base = source.baseAddress, source.count > 0 else { return nil }
            let raw = allocate(byteCount: source.count, alignment: 1)
            raw.copyMemory(from: base, byteCount: source.count)
            return raw.bindMemory(to: UInt8.self, capacity: source.count)
        }
    }
}
