/// Why bytes on a pipe are not a frame. Any of these costs the pipe a reset (DESIGN.md, "On the pipes").
public enum FrameError: Error, Equatable, Sendable, CustomStringConvertible {
    /// The length prefix announces more than the configured maximum.
    case oversized(length: UInt64, limit: Int)
    /// The length prefix is not a varint.
    case malformedLength
    /// The body is not an `Envelope` in the protobuf wire format.
    case malformedEnvelope(String)

    public var description: String {
        switch self {
        case .oversized(let length, let limit): "frame of \(length) bytes exceeds the maximum of \(limit)"
        case .malformedLength: "the length prefix is not a varint"
        case .malformedEnvelope(let why): "not an envelope: \(why)"
        }
    }
}

/// The fields the router routes by, located inside an encoded `Envelope` without decoding the rest (the
/// payload is never copied or parsed).
public struct RoutingFields: Equatable, Sendable {
    /// Byte range of `data_type` (field 1) within the envelope; empty when absent.
    public var dataType: Range<Int>
    /// `schema_version` (field 2); 0 when absent.
    public var schemaVersion: UInt32
    /// Byte range of `shard_key` (field 3) within the envelope; empty when absent.
    public var shardKey: Range<Int>
    /// Byte range of `source` (field 4) within the envelope; empty when absent. The router checks it against
    /// the pipe's producer.
    public var source: Range<Int>

    public init(dataType: Range<Int> = 0..<0, schemaVersion: UInt32 = 0, shardKey: Range<Int> = 0..<0, source: Range<Int> = 0..<0) {
        self.dataType = dataType
        self.schemaVersion = schemaVersion
        self.shardKey = shardKey
        self.source = source
    }
}

/// Walks the protobuf wire format of an envelope, checking every field's framing and locating the routing
/// fields. Unknown fields are skipped, as protobuf requires; groups (wire types 3 and 4) and truncated
/// fields are errors.
public enum EnvelopeScanner {
    ///
    /// The routing fields (1 to 4) may appear at most once. Protobuf would let a later value win, but no pmm
    /// producer repeats them, and two envelopes run together (what a reader sees when it starts in the middle of
    /// a stream, after garbage or a router that died mid-read) repeat every one: refusing them resynchronises
    /// the pipe instead of delivering one frame made of several.
    public static func scan(_ body: UnsafeRawBufferPointer) throws(FrameError) -> RoutingFields {
        var fields = RoutingFields()
        var seen: UInt8 = 0
        var index = 0
        while index < body.count {
            guard case .value(let tag, let tagSize) = Varint.decode(body, at: index) else {
                throw .malformedEnvelope("bad field tag at byte \(index)")
            }
            index += tagSize
            let number = tag >> 3
            guard number > 0 && number <= 536_870_911 else { throw .malformedEnvelope("field number \(number)") }
            if number <= 4 {
                let bit = UInt8(1) << UInt8(number)
                guard seen & bit == 0 else { throw .malformedEnvelope("field \(number) appears twice") }
                seen |= bit
            }
            switch tag & 7 {
            case 0:
                if number == 2 {
                    guard case .value(let value, let size) = Varint.decode(body, at: index) else {
                        throw .malformedEnvelope("truncated varint in field \(number)")
                    }
                    index += size
                    guard value <= UInt64(UInt32.max) else { throw .malformedEnvelope("schema_version out of range") }
                    fields.schemaVersion = UInt32(value)
                } else {
                    if number == 1 || number == 3 || number == 4 { throw .malformedEnvelope("field \(number) has the wrong wire type") }
                    // Only its end matters (sequence, timestamp, unknown fields): located without decoding it.
                    guard let size = Varint.length(body, at: index) else { throw .malformedEnvelope("truncated varint in field \(number)") }
                    index += size
                }
            case 1:
                guard index + 8 <= body.count else { throw .malformedEnvelope("truncated fixed64 in field \(number)") }
                if number <= 4 { throw .malformedEnvelope("field \(number) has the wrong wire type") }
                index += 8
            case 2:
                guard case .value(let length, let size) = Varint.decode(body, at: index),
                    length <= UInt64(body.count - index - size)
                else {
                    throw .malformedEnvelope("truncated length-delimited field \(number)")
                }
                index += size
                let range = index..<(index + Int(length))
                index = range.upperBound
                if number == 1 {
                    fields.dataType = range
                } else if number == 3 {
                    fields.shardKey = range
                } else if number == 4 {
                    fields.source = range
                } else if number == 2 {
                    throw .malformedEnvelope("field 2 has the wrong wire type")
                }
            case 5:
                guard index + 4 <= body.count else { throw .malformedEnvelope("truncated fixed32 in field \(number)") }
                if number <= 4 { throw .malformedEnvelope("field \(number) has the wrong wire type") }
                index += 4
            default:
                throw .malformedEnvelope("wire type \(tag & 7) in field \(number)")
            }
        }
        return fields
    }
}
