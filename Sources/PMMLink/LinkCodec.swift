public import PMMWire
import SwiftProtobuf

/// The link protocol's version, carried in every Hello. A peer speaking another version is refused.
public let linkProtocolVersion: UInt32 = 1

/// One frame on a link: the instance it is for and its bytes exactly as on the pipes (a varint length, then a
/// `pmm.v1.Envelope`).
public struct LinkFrame: Equatable, Sendable {
    /// The instance the frame is for (`collector-edge-b-0`).
    public var target: String
    /// The whole frame, length prefix included.
    public var bytes: [UInt8]

    public init(target: String, bytes: [UInt8]) {
        self.target = target
        self.bytes = bytes
    }
}

/// A frame to send whose bytes are lent by the caller (a router's queue): valid only for the duration of the
/// `LinkManager.send(to:borrowing:)` call that encodes it, so no array is made per frame.
public struct BorrowedLinkFrame {
    /// The egress pipe the frame is for.
    public var target: String
    /// The whole frame, length prefix included.
    public var bytes: UnsafeRawBufferPointer

    public init(target: String, bytes: UnsafeRawBufferPointer) {
        self.target = target
        self.bytes = bytes
    }
}

/// What the batch encoder needs of a frame, owned or borrowed.
public protocol LinkFrameEncodable {
    var target: String { get }
    var byteCount: Int { get }
    func withFrameBytes<R>(_ body: (UnsafeRawBufferPointer) throws -> R) rethrows -> R
}

extension LinkFrame: LinkFrameEncodable {
    public var byteCount: Int { bytes.count }
    public func withFrameBytes<R>(_ body: (UnsafeRawBufferPointer) throws -> R) rethrows -> R { try bytes.withUnsafeBytes(body) }
}

extension BorrowedLinkFrame: LinkFrameEncodable {
    public var byteCount: Int { bytes.count }
    public func withFrameBytes<R>(_ body: (UnsafeRawBufferPointer) throws -> R) rethrows -> R { try body(bytes) }
}

/// A message read off a link. Batches are decoded by hand (the hot path, no intermediate `Data`); everything
/// else through SwiftProtobuf.
public enum LinkInbound: Equatable, Sendable {
    case hello(Pmm_V1_LinkHello)
    case batch(firstSequence: UInt64, frames: LinkFrames)
    case ack(upTo: UInt64)
    case health(Pmm_V1_LinkHealth)
    case goodbye(reason: String)
    case heartbeat
}

/// What is wrong with bytes read off a link. Every case closes the link (the peer is broken or hostile); none
/// is a crash.
public enum LinkCodecError: Error, Equatable, Sendable, CustomStringConvertible {
    /// The length prefix is not a varint.
    case malformedLength
    /// A message longer than the limit.
    case oversized(size: UInt64, limit: Int)
    /// The message is not a `pmm.v1.LinkMessage`.
    case undecodable(String)
    /// A LinkMessage with no kind this version knows.
    case emptyMessage
    /// A frame in a batch that is not one whole pipe frame (varint length, then exactly that many bytes).
    case malformedFrame(index: Int, reason: String)

    public var description: String {
        switch self {
        case .malformedLength:
            return "the link message's length prefix is not a varint: the peer does not speak the pmm link protocol"
        case .oversized(let size, let limit):
            return "a link message of \(size) bytes is over the limit of \(limit) bytes: the peer does not speak "
                + "the pmm link protocol, or sends frames larger than this router accepts"
        case .undecodable(let reason):
            return
                "a link message is not a pmm.v1.LinkMessage (\(reason)): the peer does not speak the pmm link protocol"
        case .emptyMessage:
            return "a link message of no kind this router knows: the peer speaks a newer protocol"
        case .malformedFrame(let index, let reason):
            return "frame \(index) of a batch is not a pipe frame (\(reason)): the peer's router is broken"
        }
    }
}

/// Where a decoded batch keeps its frames' bytes.
public enum BatchStorage {
    /// A copy of the batch, in a buffer of its own.
    case copy
    /// The buffer the bytes being decoded are in, from `base` on: the frames are ranges of it, nothing is
    /// copied. The buffer must not change afterwards (it is shared with the frames).
    case shared([UInt8], base: Int)

    func advanced(by n: Int) -> BatchStorage {
        switch self {
        case .copy: self
        case .shared(let buffer, let base): .shared(buffer, base: base + n)
        }
    }
}

