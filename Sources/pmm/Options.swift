import ArgumentParser
import Foundation
import Glibc
import PMMCore
import PMMReconciler
import PMMRegistry
import PMMSpecYAML
import PMMSystem

/// Options every command that reads a spec shares.
struct SpecOptions: ParsableArguments {
    @Option(name: [.customShort("f"), .customLong("file")], help: ArgumentHelp("The mesh spec to read; '-' reads standard input.", valueName: "file"))
    var file: String = "mesh.yaml"

    @Option(help: ArgumentHelp("The directory of this mesh's pipes, overriding the spec's 'root' (env: PMM_ROOT).", valueName: "dir"))
    var root: String?

    var rootOverride: String? {
        root ?? ProcessInfo.processInfo.environment["PMM_ROOT"].flatMap { $0.isEmpty ? nil : $0 }
    }
}

/// The state directory option.
struct StateOptions: ParsableArguments {
    /// The spec of the newest applied revision (what the router serves), or a clear error and exit 1.
    func appliedSpec() throws -> MeshSpec {
        do {
            guard let (_, spec) = try Reconciler(state: directory, create: false).currentRevision() else {
                printError("error: nothing has been applied in \(directory.path); run pmm apply -f mesh.yaml first")
                throw ExitCode(1)
            }
            return spec
        } catch let error as PMMError {
            throw report(error, exitCode: 1, color: useColor)
        }
    }

    @Option(
        name: .customLong("state-dir"),
        help: ArgumentHelp("Where pmm keeps its registry and lock (env: PMM_STATE_DIR; default /var/lib/pmm).", valueName: "dir"))
    var stateDir: String?

    var directory: StateDirectory {
        let environment = ProcessInfo.processInfo.environment["PMM_STATE_DIR"].flatMap { $0.isEmpty ? nil : $0 }
        return StateDirectory(path: stateDir ?? environment ?? StateDirectory.defaultPath)
    }
}

/// Output formats of commands that also speak JSON.
enum OutputFormat: String, ExpressibleByArgument, CaseIterable {
    case text, json
}

/// `-o` of the commands that print state, where kubectl also has yaml (`pmm status`, `pmm history`).
enum StateOutputFormat: String, ExpressibleByArgument, CaseIterable {
    case text, json, yaml
}

/// Whether standard output is a terminal that wants colour.
var useColor: Bool {
    isatty(STDOUT_FILENO) == 1 && ProcessInfo.processInfo.environment["NO_COLOR"] == nil
        && ProcessInfo.processInfo.environment["TERM"] != "dumb"
}

/// Writes to standard error.
func printError(_ text: String) {
    FileHandle.standardError.write(Data((text.hasSuffix("\n") ? text : text + "\n").utf8))
}

/// `--node`: which node of a multi-node mesh this host is (DESIGN.md, "Beyond one host").
struct NodeOptions: ParsableArguments {
    @Option(
        name: .customLong("node"),
        help: ArgumentHelp(
            "In a mesh with nodes, the node this host is: only its share of the pipes is made (env: PMM_NODE).", valueName: "name"))
    var node: String?

    /// `--node`, else `PMM_NODE`, else nil.
    var name: String? {
        node ?? ProcessInfo.processInfo.environment["PMM_NODE"].flatMap { $0.isEmpty ? nil : $0 }
    }
}

/// Reads the spec file, or reports why not and exits with `code`.
///
/// - Parameter schemas: `.required` for checks (validate, diff), `.optional` for commands that act (apply,
///   up, serve): without protoc they warn and go on.
func readSpec(_ options: SpecOptions, failure code: Int32, schemas: SchemaCheck = .optional, node: String? = nil) throws -> LoadedSpec {
    do {
        let file = try SpecFile.read(options.file)
        return LoadedSpec.load(file, rootOverride: options.rootOverride, schemas: schemas, node: node)
    } catch {
        printError("error: \(error)")
        throw ExitCode(code)
    }
}
