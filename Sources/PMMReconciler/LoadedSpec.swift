public import PMMCore
import PMMSpecYAML
public import PMMSystem

/// A spec file read, loaded and validated: what every command starts from.
public struct LoadedSpec: Sendable {
    public var file: SpecFile
    /// The spec, or nil when the text could not be read as one.
    public var spec: MeshSpec?
    public var sourceMap: SourceMap
    /// Loader and validation diagnostics, sorted by location.
    public var diagnostics: [Diagnostic]

    /// The spec when it has no errors (warnings allowed).
    public var validSpec: MeshSpec? {
        diagnostics.hasErrors ? nil : spec
    }

    /// Loads and validates `file`.
    ///
    /// - Parameters:
    ///   - rootOverride: `--root` or `PMM_ROOT`, replacing the spec's `root`.
    ///   - checkSchemaFiles: whether a missing `.proto` file is an error (not for a revision already applied,
    ///     whose files may have moved since).
    public static func load(_ file: SpecFile, rootOverride: String? = nil, checkSchemaFiles: Bool = true) -> LoadedSpec {
        var result = SpecLoader.load(yaml: file.text, file: file.displayPath)
        var extra: [Diagnostic] = []
        if let rootOverride, var spec = result.spec {
            spec.root = rootOverride
            result.spec = spec
            result.sourceMap.rejected.insert(DocumentPath.root.appending("root"))
            if let problem = Naming.rootProblem(rootOverride) {
                extra.append(
                    Diagnostic(
                        .error, .unsafeRoot, "root '\(rootOverride)' (from --root or PMM_ROOT) \(problem)",
                        path: DocumentPath.root.appending("root")))
            }
        }
        if let spec = result.spec {
            let schemaPaths = spec.dataTypes.flatMap { $0.versions.map(\.schema) }.filter { !$0.isEmpty }
            let environment = ValidationEnvironment(
                existingSchemaFiles: checkSchemaFiles ? file.existingFiles(among: schemaPaths) : nil)
            extra += spec.validate(sourceMap: result.sourceMap, environment: environment)
        }
        return LoadedSpec(
            file: file, spec: result.spec, sourceMap: result.sourceMap,
            diagnostics: Diagnostic.sortedByLocation(result.diagnostics + extra))
    }
}
