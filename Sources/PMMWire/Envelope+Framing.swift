import SwiftProtobuf

/// The envelope under a shorter name.
public typealias Envelope = Pmm_V1_Envelope

extension SwiftProtobuf.Message {
    /// This message as one frame: a varint length, then the encoded message (`writeDelimitedTo`).
    public func framed() throws -> [UInt8] {
        let body: [UInt8] = try serializedBytes()
        var frame: [UInt8] = []
        frame.reserveCapacity(body.count + Varint.size(of: UInt64(body.count)))
        Varint.encode(UInt64(body.count), into: &frame)
        frame += body
        return frame
    }
}

extension Pmm_V1_Envelope {
    /// Decodes the envelope of one frame's body (prefix already removed).
    public init(body: UnsafeRawBufferPointer) throws {
        try self.init(serializedBytes: Array(body))
    }
}

extension FrameBuffer {
    /// The envelope of `frame`, fully decoded (payload copied): for tools, not the router's hot path.
    public func envelope(of frame: Frame) throws -> Envelope {
        try withBytes(frame.bodyStart..<frame.range.upperBound) { try Envelope(body: $0) }
    }
}
