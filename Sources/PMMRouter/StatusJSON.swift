import Foundation
import Glibc

/// Writes a `RouterStatus` as JSON by hand: the router rewrites its status every second, and with thousands of
/// pipes Foundation's `JSONEncoder` took about 17 µs per pipe (170 ms a second for 10,000 pipes, most of an
/// idle router's CPU). This writer appends bytes to one buffer, about 1 µs per pipe, and one pipe per line.
///
/// The output is what `JSONEncoder` with `.iso8601` dates would decode to the same value (nil optionals left
/// out); `StatusJSONTests` decodes it with `JSONDecoder` and compares. A field added to `RouterStatus` must be
/// added here too: that test fails until it is.
struct StatusJSON {
    private(set) var bytes: [UInt8] = []

    init(capacity: Int) { bytes.reserveCapacity(capacity) }

    static func encode(_ status: RouterStatus) -> [UInt8] {
        var json = StatusJSON(capacity: 256 * (status.ingress.count + status.egress.count) + 1024)
        json.object { json in
            json.field("pid", Int(status.pid))
            json.field("revision", status.revision)
            json.field("node", status.node)
            json.field("root", status.root)
            json.field("startedAt", status.startedAt)
            json.field("updatedAt", status.updatedAt)
            json.field("stopping", status.stopping)
            json.array("ingress", status.ingress) { json, pipe in
                json.object { json in
                    json.field("name", pipe.name)
                    json.field("producer", pipe.producer)
                    json.field("dataType", pipe.dataType)
                    json.field("open", pipe.open)
                    json.field("frames", pipe.frames)
                    json.field("bytes", pipe.bytes)
                    json.field("resets", pipe.resets)
                    json.field("misaddressed", pipe.misaddressed)
                    json.field("replayed", pipe.replayed)
                    json.field("spooledBytes", pipe.spooledBytes)
                    json.field("rate", pipe.rate)
                    json.field("lastError", pipe.lastError)
                }
            }
            json.array("egress", status.egress) { json, pipe in
                json.object { json in
                    json.field("name", pipe.name)
                    json.field("instance", pipe.instance)
                    json.field("dataType", pipe.dataType)
                    json.field("healthy", pipe.healthy)
                    json.field("stalled", pipe.stalled)
                    json.field("since", pipe.since)
                    json.field("frames", pipe.frames)
                    json.field("bytes", pipe.bytes)
                    json.field("queued", pipe.queued)
                    json.field("inPipe", pipe.inPipe)
                    json.field("dropped", pipe.dropped)
                    json.field("deadLettered", pipe.deadLettered)
                    json.field("failures", pipe.failures)
                    json.field("stalls", pipe.stalls)
                    json.field("rerouted", pipe.rerouted)
                    json.field("rate", pipe.rate)
                    json.field("lastError", pipe.lastError)
                }
            }
            json.dictionary("waiting", status.waiting)
            json.dictionary("deadLetters", status.deadLetters)
            json.field("dropped", status.dropped)
            json.field("reloads", status.reloads)
            json.field("failedReloads", status.failedReloads)
            json.field("lastReloadError", status.lastReloadError)
            json.field("heldBytes", status.heldBytes)
            json.field("spooledBytes", status.spooledBytes)
            json.field("splicedBytes", status.splicedBytes)
            json.field("splicedFromSpoolBytes", status.splicedFromSpoolBytes)
            json.field("workers", status.workers)
            if let links = status.links {
                json.array("links", links) { json, link in
                    json.object { json in
                        json.field("peer", link.peer)
                        json.field("up", link.up)
                        json.field("since", link.since)
                        json.field("peerRevision", link.peerRevision)
                        json.field("sentFrames", link.sentFrames)
                        json.field("acknowledgedFrames", link.acknowledgedFrames)
                        json.field("receivedFrames", link.receivedFrames)
                        json.field("unacknowledged", link.unacknowledged)
                        json.field("rerouted", link.rerouted)
                        json.field("rate", link.rate)
                        json.field("lastError", link.lastError)
                    }
                }
            }
        }
        json.bytes.append(UInt8(ascii: "\n"))
        return json.bytes
    }

    // MARK: Structure

    private var needsComma = false

    mutating func object(_ body: (inout StatusJSON) -> Void) {
        bytes.append(UInt8(ascii: "{"))
        needsComma = false
        body(&self)
        bytes.append(UInt8(ascii: "}"))
        needsComma = true
    }

