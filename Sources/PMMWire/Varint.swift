/// Protobuf base-128 varints, as used for the frame length prefix and inside envelopes.
public enum Varint {
    /// The longest varint: 10 bytes for a 64-bit value.
    public static let maximumSize = 10

    /// The result of decoding a varint at the start of some bytes.
    public enum Decoded: Equatable, Sendable {
        /// The value and how many bytes it took.
        case value(UInt64, size: Int)
        /// More bytes are needed.
        case incomplete
        /// Not a varint: more than 10 bytes, or a 10th byte above 1.
        case malformed
    }

    /// Decodes the varint at `offset` in `bytes`.
    @inlinable @inline(__always)
    public static func decode(_ bytes: UnsafeRawBufferPointer, at offset: Int) -> Decoded {
        // Most varints on the router's path are one byte (field tags, short lengths) or two (a payload's length,
        // a small sequence number): no loop for those.
        if offset < bytes.count {
            let first = bytes[offset]
            if first < 0x80 { return .value(UInt64(first), size: 1) }
            if offset &+ 1 < bytes.count {
                let second = bytes[offset &+ 1]
                if second < 0x80 { return .value(UInt64(first & 0x7f) | UInt64(second) << 7, size: 2) }
            }
        }
        return decodeLong(bytes, at: offset)
    }

    /// The size of the varint at `offset` in `bytes`, without its value (a field the reader skips); nil when
    /// it is cut short or malformed.
    @inlinable @inline(__always)
    public static func length(_ bytes: UnsafeRawBufferPointer, at offset: Int) -> Int? {
        if offset >= 0 && offset &+ 8 <= bytes.count {
            // The first byte without its high bit ends the varint: one load and a count instead of a loop.
            let stops = ~UInt64(littleEndian: bytes.loadUnaligned(fromByteOffset: offset, as: UInt64.self)) & 0x8080_8080_8080_8080
            if stops != 0 { return stops.trailingZeroBitCount &>> 3 &+ 1 }
            // 9 bytes (a 64-bit timestamp in nanoseconds) or 10, whose last byte holds the 64th bit only.
            if offset &+ 8 < bytes.count {
                if bytes[offset &+ 8] < 0x80 { return 9 }
                if offset &+ 9 < bytes.count { return bytes[offset &+ 9] <= 1 ? 10 : nil }
            }
        }
        guard case .value(_, let size) = decodeLong(bytes, at: offset) else { return nil }
        return size
    }

    @usableFromInline
    static func decodeLong(_ bytes: UnsafeRawBufferPointer, at offset: Int) -> Decoded {
        if offset >= 0 && offset &+ 8 <= bytes.count {
            // Up to 8 bytes at once: where the varint ends, then its 7-bit groups packed together (a 64-bit
            // timestamp takes 9 bytes and goes on to the loop below).
            let word = UInt64(littleEndian: bytes.loadUnaligned(fromByteOffset: offset, as: UInt64.self))
            let stops = ~word & 0x8080_8080_8080_8080
            if stops != 0 {
                let size = stops.trailingZeroBitCount &>> 3 &+ 1
                let kept = size == 8 ? word : word & ((1 &<< UInt64(size &* 8)) &- 1)
                var x = kept & 0x7f7f_7f7f_7f7f_7f7f
                x = (x & 0x007f_007f_007f_007f) | ((x & 0x7f00_7f00_7f00_7f00) &>> 1)
                x = (x & 0x0000_3fff_0000_3fff) | ((x & 0x3fff_0000_3fff_0000) &>> 2)
                x = (x & 0x0000_0000_0fff_ffff) | ((x & 0x0fff_ffff_0000_0000) &>> 4)
                return .value(x, size: size)
            }
        }
        var value: UInt64 = 0
        var shift: UInt64 = 0
        var index = offset
        let limit = min(bytes.count, offset + maximumSize)
        while index < limit {
            let byte = bytes[index]
            index += 1
            value |= UInt64(byte & 0x7f) << shift
            if byte < 0x80 {
                // The 10th byte holds the 64th bit only.
                return shift == 63 && byte > 1 ? .malformed : .value(value, size: index - offset)
            }
            shift += 7
        }
        return index - offset >= maximumSize ? .malformed : .incomplete
    }

    /// Appends `value` as a varint.
    @inlinable
    public static func encode(_ value: UInt64, into bytes: inout [UInt8]) {
        var value = value
        while value >= 0x80 {
            bytes.append(UInt8(truncatingIfNeeded: value) | 0x80)
            value >>= 7
        }
        bytes.append(UInt8(value))
    }

    /// How many bytes `value` takes as a varint.
    @inlinable
    public static func size(of value: UInt64) -> Int {
        var size = 1
        var value = value >> 7
        while value != 0 {
            size += 1
            value >>= 7
        }
        return size
    }
}
