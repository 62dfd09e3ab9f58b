import Foundation
import Glibc
import PMMRouter
import PMMSystem
import PMMWire
import Testing

/// One stored dead letter (a varint length and a `pmm.v1.DeadLetter`), as the router writes it.
func deadLetterRecord(sequence: UInt64, reason: DeadLetterReason = .noRoute, frame: [UInt8]? = nil) throws -> [UInt8] {
    var envelope = Envelope()
    envelope.dataType = "metrics"
    envelope.source = "api"
    envelope.sequence = sequence
    envelope.shardKey = Data("key-\(sequence)".utf8)
    var letter = Pmm_V1_DeadLetter()
    letter.reason = reason.rawValue
    letter.dataType = "metrics"
    letter.pipe = "api.metrics.s0.in"
    letter.atUnixNanos = 1_700_000_000_000_000_000 + Int64(sequence)
    letter.frame = Data(try frame ?? envelope.framed())
    return try letter.framed()
}

/// A varint, as bytes.
func varint(_ value: UInt64) -> [UInt8] {
    var bytes: [UInt8] = []
    Varint.encode(value, into: &bytes)
    return bytes
}

/// A corrupt stretch written by hand between good dead letters.
struct CorruptRecord: CustomTestStringConvertible, Sendable {
    var name: String
    var bytes: [UInt8]
    /// A fragment of the problem `pmm deadletters list` must report.
    var problem: String
    /// Whether good letters follow it (a claim past the end of the file can only be last).
    var followed = true
    var testDescription: String { name }
}

let corruptRecords: [CorruptRecord] = [
    CorruptRecord(name: "length 2^63", bytes: varint(1 << 63) + Array("junk".utf8), problem: "claims 9223372036854775808 bytes"),
    CorruptRecord(name: "length 2^64-1", bytes: varint(.max) + Array("junk".utf8), problem: "claims 18446744073709551615 bytes"),
    CorruptRecord(
        name: "length that overflows offset + size + length", bytes: varint(UInt64(Int.max) - 3) + [1, 2, 3],
        problem: "claims 9223372036854775804 bytes"),
    CorruptRecord(name: "length past the end of the file", bytes: varint(5000) + Array("torn".utf8), problem: "claims 5000 bytes", followed: false),
    CorruptRecord(name: "not a varint", bytes: [UInt8](repeating: 0xff, count: 11) + [0x7f], problem: "not a varint"),
    CorruptRecord(name: "a body that is not a dead letter", bytes: [6, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff], problem: "not a dead letter"),
    CorruptRecord(name: "the file ends inside a length", bytes: [0x80, 0x80], problem: "ends inside", followed: false),
]

/// `pmm deadletters` and `DeadLetterStore` on spool files written by hand.
@Suite struct DeadLetterStoreTests {
    @Test(arguments: corruptRecords)
    func list_whenARecordIsCorrupt_reportsFileAndOffset_andListsTheReadableLetters(_ corrupt: CorruptRecord) throws {
        let dir = TemporaryDirectory()
        let spool = dir.path + "/state/deadletters"
        try FileManager.default.createDirectory(atPath: spool, withIntermediateDirectories: true)
        let head = try deadLetterRecord(sequence: 1) + deadLetterRecord(sequence: 2)
        let tail = corrupt.followed ? try deadLetterRecord(sequence: 3) : []
        let file = spool + "/metrics.log"
        #expect(FileManager.default.createFile(atPath: file, contents: Data(head + corrupt.bytes + tail)))

        let list = try pmm("deadletters", "list", "--state-dir=\(dir.path)/state", "-o", "json")
        #expect(list.status == 0, "\(list.stderr)")
        let rows = try #require(try JSONSerialization.jsonObject(with: Data(list.stdout.utf8)) as? [[String: Any]], "\(list.stdout) \(list.stderr)")
        #expect(rows.map { $0["sequence"] as? Int } == (corrupt.followed ? [1, 2, 3] : [1, 2]))
        #expect(list.stderr.contains("\(file): byte \(head.count): "), "names the file and the offset: \(list.stderr)")
        #expect(list.stderr.contains(corrupt.problem), "\(list.stderr)")

        let contents = DeadLetterStore.load(directory: spool)
        #expect(contents.entries.map { $0.envelope?.sequence } == (corrupt.followed ? [1, 2, 3] : [1, 2]))
        #expect(contents.corruptions.map(\.offset) == [head.count])
        #expect(contents.corruptions.map(\.length) == [corrupt.bytes.count])
        #expect(contents.corruptions.map(\.file) == [file])
    }

    @Test func list_whenADiscardedFrameStartsWithAHugeVarint_listsItAsRawBytes() throws {
        let dir = TemporaryDirectory()
        let spool = dir.path + "/state/deadletters"
        try FileManager.default.createDirectory(atPath: spool, withIntermediateDirectories: true)
        let raw = varint(1 << 63) + Array("garbage".utf8)
        let bytes = try deadLetterRecord(sequence: 1, reason: .discarded, frame: raw) + deadLetterRecord(sequence: 2)
        #expect(FileManager.default.createFile(atPath: spool + "/metrics.log", contents: Data(bytes)))
        let list = try pmm("deadletters", "list", "--state-dir=\(dir.path)/state")
        #expect(list.status == 0, "\(list.stderr)")
        #expect(list.stdout.contains("discarded (\(raw.count) raw bytes)"), "\(list.stdout)")
        #expect(list.stdout.contains("no-route api#2"), "\(list.stdout)")
    }

    /// Replay sends the readable letters into the producer's ingress pipes (read here, in the router's place)
    /// and removes them from the spool; the unreadable bytes stay, and are still reported.
    @Test(.enabled(if: isRoot, "apply gives the pipes to their uids"))
    func replay_whenARecordIsCorrupt_sendsTheReadableLetters_andKeepsTheUnreadableBytes() throws {
        let dir = TemporaryDirectory()
        dir.writeSpec(apiUID: 0, collectorUID: 0, shards: 1)
        let state = "--state-dir=\(dir.path)/state"
        let apply = try pmm("apply", "-f", dir.specPath, state)
        try #require(apply.status == 0, "\(apply.stderr)")
        let spool = dir.path + "/state/deadletters"
        try FileManager.default.createDirectory(atPath: spool, withIntermediateDirectories: true)
        let file = spool + "/metrics.log"
        let head = try deadLetterRecord(sequence: 1)
        let corrupt = varint(1 << 63) + Array("junk".utf8)
        #expect(FileManager.default.createFile(atPath: file, contents: Data(head + corrupt + (try deadLetterRecord(sequence: 2)))))
        let reader = open(dir.root + "/api.metrics.s0.in", O_RDONLY | O_NONBLOCK)
        try #require(reader >= 0)
        defer { close(reader) }

        let replay = try pmm("deadletters", "replay", state)
        #expect(replay.status == 0, "\(replay.stderr)")
        #expect(replay.stdout.contains("Replayed 2 dead letters"), "\(replay.stdout)")
        #expect(replay.stderr.contains("\(file): byte \(head.count): "), "\(replay.stderr)")
        var buffer = [UInt8](repeating: 0, count: 4096)
        let n = read(reader, &buffer, buffer.count)
        var frames = FrameBuffer(maximumFrameSize: 4096)
        frames.append(Array(buffer[0..<max(n, 0)]))
        var sequences: [UInt64] = []
        while let frame = try frames.next() { sequences.append(try frames.envelope(of: frame).sequence) }
        #expect(sequences == [1, 2])
        #expect(FileManager.default.contents(atPath: file).map(Array.init) == corrupt, "only the unreadable bytes stay")
    }
}
