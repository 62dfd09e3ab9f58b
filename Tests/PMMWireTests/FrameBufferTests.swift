import Foundation
import PMMWire
import SwiftProtobuf
import Testing

@Suite struct VarintTests {
    @Test(arguments: [UInt64(0), 1, 127, 128, 300, 16_383, 16_384, UInt64(UInt32.max), UInt64.max])
    func encodeDecode_roundTrips(_ value: UInt64) {
        var bytes: [UInt8] = []
        Varint.encode(value, into: &bytes)
        #expect(bytes.count == Varint.size(of: value))
        let decoded = bytes.withUnsafeBytes { Varint.decode($0, at: 0) }
        #expect(decoded == .value(value, size: bytes.count))
        for cut in 0..<bytes.count {
            #expect(Array(bytes[0..<cut]).withUnsafeBytes { Varint.decode($0, at: 0) } == .incomplete)
        }
    }

    @Test func decode_whenTooLong_isMalformed() {
        let bytes = [UInt8](repeating: 0xff, count: 11)
        #expect(bytes.withUnsafeBytes { Varint.decode($0, at: 0) } == .malformed)
        let tenth: [UInt8] = [0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x02]
        #expect(tenth.withUnsafeBytes { Varint.decode($0, at: 0) } == .malformed)
    }
}

extension VarintTests {
    /// Values of every varint size, 1 to 10 bytes: the largest and smallest of each.
    static let everySize: [UInt64] = (1...9).flatMap { [UInt64(1) << (7 * $0) - 1, UInt64(1) << (7 * $0)] } + [0, UInt64.max]

    /// A varint decodes the same, and `length` sees where it ends, whatever follows it (the fast paths read
    /// 8 bytes at a time, the bytes after it included) and wherever it starts; cut short it is incomplete.
    @Test(arguments: everySize)
    func decodeAndLength_agree_whateverFollowsAndWhereverItStarts(_ value: UInt64) {
        var varint: [UInt8] = []
        Varint.encode(value, into: &varint)
        for lead in 0..<3 {
            for trailer in [[], [0x00], [0xff], [UInt8](repeating: 0xff, count: 12), [UInt8](repeating: 0x01, count: 12)] {
                let bytes = [UInt8](repeating: 0x80, count: lead) + varint + trailer
                bytes.withUnsafeBytes { raw in
                    #expect(Varint.decode(raw, at: lead) == .value(value, size: varint.count), "\(value) lead \(lead) trailer \(trailer)")
                    #expect(Varint.length(raw, at: lead) == varint.count, "\(value) lead \(lead) trailer \(trailer)")
                }
            }
            for cut in 0..<varint.count {
                let bytes = [UInt8](repeating: 0x80, count: lead) + varint[0..<cut]
                bytes.withUnsafeBytes { raw in
                    #expect(Varint.decode(raw, at: lead) == .incomplete)
                    #expect(Varint.length(raw, at: lead) == nil)
                }
            }
        }
    }

    @Test func length_whenTooLong_isNil() {
        for bytes in [[UInt8](repeating: 0xff, count: 11), [0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x02, 0x00, 0x00]] {
            #expect(bytes.withUnsafeBytes { Varint.length($0, at: 0) } == nil)
            #expect(bytes.withUnsafeBytes { Varint.decode($0, at: 0) } == .malformed)
        }
    }

    /// Random values and random bytes after them, against the encoder (a fixed seed: the same cases every run).
    @Test func decode_agreesWithEncode_overRandomValues() {
        var generator = SeededGenerator(seed: 0x706d_6d76_6172)
        for _ in 0..<20_000 {
            let value = generator.next() >> (generator.next() % 64)
            var bytes: [UInt8] = []
            Varint.encode(value, into: &bytes)
            let size = bytes.count
            for _ in 0..<Int(generator.next() % 12) { bytes.append(UInt8(truncatingIfNeeded: generator.next())) }
            bytes.withUnsafeBytes { raw in
                #expect(Varint.decode(raw, at: 0) == .value(value, size: size))
                #expect(Varint.length(raw, at: 0) == size)
            }
        }
    }
}

/// A small deterministic generator for the property tests.
struct SeededGenerator: RandomNumberGenerator {
    var state: UInt64
    init(seed: UInt64) { state = seed }
    mutating func next() -> UInt64 {
        state &+= 0x9E37_79B9_7F4A_7C15
        var z = state
        z = (z ^ (z >> 30)) &* 0xBF58_476D_1CE4_E5B9
        z = (z ^ (z >> 27)) &* 0x94D0_49BB_1331_11EB
        return z ^ (z >> 31)
    }
}

func sampleEnvelope(_ sequence: UInt64, payload: Int = 40) -> Envelope {
    var envelope = Envelope()
    envelope.dataType = "metrics"
    envelope.schemaVersion = 2
    envelope.shardKey = .init("key-\(sequence)".utf8)
    envelope.source = "api"
    envelope.sequence = sequence
    envelope.sentAtUnixNanos = 1_700_000_000_000_000_000
    envelope.payload = .init(repeating: 7, count: payload)
    envelope.headers = ["trace": "abc"]
    return envelope
}

