public import PMMCore
import Yams

/// What loading a spec gives: the spec (when the document had the shape of one), where everything was
/// written, and every problem found.
public struct LoadResult: Sendable {
    /// The spec with defaults filled in, or nil when the text is not YAML or not a mapping.
    public var spec: MeshSpec?
    public var sourceMap: SourceMap
    /// Loader problems (syntax, unknown or duplicate keys, wrong types, missing keys), sorted by location.
    public var diagnostics: [Diagnostic]
}

/// Turns YAML text into a `MeshSpec` and a `SourceMap`. Parses strings; never opens files.
///
/// Yams' `Decodable` path ignores unknown keys and loses positions, so the loader walks the composed node
/// tree itself: each value is checked for its type and located by its Yams `Mark`.
public enum SpecLoader {
    /// The largest number of YAML nodes a spec may hold; guards against alias bombs ("billion laughs").
    public static let maximumNodes = 200_000

    /// Loads `yaml`, naming `file` in diagnostics.
    public static func load(yaml: String, file: String) -> LoadResult {
        var reader = NodeReader(file: file)
        let node: Node?
        do {
            node = try Yams.compose(yaml: yaml)
        } catch let error as YamlError {
            reader.report(yamlError: error)
            return reader.result(spec: nil)
        } catch {
            reader.error(.yamlSyntax, "cannot read the document: \(error)", at: .root, location: nil)
            return reader.result(spec: nil)
        }
        guard let node else {
            reader.error(
                .missingKey, "the file is empty", at: .root,
                location: SourceLocation(file: file, line: 1, column: 1),
                notes: ["start from mesh.yaml.example"])
            return reader.result(spec: nil)
        }
        let spec = reader.readMesh(node)
        return reader.result(spec: spec)
    }

    /// Loads and then validates: the one call `pmm validate` needs.
    public static func loadAndValidate(
        yaml: String, file: String, environment: (MeshSpec) -> ValidationEnvironment = { _ in ValidationEnvironment() }
    ) -> LoadResult {
        var result = load(yaml: yaml, file: file)
        if let spec = result.spec {
            result.diagnostics = Diagnostic.sortedByLocation(
                result.diagnostics + spec.validate(sourceMap: result.sourceMap, environment: environment(spec)))
        }
        return result
    }
}
