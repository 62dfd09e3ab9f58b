import Foundation
import Glibc
import PMMCore
import PMMReconciler
import PMMSystem
import Testing

/// The pipes' owners and modes, proven with real uids: a process runs as another user through setpriv.
@Suite(.enabled(if: isRoot, "needs root to drop privileges with setpriv"))
struct PermissionTests {
    func applied() throws -> TemporaryDirectory {
        let dir = TemporaryDirectory()
        dir.writeSpec()
        _ = try Reconciler(state: dir.state).apply(try dir.load(), prune: false, dryRun: false)
        chmod(dir.path, 0o755)  // mkdtemp makes 0700; let other uids reach the root
        return dir
    }

    /// Holds a pipe open read-write so that non-blocking opens of either end succeed (no ENXIO).
    func holdOpen(_ path: String) -> Int32 {
        open(path, O_RDWR | O_NONBLOCK)
    }

    @Test func ingress_onlyTheProducerMayWrite() throws {
        let dir = try applied()
        let pipe = dir.root + "/api.metrics.s0.in"
        let fd = holdOpen(pipe)
        defer { close(fd) }
        #expect(try openAs(uid: 1001, gid: 1001, path: pipe, mode: "w") == "ok")
        #expect(try openAs(uid: 1001, gid: 1001, path: pipe, mode: "r") == "EACCES", "the producer may not read")
        #expect(try openAs(uid: 1002, gid: 1002, path: pipe, mode: "w") == "EACCES", "another service may not write")
        #expect(try openAs(uid: 65534, gid: 65534, path: pipe, mode: "r") == "EACCES")
        #expect(try openAs(uid: 65534, gid: 65534, path: pipe, mode: "rw") == "EACCES")
    }

    @Test func egress_onlyTheConsumerMayRead() throws {
        let dir = try applied()
        let pipe = dir.root + "/collector-0.metrics.out"
        let fd = holdOpen(pipe)
        defer { close(fd) }
        #expect(try openAs(uid: 1002, gid: 1002, path: pipe, mode: "r") == "ok")
        #expect(try openAs(uid: 1002, gid: 1002, path: pipe, mode: "w") == "EACCES", "the consumer may not write")
        #expect(try openAs(uid: 1001, gid: 1001, path: pipe, mode: "r") == "EACCES", "the producer may not read")
        #expect(try openAs(uid: 65534, gid: 65534, path: pipe, mode: "r") == "EACCES")
    }

    @Test func routerGroup_mayReadIngressAndWriteEgress() throws {
        let dir = TemporaryDirectory()
        dir.write(meshYAML(root: dir.root).replacingOccurrences(of: "name: test\n", with: "name: test\nrouterGroup: 2000\n"))
        _ = try Reconciler(state: dir.state).apply(try dir.load(), prune: false, dryRun: false)
        chmod(dir.path, 0o755)
        let ingress = dir.root + "/api.metrics.s0.in"
        let egress = dir.root + "/collector-0.metrics.out"
        let fds = [holdOpen(ingress), holdOpen(egress)]
        defer { fds.forEach { close($0) } }
        #expect(try openAs(uid: 3000, gid: 2000, path: ingress, mode: "r") == "ok")
        #expect(try openAs(uid: 3000, gid: 2000, path: egress, mode: "w") == "ok")
        #expect(try openAs(uid: 3000, gid: 2000, path: ingress, mode: "w") == "EACCES")
    }

    @Test func writerChange_revokesADescriptorOpenedBefore() throws {
        let dir = try applied()
        let path = dir.root + "/api.metrics.s0.in"
        // The router's end, and a writer opened while uid 1001 owned the pipe.
        let oldReader = open(path, O_RDONLY | O_NONBLOCK)
        let oldWriter = open(path, O_WRONLY | O_NONBLOCK)
        #expect(oldReader >= 0 && oldWriter >= 0)
        defer { close(oldReader); close(oldWriter) }

        dir.writeSpec(apiUID: 1005)
        let report = try Reconciler(state: dir.state).apply(try dir.load(), prune: false, dryRun: false)
        #expect(report.plan.count(.replace) == 2)

        // The router opens the new pipe; what the old descriptor writes never reaches it.
        let newReader = open(path, O_RDONLY | O_NONBLOCK)
        try #require(newReader >= 0, "open the new pipe: \(String(cString: strerror(errno)))")
        defer { close(newReader) }
        let message = Array("stale".utf8)
        #expect(write(oldWriter, message, message.count) == message.count)
        var buffer = [UInt8](repeating: 0, count: 64)
        let n = read(newReader, &buffer, buffer.count)
        // End of file: the new pipe has no writer at all; the revoked descriptor writes into the old inode.
        #expect(n == 0, "the new pipe received \(n) bytes from a revoked writer (or the read failed)")
        #expect(try openAs(uid: 1001, gid: 1001, path: path, mode: "w") == "EACCES")
        let holder = holdOpen(path)
        defer { close(holder) }
        #expect(try openAs(uid: 1005, gid: 1005, path: path, mode: "w") == "ok")
    }
}
