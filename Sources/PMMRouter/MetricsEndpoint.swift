import Glibc
import PMMSystem

/// A minimal HTTP/1.1 endpoint inside the router's loop: every request gets the Prometheus text
/// exposition of the router's counters, then the connection closes. No thread, no event loop of its own.
///
/// Bounded: at most 64 clients, 8 KiB of request each; anything beyond is closed.
final class MetricsEndpoint {
    let listener: Int32
    /// Open connections and what they have sent so far.
    private(set) var clients: [Int32: [UInt8]] = [:]

    init(host: String, port: UInt16) throws(FIFOError) {
        let fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue) | Int32(SOCK_NONBLOCK.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0)
        guard fd >= 0 else { throw FIFOError(.systemCall, path: "\(host):\(port)", "socket failed") }
        var yes: Int32 = 1
        setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &yes, socklen_t(MemoryLayout<Int32>.size))
        var address = sockaddr_in()
        address.sin_family = sa_family_t(AF_INET)
        address.sin_port = port.bigEndian
        guard inet_pton(AF_INET, host, &address.sin_addr) == 1 else {
            close(fd)
            throw FIFOError(.systemCall, path: host, "not an IPv4 address", hint: "use --metrics-listen 127.0.0.1:9464")
        }
        let bound = withUnsafePointer(to: &address) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { bind(fd, $0, socklen_t(MemoryLayout<sockaddr_in>.size)) }
        }
        guard bound == 0, listen(fd, 16) == 0 else {
            let message = String(cString: strerror(errno))
            close(fd)
            throw FIFOError(.systemCall, path: "\(host):\(port)", "cannot listen: \(message)")
        }
        listener = fd
    }

    deinit {
        for fd in clients.keys { close(fd) }
        close(listener)
    }

    /// Accepts every pending connection; returns the new clients' descriptors (to watch for their requests).
    func accept() -> [Int32] {
        var accepted: [Int32] = []
        while true {
            let fd = Glibc.accept(listener, nil, nil)
            guard fd >= 0 else { return accepted }
            _ = fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) | O_NONBLOCK)
            _ = fcntl(fd, F_SETFD, FD_CLOEXEC)
            if clients.count >= 64 {
                close(fd)
                continue
            }
            clients[fd] = []
            accepted.append(fd)
        }
    }

    /// Reads from a client; once its request headers are complete, answers with `body()` and closes.
    func respond(_ fd: Int32, body: () -> String) {
        var chunk = [UInt8](repeating: 0, count: 4096)
        let n = read(fd, &chunk, chunk.count)
        guard n > 0 else {
            if n == 0 || (errno != EAGAIN && errno != EINTR) { drop(fd) }
            return
        }
        clients[fd, default: []] += chunk[0..<n]
        let request = clients[fd] ?? []
        guard request.count <= 8192 else { return drop(fd) }
        guard let _ = request.firstRange(of: Array("\r\n\r\n".utf8)) else { return }
        let text = Array(body().utf8)
        let head = Array(
            "HTTP/1.1 200 OK\r\nContent-Type: text/plain; version=0.0.4; charset=utf-8\r\nContent-Length: \(text.count)\r\nConnection: close\r\n\r\n".utf8)
        let response = head + text
        // Small enough for the socket buffer in practice; a client that does not read loses the rest.
        _ = response.withUnsafeBytes { write(fd, $0.baseAddress, $0.count) }
        drop(fd)
    }

    private func drop(_ fd: Int32) {
        close(fd)
        clients[fd] = nil
    }
}
