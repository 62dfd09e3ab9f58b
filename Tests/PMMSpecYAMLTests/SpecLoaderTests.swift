import Foundation
import PMMCore
import PMMSpecYAML
import Testing

/// A valid spec to start each bad case from.
let validYAML = """
    apiVersion: pmm/v1
    kind: Mesh
    name: shop
    root: /run/pmm/shop
    dataTypes:
      metrics:
        shards: 4
        versions:
          - version: 1
            schema: schemas/m1.proto
            message: shop.metrics.v1.Sample
    services:
      api:
        uid: 1001
        produces:
          - dataType: metrics
      collector:
        uid: 1002
        replicas: 3
        consumes:
          - dataType: metrics
            version: 1
    routes:
      metrics:
        policy: shard
        targets:
          - service: collector
            weight: 90

    """

/// One bad spec and the first diagnostic it must produce.
struct BadSpec: CustomTestStringConvertible, Sendable {
    var name: String
    var yaml: String
    var code: DiagnosticCode
    /// `line:column`, or nil when the error has no position.
    var at: String?
    var path: String
    var summary: String
    var note: String? = nil

    var testDescription: String { name }
}

func replacing(_ old: String, with new: String) -> String {
    precondition(validYAML.contains(old), "fixture does not contain \(old)")
    return validYAML.replacingOccurrences(of: old, with: new)
}