@Suite struct FrameBufferTests {
    /// Decodes `stream` fed in chunks of `chunk` bytes; returns the envelopes' sequence numbers.
    func decode(_ stream: [UInt8], chunk: Int, maximum: Int = 1 << 16) throws -> [UInt64] {
        var buffer = FrameBuffer(maximumFrameSize: maximum, readSize: 4096)
        var sequences: [UInt64] = []
        var offset = 0
        while offset < stream.count {
            buffer.prepare(minimum: 4096)
            let take = min(chunk, stream.count - offset, buffer.freeSpace)
            buffer.append(stream[offset..<(offset + take)])
            offset += take
            while let frame = try buffer.next() {
                let envelope = try buffer.envelope(of: frame)
                let key = buffer.withBytes(frame.bodyStart..<frame.range.upperBound) { body in
                    String(decoding: body[frame.fields.shardKey], as: UTF8.self)
                }
                #expect(key == "key-\(envelope.sequence)")
                #expect(frame.fields.schemaVersion == 2)
                sequences.append(envelope.sequence)
            }
        }
        #expect(buffer.pending == 0)
        return sequences
    }

    @Test(arguments: [1, 2, 3, 7, 64, 1000, 4096])
    func next_whenBytesArriveDripFed_findsEveryFrame(chunk: Int) throws {
        let stream = try (1...200).flatMap { try sampleEnvelope(UInt64($0), payload: Int($0) * 3).framed() }
        #expect(try decode(stream, chunk: chunk) == Array(1...200))
    }

    @Test func next_whenLengthExceedsTheMaximum_throwsOversized() throws {
        var buffer = FrameBuffer(maximumFrameSize: 1024)
        var prefix: [UInt8] = []
        Varint.encode(4 << 30, into: &prefix)
        buffer.append(prefix)
        #expect(throws: FrameError.oversized(length: 4 << 30, limit: 1024 - prefix.count)) { _ = try buffer.next() }
    }

    @Test(arguments: [
        ([UInt8]([0x03, 0xff, 0xff, 0xff]), "bad field tag at byte 0"),  // a tag whose varint never ends
        ([0x02, 0x0a, 0x05], "truncated length-delimited field 1"),  // data_type claims 5 bytes, has 0
        ([0x02, 0x10, 0x80], "truncated varint in field 2"),  // schema_version's varint cut short
        ([0x02, 0x08, 0x01], "field 1 has the wrong wire type"),  // data_type as a varint
        ([0x01, 0x00], "field number 0"),
        ([0x02, 0x1b, 0x00], "wire type 3 in field 3"),  // a group
    ])
    func next_whenBodyIsNotAnEnvelope_throwsWhy(_ bytes: [UInt8], _ why: String) {
        var buffer = FrameBuffer(maximumFrameSize: 1024)
        buffer.append(bytes)
        #expect(throws: FrameError.malformedEnvelope(why)) { _ = try buffer.next() }
    }

    @Test func next_skipsUnknownFields_andAcceptsAnEmptyEnvelope() throws {
        var buffer = FrameBuffer(maximumFrameSize: 1024)
        // Field 15 (fixed32), field 16 (fixed64), field 20 (bytes): unknown, skipped.
        let body: [UInt8] = [0x7d, 1, 2, 3, 4, 0x81, 0x01, 1, 2, 3, 4, 5, 6, 7, 8, 0xa2, 0x01, 0x01, 0x41, 0x10, 0x05]
        buffer.append([UInt8(body.count)] + body + [0x00])
        let first = try #require(try buffer.next())
        #expect(first.fields.schemaVersion == 5)
        let empty = try #require(try buffer.next())
        #expect(empty.size == 1 && empty.fields == RoutingFields())
        #expect(try buffer.next() == nil)
    }

    @Test func scan_agreesWithSwiftProtobuf() throws {
        for sequence in 1...50 {
            let envelope = sampleEnvelope(UInt64(sequence), payload: sequence * 17)
            let body: [UInt8] = try envelope.serializedBytes()
            let fields = try body.withUnsafeBytes { try EnvelopeScanner.scan($0) }
            #expect(Array(body[fields.dataType]) == Array("metrics".utf8))
            #expect(Array(body[fields.shardKey]) == Array(envelope.shardKey))
            #expect(fields.schemaVersion == envelope.schemaVersion)
        }
    }
}

@Suite struct BytesEqualTests {
    /// Every length around the 8-byte steps and the 16-byte switch to memcmp, a difference at every position.
    @Test func bytesEqual_findsEveryDifference_atEveryLength() {
        for length in 0...40 {
            let bytes = (0..<length).map { UInt8(truncatingIfNeeded: $0 &* 37 &+ 11) }
            bytes.withUnsafeBytes { raw in
                #expect(raw.bytesEqual(Array(bytes)), "length \(length)")
                #expect(!raw.bytesEqual(bytes + [0]), "length \(length) against one more")
                for position in 0..<length {
                    var other = bytes
                    other[position] ^= 0x01
                    #expect(!raw.bytesEqual(other), "length \(length), difference at \(position)")
                }
            }
        }
    }
}
