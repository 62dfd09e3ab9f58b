import Foundation
import Glibc
import PMMCore
import PMMRouter
import Testing

/// A pair of real .proto files and what `pmm schema check` must say of them.
struct SchemaPair: CustomTestStringConvertible, Sendable {
    var name: String
    var v1: String
    var v2: String
    var mode = "backward"
    /// nil: compatible; else a fragment of the violation and its line in v2.proto.
    var violation: (summary: String, line: Int)?
    /// The field the violation is filed under, when the test names it.
    var field: String?
    var testDescription: String { name }
}

let schemaCorpus: [SchemaPair] = [
    SchemaPair(
        name: "package and message renamed", v1: "syntax = \"proto3\";\npackage shop.v1;\nmessage Sample {\n  string name = 1;\n  double value = 2;\n}\n",
        v2: "syntax = \"proto3\";\npackage shop.v2;\nmessage Reading {\n  string name = 1;\n  double value = 2;\n}\n"),
    SchemaPair(
        name: "field added", v1: "syntax = \"proto3\";\npackage s.v1;\nmessage Sample {\n  string name = 1;\n}\n",
        v2: "syntax = \"proto3\";\npackage s.v2;\nmessage Sample {\n  string name = 1;\n  map<string, string> labels = 2;\n}\n"),
    SchemaPair(
        name: "deleted and reserved", v1: "syntax = \"proto3\";\npackage s.v1;\nmessage Sample {\n  string name = 1;\n  int64 at = 2;\n}\n",
        v2: "syntax = \"proto3\";\npackage s.v2;\nmessage Sample {\n  reserved 2;\n  string name = 1;\n}\n"),
    SchemaPair(
        name: "type changed", v1: "syntax = \"proto3\";\npackage s.v1;\nmessage Sample {\n  string name = 1;\n  int64 at = 2;\n}\n",
        v2: "syntax = \"proto3\";\npackage s.v2;\nmessage Sample {\n  string name = 1;\n  string at = 2;\n}\n",
        violation: ("field 2 'at' changed type from int64 to string", 5)),
    SchemaPair(
        name: "deleted without reserving", v1: "syntax = \"proto3\";\npackage s.v1;\nmessage Sample {\n  string name = 1;\n  int64 at = 2;\n}\n",
        v2: "syntax = \"proto3\";\npackage s.v2;\nmessage Sample {\n  string name = 1;\n}\n",
        violation: ("field 2 'at' was deleted without reserving its number (v1.proto:5)", 3)),
    SchemaPair(
        name: "nested message field changed",
        v1: "syntax = \"proto3\";\npackage s.v1;\nmessage Point {\n  repeated int32 x = 1;\n}\nmessage Sample {\n  Point at = 1;\n}\n",
        v2: "syntax = \"proto3\";\npackage s.v2;\nmessage Point {\n  int32 x = 1;\n}\nmessage Sample {\n  Point at = 1;\n}\n",
        violation: ("field 1 'x' changed from repeated int32 to int32: a v2 reader of one int32 keeps at most the last of v1's values", 4)),
    SchemaPair(
        name: "enum value deleted", v1: "syntax = \"proto3\";\npackage s.v1;\nenum State {\n  UNKNOWN = 0;\n  ON = 1;\n}\nmessage Sample {\n  State s = 1;\n}\n",
        v2: "syntax = \"proto3\";\npackage s.v2;\nenum State {\n  UNKNOWN = 0;\n}\nmessage Sample {\n  State s = 1;\n}\n",
        violation: ("enum value 1 'ON' of s.v2.State was deleted", 3)),
    SchemaPair(
        name: "a single field moved into a new oneof", v1: "syntax = \"proto3\";\npackage s.v1;\nmessage Sample {\n  string a = 1;\n}\n",
        v2: "syntax = \"proto3\";\npackage s.v2;\nmessage Sample {\n  oneof pick {\n    string a = 1;\n  }\n}\n", mode: "full"),
    SchemaPair(
        name: "two fields moved into one oneof", v1: "syntax = \"proto3\";\npackage s.v1;\nmessage Sample {\n  string a = 1;\n  int64 b = 2;\n}\n",
        v2: "syntax = \"proto3\";\npackage s.v2;\nmessage Sample {\n  oneof pick {\n    string a = 1;\n    int64 b = 2;\n  }\n}\n",
        violation: ("field 2 'b' is now in oneof 'pick' with field 1 'a': v1 data may set both, and a v2 reader keeps only the last; forward compatible only", 6),
        field: "b"),
    SchemaPair(
        name: "two fields moved into one oneof, forward", v1: "syntax = \"proto3\";\npackage s.v1;\nmessage Sample {\n  string a = 1;\n  int64 b = 2;\n}\n",
        v2: "syntax = \"proto3\";\npackage s.v2;\nmessage Sample {\n  oneof pick {\n    string a = 1;\n    int64 b = 2;\n  }\n}\n", mode: "forward"),
    SchemaPair(
        name: "string to bytes, backward", v1: "syntax = \"proto3\";\npackage s.v1;\nmessage Sample {\n  string name = 1;\n  string note = 2;\n}\n",
        v2: "syntax = \"proto3\";\npackage s.v2;\nmessage Sample {\n  string name = 1;\n  bytes note = 2;\n}\n"),
    SchemaPair(
        name: "string to bytes, forward", v1: "syntax = \"proto3\";\npackage s.v1;\nmessage Sample {\n  string name = 1;\n  string note = 2;\n}\n",
        v2: "syntax = \"proto3\";\npackage s.v2;\nmessage Sample {\n  string name = 1;\n  bytes note = 2;\n}\n", mode: "forward",
        violation: ("field 2 'note' changed type from string to bytes: a v1 reader validates UTF-8, so v2's bytes may not decode; backward compatible only", 5),
        field: "note"),
    SchemaPair(
        name: "bytes to string, backward", v1: "syntax = \"proto3\";\npackage s.v1;\nmessage Sample {\n  string name = 1;\n  bytes note = 2;\n}\n",
        v2: "syntax = \"proto3\";\npackage s.v2;\nmessage Sample {\n  string name = 1;\n  string note = 2;\n}\n",
        violation: ("field 2 'note' changed type from bytes to string: a v2 reader validates UTF-8, so v1's bytes may not decode; forward compatible only", 5)),
    SchemaPair(
        name: "message to bytes, backward", v1: "syntax = \"proto3\";\npackage s.v1;\nmessage Point {\n  int32 x = 1;\n}\nmessage Sample {\n  Point at = 1;\n}\n",
        v2: "syntax = \"proto3\";\npackage s.v2;\nmessage Sample {\n  bytes at = 1;\n}\n"),
    SchemaPair(
        name: "message to bytes, forward", v1: "syntax = \"proto3\";\npackage s.v1;\nmessage Point {\n  int32 x = 1;\n}\nmessage Sample {\n  Point at = 1;\n}\n",
        v2: "syntax = \"proto3\";\npackage s.v2;\nmessage Sample {\n  bytes at = 1;\n}\n", mode: "forward",
        violation: ("field 1 'at' changed type from s.v1.Point to bytes: a v1 reader parses v2's bytes as s.v1.Point, and they may not be one; backward compatible only", 4)),
    SchemaPair(
        name: "singular to repeated string, backward", v1: "syntax = \"proto3\";\npackage s.v1;\nmessage Sample {\n  string name = 1;\n  string tag = 2;\n}\n",
        v2: "syntax = \"proto3\";\npackage s.v2;\nmessage Sample {\n  string name = 1;\n  repeated string tag = 2;\n}\n"),
    SchemaPair(
        name: "singular to repeated string, forward", v1: "syntax = \"proto3\";\npackage s.v1;\nmessage Sample {\n  string name = 1;\n  string tag = 2;\n}\n",
        v2: "syntax = \"proto3\";\npackage s.v2;\nmessage Sample {\n  string name = 1;\n  repeated string tag = 2;\n}\n", mode: "forward",
        violation: ("field 2 'tag' changed from string to repeated string: a v1 reader of one string keeps only the last of v2's values; backward compatible only", 5)),
    SchemaPair(
        name: "map values string to bytes, forward",
        v1: "syntax = \"proto3\";\npackage s.v1;\nmessage Sample {\n  string name = 1;\n  map<string, string> labels = 2;\n}\n",
        v2: "syntax = \"proto3\";\npackage s.v2;\nmessage Sample {\n  string name = 1;\n  map<string, bytes> labels = 2;\n}\n", mode: "forward",
        violation: ("the values of map field 2 'labels' changed type from string to bytes: a v1 reader validates UTF-8", 5), field: "labels"),
    SchemaPair(
        name: "map values int64 to string",
        v1: "syntax = \"proto3\";\npackage s.v1;\nmessage Sample {\n  string name = 1;\n  map<string, int64> labels = 2;\n}\n",
        v2: "syntax = \"proto3\";\npackage s.v2;\nmessage Sample {\n  string name = 1;\n  map<string, string> labels = 2;\n}\n",
        violation: ("the values of map field 2 'labels' changed type from int64 to string, which is not wire compatible", 5), field: "labels"),
    SchemaPair(
        name: "map deleted",
        v1: "syntax = \"proto3\";\npackage s.v1;\nmessage Sample {\n  string name = 1;\n  map<string, int64> labels = 2;\n}\n",
        v2: "syntax = \"proto3\";\npackage s.v2;\nmessage Sample {\n  string name = 1;\n}\n",
        violation: ("map field 2 'labels' was deleted without reserving its number (v1.proto:5)", 3), field: "labels"),
    SchemaPair(
        name: "type changed, but compatibility none", v1: "syntax = \"proto3\";\npackage s.v1;\nmessage Sample {\n  int64 at = 1;\n}\n",
        v2: "syntax = \"proto3\";\npackage s.v2;\nmessage Sample {\n  string at = 1;\n}\n", mode: "none"),
]

