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
        // Most varints on the router's path are one byte (field tags, short lengths): no loop for those.
        if offset < bytes.count {
            let first = bytes[offset]
            if first < 0x80 { return .value(UInt64(first), size: 1) }
        }
        return decodeLong(bytes, at: offset)
    }

    @usableFromInline
    static func decodeLong(_ bytes: UnsafeRawBufferPointer, at offset: Int) -> Decoded {
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
