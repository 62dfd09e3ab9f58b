import Glibc
import PMMWire

/// Errors of the client library, each saying what to do.
public enum PipeMeshError: Error, CustomStringConvertible, Sendable, Equatable {
    /// Nothing listens on the control socket.
    case serverNotRunning(socket: String, reason: String)
    /// The server answered with a refusal.
    case refused(String)
    /// The connection broke or the server's answer made no sense.
    case protocolError(String)
    /// A pipe could not be opened or written.
    case pipe(path: String, reason: String)
    /// The producer was closed.
    case closed
    /// The data type is not one the registration produces or consumes.
    case notRegistered(dataType: String)
    /// `Producer.finish` ran out of time with bytes still in a pipe no router reads.
    case notTaken(path: String, bytes: Int)

    public var description: String {
        switch self {
        case .serverNotRunning(let socket, let reason):
            "cannot reach the control socket \(socket) (\(reason)); is `pmm serve` running for this state directory?"
        case .refused(let reason): "refused: \(reason)"
        case .protocolError(let reason): "control protocol: \(reason)"
        case .pipe(let path, let reason): "\(path): \(reason)"
        case .closed: "the producer is closed"
        case .notRegistered(let dataType): "this registration neither produces nor consumes '\(dataType)'"
        case .notTaken(let path, let bytes):
            "\(path): \(bytes) bytes sent were not taken in time and no router reads the pipe (is `pmm router` running?); they are lost unless another writer still holds it"
        }
    }
}

/// A blocking Unix stream socket carrying length-delimited protobuf messages. Not thread-safe.
final class UnixSocket {
    let fd: Int32
    let path: String
    private var inbound = MessageBuffer(maximumSize: 1 << 20)

    init(connectingTo path: String, timeout: Double = 10) throws(PipeMeshError) {
        self.path = path
        let fd = socket(AF_UNIX, Int32(SOCK_STREAM.rawValue), 0)
        guard fd >= 0 else { throw .serverNotRunning(socket: path, reason: "socket failed") }
        _ = fcntl(fd, F_SETFD, FD_CLOEXEC)
        var address = sockaddr_un()
        address.sun_family = sa_family_t(AF_UNIX)
        let bytes = Array(path.utf8)
        guard bytes.count < MemoryLayout.size(ofValue: address.sun_path) else {
            close(fd)
            throw .serverNotRunning(socket: path, reason: "the path is too long for a Unix socket")
        }
        withUnsafeMutableBytes(of: &address.sun_path) { raw in
            raw.copyBytes(from: bytes)
            raw[bytes.count] = 0
        }
        let connected = withUnsafePointer(to: &address) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { connect(fd, $0, socklen_t(MemoryLayout<sockaddr_un>.size)) }
        }
        guard connected == 0 else {
            let reason = String(cString: strerror(errno))
            close(fd)
            throw .serverNotRunning(socket: path, reason: reason)
        }
        var tv = timeval(tv_sec: Int(timeout), tv_usec: Int((timeout - Double(Int(timeout))) * 1e6))
        setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, socklen_t(MemoryLayout<timeval>.size))
        self.fd = fd
    }

    deinit { close(fd) }

    func send(_ frame: [UInt8]) throws(PipeMeshError) {
        var offset = 0
        while offset < frame.count {
            let n = frame.withUnsafeBytes { Glibc.send(fd, $0.baseAddress! + offset, $0.count - offset, Int32(MSG_NOSIGNAL)) }
            if n < 0 {
                if errno == EINTR { continue }
                throw .protocolError("send failed: \(String(cString: strerror(errno)))")
            }
            offset += n
        }
    }

    /// The next message body from the server.
    func receive() throws(PipeMeshError) -> [UInt8] {
        var chunk = [UInt8](repeating: 0, count: 4096)
        while true {
            do {
                if let body = try inbound.next() { return body }
            } catch {
                throw .protocolError("\(error)")
            }
            let n = recv(fd, &chunk, chunk.count, 0)
            if n > 0 {
                inbound.append(chunk[0..<n])
            } else if n == 0 {
                throw .protocolError("the server closed the connection")
            } else if errno != EINTR {
                throw .protocolError(errno == EAGAIN ? "no answer in time" : "receive failed: \(String(cString: strerror(errno)))")
            }
        }
    }
}
