import Foundation
import PMMLink
import PMMWire
import SwiftProtobuf
import Testing

/// A pipe frame: a varint length, then `body`.
func pipeFrame(_ body: [UInt8]) -> [UInt8] {
    var out: [UInt8] = []
    Varint.encode(UInt64(body.count), into: &out)
    return out + body
}

func decodeAll(_ bytes: [UInt8], limit: Int = 1 << 20) throws(LinkCodecError) -> [LinkInbound] {
    var messages: [LinkInbound] = []
    var offset = 0
    while true {
        let result = bytes.withUnsafeBytes { raw in
            Result { () throws(LinkCodecError) in
                try LinkCodec.decode(UnsafeRawBufferPointer(rebasing: raw[offset...]), maximumMessageSize: limit)
            }
        }
        let decoded = try result.get()
        guard let (message, consumed) = decoded else { return messages }
        messages.append(message)
        offset += consumed
    }
}

@Suite struct LinkCodecTests {
    let frames = [
        LinkFrame(target: "collector-edge-b-0", bytes: pipeFrame([0x28, 0x01, 0x3a, 0x02, 0x61, 0x62])),
        LinkFrame(target: "", bytes: pipeFrame(Array(repeating: 7, count: 300))),
        LinkFrame(target: "x", bytes: pipeFrame([1])),
    ]

    @Test func encodeBatch_writesTheBytesSwiftProtobufWrites() throws {
        var hand: [UInt8] = []
        LinkCodec.encodeBatch(firstSequence: 300, frames: frames[...], into: &hand)
        var message = Pmm_V1_LinkMessage()
        message.batch.firstSequence = 300
        message.batch.frames = frames.map { f in
            var lf = Pmm_V1_LinkFrame()
            lf.target = f.target
            lf.frame = Data(f.bytes)
            return lf
        }
        var reference: [UInt8] = []
        LinkCodec.encode(message, into: &reference)
        #expect(hand == reference)
        #expect(try decodeAll(hand) == [.batch(firstSequence: 300, frames: LinkFrames(frames))])
    }

    /// Frames lent by a router's queue encode to the very bytes of the same frames owned.
    @Test func encodeBatch_ofBorrowedFrames_writesTheSameBytes() throws {
        var owned: [UInt8] = []
        LinkCodec.encodeBatch(firstSequence: 7, frames: frames[...], into: &owned)
        let storage = frames.flatMap(\.bytes)
        let borrowedBytes = storage.withUnsafeBytes { raw -> [UInt8] in
            var offset = 0
            let borrowed = frames.map { frame -> BorrowedLinkFrame in
                defer { offset += frame.bytes.count }
                return BorrowedLinkFrame(target: frame.target, bytes: UnsafeRawBufferPointer(rebasing: raw[offset..<(offset + frame.bytes.count)]))
            }
            return borrowed.withUnsafeBufferPointer { frames in
                var out = [UInt8](repeating: 0, count: LinkCodec.encodedBatchSize(firstSequence: 7, frames: frames))
                let written = out.withUnsafeMutableBytes { LinkCodec.encodeBatch(firstSequence: 7, frames: frames, into: $0) }
                return Array(out.prefix(written))
            }
        }
        #expect(borrowedBytes == owned)
    }

