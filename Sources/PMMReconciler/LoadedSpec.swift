public import PMMCore
import PMMSchema
import PMMSpecYAML
public import PMMSystem

/// How a command treats the schema compatibility check (protoc).
public enum SchemaCheck: Sendable {
    /// Run it; without protoc, an error (validate, diff, schema check: a CI gate never passes a check it did
    /// not run).
    case required
    /// Run it when protoc is there; without it, a warning naming the skipped check (apply, up, serve, demo).
    case optional
    /// Do not run it (a revision already applied).
    case skip
}

/// A spec file read, loaded and validated: what every command starts from.
public struct LoadedSpec: Sendable {
    public var file: SpecFile
    /// The spec, or nil when the text could not be read as one.
    public var spec: MeshSpec?
    public var sourceMap: SourceMap
    /// Loader and validation diagnostics, sorted by location.
    public var diagnostics: [Diagnostic]
    /// The schema check's result per versioned data type; nil when it did not run.
    public var schemaReports: [SchemaReport]?

    /// Writer version -> the reader versions that can read it, per data type (what the router routes by).
    public var readers: [String: [Int: [Int]]]? {
        schemaReports.map { Dictionary(uniqueKeysWithValues: $0.map { ($0.dataType, $0.readers) }) }
    }

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
    ///   - schemas: whether to read the `.proto` files through protoc and check compatibility.
    ///   - node: the node reading the spec (`--node`): its `links.tls` files must exist.
    public static func load(
        _ file: SpecFile, rootOverride: String? = nil, checkSchemaFiles: Bool = true, schemas: SchemaCheck = .skip, node: String? = nil
    ) -> LoadedSpec {
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
            let linkFiles = node.flatMap { node in spec.linkTLS.map { $0.resolved(for: node) } }.map { [$0.ca, $0.cert, $0.key] }
            let environment = ValidationEnvironment(
                existingSchemaFiles: checkSchemaFiles ? file.existingFiles(among: schemaPaths) : nil, node: node,
                existingLinkFiles: linkFiles.map { file.existingFiles(among: $0) })
            extra += spec.validate(sourceMap: result.sourceMap, environment: environment)
        }
        var reports: [SchemaReport]?
        if let spec = result.spec, schemas != .skip, !(result.diagnostics + extra).hasErrors {
            let (found, diagnostics) = checkSchemas(spec, file: file, map: result.sourceMap, required: schemas == .required)
            reports = found
            extra += diagnostics
        }
        return LoadedSpec(
            file: file, spec: result.spec, sourceMap: result.sourceMap,
            diagnostics: Diagnostic.sortedByLocation(result.diagnostics + extra), schemaReports: reports)
    }

    /// Runs the schema check and turns its findings into diagnostics at the versions they concern.
    static func checkSchemas(_ spec: MeshSpec, file: SpecFile, map: SourceMap, required: Bool) -> ([SchemaReport]?, [Diagnostic]) {
        guard spec.dataTypes.contains(where: { !$0.versions.isEmpty }) else { return ([], []) }
        var diagnostics: [Diagnostic] = []
        var reports: [SchemaReport] = []
        for dataType in spec.dataTypes where !dataType.versions.isEmpty {
            var models: [Int: SchemaModel] = [:]
            for (index, version) in dataType.versions.enumerated() {
                let path = DocumentPath.root.appending("dataTypes").appending(dataType.name).appending("versions").appending(index: index)
                do {
                    models[version.version] = try SchemaLoader.load(file: version.schema, message: version.message, relativeTo: file.directory)
                } catch .protocMissing {
                    let summary = "the schema compatibility check did not run: protoc is not installed"
                    return (
                        nil,
                        [
                            Diagnostic(
                                required ? .error : .warning, .schemaCheckUnavailable, summary, path: .root,
                                notes: ["install it with `apt-get install protobuf-compiler`, then run `pmm schema check -f \(file.displayPath)`"])
                        ]
                    )
                } catch {
                    diagnostics.append(map.diagnostic(.error, .unreadableSchema, "\(error)", at: path.appending("schema")))
                }
            }
            guard models.count == dataType.versions.count else { continue }
            let report = SchemaReport.check(dataType, models: models)
            reports.append(report)
            for violation in report.violations {
                guard let index = dataType.versions.firstIndex(where: { $0.version == violation.to }) else { continue }
                let path = DocumentPath.root.appending("dataTypes").appending(dataType.name).appending("versions").appending(index: index)
                let change = violation.change
                diagnostics.append(
                    map.diagnostic(
                        .error, .incompatibleSchema,
                        "'\(dataType.name)' v\(violation.from) → v\(violation.to) is not \(dataType.compatibility.rawValue) compatible: \(change.message): \(change.summary)",
                        at: path.appending("schema"),
                        notes: ["at \(change.file)\(change.line.map { ":\($0)" } ?? "")", "compatibility is declared at dataTypes.\(dataType.name).compatibility"]))
            }
            // Frames of a pipe several replicas write are whole only up to PIPE_BUF without a writer's lock.
            for service in spec.services where service.replicas > 1 {
                for binding in service.produces where binding.dataType == dataType.name {
                    let declared = binding.version ?? dataType.latestVersion
                    guard let version = dataType.versions.first(where: { $0.version == declared }), let model = models[version.version]
                    else { continue }
                    let size = model.maximumEncodedSize(of: version.message)
                    guard size > 3500 || size < 0 else { continue }
                    let index = service.produces.firstIndex { $0.dataType == binding.dataType } ?? 0
                    diagnostics.append(
                        map.diagnostic(
                            .warning, .framesAbovePipeBuf,
                            "\(service.replicas) replicas of '\(service.name)' share each '\(dataType.name)' pipe, and \(version.message) can encode to more than PIPE_BUF (4096 bytes) with its envelope",
                            at: DocumentPath.root.appending("services").appending(service.name).appending("produces").appending(index: index),
                            notes: ["frames above 4096 bytes stay whole only under the writer's lock: send them with PipeMesh or `pmm send`, which take it"]))
                }
            }
        }
        return (reports, diagnostics)
    }
}
