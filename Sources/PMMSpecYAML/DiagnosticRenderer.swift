public import PMMCore

/// Renders diagnostics the way compilers do, with the offending line and a caret under the value:
///
/// ```
/// mesh.yaml:14:10: error: services.collector.uid: expected an integer (a numeric uid or gid), found string "collector" [E005]
///    14 |     uid: collector
///       |          ^~~~~~~~~
/// ```
public struct DiagnosticRenderer: Sendable {
    /// The text of each file, by the name diagnostics use, for snippets.
    public var sources: [String: String]
    /// Whether to colour the severity (only on a terminal).
    public var color: Bool

    public init(sources: [String: String] = [:], color: Bool = false) {
        self.sources = sources
        self.color = color
    }

    public func render(_ diagnostic: Diagnostic) -> String {
        var lines: [String] = []
        let severity: String
        switch (diagnostic.severity, color) {
        case (.error, true): severity = "\u{1B}[1;31merror\u{1B}[0m"
        case (.warning, true): severity = "\u{1B}[1;33mwarning\u{1B}[0m"
        case (let plain, false): severity = plain.rawValue
        }
        let place = diagnostic.location.map { "\($0): " } ?? ""
        let path = diagnostic.path == .root ? "" : "\(diagnostic.path): "
        lines.append("\(place)\(severity): \(path)\(diagnostic.summary) [\(diagnostic.code)]")
        if let location = diagnostic.location, let text = sources[location.file],
            let line = Self.line(location.line, of: text)
        {
            let number = String(location.line)
            let gutter = String(repeating: " ", count: number.count)
            let prefix = String(line.unicodeScalars.prefix(location.column - 1).map { $0 == "\t" ? "\t" : " " })
            let underline = "^" + String(repeating: "~", count: max(0, diagnostic.span - 1))
            lines.append("   \(number) | \(line)")
            lines.append("   \(gutter) | \(prefix)\(underline)")
        }
        for note in diagnostic.notes {
            lines.append("  note: \(note)")
        }
        return lines.joined(separator: "\n")
    }

    /// All diagnostics, then a summary line: `2 errors, 1 warning.`
    public func render(_ diagnostics: [Diagnostic]) -> String {
        diagnostics.map(render).joined(separator: "\n") + (diagnostics.isEmpty ? "" : "\n")
    }

    /// `2 errors, 1 warning`.
    public static func summary(_ diagnostics: [Diagnostic]) -> String {
        let errors = diagnostics.count { $0.severity == .error }
        let warnings = diagnostics.count { $0.severity == .warning }
        func plural(_ n: Int, _ word: String) -> String { "\(n) \(word)\(n == 1 ? "" : "s")" }
        return "\(plural(errors, "error")), \(plural(warnings, "warning"))"
    }

    static func line(_ number: Int, of text: String) -> String? {
        var current = 1
        for line in text.split(separator: "\n", omittingEmptySubsequences: false) {
            if current == number { return String(line.hasSuffix("\r") ? line.dropLast() : line) }
            current += 1
        }
        return nil
    }
}
