#if canImport(Glibc)
    import Glibc
#endif

extension UnsafeRawBufferPointer {
    /// Whether these bytes are exactly `other`'s: one `memcmp`, not a loop over two sequences' iterators (the
    /// router compares every frame's data type and source with its pipe's this way).
    public func bytesEqual(_ other: [UInt8]) -> Bool {
        guard count == other.count else { return false }
        guard count > 0 else { return true }
        return other.withUnsafeBytes { memcmp(baseAddress!, $0.baseAddress!, count) == 0 }
    }
}
