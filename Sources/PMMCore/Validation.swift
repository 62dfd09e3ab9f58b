/// What validation needs to know about the world, gathered by the caller (validation itself does no I/O).
public struct ValidationEnvironment: Sendable {
    /// The schema paths (as written in the spec) that exist on disk. Nil: do not check schema files.
    public var existingSchemaFiles: Set<String>?
    /// The node reading the spec (`--node`, `PMM_NODE`), if any: its `links.tls` files are checked.
    public var node: String?
    /// Which of that node's TLS files (paths with `${NODE}` resolved) exist. Nil: do not check them.
    public var existingLinkFiles: Set<String>?

    public init(existingSchemaFiles: Set<String>? = nil, node: String? = nil, existingLinkFiles: Set<String>? = nil) {
        self.existingSchemaFiles = existingSchemaFiles
        self.node = node
        self.existingLinkFiles = existingLinkFiles
    }
}

extension MeshSpec {
    /// Semantic checks of a loaded spec: names, ranges, references, collisions, routes, root, schema files.
    ///
    /// Returns every problem at once, sorted by location. Problems at paths the loader already rejected are
    /// not repeated.
    public func validate(sourceMap: SourceMap, environment: ValidationEnvironment = ValidationEnvironment())
        -> [Diagnostic]
    {
        var checker = Checker(spec: self, map: sourceMap, environment: environment)
        checker.run()
        return Diagnostic.sortedByLocation(checker.diagnostics)
    }
}

private struct Checker {
    let spec: MeshSpec
    let map: SourceMap
    let environment: ValidationEnvironment
    var diagnostics: [Diagnostic] = []

    init(spec: MeshSpec, map: SourceMap, environment: ValidationEnvironment) {
        self.spec = spec
        self.map = map
        self.environment = environment
    }

    mutating func report(
        _ code: DiagnosticCode, _ summary: String, at path: DocumentPath, notes: [String] = [],
        severity: Diagnostic.Severity = .error, atKey: Bool = false
    ) {
        guard !map.isRejected(path) else { return }
        diagnostics.append(map.diagnostic(severity, code, summary, at: path, notes: notes, atKey: atKey))
    }

    mutating func checkName(_ name: String, what: String, at path: DocumentPath, atKey: Bool = false) {
        guard !Naming.isValidName(name) else { return }
        var notes = ["names are [a-z][a-z0-9-]*, at most \(Naming.maximumNameLength) characters"]
        let lowered = String(name.lowercased().map { ($0.isLetter || $0.isNumber) ? $0 : "-" })
        if Naming.isValidName(lowered) { notes.append("did you mean '\(lowered)'?") }
        report(.invalidName, "\(what) '\(name)' is not a valid name", at: path, notes: notes, atKey: atKey)
    }

    mutating func checkRange(_ value: Int, _ range: ClosedRange<Int>, what: String, at path: DocumentPath) {
        guard !range.contains(value) else { return }
        report(
            .invalidValue, "\(what) must be between \(range.lowerBound) and \(range.upperBound), found \(value)",
            at: path)
    }

    mutating func run() {
        let top = DocumentPath.root
        if spec.apiVersion != MeshSpec.apiVersion {
            report(
                .unsupportedDocument, "apiVersion '\(spec.apiVersion)' is not supported",
                at: top.appending("apiVersion"), notes: ["this pmm reads 'apiVersion: \(MeshSpec.apiVersion)'"])
        }
        if spec.kind != MeshSpec.kind {
            report(
                .unsupportedDocument, "kind '\(spec.kind)' is not supported", at: top.appending("kind"),
                notes: ["a mesh file has 'kind: \(MeshSpec.kind)'"])
        }
        checkName(spec.name, what: "mesh name", at: top.appending("name"))
        if let problem = Naming.rootProblem(spec.root) {
            report(
                .unsafeRoot, "root '\(spec.root)' \(problem)", at: top.appending("root"),
                notes: ["use a directory of its own for this mesh's pipes, such as /run/pmm/\(spec.name)"])
        }
        checkDataTypes()
        checkServices()
        checkRoutes()
        checkNodes()
        checkCollisions()
    }

