import ArgumentParser
import Foundation
import PMMCore
import PMMReconciler
import PMMRegistry
import PMMSpecYAML
import PMMSystem

struct Validate: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Check a mesh spec: syntax, keys, types, names, references, limits, schema files.",
        discussion: """
            Reports every problem at once as file:line:column: error: path: what [code], with the line and a \
            caret under the value. Exit 0 when valid (warnings allowed), 1 when not.
            """ + ExitStatus.help("0 valid (warnings allowed); 1 invalid, or the file cannot be read"))

    @OptionGroup var spec: SpecOptions

    @Option(name: .shortAndLong, help: "Output format: text (diagnostics on standard error) or json (one document on standard output).")
    var output: OutputFormat = .text

    @Flag(name: .shortAndLong, help: "Print nothing: the exit code alone says whether the spec is valid.")
    var quiet = false

    /// `-o json`: what a CI tool or an editor needs, one object.
    struct Report: Encodable {
        struct Item: Encodable {
            var severity: String
            var code: String
            var path: String
            var message: String
            var file: String?
            var line: Int?
            var column: Int?
            var notes: [String]
        }
        var file: String
        var valid: Bool
        var errors: Int
        var warnings: Int
        var diagnostics: [Item]
        var dataTypes: Int?
        var services: Int?
        var pipes: Int?
    }

    func run() throws {
        let loaded = try readSpec(spec, failure: 1, schemas: .required)
        let valid = !loaded.diagnostics.hasErrors
        if quiet {
            if !valid { throw ExitCode(1) }
            return
        }
        if output == .json {
            try printJSON(
                Report(
                    file: loaded.file.displayPath, valid: valid, errors: loaded.diagnostics.filter { $0.severity == .error }.count,
                    warnings: loaded.diagnostics.filter { $0.severity != .error }.count,
                    diagnostics: loaded.diagnostics.map {
                        Report.Item(
                            severity: $0.severity.rawValue, code: $0.code.rawValue, path: "\($0.path)", message: $0.summary,
                            file: $0.location?.file, line: $0.location?.line, column: $0.location?.column, notes: $0.notes)
                    },
                    dataTypes: loaded.spec?.dataTypes.count, services: loaded.spec?.services.count, pipes: loaded.spec?.desiredPipes().count))
            if !valid { throw ExitCode(1) }
            return
        }
        printDiagnostics(loaded, color: useColor)
        if !valid {
            printError("\(DiagnosticRenderer.summary(loaded.diagnostics)).")
            throw ExitCode(1)
        }
        let summary = loaded.spec.map { spec in
            let pipes = spec.desiredPipes()
            return "\(spec.dataTypes.count) data types, \(spec.services.count) services, \(pipes.count) pipes"
        } ?? ""
        print("\(loaded.file.displayPath): valid (\(summary)).")
    }
}
