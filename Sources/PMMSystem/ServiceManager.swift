import Glibc
import SystemPackage

/// Notifications to the service manager that started this process: systemd's `sd_notify(3)` protocol, written
/// here so that pmm needs no libsystemd.
///
/// With `Type=notify`, systemd passes the path of a datagram socket in `$NOTIFY_SOCKET` and waits for a
/// `READY=1` datagram before it considers the unit started (and starts the units ordered after it). A path that
/// begins with `@` names a socket in the abstract namespace: the `@` becomes a NUL byte, and the address is
/// exactly as long as the name (no terminating NUL). Without `$NOTIFY_SOCKET` nothing is sent: pmm was not started
/// by a service manager that asked.
///
/// Thread safety: stateless; each call opens, sends on and closes its own socket.
public enum ServiceManager {
    /// `$NOTIFY_SOCKET`, or nil when it is unset or empty.
    public static var notifySocket: String? {
        guard let value = getenv("NOTIFY_SOCKET") else { return nil }
        let path = String(cString: value)
        return path.isEmpty ? nil : path
    }

    /// Sends `state` (newline-separated `KEY=VALUE` assignments, e.g. `READY=1`) to the service manager.
    ///
    /// - Parameters:
    ///   - state: the assignments, as `sd_notify(3)` takes them.
    ///   - socket: the socket to send to; by default `$NOTIFY_SOCKET`.
    /// - Returns: whether a notification was sent (false: no socket was named).
    /// - Throws: `FIFOError` when the socket is named but the datagram could not be sent.
    ///
    /// The corresponding C calls are `socket(AF_UNIX, SOCK_DGRAM)` and `sendto`.
    @discardableResult
    public static func notify(_ state: String, socket path: String? = notifySocket) throws(FIFOError) -> Bool {
        guard let path else { return false }
        var name = Array(path.utf8)
        let abstract = name.first == UInt8(ascii: "@")
        if abstract { name[0] = 0 }
        var address = sockaddr_un()
        address.sun_family = sa_family_t(AF_UNIX)
        let capacity = MemoryLayout.size(ofValue: address.sun_path)
        // A filesystem path needs room for its NUL; an abstract name is counted exactly.
        guard name.count < capacity || (abstract && name.count == capacity) else {
            throw FIFOError(.systemCall, path: path, "NOTIFY_SOCKET names a socket path longer than \(capacity - 1) bytes")
        }
        withUnsafeMutableBytes(of: &address.sun_path) { raw in raw.copyBytes(from: name) }
        let length = MemoryLayout.offset(of: \sockaddr_un.sun_path)! + name.count + (abstract ? 0 : 1)

        let fd = Glibc.socket(AF_UNIX, Int32(SOCK_DGRAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0)
        guard fd >= 0 else { throw .syscall("socket", path: path, Errno(rawValue: errno)) }
        defer { Glibc.close(fd) }
        let message = Array(state.utf8)
        while true {
            let sent = withUnsafePointer(to: &address) { pointer in
                pointer.withMemoryRebound(to: sockaddr.self, capacity: 1) { socketAddress in
                    Glibc.sendto(fd, message, message.count, Int32(MSG_NOSIGNAL), socketAddress, socklen_t(length))
                }
            }
            if sent == message.count { return true }
            if sent >= 0 {
                throw FIFOError(.systemCall, path: path, "sendto sent \(sent) of \(message.count) bytes of a notification")
            }
            let error = Errno(rawValue: errno)
            if error == .interrupted { continue }
            throw .syscall("sendto", path: path, error, hint: "is the service manager that set NOTIFY_SOCKET still running?")
        }
    }

    /// Tells the service manager that this process has finished starting up (`READY=1`).
    @discardableResult
    public static func notifyReady() throws(FIFOError) -> Bool {
        try notify("READY=1")
    }
}
