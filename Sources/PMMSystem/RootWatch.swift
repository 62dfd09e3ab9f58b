import Glibc

/// Watches one directory through inotify: which files were opened (`IN_OPEN`), and which names were created,
/// deleted or renamed in or out. The router learns at once that a consumer opened its egress pipe (instead of
/// at its next probe) and that `apply` or a person replaced or removed a pipe (instead of at a sweep that
/// stats every pipe).
///
/// Best effort: when inotify is not available (a limit on watches, a file system without it), `init` returns
/// nil and the router falls back to probing and to sweeping every pipe's inode. An event queue that overflows
/// loses names, which `Changes.overflowed` says: the caller then checks everything once.
public final class RootWatch {
    /// Readable when something happened.
    public let fd: Int32
    private var buffer = [UInt8](repeating: 0, count: 64 << 10)

    /// What happened since the last `drain()`, each name at most once.
    public struct Changes: Sendable, Equatable {
        /// Files opened (by anyone, the router included).
        public var opened: Set<String> = []
        /// Names created, deleted, or renamed in or out of the directory.
        public var changed: Set<String> = []
        /// The kernel's queue overflowed: names were lost.
        public var overflowed = false

        public var isEmpty: Bool { opened.isEmpty && changed.isEmpty && !overflowed }
    }

    public init?(directory: String) {
        let fd = inotify_init1(Int32(IN_NONBLOCK | IN_CLOEXEC))
        guard fd >= 0 else { return nil }
        let mask = UInt32(IN_OPEN | IN_CREATE | IN_DELETE | IN_MOVED_FROM | IN_MOVED_TO) | UInt32(IN_ONLYDIR)
        guard inotify_add_watch(fd, directory, mask) >= 0 else {
            close(fd)
            return nil
        }
        self.fd = fd
    }

    deinit { close(fd) }

    /// Reads every queued event.
    public func drain() -> Changes {
        var changes = Changes()
        while true {
            let n = buffer.withUnsafeMutableBytes { read(fd, $0.baseAddress, $0.count) }
            guard n > 0 else { return changes }
            buffer.withUnsafeBytes { raw in
                var offset = 0
                let header = MemoryLayout<inotify_event>.size
                while offset + header <= n {
                    let mask = raw.loadUnaligned(fromByteOffset: offset + 4, as: UInt32.self)
                    let length = Int(raw.loadUnaligned(fromByteOffset: offset + 12, as: UInt32.self))
                    let nameStart = offset + header
                    let bytes = raw[nameStart..<min(nameStart + length, n)].prefix { $0 != 0 }
                    offset = nameStart + length
                    if mask & UInt32(IN_Q_OVERFLOW) != 0 { changes.overflowed = true }
                    guard !bytes.isEmpty else { continue }
                    let name = String(decoding: bytes, as: UTF8.self)
                    if mask & UInt32(IN_OPEN) != 0 { changes.opened.insert(name) }
                    if mask & UInt32(IN_CREATE | IN_DELETE | IN_MOVED_FROM | IN_MOVED_TO) != 0 { changes.changed.insert(name) }
                }
            }
        }
    }
}