    /// `nodes`, `links`, `placement`, `locality` (DESIGN.md, "Beyond one host").
    mutating func checkNodes() {
        let top = DocumentPath.root
        let nodeNames = spec.nodes.map(\.name)
        var addresses: [String: String] = [:]
        for node in spec.nodes {
            let path = top.appending("nodes").appending(node.name)
            checkName(node.name, what: "node", at: path, atKey: true)
            if node.hostAndPort == nil {
                report(
                    .invalidValue, "node '\(node.name)': address '\(node.address)' is not host:port", at: path.appending("address"),
                    notes: ["the address this node's router listens on for links, such as 10.250.0.1:7400 or [fd00::1]:7400"])
            } else if let other = addresses[node.address] {
                report(
                    .nameCollision, "nodes '\(other)' and '\(node.name)' have the same address \(node.address)", at: path.appending("address"),
                    notes: ["each node's router listens on an address of its own"])
            } else {
                addresses[node.address] = node.name
            }
        }
        if let tls = spec.linkTLS {
            if spec.nodes.isEmpty {
                report(
                    .invalidValue, "links has no effect without nodes", at: top.appending("links"),
                    notes: ["links join the routers of a mesh's nodes; declare 'nodes:' or remove 'links:'"], severity: .warning)
            } else if let node = environment.node, let existing = environment.existingLinkFiles {
                let resolved = tls.resolved(for: node)
                for (key, file) in [("ca", resolved.ca), ("cert", resolved.cert), ("key", resolved.key)] where !existing.contains(file) {
                    report(
                        .missingFile, "links.tls.\(key): \(file) does not exist on node '\(node)'", at: top.appending("links").appending("tls").appending(key),
                        notes: ["make it, or fix the path (${NODE} stands for the node's name)"])
                }
            }
        } else if !spec.nodes.isEmpty {
            report(
                .invalidValue, "links between the nodes' routers are plaintext", at: top.appending("nodes"),
                notes: ["add links.tls (ca, cert, key) for mutual TLS between routers"], severity: .warning, atKey: true)
        }
        for service in spec.services {
            let path = top.appending("services").appending(service.name)
            guard map.values[path.appending("placement")] != nil else { continue }  // as written, not the loader's default
            if spec.nodes.isEmpty {
                report(
                    .invalidValue, "service '\(service.name)' has a placement, but the mesh declares no nodes", at: path.appending("placement"),
                    notes: ["declare the nodes under 'nodes:', or remove 'placement'"])
                continue
            }
            for (node, count) in service.placement.sorted(by: { $0.key < $1.key }) {
                if spec.node(named: node) == nil {
                    var notes = ["declared nodes are \(Suggestion.quotedList(nodeNames))"]
                    if let guess = Suggestion.closest(to: node, in: nodeNames) { notes.append("did you mean '\(guess)'?") }
                    report(.unknownReference, "service '\(service.name)' is placed on node '\(node)', which is not declared", at: path.appending("placement").appending(node), notes: notes, atKey: true)
                }
                checkRange(count, 0...Limits.replicas.upperBound, what: "instances on node '\(node)'", at: path.appending("placement").appending(node))
            }
            checkRange(service.replicas, Limits.replicas, what: "instances in the placement (their sum)", at: path.appending("placement"))
        }
        for route in spec.routes where route.locality == .preferLocal && spec.nodes.isEmpty {
            report(
                .invalidValue, "locality: prefer-local has no effect on one host", at: top.appending("routes").appending(route.dataType).appending("locality"),
                notes: ["it chooses among nodes; declare 'nodes:' or remove the key"], severity: .warning)
        }
    }

    mutating func checkQoS(_ qos: QoS, at path: DocumentPath) {
        checkRange(qos.maxRate, Limits.maxRate, what: "maxRate", at: path.appending("maxRate"))
        // burst defaults to maxRate: an out-of-range maxRate is reported once, not again as its burst.
        guard Limits.maxRate.contains(qos.maxRate) else { return }
        checkRange(qos.burst, Limits.burst, what: "burst", at: path.appending("burst"))
        if qos.maxRate > 0, qos.burst == 0 {
            report(.invalidValue, "burst must be at least 1 when maxRate is set", at: path.appending("burst"))
        }
        checkRange(qos.buffer, Limits.buffer, what: "buffer", at: path.appending("buffer"))
        if let size = qos.pipeSize {
            checkRange(size, Limits.pipeSize, what: "pipeSize (bytes)", at: path.appending("pipeSize"))
        }
    }