let badSpecs: [BadSpec] = [
    BadSpec(
        name: "malformed YAML", yaml: "apiVersion: pmm/v1\nservices:\n  api: [1, 2\n", code: .yamlSyntax, at: "4:1",
        path: "(document)", summary: "invalid YAML"),
    BadSpec(
        name: "duplicate key", yaml: replacing("    uid: 1001\n", with: "    uid: 1001\n    uid: 1005\n"),
        code: .duplicateKey, at: "14:5", path: "(document)", summary: "duplicate key 'uid'"),
    BadSpec(
        name: "unknown key with suggestion", yaml: replacing("    replicas: 3", with: "    replica: 3"),
        code: .unknownKey, at: "19:5", path: "services.collector.replica", summary: "unknown key 'replica'",
        note: "did you mean 'replicas'?"),
    BadSpec(
        name: "unknown top-level key", yaml: validYAML + "extra: 1\n", code: .unknownKey, at: "29:1", path: "extra",
        summary: "unknown key 'extra'"),
    BadSpec(
        name: "uid is a string", yaml: replacing("uid: 1001", with: "uid: api"), code: .wrongType, at: "14:10",
        path: "services.api.uid", summary: "expected an integer (a numeric uid or gid), found string \"api\""),
    BadSpec(
        name: "quoted number is a string", yaml: replacing("shards: 4", with: "shards: \"4\""), code: .wrongType,
        at: "7:13", path: "dataTypes.metrics.shards", summary: "expected an integer, found string \"4\""),
    BadSpec(
        name: "services is a list", yaml: "apiVersion: pmm/v1\nkind: Mesh\nname: x\nroot: /run/x\nservices:\n  - api\n",
        code: .wrongType, at: "6:3", path: "services", summary: "expected services by name (a mapping), found a list"),
    BadSpec(
        name: "missing uid", yaml: replacing("    uid: 1002\n", with: ""), code: .missingKey, at: "18:5",
        path: "services.collector.uid", summary: "required key 'uid' is missing"),
    BadSpec(
        name: "missing root", yaml: replacing("root: /run/pmm/shop\n", with: ""), code: .missingKey, at: "1:1",
        path: "root", summary: "required key 'root' is missing"),
    BadSpec(
        name: "negative uid", yaml: replacing("uid: 1001", with: "uid: -1"), code: .invalidValue, at: "14:10",
        path: "services.api.uid", summary: "must be between 0 and 4294967294, found -1"),
    BadSpec(
        name: "uid -1 as unsigned", yaml: replacing("uid: 1001", with: "uid: 4294967295"), code: .invalidValue,
        at: "14:10", path: "services.api.uid", summary: "must be between 0 and 4294967294"),
    BadSpec(
        name: "bad service name", yaml: replacing("  api:", with: "  API_v2:"), code: .invalidName, at: "13:3",
        path: "services.API_v2", summary: "service 'API_v2' is not a valid name", note: "did you mean 'api-v2'?"),
    BadSpec(
        name: "name escaping the root", yaml: replacing("  metrics:\n    shards", with: "  ../x:\n    shards"),
        code: .invalidName, at: "6:3", path: "dataTypes.../x", summary: "data type '../x' is not a valid name"),
    BadSpec(
        name: "dotted name", yaml: replacing("  collector:", with: "  a.b:"), code: .invalidName, at: "17:3",
        path: "services.a.b", summary: "service 'a.b' is not a valid name"),
    BadSpec(
        name: "instance name collides with a service",
        yaml: validYAML.replacingOccurrences(of: "  api:\n", with: "  collector-1:\n"), code: .nameCollision, at: "17:3",
        path: "services.collector", summary: "instance 'collector-1' of service 'collector' has the same name as service 'collector-1'"),
    BadSpec(
        name: "undeclared data type", yaml: replacing("      - dataType: metrics\n  collector:", with: "      - dataType: metric\n  collector:"),
        code: .unknownReference, at: "16:19", path: "services.api.produces[0].dataType",
        summary: "data type 'metric' is not declared", note: "did you mean 'metrics'?"),
    BadSpec(
        name: "undeclared version", yaml: replacing("        version: 1\n", with: "        version: 7\n"),
        code: .unknownReference, at: "22:18", path: "services.collector.consumes[0].version",
        summary: "data type 'metrics' has no version 7"),
    BadSpec(
        name: "route to unknown service", yaml: replacing("- service: collector", with: "- service: colector"),
        code: .unknownReference, at: "27:18", path: "routes.metrics.targets[0].service",
        summary: "route 'metrics' targets unknown service 'colector'", note: "did you mean 'collector'?"),
    BadSpec(
        name: "route to a non-consumer", yaml: replacing("- service: collector", with: "- service: api"),
        code: .unknownReference, at: "27:18", path: "routes.metrics.targets[0].service",
        summary: "route 'metrics' targets service 'api', which does not consume it"),
    BadSpec(
        name: "route with no targets", yaml: replacing("    targets:\n      - service: collector\n        weight: 90\n", with: "    targets: []\n"),
        code: .invalidRoute, at: "26:14", path: "routes.metrics.targets", summary: "route 'metrics' has no targets"),
    BadSpec(
        name: "all-zero weights", yaml: replacing("weight: 90", with: "weight: 0"), code: .invalidRoute, at: "27:7",
        path: "routes.metrics.targets", summary: "only zero weights"),
    BadSpec(
        name: "route for undeclared type", yaml: replacing("routes:\n  metrics:", with: "routes:\n  metricz:"),
        code: .unknownReference, at: "24:3", path: "routes.metricz", summary: "route for undeclared data type 'metricz'"),
    BadSpec(
        name: "zero shards", yaml: replacing("shards: 4", with: "shards: 0"), code: .invalidValue, at: "7:13",
        path: "dataTypes.metrics.shards", summary: "shards must be between 1 and 4096, found 0"),
    BadSpec(
        name: "absurd replicas", yaml: replacing("replicas: 3", with: "replicas: 1000000"), code: .invalidValue,
        at: "19:15", path: "services.collector.replicas", summary: "replicas must be between 1 and 1024"),
    BadSpec(
        name: "negative rate", yaml: replacing("    shards: 4\n", with: "    shards: 4\n    qos: {maxRate: -5}\n"),
        code: .invalidValue, at: "8:20", path: "dataTypes.metrics.qos.maxRate", summary: "maxRate must be between 0 and 100000000"),
    BadSpec(
        name: "zero buffer", yaml: replacing("    shards: 4\n", with: "    shards: 4\n    qos: {buffer: 0}\n"),
        code: .invalidValue, at: "8:19", path: "dataTypes.metrics.qos.buffer", summary: "buffer must be between 1 and 10000000"),
    BadSpec(
        name: "bad pipe size", yaml: replacing("    shards: 4\n", with: "    shards: 4\n    qos: {pipeSize: 1MB}\n"),
        code: .wrongType, at: "8:21", path: "dataTypes.metrics.qos.pipeSize", summary: "expected a size such as 65536"),
    BadSpec(
        name: "unknown enum value", yaml: replacing("policy: shard", with: "policy: sharded"), code: .invalidValue,
        at: "25:13", path: "routes.metrics.policy", summary: "'sharded' is not one of the allowed values",
        note: "allowed values are 'shard', 'weighted', 'round-robin', 'least-loaded'"),
    BadSpec(
        name: "relative root", yaml: replacing("root: /run/pmm/shop", with: "root: pipes/shop"), code: .unsafeRoot,
        at: "4:7", path: "root", summary: "root 'pipes/shop' must be an absolute path"),
    BadSpec(
        name: "root escaping by ..", yaml: replacing("root: /run/pmm/shop", with: "root: /run/pmm/../../etc"),
        code: .unsafeRoot, at: "4:7", path: "root", summary: "must not contain '.' or '..'"),
    BadSpec(
        name: "root is a system directory", yaml: replacing("root: /run/pmm/shop", with: "root: /etc"),
        code: .unsafeRoot, at: "4:7", path: "root", summary: "may not be the system directory '/etc'"),
    BadSpec(
        name: "wrong apiVersion", yaml: replacing("apiVersion: pmm/v1", with: "apiVersion: pmm/v9"),
        code: .unsupportedDocument, at: "1:13", path: "apiVersion", summary: "apiVersion 'pmm/v9' is not supported"),
    BadSpec(
        name: "duplicate version", yaml: replacing("        message: shop.metrics.v1.Sample\n", with: "        message: shop.metrics.v1.Sample\n      - version: 1\n        schema: s.proto\n        message: a.B\n"),
        code: .nameCollision, at: "12:18", path: "dataTypes.metrics.versions[1].version", summary: "version 1 of 'metrics' is declared twice"),
    BadSpec(
        name: "bad message name", yaml: replacing("message: shop.metrics.v1.Sample", with: "message: shop..Sample"),
        code: .invalidValue, at: "11:18", path: "dataTypes.metrics.versions[0].message", summary: "is not a fully qualified protobuf name"),
    BadSpec(
        name: "unknown registration policy", yaml: replacing("    replicas: 3\n", with: "    replicas: 3\n    registration: mandatory\n"),
        code: .invalidValue, at: "20:19", path: "services.collector.registration", summary: "'mandatory' is not one of the allowed values",
        note: "allowed values are 'optional', 'required'"),
    BadSpec(
        name: "zero capacity", yaml: replacing("        version: 1\n", with: "        version: 1\n        capacity: 0\n"),
        code: .invalidValue, at: "23:19", path: "services.collector.consumes[0].capacity",
        summary: "capacity (messages/s) must be between 1 and 100000000, found 0"),
    BadSpec(
        name: "capacity as a word", yaml: replacing("        version: 1\n", with: "        version: 1\n        capacity: fast\n"),
        code: .wrongType, at: "23:19", path: "services.collector.consumes[0].capacity", summary: "expected an integer, found string \"fast\""),
    BadSpec(
        name: "capacity on a producer",
        yaml: replacing("      - dataType: metrics\n  collector:", with: "      - dataType: metrics\n        capacity: 100\n  collector:"),
        code: .invalidValue, at: "17:19", path: "services.api.produces[0].capacity",
        summary: "capacity applies to consumers; 'api' produces 'metrics'", note: "a producer's expected volume is its qos.maxRate"),
    BadSpec(
        name: "empty file", yaml: "", code: .missingKey, at: "1:1", path: "(document)", summary: "the file is empty"),
    BadSpec(
        name: "document is a list", yaml: "- a\n- b\n", code: .wrongType, at: "1:1", path: "(document)",
        summary: "expected a mesh document (a mapping), found a list"),
]