/// Length-delimited `pmm.v1.LinkMessage`s: a varint length, then the message. Pure: no I/O, no NIO.
public enum LinkCodec {
    /// Decodes the first message in `bytes`.
    ///
    /// - Parameter storage: where a batch keeps its frames (a copy, unless `bytes` lie in a buffer to share).
    /// - Returns: the message and how many bytes it took, or nil when more bytes are needed.
    /// - Throws: `LinkCodecError` when the bytes can never become a message; the link must be closed.
    public static func decode(
        _ bytes: UnsafeRawBufferPointer, maximumMessageSize: Int, storage: BatchStorage = .copy
    ) throws(LinkCodecError) -> (message: LinkInbound, consumed: Int)? {
        let length: UInt64
        let prefix: Int
        switch Varint.decode(bytes, at: 0) {
        case .incomplete: return nil
        case .malformed: throw .malformedLength
        case .value(let value, let size):
            length = value
            prefix = size
        }
        if length > UInt64(maximumMessageSize) { throw .oversized(size: length, limit: maximumMessageSize) }
        let total = prefix + Int(length)
        if bytes.count < total { return nil }
        let body = UnsafeRawBufferPointer(rebasing: bytes[prefix..<total])
        return (try decodeMessage(body, storage: storage.advanced(by: prefix)), total)
    }

    /// Decodes every whole message in `buffer` from `offset` on, its batches sharing `buffer` (no copy).
    ///
    /// - Returns: the messages, and the offset after the last (where the next, incomplete one starts).
    public static func decodeAll(
        sharing buffer: [UInt8], from offset: Int, maximumMessageSize: Int
    ) throws(LinkCodecError) -> (messages: [LinkInbound], end: Int) {
        var messages: [LinkInbound] = []
        var end = offset
        let result = buffer.withUnsafeBytes { raw in
            Result { () throws(LinkCodecError) in
                while let (message, consumed) = try decode(
                    UnsafeRawBufferPointer(rebasing: raw[end...]), maximumMessageSize: maximumMessageSize,
                    storage: .shared(buffer, base: end))
                {
                    messages.append(message)
                    end += consumed
                }
            }
        }
        try result.get()
        return (messages, end)
    }

    /// Decodes one message without its length prefix.
    /// - Parameter storage: where a batch keeps its frames.
    public static func decodeMessage(_ body: UnsafeRawBufferPointer, storage: BatchStorage = .copy) throws(LinkCodecError) -> LinkInbound {
        // A batch alone in its message (what encodeBatch writes) is decoded by hand.
        if body.count >= 2, body[0] == 0x12, case .value(let length, let size) = Varint.decode(body, at: 1),
            length == UInt64(body.count - 1 - size)
        {
            return try decodeBatch(UnsafeRawBufferPointer(rebasing: body[(1 + size)...]), storage: storage.advanced(by: 1 + size))
        }
        let message: Pmm_V1_LinkMessage
        do {
            message = try Pmm_V1_LinkMessage(serializedBytes: Array(body))
        } catch {
            throw .undecodable("\(error)")
        }
        switch message.kind {
        case .none: throw .emptyMessage
        case .hello(let hello): return .hello(hello)
        case .batch(let batch):
            var frames: [LinkFrame] = []
            frames.reserveCapacity(batch.frames.count)
            for (index, frame) in batch.frames.enumerated() {
                let bytes = [UInt8](frame.frame)
                let problem = bytes.withUnsafeBytes { raw in
                    Result { () throws(LinkCodecError) in try checkFrame(raw, index: index) }
                }
                try problem.get()
                frames.append(LinkFrame(target: frame.target, bytes: bytes))
            }
            return .batch(firstSequence: batch.firstSequence, frames: LinkFrames(frames))
        case .ack(let ack): return .ack(upTo: ack.upTo)
        case .health(let health): return .health(health)
        case .goodbye(let goodbye): return .goodbye(reason: goodbye.reason)
        case .heartbeat: return .heartbeat
        }
    }

