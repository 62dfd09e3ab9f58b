#if canImport(Glibc)
    import Glibc
#endif

extension UnsafeRawBufferPointer {
    /// Whether these bytes are exactly `other`'s, without a loop over two sequences' iterators (the router
    /// compares every frame's data type and source with its pipe's this way, and a link batch's frame targets
    /// with the one before). Up to 16 bytes (such names, in practice) are compared here, 8 bytes at a time,
    /// without a call; longer runs by `memcmp`.
    @inlinable
    public func bytesEqual(_ other: UnsafeRawBufferPointer) -> Bool {
        guard count == other.count else { return false }
        guard count > 16 else {
            var index = 0
            while index &+ 8 <= count {
                if loadUnaligned(fromByteOffset: index, as: UInt64.self) != other.loadUnaligned(fromByteOffset: index, as: UInt64.self) { return false }
                index &+= 8
            }
            while index < count {
                if self[index] != other[index] { return false }
                index &+= 1
            }
            return true
        }
        return Self.memoryEqual(self, other)
    }

    @inlinable
    public func bytesEqual(_ other: [UInt8]) -> Bool {
        other.withUnsafeBytes { bytesEqual($0) }
    }

    @usableFromInline
    static func memoryEqual(_ a: UnsafeRawBufferPointer, _ b: UnsafeRawBufferPointer) -> Bool {
        memcmp(a.baseAddress!, b.baseAddress!, a.count) == 0
    }
}