@Suite struct SpecLoaderTests {
    @Test func load_whenSpecIsValid_hasNoDiagnostics() throws {
        let result = SpecLoader.loadAndValidate(yaml: validYAML, file: "mesh.yaml")
        #expect(result.diagnostics.isEmpty, "\(result.diagnostics)")
        let spec = try #require(result.spec)
        #expect(spec.name == "shop" && spec.root == "/run/pmm/shop")
        #expect(spec.service(named: "collector")?.replicas == 3)
        #expect(spec.service(named: "api")?.gid == 1001, "gid defaults to the uid")
        #expect(spec.dataType(named: "metrics")?.qos == QoS(), "qos defaults")
        #expect(spec.route(for: "metrics")?.targets == [RouteTarget(service: "collector", weight: 90)])
    }

    @Test(arguments: badSpecs)
    func load_whenSpecIsBad_reportsWhereAndWhat(_ bad: BadSpec) throws {
        let result = SpecLoader.loadAndValidate(yaml: bad.yaml, file: "mesh.yaml")
        let errors = result.diagnostics.filter { $0.severity == .error }
        let first = try #require(errors.first { $0.code == bad.code }, "no \(bad.code) in \(result.diagnostics.map { "\($0.code) \($0.summary)" })")
        if let at = bad.at {
            #expect(first.location.map { "\($0.line):\($0.column)" } == at, "\(first.summary)")
            #expect(first.location?.file == "mesh.yaml")
        }
        #expect(first.path.description == bad.path)
        #expect(first.summary.contains(bad.summary), "\(first.summary)")
        if let note = bad.note {
            #expect(first.notes.contains { $0.contains(note) }, "\(first.notes)")
        }
        #expect(!first.summary.contains("DecodingError") && !first.summary.contains("Swift."))
    }