    /// Decodes a `LinkBatch`'s fields by hand: field 1 first_sequence (varint), field 2 frames (LinkFrame,
    /// whose field 1 is the target and field 2 the frame bytes). Unknown fields are skipped, as protobuf does.
    /// The frames are ranges of the `LinkFrames`' storage: a copy of the batch's bytes, or the buffer they
    /// are in (`storage`).
    static func decodeBatch(_ bytes: UnsafeRawBufferPointer, storage: BatchStorage) throws(LinkCodecError) -> LinkInbound {
        var reader = FieldReader(bytes: bytes)
        // Where the batch's bytes start in the frames' storage.
        let shift: Int
        switch storage {
        case .copy: shift = 0
        case .shared(_, let base): shift = base
        }
        var first: UInt64 = 0
        var entries: [LinkFrames.Entry] = []
        var lastTarget = ""
        var lastTargetBytes = UnsafeRawBufferPointer(start: nil, count: 0)
        while let field = try reader.next() {
            switch (field.number, field.value) {
            case (1, .varint(let value)): first = value
            case (2, .bytes(let range)):
                var inner = FieldReader(bytes: UnsafeRawBufferPointer(rebasing: bytes[range]))
                var target = ""
                var frame: Range<Int> = range.lowerBound..<range.lowerBound
                while let f = try inner.next() {
                    switch (f.number, f.value) {
                    case (1, .bytes(let r)):
                        // Frames of one batch mostly share a few targets: reuse the previous String when equal.
                        // Compared with the previous target's bytes by memcmp (a generic `elementsEqual` over the
                        // String's UTF-8 view cost 3% of the receiving node's CPU).
                        let raw = UnsafeRawBufferPointer(rebasing: inner.bytes[r])
                        if raw.bytesEqual(lastTargetBytes) {
                            target = lastTarget
                        } else {
                            target = String(decoding: raw, as: UTF8.self)
                            lastTarget = target
                            lastTargetBytes = raw
                        }
                    case (2, .bytes(let r)):
                        frame = (range.lowerBound + r.lowerBound)..<(range.lowerBound + r.upperBound)
                    default: break
                    }
                }
                try checkFrame(UnsafeRawBufferPointer(rebasing: bytes[frame]), index: entries.count)
                entries.append(LinkFrames.Entry(target: target, range: (frame.lowerBound + shift)..<(frame.upperBound + shift)))
            default: break
            }
        }
        switch storage {
        case .copy:
            return .batch(firstSequence: first, frames: LinkFrames(storage: [UInt8](bytes), entries: entries))
        case .shared(let buffer, _):
            return .batch(firstSequence: first, frames: LinkFrames(storage: buffer, entries: entries))
        }
    }

    /// A frame must be exactly one pipe frame, so a peer can never tear or glue frames on our pipes.
    static func checkFrame(_ frame: UnsafeRawBufferPointer, index: Int) throws(LinkCodecError) {
        switch Varint.decode(frame, at: 0) {
        case .value(let length, let size):
            if length == 0 { throw .malformedFrame(index: index, reason: "an empty envelope") }
            if UInt64(frame.count - size) != length {
                throw .malformedFrame(
                    index: index, reason: "its prefix says \(length) bytes, \(frame.count - size) follow")
            }
        case .incomplete, .malformed:
            throw .malformedFrame(index: index, reason: "no length prefix")
        }
    }

    // MARK: - Encoding

    /// Appends a length-delimited message.
    public static func encode(_ message: Pmm_V1_LinkMessage, into out: inout [UInt8]) {
        // Serializing a message of our own making cannot fail (no required fields in proto3).
        let body: [UInt8] = (try? message.serializedBytes()) ?? []
        Varint.encode(UInt64(body.count), into: &out)
        out.append(contentsOf: body)
    }

    /// The encoded size of a batch's frame entry (field 2 of LinkBatch, with its tag and length).
    @inlinable
    public static func frameEntrySize(_ frame: some LinkFrameEncodable) -> Int {
        let inner = innerFrameSize(frame)
        return 1 + Varint.size(of: UInt64(inner)) + inner
    }

    @inlinable
    static func innerFrameSize(_ frame: some LinkFrameEncodable) -> Int {
        let t = frame.target.utf8.count
        let b = frame.byteCount
        return (t > 0 ? 1 + Varint.size(of: UInt64(t)) + t : 0) + 1 + Varint.size(of: UInt64(b)) + b
    }

    /// Appends a length-delimited LinkMessage holding one LinkBatch, encoded by hand (the same bytes as
    /// SwiftProtobuf writes; a test checks).
    public static func encodeBatch(firstSequence: UInt64, frames: ArraySlice<LinkFrame>, into out: inout [UInt8]) {
        frames.withUnsafeBufferPointer { encodeBatch(firstSequence: firstSequence, frames: $0, into: &out) }
    }

    /// `encodeBatch` over borrowed frames (no retain and release per frame).
    public static func encodeBatch(
        firstSequence: UInt64, frames: UnsafeBufferPointer<LinkFrame>, into out: inout [UInt8]
    ) {
        let size = encodedBatchSize(firstSequence: firstSequence, frames: frames)
        let start = out.count
        out.append(contentsOf: repeatElement(0, count: size))
        out.withUnsafeMutableBytes { raw in
            _ = encodeBatch(
                firstSequence: firstSequence, frames: frames,
                into: UnsafeMutableRawBufferPointer(rebasing: raw[start...]))
        }
    }

