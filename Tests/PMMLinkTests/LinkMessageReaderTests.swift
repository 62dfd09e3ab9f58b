import NIOCore
import NIOEmbedded
@testable import PMMLink
import PMMRouterCore
import PMMWire
import SwiftProtobuf
import Testing

/// The receiving end of a link: bytes in chunks of any size (as TLS hands them over), whole messages out, a
/// batch's frames left where they arrived.
@Suite struct LinkMessageReaderTests {
    /// Batches, acknowledgements and heartbeats, encoded one after another, and what each decodes to.
    static func stream(seed: UInt64) -> (bytes: [UInt8], expected: [LinkInbound]) {
        var random = SplitMix(seed: seed)
        var bytes: [UInt8] = []
        var expected: [LinkInbound] = []
        var sequence = 1
        for _ in 0..<60 {
            switch Int(random.next() % 4) {
            case 0:
                var ack = Pmm_V1_LinkMessage()
                ack.ack.upTo = UInt64(sequence)
                LinkCodec.encode(ack, into: &bytes)
                expected.append(.ack(upTo: UInt64(sequence)))
            case 1:
                LinkCodec.encode(Pmm_V1_LinkMessage.with { $0.heartbeat = Pmm_V1_LinkHeartbeat() }, into: &bytes)
                expected.append(.heartbeat)
            default:
                let count = 1 + Int(random.next() % 12)
                let frames = (0..<count).map {
                    LinkFrame(target: "sink-b-\($0 % 3)", bytes: numberedFrame(sequence + $0, size: Int(random.next() % 5000)))
                }
                LinkCodec.encodeBatch(firstSequence: UInt64(sequence), frames: frames[...], into: &bytes)
                expected.append(.batch(firstSequence: UInt64(sequence), frames: LinkFrames(frames)))
                sequence += count
            }
        }
        return (bytes, expected)
    }

    @Test(arguments: [1, 2, 3, 4] as [UInt64])
    func chunksOfAnySize_giveEveryMessageOnce_inOrder(seed: UInt64) throws {
        let (bytes, expected) = Self.stream(seed: seed)
        let buffers = BufferPool(limit: 1 << 20)
        let channel = EmbeddedChannel(handler: LinkMessageReader(maximumMessageSize: 1 << 20, buffers: buffers))
        var random = SplitMix(seed: seed &* 31)
        var offset = 0
        var received: [LinkInbound] = []
        while offset < bytes.count {
            // From 1 byte to 40 KiB: a message split anywhere, or several in one read.
            let n = min(bytes.count - offset, random.next() % 3 == 0 ? 1 + Int(random.next() % 7) : 1 + Int(random.next() % 40_000))
            try channel.writeInbound(channel.allocator.buffer(bytes: bytes[offset..<(offset + n)]))
            offset += n
            while let message = try channel.readInbound(as: LinkInbound.self) {
                received.append(message)
                // As the router does: once a batch's frames were copied out, its buffer serves again.
                if case .batch(let first, let frames) = message {
                    buffers.give(frames.storage)
                    received[received.count - 1] = .batch(firstSequence: first, frames: LinkFrames(Array(frames)))
                }
            }
        }
        #expect(received.count == expected.count)
        #expect(received == expected)
        _ = try channel.finish()
    }

    @Test func batchesReadTogether_shareTheBufferTheyArrivedIn() throws {
        let (bytes, expected) = Self.stream(seed: 9)
        let channel = EmbeddedChannel(handler: LinkMessageReader(maximumMessageSize: 1 << 20, buffers: BufferPool(limit: 0)))
        try channel.writeInbound(channel.allocator.buffer(bytes: bytes))
        var batches: [LinkFrames] = []
        var received: [LinkInbound] = []
        while let message = try channel.readInbound(as: LinkInbound.self) {
            received.append(message)
            if case .batch(_, let frames) = message { batches.append(frames) }
        }
        #expect(received == expected)
        #expect(batches.count > 1)
        let bases = Set(batches.map { $0.storage.withUnsafeBytes { UInt(bitPattern: $0.baseAddress) } })
        #expect(bases.count == 1, "one buffer, not a copy per batch")
    }

    @Test func bytesThatAreNoMessage_raiseTheCodecError_andNothingMore() throws {
        let channel = EmbeddedChannel(handler: LinkMessageReader(maximumMessageSize: 1 << 10, buffers: BufferPool(limit: 0)))
        #expect(throws: LinkCodecError.oversized(size: 1 << 20, limit: 1 << 10)) {
            var prefix: [UInt8] = []
            Varint.encode(1 << 20, into: &prefix)
            try channel.writeInbound(channel.allocator.buffer(bytes: prefix))
        }
        // Whatever follows is ignored: the connection is being closed.
        try channel.writeInbound(channel.allocator.buffer(bytes: [0x02, 0x32, 0x00]))
        #expect(try channel.readInbound(as: LinkInbound.self) == nil)
    }

    @Test func decodeAll_sharing_leavesTheIncompleteTail_andSharesTheBuffer() throws {
        let (bytes, expected) = Self.stream(seed: 5)
        let cut = bytes.count - 3
        let buffer = Array(bytes[..<cut])
        let (messages, end) = try LinkCodec.decodeAll(sharing: buffer, from: 0, maximumMessageSize: 1 << 20)
        #expect(messages == Array(expected.prefix(messages.count)))
        #expect(messages.count == expected.count - 1)
        #expect(end < cut)
        let (rest, restEnd) = try LinkCodec.decodeAll(sharing: bytes, from: end, maximumMessageSize: 1 << 20)
        #expect(rest == [expected.last!])
        #expect(restEnd == bytes.count)
    }
}