    mutating func checkDataTypes() {
        for dataType in spec.dataTypes {
            let path = DocumentPath.root.appending("dataTypes").appending(dataType.name)
            checkName(dataType.name, what: "data type", at: path, atKey: true)
            checkRange(dataType.shards, Limits.shards, what: "shards", at: path.appending("shards"))
            checkQoS(dataType.qos, at: path.appending("qos"))
            var seen: Set<Int> = []
            for (index, version) in dataType.versions.enumerated() {
                let versionPath = path.appending("versions").appending(index: index)
                checkRange(version.version, Limits.version, what: "version", at: versionPath.appending("version"))
                if !seen.insert(version.version).inserted {
                    report(
                        .nameCollision, "version \(version.version) of '\(dataType.name)' is declared twice",
                        at: versionPath.appending("version"))
                }
                if version.schema.isEmpty {
                    report(.invalidValue, "schema must name a .proto file", at: versionPath.appending("schema"))
                } else if let existing = environment.existingSchemaFiles, !existing.contains(version.schema) {
                    report(
                        .missingSchemaFile, "schema file '\(version.schema)' does not exist",
                        at: versionPath.appending("schema"), notes: ["schema paths are relative to the spec file"])
                }
                if !isQualifiedName(version.message) {
                    report(
                        .invalidValue,
                        "message '\(version.message)' is not a fully qualified protobuf name (package.Message)",
                        at: versionPath.appending("message"))
                }
            }
            let used = spec.services.contains { service in
                (service.produces + service.consumes).contains { $0.dataType == dataType.name }
            }
            if !used {
                report(
                    .unusedDeclaration, "data type '\(dataType.name)' is neither produced nor consumed", at: path,
                    severity: .warning, atKey: true)
            }
        }
    }

    func isQualifiedName(_ name: String) -> Bool {
        let parts = name.split(separator: ".", omittingEmptySubsequences: false)
        return !parts.isEmpty
            && parts.allSatisfy { part in
                guard let first = part.unicodeScalars.first, first == "_" || first.properties.isAlphabetic else {
                    return false
                }
                return part.unicodeScalars.allSatisfy { $0 == "_" || ($0.isASCII && $0.properties.isAlphabetic) || ("0"..."9").contains($0) }
            }
    }

    mutating func checkServices() {
        var byUID: [UInt32: [String]] = [:]
        let dataTypeNames = spec.dataTypes.map(\.name)
        for service in spec.services {
            let path = DocumentPath.root.appending("services").appending(service.name)
            checkName(service.name, what: "service", at: path, atKey: true)
            checkRange(service.replicas, Limits.replicas, what: "replicas", at: path.appending("replicas"))
            byUID[service.uid, default: []].append(service.name)
            for (list, bindings) in [("produces", service.produces), ("consumes", service.consumes)] {
                var seen: Set<String> = []
                for (index, binding) in bindings.enumerated() {
                    let bindingPath = path.appending(list).appending(index: index)
                    if !seen.insert(binding.dataType).inserted {
                        report(
                            .nameCollision, "service '\(service.name)' \(list) '\(binding.dataType)' twice",
                            at: bindingPath.appending("dataType"), notes: ["merge the two entries into one"])
                    }
                    guard let dataType = spec.dataType(named: binding.dataType) else {
                        var notes = ["declared data types are \(Suggestion.quotedList(dataTypeNames))"]
                        if dataTypeNames.isEmpty { notes = ["declare it under 'dataTypes:'"] }
                        if let guess = Suggestion.closest(to: binding.dataType, in: dataTypeNames) {
                            notes.append("did you mean '\(guess)'?")
                        }
                        report(
                            .unknownReference, "data type '\(binding.dataType)' is not declared",
                            at: bindingPath.appending("dataType"), notes: notes)
                        continue
                    }
                    if let version = binding.version, !dataType.versions.contains(where: { $0.version == version }) {
                        let declared = dataType.versions.map { String($0.version) }
                        report(
                            .unknownReference, "data type '\(dataType.name)' has no version \(version)",
                            at: bindingPath.appending("version"),
                            notes: [
                                declared.isEmpty
                                    ? "'\(dataType.name)' declares no versions; remove 'version' or add 'versions:'"
                                    : "declared versions are \(declared.joined(separator: ", "))"
                            ])
                    }
                    checkQoS(dataType.qos.applying(binding.qos), at: bindingPath.appending("qos"))
                    if let capacity = binding.capacity {
                        if list == "produces" {
                            report(
                                .invalidValue, "capacity applies to consumers; '\(service.name)' produces '\(binding.dataType)'",
                                at: bindingPath.appending("capacity"),
                                notes: ["a producer's expected volume is its qos.maxRate; move capacity under 'consumes:'"])
                        } else {
                            checkRange(capacity, Limits.capacity, what: "capacity (messages/s)", at: bindingPath.appending("capacity"))
                        }
                    }
                }
            }
            if service.registration == .required && service.consumes.isEmpty {
                report(
                    .invalidValue, "registration: required has no effect on '\(service.name)': it consumes nothing",
                    at: path.appending("registration"),
                    notes: ["only a consumer's instances are routed by lease; remove the key or add 'consumes:'"], severity: .warning)
            }
        }
        for (uid, names) in byUID.sorted(by: { $0.key < $1.key }) where names.count > 1 {
            // One warning per shared uid, at the second service that takes it; a long list is cut short.
            let shown = names.count <= 4 ? Suggestion.quotedList(names) : Suggestion.quotedList(Array(names.prefix(3))) + " and \(names.count - 3) more"
            report(
                .sharedUID, "\(names.count) services share uid \(uid): \(shown)",
                at: DocumentPath.root.appending("services").appending(names[1]).appending("uid"),
                notes: ["pmm tells callers apart by uid; give each service its own uid"], severity: .warning)
        }
    }