func versionedMesh(root: String = "/run/pmm/v", mode: String) -> String {
    """
    apiVersion: pmm/v1
    kind: Mesh
    name: versions
    root: \(root)
    dataTypes:
      m:
        compatibility: \(mode)
        qos: {delivery: at-most-once}
        versions:
          - {version: 1, schema: v1.proto, message: \("MSG1")}
          - {version: 2, schema: v2.proto, message: \("MSG2")}
    services:
      p1: {uid: 0, produces: [{dataType: m, version: 1}]}
      p2: {uid: 0, produces: [{dataType: m, version: 2}]}
      c1: {uid: 0, consumes: [{dataType: m, version: 1}]}
      c2: {uid: 0, consumes: [{dataType: m, version: 2}]}
    routes:
      m:
        policy: round-robin
        targets: [{service: c1}, {service: c2}]

    """
}

@Suite struct SchemaTests {
    func messageName(_ proto: String) -> String {
        let package = proto.split(separator: "\n").first { $0.hasPrefix("package ") }!.dropFirst(8).dropLast()
        let message = proto.split(separator: "\n").last { $0.hasPrefix("message ") }!.split(separator: " ")[1]
        return "\(package).\(message)"
    }

    @Test(arguments: schemaCorpus)
    func schemaCheck_judgesRealProtoFiles(_ pair: SchemaPair) throws {
        let dir = TemporaryDirectory()
        dir.write(pair.v1, to: "v1.proto")
        dir.write(pair.v2, to: "v2.proto")
        dir.write(versionedMesh(mode: pair.mode).replacingOccurrences(of: "MSG1", with: messageName(pair.v1)).replacingOccurrences(of: "MSG2", with: messageName(pair.v2)))
        let outcome = try pmm("schema", "check", "-f", "mesh.yaml", "-o", "json", in: dir.path)
        let rows = try #require(try JSONSerialization.jsonObject(with: Data(outcome.stdout.utf8)) as? [[String: Any]], "\(outcome.stderr)")
        let violations = try #require(rows.first?["violations"] as? [[String: Any]])
        guard let expected = pair.violation else {
            #expect(outcome.status == 0 && violations.isEmpty, "\(violations)")
            return
        }
        #expect(outcome.status == 1)
        let found = violations.first { ($0["summary"] as? String)?.contains(expected.summary) == true }
        #expect(found != nil, "\(violations)")
        #expect(found?["line"] as? Int == expected.line)
        #expect(found?["file"] as? String == "v2.proto")
        if let field = pair.field { #expect(found?["field"] as? String == field) }
        for violation in violations {
            #expect(!"\(violation)".contains("Entry"), "a map is named by its field, not its entry message: \(violation)")
        }
        // validate fails too, at the newer version's schema line, naming the file and line.
        let validate = try pmm("validate", "-f", "mesh.yaml", in: dir.path)
        #expect(validate.status == 1)
        #expect(validate.stderr.contains("mesh.yaml:11:30: error: dataTypes.m.versions[1].schema: 'm' v1 → v2 is not \(pair.mode) compatible"), "\(validate.stderr)")
        #expect(validate.stderr.contains("note: at v2.proto:\(expected.line)"))
    }

    @Test func schemaCheck_namesTheFileAndLineOfAnImportedMessage() throws {
        let dir = TemporaryDirectory()
        dir.write("syntax = \"proto3\";\npackage p.v1;\nmessage Point {\n  int32 x = 1;\n}\n", to: "point1.proto")
        dir.write("syntax = \"proto3\";\npackage p.v2;\nmessage Point {\n  int32 y = 2;\n  string x = 1;\n}\n", to: "point2.proto")
        dir.write("syntax = \"proto3\";\npackage s.v1;\nimport \"point1.proto\";\nmessage Sample {\n  p.v1.Point at = 1;\n}\n", to: "v1.proto")
        dir.write("syntax = \"proto3\";\npackage s.v2;\nimport \"point2.proto\";\nmessage Sample {\n  p.v2.Point at = 1;\n}\n", to: "v2.proto")
        dir.write(versionedMesh(mode: "backward").replacingOccurrences(of: "MSG1", with: "s.v1.Sample").replacingOccurrences(of: "MSG2", with: "s.v2.Sample"))
        let outcome = try pmm("schema", "check", "-f", "mesh.yaml", "-o", "json", in: dir.path)
        let rows = try #require(try JSONSerialization.jsonObject(with: Data(outcome.stdout.utf8)) as? [[String: Any]], "\(outcome.stderr)")
        let violations = try #require(rows.first?["violations"] as? [[String: Any]])
        #expect(violations.count == 1, "\(violations)")
        #expect(violations.first?["summary"] as? String == "field 1 'x' changed type from int32 to string, which is not wire compatible")
        #expect(violations.first?["message"] as? String == "p.v2.Point")
        #expect(violations.first?["file"] as? String == "point2.proto")
        #expect(violations.first?["line"] as? Int == 5)
    }

    @Test func schemaCheck_printsTheMatrix() throws {
        let dir = TemporaryDirectory()
        dir.write(schemaCorpus[1].v1, to: "v1.proto")
        dir.write(schemaCorpus[1].v2, to: "v2.proto")
        dir.write(versionedMesh(mode: "full").replacingOccurrences(of: "MSG1", with: "s.v1.Sample").replacingOccurrences(of: "MSG2", with: "s.v2.Sample"))
        let outcome = try pmm("schema", "check", "-f", "mesh.yaml", in: dir.path)
        #expect(outcome.status == 0)
        #expect(outcome.stdout.contains("m (compatibility full): versions 1, 2"))
        #expect(outcome.stdout.contains("v1                    yes  yes"))
        #expect(outcome.stdout.contains("v2                    yes  yes"))
    }

    @Test func schemaCheck_whenTheMessageIsMissing_saysWhichExist() throws {
        let dir = TemporaryDirectory()
        dir.write(schemaCorpus[1].v1, to: "v1.proto")
        dir.write(schemaCorpus[1].v2, to: "v2.proto")
        dir.write(versionedMesh(mode: "full").replacingOccurrences(of: "MSG1", with: "s.v1.Nope").replacingOccurrences(of: "MSG2", with: "s.v2.Sample"))
        let outcome = try pmm("validate", "-f", "mesh.yaml", in: dir.path)
        #expect(outcome.status == 1)
        #expect(outcome.stderr.contains("v1.proto declares no message s.v1.Nope (it declares s.v1.Sample) [E016]"), "\(outcome.stderr)")
    }

    @Test func validate_withoutProtoc_failsAndSaysHowToInstallIt_applyWarnsAndGoesOn() throws {
        let dir = TemporaryDirectory()
        dir.write(schemaCorpus[1].v1, to: "v1.proto")
        dir.write(schemaCorpus[1].v2, to: "v2.proto")
        dir.write(versionedMesh(root: dir.root, mode: "full").replacingOccurrences(of: "MSG1", with: "s.v1.Sample").replacingOccurrences(of: "MSG2", with: "s.v2.Sample"))
        let noProtoc = ["PMM_PROTOC": "/nonexistent/protoc"]
        let validate = try run(pmmBinary, ["validate", "-f", "mesh.yaml"], in: dir.path, environment: noProtoc)
        #expect(validate.status == 1)
        #expect(validate.stderr.contains("the schema compatibility check did not run: protoc is not installed [E014]"), "\(validate.stderr)")
        #expect(validate.stderr.contains("apt-get install protobuf-compiler"))
        guard isRoot else { return }
        let apply = try run(pmmBinary, ["apply", "-f", "mesh.yaml", "--state-dir=\(dir.path)/state"], in: dir.path, environment: noProtoc)
        #expect(apply.status == 0, "\(apply.stderr)")
        #expect(apply.stderr.contains("warning: the schema compatibility check did not run"))
    }
}

/// v1 and v2 producers and consumers side by side: which versions reach whom under each mode.
@Suite(.enabled(if: isRoot, "services run as uid 0"), .serialized)
struct VersionRoutingTests {
    static let expectations: [(String, [String: Set<Int>])] = [
        ("none", ["c1": [1], "c2": [2]]),
        ("backward", ["c1": [1], "c2": [1, 2]]),
        ("forward", ["c1": [1, 2], "c2": [2]]),
        ("full", ["c1": [1, 2], "c2": [1, 2]]),
    ]

