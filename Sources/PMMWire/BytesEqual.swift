#if canImport(Glibc)
    import Glibc
#endif

extension UnsafeRawBufferPointer {
    /// Whether these bytes are exactly `other`'s: one `memcmp`, not a loop over two sequences' iterators (the
    /// router compares every frame's data type and source with its pipe's this way, and a link batch's frame
    /// targets with the one before).
    public func bytesEqual(_ other: UnsafeRawBufferPointer) -> Bool {
        guard count == other.count else { return false }
        guard count > 0 else { return true }
        return memcmp(baseAddress!, other.baseAddress!, count) == 0
    }

    public func bytesEqual(_ other: [UInt8]) -> Bool {
        other.withUnsafeBytes { bytesEqual($0) }
    }
}