    mutating func checkRoutes() {
        let serviceNames = spec.services.map(\.name)
        for route in spec.routes {
            let path = DocumentPath.root.appending("routes").appending(route.dataType)
            guard spec.dataType(named: route.dataType) != nil else {
                var notes: [String] = []
                if let guess = Suggestion.closest(to: route.dataType, in: spec.dataTypes.map(\.name)) {
                    notes.append("did you mean '\(guess)'?")
                }
                report(
                    .unknownReference, "route for undeclared data type '\(route.dataType)'", at: path, notes: notes,
                    atKey: true)
                continue
            }
            if route.targets.isEmpty {
                report(
                    .invalidRoute, "route '\(route.dataType)' has no targets", at: path.appending("targets"),
                    notes: ["list at least one consuming service under 'targets:'"])
                continue
            }
            var seen: Set<String> = []
            for (index, target) in route.targets.enumerated() {
                let targetPath = path.appending("targets").appending(index: index)
                checkRange(target.weight, Limits.weight, what: "weight", at: targetPath.appending("weight"))
                if !seen.insert(target.service).inserted {
                    report(
                        .nameCollision, "route '\(route.dataType)' lists service '\(target.service)' twice",
                        at: targetPath.appending("service"))
                }
                guard let service = spec.service(named: target.service) else {
                    var notes = ["declared services are \(Suggestion.quotedList(serviceNames))"]
                    if let guess = Suggestion.closest(to: target.service, in: serviceNames) {
                        notes.append("did you mean '\(guess)'?")
                    }
                    report(
                        .unknownReference, "route '\(route.dataType)' targets unknown service '\(target.service)'",
                        at: targetPath.appending("service"), notes: notes)
                    continue
                }
                if !service.consumes.contains(where: { $0.dataType == route.dataType }) {
                    report(
                        .unknownReference,
                        "route '\(route.dataType)' targets service '\(target.service)', which does not consume it",
                        at: targetPath.appending("service"),
                        notes: ["add '- dataType: \(route.dataType)' under services.\(target.service).consumes"])
                }
            }
            if route.targets.allSatisfy({ $0.weight == 0 }) {
                report(
                    .invalidRoute, "route '\(route.dataType)' has only zero weights, so nothing can be delivered",
                    at: path.appending("targets"), notes: ["give at least one target a positive weight"])
            }
        }
    }

    mutating func checkCollisions() {
        // An instance name that equals another service's name makes `collector-1` ambiguous in registrations,
        // status and logs.
        var owners: [String: String] = [:]
        for service in spec.services { owners[service.name] = "service '\(service.name)'" }
        for service in spec.services where Limits.replicas.contains(service.replicas) {
            for instance in service.instanceNames {
                if let other = owners[instance], other != "service '\(service.name)'" {
                    report(
                        .nameCollision,
                        "instance '\(instance)' of service '\(service.name)' has the same name as \(other)",
                        at: DocumentPath.root.appending("services").appending(service.name),
                        notes: [spec.nodes.isEmpty ? "rename one of them; instance names are <service>-<index>" : "rename one of them; instance names are <service>-<node>-<index>"], atKey: true)
                } else {
                    owners[instance] = "instance '\(instance)' of service '\(service.name)'"
                }
            }
        }
        // Counted only when shards and replicas are in range: an absurd count is reported once, where it is written.
        let countsInRange =
            spec.services.allSatisfy { Limits.replicas.contains($0.replicas) }
            && spec.dataTypes.allSatisfy { Limits.shards.contains($0.shards) }
        let pipes = countsInRange ? spec.desiredPipes() : []
        if pipes.count > Limits.pipesPerMesh {
            report(
                .invalidValue, "the mesh asks for \(pipes.count) pipes, more than the limit of \(Limits.pipesPerMesh)",
                at: DocumentPath.root, notes: ["lower shards or replicas, or split the mesh"])
        }
        var seen: [String: DesiredPipe] = [:]
        for pipe in pipes {
            if let other = seen[pipe.name] {
                report(
                    .nameCollision,
                    "services '\(other.service)' and '\(pipe.service)' would share the pipe '\(pipe.name)'",
                    at: DocumentPath.root.appending("services").appending(pipe.service), atKey: true)
            }
            seen[pipe.name] = pipe
        }
    }
}
