import Foundation
import Glibc
@testable import PMMRouter
import PMMRouterCore
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
    CorruptRecord(
        name: "length past the end of the file", bytes: varint(5000) + Array("torn".utf8), problem: "claims 5000 bytes", followed: false),
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
        let json = try JSONSerialization.jsonObject(with: Data(list.stdout.utf8))
        let rows = try #require(json as? [[String: Any]], "\(list.stdout) \(list.stderr)")
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
        let (dir, state, spool) = try appliedMeshWithDeadLetterDirectory()
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

/// The router's appender (`DeadLetterSpool`) against rewrites by `pmm deadletters replay` and its size cap.
@Suite struct DeadLetterSpoolTests {
    static func frame(_ sequence: UInt64, payload: Int = 0) throws -> [UInt8] {
        var envelope = Envelope()
        envelope.dataType = "metrics"
        envelope.source = "api"
        envelope.sequence = sequence
        envelope.payload = Data(repeating: 0x70, count: payload)
        return try envelope.framed()
    }

    static func append(_ spool: DeadLetterSpool, _ sequence: UInt64, payload: Int = 0) throws -> Bool {
        try frame(sequence, payload: payload).withUnsafeBytes {
            spool.append(frame: $0, dataType: "metrics", reason: .overflow, pipe: "api.metrics.s0.in")
        }
    }

    static func sequences(_ directory: String) -> [UInt64] {
        DeadLetterStore.read(directory: directory).compactMap { $0.envelope?.sequence }
    }

