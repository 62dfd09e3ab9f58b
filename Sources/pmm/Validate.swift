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
            """)

    @OptionGroup var spec: SpecOptions

    func run() throws {
        let loaded = try readSpec(spec, failure: 1, schemas: .required)
        printDiagnostics(loaded, color: useColor)
        if loaded.diagnostics.hasErrors {
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