    @Test func load_reportsEveryProblemInOneRun_sortedByPosition() {
        let yaml = replacing("uid: 1001", with: "uid: api")
            .replacingOccurrences(of: "- service: collector", with: "- service: colector")
            .replacingOccurrences(of: "replicas: 3", with: "replica: 3")
        let result = SpecLoader.loadAndValidate(yaml: yaml, file: "mesh.yaml")
        #expect(result.diagnostics.map(\.code) == [.wrongType, .unknownKey, .unknownReference])
        let lines = result.diagnostics.compactMap { $0.location?.line }
        #expect(lines == lines.sorted())
    }

    @Test func load_whenAValueIsRejected_doesNotCascade() {
        // A wrong-typed uid is reported once, not again as a shared uid or a range problem.
        let yaml = replacing("uid: 1001", with: "uid: [1]").replacingOccurrences(of: "uid: 1002", with: "uid: {a: 1}")
        let result = SpecLoader.loadAndValidate(yaml: yaml, file: "mesh.yaml")
        #expect(result.diagnostics.map(\.code) == [.wrongType, .wrongType])
    }

    @Test func load_whenTwoServicesShareAUID_warns() {
        let result = SpecLoader.loadAndValidate(yaml: replacing("uid: 1002", with: "uid: 1001"), file: "mesh.yaml")
        #expect(result.diagnostics.map(\.code) == [.sharedUID])
        #expect(!result.diagnostics.hasErrors)
    }

    @Test func load_whenSchemaFileIsMissing_errorsOnlyWhenChecked() {
        let checked = SpecLoader.loadAndValidate(yaml: validYAML, file: "mesh.yaml") { _ in
            ValidationEnvironment(existingSchemaFiles: [])
        }
        #expect(checked.diagnostics.map(\.code) == [.missingSchemaFile])
        #expect(checked.diagnostics.first?.location.map { "\($0.line):\($0.column)" } == "10:17")
    }

