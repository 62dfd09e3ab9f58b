public import Foundation
public import PMMRouter

/// One link between this node's router and a peer, as `pmm top` shows it.
///
/// Read from the `links` of `router.json` (`RouterStatus.Link`: `peer`, `up`, `since`, `rate`, `unacknowledged`,
/// `peerRevision`); every key but `peer` is optional here, so a status written by an older or newer router still
/// decodes.
public struct TopLink: Codable, Hashable, Sendable {
    public var peer: String
    /// `up` or `down`.
    public var state: String?
    /// Since when `state` holds.
    public var since: Date?
    /// Frames per second sent to the peer.
    public var rate: Double?
    /// Frames sent and not yet acknowledged.
    public var unacknowledged: Int?
    /// The revision the peer serves (skew during a rollout is shown, not hidden); nil while not known.
    public var revision: Int?

    public init(peer: String, state: String? = nil, since: Date? = nil, rate: Double? = nil, unacknowledged: Int? = nil, revision: Int? = nil) {
        self.peer = peer
        self.state = state
        self.since = since
        self.rate = rate
        self.unacknowledged = unacknowledged
        self.revision = revision
    }

    /// The `links` of a `router.json`, or nil when it has none (one host).
    public static func decode(statusJSON data: Data) -> [TopLink]? {
        struct Link: Decodable {
            var peer: String
            var up: Bool?
            var since: Date?
            var rate: Double?
            var unacknowledged: Int?
            var peerRevision: UInt64?
        }
        struct Holder: Decodable { var links: [Link]? }
        let decoder = JSONDecoder()
        decoder.dateDecodingStrategy = .iso8601
        guard let links = (try? decoder.decode(Holder.self, from: data))?.links, !links.isEmpty else { return nil }
        return links.map { link in
            TopLink(
                peer: link.peer, state: link.up.map { $0 ? "up" : "down" }, since: link.since, rate: link.rate,
                unacknowledged: link.unacknowledged, revision: link.peerRevision.flatMap { $0 == 0 ? nil : Int(clamping: $0) })
        }
    }
}

/// `pmm top`'s frame: the router's status as lines of text, like `kubectl top` or `nats-top`.
///
/// Pure: the status, the time and whether to colour come in; lines come out. The command reads `router.json`,
/// clears the screen and prints the lines every second.
public enum TopView {
    /// What one frame shows.
    public struct Input: Sendable {
        /// The router's status, or nil when there is none (no router has run in this state directory).
        public var status: RouterStatus?
        /// Whether the router that wrote `status` still runs (its pid holds the router lock).
        public var routerRunning: Bool
        /// The mesh's name, from the applied revision, when known.
        public var mesh: String?
        /// The newest applied revision, to show a router that serves an older one.
        public var appliedRevision: Int?
        /// Links to other nodes' routers; nil hides the section.
        public var links: [TopLink]?
        public var stateDirectory: String
        public var now: Date

        public init(
            status: RouterStatus?, routerRunning: Bool, mesh: String? = nil, appliedRevision: Int? = nil, links: [TopLink]? = nil,
            stateDirectory: String, now: Date
        ) {
            self.status = status
            self.routerRunning = routerRunning
            self.mesh = mesh
            self.appliedRevision = appliedRevision
            self.links = links
            self.stateDirectory = stateDirectory
            self.now = now
        }
    }

    /// A status older than this many seconds is flagged: the router writes it every second.
    public static let staleAfter: TimeInterval = 5

