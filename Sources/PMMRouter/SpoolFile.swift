import Foundation
import Glibc
import PMMRouterCore
import PMMSystem
import SystemPackage

/// `fallocate(2)`, for punching the delivered head out of a spool.
@_silgen_name("fallocate")
private func c_fallocate(_ fd: Int32, _ mode: Int32, _ offset: Int64, _ length: Int64) -> Int32

private let FALLOC_FL_KEEP_SIZE: Int32 = 1
private let FALLOC_FL_PUNCH_HOLE: Int32 = 2

/// The file behind one at-least-once spool: `<state-dir>/spool/<pipe>.spool`, and its watermark in
/// `<pipe>.spool.mark`. The bookkeeping (what is delivered) is the core's `SpoolLedger`; this is only the I/O.
///
/// The router never reads an at-least-once ingress pipe into memory directly: `splice(2)` moves the bytes from
/// the pipe into the spool file in one system call, and the router reads them back from the file. So a frame
/// is on disk from the moment it leaves the pipe; a router killed with SIGKILL and started again finds every
/// frame a consumer had not read whole (duplicates are allowed and counted; losses are not).
///
/// Delivered bytes are freed without moving the rest: the head of the file before the watermark is punched out
/// (`fallocate(FALLOC_FL_PUNCH_HOLE)`), and the file is truncated whenever everything is delivered. So the disk
/// holds what is not yet delivered, even under a backlog that never empties. Nothing is fsync'd per frame: the
/// spool survives the router's death, not the machine's (see the README).
final class SpoolFile {
    let pipe: String
    let path: String
    let markPath: String
    let fd: FileDescriptor
    private var markWritten: Int64
    /// The inode of the pipe the spool is filled from (written into the mark file).
    var source: UInt64 = 0
    private var sourceWritten: UInt64 = .max
    private var cutsWritten: [String] = []
    /// Bytes before this offset are punched out.
    private var punched: Int64 = 0

    /// Opens (or creates) the spool of `pipe` and returns it with its ledger.
    ///
    /// - Parameter source: the inode the pipe has now (nil when it is gone). When an earlier router spooled
    ///   from another inode, a frame cut at the end of the spool can never be completed: the ledger gets a
    ///   source boundary there.
    static func open(directory: String, pipe: String, source: UInt64?) throws(FIFOError) -> (SpoolFile, SpoolLedger) {
        let path = directory + "/" + pipe + ".spool"
        let raw = Glibc.open(path, O_RDWR | O_CREAT | O_CLOEXEC | O_NOFOLLOW, 0o600)
        guard raw >= 0 else { throw FIFOError(.systemCall, path: path, "cannot open the spool: \(String(cString: strerror(errno)))") }
        var st = stat()
        fstat(raw, &st)
        let markPath = path + ".mark"
        // "<watermark> <inode spooled from> <at>:<resume>…\n" (SpoolLedger.cuts); an older mark has only the
        // watermark.
        let fields = ((try? String(contentsOfFile: markPath, encoding: .utf8)) ?? "").split(whereSeparator: \.isWhitespace)
        let mark = fields.first.flatMap { Int64($0) } ?? 0
        let spooledFrom = fields.count > 1 ? UInt64(fields[1]) : nil
        var ledger = SpoolLedger(pipe: pipe, size: Int64(st.st_size), mark: mark, cuts: SpoolLedger.cuts(from: fields.dropFirst(2)))
        if (spooledFrom != nil && spooledFrom != source) || source == nil { ledger.sourceChanged() }
        let file = SpoolFile(pipe: pipe, path: path, markPath: markPath, fd: FileDescriptor(rawValue: raw), mark: ledger.watermark)
        file.source = source ?? 0
        // A new source (none, for a spool adopted at start) goes to the mark, with the change it makes, before
        // any byte of it goes to the spool. Left to the next checkpoint, a router killed before it would leave a
        // mark naming the old source, and the next open would put the change at the spool's new end: the old
        // pipe's cut frame would run on into the new pipe's frames, or (adopted, the pipe since read at most
        // once, then spooled again) into what that pipe spooled next.
        if spooledFrom != file.source { file.writeMark(ledger, force: true) }
        return (file, ledger)
    }

    private init(pipe: String, path: String, markPath: String, fd: FileDescriptor, mark: Int64) {
        self.pipe = pipe
        self.path = path
        self.markPath = markPath
        self.fd = fd
        self.markWritten = mark
        self.punched = mark & ~4095
    }

    deinit { try? fd.close() }

    /// Moves up to `length` bytes from the pipe `source` to the end of the spool (`size`). Returns what splice
    /// returned (bytes moved, 0 at EOF, -1 with errno).
    func splice(from source: FileDescriptor, at size: Int64, length: Int) -> Int {
        var offset = size
        return c_splice(source.rawValue, nil, fd.rawValue, &offset, length, SPLICE_F_MOVE | SPLICE_F_NONBLOCK)
    }

    /// Moves `length` spooled bytes at `offset` into the pipe `destination` (page-cache references, no copy).
    /// Returns what splice returned (bytes moved, -1 with errno).
    func splice(at offset: Int64, into destination: Int32, length: Int) -> Int {
        var offset = offset
        return c_splice(fd.rawValue, &offset, destination, nil, length, SPLICE_F_MOVE | SPLICE_F_NONBLOCK)
    }

    /// Reads spooled bytes at `offset` into `buffer`. Returns the count, or -1 with errno.
    func read(into buffer: UnsafeMutableRawBufferPointer, at offset: Int64) -> Int {
        pread(fd.rawValue, buffer.baseAddress, buffer.count, Int(offset))
    }

    /// Empties the file (everything in it is delivered).
    func truncate() -> Bool {
        guard ftruncate(fd.rawValue, 0) == 0 else { return false }
        punched = 0
        return true
    }

    /// Frees the disk blocks before `watermark` (whole 4 KiB blocks, at least 1 MiB at a time).
    func release(before watermark: Int64) {
        let end = watermark & ~4095
        guard end - punched >= 1 << 20 else { return }
        if c_fallocate(fd.rawValue, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, punched, end - punched) == 0 { punched = end }
    }

    /// Writes the watermark file when it moved (a temporary file renamed over the old one).
    ///
    /// The mark also records the inode the spool is filled from and the cuts, so a router that starts again
    /// parses the bytes exactly as this one did (`SpoolLedger.cuts`).
    func writeMark(_ ledger: SpoolLedger, force: Bool = false) {
        let cuts = ledger.persistedCuts
        guard force || ledger.watermark != markWritten || source != sourceWritten || cuts != cutsWritten else { return }
        let temporary = markPath + ".tmp"
        let text = ([String(ledger.watermark), String(source)] + cuts).joined(separator: " ") + "\n"
        if FileManager.default.createFile(atPath: temporary, contents: Data(text.utf8)) {
            rename(temporary, markPath)
            markWritten = ledger.watermark
            sourceWritten = source
            cutsWritten = cuts
        }
    }
}
