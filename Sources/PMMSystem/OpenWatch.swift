import Glibc

/// Tells which files of one directory were opened, through inotify (`IN_OPEN`): the router learns that a
/// consumer opened its egress pipe at once, instead of at its next probe.
///
/// Best effort: when inotify is not available (a limit on watches, a file system without it), `init` returns
/// nil and the router keeps probing on its backoff alone. An event queue that overflows loses names, not
/// correctness: the probes still run.
public final class OpenWatch {
    /// Readable when opens were seen.
    public let fd: Int32
    private var buffer = [UInt8](repeating: 0, count: 64 << 10)

    public init?(directory: String) {
        let fd = inotify_init1(Int32(IN_NONBLOCK | IN_CLOEXEC))
        guard fd >= 0 else { return nil }
        guard inotify_add_watch(fd, directory, UInt32(IN_OPEN) | UInt32(IN_ONLYDIR)) >= 0 else {
            close(fd)
            return nil
        }
        self.fd = fd
    }

    deinit { close(fd) }

    /// The names opened since the last call (each at most once per call).
    public func drain() -> Set<String> {
        var names: Set<String> = []
        while true {
            let n = buffer.withUnsafeMutableBytes { read(fd, $0.baseAddress, $0.count) }
            guard n > 0 else { return names }
            buffer.withUnsafeBytes { raw in
                var offset = 0
                let header = MemoryLayout<inotify_event>.size
                while offset + header <= n {
                    let length = Int(raw.loadUnaligned(fromByteOffset: offset + 12, as: UInt32.self))
                    let nameStart = offset + header
                    let name = raw[nameStart..<min(nameStart + length, n)].prefix { $0 != 0 }
                    if !name.isEmpty { names.insert(String(decoding: name, as: UTF8.self)) }
                    offset = nameStart + length
                }
            }
        }
    }
}
