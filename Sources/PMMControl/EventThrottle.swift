/// Keeps what clients cause from flooding the event log and the server's log: per kind and uid, the first
/// event of each window is written in full; the others in that window are only counted, and one summary
/// event says how many there were and what the last one said.
///
/// Not thread-safe; the control server's loop owns it.
struct EventThrottle {
    struct Key: Hashable {
        var kind: String
        var uid: UInt32
    }

    struct Window {
        var started: UInt64
        var suppressed = 0
        var last = ""
    }

    /// A summary of the events a window held back.
    struct Summary: Equatable {
        var kind: String
        var uid: UInt32
        var count: Int
        var last: String
        var seconds: Double

        var message: String {
            "uid \(uid): \(count) more like it in \(Self.format(seconds)) s, not logged one by one; the last: \(last)"
        }

        static func format(_ seconds: Double) -> String {
            seconds >= 10 ? String(Int(seconds.rounded())) : String(Double((seconds * 10).rounded()) / 10)
        }
    }

    /// The window, in nanoseconds.
    let window: UInt64
    var windows: [Key: Window] = [:]

    init(seconds: Double) {
        window = UInt64(max(0, seconds) * 1e9)
    }

    /// Whether an event of `kind` caused by `uid` is written now. When it is not, it is counted in its window.
    ///
    /// - Returns: `write` true for the first event of a window; `closed`, the summary of the window this event
    ///   ended, if that one held events back (write it first).
    mutating func admit(kind: String, uid: UInt32, message: String, now: UInt64) -> (write: Bool, closed: Summary?) {
        let key = Key(kind: kind, uid: uid)
        if var open = windows[key], now &- open.started < window {
            open.suppressed += 1
            open.last = message
            windows[key] = open
            return (false, nil)
        }
        let closed = windows[key].flatMap { summary(key, $0, now: now) }
        windows[key] = Window(started: now)
        return (true, closed)
    }

    /// Ends the windows that are over, returning the summaries of those that held events back.
    mutating func expired(now: UInt64) -> [Summary] {
        guard !windows.isEmpty else { return [] }
        var summaries: [Summary] = []
        for (key, open) in windows where now &- open.started >= window {
            windows[key] = nil
            if let summary = summary(key, open, now: now) { summaries.append(summary) }
        }
        return summaries.sorted { ($0.kind, $0.uid) < ($1.kind, $1.uid) }
    }

    func summary(_ key: Key, _ open: Window, now: UInt64) -> Summary? {
        guard open.suppressed > 0 else { return nil }
        return Summary(
            kind: key.kind, uid: key.uid, count: open.suppressed, last: open.last, seconds: Double(now &- open.started) / 1e9)
    }
}