    @Test func decode_readsEveryKind_throughSwiftProtobuf() throws {
        var bytes: [UInt8] = []
        var hello = Pmm_V1_LinkMessage()
        hello.hello.node = "edge-a"
        hello.hello.revision = 7
        hello.hello.protocolVersion = linkProtocolVersion
        LinkCodec.encode(hello, into: &bytes)
        var ack = Pmm_V1_LinkMessage()
        ack.ack.upTo = 99
        LinkCodec.encode(ack, into: &bytes)
        var goodbye = Pmm_V1_LinkMessage()
        goodbye.goodbye.reason = "stopping"
        LinkCodec.encode(goodbye, into: &bytes)
        var heartbeat = Pmm_V1_LinkMessage()
        heartbeat.heartbeat = Pmm_V1_LinkHeartbeat()
        LinkCodec.encode(heartbeat, into: &bytes)
        // A batch with its fields in another order than encodeBatch writes takes the SwiftProtobuf path.
        var batch = Pmm_V1_LinkMessage()
        batch.batch.firstSequence = 5
        var f = Pmm_V1_LinkFrame()
        f.frame = Data(frames[0].bytes)
        f.target = frames[0].target
        batch.batch.frames = [f]
        var health = Pmm_V1_LinkMessage()
        health.health.revision = 3
        LinkCodec.encode(health, into: &bytes)
        var both = Pmm_V1_LinkMessage()
        both.batch = batch.batch
        LinkCodec.encode(both, into: &bytes)
        let decoded = try decodeAll(bytes)
        #expect(decoded.count == 6)
        #expect(decoded[0] == .hello(hello.hello))
        #expect(decoded[1] == .ack(upTo: 99))
        #expect(decoded[2] == .goodbye(reason: "stopping"))
        #expect(decoded[3] == .heartbeat)
        #expect(decoded[4] == .health(health.health))
        #expect(decoded[5] == .batch(firstSequence: 5, frames: LinkFrames([frames[0]])))
    }

    @Test func decode_dripFed_needsMoreUntilTheLastByte() throws {
        var bytes: [UInt8] = []
        LinkCodec.encodeBatch(firstSequence: 1, frames: frames[...], into: &bytes)
        for cut in 0..<bytes.count {
            let part = Array(bytes[..<cut])
            let decoded = try part.withUnsafeBytes { raw in
                try LinkCodec.decode(raw, maximumMessageSize: 1 << 20)
            }
            #expect(decoded == nil, "a message decoded from \(cut) of \(bytes.count) bytes")
        }
        #expect(try decodeAll(bytes).count == 1)
    }

    @Test func decode_whenTheLengthIsOverTheLimit_throwsOversizedBeforeTheBodyArrives() {
        var bytes: [UInt8] = []
        Varint.encode(64 << 20, into: &bytes)
        #expect(throws: LinkCodecError.oversized(size: 64 << 20, limit: 8 << 20)) {
            try decodeAll(bytes, limit: 8 << 20)
        }
        #expect(LinkCodecError.oversized(size: 1, limit: 0).description.contains("over the limit"))
    }

    @Test func decode_whenTheLengthIsNoVarint_throwsMalformedLength() {
        let bytes = [UInt8](repeating: 0xff, count: 11)
        #expect(throws: LinkCodecError.malformedLength) { try decodeAll(bytes) }
    }

    @Test func decode_whenAFrameIsNotOnePipeFrame_throwsMalformedFrame() {
        for bad in [[UInt8](), [0x05, 1, 2], [0x00], [0x01, 1, 2]] {
            var bytes: [UInt8] = []
            LinkCodec.encodeBatch(
                firstSequence: 1, frames: [frames[0], LinkFrame(target: "t", bytes: bad)][...], into: &bytes)
            #expect(throws: LinkCodecError.self) { try decodeAll(bytes) }
            do {
                _ = try decodeAll(bytes)
            } catch {
                guard case .malformedFrame(let index, _) = error else {
                    Issue.record("expected malformedFrame, got \(error)")
                    continue
                }
                #expect(index == 1)
            }
        }
    }

    @Test func decode_whenTheMessageIsEmpty_throwsEmptyMessage() {
        #expect(throws: LinkCodecError.emptyMessage) { try decodeAll([0x00]) }
    }

    @Test func decode_garbage_throwsOrWaits_neverCrashes() {
        var generator = SystemRandomNumberGenerator()
        var errors = 0
        for _ in 0..<2000 {
            let count = Int.random(in: 1...200, using: &generator)
            let bytes = (0..<count).map { _ in UInt8.random(in: 0...255, using: &generator) }
            do { _ = try decodeAll(bytes, limit: 4096) } catch { errors += 1 }
        }
        #expect(errors > 0)
        // Field-level garbage inside a well-framed batch message.
        for _ in 0..<2000 {
            let count = Int.random(in: 1...100, using: &generator)
            var body: [UInt8] = [0x12]
            Varint.encode(UInt64(count), into: &body)
            body += (0..<count).map { _ in UInt8.random(in: 0...255, using: &generator) }
            _ = try? decodeAll(pipeFrame(body))
        }
    }
}

