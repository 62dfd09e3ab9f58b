import Foundation
@testable import PMMRouter
import PMMRouterCore
import Testing

@Suite struct SpoolFileTests {
    /// A router opens the spool of a pipe an apply replaced since the last router spooled from it: the ledger
    /// gets a change of source at the spool's end, where the old pipe's cut frame stops. Killed before its next
    /// checkpoint, after it spliced the new pipe's first bytes in, the router leaves the spool to the next
    /// open, which must find the change where it was. Found at the new end instead (the mark still named the
    /// old pipe), it joined the old pipe's cut frame with the new pipe's frames: at-least-once frames delivered
    /// inside another, lost (the simulation's seed 6180).
    @Test func aChangeOfSourceFoundAtOpen_isInTheMarkBeforeTheNewPipesBytes() throws {
        let dir = TemporaryDirectory("pmm-spool")
        let pipe = "api.orders.s0.in"
        let spool = dir.path + "/\(pipe).spool"
        // An earlier router spooled 100 bytes from the pipe's inode 7, its last frame cut at their end.
        #expect(FileManager.default.createFile(atPath: spool, contents: Data(repeating: 1, count: 100)))
        try "0 7\n".write(toFile: spool + ".mark", atomically: true, encoding: .utf8)
        do {
            let (file, ledger) = try SpoolFile.open(directory: dir.path, pipe: pipe, source: 9)
            #expect(ledger.cuts.map(\.at) == [100])
            // 50 bytes from the new pipe (inode 9) go in; then the router is killed, before any checkpoint.
            let handle = try #require(FileHandle(forWritingAtPath: spool))
            handle.seekToEndOfFile()
            handle.write(Data(repeating: 2, count: 50))
            try handle.close()
            withExtendedLifetime(file) {}
        }
        let (_, reopened) = try SpoolFile.open(directory: dir.path, pipe: pipe, source: 9)
        #expect(reopened.cuts.map(\.at) == [100], "the change of source stays where the old pipe's bytes end")
    }
}
