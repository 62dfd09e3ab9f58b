import ArgumentParser
import Foundation
import Yams
import PMMCore
import PMMReconciler
import PMMRegistry
import PMMSpecYAML
import PMMSystem

/// Text and colour for people; every command's text output goes through here.
struct Renderer {
    var color: Bool

    func paint(_ text: String, _ code: String) -> String {
        color ? "\u{1B}[\(code)m\(text)\u{1B}[0m" : text
    }

    func symbol(_ action: Action) -> String {
        switch action {
        case .create: paint("+", "32")
        case .delete: paint("-", "31")
        case .replace: paint("±", "35")
        case .update: paint("~", "33")
        case .noop: " "
        }
    }

    /// One line per pipe change, with its fields and reason.
    func pipes(_ changes: [PipeChange]) -> [String] {
        let width = changes.map(\.name.count).max() ?? 0
        return changes.map { change in
            var detail: [String] = []
            if change.action == .create, let pipe = change.desired {
                detail.append(
                    "\(pipe.kind.rawValue), writer \(pipe.writerDescription), reader \(pipe.readerDescription), mode \(Planner.octal(pipe.mode))")
            }
            detail += change.fields.map { "\($0.field) \($0.before) → \($0.after)" }
            var line = "  \(symbol(change.action)) \(change.name.padding(toLength: width, withPad: " ", startingAt: 0))"
            if !detail.isEmpty { line += "  " + detail.joined(separator: "; ") }
            if let reason = change.reason { line += paint("  (\(reason))", "2") }
            return line
        }
    }

    func spec(_ changes: [SpecChange]) -> [String] {
        changes.map { change in
            switch change.action {
            case .create: "  \(symbol(.create)) \(change.path): \(change.after ?? "")"
            case .delete: "  \(symbol(.delete)) \(change.path): \(change.before ?? "")"
            default: "  \(symbol(.update)) \(change.path): \(change.before ?? "") → \(change.after ?? "")"
            }
        }
    }

    func conflicts(_ conflicts: [Conflict], root: String) -> String {
        var lines = ["error: \(conflicts.count) path\(conflicts.count == 1 ? "" : "s") in \(root) block the apply; nothing was changed:"]
        for conflict in conflicts {
            lines.append("  \(paint("!", "1;31")) \(Naming.path(root: root, fileName: conflict.name)): \(conflict.problem)")
            lines.append("      fix: \(conflict.fix)")
        }
        return lines.joined(separator: "\n")
    }

    /// `3 to create, 1 to replace`.
    func counts(_ plan: Plan, future: Bool) -> String {
        let words: [(Action, String)] =
            future
            ? [(.create, "to create"), (.replace, "to replace"), (.update, "to update"), (.delete, "to remove")]
            : [(.create, "created"), (.replace, "replaced"), (.update, "updated"), (.delete, "removed")]
        return words.map { "\(plan.count($0.0)) \($0.1)" }.joined(separator: ", ")
    }
}

/// Prints an error the way each command needs, and returns the exit code to use.
func report(_ error: PMMError, exitCode: Int32, color: Bool) -> ExitCode {
    switch error {
    case .invalidSpec(let loaded):
        printDiagnostics(loaded, color: color)
        printError("\(DiagnosticRenderer.summary(loaded.diagnostics)); nothing was changed.")
    case .conflicts(let root, let conflicts):
        printError(Renderer(color: color).conflicts(conflicts, root: root))
    case .system(let error):
        printError("error: \(error)")
    case .registry(let error):
        printError("error: \(error)")
    case .noSuchRevision(let number, let latest):
        printError("error: there is no revision \(number)" + (latest.map { "; revisions run from 1 to \($0) (see pmm history)" } ?? "; nothing has been applied yet"))
    case .baseNotFound(let base):
        printError("error: --base \(base) is neither a file nor a git revision of the spec")
    case .node:
        printError("error: \(error)")
    }
    return ExitCode(exitCode)
}

/// Diagnostics to standard error, with snippets.
func printDiagnostics(_ loaded: LoadedSpec, color: Bool) {
    guard !loaded.diagnostics.isEmpty else { return }
    let renderer = DiagnosticRenderer(sources: [loaded.file.displayPath: loaded.file.text], color: color)
    printError(renderer.render(loaded.diagnostics))
}

/// JSON or YAML for machines, by `-o`: the same document either way.
func printDocument(_ value: some Encodable, as format: StateOutputFormat) throws {
    guard format == .yaml else { return try printJSON(value) }
    // Through JSON, so the keys are exactly those of `-o json`; dates in ISO 8601.
    let encoder = JSONEncoder()
    encoder.dateEncodingStrategy = .iso8601
    let document = try JSONDecoder().decode(DocumentValue.self, from: try encoder.encode(value))
    print(try Yams.serialize(node: document.node, sortKeys: true), terminator: "")
}

/// A JSON document as values, to be written as YAML.
private enum DocumentValue: Decodable {
    case null
    case bool(Bool)
    case int(Int)
    case double(Double)
    case string(String)
    case array([DocumentValue])
    case object([String: DocumentValue])

    init(from decoder: any Decoder) throws {
        let container = try decoder.singleValueContainer()
        if container.decodeNil() {
            self = .null
        } else if let value = try? container.decode(Bool.self) {
            self = .bool(value)
        } else if let value = try? container.decode(Int.self) {
            self = .int(value)
        } else if let value = try? container.decode(Double.self) {
            self = .double(value)
        } else if let value = try? container.decode(String.self) {
            self = .string(value)
        } else if let value = try? container.decode([DocumentValue].self) {
            self = .array(value)
        } else {
            self = .object(try container.decode([String: DocumentValue].self))
        }
    }

    var node: Yams.Node {
        switch self {
        case .null: return Node("null", Tag(.null))
        case .bool(let value): return Node(value ? "true" : "false", Tag(.bool))
        case .int(let value): return Node(String(value), Tag(.int))
        case .double(let value): return Node(String(value), Tag(.float))
        case .string(let value): return Node(value, Tag(.str), .doubleQuoted)
        case .array(let values): return Node(values.map(\.node))
        case .object(let values): return Node(values.keys.sorted().map { (Node($0), values[$0]!.node) })
        }
    }
}

/// JSON for machines: sorted keys, one document.
func printJSON(_ value: some Encodable) throws {
    let encoder = JSONEncoder()
    encoder.outputFormatting = [.prettyPrinted, .sortedKeys, .withoutEscapingSlashes]
    print(String(decoding: try encoder.encode(value), as: UTF8.self))
}