    /// The frame's lines, without a trailing newline. `color` adds ANSI colour (the caller decides: a
    /// terminal, and no `NO_COLOR`).
    public static func render(_ input: Input, color: Bool) -> [String] {
        let paint = { (text: String, code: String) in color ? "\u{1B}[\(code)m\(text)\u{1B}[0m" : text }
        var lines: [String] = []
        let clock = Self.clock(input.now)
        guard let status = input.status else {
            lines.append(paint("pmm top", "1") + (input.mesh.map { " · mesh \($0)" } ?? "") + "  " + clock)
            lines.append("")
            lines.append(paint("No router status in \(input.stateDirectory)", "31") + " (start one: pmm router, or pmm up -f mesh.yaml)")
            return lines
        }
        var head = paint("pmm top", "1") + (input.mesh.map { " · mesh \($0)" } ?? "") + " · revision \(status.revision)"
        if let applied = input.appliedRevision, applied > status.revision { head += paint(" (applied: \(applied))", "33") }
        if input.routerRunning {
            head += " · router pid \(status.pid), up \(duration(input.now.timeIntervalSince(status.startedAt)))"
        } else {
            head += " · " + paint("router not running", "31") + " (pid \(status.pid) gone)"
        }
        lines.append(head + "  " + clock)
        let age = input.now.timeIntervalSince(status.updatedAt)
        if age > staleAfter {
            lines.append(paint("status is \(duration(age)) old", "33") + " (written \(Self.clock(status.updatedAt)))")
        }
        if status.stopping { lines.append(paint("router stopping: draining", "33")) }
        let inRate = status.ingress.reduce(0) { $0 + $1.rate }
        let outRate = status.egress.reduce(0) { $0 + $1.rate }
        let deadInRouter = status.deadLetters.values.reduce(0, +)
        var totals = [
            "in \(number(inRate))/s", "out \(number(outRate))/s",
            "queued \(status.egress.reduce(0) { $0 + $1.queued })", "waiting \(status.waiting.values.reduce(0, +))",
        ]
        if let held = status.heldBytes { totals.append("held \(bytes(Int64(held)))") }
        if let spooled = status.spooledBytes { totals.append("spooled \(bytes(spooled))") }
        totals.append("dead letters \(deadInRouter)")
        totals.append("dropped \(status.dropped)")
        totals.append("reloads \(status.reloads)" + (status.failedReloads > 0 ? paint(" (\(status.failedReloads) failed)", "31") : ""))
        lines.append(totals.joined(separator: "  "))
        if let error = status.lastReloadError { lines.append(paint("last reload failed: \(error)", "31")) }

        // Instances: one row per egress pipe.
        lines.append("")
        let instanceRows = status.egress.sorted { ($0.instance, $0.dataType) < ($1.instance, $1.dataType) }.map { egress -> [Cell] in
            let health: Cell =
                egress.healthy
                ? Cell("healthy", code: "32") : egress.stalled ? Cell("stalled", code: "33") : Cell("down", code: "31")
            return [
                Cell(egress.instance), Cell(egress.dataType), health, Cell(duration(input.now.timeIntervalSince(egress.since))),
                Cell(number(egress.rate), right: true), Cell(String(egress.frames), right: true), Cell(String(egress.queued), right: true),
                Cell(String(egress.inPipe), right: true), Cell(String(egress.stalls), right: true),
                Cell(String(egress.failures), right: true), Cell(String(egress.rerouted), right: true),
                Cell(String(egress.deadLettered), right: true), Cell(String(egress.dropped), right: true),
            ]
        }
        lines += table(
            header: ["INSTANCE", "TYPE", "HEALTH", "SINCE", "OUT/S", "FRAMES", "QUEUED", "IN-PIPE", "STALLS", "FAILS", "REROUTED", "DEAD", "DROPPED"],
            rows: instanceRows, empty: "no consumer instances", paint: paint)

        // Producers: ingress pipes summed per producer and type.
        lines.append("")
        struct Group { var pipes = 0, open = 0, rate = 0.0, frames: UInt64 = 0, resets: UInt64 = 0, misaddressed: UInt64 = 0
            var replayed: UInt64 = 0, spooled: Int64 = 0 }
        var groups: [String: Group] = [:]
        for ingress in status.ingress {
            var group = groups[ingress.producer + "\u{0}" + ingress.dataType] ?? Group()
            group.pipes += 1
            group.open += ingress.open ? 1 : 0
            group.rate += ingress.rate
            group.frames += ingress.frames
            group.resets += ingress.resets
            group.misaddressed += ingress.misaddressed
            group.replayed += ingress.replayed
            group.spooled += ingress.spooledBytes
            groups[ingress.producer + "\u{0}" + ingress.dataType] = group
        }
        let producerRows = groups.keys.sorted().map { key -> [Cell] in
            let group = groups[key]!
            let parts = key.split(separator: "\u{0}", omittingEmptySubsequences: false).map(String.init)
            return [
                Cell(parts[0]), Cell(parts[1]),
                Cell("\(group.open)/\(group.pipes)", code: group.open < group.pipes ? "33" : nil, right: true),
                Cell(number(group.rate), right: true), Cell(String(group.frames), right: true),
                Cell(String(group.resets), code: group.resets > 0 ? "33" : nil, right: true),
                Cell(String(group.misaddressed), right: true), Cell(String(group.replayed), right: true),
                Cell(bytes(group.spooled), right: true),
            ]
        }
        lines += table(
            header: ["PRODUCER", "TYPE", "OPEN", "IN/S", "FRAMES", "RESETS", "MISADDRESSED", "REPLAYED", "SPOOLED"], rows: producerRows,
            empty: "no ingress pipes", paint: paint)

        if !status.waiting.isEmpty {
            lines.append("")
            lines.append(
                "Waiting for a healthy instance: " + status.waiting.sorted { $0.key < $1.key }.map { "\($0.key) \($0.value)" }.joined(separator: ", "))
        }
        lines.append("")
        // The router's counters since it started; `pmm deadletters list` reads the letters themselves.
        let dead = status.deadLetters.filter { $0.value > 0 }.sorted { $0.key < $1.key }.map { "\($0.key) \($0.value)" }
        lines.append("Dead letters: " + (dead.isEmpty ? "none" : paint(dead.joined(separator: ", "), "33") + " (pmm deadletters list)"))

        if let links = input.links {
            lines.append("")
            let rows = links.sorted { $0.peer < $1.peer }.map { link -> [Cell] in
                let state = link.state ?? "?"
                return [
                    Cell(link.peer), Cell(state, code: state == "up" ? "32" : "31"),
                    Cell(link.since.map { duration(input.now.timeIntervalSince($0)) } ?? "-"),
                    Cell(link.rate.map { number($0) } ?? "-", right: true), Cell(link.unacknowledged.map(String.init) ?? "-", right: true),
                    Cell(
                        link.revision.map(String.init) ?? "-", code: link.revision.map { $0 != status.revision ? "33" : nil } ?? nil,
                        right: true),
                ]
            }
            lines += table(header: ["LINK", "STATE", "SINCE", "FRAMES/S", "UNACKED", "REVISION"], rows: rows, empty: "no links", paint: paint)
        }
        return lines
    }

