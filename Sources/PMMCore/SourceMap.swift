/// Where each part of a spec document was written, so that checks on the parsed model can point at the text.
///
/// Built by the YAML loader from Yams marks. Pure data: lookups fall back to the nearest ancestor path,
/// so a diagnostic about a missing key points at the mapping that lacks it.
public struct SourceMap: Sendable, Hashable {
    /// The file name diagnostics should print.
    public var file: String
    /// Location and width of each value, by document path.
    public var values: [DocumentPath: Entry]
    /// Location and width of each mapping key, by the path of its value.
    public var keys: [DocumentPath: Entry]
    /// Paths whose value was rejected by the loader: semantic checks stay quiet about them and below them,
    /// so one mistake is reported once.
    public var rejected: Set<DocumentPath>

    public struct Entry: Sendable, Hashable {
        public var location: SourceLocation
        public var span: Int
        public init(location: SourceLocation, span: Int) {
            self.location = location
            self.span = span
        }
    }

    public init(file: String, values: [DocumentPath: Entry] = [:], keys: [DocumentPath: Entry] = [:], rejected: Set<DocumentPath> = []) {
        self.file = file
        self.values = values
        self.keys = keys
        self.rejected = rejected
    }

    /// The entry for `path`, or for its nearest ancestor that has one.
    public func entry(for path: DocumentPath) -> Entry? {
        var current: DocumentPath? = path
        while let candidate = current {
            if let entry = values[candidate] { return entry }
            current = candidate.parent
        }
        return nil
    }

    /// The entry of the key that introduces `path` (for "unknown key" and "duplicate key"), else its value's.
    public func keyEntry(for path: DocumentPath) -> Entry? {
        keys[path] ?? entry(for: path)
    }

    /// Whether the loader already reported a problem at or above `path`.
    public func isRejected(_ path: DocumentPath) -> Bool {
        var current: DocumentPath? = path
        while let candidate = current {
            if rejected.contains(candidate) { return true }
            current = candidate.parent
        }
        return false
    }

    /// Makes a diagnostic located at `path`.
    public func diagnostic(
        _ severity: Diagnostic.Severity,
        _ code: DiagnosticCode,
        _ summary: String,
        at path: DocumentPath,
        notes: [String] = [],
        atKey: Bool = false
    ) -> Diagnostic {
        let entry = atKey ? keyEntry(for: path) : entry(for: path)
        return Diagnostic(
            severity, code, summary, path: path, location: entry?.location, span: entry?.span ?? 1, notes: notes)
    }
}
