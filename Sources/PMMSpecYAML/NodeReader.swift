import PMMCore
import Yams

/// Walks a composed Yams node tree, reading typed values and recording locations and problems.
struct NodeReader {
    let file: String
    var map: SourceMap
    var diagnostics: [Diagnostic] = []
    var nodesVisited = 0
    var exhausted = false

    init(file: String) {
        self.file = file
        self.map = SourceMap(file: file)
    }

    func result(spec: MeshSpec?) -> LoadResult {
        LoadResult(spec: spec, sourceMap: map, diagnostics: Diagnostic.sortedByLocation(diagnostics))
    }

    // MARK: Reporting

    func location(_ node: Node) -> SourceLocation? {
        node.mark.map { SourceLocation(file: file, line: $0.line, column: $0.column) }
    }

    mutating func error(
        _ code: DiagnosticCode, _ summary: String, at path: DocumentPath, location: SourceLocation?, span: Int = 1,
        notes: [String] = []
    ) {
        diagnostics.append(
            Diagnostic(.error, code, summary, path: path, location: location, span: span, notes: notes))
    }

    mutating func reject(_ code: DiagnosticCode, _ summary: String, node: Node, path: DocumentPath, notes: [String] = []) {
        map.rejected.insert(path)
        error(code, summary, at: path, location: location(node), span: span(of: node), notes: notes)
    }

    mutating func report(yamlError: YamlError) {
        switch yamlError {
        case .duplicatedKeysInMapping(let duplicates, let context):
            let names = duplicates.map { "'\($0)'" }.joined(separator: ", ")
            error(
                .duplicateKey, "duplicate key \(names) in one mapping", at: .root,
                location: SourceLocation(file: file, line: context.mark.line, column: context.mark.column),
                notes: ["YAML parsers often keep the last one silently; pmm refuses both. Keep one."])
        case .scanner(let context, let problem, let mark, _), .parser(let context, let problem, let mark, _),
            .composer(let context, let problem, let mark, _):
            var notes: [String] = []
            if let context { notes.append("\(context.text) at line \(context.mark.line), column \(context.mark.column)") }
            error(
                .yamlSyntax, "invalid YAML: \(problem)", at: .root,
                location: SourceLocation(file: file, line: mark.line, column: mark.column), notes: notes)
        case .reader(let problem, _, _, _):
            error(.yamlSyntax, "invalid YAML: \(problem)", at: .root, location: SourceLocation(file: file, line: 1, column: 1))
        default:
            error(.yamlSyntax, "invalid YAML: \(yamlError)", at: .root, location: nil)
        }
    }

    func span(of node: Node) -> Int {
        if case .scalar(let scalar) = node {
            let firstLine = scalar.string.split(separator: "\n", omittingEmptySubsequences: false).first ?? ""
            let quotes = scalar.style == .singleQuoted || scalar.style == .doubleQuoted ? 2 : 0
            return max(1, firstLine.unicodeScalars.count + quotes)
        }
        return 1
    }

    static func describe(_ node: Node) -> String {
        switch node {
        case .scalar(let scalar):
            if isNull(scalar) { return "null" }
            if scalar.style == .plain, Int(scalar.string) != nil { return "integer \(scalar.string)" }
            return "string \"\(scalar.string)\""
        case .mapping: return "a mapping"
        case .sequence: return "a list"
        case .alias: return "an alias"
        }
    }

    static func isNull(_ scalar: Node.Scalar) -> Bool {
        scalar.style == .plain && ["", "~", "null", "Null", "NULL"].contains(scalar.string)
    }

    // MARK: Shapes

    /// Records `node` and counts it against the node budget. False once the budget is spent.
    mutating func visit(_ node: Node, _ path: DocumentPath) -> Bool {
        nodesVisited += 1
        if nodesVisited > SpecLoader.maximumNodes {
            if !exhausted {
                exhausted = true
                error(
                    .invalidValue, "the document has more than \(SpecLoader.maximumNodes) nodes", at: path,
                    location: location(node), notes: ["aliases that expand exponentially are refused"])
            }
            return false
        }
        if let location = location(node) {
            map.values[path] = SourceMap.Entry(location: location, span: span(of: node))
        }
        return true
    }