    @Test(arguments: expectations)
    func router_sendsEachVersionOnlyToConsumersThatCanReadIt(_ mode: String, _ expected: [String: Set<Int>]) throws {
        let yaml = versionedMesh(root: "ROOT", mode: mode).replacingOccurrences(of: "MSG1", with: "s.v1.Sample").replacingOccurrences(of: "MSG2", with: "s.v2.Sample")
        let h = try MeshHarness(yaml, files: ["v1.proto": schemaCorpus[1].v1, "v2.proto": schemaCorpus[1].v2])
        try h.startRouter()
        try h.startConsumer("c1-0", dataType: "m")
        try h.startConsumer("c2-0", dataType: "m")
        try h.waitForHealthyConsumers()
        try h.send("--service", "p1", "--data-type", "m", "--payload", "one", "--count", "200")
        try h.send("--service", "p2", "--data-type", "m", "--payload", "two", "--count", "200")
        try h.waitForReceived(400)
        for consumer in ["c1", "c2"] {
            let versions = Set(h.received("\(consumer)-0", dataType: "m").map { Int($0.schemaVersion) })
            #expect(versions == expected[consumer], "\(mode): \(consumer) got versions \(versions)")
        }
        #expect(h.allReceived.count == 400)
        print("FIGURES versions under \(mode): c1 got \(h.received("c1-0", dataType: "m").count) (versions \(Set(h.received("c1-0", dataType: "m").map(\.schemaVersion)).sorted())), c2 got \(h.received("c2-0", dataType: "m").count) (versions \(Set(h.received("c2-0", dataType: "m").map(\.schemaVersion)).sorted()))")
    }