    // MARK: - Helpers

    struct Cell {
        var text: String
        var code: String?
        var right: Bool

        init(_ text: String, code: String? = nil, right: Bool = false) {
            self.text = text
            self.code = code
            self.right = right
        }
    }

    /// Columns padded to their widest cell, two spaces apart; colour is added after padding so widths hold.
    static func table(header: [String], rows: [[Cell]], empty: String, paint: (String, String) -> String) -> [String] {
        var widths = header.map(\.count)
        for row in rows { for (index, cell) in row.enumerated() { widths[index] = max(widths[index], cell.text.count) } }
        func line(_ cells: [Cell]) -> String {
            var parts: [String] = []
            for (index, cell) in cells.enumerated() {
                let gap = String(repeating: " ", count: widths[index] - cell.text.count)
                let text = cell.code.map { paint(cell.text, $0) } ?? cell.text
                parts.append(cell.right ? gap + text : (index == cells.count - 1 ? text : text + gap))
            }
            return parts.joined(separator: "  ")
        }
        let headerCells = header.enumerated().map { index, title in
            Cell(title, right: rows.first.map { $0[index].right } ?? false)
        }
        var lines = [paint(line(headerCells), "1")]
        if rows.isEmpty { lines.append("  (\(empty))") }
        lines += rows.map(line)
        return lines
    }

    /// `2h05m`, `3m07s`, `12s`.
    static func duration(_ seconds: TimeInterval) -> String {
        let total = max(0, Int(seconds))
        if total >= 86_400 { return "\(total / 86_400)d\(String(format: "%02d", total % 86_400 / 3600))h" }
        if total >= 3600 { return "\(total / 3600)h\(String(format: "%02d", total % 3600 / 60))m" }
        if total >= 60 { return "\(total / 60)m\(String(format: "%02d", total % 60))s" }
        return "\(total)s"
    }

    /// A rate, rounded: `0`, `950`, `12.3k`, `1.41M`.
    static func number(_ value: Double) -> String {
        switch value {
        case ..<9_999.5: String(Int(value.rounded()))
        case ..<999_950: String(format: "%.1fk", value / 1000)
        default: String(format: "%.2fM", value / 1_000_000)
        }
    }

    static func bytes(_ value: Int64) -> String {
        switch value {
        case ..<1024: "\(value) B"
        case ..<(1 << 20): String(format: "%.1f KiB", Double(value) / 1024)
        case ..<(1 << 30): String(format: "%.1f MiB", Double(value) / 1_048_576)
        default: String(format: "%.2f GiB", Double(value) / 1_073_741_824)
        }
    }

    /// `HH:mm:ss` UTC: deterministic for tests, and what the router's logs use.
    static func clock(_ date: Date) -> String {
        let seconds = Int(date.timeIntervalSince1970.rounded(.down))
        let day = ((seconds % 86_400) + 86_400) % 86_400
        return String(format: "%02d:%02d:%02d UTC", day / 3600, day % 3600 / 60, day % 60)
    }
}