@Suite struct LinkFramesTests {
    @Test func decodedBatch_isOneBufferWithRanges_andDroppingSharesIt() throws {
        let frames = (0..<5).map { LinkFrame(target: $0 < 3 ? "collector-edge-b-0" : "x", bytes: numberedFrame($0)) }
        var bytes: [UInt8] = []
        LinkCodec.encodeBatch(firstSequence: 10, frames: frames[...], into: &bytes)
        guard case .batch(let first, let decoded)? = try decodeAll(bytes).first else {
            Issue.record("no batch")
            return
        }
        #expect(first == 10 && decoded.count == 5)
        #expect(Array(decoded) == frames)
        #expect(decoded.byteCount == frames.reduce(0) { $0 + $1.bytes.count })
        #expect(decoded.withFrameBytes(at: 3) { Array($0) } == frames[3].bytes)
        #expect(decoded.target(at: 4) == "x")
        let rest = decoded.dropping(2)
        #expect(Array(rest) == Array(frames[2...]))
        #expect(rest.storage == decoded.storage)
        #expect(LinkFrames(frames) == decoded)
    }

    /// A batch's buffer given back is the next batch's: same memory, frames right. One still held elsewhere is
    /// not written under its holder, and the pool keeps no more than its limit.
    @Test func batchBuffers_givenBack_serveTheNextBatch_andNeverOverwriteFramesStillHeld() throws {
        func batch(_ first: Int, _ count: Int) -> (bytes: [UInt8], frames: [LinkFrame]) {
            let frames = (first..<(first + count)).map { LinkFrame(target: "sink-b-\($0 % 2)", bytes: numberedFrame($0)) }
            var bytes: [UInt8] = []
            LinkCodec.encodeBatch(firstSequence: UInt64(first), frames: frames[...], into: &bytes)
            return (bytes, frames)
        }
        /// What the link's reader does: the bytes gathered in a buffer from the pool, the batch decoded in place.
        func decoded(_ bytes: [UInt8], _ buffers: BufferPool) throws -> LinkFrames {
            var buffer = buffers.take()
            buffer.append(contentsOf: bytes)
            guard case .batch(_, let frames)? = try LinkCodec.decodeAll(sharing: buffer, from: 0, maximumMessageSize: 1 << 20).messages.first
            else { throw LinkCodecError.emptyMessage }
            return frames
        }
        func address(_ frames: LinkFrames) -> UnsafeRawPointer? { frames.storage.withUnsafeBytes { $0.baseAddress } }

        let buffers = BufferPool(limit: 1 << 20)
        let (firstBytes, firstFrames) = batch(1, 40)
        var first: LinkFrames? = try decoded(firstBytes, buffers)
        let firstAddress = address(first!)
        #expect(Array(first!) == firstFrames)
        buffers.give(first!.storage)
        first = nil
        #expect(buffers.keptBytes > 0)

        let (secondBytes, secondFrames) = batch(41, 30)
        let second = try decoded(secondBytes, buffers)
        #expect(address(second) == firstAddress, "the buffer given back was reused")
        #expect(Array(second) == secondFrames)
        #expect(buffers.keptBytes == 0)

        // Given back while still held: the next batch gets other memory, and the held frames stay as they were.
        buffers.give(second.storage)
        let third = try decoded(batch(71, 40).bytes, buffers)
        #expect(address(third) != address(second))
        #expect(Array(second) == secondFrames)

        // The limit: a buffer that would take the pool over it is dropped.
        let small = BufferPool(limit: 16)
        small.give(third.storage)
        #expect(small.keptBytes == 0)
    }
}