    /// The bytes `encodeBatch` writes for these frames, length prefix included.
    public static func encodedBatchSize<F: LinkFrameEncodable>(firstSequence: UInt64, frames: UnsafeBufferPointer<F>) -> Int {
        let messageSize = batchMessageSize(firstSequence: firstSequence, frames: frames).message
        return Varint.size(of: UInt64(messageSize)) + messageSize
    }

    static func batchMessageSize<F: LinkFrameEncodable>(
        firstSequence: UInt64, frames: UnsafeBufferPointer<F>
    ) -> (message: Int, batch: Int) {
        var batchSize = firstSequence == 0 ? 0 : 1 + Varint.size(of: firstSequence)
        for i in frames.indices { batchSize += frameEntrySize(frames[i]) }
        return (1 + Varint.size(of: UInt64(batchSize)) + batchSize, batchSize)
    }

    /// Writes a length-delimited LinkMessage holding one LinkBatch into `out` (at least `encodedBatchSize`
    /// bytes), encoded by hand: the same bytes as SwiftProtobuf writes (a test checks). Returns the bytes written.
    public static func encodeBatch<F: LinkFrameEncodable>(
        firstSequence: UInt64, frames: UnsafeBufferPointer<F>, into out: UnsafeMutableRawBufferPointer
    ) -> Int {
        let (messageSize, batchSize) = batchMessageSize(firstSequence: firstSequence, frames: frames)
        precondition(out.count >= Varint.size(of: UInt64(messageSize)) + messageSize, "room for the batch")
        var w = RawWriter(out: out)
        w.varint(UInt64(messageSize))
        w.byte(0x12)  // LinkMessage.batch = 2, length-delimited
        w.varint(UInt64(batchSize))
        if firstSequence != 0 {
            w.byte(0x08)  // LinkBatch.first_sequence = 1, varint
            w.varint(firstSequence)
        }
        for i in frames.indices {
            w.byte(0x12)  // LinkBatch.frames = 2
            w.varint(UInt64(innerFrameSize(frames[i])))
            let t = frames[i].target.utf8.count
            if t > 0 {
                w.byte(0x0a)  // LinkFrame.target = 1
                w.varint(UInt64(t))
                var target = frames[i].target
                target.withUTF8 { w.bytes(UnsafeRawBufferPointer($0)) }
            }
            w.byte(0x12)  // LinkFrame.frame = 2
            w.varint(UInt64(frames[i].byteCount))
            frames[i].withFrameBytes { w.bytes($0) }
        }
        return w.offset
    }
}

/// Writes bytes into raw memory whose size was computed beforehand.
struct RawWriter {
    let out: UnsafeMutableRawBufferPointer
    var offset = 0

    mutating func byte(_ value: UInt8) {
        out[offset] = value
        offset += 1
    }

    mutating func varint(_ value: UInt64) {
        var value = value
        while value >= 0x80 {
            byte(UInt8(truncatingIfNeeded: value) | 0x80)
            value >>= 7
        }
        byte(UInt8(value))
    }

    mutating func bytes(_ source: UnsafeRawBufferPointer) {
        guard source.count > 0 else { return }
        UnsafeMutableRawBufferPointer(rebasing: out[offset..<(offset + source.count)]).copyMemory(from: source)
        offset += source.count
    }
}

/// Walks the fields of one protobuf message.
struct FieldReader {
    enum Value {
        case varint(UInt64)
        case bytes(Range<Int>)
        case fixed
    }

    let bytes: UnsafeRawBufferPointer
    var offset = 0

    init(bytes: UnsafeRawBufferPointer) {
        self.bytes = bytes
    }

    mutating func next() throws(LinkCodecError) -> (number: UInt64, value: Value)? {
        if offset >= bytes.count { return nil }
        let key = try varint()
        let number = key >> 3
        switch key & 7 {
        case 0: return (number, .varint(try varint()))
        case 1: return try skip(8, number)
        case 5: return try skip(4, number)
        case 2:
            let length = try varint()
            guard length <= UInt64(bytes.count - offset) else { throw .undecodable("a field runs past its message") }
            let range = offset..<(offset + Int(length))
            offset += Int(length)
            return (number, .bytes(range))
        default: throw .undecodable("wire type \(key & 7)")
        }
    }

    private mutating func skip(_ n: Int, _ number: UInt64) throws(LinkCodecError) -> (number: UInt64, value: Value) {
        guard bytes.count - offset >= n else { throw .undecodable("a field runs past its message") }
        offset += n
        return (number, .fixed)
    }

    private mutating func varint() throws(LinkCodecError) -> UInt64 {
        switch Varint.decode(bytes, at: offset) {
        case .value(let v, let size):
            offset += size
            return v
        case .incomplete, .malformed: throw .undecodable("a truncated varint")
        }
    }
}
