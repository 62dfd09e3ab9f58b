import ArgumentParser
import Foundation
import Glibc
import PMMCore
import PMMReconciler
import PMMRouter
import PMMSystem
import PMMWire

struct Tail: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Read a consumer instance's egress pipe and print its envelopes (debugging).",
        discussion: """
            Opens <root>/<instance>.<data-type>.out as the consumer would and prints each envelope, as text or \
            as JSON lines (-o json; payloads as UTF-8 when they are, else base64). While it runs, the router \
            counts the instance healthy; stop it and the router sends that instance's traffic elsewhere.
            """ + ExitStatus.help("0 stopped (--count reached, --idle-timeout, or interrupted); 1 the pipe does not exist or cannot be opened"))

    @OptionGroup var state: StateOptions

    @Option(help: "The consumer instance, e.g. collector-0.")
    var instance: String

    @Option(help: "The data type.")
    var dataType: String

    @Option(help: "Stop after this many envelopes (0: run until interrupted).")
    var count: Int = 0

    @Option(help: "Stop after this many seconds without an envelope (0: never).")
    var idleTimeout: Double = 0

    @Option(name: .shortAndLong, help: "Output format: text or json.")
    var output: OutputFormat = .text

    @Option(help: ArgumentHelp("The largest frame accepted, in bytes.", valueName: "bytes"))
    var maxFrame: Int = 1 << 20

    func run() throws {
        let root = try state.appliedSpec().root
        guard let pipeRoot = try? PipeRoot.open(root) else {
            printError("error: \(root) does not exist; run pmm apply first")
            throw ExitCode(1)
        }
        let name = Naming.egress(instance: instance, dataType: dataType)
        let fd: Int32
        switch pipeRoot.openFIFO(name, forWriting: false) {
        case .opened(let value, _): fd = value
        case .missing:
            printError("error: \(Naming.path(root: root, fileName: name)) does not exist (is '\(instance)' a consumer of '\(dataType)'?)")
            throw ExitCode(1)
        case .noReader, .failed:
            printError("error: cannot open \(Naming.path(root: root, fileName: name)) for reading")
            throw ExitCode(1)
        }
        defer { close(fd) }
        var buffer = FrameBuffer(maximumFrameSize: maxFrame)
        var printed = 0
        var lastFrame = monotonicSeconds()
        while count == 0 || printed < count {
            var fds = [pollfd(fd: fd, events: Int16(POLLIN), revents: 0)]
            _ = poll(&fds, 1, 100)
            if idleTimeout > 0 && monotonicSeconds() - lastFrame > idleTimeout { break }
            buffer.prepare(minimum: 65536)
            let n = buffer.write { raw in
                let n = read(fd, raw.baseAddress, raw.count)
                return (max(0, n), n)
            }
            if n == 0 {
                usleep(20_000)  // no writer (the router is down): wait for it to come back
                continue
            }
            if n < 0 { continue }
            do {
                while let frame = try buffer.next() {
                    let envelope = try buffer.envelope(of: frame)
                    print(render(envelope))
                    printed += 1
                    lastFrame = monotonicSeconds()
                    if count > 0 && printed >= count { break }
                }
            } catch {
                printError("error: \(error); skipping what is buffered")
                buffer.reset()
            }
            fflush(nil)
        }
    }

    func render(_ envelope: Envelope) -> String {
        let payload = String(data: envelope.payload, encoding: .utf8)
        if output == .json {
            var object: [String: Any] = [
                "dataType": envelope.dataType, "schemaVersion": envelope.schemaVersion, "source": envelope.source,
                "sequence": envelope.sequence, "sentAtUnixNanos": envelope.sentAtUnixNanos,
                "shardKey": String(data: envelope.shardKey, encoding: .utf8) ?? envelope.shardKey.base64EncodedString(),
                "instance": instance,
            ]
            if let payload { object["payload"] = payload } else { object["payloadBase64"] = envelope.payload.base64EncodedString() }
            if !envelope.headers.isEmpty { object["headers"] = envelope.headers }
            let data = (try? JSONSerialization.data(withJSONObject: object, options: [.sortedKeys])) ?? Data()
            return String(decoding: data, as: UTF8.self)
        }
        return "\(envelope.source)#\(envelope.sequence) \(envelope.dataType) v\(envelope.schemaVersion) key=\(String(data: envelope.shardKey, encoding: .utf8) ?? "<binary>") \(payload.map { "\"\($0)\"" } ?? "<\(envelope.payload.count) bytes>")"
    }
}

func monotonicSeconds() -> Double {
    var ts = timespec()
    clock_gettime(CLOCK_MONOTONIC, &ts)
    return Double(ts.tv_sec) + Double(ts.tv_nsec) / 1e9
}