    @Test func load_whenAliasesExplode_refusesInsteadOfHanging() throws {
        var yaml = "a0: &a0 [x, x, x, x, x, x, x, x, x, x]\n"
        for i in 1..<9 {
            yaml += "a\(i): &a\(i) [" + Array(repeating: "*a\(i - 1)", count: 10).joined(separator: ", ") + "]\n"
        }
        yaml += "apiVersion: pmm/v1\nkind: Mesh\nname: x\nroot: /run/x\nservices: {s: {uid: *a8}}\n"
        let result = SpecLoader.load(yaml: yaml, file: "bomb.yaml")
        // Refused where it lands, without being expanded: the anchors are unknown keys, and the uid that
        // references the billion-node list is the wrong type.
        let errors = result.diagnostics.filter { $0.severity == .error }
        #expect(errors.map(\.code) == Array(repeating: .unknownKey, count: 9) + [.wrongType], "\(errors.map(\.summary))")
        let uid = try #require(errors.last)
        #expect(uid.path.description == "services.s.uid" && uid.summary.hasSuffix("found a list"), "\(uid.path): \(uid.summary)")
    }

    @Test func load_readsRegistrationAndCapacity_withTheirDefaults() throws {
        let plain = try #require(SpecLoader.loadAndValidate(yaml: validYAML, file: "m.yaml").spec)
        #expect(plain.service(named: "collector")?.registration == .optional, "every replica is routed by default")
        #expect(plain.service(named: "collector")?.consumes.first?.capacity == nil)
        let yaml = replacing("    replicas: 3\n", with: "    replicas: 3\n    registration: required\n")
            .replacingOccurrences(of: "        version: 1\n", with: "        version: 1\n        capacity: 2500\n")
        let result = SpecLoader.loadAndValidate(yaml: yaml, file: "m.yaml")
        #expect(result.diagnostics.isEmpty, "\(result.diagnostics)")
        let spec = try #require(result.spec)
        #expect(spec.service(named: "collector")?.registration == .required)
        #expect(spec.service(named: "collector")?.consumes.first?.capacity == 2500)
        #expect(SpecChange.between(plain, spec).map(\.path) == [
            "services.collector.consumes.metrics.capacity", "services.collector.registration",
        ], "pmm diff shows both")
    }

    @Test func load_whenAServiceThatConsumesNothingRequiresRegistration_warns() {
        let yaml = replacing("    uid: 1001\n", with: "    uid: 1001\n    registration: required\n")
        let result = SpecLoader.loadAndValidate(yaml: yaml, file: "m.yaml")
        #expect(result.diagnostics.map(\.code) == [.invalidValue])
        #expect(result.diagnostics.first?.severity == .warning)
        #expect(result.diagnostics.first?.path.description == "services.api.registration")
        #expect(result.diagnostics.first?.summary.contains("it consumes nothing") == true)
    }

    @Test func load_parsesByteSizes() throws {
        let yaml = replacing("    shards: 4\n", with: "    shards: 4\n    qos: {pipeSize: 1MiB, maxRate: 100}\n")
        let spec = try #require(SpecLoader.loadAndValidate(yaml: yaml, file: "m.yaml").spec)
        #expect(spec.dataType(named: "metrics")?.qos.pipeSize == 1 << 20)
        #expect(spec.dataType(named: "metrics")?.qos.burst == 100, "burst defaults to maxRate")
    }
}

@Suite struct DiagnosticRendererTests {
    @Test func render_showsLocationPathCodeSnippetAndNotes() {
        let yaml = replacing("- service: collector", with: "- service: colector")
        let result = SpecLoader.loadAndValidate(yaml: yaml, file: "mesh.yaml")
        let text = DiagnosticRenderer(sources: ["mesh.yaml": yaml]).render(result.diagnostics)
        #expect(
            text == """
                mesh.yaml:27:18: error: routes.metrics.targets[0].service: route 'metrics' targets unknown service 'colector' [E008]
                   27 |       - service: colector
                      |                  ^~~~~~~~
                  note: declared services are 'api', 'collector'
                  note: did you mean 'collector'?

                """)
        #expect(DiagnosticRenderer.summary(result.diagnostics) == "1 error, 0 warnings")
    }
}
