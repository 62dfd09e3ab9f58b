import Dispatch
import Glibc

/// Turns SIGHUP, SIGTERM and SIGINT into bytes on a pipe that the router's poll loop watches.
///
/// The signals' default actions are disabled (`SIG_IGN`) and Dispatch sources observe them; each writes one
/// byte (`H` reload, `T` stop). Keep the object alive as long as signals should be handled. Create it from a
/// nonisolated context (SWIFT-NOTES §5).
public final class SignalPipe: @unchecked Sendable {
    public enum Signal: Sendable, Equatable {
        case reload
        case stop
    }

    public let readFD: Int32
    let writeFD: Int32
    var sources: [any DispatchSourceSignal] = []

    /// - Parameter handlingSignals: install the signal handlers here. A daemon on swift-service-lifecycle passes
    ///   false: its `ServiceGroup` owns SIGTERM and SIGINT (graceful shutdown) and a `UnixSignalsSequence` owns
    ///   SIGHUP, and they `send` into this pipe (one handler per signal). The signals are still set to
    ///   `SIG_IGN` at once, so one that arrives before those handlers are registered does not kill the process.
    public convenience init(handlingSignals: Bool = true) {
        self.init(descriptorsOnly: ())
        signal(SIGPIPE, SIG_IGN)
        guard handlingSignals else {
            for number in [SIGHUP, SIGTERM, SIGINT] { signal(number, SIG_IGN) }
            return
        }
        for (number, byte) in [(SIGHUP, UInt8(ascii: "H")), (SIGTERM, UInt8(ascii: "T")), (SIGINT, UInt8(ascii: "T"))] {
            signal(number, SIG_IGN)
            let source = DispatchSource.makeSignalSource(signal: number, queue: .global())
            let fd = writeFD
            source.setEventHandler {
                var value = byte
                _ = write(fd, &value, 1)
            }
            source.resume()
            sources.append(source)
        }
    }

    /// A pipe for events sent with `send` only: no signal's disposition changes (a router worker's channel
    /// from the thread that owns the process's signals).
    public static func events() -> SignalPipe { SignalPipe(descriptorsOnly: ()) }

    init(descriptorsOnly: Void) {
        var fds: [Int32] = [-1, -1]
        precondition(pipe(&fds) == 0, "pipe failed")
        readFD = fds[0]
        writeFD = fds[1]
        for fd in fds {
            _ = fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) | O_NONBLOCK)
            _ = fcntl(fd, F_SETFD, FD_CLOEXEC)
        }
    }

    deinit {
        for source in sources { source.cancel() }
        close(readFD)
        close(writeFD)
    }

    /// Sends a signal event without a real signal (tests, and `pmm up` stopping its own router).
    public func send(_ signal: Signal) {
        var value = signal == .reload ? UInt8(ascii: "H") : UInt8(ascii: "T")
        _ = write(writeFD, &value, 1)
    }

    /// The events waiting, oldest first.
    public func drain() -> [Signal] {
        var bytes = [UInt8](repeating: 0, count: 64)
        var events: [Signal] = []
        while true {
            let n = read(readFD, &bytes, bytes.count)
            if n <= 0 { break }
            events += bytes[0..<n].map { $0 == UInt8(ascii: "H") ? .reload : .stop }
        }
        return events
    }
}