    mutating func array<T>(_ key: String, _ elements: [T], _ element: (inout StatusJSON, T) -> Void) {
        self.key(key)
        bytes.append(UInt8(ascii: "["))
        for (index, value) in elements.enumerated() {
            if index > 0 { bytes.append(UInt8(ascii: ",")) }
            bytes.append(UInt8(ascii: "\n"))
            element(&self, value)
        }
        bytes.append(UInt8(ascii: "]"))
        needsComma = true
    }

    mutating func dictionary<V: BinaryInteger>(_ key: String, _ values: [String: V]) {
        self.key(key)
        bytes.append(UInt8(ascii: "{"))
        needsComma = false
        for (name, value) in values.sorted(by: { $0.key < $1.key }) { field(name, Int64(value)) }
        bytes.append(UInt8(ascii: "}"))
        needsComma = true
    }

    private mutating func key(_ key: String) {
        if needsComma { bytes.append(UInt8(ascii: ",")) }
        string(key)
        bytes.append(UInt8(ascii: ":"))
        needsComma = true
    }

    // MARK: Values

    mutating func field<I: BinaryInteger>(_ key: String, _ value: I) {
        self.key(key)
        bytes.append(contentsOf: String(value).utf8)
    }

    mutating func field<I: BinaryInteger>(_ key: String, _ value: I?) {
        guard let value else { return }
        field(key, value)
    }

    mutating func field(_ key: String, _ value: Bool) {
        self.key(key)
        bytes.append(contentsOf: value ? "true".utf8 : "false".utf8)
    }

    mutating func field(_ key: String, _ value: Double) {
        self.key(key)
        // Rates are finite; JSON has no NaN or infinity, so anything else is written as 0.
        bytes.append(contentsOf: (value.isFinite ? value.description : "0").utf8)
    }

    mutating func field(_ key: String, _ value: String?) {
        guard let value else { return }
        self.key(key)
        string(value)
    }

    /// `yyyy-MM-ddTHH:mm:ssZ` (what `JSONEncoder`'s `.iso8601` strategy writes and reads).
    mutating func field(_ key: String, _ value: Date) {
        self.key(key)
        var seconds = time_t(value.timeIntervalSince1970.rounded(.down))
        var parts = tm()
        gmtime_r(&seconds, &parts)
        bytes.append(UInt8(ascii: "\""))
        digits(Int(parts.tm_year) + 1900, 4)
        bytes.append(UInt8(ascii: "-"))
        digits(Int(parts.tm_mon) + 1, 2)
        bytes.append(UInt8(ascii: "-"))
        digits(Int(parts.tm_mday), 2)
        bytes.append(UInt8(ascii: "T"))
        digits(Int(parts.tm_hour), 2)
        bytes.append(UInt8(ascii: ":"))
        digits(Int(parts.tm_min), 2)
        bytes.append(UInt8(ascii: ":"))
        digits(Int(parts.tm_sec), 2)
        bytes.append(contentsOf: "Z\"".utf8)
    }

    private mutating func digits(_ value: Int, _ width: Int) {
        var divisor = 1
        for _ in 1..<width { divisor *= 10 }
        var rest = max(0, value)
        while divisor > 0 {
            bytes.append(UInt8(ascii: "0") + UInt8(rest / divisor % 10))
            rest %= divisor
            divisor /= 10
        }
    }

    private mutating func string(_ value: String) {
        bytes.append(UInt8(ascii: "\""))
        for byte in value.utf8 {
            switch byte {
            case UInt8(ascii: "\""): bytes.append(contentsOf: "\\\"".utf8)
            case UInt8(ascii: "\\"): bytes.append(contentsOf: "\\\\".utf8)
            case UInt8(ascii: "\n"): bytes.append(contentsOf: "\\n".utf8)
            case UInt8(ascii: "\r"): bytes.append(contentsOf: "\\r".utf8)
            case UInt8(ascii: "\t"): bytes.append(contentsOf: "\\t".utf8)
            case 0..<0x20:
                let hex = Array("0123456789abcdef".utf8)
                bytes.append(contentsOf: "\\u00".utf8)
                bytes.append(hex[Int(byte >> 4)])
                bytes.append(hex[Int(byte & 0xf)])
            default: bytes.append(byte)
            }
        }
        bytes.append(UInt8(ascii: "\""))
    }
}