    /// Replay rewrites the file while the router holds it open for appending: later letters must land in the
    /// new file, not in the unlinked old one.
    @Test func append_afterReplayRewroteTheFile_writesToTheNewFile() throws {
        let dir = TemporaryDirectory()
        let directory = dir.path + "/deadletters"
        let spool = DeadLetterSpool(directory: directory)
        for sequence: UInt64 in 1...3 { #expect(try Self.append(spool, sequence)) }
        let removed = try DeadLetterStore.rewrite(file: directory + "/metrics.log") { letter in
            DeadLetterStore.envelope(of: letter)?.sequence != 2
        }
        #expect(removed == 1)
        #expect(try Self.append(spool, 4))
        #expect(Self.sequences(directory) == [1, 3, 4])
    }

    /// A thread appends 2000 letters while rewrites remove the odd ones, again and again: every even letter is
    /// in the file at the end, once.
    @Test func append_whileRewritesRun_losesNoLetter() throws {
        let dir = TemporaryDirectory()
        let directory = dir.path + "/deadletters"
        _ = DeadLetterSpool(directory: directory)
        let appender = Thread {
            let spool = DeadLetterSpool(directory: directory)
            for sequence: UInt64 in 1...2000 { _ = try? Self.append(spool, sequence) }
        }
        appender.stackSize = 1 << 20
        appender.start()
        let even = { (letter: Pmm_V1_DeadLetter) in (DeadLetterStore.envelope(of: letter)?.sequence ?? 0) % 2 == 0 }
        var rewrites = 0
        let deadline = Date().addingTimeInterval(60)
        while !appender.isFinished && Date() < deadline {
            if FileManager.default.fileExists(atPath: directory + "/metrics.log") {
                try DeadLetterStore.rewrite(file: directory + "/metrics.log", keep: even)
                rewrites += 1
            }
        }
        try #require(appender.isFinished, "the appender is done")
        try DeadLetterStore.rewrite(file: directory + "/metrics.log", keep: even)
        #expect(Self.sequences(directory) == Array(stride(from: 2, through: 2000, by: 2)), "after \(rewrites) rewrites")
    }

    /// A replay killed in the middle of rewriting the file (here by SIGXFSZ, past a file-size limit) leaves
    /// every letter in place, and the next replay goes through.
    @Test(.enabled(if: isRoot, "apply gives the pipes to their uids"))
    func replay_whenKilledWhileRewriting_losesNoLetter() throws {
        let (dir, state, spool) = try appliedMeshWithDeadLetterDirectory()
        // One letter replay can send, then 12 of 40 KiB that it cannot (raw bytes): ~480 KiB stay.
        var bytes = try deadLetterRecord(sequence: 1)
        for index in 0..<12 {
            let raw = [UInt8](repeating: UInt8(index), count: 40 << 10)
            bytes += try deadLetterRecord(sequence: UInt64(100 + index), reason: .discarded, frame: raw)
        }
        #expect(FileManager.default.createFile(atPath: spool + "/metrics.log", contents: Data(bytes)))
        let reader = open(dir.root + "/api.metrics.s0.in", O_RDONLY | O_NONBLOCK)
        try #require(reader >= 0)
        defer { close(reader) }

        let killed = try run("/usr/bin/prlimit", ["--fsize=\(256 << 10)", pmmBinary, "deadletters", "replay", state])
        #expect(killed.status == SIGXFSZ, "killed mid-write: \(killed.status) \(killed.stderr)")
        let after = DeadLetterStore.load(directory: spool)
        #expect(after.corruptions.isEmpty, "\(after.corruptions)")
        #expect(after.entries.count { $0.letter.reason == "discarded" } == 12)

        let replay = try pmm("deadletters", "replay", state)
        #expect(replay.status == 0, "\(replay.stderr)")
        #expect(DeadLetterStore.read(directory: spool).map(\.letter.reason) == Array(repeating: "discarded", count: 12))
        let names = try FileManager.default.contentsOfDirectory(atPath: spool).sorted()
        #expect(names == ["metrics.lock", "metrics.log"], "no temporary file left")
    }

    /// With a cap, a file that would outgrow it sheds its oldest letters (counted), down to about half the cap;
    /// the newest letters stay.
    @Test func append_whenTheFileWouldPassItsCap_shedsTheOldestLetters() throws {
        let dir = TemporaryDirectory()
        let directory = dir.path + "/deadletters"
        let cap = 64 << 10
        let spool = DeadLetterSpool(directory: directory, maximumFileSize: cap)
        var largest = 0
        for sequence: UInt64 in 1...1000 {
            #expect(try Self.append(spool, sequence, payload: 200))
            var info = stat()
            #expect(stat(directory + "/metrics.log", &info) == 0)
            largest = max(largest, Int(info.st_size))
        }
        #expect(largest <= cap, "the cap holds: \(largest) bytes")
        let kept = Self.sequences(directory)
        #expect(kept.last == 1000, "the newest letter is kept")
        #expect(kept == Array((1001 - UInt64(kept.count))...1000), "the newest letters are kept, in order")
        #expect(spool.shed + UInt64(kept.count) == 1000, "every letter is kept or counted as shed: \(spool.shed) shed, \(kept.count) kept")
        #expect(spool.shed > 0)
        #expect(DeadLetterStore.load(directory: directory).corruptions.isEmpty)
    }

    /// A letter larger than the cap is not written, and counted as shed; the file keeps what it had.
    @Test func append_whenOneLetterIsLargerThanTheCap_shedsIt() throws {
        let dir = TemporaryDirectory()
        let directory = dir.path + "/deadletters"
        let spool = DeadLetterSpool(directory: directory, maximumFileSize: 4096)
        #expect(try Self.append(spool, 1))
        #expect(try !Self.append(spool, 2, payload: 8192))
        #expect(spool.shed == 1)
        #expect(Self.sequences(directory) == [1])
    }

    /// A router that runs as a user owns its spool; a replay run by root must leave the rewritten file (and the
    /// lock file it creates) to that user, or the router could no longer open them.
    @Test(.enabled(if: isRoot, "chown to another uid"))
    func rewrite_byRoot_leavesTheFilesToTheSpoolsOwner() throws {
        let dir = TemporaryDirectory()
        let directory = dir.path + "/deadletters"
        try FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: true)
        let file = directory + "/metrics.log"
        #expect(FileManager.default.createFile(atPath: file, contents: Data(try deadLetterRecord(sequence: 1) + deadLetterRecord(sequence: 2))))
        #expect(chown(directory, 1001, 1001) == 0 && chown(file, 1001, 1001) == 0 && chmod(file, 0o640) == 0)
        chmod(dir.path, 0o755)  // mkdtemp makes 0700; let uid 1001 reach the spool

        #expect(try DeadLetterStore.rewrite(file: file) { DeadLetterStore.envelope(of: $0)?.sequence == 2 } == 1)
        for (path, mode) in [(file, 0o640), (directory + "/metrics.lock", 0o600)] {
            var info = stat()
            #expect(lstat(path, &info) == 0)
            #expect((info.st_uid, info.st_gid, info.st_mode & 0o777) == (1001, 1001, mode_t(mode)), "\(path)")
        }
        #expect(try openAs(uid: 1001, gid: 1001, path: file, mode: "w") == "ok")
    }
}

/// A one-shard mesh applied in a fresh directory, and its (empty) dead-letter directory: what a replay needs.
func appliedMeshWithDeadLetterDirectory() throws -> (dir: TemporaryDirectory, state: String, spool: String) {
    let dir = TemporaryDirectory()
    dir.writeSpec(apiUID: 0, collectorUID: 0, shards: 1)
    let state = "--state-dir=\(dir.path)/state"
    let apply = try pmm("apply", "-f", dir.specPath, state)
    try #require(apply.status == 0, "\(apply.stderr)")
    let spool = dir.path + "/state/deadletters"
    try FileManager.default.createDirectory(atPath: spool, withIntermediateDirectories: true)
    return (dir, state, spool)
}