    @Test func undeclaredVersion_goesToDeadLettersAndNowhereElse() throws {
        let yaml = versionedMesh(root: "ROOT", mode: "full").replacingOccurrences(of: "MSG1", with: "s.v1.Sample").replacingOccurrences(of: "MSG2", with: "s.v2.Sample")
        let h = try MeshHarness(yaml, files: ["v1.proto": schemaCorpus[1].v1, "v2.proto": schemaCorpus[1].v2])
        try h.startRouter()
        try h.startConsumer("c1-0", dataType: "m")
        try h.startConsumer("c2-0", dataType: "m")
        try h.waitForHealthyConsumers()
        try h.send("--service", "p1", "--data-type", "m", "--payload", "nine", "--count", "25", "--version", "9")
        try h.send("--service", "p1", "--data-type", "m", "--payload", "one", "--count", "10", "--start-sequence", "100")
        try h.waitForReceived(10)
        try waitFor("25 dead letters") { (h.status?.deadLetters["no-reader-for-version"] ?? 0) == 25 }
        #expect(h.allReceived.allSatisfy { $0.payload == "one" })
        let list = try pmm("deadletters", "list", h.stateArgument)
        #expect(list.stdout.contains("version 9 of 'm' is not declared"), "\(list.stdout)")
        let status = try pmm("status", h.stateArgument)
        #expect(status.stdout.contains("no-reader-for-version 25"))
    }
}