    /// Reads a mapping with the given allowed and required keys. Unknown keys are reported with a suggestion.
    /// An absent or null value reads as an empty mapping when `optional`.
    mutating func mapping(
        _ node: Node, _ path: DocumentPath, allowed: [String]?, required: [String] = [], what: String
    ) -> [(key: String, keyNode: Node, value: Node)]? {
        guard visit(node, path) else { return nil }
        guard case .mapping(let mapping) = node else {
            if case .scalar(let scalar) = node, Self.isNull(scalar), required.isEmpty { return [] }
            reject(.wrongType, "expected \(what) (a mapping), found \(Self.describe(node))", node: node, path: path)
            return nil
        }
        var pairs: [(key: String, keyNode: Node, value: Node)] = []
        for (keyNode, value) in mapping {
            guard case .scalar(let keyScalar) = keyNode else {
                reject(.wrongType, "keys must be plain names, found \(Self.describe(keyNode))", node: keyNode, path: path)
                continue
            }
            let key = keyScalar.string
            let childPath = path.appending(key)
            if let location = location(keyNode) {
                map.keys[childPath] = SourceMap.Entry(location: location, span: span(of: keyNode))
            }
            if let allowed, !allowed.contains(key) {
                var notes: [String] = []
                if let guess = Suggestion.closest(to: key, in: allowed) {
                    notes.append("did you mean '\(guess)'?")
                } else {
                    notes.append("allowed keys here are \(Suggestion.quotedList(allowed))")
                }
                map.rejected.insert(childPath)
                error(
                    .unknownKey, "unknown key '\(key)'", at: childPath, location: location(keyNode),
                    span: span(of: keyNode), notes: notes)
                continue
            }
            pairs.append((key, keyNode, value))
        }
        for key in required where !pairs.contains(where: { $0.key == key }) {
            map.rejected.insert(path.appending(key))
            error(
                .missingKey, "required key '\(key)' is missing", at: path.appending(key),
                location: location(node))
        }
        return pairs
    }

    mutating func sequence(_ node: Node, _ path: DocumentPath, what: String) -> [Node]? {
        guard visit(node, path) else { return nil }
        switch node {
        case .sequence(let sequence): return Array(sequence)
        case .scalar(let scalar) where Self.isNull(scalar): return []
        default:
            reject(.wrongType, "expected a list of \(what), found \(Self.describe(node))", node: node, path: path)
            return nil
        }
    }

    mutating func string(_ node: Node, _ path: DocumentPath) -> String? {
        guard visit(node, path) else { return nil }
        guard case .scalar(let scalar) = node, !Self.isNull(scalar) else {
            reject(.wrongType, "expected a string, found \(Self.describe(node))", node: node, path: path)
            return nil
        }
        return scalar.string
    }

    mutating func integer(_ node: Node, _ path: DocumentPath, what: String = "an integer") -> Int? {
        guard visit(node, path) else { return nil }
        guard case .scalar(let scalar) = node, scalar.style == .plain, let value = Int(scalar.string) else {
            reject(.wrongType, "expected \(what), found \(Self.describe(node))", node: node, path: path)
            return nil
        }
        return value
    }

    /// A uid or gid: an integer in 0...4294967294.
    mutating func id(_ node: Node, _ path: DocumentPath) -> UInt32? {
        guard let value = integer(node, path, what: "an integer (a numeric uid or gid)") else { return nil }
        guard Limits.id.contains(value) else {
            reject(
                .invalidValue,
                "must be between \(Limits.id.lowerBound) and \(Limits.id.upperBound), found \(value)",
                node: node, path: path)
            return nil
        }
        return UInt32(value)
    }

    mutating func choice<E: RawRepresentable & CaseIterable>(_ node: Node, _ path: DocumentPath, _: E.Type) -> E?
    where E.RawValue == String {
        guard let text = string(node, path) else { return nil }
        if let value = E(rawValue: text) { return value }
        let allowed = E.allCases.map(\.rawValue)
        var notes = ["allowed values are \(Suggestion.quotedList(allowed))"]
        if let guess = Suggestion.closest(to: text, in: allowed) { notes.append("did you mean '\(guess)'?") }
        reject(.invalidValue, "'\(text)' is not one of the allowed values", node: node, path: path, notes: notes)
        return nil
    }

    /// A byte size: an integer, or a string with a unit (`64KiB`, `1MiB`, `1GiB`, `4096B`).
    mutating func byteSize(_ node: Node, _ path: DocumentPath) -> Int? {
        guard visit(node, path) else { return nil }
        if case .scalar(let scalar) = node, !Self.isNull(scalar) {
            let text = scalar.string
            if scalar.style == .plain, let value = Int(text) { return value }
            let units: [(String, Int)] = [("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10), ("B", 1)]
            for (suffix, factor) in units where text.hasSuffix(suffix) {
                if let number = Int(text.dropLast(suffix.count)), number >= 0, number <= (1 << 40) / factor {
                    return number * factor
                }
            }
        }
        reject(
            .wrongType, "expected a size such as 65536, 64KiB or 1MiB, found \(Self.describe(node))",
            node: node, path: path)
        return nil
    }
}
